//! The page of `ferrovision serve` in a real browser: the shipped EfficientNet-Lite0 serves, headless
//! Chromium (driven over the DevTools protocol on a pipe) opens the page, uploads a real ImageNet
//! photo through its file input and reads the top label the page shows. Skipped with a message
//! when Chromium or ../shared is absent. `FERROVISION_SCREENSHOT=PATH` keeps a screenshot of the
//! page with its result (docs/serve-page.png is one).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

mod common;

/// A child process killed when dropped (the test fails without leaving it running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let output = Command::new("which").arg(name).output().ok()?;
        output.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
    });
    if found.is_none() {
        eprintln!("skipping: no Chromium (install it with `apt-get install -y chromium`)");
    }
    found
}

/// Chromium's DevTools protocol on `--remote-debugging-pipe`: JSON messages ended by a NUL byte,
/// read from the browser's fd 4 and written to its fd 3.
struct DevTools {
    to_browser: std::fs::File,
    from_browser: BufReader<std::fs::File>,
    next_id: u64,
    session: Option<String>,
}

impl DevTools {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut message = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.to_browser.write_all(format!("{message}\0").as_bytes()).unwrap();
        loop {
            let mut bytes = Vec::new();
            self.from_browser.read_until(0, &mut bytes).unwrap();
            assert!(bytes.pop() == Some(0), "the browser closed the pipe");
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            if answer["id"] == self.next_id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page until it gives something other than null, for up to
    /// `limit`.
    fn wait_for(&mut self, expression: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
            let value = result["result"]["value"].clone();
            if !value.is_null() {
                return value;
            }
            assert!(started.elapsed() < limit, "waited {limit:?} for {expression}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts headless Chromium with the protocol on a pipe.
fn launch(chromium: &Path, profile: &Path) -> (Killed, DevTools) {
    let pipe = || {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        fds
    };
    let (commands, events) = (pipe(), pipe());
    let mut command = Command::new(chromium);
    command
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe", "--window-size=1200,800"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (read_commands, write_events) = (commands[0], events[1]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(read_commands, 3) < 0 || libc::dup2(write_events, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Killed(command.spawn().unwrap());
    // SAFETY: the fds come from pipe() above and are owned here from now on.
    let own = |fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    drop((own(commands[0]), own(events[1])));
    let devtools = DevTools { to_browser: own(commands[1]), from_browser: BufReader::new(own(events[0])), next_id: 0, session: None };
    (child, devtools)
}

#[test]
fn the_page_labels_a_real_imagenet_photo_in_headless_chromium() {
    let (Some(weights), Some(photos)) =
        (common::shared("weights/efficientnet-lite0-57934424.pth"), common::shared("data/imagenet-samples-100.tar.gz"))
    else {
        return;
    };
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tench = ferrovision::data::archive::Source::new(&photos).read_files(|p| p.ends_with("n01440764_tench.JPEG")).unwrap();
    let photo = dir.path().join("n01440764_tench.JPEG");
    std::fs::write(&photo, &tench[0].1).unwrap();

    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_ferrovision"))
            .args(["serve", "--model", "efficientnet_lite0", "--weights"])
            .arg(&weights)
            .args(["--port", "0", "--lang", "fr"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();

    let (_browser, mut devtools) = launch(&chromium, &dir.path().join("profile"));
    let targets = devtools.call("Target.getTargets", json!({}));
    let page = targets["targetInfos"].as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target").clone();
    let attached = devtools.call("Target.attachToTarget", json!({"targetId": page["targetId"], "flatten": true}));
    devtools.session = attached["sessionId"].as_str().map(String::from);
    devtools.call("Page.enable", json!({}));
    devtools.call("Page.navigate", json!({"url": format!("{url}/")}));
    // The model card is there once the page has read /v1/model.
    let card = devtools.wait_for(
        "document.querySelectorAll('#card dd').length ? document.querySelector('#card').innerText : null",
        Duration::from_secs(30),
    );
    assert!(card.as_str().unwrap().contains("efficientnet_lite0") && card.as_str().unwrap().contains("75.1%"), "{card}");

    let document = devtools.call("DOM.getDocument", json!({}));
    let input = devtools.call("DOM.querySelector", json!({"nodeId": document["root"]["nodeId"], "selector": "#files"}));
    devtools.call("DOM.setFileInputFiles", json!({"files": [photo], "nodeId": input["nodeId"]}));
    let top = devtools.wait_for(
        "(() => { const l = document.querySelector('.row .label'); return l ? [l.firstChild.textContent, l.querySelector('.en') ? l.querySelector('.en').textContent : l.firstChild.textContent, document.querySelector('.row .probability').textContent, document.querySelector('.elapsed').textContent] : null })()",
        Duration::from_secs(60),
    );
    eprintln!("the page shows: {top}");
    assert_eq!(top[1], "tench", "the top class in English: {top}");
    assert_eq!(top[0], "tanche", "and in French (--lang fr): {top}");
    assert!(top[3].as_str().unwrap().contains(" ms"), "{top}");

    let shot = devtools.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    if let Some(path) = std::env::var_os("FERROVISION_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }
}
