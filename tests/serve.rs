//! The HTTP API of `ferrovision serve`, started in-process on a free port with a small
//! randomly initialised model: every status code it answers, and that it keeps answering (and
//! answering right) after each bad request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use burn::prelude::Device;
use ferrovision::augment::NormalizePreset;
use ferrovision::augment::resize::{EvalResize, Interpolation};
use ferrovision::data::classes::ClassNames;
use ferrovision::models::{self, ModelConfig};
use ferrovision::serve::predict::{ModelCard, Prediction, Predictor, Scores, decode_image};
use ferrovision::serve::server::{self, ServeOptions};
use ferrovision::serve::translate::Translations;
use serde_json::Value;

#[path = "common/bomb.rs"]
mod bomb;

/// A predictor for `model` at `size`x`size` and its copy (same weights) for the expected answers.
fn predictors(model: &str, classes: usize, size: usize) -> (Predictor, Predictor) {
    let device = Device::flex();
    let classifier = models::build(&ModelConfig::named(model), classes, &device).unwrap();
    let make = |classifier| Predictor {
        model: classifier,
        resize: EvalResize { resize_size: size, crop_size: size, interpolation: Interpolation::Bilinear },
        normalize: NormalizePreset::Imagenet,
        device: device.clone(),
        card: ModelCard { architecture: model.into(), weights: "random init".into(), accuracy: None },
    };
    (make(classifier.clone()), make(classifier))
}

/// CIFAR-10's classes by folder name, so the shipped table translates them.
fn cifar_classes() -> ClassNames {
    ClassNames::from_names(&ferrovision::serve::translate::CIFAR10_SYNSETS.map(|(name, _)| name.to_string()))
}

fn png(side: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(3)]));
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { agent, base: format!("http://{addr}") }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let request = self.agent.post(format!("{}{path}", self.base)).header("Content-Type", content_type);
        let mut response = request.send(body).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(100 << 20).read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}")))
    }
}

/// `(index, label)` of each prediction of an answer, and its probabilities.
fn ranked(answer: &Value) -> (Vec<(u64, String)>, Vec<f64>) {
    let predictions = answer["predictions"].as_array().unwrap_or_else(|| panic!("no predictions: {answer}"));
    let labels = predictions.iter().map(|p| (p["index"].as_u64().unwrap(), p["label"].as_str().unwrap().to_string())).collect();
    (labels, predictions.iter().map(|p| p["probability"].as_f64().unwrap()).collect())
}

fn assert_same(answer: &Value, expected: &Prediction) {
    let (labels, probabilities) = ranked(answer);
    let indices: Vec<u64> = labels.iter().map(|l| l.0).collect();
    assert_eq!(indices, expected.top.iter().map(|&(c, _)| c as u64).collect::<Vec<_>>(), "{answer}");
    for (got, &(_, want)) in probabilities.iter().zip(&expected.top) {
        assert!((got - f64::from(want)).abs() < 1e-5, "{got} vs {want}");
    }
}

fn multipart(field: &str, file_name: Option<&str>, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "ferrovision-test-boundary";
    let disposition = match file_name {
        Some(name) => format!("form-data; name=\"{field}\"; filename=\"{name}\""),
        None => format!("form-data; name=\"{field}\""),
    };
    let mut body = format!("--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    body.extend(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// What, path, content type, body, the status and part of the error expected.
type BadRequest<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);

#[test]
fn every_bad_request_gets_its_status_and_the_server_keeps_answering_right() {
    let (served, reference) = predictors("tutorial_net", 10, 32);
    let classes = cifar_classes();
    let options = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_upload: 200_000,
        max_pixels: 1_000_000,
        request_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let running = server::spawn(served, classes.clone(), Translations::shipped(), options).unwrap();
    let client = Client::new(running.addr);

    let good = png(40, 1);
    let expected = reference.predict(&[decode_image(&good, u64::MAX).unwrap()], 3, 1, Scores::Prob).remove(0);
    let still_right = |after: &str| {
        // A new connection: the server closes idle ones after `header_timeout`.
        let client = Client::new(running.addr);
        let (status, answer) = client.post("/v1/predict?top_k=3", "image/png", &good);
        assert_eq!(status, 200, "after {after}: {answer}");
        assert_same(&answer, &expected);
        assert_eq!(client.get("/healthz"), (200, r#"{"status":"ok"}"#.to_string()), "after {after}");
    };

    // The documents.
    let (status, page) = client.get("/");
    assert!(
        status == 200 && page.contains("<html") && page.contains("/v1/predict") && !page.contains("://"),
        "no external address: offline"
    );
    let (status, openapi) = client.get("/v1/openapi.json");
    let openapi: Value = serde_json::from_str(&openapi).unwrap();
    assert!(status == 200 && openapi["paths"]["/v1/predict"]["post"]["responses"]["415"].is_object(), "{openapi}");
    let (status, card) = client.get("/v1/model");
    let card: Value = serde_json::from_str(&card).unwrap();
    assert_eq!((status, card["num_classes"].as_u64(), card["input_size"].as_u64()), (200, Some(10), Some(32)));
    assert_eq!(card["architecture"], "tutorial_net");
    let french = card["languages"].as_array().unwrap().iter().find(|l| l["code"] == "fr").unwrap().clone();
    assert_eq!((french["translated"].as_u64(), french["classes"].as_u64()), (Some(10), Some(10)), "{french}");

    // Good requests: raw bytes and a multipart form, in English and French.
    still_right("nothing");
    let (content_type, form) = multipart("image", Some("photo.png"), &good);
    let (status, answer) = client.post("/v1/predict?top_k=3", &content_type, &form);
    assert_eq!(status, 200, "{answer}");
    assert_same(&answer, &expected);
    assert_eq!(answer["model"], "tutorial_net");
    assert!(answer["elapsed_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{answer}");
    let (status, answer) = client.post("/v1/predict?top_k=10&lang=fr", "image/png", &good);
    assert_eq!(status, 200);
    let dog = answer["predictions"].as_array().unwrap().iter().find(|p| p["label_en"] == "dog").unwrap().clone();
    assert_eq!(dog["label"], "chien", "{answer}");

    // Each bad request: its status and error, then the server still answers right.
    let mut corrupt = good.clone();
    corrupt.truncate(good.len() / 2);
    let (no_file_type, no_file) = multipart("note", None, b"hello");
    let bad: [BadRequest; 8] = [
        // Far over the limit and the socket buffers: answered once the client has written it all.
        ("too large", "/v1/predict", "image/png", vec![0u8; 1_500_000], 413, "larger than 200000 bytes"),
        ("not an image", "/v1/predict", "text/plain", b"hello, I am text".to_vec(), 415, "not a PNG or JPEG"),
        ("corrupt", "/v1/predict", "image/png", corrupt, 422, "corrupt PNG"),
        ("decompression bomb", "/v1/predict", "image/png", bomb::png_bomb(20_000), 413, "20000x20000 pixels"),
        ("unknown language", "/v1/predict?lang=xx", "image/png", good.clone(), 400, "unknown language `xx`"),
        ("bad top_k", "/v1/predict?top_k=0", "image/png", good.clone(), 400, "top_k"),
        ("form without a file", "/v1/predict", &no_file_type, no_file, 400, "no file"),
        ("empty body", "/v1/predict", "image/png", Vec::new(), 415, "not a PNG or JPEG"),
    ];
    for (what, path, content_type, body, status, message) in bad {
        let started = Instant::now();
        let (got, answer) = client.post(path, content_type, &body);
        assert_eq!(got, status, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(message)), "{what}: {answer}");
        if what == "unknown language" {
            let available: Vec<&str> = answer["available"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert!(available.starts_with(&["en", "ca", "de"]) && available.contains(&"zh"), "{answer}");
        }
        if what == "decompression bomb" {
            assert!(started.elapsed() < Duration::from_secs(1), "refused from the header");
        }
        still_right(what);
    }

    // A request that never finishes sending its body: 408 after the timeout.
    let mut stream = TcpStream::connect(running.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n").unwrap();
    stream.write_all(&good[..100]).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not sent within"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    still_right("a request that never finished");

    // Nor its head: the connection is closed after the header timeout.
    let mut stream = TcpStream::connect(running.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains(" 200 "), "{answer:?}");
    assert!((Duration::from_millis(700)..Duration::from_secs(5)).contains(&started.elapsed()), "{:?}", started.elapsed());
    still_right("a head that never finished");
}

/// A full queue answers 503 instead of growing; the others are answered right, and afterwards
/// the server answers everything again. Batching puts several images in one forward pass.
#[test]
fn a_full_queue_answers_503_and_batches_form_under_load() {
    let (served, reference) = predictors("resnet18", 10, 96);
    let good = png(96, 7);
    let expected = reference.predict(&[decode_image(&good, u64::MAX).unwrap()], 5, 1, Scores::Prob).remove(0);
    let options = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_batch: 4,
        max_wait: Duration::from_millis(20),
        queue: 2,
        ..Default::default()
    };
    let running = server::spawn(served, cifar_classes(), Translations::shipped(), options).unwrap();
    let addr = running.addr;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..24)
            .map(|_| {
                scope.spawn(|| {
                    let (status, answer) = Client::new(addr).post("/v1/predict", "image/png", &good);
                    match status {
                        200 => assert_same(&answer, &expected),
                        503 => assert!(answer["error"].as_str().unwrap().contains("busy"), "{answer}"),
                        _ => panic!("{status}: {answer}"),
                    }
                    status
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert!(busy > 0 && busy < statuses.len(), "{statuses:?}");
    let client = Client::new(addr);
    let (status, answer) = client.post("/v1/predict", "image/png", &good);
    assert_eq!(status, 200, "{answer}");
    assert_same(&answer, &expected);
    let card: Value = serde_json::from_str(&client.get("/v1/model").1).unwrap();
    let (images, batches) = (card["batching"]["images"].as_u64().unwrap(), card["batching"]["batches"].as_u64().unwrap());
    assert_eq!(images as usize, statuses.len() - busy + 1);
    assert!(batches < images, "some batches held more than one image: {images} images in {batches} batches");
}
