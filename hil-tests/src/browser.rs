//! A headless Chromium driven through chromedriver's W3C WebDriver HTTP API, for tests that
//! look at the console's board the way an operator does.
//!
//! Only the handful of WebDriver commands the tests use: navigate, find elements by CSS
//! selector, read an attribute or the rendered text, click, type, run a script, take a
//! screenshot. It uses Debian's `chromium` and `chromium-driver` (scripts/test installs them);
//! when either is missing, [`Browser::start`] fails and says so.
//!
//! Invariants:
//! - chromedriver runs in a process group of its own and the browser it starts joins that
//!   group, so dropping the [`Browser`] ends the WebDriver session (the browser closes and is
//!   reaped) and then kills the whole group: nothing outlives the test.
//! - Every browser gets a fresh profile in a temporary directory, and the flags that keep it
//!   from calling home (the test machines have no way out, and retries flood the network).
//! - The page re-renders rows by replacing them, so an element found a moment ago can be gone:
//!   such a command fails with a [`WebDriverError`] whose [`WebDriverError::is_stale`] is
//!   true, and a poll should look again rather than give up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::servers;

/// The key under which W3C WebDriver hands out element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Size of the browser window, which is also the size of a screenshot.
const WINDOW_SIZE: &str = "1280,900";

/// A WebDriver command the driver refused: the W3C error code and the driver's message.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// The command, e.g. `GET /element/…/text`.
    pub command: String,
    /// The W3C error code, e.g. `stale element reference`, `no such element`.
    pub code: String,
    pub message: String,
}

impl WebDriverError {
    /// The element was removed from the page (re-rendered) after it was found.
    pub fn is_stale(&self) -> bool {
        self.code == "stale element reference" || self.code == "no such element"
    }
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first_line = self.message.lines().next().unwrap_or_default();
        write!(f, "WebDriver {}: {}: {first_line}", self.command, self.code)
    }
}

impl std::error::Error for WebDriverError {}

/// Whether `err` is a [`WebDriverError`] about an element that is no longer on the page.
pub fn is_stale(err: &anyhow::Error) -> bool {
    err.downcast_ref::<WebDriverError>()
        .is_some_and(WebDriverError::is_stale)
}

/// An element on the page, as WebDriver refers to it.
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
}

/// A headless Chromium under chromedriver, with one WebDriver session. Closed on drop.
pub struct Browser {
    http: reqwest::Client,
    /// chromedriver: leader of the process group the browser runs in.
    driver: Child,
    /// Where chromedriver listens.
    driver_addr: SocketAddr,
    /// The WebDriver session id.
    session: String,
    /// Holds the browser profile and chromedriver's log; removed after both are gone.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromedriver = installed("chromedriver", "chromium-driver")?;
        let chromium = installed("chromium", "chromium")?;
        let dir = tempfile::tempdir()?;
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile)?;
        let port = servers::free_port();
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("chromedriver.log"))?;
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, which the browser joins: see the module docs.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let http = servers::http_client();
        let base = format!("http://{driver_addr}");

        // chromedriver is up when /status says it is ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = driver.try_wait()? {
                bail!(
                    "chromedriver exited with {status} before it was ready:\n{}",
                    tail(&dir.path().join("chromedriver.log"))
                );
            }
            let ready = async {
                let status: Value = http
                    .get(format!("{base}/status"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                status["value"]["ready"].as_bool()
            };
            if ready.await == Some(true) {
                break;
            }
            if Instant::now() > deadline {
                kill_group(&mut driver);
                bail!(
                    "chromedriver did not get ready on {driver_addr} within 20 s:\n{}",
                    tail(&dir.path().join("chromedriver.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(), // the tests run as root
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={WINDOW_SIZE}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}
        });
        let session: anyhow::Result<String> = async {
            let resp = http
                .post(format!("{base}/session"))
                .json(&capabilities)
                // Starting a browser on a busy machine can take a while.
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let value = answer(resp, "POST /session").await?;
            value["sessionId"]
                .as_str()
                .map(str::to_string)
                .context("the new session has no sessionId")
        }
        .await;
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                kill_group(&mut driver);
                bail!(
                    "chromedriver could not start {}: {e:#}\n{}",
                    chromium.display(),
                    tail(&dir.path().join("chromedriver.log"))
                );
            }
        };
        Ok(Browser {
            http,
            driver,
            driver_addr,
            session,
            dir,
        })
    }

    /// One WebDriver command on this session; the answer's `value`.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = format!("http://{}/session/{}{path}", self.driver_addr, self.session);
        let what = format!("{method} {path}");
        let request = if method == reqwest::Method::GET {
            self.http.get(url)
        } else {
            self.http.request(method, url).json(&body)
        };
        let resp = request.send().await.with_context(|| what.clone())?;
        answer(resp, &what).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.command(reqwest::Method::GET, path, Value::Null).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.command(reqwest::Method::POST, path, body).await
    }

    /// Open `url` and wait until the page has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Every element matching a CSS selector, in document order (none: empty).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let found = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        elements(found)
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> anyhow::Result<Option<Element>> {
        Ok(self.find_all(css).await?.into_iter().next())
    }

    /// Every element matching a CSS selector inside `parent`.
    pub async fn find_all_in(&self, parent: &Element, css: &str) -> anyhow::Result<Vec<Element>> {
        let found = self
            .post(
                &format!("/element/{}/elements", parent.id),
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        elements(found)
    }

    /// The rendered text of the first element matching `css` inside `parent` ("" if none).
    pub async fn text_in(&self, parent: &Element, css: &str) -> anyhow::Result<String> {
        match self.find_all_in(parent, css).await?.first() {
            Some(child) => self.text(child).await,
            None => Ok(String::new()),
        }
    }

    /// An attribute of an element (None: it has no such attribute).
    pub async fn attribute(&self, element: &Element, name: &str) -> anyhow::Result<Option<String>> {
        let value = self
            .get(&format!("/element/{}/attribute/{name}", element.id))
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// The element's text as rendered (what a person sees: CSS `text-transform` applies, and
    /// an invisible element has none).
    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        let value = self.get(&format!("/element/{}/text", element.id)).await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// Click an element (scrolled into view first, as a person would).
    pub async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/click", element.id), json!({}))
            .await
            .map(drop)
    }

    /// Type into an element (an input), key by key.
    pub async fn type_text(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        self.post(
            &format!("/element/{}/value", element.id),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Run a script in the page (`arguments[i]` are `args`); what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The page's visible text (`document.body.innerText`), or why it could not be read:
    /// for failure messages.
    pub async fn page_text(&self) -> String {
        match self
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
        {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("(could not read the page: {e:#})"),
        }
    }

    /// A PNG of the window as it is now.
    pub async fn screenshot_png(&self) -> anyhow::Result<Vec<u8>> {
        let value = self.get("/screenshot").await?;
        let text = value.as_str().context("screenshot: no base64 text")?;
        let png = decode_base64(text)?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("screenshot: not a PNG");
        }
        Ok(png)
    }

    /// The end of chromedriver's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("chromedriver.log"))
    }

    /// Ask chromedriver to end the session, which closes the browser and reaps its processes.
    /// Blocking (it runs in `drop`), on a plain socket with short timeouts.
    fn end_session(&self) {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.driver_addr, Duration::from_secs(1))
        else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.driver_addr
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The answer comes once the browser is gone; its content does not matter.
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.end_session();
        kill_group(&mut self.driver);
    }
}

/// Kill chromedriver and whatever is left in its process group (a browser that did not
/// close). The group id is chromedriver's pid, which cannot be reused before the `wait`.
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", driver.id()))
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// A program of a Debian package, or an error that says how to install it.
fn installed(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    servers::find_binary(name, package).map_err(|_| {
        anyhow!(
            "{name} is not installed: the browser tests need Debian's chromium and chromium-driver. \
             Run scripts/test once (it installs them), or `apt-get install -y chromium chromium-driver` ({package} is missing)"
        )
    })
}

/// A WebDriver answer: `value` on success, a [`WebDriverError`] otherwise.
async fn answer(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("WebDriver {what}: HTTP {status}, not JSON"))?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    Err(WebDriverError {
        command: what.to_string(),
        code: value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_string(),
        message: value["message"].as_str().unwrap_or_default().to_string(),
    }
    .into())
}

fn elements(found: Value) -> anyhow::Result<Vec<Element>> {
    let list = found.as_array().context("find elements: not a list")?;
    list.iter()
        .map(|e| {
            e[ELEMENT_KEY]
                .as_str()
                .map(|id| Element { id: id.to_string() })
                .context("find elements: not an element reference")
        })
        .collect()
}

/// The last 4000 characters of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// Standard base64 (RFC 4648, with or without padding), as WebDriver sends screenshots.
/// Small enough to keep here rather than add a crate for one call.
fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut held = 0;
    for byte in text.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' => continue,
            other => bail!("not base64: byte {other:#04x}"),
        };
        bits = (bits << 6) | u32::from(sextet);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_the_rfc_4648_test_vectors() {
        for (encoded, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode_base64(encoded).ok(), Some(plain.as_bytes().to_vec()));
        }
        assert_eq!(decode_base64("/+8=").ok(), Some(vec![0xff, 0xef]));
        assert!(decode_base64("Zm9v!").is_err());
    }
}
