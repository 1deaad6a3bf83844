//! Reading weight files into a flat map of named f32 tensors: PyTorch checkpoints in the zip
//! format (PyTorch ≥ 1.6) and the legacy pre-1.6 format, and safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use super::WeightsError;
use crate::error::FileError;

/// One tensor of a weight file, converted to f32 (row-major, the file's own layout).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The tensors of a weight file by their dotted key, plus the file's text metadata (safetensors
/// `__metadata__`; empty for PyTorch files).
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    pub tensors: BTreeMap<String, SourceTensor>,
    pub metadata: BTreeMap<String, String>,
}

impl StateDict {
    /// The sub-dictionary under `prefix` (e.g. `state_dict.`), with the prefix removed.
    pub fn strip_prefix(&self, prefix: &str) -> StateDict {
        let tensors = self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect();
        StateDict { tensors, metadata: self.metadata.clone() }
    }
}

/// Reads a weight file, choosing the format from its first bytes (a safetensors header is a
/// little-endian length followed by `{`; anything else goes to the PyTorch reader).
pub fn read_state_dict(path: &Path) -> Result<StateDict, WeightsError> {
    let io = |error| FileError::io(path.to_path_buf(), error);
    let mut head = [0u8; 9];
    let len = {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]).map_err(io)? {
                0 => break,
                n => filled += n,
            }
        }
        filled
    };
    if len < 9 {
        return Err(invalid(path, format!("file is {len} bytes long, too short for a weight file")));
    }
    if head[8] == b'{' { read_safetensors(path) } else { read_pytorch(path) }
}

fn invalid(path: &Path, reason: String) -> WeightsError {
    FileError::invalid(path.to_path_buf(), reason).into()
}

fn read_safetensors(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = std::fs::read(path).map_err(|error| FileError::io(path.to_path_buf(), error))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(path, format!("not a valid safetensors file: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| invalid(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let values = to_f32(&format!("{:?}", view.dtype()), view.data())
            .ok_or_else(|| invalid(path, format!("tensor `{name}` has dtype {:?}; expected a float or integer type", view.dtype())))?;
        tensors.insert(name, SourceTensor { shape: view.shape().to_vec(), values });
    }
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(StateDict { tensors, metadata })
}

fn read_pytorch(path: &Path) -> Result<StateDict, WeightsError> {
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| invalid(path, format!("not a readable PyTorch checkpoint (zip or legacy format): {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let bytes = tensor.read().map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?;
        let dtype = format!("{:?}", tensor.dtype());
        let values = to_f32(&dtype, &bytes).ok_or_else(|| invalid(path, format!("tensor `{name}` has unsupported dtype {dtype}")))?;
        if values.len() != tensor.num_elements() {
            return Err(invalid(path, format!("tensor `{name}` holds {} values for shape {:?}", values.len(), tensor.shape())));
        }
        tensors.insert(name, SourceTensor { shape: tensor.shape().to_vec(), values });
    }
    Ok(StateDict { tensors, metadata: BTreeMap::new() })
}

/// Little-endian values of a dtype (named as safetensors and pytorch-reader spell them) as f32.
fn to_f32(dtype: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    fn chunks<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
    }
    Some(match dtype.to_ascii_uppercase().as_str() {
        "F32" => chunks(bytes, f32::from_le_bytes),
        "F64" => chunks(bytes, |b| f64::from_le_bytes(b) as f32),
        "F16" => chunks(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        "BF16" => chunks(bytes, |b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16)),
        "I64" => chunks(bytes, |b| i64::from_le_bytes(b) as f32),
        "I32" => chunks(bytes, |b| i32::from_le_bytes(b) as f32),
        "I16" => chunks(bytes, |b| i16::from_le_bytes(b) as f32),
        "I8" => chunks(bytes, |b: [u8; 1]| b[0] as i8 as f32),
        "U8" | "BOOL" => chunks(bytes, |b: [u8; 1]| b[0] as f32),
        _ => return None,
    })
}

/// IEEE half to single precision (subnormals included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalize.
            let shift = frac.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | (((frac << shift) & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn short_and_garbage_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.pth");
        std::fs::write(&short, b"abc").unwrap();
        let err = read_state_dict(&short).unwrap_err().to_string();
        assert!(err.contains("short.pth") && err.contains("too short"), "{err}");
        let garbage = dir.path().join("garbage.pth");
        std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
        let err = read_state_dict(&garbage).unwrap_err().to_string();
        assert!(err.contains("garbage.pth") && err.contains("PyTorch"), "{err}");
        let missing = dir.path().join("missing.pth");
        assert!(read_state_dict(&missing).unwrap_err().to_string().contains("missing.pth"));
    }
}
