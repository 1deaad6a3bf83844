//! A bounded load test of a running `ferrovision serve`: `--requests` good requests (real photos
//! from a folder or archive) from `--clients` concurrent clients, with as many bad ones mixed in
//! (`--bad`; each kind in turn: too large, not an image, corrupt, decompression bomb, unknown
//! language, never finishing), and a deadline. Each photo is first labelled alone: every answer
//! under load must be the same. Prints throughput and p50/p99 latency of the good requests.
//! Usage: cargo run --release --example serve_load -- --addr 127.0.0.1:8080 --photos DIR_OR_ARCHIVE
//!   [--requests 1000] [--clients 8] [--bad 1000] [--deadline-s 300]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrovision::data::archive::Source;
use ferrovision::data::image_folder::is_image_name;
use serde_json::Value;

#[path = "../tests/common/bomb.rs"]
mod bomb;

struct Args {
    addr: String,
    photos: PathBuf,
    requests: usize,
    clients: usize,
    bad: usize,
    deadline: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:8080".into(),
        photos: PathBuf::new(),
        requests: 1000,
        clients: 8,
        bad: 1000,
        deadline: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => args.addr = value,
            "--photos" => args.photos = value.into(),
            "--requests" => args.requests = value.parse()?,
            "--clients" => args.clients = value.parse()?,
            "--bad" => args.bad = value.parse()?,
            "--deadline-s" => args.deadline = Duration::from_secs(value.parse()?),
            _ => bail!("unknown option {flag}"),
        }
    }
    Ok(args)
}

/// Posts `body`; the status and JSON answer.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(u16, Value)> {
    let mut response = agent.post(url).header("Content-Type", "application/octet-stream").send(body)?;
    let status = response.status().as_u16();
    Ok((status, serde_json::from_str(&response.body_mut().read_to_string()?)?))
}

/// Sends the head of a request and part of its body, then waits for the server's answer.
fn never_finishing(addr: &str, photo: &[u8]) -> Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", photo.len())?;
    stream.write_all(&photo[..photo.len() / 4])?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.get(9..12).and_then(|s| s.parse().ok()).with_context(|| format!("no status line: {answer:?}"))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let photos: Vec<(String, Vec<u8>)> = Source::new(&args.photos).read_files(is_image_name)?;
    if photos.is_empty() {
        bail!("{}: no photos", args.photos.display());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("http://{}/v1/predict?top_k=1", args.addr);
    // The answer for each photo alone: what every answer under load must be.
    let mut expected = Vec::new();
    for (name, bytes) in &photos {
        let (status, answer) = post(&agent, &url, bytes)?;
        if status != 200 {
            bail!("{name}: {status} {answer}");
        }
        expected.push(answer["predictions"][0]["index"].as_u64().context("no index")?);
    }
    let bomb = bomb::png_bomb(20_000);
    let kinds = ["too large", "not an image", "corrupt", "decompression bomb", "unknown language", "never finishing"];
    let total = args.requests + args.bad;
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::new());
    let wrong = AtomicUsize::new(0);
    let bad_seen = Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.clients {
            scope.spawn(|| {
                // Good and bad requests on their own connections: a server may close the
                // connection of a bad request after answering it.
                let new_agent = || -> ureq::Agent { ureq::Agent::config_builder().http_status_as_error(false).build().into() };
                let (agent, bad_agent) = (new_agent(), new_agent());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || started.elapsed() > args.deadline {
                        return;
                    }
                    // Bad requests spread evenly among the good ones.
                    let is_bad = args.bad > 0 && i * args.bad / total != (i + 1) * args.bad / total;
                    let (name, photo) = &photos[i % photos.len()];
                    if !is_bad {
                        let sent = Instant::now();
                        let answer = post(&agent, &url, photo);
                        let index = answer
                            .as_ref()
                            .ok()
                            .filter(|(status, _)| *status == 200)
                            .and_then(|(_, a)| a["predictions"][0]["index"].as_u64());
                        if index != Some(expected[i % photos.len()]) {
                            eprintln!("{name}: {answer:?}");
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1e3);
                        continue;
                    }
                    let kind = kinds[(i * args.bad / total) % kinds.len()];
                    let status = match kind {
                        "too large" => post(&bad_agent, &url, &vec![0u8; 11 << 20]).map(|a| a.0),
                        "not an image" => post(&bad_agent, &url, b"not an image at all").map(|a| a.0),
                        // Cut inside its headers (a JPEG cut later still decodes, its rest grey).
                        "corrupt" => post(&bad_agent, &url, &photo[..photo.len().min(300)]).map(|a| a.0),
                        "decompression bomb" => post(&bad_agent, &url, &bomb).map(|a| a.0),
                        "unknown language" => post(&bad_agent, &format!("{url}&lang=xx"), photo).map(|a| a.0),
                        _ => never_finishing(&args.addr, photo),
                    };
                    // A server may close the connection of an oversized upload before reading it all.
                    let status = status.map_or_else(|e| format!("client error ({e})"), |s| s.to_string());
                    *bad_seen.lock().unwrap().entry(format!("{kind} -> {status}")).or_default() += 1;
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    let good = latencies.len();
    println!(
        "{good} good requests and {} bad in {elapsed:.1} s from {} clients",
        bad_seen.lock().unwrap().values().sum::<usize>(),
        args.clients
    );
    println!(
        "good: {:.1} img/s over the whole run, p50 {:.0} ms, p99 {:.0} ms, wrong or failed {}",
        good as f64 / elapsed,
        percentile(0.5),
        percentile(0.99),
        wrong.load(Ordering::Relaxed)
    );
    for (kind, count) in bad_seen.into_inner().unwrap() {
        println!("bad: {kind}: {count}");
    }
    let health = agent.get(format!("http://{}/healthz", args.addr)).call()?.status().as_u16();
    let card: Value = serde_json::from_str(&agent.get(format!("http://{}/v1/model", args.addr)).call()?.body_mut().read_to_string()?)?;
    println!("after: /healthz {health}; {} images in {} batches", card["batching"]["images"], card["batching"]["batches"]);
    if wrong.load(Ordering::Relaxed) > 0 || health != 200 {
        bail!("some good requests were answered wrong, or the server stopped answering");
    }
    Ok(())
}
