//! A small synchronous WebDriver client for the browser tests: Debian's `chromedriver` driving
//! Debian's `chromium`, headless, with a fresh profile per [`Browser`].
//!
//! Nothing here downloads a browser: both must be installed
//! (`apt-get install -y --no-install-recommends chromium chromium-driver`); without them
//! [`Browser::start`] fails the test and says so.
//!
//! Waiting is always polling a condition ([`Browser::wait_until`], every 50 ms, up to a
//! generous deadline), never a bare sleep. The dashboard replaces its `<main>` when jobs
//! change, so an element found a moment ago may be gone: the by-selector helpers
//! ([`Browser::click`], [`Browser::text`], …) find it again and retry until their deadline.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How to install both.
pub const INSTALL: &str = "apt-get install -y --no-install-recommends chromium chromium-driver";

/// The deadline of waits and of retried element commands.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);
/// How long chromedriver may take to start, and Chromium to open a session.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The key of a web element reference in the W3C protocol.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An error answered by the driver: `{"value": {"error", "message"}}`.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// The HTTP status.
    pub status: u16,
    /// The W3C error code, such as `no such element`.
    pub error: String,
    /// The driver's message.
    pub message: String,
}

impl WebDriverError {
    /// Whether finding the element again may help: it is not there yet, or it was replaced.
    fn transient(&self) -> bool {
        matches!(
            self.error.as_str(),
            "no such element" | "stale element reference" | "element not interactable"
        )
    }
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.error, self.status, self.message)
    }
}

/// A headless Chromium session, driven through its own chromedriver. Dropping it ends the
/// session (Chromium quits) and kills chromedriver.
pub struct Browser {
    agent: ureq::Agent,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
    /// chromedriver's stdout, for failure messages.
    driver_output: Arc<Mutex<Vec<String>>>,
    /// The browser's profile, empty at the start.
    _profile: tempfile::TempDir,
}

/// An element found in the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session with a fresh
    /// profile and a 1280×900 window. Fails when either program is missing.
    pub fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).is_file(),
                "{program} is missing: the browser tests need Debian's Chromium and its driver; \
                 install them with `{INSTALL}`"
            );
        }
        let profile = tempfile::Builder::new()
            .prefix("jobhost-chromium-")
            .tempdir()
            .expect("a temporary profile directory");
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {CHROMEDRIVER} ({e}); install it: `{INSTALL}`")
            });

        // "ChromeDriver was started successfully on port 37071." The reader keeps draining
        // stdout afterwards so that chromedriver never blocks on a full pipe.
        let output = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let lines = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let port = match port_rx.recv_timeout(START_DEADLINE) {
            Ok(port) => port,
            Err(_) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!(
                    "chromedriver did not say its port within {START_DEADLINE:?}; it wrote:\n{}",
                    output.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");

        let mut browser = Self {
            agent,
            session: String::new(),
            driver,
            driver_output: output,
            _profile: profile,
        };
        browser.wait_until("chromedriver to be ready", START_DEADLINE, || {
            let value = browser
                .request("GET", &format!("{base}/status"), None)
                .ok()?;
            value["ready"].as_bool().filter(|ready| *ready)
        });

        let args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": {"implicit": 0, "pageLoad": 60_000, "script": 30_000},
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                }
            }
        });
        let session = browser
            .request("POST", &format!("{base}/session"), Some(capabilities))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a Chromium session: {e}\nchromedriver wrote:\n{}\n\
                     (the browser tests need `{INSTALL}`)",
                    browser.driver_log()
                )
            });
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {session}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    fn driver_log(&self) -> String {
        self.driver_output
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// One request to the driver; the answer's `value`.
    fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(url).call(),
            ("DELETE", _) => self.agent.delete(url).call(),
            (_, body) => self
                .agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = sent.map_err(|e| WebDriverError {
            status: 0,
            error: "transport".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).map_err(|e| WebDriverError {
            status,
            error: "not JSON".into(),
            message: format!("{method} {url}: {e}: {text}"),
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) if status >= 400 => Err(WebDriverError {
                status,
                error: error.to_owned(),
                message: value["message"].as_str().unwrap_or_default().to_owned(),
            }),
            _ if status >= 400 => Err(WebDriverError {
                status,
                error: "http".into(),
                message: text,
            }),
            _ => Ok(value),
        }
    }

    /// A command of this session (`path` after `/session/ID`).
    fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.request(method, &format!("{}{path}", self.session), body)
    }

    /// A command that must succeed.
    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    /// Loads `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The address of the page shown.
    pub fn current_url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`, if there is one now.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        ) {
            Ok(value) => Some(self.element(&value)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css:?}: {e}"),
        }
    }

    /// The first element matching `css`, waiting for it to appear.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.wait_until(&format!("an element {css:?}"), DEADLINE, || {
            self.try_find(css)
        })
    }

    /// Every element matching `css` now.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self.must(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .map(|all| all.iter().map(|v| self.element(v)).collect())
            .unwrap_or_default()
    }

    fn element(&self, value: &Value) -> Element<'_> {
        let id = value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element: {value}"))
            .to_owned();
        Element { browser: self, id }
    }

    /// Runs `act` on the element matching `css`, finding it again while it is missing or was
    /// replaced by a refresh of the page.
    fn on<T>(
        &self,
        css: &str,
        what: &str,
        act: impl Fn(&Element<'_>) -> Result<T, WebDriverError>,
    ) -> T {
        let start = Instant::now();
        loop {
            let error = match self.try_find(css) {
                Some(element) => match act(&element) {
                    Ok(value) => return value,
                    Err(e) if e.transient() => e.to_string(),
                    Err(e) => panic!("{what} {css:?}: {e}"),
                },
                None => "no such element".to_owned(),
            };
            assert!(
                start.elapsed() < DEADLINE,
                "{what} {css:?}: still failing after {DEADLINE:?}: {error}\npage: {}",
                self.current_url()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.on(css, "click", |e| e.try_click());
    }

    /// Types `text` into the element matching `css` (after what it holds).
    pub fn send_keys(&self, css: &str, text: &str) {
        self.on(css, "type into", |e| e.try_send_keys(text));
    }

    /// Empties the field matching `css`.
    pub fn clear(&self, css: &str) {
        self.on(css, "clear", |e| {
            e.browser
                .command("POST", &format!("/element/{}/clear", e.id), Some(json!({})))
                .map(drop)
        });
    }

    /// The visible text of the element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.on(css, "read the text of", |e| e.try_text())
    }

    /// Attribute `name` of the element matching `css`.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.on(css, "read an attribute of", |e| e.try_attribute(name))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `condition` every 50 ms until it gives a value; fails with `what` after `deadline`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut condition: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = condition() {
                return value;
            }
            if start.elapsed() >= deadline {
                let page = if self.session.is_empty() {
                    String::new()
                } else {
                    format!("\npage: {}", self.current_url())
                };
                panic!("timed out after {deadline:?} waiting for {what}{page}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for an element matching `css`.
    pub fn wait_for(&self, css: &str) -> Element<'_> {
        self.find(css)
    }

    /// Waits until the text of the element matching `css` is `text`.
    pub fn wait_for_text(&self, css: &str, text: &str) {
        let mut last = String::new();
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            last = match self.try_find(css).map(|e| e.try_text()) {
                Some(Ok(now)) if now == text => return,
                Some(Ok(now)) => now,
                Some(Err(e)) if e.transient() => e.to_string(),
                Some(Err(e)) => panic!("read the text of {css:?}: {e}"),
                None => "(no such element)".into(),
            };
            std::thread::sleep(POLL);
        }
        panic!(
            "timed out after {DEADLINE:?} waiting for {css:?} to read {text:?}; it reads {last:?}\npage: {}",
            self.current_url()
        );
    }

    /// Saves a PNG of the window to `path`, creating its directory.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.must("GET", "/screenshot", None);
        let png = base64_decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Saves a PNG of the whole page (up to 4000 pixels high) to `path`: the window grows to
    /// the page's height for the picture, then returns to its size.
    pub fn screenshot_full_page(&self, path: &Path) {
        let size = self.execute(
            "return [window.outerWidth, window.outerHeight, \
                     window.outerHeight - window.innerHeight, \
                     document.documentElement.scrollHeight];",
            &[],
        );
        let n = |i: usize| size[i].as_u64().unwrap_or(0) as u32;
        let (width, height, chrome, page) = (n(0), n(1), n(2), n(3));
        let tall = (page + chrome).clamp(height, 4000);
        self.set_window_size(width, tall);
        self.wait_until("the window to grow", DEADLINE, || {
            let inner = self.execute("return window.innerHeight;", &[]);
            (inner.as_u64().unwrap_or(0) as u32 + chrome >= tall).then_some(())
        });
        self.screenshot(path);
        self.set_window_size(width, height);
    }

    /// Resizes the window (the viewport follows).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &self.session, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    fn try_click(&self) -> Result<(), WebDriverError> {
        self.browser
            .command(
                "POST",
                &format!("/element/{}/click", self.id),
                Some(json!({})),
            )
            .map(drop)
    }

    fn try_send_keys(&self, text: &str) -> Result<(), WebDriverError> {
        self.browser
            .command(
                "POST",
                &format!("/element/{}/value", self.id),
                Some(json!({ "text": text })),
            )
            .map(drop)
    }

    fn try_text(&self) -> Result<String, WebDriverError> {
        self.browser
            .command("GET", &format!("/element/{}/text", self.id), None)
            .map(|v| v.as_str().unwrap_or_default().to_owned())
    }

    fn try_attribute(&self, name: &str) -> Result<Option<String>, WebDriverError> {
        self.browser
            .command(
                "GET",
                &format!("/element/{}/attribute/{name}", self.id),
                None,
            )
            .map(|v| v.as_str().map(str::to_owned))
    }

    /// Clicks it.
    pub fn click(&self) {
        self.try_click().unwrap_or_else(|e| panic!("click: {e}"));
    }

    /// Types `text` into it.
    pub fn send_keys(&self, text: &str) {
        self.try_send_keys(text)
            .unwrap_or_else(|e| panic!("send keys: {e}"));
    }

    /// Its visible text.
    pub fn text(&self) -> String {
        self.try_text().unwrap_or_else(|e| panic!("text: {e}"))
    }

    /// Its attribute `name`, if set.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.try_attribute(name)
            .unwrap_or_else(|e| panic!("attribute {name}: {e}"))
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` if it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(
            base64_decode("iVBORw0K\nGgo=").unwrap(),
            b"\x89PNG\r\n\x1a\n"
        );
        assert!(base64_decode("Zm9v!").is_none());
    }
}
