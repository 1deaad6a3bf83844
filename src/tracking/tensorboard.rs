//! TensorBoard event files: the messages of TensorFlow's published `event.proto` / `summary.proto`
//! that scalars and images need (declared for `prost`, field numbers as published), in TFRecord
//! framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the payload).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "EventKind", tags = "3, 5")]
    what: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EventKind {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(SummaryImage),
}

/// `tensorflow.Summary.Image`: an encoded PNG.
#[derive(Clone, PartialEq, Message)]
struct SummaryImage {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 3 = RGB.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// TFRecord's CRC: CRC-32C rotated right by 15 bits plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to `<dir>/events.out.tfevents.<seconds>.ferrovision`, flushed after each write
/// so TensorBoard sees a run while it trains.
pub struct EventWriter {
    file: BufWriter<File>,
    pub path: PathBuf,
}

impl EventWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let seconds = now().floor() as u64;
        // A new file each time (a resumed run adds one; TensorBoard reads them all), never
        // truncating an earlier one started in the same second.
        let path = (0..)
            .map(|n| {
                dir.join(if n == 0 {
                    format!("events.out.tfevents.{seconds}.ferrovision")
                } else {
                    format!("events.out.tfevents.{seconds}.ferrovision.{n}")
                })
            })
            .find(|p| !p.exists())
            .expect("a free file name");
        let file = File::options().write(true).create_new(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Self { file: BufWriter::new(file), path };
        writer.write(0, EventKind::FileVersion("brain.Event:2".into()))?;
        Ok(writer)
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) -> Result<()> {
        self.summary(tag, ValueKind::SimpleValue(value as f32), step)
    }

    /// A PNG-encoded RGB image.
    pub fn image(&mut self, tag: &str, png: Vec<u8>, height: usize, width: usize, step: usize) -> Result<()> {
        let image = SummaryImage { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png };
        self.summary(tag, ValueKind::Image(image), step)
    }

    fn summary(&mut self, tag: &str, value: ValueKind, step: usize) -> Result<()> {
        let summary = Summary { value: vec![SummaryValue { tag: tag.into(), value: Some(value) }] };
        self.write(step, EventKind::Summary(summary))
    }

    fn write(&mut self, step: usize, what: EventKind) -> Result<()> {
        let event = Event { wall_time: now(), step: step as i64, what: Some(what) };
        let payload = event.encode_to_vec();
        let length = (payload.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(payload.len() + 16);
        record.extend_from_slice(&length);
        record.extend_from_slice(&masked_crc(&length).to_le_bytes());
        record.extend_from_slice(&payload);
        record.extend_from_slice(&masked_crc(&payload).to_le_bytes());
        self.file.write_all(&record).and_then(|()| self.file.flush()).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of an event file, each checked against its CRCs.
    fn read_records(bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (length, tail) = rest.split_at(8);
            assert_eq!(u32::from_le_bytes(tail[..4].try_into().unwrap()), masked_crc(length));
            let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            let payload = &tail[4..4 + n];
            assert_eq!(u32::from_le_bytes(tail[4 + n..8 + n].try_into().unwrap()), masked_crc(payload));
            events.push(Event::decode(payload).unwrap());
            rest = &tail[8 + n..];
        }
        events
    }

    #[test]
    fn crc_matches_the_published_check_value() {
        // CRC-32C of "123456789" is 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn writes_a_version_record_then_scalars_and_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.scalar("loss/train", 0.5, 3).unwrap();
        writer.image("curves", vec![1, 2, 3], 2, 4, 3).unwrap();
        let events = read_records(&std::fs::read(&writer.path).unwrap());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].what, Some(EventKind::FileVersion("brain.Event:2".into())));
        let Some(EventKind::Summary(summary)) = &events[1].what else { panic!("{:?}", events[1]) };
        assert_eq!(events[1].step, 3);
        assert_eq!(summary.value[0].tag, "loss/train");
        assert_eq!(summary.value[0].value, Some(ValueKind::SimpleValue(0.5)));
        let Some(EventKind::Summary(summary)) = &events[2].what else { panic!("{:?}", events[2]) };
        let Some(ValueKind::Image(image)) = &summary.value[0].value else { panic!("{summary:?}") };
        assert_eq!((image.height, image.width, image.encoded_image_string.as_slice()), (2, 4, &[1u8, 2, 3][..]));
    }
}
