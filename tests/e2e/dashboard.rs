//! The admin dashboard over real HTTP: `jobhost serve` with `web.listen` on a free port (read
//! from `dashboard.json`), driven with plain requests — who gets in, what is refused, slowed and
//! logged, what the pages show, the actions through forms and through the API, and the live
//! change events.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use jobhost_e2e::{wait_for, Host};
use serde_json::{json, Value};

const PREFIX: &str = "/admin/background-jobs";
const TOKEN: &str = "e2e-admin-token-0123456789";

/// A `jobhost serve` with its dashboard, and an HTTP client for it.
pub(crate) struct Dashboard {
    pub(crate) host: Host,
    pub(crate) serve: Option<Child>,
    /// `http://127.0.0.1:PORT/admin/background-jobs`
    base: String,
    /// The token, as configured or as generated.
    pub(crate) token: String,
    agent: ureq::Agent,
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn location(&self) -> &str {
        self.header("location").unwrap_or_default()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The page's CSRF token, from `<meta name="csrf-token">`.
    pub(crate) fn csrf(&self) -> String {
        let marker = r#"<meta name="csrf-token" content=""#;
        let start = self.body.find(marker).expect("a csrf-token meta tag") + marker.len();
        let len = self.body[start..].find('"').unwrap();
        self.body[start..start + len].to_owned()
    }
}

impl From<ureq::http::Response<ureq::Body>> for Reply {
    fn from(mut response: ureq::http::Response<ureq::Body>) -> Self {
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        Self {
            status: response.status().as_u16(),
            headers,
            body: response.body_mut().read_to_string().unwrap(),
        }
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub(crate) enum As<'a> {
    Nobody,
    /// With this session cookie (`jobhost_session=...`).
    Cookie(&'a str),
    /// With this bearer token.
    Bearer(&'a str),
}

impl Dashboard {
    /// Starts `jobhost serve` with the dashboard on a free port, the admin token [`TOKEN`]
    /// unless `extra` settings say otherwise.
    pub(crate) fn start(extra: &str) -> Self {
        let host = Host::standard();
        Self::start_in(host, &format!("web.admin_token = \"{TOKEN}\"\n{extra}"))
    }

    /// Starts `jobhost serve` with the dashboard on a free port for `host`, with the `extra`
    /// settings (a generated token unless they set one).
    pub(crate) fn start_in(host: Host, extra: &str) -> Self {
        let (serve, info) = host.serve_dashboard(extra);
        let url = info["url"].as_str().unwrap();
        let base = url.strip_suffix("/login").unwrap().to_owned();
        let token = info["token"]
            .as_str()
            .map_or_else(|| TOKEN.to_owned(), str::to_owned);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self {
            host,
            serve: Some(serve),
            base,
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn get(&self, path: &str, who: As<'_>) -> Reply {
        let request = self.agent.get(self.url(path));
        let request = match who {
            As::Nobody => request,
            As::Cookie(c) => request.header("Cookie", c),
            As::Bearer(t) => request.header("Authorization", format!("Bearer {t}")),
        };
        request.call().unwrap().into()
    }

    /// A form POST.
    pub(crate) fn post_form(&self, path: &str, who: As<'_>, fields: &[(&str, &str)]) -> Reply {
        let request = self.agent.post(self.url(path));
        let request = match who {
            As::Nobody => request,
            As::Cookie(c) => request.header("Cookie", c),
            As::Bearer(t) => request.header("Authorization", format!("Bearer {t}")),
        };
        request.send_form(fields.iter().copied()).unwrap().into()
    }

    /// A JSON POST (`body` None: no body), with extra headers.
    pub(crate) fn post_json(
        &self,
        path: &str,
        who: As<'_>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.agent.post(self.url(path));
        request = match who {
            As::Nobody => request,
            As::Cookie(c) => request.header("Cookie", c),
            As::Bearer(t) => request.header("Authorization", format!("Bearer {t}")),
        };
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        match body {
            Some(body) => request
                .header("Content-Type", "application/json")
                .send(body.to_string())
                .unwrap()
                .into(),
            None => request.send_empty().unwrap().into(),
        }
    }

    /// A request written to the socket by hand, so that a refusal that comes before the whole
    /// body is sent is still read: `method path` with `headers` (the cookie or bearer token of
    /// `who` added) and `body`, written by a thread of its own while the answer is read.
    pub(crate) fn raw(
        &self,
        method: &str,
        path: &str,
        who: As<'_>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        use std::io::{Read as _, Write as _};
        let authority = self.authority();
        let mut head = format!(
            "{method} {PREFIX}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
        );
        // A chunked body (the caller encodes it) has no length.
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        match who {
            As::Nobody => {}
            As::Cookie(c) => head.push_str(&format!("Cookie: {c}\r\n")),
            As::Bearer(t) => head.push_str(&format!("Authorization: Bearer {t}\r\n")),
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = std::net::TcpStream::connect(&authority).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            // The server may answer and close before it has read everything: not an error here.
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body);
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = sending.join();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no answer: {text:?}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// A form POST of `body` (already encoded) with extra `headers`, written by hand.
    pub(crate) fn raw_form(
        &self,
        path: &str,
        who: As<'_>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.raw("POST", path, who, &all, body.as_bytes().to_vec())
    }

    /// `127.0.0.1:PORT`
    fn authority(&self) -> String {
        self.base
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix(PREFIX))
            .unwrap()
            .to_owned()
    }

    /// The failed logins logged so far: the address each names.
    fn failed_logins(&self) -> Vec<String> {
        self.host
            .log("background_jobs_errors.log")
            .iter()
            .filter_map(|line| line.strip_prefix("local.WARNING: Failed dashboard login "))
            .map(|context| {
                let context: Value = serde_json::from_str(context).unwrap();
                context["ip"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Logs in; returns the cookie to send (`jobhost_session=...`).
    pub(crate) fn login(&self) -> String {
        let reply = self.post_form("/login", As::Nobody, &[("token", &self.token)]);
        assert_eq!(reply.status, 303, "{reply:?}");
        assert_eq!(reply.location(), format!("{PREFIX}/"));
        let cookie = reply.header("set-cookie").expect("a session cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin/background-jobs"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(
            !cookie.contains("Secure"),
            "plain http on loopback: {cookie}"
        );
        cookie.split(';').next().unwrap().to_owned()
    }

    /// The job `id` as the API shows it.
    fn api_job(&self, id: i64) -> Value {
        let reply = self.get(&format!("/api/jobs/{id}"), As::Bearer(&self.token));
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()
    }

    fn wait_state(&self, id: i64, states: &[&str]) -> Value {
        wait_for(
            &format!("job {id} to be {states:?}"),
            Duration::from_secs(60),
            || {
                let job = self.api_job(id);
                let state = job["job"]["state"].as_str().unwrap().to_owned();
                states.contains(&state.as_str()).then_some(job)
            },
        )
    }

    /// Subscribes to the change events (`GET /events`) with the session `cookie`: each line of
    /// the stream, as it arrives.
    pub(crate) fn events(&self, cookie: &str) -> std::sync::mpsc::Receiver<String> {
        let response = self
            .agent
            .get(self.url("/events"))
            .header("Cookie", cookie)
            .config()
            .timeout_global(None)
            .build()
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let reader = BufReader::new(response.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        received
    }

    /// Enqueues through the API; returns the id.
    fn api_run(&self, body: Value) -> i64 {
        let reply = self.post_json("/api/jobs", As::Bearer(&self.token), &[], Some(body));
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.json()["id"].as_i64().unwrap()
    }

    fn dashboard_file(&self) -> PathBuf {
        self.host.state_dir().join("dashboard.json")
    }

    /// Stops `jobhost serve` and waits for it.
    fn stop(&mut self) {
        let Some(mut serve) = self.serve.take() else {
            return;
        };
        assert!(
            self.host.stop_serve(&mut serve),
            "jobhost serve did not stop"
        );
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            self.host.stop_serve(&mut serve);
        }
    }
}

fn assert_security_headers(reply: &Reply) {
    assert_eq!(
        reply.header("content-security-policy"),
        Some("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
        "{reply:?}"
    );
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{reply:?}");
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[test]
fn without_a_session_pages_redirect_to_login_and_the_api_answers_401() {
    let d = Dashboard::start("");
    let id = d.host.enqueue(&[r"Tests\Misbehave", "ok"]);
    let pages = [
        "/".to_owned(),
        "/jobs".into(),
        "/jobs?state=failed&page=2".into(),
        format!("/jobs/{id}"),
        "/jobs/999999".into(),
        "/plugins".into(),
        "/logs".into(),
        "/run".into(),
        "/events".into(),
        "/no-such-page".into(),
    ];
    let bogus = "jobhost_session=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for who in [As::Nobody, As::Cookie(bogus)] {
        for path in &pages {
            let reply = d.get(path, who);
            assert_eq!(reply.status, 303, "GET {path}: {reply:?}");
            assert_eq!(reply.location(), format!("{PREFIX}/login"), "GET {path}");
            assert_security_headers(&reply);
        }
        for path in [
            "/logout".to_owned(),
            format!("/jobs/{id}/cancel"),
            format!("/jobs/{id}/retry"),
            "/run".into(),
        ] {
            let reply = d.post_form(&path, who, &[("csrf", "x"), ("job", r"Tests\Misbehave@ok")]);
            assert_eq!(reply.status, 303, "POST {path}: {reply:?}");
            assert_eq!(reply.location(), format!("{PREFIX}/login"), "POST {path}");
        }
        for path in [
            "/api/stats".to_owned(),
            "/api/jobs".into(),
            format!("/api/jobs/{id}"),
            "/api/plugins".into(),
            "/api/logs".into(),
            "/api/nothing".into(),
        ] {
            let reply = d.get(&path, who);
            assert_eq!(reply.status, 401, "GET {path}: {reply:?}");
            assert_eq!(reply.json(), json!({"error": "unauthorized"}));
            assert_security_headers(&reply);
        }
        for path in [
            "/api/jobs".to_owned(),
            format!("/api/jobs/{id}/cancel"),
            format!("/api/jobs/{id}/retry"),
        ] {
            let body = json!({"class": r"Tests\Misbehave", "method": "ok"});
            let reply = d.post_json(&path, who, &[("X-CSRF-Token", "x")], Some(body));
            assert_eq!(reply.status, 401, "POST {path}: {reply:?}");
            assert_eq!(reply.json(), json!({"error": "unauthorized"}));
        }
    }
    // Only the login page and the two assets are served to anybody.
    let login = d.get("/login", As::Nobody);
    assert_eq!(login.status, 200);
    assert_security_headers(&login);
    for part in [
        r#"<form id="login" method="post""#,
        r#"<input id="token" name="token" type="password""#,
        r#"<button id="login-submit""#,
    ] {
        assert!(login.body.contains(part), "{part} in {}", login.body);
    }
    for (asset, kind) in [
        ("/assets/app.css", "text/css"),
        ("/assets/app.js", "text/javascript"),
    ] {
        let reply = d.get(asset, As::Nobody);
        assert_eq!(reply.status, 200, "{asset}");
        assert!(reply.header("content-type").unwrap().starts_with(kind));
        assert_security_headers(&reply);
    }
    // Nothing was done on the way.
    assert_eq!(
        d.wait_state(id, &["completed"])["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_wrong_token_is_refused_slowed_down_and_logged() {
    let d = Dashboard::start("");
    let timed = |token: &str| {
        let start = Instant::now();
        let reply = d.post_form("/login", As::Nobody, &[("token", token)]);
        (reply, start.elapsed())
    };
    let (first, took_first) = timed("wrong");
    assert_eq!(first.status, 401);
    assert!(first.header("set-cookie").is_none());
    assert!(
        first
            .body
            .contains(r#"<p class="error" id="login-error">Wrong token</p>"#),
        "{}",
        first.body
    );
    assert!(took_first >= Duration::from_millis(250), "{took_first:?}");
    let (second, took_second) = timed(&format!("{TOKEN}x"));
    assert_eq!(second.status, 401);
    assert!(took_second >= Duration::from_millis(500), "{took_second:?}");
    let (_, took_third) = timed("");
    assert!(took_third >= Duration::from_millis(1000), "{took_third:?}");

    // A wrong bearer token is a failed login too.
    let reply = d.get("/api/stats", As::Bearer("wrong"));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), json!({"error": "unauthorized"}));

    let errors = d.host.log("background_jobs_errors.log");
    let refused: Vec<&String> = errors
        .iter()
        .filter(|l| {
            *l == r#"local.WARNING: Failed dashboard login {"ip":"127.0.0.1","status":"refused"}"#
        })
        .collect();
    assert_eq!(refused.len(), 4, "{errors:#?}");
    assert!(
        !errors.iter().any(|l| l.contains(TOKEN)),
        "no token in the logs"
    );

    // The right token still works, and resets the delay.
    d.login();
    let (_, took_again) = timed("wrong");
    assert!(took_again < Duration::from_millis(900), "{took_again:?}");
}

#[test]
fn a_session_sees_every_page_and_needs_its_csrf_token_to_change_anything() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let id = d.api_run(json!({"class": r"Tests\Misbehave", "method": "sleep", "params": {"seconds": 60}, "delay": 3600}));

    for path in [
        "/",
        "/jobs",
        &format!("/jobs/{id}"),
        "/plugins",
        "/logs",
        "/run",
    ] {
        let reply = d.get(path, me);
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        assert_security_headers(&reply);
        for part in [
            r#"id="nav-overview""#,
            r#"id="nav-jobs""#,
            r#"id="nav-plugins""#,
            r#"id="nav-logs""#,
            r#"id="nav-run""#,
            r#"<meta name="csrf-token" content=""#,
            r#"<main id="main""#,
        ] {
            assert!(reply.body.contains(part), "{part} on {path}");
        }
    }
    let csrf = d.get("/", me).csrf();
    assert_eq!(csrf.len(), 64);

    // The dispatcher serving the dashboard is registered, with its slots and a heartbeat.
    let listed = d.get("/api/dispatchers", me).json();
    let dispatchers = listed["dispatchers"].as_array().unwrap();
    assert_eq!(dispatchers.len(), 1, "{listed:#}");
    let serve_pid = d.serve.as_ref().unwrap().id();
    assert_eq!(dispatchers[0]["pid"], serve_pid, "{listed:#}");
    assert_eq!(dispatchers[0]["slots"], 2, "{listed:#}");
    assert!(dispatchers[0]["heartbeat_at"].as_i64().unwrap() > 0);
    let row = format!(r#"<tr data-dispatcher="{}">"#, dispatchers[0]["id"]);
    let overview = d.get("/", me).body;
    assert!(overview.contains(&row), "{overview}");
    assert!(overview.contains(&format!(r#"<td class="pid">{serve_pid}</td>"#)));

    // Without the token, or with a wrong one, nothing changes.
    let cancel = format!("/jobs/{id}/cancel");
    for fields in [vec![], vec![("csrf", "wrong")], vec![("csrf", "")]] {
        let reply = d.post_form(&cancel, me, &fields);
        assert_eq!(reply.status, 403, "{fields:?}: {reply:?}");
    }
    let api_cancel = format!("/api/jobs/{id}/cancel");
    for headers in [vec![], vec![("X-CSRF-Token", "wrong")]] {
        let reply = d.post_json(&api_cancel, me, &headers, None);
        assert_eq!(reply.status, 403, "{headers:?}: {reply:?}");
        assert!(reply.json()["error"].is_string());
    }
    let run = d.post_json(
        "/api/jobs",
        me,
        &[],
        Some(json!({"class": r"Tests\Misbehave", "method": "ok"})),
    );
    assert_eq!(run.status, 403, "{run:?}");
    assert_eq!(d.api_job(id)["job"]["state"], "scheduled");

    // With it, the API call goes through.
    let reply = d.post_json(&api_cancel, me, &[("X-CSRF-Token", &csrf)], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"id": id, "outcome": "cancelled"}));

    // Logging out needs the token too, and ends the session.
    assert_eq!(d.post_form("/logout", me, &[]).status, 403);
    let out = d.post_form("/logout", me, &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), format!("{PREFIX}/login"));
    assert_eq!(d.get("/", me).status, 303);
    assert_eq!(d.get("/api/stats", me).status, 401);
}

#[test]
fn params_with_a_script_are_shown_as_text() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let payload = "<script>alert(1)</script>";
    let params = json!({"name": payload, "quote": "\"'&"}).to_string();
    let id = d
        .host
        .enqueue(&[r"Tests\Misbehave", "echo", "--params-json", &params]);
    d.wait_state(id, &["completed"]);
    let page = d.get(&format!("/jobs/{id}"), As::Cookie(&cookie));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(payload), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.body.contains("&quot;&#39;&amp;"));
    for part in [
        &format!(r#"<span id="job-id">{id}</span>"#),
        r#"id="job-name""#,
        r#"<span id="job-state" class="state state-completed">completed</span>"#,
        r#"<pre id="params">"#,
        r#"<pre id="result">"#,
        r#"id="duration""#,
        r#"<table id="attempts">"#,
        r#"<tr data-attempt="1">"#,
        r#"<td class="outcome"#,
        r#"<td class="pid">"#,
        r#"<td class="hash""#,
        r#"<pre class="output"#,
    ] {
        assert!(page.body.contains(part), "{part} in {}", page.body);
    }
    // Finished: neither cancel nor retry is offered.
    assert!(!page.body.contains(r#"id="cancel-form""#));
    assert!(!page.body.contains(r#"id="retry-form""#));
    // And in the lists.
    let list = d.get("/jobs", As::Cookie(&cookie));
    assert!(!list.body.contains("<script>alert"));
    assert_eq!(d.get("/jobs/424242", As::Cookie(&cookie)).status, 404);
    assert_eq!(d.get("/jobs/abc", As::Cookie(&cookie)).status, 400);
}

/// HTML that must stay text wherever a page shows it: a script, a break out of a quoted
/// attribute into an image with a handler, and a quote.
pub(crate) const PAYLOAD: &str =
    r#"<script>window.__xss=1</script>"><img src=x onerror=window.__xss=1>'"#;

/// Every byte of `text` percent-encoded, for an address.
pub(crate) fn percent_encoded(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

/// Puts [`PAYLOAD`] in every field of `host` that a page shows and that can carry text: params
/// (keys and values) and so a result, an error and the output of a job, the log lines about
/// them, store rows written by something else (a job's class, method and plugin, an attempt's
/// outcome and plugin hash, a dispatcher's host and state directory), a file name in the
/// plugin directory and an invalid allowlist. Returns the pages that show it, with the filter
/// and the job id of an address among them.
pub(crate) fn payload_everywhere(host: &Host) -> Vec<String> {
    let params = json!({ PAYLOAD: PAYLOAD }).to_string();
    let echo = host.enqueue(&[r"Tests\Misbehave", "echo", "--params-json", &params]);
    host.wait_state(echo, &["completed"]);
    let say = json!({ "text": PAYLOAD }).to_string();
    let failed = host.enqueue(&[r"Tests\Misbehave", "say_and_fail", "--params-json", &say]);
    host.wait_state(failed, &["failed"]);

    // The store is data too: a row another program wrote (a second dispatcher, an older
    // version), and a hash that is not ASCII, whose shortened form must not split a character.
    let database = rusqlite::Connection::open(host.state_dir().join("jobs.sqlite3")).unwrap();
    database
        .execute(
            "UPDATE jobs SET class = ?1, method = ?1, plugin = ?1 WHERE id = ?2",
            rusqlite::params![PAYLOAD, echo],
        )
        .unwrap();
    let hash = format!("a{}{PAYLOAD}", "é".repeat(20));
    database
        .execute(
            "UPDATE attempts SET outcome = ?1, plugin_hash = ?2 WHERE job_id = ?3",
            rusqlite::params![PAYLOAD, hash, echo],
        )
        .unwrap();
    database
        .execute(
            "UPDATE dispatchers SET host = ?1, state_dir = ?1",
            [PAYLOAD],
        )
        .unwrap();

    // A file name cannot hold a `/`.
    let file = format!("{}.so", PAYLOAD.replace('/', ""));
    fs::write(host.plugin_dir().join(file), "not a library").unwrap();
    // A class that is no class name: the allowlist's error names it.
    let class = serde_json::to_string(PAYLOAD).unwrap();
    host.write(
        "allowlist.toml",
        format!("[jobs]\n{class} = [\"handle\"]\n"),
    );

    let id = percent_encoded(PAYLOAD);
    [
        "/".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs?class={id}"),
        format!("/jobs/{echo}"),
        format!("/jobs/{failed}"),
        format!("/jobs/{id}"),
        "/plugins".to_owned(),
        "/logs".to_owned(),
    ]
    .into()
}

/// Asserts that `body`, the page `what`, shows [`PAYLOAD`] as text only: escaped, never as
/// markup.
pub(crate) fn assert_payload_escaped(what: &str, body: &str) {
    for markup in ["<script>window", "<img", "onerror=window.__xss=1>"] {
        assert!(
            !body.contains(markup),
            "{what} has {markup:?} as markup:\n{body}"
        );
    }
    for escaped in [
        "&lt;script&gt;window.__xss=1&lt;",
        "&lt;img src=x onerror=window.__xss=1&gt;",
        "&#39;",
    ] {
        assert!(body.contains(escaped), "{what} lacks {escaped:?}:\n{body}");
    }
}

#[test]
fn a_payload_in_every_field_a_page_shows_stays_text() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    for path in payload_everywhere(&d.host) {
        let page = d.get(&path, me);
        assert!(matches!(page.status, 200 | 400), "{path}: {page:?}");
        assert_payload_escaped(&path, &page.body);
    }
    // The job page shows each field escaped whole.
    let escaped = "&lt;script&gt;window.__xss=1&lt;/script&gt;&quot;&gt;&lt;img src=x \
                   onerror=window.__xss=1&gt;&#39;";
    let jobs = d.get("/jobs", me).body;
    assert!(
        jobs.contains(&format!(r#"<td class="job">{escaped}@{escaped}</td>"#)),
        "{jobs}"
    );

    // The run form shows back what was sent, and what was wrong with it.
    let csrf = d.get("/run", me).csrf();
    let job = format!("{PAYLOAD}@{PAYLOAD}");
    for (job, params, delay, status) in [
        (job.as_str(), PAYLOAD, "0", 400),
        (r"Tests\Misbehave@echo", "{}", PAYLOAD, 400),
        (job.as_str(), "{}", "0", 400),
    ] {
        let reply = d.post_form(
            "/run",
            me,
            &[
                ("csrf", &csrf),
                ("job", job),
                ("params", params),
                ("priority", "normal"),
                ("delay", delay),
            ],
        );
        assert_eq!(reply.status, status, "{job} {params} {delay}: {reply:?}");
        let what = format!("POST /run of {job} {params} {delay}");
        for markup in ["<script>window", "<img", "onerror=window.__xss=1>"] {
            assert!(!reply.body.contains(markup), "{what}:\n{}", reply.body);
        }
        assert!(
            reply.body.contains("&lt;script&gt;window.__xss=1&lt;"),
            "{what}:\n{}",
            reply.body
        );
    }
}

#[test]
fn run_cancel_and_retry_through_the_forms() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let form = d.get("/run", me);
    let csrf = form.csrf();
    for part in [
        r#"<form id="run-form" method="post""#,
        r#"<select id="run-job" name="job">"#,
        r#"<option value="Tests\Misbehave@hang_cooperative">"#,
        r#"<option value="App\Jobs\SendWelcomeEmail@handle">"#,
        r#"<textarea id="run-params" name="params""#,
        r#"<select id="run-priority" name="priority">"#,
        r#"<input id="run-delay" name="delay""#,
        r#"<button id="run-submit""#,
    ] {
        assert!(form.body.contains(part), "{part} in {}", form.body);
    }

    // Bad input and refusals say what was wrong.
    let run = |job: &str, params: &str, delay: &str| {
        d.post_form(
            "/run",
            me,
            &[
                ("csrf", &csrf),
                ("job", job),
                ("params", params),
                ("priority", "high"),
                ("delay", delay),
            ],
        )
    };
    for (job, params, delay, status, says) in [
        (r"Tests\Misbehave@ok", "{not json", "0", 400, "params"),
        (r"Tests\Misbehave@ok", "[]", "soon", 400, "delay"),
        (r"Tests\Misbehave@ok", "7", "0", 400, "params"),
        (
            r"Tests\Misbehave@not_a_method",
            "{}",
            "0",
            403,
            "not approved",
        ),
        (r"Nobody\Offers@this", "{}", "0", 403, "not approved"),
    ] {
        let reply = run(job, params, delay);
        assert_eq!(reply.status, status, "{job} {params} {delay}: {reply:?}");
        assert!(
            reply.body.contains(r#"<p class="error" id="run-error">"#) && reply.body.contains(says),
            "{says}: {}",
            reply.body
        );
    }

    // Run.
    let reply = run(r"Tests\Misbehave@hang_cooperative", "{}", "0");
    assert_eq!(reply.status, 303, "{reply:?}");
    let id: i64 = reply
        .location()
        .strip_prefix(&format!("{PREFIX}/jobs/"))
        .unwrap()
        .parse()
        .unwrap();
    let job = d.wait_state(id, &["running"]);
    assert_eq!(job["job"]["priority"], "high");
    let page = d.get(&format!("/jobs/{id}"), me);
    assert!(page.body.contains(&format!(
        r#"<form id="cancel-form" method="post" action="{PREFIX}/jobs/{id}/cancel""#
    )));
    assert!(page.body.contains(r#"<button id="cancel""#));
    let overview = d.get("/", me);
    assert!(overview
        .body
        .contains(&format!(r#"<tr data-job-id="{id}">"#)));
    assert!(overview
        .body
        .contains(r#"<td class="elapsed" data-started-at=""#));

    // Cancel.
    let reply = d.post_form(&format!("/jobs/{id}/cancel"), me, &[("csrf", &csrf)]);
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.location(), format!("{PREFIX}/jobs/{id}"));
    d.wait_state(id, &["cancelled"]);
    let page = d.get(&format!("/jobs/{id}"), me);
    assert!(page
        .body
        .contains(r#"<span id="job-state" class="state state-cancelled">cancelled</span>"#));
    assert!(page.body.contains(r#"<button id="retry""#));

    // Retry.
    let reply = d.post_form(&format!("/jobs/{id}/retry"), me, &[("csrf", &csrf)]);
    assert_eq!(reply.status, 303, "{reply:?}");
    let job = d.wait_state(id, &["running"]);
    assert_eq!(job["attempts"].as_array().unwrap().len(), 2);
    // A running job cannot be retried; the page says so.
    let reply = d.post_form(&format!("/jobs/{id}/retry"), me, &[("csrf", &csrf)]);
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains(r#"id="action-error""#));
    let reply = d.post_form(&format!("/jobs/{id}/cancel"), me, &[("csrf", &csrf)]);
    assert_eq!(reply.status, 303);
    d.wait_state(id, &["cancelled"]);
}

#[test]
fn the_api_lists_shows_runs_cancels_and_retries_with_a_bearer_token() {
    let d = Dashboard::start("");
    let me = As::Bearer(&d.token);

    let done =
        d.api_run(json!({"class": r"Tests\Misbehave", "method": "echo", "params": {"n": 1}}));
    let failed =
        d.api_run(json!({"class": r"Tests\Misbehave", "method": "always_fail", "retries": 0}));
    let hanging = d.api_run(json!({
        "class": r"Tests\Misbehave", "method": "hang_cooperative",
        "priority": "low", "timeout": 120
    }));
    d.wait_state(done, &["completed"]);
    d.wait_state(failed, &["failed"]);
    d.wait_state(hanging, &["running"]);

    let shown = d.api_job(done);
    assert_eq!(shown["job"]["params"], json!({"n": 1}));
    assert_eq!(shown["attempts"][0]["outcome"], "ok");
    assert_eq!(shown, d.host.show(done), "the same as jobhost show --json");

    let stats = d.get("/api/stats", me).json();
    assert_eq!(stats["by_state"]["completed"], 1);
    assert_eq!(stats["by_state"]["failed"], 1);
    assert_eq!(stats["by_state"]["running"], 1);
    for window in ["5m", "15m", "60m"] {
        assert_eq!(stats["finished"][window], 1, "{stats}");
        assert_eq!(stats["failed"][window], 1, "{stats}");
    }

    let list = d.get("/api/jobs?state=failed", me).json();
    let ids: Vec<i64> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [failed]);
    assert_eq!(list["page"], 1);
    assert_eq!(list["has_more"], false);
    assert_eq!(d.get("/api/jobs?state=nope", me).status, 400);

    let plugins = d.get("/api/plugins", me).json();
    let runnable = plugins["runnable"].as_array().unwrap();
    assert!(runnable.contains(&json!(r"App\Jobs\SendWelcomeEmail@handle")));
    assert!(runnable.contains(&json!(r"Tests\Misbehave@echo")));
    let logs = d.get("/api/logs", me).json();
    assert!(logs["main"].as_array().unwrap().iter().any(|l| l
        .as_str()
        .unwrap()
        .contains("Job completed: Tests\\Misbehave@echo")));

    // Cancel the running job, retry it, cancel it again; retry the failed one.
    let reply = d.post_json(&format!("/api/jobs/{hanging}/cancel"), me, &[], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({"id": hanging, "outcome": "cancel_requested"})
    );
    d.wait_state(hanging, &["cancelled"]);
    let reply = d.post_json(&format!("/api/jobs/{failed}/retry"), me, &[], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"id": failed, "state": "queued"}));
    let again = d.wait_state(failed, &["failed"]);
    assert_eq!(again["attempts"].as_array().unwrap().len(), 2);

    // Errors are JSON with the right status.
    for (path, body, status) in [
        ("/api/jobs", Some(json!({"class": r"Tests\Misbehave"})), 400),
        (
            "/api/jobs",
            Some(json!({"class": r"Tests\Misbehave", "method": "ok", "params": 5})),
            400,
        ),
        (
            "/api/jobs",
            Some(json!({"class": r"Tests\Misbehave", "method": "ok", "extra": 1})),
            400,
        ),
        (
            "/api/jobs",
            Some(json!({"class": r"Tests\Misbehave", "method": "nope"})),
            403,
        ),
        ("/api/jobs/424242/cancel", None, 404),
        ("/api/jobs/424242/retry", None, 404),
    ] {
        let reply = d.post_json(path, me, &[], body.clone());
        assert_eq!(reply.status, status, "{path} {body:?}: {reply:?}");
        assert!(reply.json()["error"].is_string(), "{reply:?}");
    }
    let reply = d.post_json(&format!("/api/jobs/{done}/cancel"), me, &[], None);
    assert_eq!(reply.status, 400, "a finished job cannot be cancelled");
    assert_eq!(d.get("/api/jobs/424242", me).status, 404);
}

#[test]
fn the_jobs_list_filters_and_pages_newest_first() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let ids: Vec<i64> = (0..50)
        .map(|i| {
            let priority = if i == 0 { "high" } else { "low" };
            d.api_run(json!({
                "class": r"Tests\Misbehave", "method": "ok", "delay": 3600, "priority": priority
            }))
        })
        .collect();
    let welcome = d.api_run(json!({
        "class": r"App\Jobs\SendWelcomeEmail", "method": "handle",
        "params": {"user_id": 1}, "delay": 3600
    }));

    let rows = |body: &str| -> Vec<i64> {
        body.match_indices(r#"<tr data-job-id=""#)
            .map(|(at, m)| {
                let rest = &body[at + m.len()..];
                rest[..rest.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    };
    let first = d.get("/jobs", me);
    assert_eq!(first.status, 200);
    for part in [
        r#"<form id="filter" method="get""#,
        r#"<select name="state">"#,
        r#"<input name="class""#,
        r#"<select name="priority">"#,
        r#"<table id="jobs">"#,
        r#"<td class="id"><a class="job-link""#,
        r#"<td class="job">Tests\Misbehave@ok</td>"#,
        r#"<td class="attempts">0/4</td>"#,
        r#"<td class="priority">low</td>"#,
        r#"<td class="created">"#,
        r#"<td class="started">"#,
        r#"<td class="finished">"#,
        r#"id="next-page""#,
    ] {
        assert!(first.body.contains(part), "{part} in {}", first.body);
    }
    assert!(!first.body.contains(r#"id="prev-page""#));
    let page1 = rows(&first.body);
    assert_eq!(page1.len(), 50);
    assert_eq!(page1[0], welcome, "newest first");

    let second = d.get("/jobs?page=2", me);
    assert_eq!(rows(&second.body), [ids[0]]);
    assert!(second.body.contains(r#"id="prev-page""#));
    assert!(!second.body.contains(r#"id="next-page""#));

    let high = d.get("/jobs?state=scheduled&class=&priority=high", me);
    assert_eq!(rows(&high.body), [ids[0]]);
    let by_class = d.get("/jobs?class=App%5CJobs%5CSendWelcomeEmail", me);
    assert_eq!(rows(&by_class.body), [welcome]);
    assert!(by_class
        .body
        .contains(r#"value="App\Jobs\SendWelcomeEmail""#));
    assert_eq!(d.get("/jobs?state=bogus", me).status, 400);
}

#[test]
fn events_announce_a_change_after_an_enqueue() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let received = d.events(&cookie);
    // Nothing changes: nothing is sent (keep-alives come every 15 s). The dispatcher's own
    // start-up (its registration, its first look at the plugins) may still change the store
    // when the stream opens, so the stream must fall quiet, not be quiet from its first moment.
    wait_for(
        "the event stream to fall quiet",
        Duration::from_secs(30),
        || {
            received
                .recv_timeout(Duration::from_millis(500))
                .is_err()
                .then_some(())
        },
    );

    let id = d.api_run(json!({"class": r"Tests\Misbehave", "method": "ok"}));
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .expect("an event after the enqueue");
    assert_eq!(line, "event: change");
    let data = received.recv_timeout(Duration::from_secs(1)).unwrap();
    let n: u64 = data.strip_prefix("data: ").unwrap().parse().unwrap();
    assert!(n >= 1, "{data}");
    d.wait_state(id, &["completed"]);

    // A change by another process (the command line) is announced too.
    while received.recv_timeout(Duration::from_millis(400)).is_ok() {}
    d.host.enqueue(&[r"Tests\Misbehave", "ok"]);
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .expect("an event after a command-line enqueue");
    assert_eq!(line, "event: change");
}

#[test]
fn a_generated_token_is_printed_once_and_kept_in_an_owner_only_file() {
    let host = Host::standard();
    let mut d = Dashboard::start_in(host, "");
    assert_eq!(d.token.len(), 64);
    assert!(d.token.chars().all(|c| c.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(d.dashboard_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let info: Value = serde_json::from_slice(&fs::read(d.dashboard_file()).unwrap()).unwrap();
    let url = info["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/admin/background-jobs/login"),
        "{url}"
    );
    // serve prints the line right after it writes dashboard.json: wait for it.
    let printed: Vec<String> = wait_for("the dashboard line", Duration::from_secs(30), || {
        let stderr = fs::read_to_string(d.host.root().join("serve.err")).ok()?;
        let printed: Vec<String> = stderr
            .lines()
            .filter(|l| l.starts_with("dashboard: "))
            .map(str::to_owned)
            .collect();
        (!printed.is_empty()).then_some(printed)
    });
    assert_eq!(printed, [format!("dashboard: {url} (token: {})", d.token)]);
    d.login();

    // Stopping the dispatcher stops the dashboard and removes the file.
    d.stop();
    assert!(!d.dashboard_file().exists());
    let refused = std::net::TcpStream::connect(url.split('/').nth(2).unwrap());
    assert!(refused.is_err(), "nothing listens any more");
}

#[test]
fn a_taken_port_leaves_the_dispatcher_running_without_the_dashboard() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let host = Host::standard();
    host.settings(&format!(
        "web.enabled = true\nweb.listen = \"127.0.0.1:{port}\"\nweb.admin_token = \"{TOKEN}\"\n"
    ));
    let mut serve = host
        .jobhost()
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the dispatcher", Duration::from_secs(30), || {
        host.dispatcher_pid()
    });
    let id = host.enqueue(&[r"Tests\Misbehave", "ok"]);
    host.wait_state(id, &["completed"]);
    let warning = wait_for("the warning", Duration::from_secs(10), || {
        host.log("background_jobs_errors.log")
            .into_iter()
            .find(|l| l.starts_with("local.WARNING: Dashboard not started"))
    });
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    assert!(!host.state_dir().join("dashboard.json").exists());
    assert!(
        serve.try_wait().unwrap().is_none(),
        "the dispatcher goes on"
    );
    host.run(&["stop"]).expect_code(0);
    assert_eq!(serve.wait().unwrap().code(), Some(0));
    drop(taken);
}

#[test]
fn the_plugins_page_shows_the_version_serving_each_class_and_what_was_rejected() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let file = d.host.plugin_dir().join("libmisbehave_fixture.so");
    let serving = jobhost_e2e::blake3_hex(&std::fs::read(&file).unwrap());
    // A broken build dropped over the working one, and an invalid allowlist edit.
    std::fs::write(&file, "not a library").unwrap();
    d.host
        .write("allowlist.toml", "[jobs]\n'Tests\\Misbehave' = [\n");

    let page = d.get("/plugins", me);
    assert_eq!(page.status, 200, "{page:?}");
    let row = page
        .body
        .lines()
        .find(|l| l.starts_with(r#"<tr data-class="Tests\Misbehave">"#))
        .unwrap_or_else(|| panic!("no row for Tests\\Misbehave:\n{}", page.body));
    assert!(row.contains("libmisbehave_fixture.so"), "{row}");
    assert!(row.contains(&serving[..16]), "{row}");
    assert!(
        page.body.contains(&format!(
            r#"Still serving its previous version, blake3 <code class="hash" title="{serving}">"#
        )),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("not a shared library: its first bytes are not an ELF header"));
    assert!(
        page.body
            .contains("was changed but is not valid, so the previous version stays in force"),
        "{}",
        page.body
    );

    let api = d.get("/api/plugins", me).json();
    let class = api["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == r"Tests\Misbehave")
        .unwrap()
        .clone();
    assert_eq!(class["hash"], serving.as_str());
    assert!(class["since"].as_i64().unwrap() > 0);
    assert!(api["runnable"]
        .as_array()
        .unwrap()
        .contains(&json!(r"Tests\Misbehave@echo")));
}

#[test]
fn the_api_and_the_run_form_refuse_out_of_range_options_naming_field_and_range() {
    let d = Dashboard::start("");
    let me = As::Bearer(&d.token);
    let ok = |extra: Value| {
        let mut body = json!({"class": r"Tests\Misbehave", "method": "ok"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, says) in [
        (
            json!({"retries": 4294967295u32}),
            "retries 4294967295 is out of range: allowed 0 to 1000",
        ),
        (
            json!({"retries": -1}),
            "retries -1 is out of range: allowed 0 to 1000",
        ),
        (
            json!({"retries": 99999999999u64}),
            "retries 99999999999 is out of range",
        ),
        (
            json!({"timeout": 1e-9}),
            "timeout 0.000000001 s is out of range: allowed 0.001 s to 604800 s (7 days)",
        ),
        (json!({"timeout": 1e300}), "timeout "),
        (json!({"delay": 1e12}), "delay "),
        (
            json!({"retry_delay": 4e8}),
            "retry_delay 400000000 s is out of range",
        ),
        (
            json!({"params": serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(127), "]".repeat(127))).unwrap()}),
            "params nest more than 32 levels deep",
        ),
    ] {
        let reply = d.post_json("/api/jobs", me, &[], Some(ok(extra.clone())));
        assert_eq!(reply.status, 400, "{extra}: {reply:?}");
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with(says), "{extra}: {error}");
    }

    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let csrf = d.get("/run", me).csrf();
    let reply = d.post_form(
        "/run",
        me,
        &[
            ("csrf", &csrf),
            ("job", r"Tests\Misbehave@ok"),
            ("params", "{}"),
            ("priority", "normal"),
            ("delay", "1e12"),
        ],
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.contains("delay 1000000000000 s is out of range"),
        "{}",
        reply.body
    );
    let list = d.get("/api/jobs", As::Bearer(&d.token)).json();
    assert_eq!(list["jobs"], json!([]), "nothing was stored");
}

#[test]
fn retry_renews_a_budget_the_store_can_hold_and_a_row_that_cannot_be_read_is_shown_with_its_problem(
) {
    let d = Dashboard::start("");
    let me = As::Bearer(&d.token);
    let id = d.api_run(json!({"class": r"Tests\Misbehave", "method": "always_fail", "retries": 0}));
    d.wait_state(id, &["failed"]);
    // As an earlier jobhost, which did not bound retries, could have stored it.
    let database = rusqlite::Connection::open(d.host.state_dir().join("jobs.sqlite3")).unwrap();
    database.busy_timeout(Duration::from_secs(30)).unwrap();
    database
        .execute("UPDATE jobs SET retries = 4294967294 WHERE id = ?1", [id])
        .unwrap();
    let reply = d.post_json(&format!("/api/jobs/{id}/retry"), me, &[], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let job = d.api_job(id);
    assert_eq!(job["job"]["max_attempts"], 1 + 1000 + 1, "{job}");
    let cookie = d.login();
    assert_eq!(d.get("/jobs", As::Cookie(&cookie)).status, 200);
    assert_eq!(
        d.get(&format!("/jobs/{id}"), As::Cookie(&cookie)).status,
        200
    );
    d.post_json(&format!("/api/jobs/{id}/cancel"), me, &[], None);
    d.wait_state(id, &["cancelled", "failed"]);

    // A row that cannot be read is shown with its problem, not a failed page.
    let broken = d.api_run(json!({"class": r"Tests\Misbehave", "method": "ok", "delay": 3600}));
    database
        .execute(
            "UPDATE jobs SET params = '{not json' WHERE id = ?1",
            [broken],
        )
        .unwrap();
    let why = "column params holds text that is not JSON";
    let page = d.get(&format!("/jobs/{broken}"), As::Cookie(&cookie));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body
            .contains(&format!("its stored row cannot be read: {why}")),
        "{}",
        page.body
    );
    assert_eq!(d.get("/jobs", As::Cookie(&cookie)).status, 200);
    assert_eq!(d.get("/", As::Cookie(&cookie)).status, 200);
    let shown = d.api_job(broken);
    assert!(
        shown["job"]["problem"].as_str().unwrap().starts_with(why),
        "{shown}"
    );
}

#[test]
fn a_right_token_never_waits_for_wrong_ones_sent_at_the_same_time() {
    let d = Dashboard::start("");
    let (done, answered) = std::sync::mpsc::channel();
    let early = std::thread::scope(|s| {
        for n in 0..5 {
            let done = done.clone();
            let d = &d;
            s.spawn(move || {
                let reply = d.post_form("/login", As::Nobody, &[("token", &format!("wrong-{n}"))]);
                done.send(reply.status).unwrap();
            });
        }
        // The server has seen the wrong tokens (it logs each as it refuses it) ...
        wait_for(
            "the wrong logins to reach the server",
            Duration::from_secs(60),
            || (d.failed_logins().len() == 5).then_some(()),
        );
        // ... and answers the right one, by form and by bearer, while they still wait:
        // the last of five failures from one address waits 0.25 + 0.5 + 1 + 2 + 4 s.
        let cookie = d.login();
        let api = d.get("/api/stats", As::Bearer(&d.token));
        let early: Vec<u16> = answered.try_iter().collect();
        assert_eq!(api.status, 200, "{api:?}");
        assert_eq!(d.get("/", As::Cookie(&cookie)).status, 200);
        early
    });
    drop(done);
    assert!(
        early.len() < 5,
        "the right token was answered only after every wrong one: {early:?}"
    );
    let all: Vec<u16> = early.into_iter().chain(answered.iter()).collect();
    assert_eq!(all, [401; 5]);
}

#[test]
fn forwarded_for_names_the_client_only_when_a_trusted_proxy_sends_it() {
    let wrong = |d: &Dashboard, forwarded: Option<&str>| {
        let headers: Vec<(&str, &str)> = forwarded
            .map(|f| ("X-Forwarded-For", f))
            .into_iter()
            .collect();
        let reply = d.raw_form("/login", As::Nobody, &headers, "token=wrong");
        assert_eq!(reply.status, 401, "{reply:?}");
    };
    // From a peer that is no trusted proxy, the header is anybody's claim.
    let direct = Dashboard::start("");
    wrong(&direct, Some("203.0.113.7"));
    assert_eq!(direct.failed_logins(), ["127.0.0.1"]);
    drop(direct);

    let proxied = Dashboard::start("web.trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]");
    wrong(&proxied, Some("203.0.113.7"));
    // The rightmost address that is not a trusted proxy: what the client claimed before it
    // is not believed.
    wrong(&proxied, Some("198.51.100.1, 203.0.113.8"));
    wrong(&proxied, Some("203.0.113.9, 10.1.2.3"));
    wrong(&proxied, None);
    assert_eq!(
        proxied.failed_logins(),
        ["203.0.113.7", "203.0.113.8", "203.0.113.9", "127.0.0.1"]
    );
}

const MIB: usize = 1024 * 1024;

#[test]
fn oversized_requests_get_413_and_malformed_ones_400_as_a_page_or_as_json() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let csrf = d.get("/run", me).csrf();
    let id = d
        .host
        .enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    let is_page = |reply: &Reply, status: u16, id: &str| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("text/html"),
            "{reply:?}"
        );
        assert!(reply.body.contains(&format!(r#"id="{id}""#)), "{reply:?}");
    };
    let is_json = |reply: &Reply, status: u16| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(reply.json()["error"].is_string(), "{reply:?}");
    };
    let pad = "a".repeat(MIB + 1);
    // A form over 1 MiB is too large, whatever carries its CSRF token: not a CSRF failure.
    for path in [format!("/jobs/{id}/cancel"), "/run".into()] {
        let body = format!("csrf={csrf}&pad={pad}");
        is_page(&d.raw_form(&path, me, &[], &body), 413, "too-large");
        let body = format!("job=Tests%5CMisbehave%40ok&pad={pad}");
        is_page(
            &d.raw_form(&path, me, &[("X-CSRF-Token", &csrf)], &body),
            413,
            "too-large",
        );
    }
    // A body of unknown length (chunked) is cut at the limit where it is read: the same answers.
    let chunked = |body: &str| format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes();
    let form = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Transfer-Encoding", "chunked"),
    ];
    let body = chunked(&format!("csrf={csrf}&pad={pad}"));
    is_page(
        &d.raw("POST", &format!("/jobs/{id}/cancel"), me, &form, body),
        413,
        "too-large",
    );
    let body = chunked(&format!("token=x&pad={pad}"));
    is_page(
        &d.raw("POST", "/login", As::Nobody, &form, body),
        413,
        "too-large",
    );
    let json_chunked = [
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"),
    ];
    let body = chunked(&json!({"class": "A", "method": "m", "params": {"pad": pad}}).to_string());
    is_json(
        &d.raw(
            "POST",
            "/api/jobs",
            As::Bearer(&d.token),
            &json_chunked,
            body,
        ),
        413,
    );

    // The API says so in JSON.
    let body = json!({"class": r"Tests\Misbehave", "method": "echo", "params": {"pad": pad}});
    let json_headers = [("Content-Type", "application/json")];
    let reply = d.raw(
        "POST",
        "/api/jobs",
        As::Bearer(&d.token),
        &json_headers,
        body.to_string().into_bytes(),
    );
    is_json(&reply, 413);
    // A 10 MB login is too large, and no failed login.
    let huge = format!("token={}", "x".repeat(10_000_000));
    is_page(
        &d.raw_form("/login", As::Nobody, &[], &huge),
        413,
        "too-large",
    );
    assert_eq!(d.failed_logins(), Vec::<String>::new());

    // Invalid UTF-8 in an id or a form is malformed: 400, a page or JSON.
    is_page(&d.get("/jobs/%FF", me), 400, "bad-request");
    is_json(&d.get("/api/jobs/%FF", As::Bearer(&d.token)), 400);
    let reply = d.raw_form("/jobs/%FF/cancel", me, &[("X-CSRF-Token", &csrf)], "");
    is_page(&reply, 400, "bad-request");
    let reply = d.raw(
        "POST",
        "/api/jobs/%FF/cancel",
        As::Bearer(&d.token),
        &[],
        Vec::new(),
    );
    is_json(&reply, 400);
    let reply = d.raw_form(
        "/run",
        me,
        &[],
        &format!("csrf={csrf}&job=%FF&params=%7B%7D"),
    );
    is_page(&reply, 400, "bad-request");
    is_page(&d.get("/jobs?state=%FF", me), 400, "bad-request");
    is_json(&d.get("/api/jobs?state=%FF", As::Bearer(&d.token)), 400);
    let reply = d.raw_form("/login", As::Nobody, &[], "token=%FF");
    is_page(&reply, 400, "bad-request");
    assert_eq!(d.failed_logins(), Vec::<String>::new());

    // Nothing was done on the way.
    assert_eq!(d.api_job(id)["job"]["state"], "scheduled");
}

/// Writes `head` (a request whose body is declared but not sent) on a keep-alive connection and
/// reads the answer: its status, whether it says `Connection: close`, and whether the server then
/// closed the connection.
fn answer_before_the_body(d: &Dashboard, head: &str) -> (u16, bool, bool) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(d.authority()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let (mut says_close, mut length) = (false, 0);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim();
        says_close |=
            name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close");
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap();
        }
    }
    reader.read_exact(&mut vec![0; length]).unwrap();
    // Closed: the next read ends (rather than waiting out the timeout for a next answer).
    let closed = matches!(reader.read(&mut [0; 1]), Ok(0));
    (status, says_close, closed)
}

#[test]
fn a_request_refused_before_its_body_is_read_closes_its_connection_and_says_so() {
    // A client that reuses a connection the server dropped without saying so fails its next
    // request ("peer disconnected"); every refusal that leaves the body unread must say close.
    let d = Dashboard::start("");
    let cookie = d.login();
    let authority = d.authority();
    let head = |path: &str, extra: &str| {
        format!(
            "POST {PREFIX}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 100\r\n{extra}\r\n"
        )
    };
    let json = "Content-Type: application/json\r\n";
    let session = format!("Cookie: {cookie}\r\n");
    let csrf = format!(
        "X-CSRF-Token: {}\r\n",
        d.get("/", As::Cookie(&cookie)).csrf()
    );
    for (what, request, status) in [
        (
            "no CSRF token",
            head("/api/jobs", &format!("{session}{json}")),
            403,
        ),
        (
            "a wrong CSRF token",
            head(
                "/api/jobs",
                &format!("{session}{json}X-CSRF-Token: wrong\r\n"),
            ),
            403,
        ),
        ("no session", head("/api/jobs", json), 401),
        (
            "a wrong bearer token",
            head(
                "/api/jobs",
                &format!("{json}Authorization: Bearer wrong\r\n"),
            ),
            401,
        ),
        (
            "another origin",
            head("/login", "Origin: http://evil.example\r\n"),
            403,
        ),
        (
            "no such route",
            head("/nowhere", &format!("{session}{csrf}")),
            404,
        ),
        (
            "outside the dashboard",
            format!("POST /elsewhere HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 100\r\n\r\n"),
            404,
        ),
    ] {
        let (got, says_close, closed) = answer_before_the_body(&d, &request);
        assert_eq!(got, status, "{what}");
        assert!(
            says_close,
            "{what}: answered {got} without Connection: close"
        );
        assert!(closed, "{what}: the connection stayed open");
    }
    // A request whose body is read keeps its connection: two answers on one.
    let get = format!(
        "GET {PREFIX}/api/stats HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\r\n",
        d.token
    );
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(&authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(
            format!(
                "{get}{}",
                get.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n")
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
}

#[test]
fn ids_are_canonical_decimal_numbers_on_every_route() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let csrf = d.get("/", me).csrf();
    let id = d
        .host
        .enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    assert_eq!(id, 1);
    for text in [
        "+1",
        "00001",
        "01",
        "%201",
        "1%20",
        "1e3",
        "0",
        "-1",
        "abc",
        "9223372036854775808",
        "0x1",
    ] {
        let shown = text.replace("%20", " ");
        let page = d.get(&format!("/jobs/{text}"), me);
        assert_eq!(page.status, 400, "{text}: {page:?}");
        let named = format!("&quot;{shown}&quot; is not a job id");
        assert!(page.body.contains(&named), "{text}: {}", page.body);
        let api = d.get(&format!("/api/jobs/{text}"), As::Bearer(&d.token));
        assert_eq!(api.status, 400, "{text}: {api:?}");
        let named = format!("{shown:?} is not a job id");
        assert!(
            api.json()["error"].as_str().unwrap().contains(&named),
            "{api:?}"
        );
        for action in ["cancel", "retry"] {
            let reply = d.raw_form(
                &format!("/jobs/{text}/{action}"),
                me,
                &[],
                &format!("csrf={csrf}"),
            );
            assert_eq!(reply.status, 400, "{text}/{action}: {reply:?}");
            let reply = d.raw(
                "POST",
                &format!("/api/jobs/{text}/{action}"),
                As::Bearer(&d.token),
                &[],
                Vec::new(),
            );
            assert_eq!(reply.status, 400, "{text}/{action}: {reply:?}");
        }
    }
    // The canonical id still names the job, and one that names none is 404.
    assert_eq!(d.get("/jobs/1", me).status, 200);
    assert_eq!(d.get("/jobs/2", me).status, 404);
    assert_eq!(
        d.get("/api/jobs/9223372036854775807", As::Bearer(&d.token))
            .status,
        404
    );
    assert_eq!(d.api_job(id)["job"]["state"], "scheduled");
}

#[test]
fn posts_from_another_origin_are_refused_and_logging_in_again_opens_a_new_session() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let page = d.get("/", me);
    assert_security_headers(&page);
    let csrf = page.csrf();
    // Still unfinished when it is cancelled at the end, however soon its retry is picked up.
    let id = d.host.enqueue(&[
        r"Tests\Misbehave",
        "sleep",
        "seconds=3600",
        "--delay",
        "3600",
    ]);
    let own = format!("http://{}", d.authority());
    let foreign = [
        ("Origin", "http://evil.example".to_owned()),
        ("Origin", "null".to_owned()),
        ("Origin", format!("{own}.evil.example")),
        ("Origin", format!("http://x{}", d.authority())),
        (
            "Referer",
            "http://evil.example/admin/background-jobs/".to_owned(),
        ),
        ("Referer", format!("{own}.evil.example/")),
    ];
    for (name, value) in &foreign {
        let header = [(*name, value.as_str())];
        let form = format!("csrf={csrf}");
        let reply = d.raw_form(&format!("/jobs/{id}/cancel"), me, &header, &form);
        assert_eq!(reply.status, 403, "{name}: {value}: {reply:?}");
        assert!(reply.body.contains(r#"id="origin-error""#), "{reply:?}");
        let reply = d.raw(
            "POST",
            &format!("/api/jobs/{id}/cancel"),
            As::Bearer(&d.token),
            &header,
            Vec::new(),
        );
        assert_eq!(reply.status, 403, "{name}: {value}: {reply:?}");
        assert!(
            reply.json()["error"].as_str().unwrap().contains("origin"),
            "{reply:?}"
        );
        let reply = d.raw_form("/login", As::Nobody, &header, &format!("token={}", d.token));
        assert_eq!(reply.status, 403, "{name}: {value}: {reply:?}");
        assert!(reply.header("set-cookie").is_none(), "{reply:?}");
    }
    assert_eq!(d.api_job(id)["job"]["state"], "scheduled");
    // The dashboard's own origin (a browser's form or script) and no origin at all (curl, an
    // API client) pass.
    let reply = d.raw_form(
        &format!("/jobs/{id}/cancel"),
        me,
        &[("Origin", &own)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(d.api_job(id)["job"]["state"], "cancelled");
    let referer = format!("{own}{PREFIX}/jobs/{id}");
    let reply = d.raw_form(
        &format!("/jobs/{id}/retry"),
        me,
        &[("Referer", &referer)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(reply.status, 303, "{reply:?}");
    let reply = d.post_json(
        &format!("/api/jobs/{id}/cancel"),
        As::Bearer(&d.token),
        &[],
        None,
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    // Logging in again with a session ends it and opens a new one.
    let reply = d.raw_form(
        "/login",
        me,
        &[("Origin", &own)],
        &format!("token={}", d.token),
    );
    assert_eq!(reply.status, 303, "{reply:?}");
    let renewed = reply
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(renewed, cookie);
    assert_eq!(d.get("/", me).status, 303, "the old session is closed");
    assert_eq!(d.get("/", As::Cookie(&renewed)).status, 200);
    // Another login (another browser) leaves that one open.
    let other = d.login();
    assert_ne!(other, renewed);
    assert_eq!(d.get("/", As::Cookie(&renewed)).status, 200);
    assert_eq!(d.get("/", As::Cookie(&other)).status, 200);
}

#[test]
fn right_to_left_and_invisible_characters_are_shown_escaped_and_kept_exact_as_data() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let text = "\u{202E}exe.txt\u{200B}\u{2066}\u{FEFF}\u{7}";
    let hidden = ['\u{202E}', '\u{200B}', '\u{2066}', '\u{FEFF}', '\u{7}'];
    let params = json!({ "text": text }).to_string();
    let id = d
        .host
        .enqueue(&[r"Tests\Misbehave", "say_and_fail", "--params-json", &params]);
    d.wait_state(id, &["failed"]);
    let shows_none = |what: &str, shown: &str| {
        for c in hidden {
            assert!(!shown.contains(c), "{what} shows {c:?} as it is: {shown}");
        }
    };
    // Escaped like Rust in text (the error, the output), like JSON in JSON (the params).
    let plain = r"\u{202E}exe.txt\u{200B}\u{2066}\u{FEFF}\u{7}";
    let in_json = r"\u202Eexe.txt\u200B\u2066\uFEFF\u0007";
    let page = d.get(&format!("/jobs/{id}"), me);
    shows_none("the job page", &page.body);
    assert!(page.body.contains(in_json), "params: {}", page.body);
    assert!(
        page.body.contains(&format!(
            r#"<dd id="last-error" class="error-text">{plain}</dd>"#
        )),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!(">{plain}\n</pre>")),
        "output: {}",
        page.body
    );
    let logs = d.get("/logs", me);
    shows_none("the logs page", &logs.body);
    assert!(logs.body.contains(in_json), "{}", logs.body);

    // The command line shows them escaped; its JSON keeps them exact.
    let show = d.host.run(&["show", &id.to_string()]);
    show.expect_code(0);
    shows_none("jobhost show", &show.stdout);
    assert!(show.stdout.contains(in_json), "{}", show.stdout);
    assert!(
        show.stdout.contains(&format!("  | {plain}\n")),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains(&format!("error:     {plain}\n")),
        "{}",
        show.stdout
    );
    assert_eq!(d.host.show(id)["job"]["params"]["text"], text);

    // The log files too: their JSON stays JSON, with the exact value.
    let lines = d.host.log("background_jobs.log");
    let failed = lines
        .iter()
        .find(|l| l.contains("Job failed:"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    for line in &lines {
        shows_none("background_jobs.log", line);
    }
    let context: Value = serde_json::from_str(&failed[failed.find('{').unwrap()..]).unwrap();
    assert_eq!(context["params"]["text"], text);
    assert_eq!(context["error"], text);

    // The API is data: exact.
    let job = d.api_job(id);
    assert_eq!(job["job"]["params"]["text"], text);
    assert_eq!(job["job"]["last_error"], text);
}
