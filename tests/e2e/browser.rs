//! The admin dashboard in a real browser: Debian's headless Chromium, driven over WebDriver
//! (`jobhost_e2e::webdriver`), against `jobhost serve` on a free port. Logging in, a running
//! job appearing on the overview without a reload, its detail page, cancelling it and retrying
//! a failed job in place, running a job from the form, and XSS payloads that stay text: in
//! params and filters, and in every field of every page.
//!
//! The tests save whole-page screenshots to `target/screenshots/`: `overview.png` (a job
//! running), `jobs.png`, `job.png` (a completed job with its result), `job-cancelled.png` and
//! `job-failed.png` (after a retry). They need `chromium` and `chromium-driver`; without them
//! they fail.

use std::{path::PathBuf, process::Child, time::Instant};

use jobhost_e2e::{
    webdriver::{Browser, DEADLINE},
    Host,
};
use serde_json::{json, Value};

use crate::dashboard::{payload_everywhere, PAYLOAD};

/// A `jobhost serve` with its dashboard on a free port, and a headless Chromium.
struct Session {
    host: Host,
    serve: Option<Child>,
    /// `http://127.0.0.1:PORT/admin/background-jobs`
    base: String,
    token: String,
    browser: Browser,
    started: Instant,
}

impl Session {
    /// Starts both; the browser is not logged in yet.
    fn start() -> Self {
        let started = Instant::now();
        let host = Host::standard();
        let (serve, info) = host.serve_dashboard("");
        let browser = Browser::start();
        let base = info["url"]
            .as_str()
            .unwrap()
            .strip_suffix("/login")
            .unwrap()
            .to_owned();
        let token = info["token"]
            .as_str()
            .expect("a generated token")
            .to_owned();
        Self {
            host,
            serve: Some(serve),
            base,
            token,
            browser,
            started,
        }
    }

    /// Starts both and logs in through the form.
    fn logged_in() -> Self {
        let s = Self::start();
        s.login();
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Types the token into the login form and lands on the overview.
    fn login(&self) {
        let b = &self.browser;
        b.goto(&self.url("/"));
        assert_eq!(b.current_url(), self.url("/login"), "not logged in yet");
        b.send_keys("#token", &self.token);
        b.click("#login-submit");
        b.find("#counts");
        assert_eq!(b.current_url(), self.url("/"));
        assert_eq!(b.text("h1"), "Overview");
    }

    /// Waits until the page's event stream is open (the header says "live").
    fn wait_live(&self) {
        self.browser.find("#live-status.on");
    }

    /// Marks the page's window; [`Session::marked`] tells whether it is still the same page.
    fn mark(&self) {
        self.browser.execute("window.__marker = 1;", &[]);
    }

    fn marked(&self) -> bool {
        self.browser.execute("return window.__marker === 1;", &[]) == json!(true)
    }

    /// Saves a picture of the whole page as `target/screenshots/NAME`.
    fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshots_dir().join(name);
        self.browser.screenshot_full_page(&path);
        path
    }

    /// The job's state as `jobhost show` says.
    fn state(&self, id: i64) -> String {
        self.host.show(id)["job"]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Says how long the test took (shown with `--no-capture`, and on failure). Alone a test
    /// takes 3–5 s; the waits are condition polls with generous deadlines, so a loaded machine
    /// only makes it slower.
    fn finish(self, name: &str) {
        eprintln!("browser test {name}: {:.2?}", self.started.elapsed());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            self.host.stop_serve(&mut serve);
        }
    }
}

/// `target/screenshots/` of the workspace.
fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("screenshots")
}

#[test]
fn log_in_see_a_job_start_live_open_it_and_cancel_it_in_place() {
    let s = Session::logged_in();
    let b = &s.browser;
    s.wait_live();
    assert!(
        b.try_find("#running tbody tr").is_none(),
        "nothing runs yet"
    );

    // The overview is loaded and listening; the job is enqueued only now.
    s.mark();
    let id = s.host.enqueue(&[r"Tests\Misbehave", "hang_cooperative"]);
    let row = format!(r#"#running tr[data-job-id="{id}"]"#);
    b.find(&row);
    assert!(s.marked(), "the overview was reloaded instead of updated");
    assert_eq!(
        b.text(&format!("{row} td.job")),
        r"Tests\Misbehave@hang_cooperative"
    );
    // The elapsed time ticks.
    let elapsed = format!("{row} td.elapsed");
    let first = b.text(&elapsed);
    b.wait_until("the elapsed time to tick", DEADLINE, || {
        (b.text(&elapsed) != first).then_some(())
    });
    s.screenshot("overview.png");

    // The jobs list links to it.
    b.click("#nav-jobs");
    let list_row = format!(r#"#jobs tr[data-job-id="{id}"]"#);
    b.find(&list_row);
    assert_eq!(b.current_url(), s.url("/jobs"));
    assert_eq!(b.text(&format!("{list_row} td.state")), "running");
    s.screenshot("jobs.png");
    b.click(&format!("{list_row} a.job-link"));
    b.wait_for_text("#job-id", &id.to_string());
    assert_eq!(b.current_url(), s.url(&format!("/jobs/{id}")));
    assert_eq!(b.text("#job-state"), "running");
    b.find(r#"#attempts tr[data-attempt="1"]"#);

    // Cancel: the page turns cancelled in place.
    s.wait_live();
    s.mark();
    b.click("#cancel");
    b.wait_for_text("#job-state", "cancelled");
    assert!(s.marked(), "the job page was reloaded instead of updated");
    assert_eq!(s.state(id), "cancelled");
    assert_eq!(
        b.text(r#"#attempts tr[data-attempt="1"] td.outcome"#),
        "cancelled"
    );
    b.find("#retry");
    s.screenshot("job-cancelled.png");
    s.finish("log_in_see_a_job_start_live_open_it_and_cancel_it_in_place");
}

#[test]
fn retry_a_failed_job_in_place() {
    let s = Session::logged_in();
    let b = &s.browser;
    let id = s
        .host
        .enqueue(&[r"Tests\Misbehave", "always_fail", "--retries", "0"]);
    s.host.wait_state(id, &["failed"]);

    b.goto(&s.url(&format!("/jobs/{id}")));
    assert_eq!(b.text("#job-state"), "failed");
    assert_eq!(b.text("#attempts-used"), "1/1");
    assert_eq!(b.text("#last-error"), "always fails");
    s.wait_live();
    s.mark();
    b.click("#retry");
    b.find(r#"#attempts tr[data-attempt="2"] td.outcome"#);
    b.wait_for_text("#job-state", "failed");
    b.wait_for_text(r#"#attempts tr[data-attempt="2"] td.outcome"#, "error");
    assert!(s.marked(), "the job page was reloaded instead of updated");
    assert_eq!(b.text("#attempts-used"), "2/2");
    assert_eq!(b.find_all("#attempts tbody tr").len(), 2);
    assert_eq!(s.host.show(id)["attempts"].as_array().unwrap().len(), 2);
    b.find("#retry");
    s.screenshot("job-failed.png");
    s.finish("retry_a_failed_job_in_place");
}

#[test]
fn run_a_job_from_the_form() {
    let s = Session::logged_in();
    let b = &s.browser;
    b.click("#nav-run");
    b.find("#run-form");
    assert_eq!(b.current_url(), s.url("/run"));
    b.click(r#"#run-job option[value="Tests\\Misbehave@echo"]"#);
    b.wait_until("the job to be chosen", DEADLINE, || {
        let chosen = b.execute("return document.getElementById('run-job').value;", &[]);
        (chosen == json!(r"Tests\Misbehave@echo")).then_some(())
    });
    b.clear("#run-params");
    b.send_keys("#run-params", r#"{"n": 7}"#);
    b.click("#run-submit");

    // It lands on the new job's page, which completes.
    let id: i64 = b.wait_until("the new job's page", DEADLINE, || {
        let url = b.current_url();
        url.strip_prefix(&s.url("/jobs/"))?.parse().ok()
    });
    b.wait_for_text("#job-id", &id.to_string());
    assert_eq!(b.text("#job-name"), r"Tests\Misbehave@echo");
    b.wait_for_text("#job-state", "completed");
    let result: Value = serde_json::from_str(&b.text("#result")).unwrap();
    assert_eq!(result["params"], json!({"n": 7}));
    assert_eq!(result["job_id"], json!(id.to_string()));
    let params: Value = serde_json::from_str(&b.text("#params")).unwrap();
    assert_eq!(params, json!({"n": 7}));
    assert_eq!(b.text(r#"#attempts tr[data-attempt="1"] td.outcome"#), "ok");
    assert_eq!(s.state(id), "completed");
    s.screenshot("job.png");
    s.finish("run_a_job_from_the_form");
}

#[test]
fn html_in_params_and_filters_is_shown_as_text_and_runs_nothing() {
    let s = Session::logged_in();
    let b = &s.browser;
    let script = "<script>window.__xss=1</script>";
    let img = r#"<img src=x onerror="window.__xss=1">"#;
    let file = "\u{202E}exe.txt";
    let params = json!({"script": script, "img": img, "file": file}).to_string();
    let id = s
        .host
        .enqueue(&[r"Tests\Misbehave", "echo", "--params-json", &params]);
    s.host.wait_state(id, &["completed"]);

    b.goto(&s.url(&format!("/jobs/{id}")));
    b.wait_for_text("#job-state", "completed");
    let text = b.text("#params");
    // A right-to-left override shows as its escape; the JSON shown still means the same value.
    assert!(
        !text.contains('\u{202E}') && text.contains(r"\u202Eexe.txt"),
        "{text}"
    );
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["script"], script);
    assert_eq!(shown["img"], img);
    assert_eq!(shown["file"], file);
    let result: Value = serde_json::from_str(&b.text("#result")).unwrap();
    assert_eq!(result["params"], shown);
    let elements = b.execute(
        "return document.querySelectorAll('#main script, #main img, #params *, #result *').length;",
        &[],
    );
    assert_eq!(elements, json!(0), "markup from params became elements");
    assert_eq!(
        b.execute("return typeof window.__xss;", &[]),
        json!("undefined")
    );

    // A filter value is given back as the field's value, not as markup.
    let class = format!(r#""><img src=x onerror="window.__xss=1">{script}"#);
    let query: String = class.bytes().map(|byte| format!("%{byte:02X}")).collect();
    b.goto(&s.url(&format!("/jobs?class={query}")));
    b.find("#filter");
    let field = b.attribute(r#"#filter input[name="class"]"#, "value");
    assert_eq!(field.as_deref(), Some(class.as_str()));
    assert_eq!(
        b.execute(
            "return document.querySelectorAll('#main img, #main script').length;",
            &[]
        ),
        json!(0)
    );
    assert_eq!(
        b.execute("return typeof window.__xss;", &[]),
        json!("undefined")
    );
    s.finish("html_in_params_and_filters_is_shown_as_text_and_runs_nothing");
}

#[test]
fn a_payload_in_every_field_runs_nothing_on_any_page() {
    let s = Session::logged_in();
    let b = &s.browser;
    let none_from_data = |what: &str| {
        let elements = b.execute(
            "return document.querySelectorAll('#main script, #main img, #main [onerror]').length;",
            &[],
        );
        assert_eq!(
            elements,
            json!(0),
            "{what}: markup from data became elements"
        );
        assert_eq!(
            b.execute("return typeof window.__xss;", &[]),
            json!("undefined"),
            "{what}"
        );
    };
    for path in payload_everywhere(&s.host) {
        b.goto(&s.url(&path));
        b.find("#main");
        none_from_data(&path);
    }

    // The run form gives back what was sent as the fields' values.
    b.goto(&s.url("/run"));
    b.clear("#run-params");
    b.send_keys("#run-params", PAYLOAD);
    b.clear("#run-delay");
    b.send_keys("#run-delay", PAYLOAD);
    b.click("#run-submit");
    b.find("#run-error");
    none_from_data("the run form sent back");
    for field in ["run-params", "run-delay"] {
        let value = b.execute(
            "return document.getElementById(arguments[0]).value;",
            &[json!(field)],
        );
        assert_eq!(value, json!(PAYLOAD), "{field}");
    }
    s.finish("a_payload_in_every_field_runs_nothing_on_any_page");
}
