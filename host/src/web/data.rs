//! What the dashboard reads and does, shared by the HTML pages and the JSON API: the overview
//! numbers, job lists and details, attempt output, the plugin inventory with what the allowlist
//! approves, the tails of the log files, and the actions (run, cancel, retry) with their
//! failures sorted into bad input, refusal, not found and internal errors.

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::Path,
    time::Duration,
};

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use serde::Serialize;
use serde_json::Value;

use super::App;
use crate::{
    catalog::inventory::Inventory,
    config::allowlist::{Allowlist, Verdict},
    job::{ParamsError, Priority},
    joblog::{ERRORS_FILE, LOG_FILE},
    store::{
        now_millis, Attempt, CancelOutcome, DispatcherRecord, Finished, JobId, JobRecord, JobState,
        ListFilter, Millis, Stats, Store, StoreError,
    },
    DispatchError, Job,
};

/// Jobs per page.
pub const PER_PAGE: u32 = 50;

/// Lines shown of each log file.
pub const LOG_LINES: usize = 200;

/// The most of one attempt's output a page shows (its end).
pub const OUTPUT_SHOWN: u64 = 64 * 1024;

/// The windows of the overview's throughput, as (label, minutes).
pub const WINDOWS: [(&str, i64); 3] = [("5m", 5), ("15m", 15), ("60m", 60)];

/// Why a request could not be served.
#[derive(Debug)]
pub enum Failure {
    /// The request itself is wrong (400).
    BadInput(String),
    /// The request is larger than the dashboard reads (413).
    TooLarge(String),
    /// Refused: not approved, or no plugin offers it (403).
    Refused(String),
    /// No such thing (404).
    NotFound(String),
    /// jobhost failed (500).
    Internal(String),
}

impl Failure {
    /// Its message.
    pub fn message(&self) -> &str {
        match self {
            Failure::BadInput(m) | Failure::TooLarge(m) | Failure::Refused(m) => m,
            Failure::NotFound(m) | Failure::Internal(m) => m,
        }
    }

    /// Its HTTP status.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Failure::BadInput(_) => StatusCode::BAD_REQUEST,
            Failure::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Refused(_) => StatusCode::FORBIDDEN,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Failure {
    /// A request body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Failure::TooLarge(format!(
            "the request is too large: the dashboard reads at most {limit} bytes of a request body"
        ))
    }

    /// What it means that a request could not be read as asked (`status` and `text` from the
    /// extractor's rejection): too large (the body is over `limit` bytes) or malformed, such as
    /// invalid UTF-8 in the address or a form.
    pub fn unreadable(status: axum::http::StatusCode, text: String, limit: usize) -> Self {
        if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(limit)
        } else {
            Failure::BadInput(text)
        }
    }
}

/// A form body (`application/x-www-form-urlencoded`) as `T`, or why not: too large, or
/// malformed — a field that is not UTF-8 once percent-decoded is refused here rather than read
/// with U+FFFD in its place.
pub fn read_form<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, Failure> {
    let bytes = body.map_err(|e| Failure::unreadable(e.status(), e.body_text(), limit))?;
    if !form_is_utf8(&bytes) {
        return Err(Failure::BadInput(
            "the form is not valid UTF-8 text once decoded".into(),
        ));
    }
    serde_urlencoded::from_bytes(&bytes).map_err(|e| Failure::BadInput(format!("bad form: {e}")))
}

/// Whether every name and value of form body `body` is UTF-8 once percent-decoded.
pub fn form_is_utf8(body: &[u8]) -> bool {
    body.split(|&b| b == b'&')
        .flat_map(|pair| pair.splitn(2, |&b| b == b'='))
        .all(|part| std::str::from_utf8(&percent_decoded(part)).is_ok())
}

/// `part` of a form with `+` and `%XX` decoded (a `%` without two hex digits is itself).
fn percent_decoded(part: &[u8]) -> Vec<u8> {
    let hex = |b: &u8| char::from(*b).to_digit(16);
    let mut out = Vec::with_capacity(part.len());
    let mut rest = part;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b == b'+' {
            out.push(b' ');
            continue;
        }
        if b == b'%' {
            if let [h, l, more @ ..] = tail {
                if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                    out.push((h * 16 + l) as u8);
                    rest = more;
                    continue;
                }
            }
        }
        out.push(b);
    }
    out
}

/// The job id of a route's `{id}`: a canonical decimal number, otherwise bad input (400).
pub fn job_id(path: Result<axum::extract::Path<String>, PathRejection>) -> Result<JobId, Failure> {
    let axum::extract::Path(text) = path
        .map_err(|e| Failure::BadInput(format!("bad job id in the address: {}", e.body_text())))?;
    crate::store::parse_job_id(&text).map_err(Failure::BadInput)
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Failure::NotFound(e.to_string()),
            StoreError::WrongState { .. } => Failure::BadInput(e.to_string()),
            other => Failure::Internal(other.to_string()),
        }
    }
}

impl From<DispatchError> for Failure {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::BadInput(_) => Failure::BadInput(e.to_string()),
            // Without a valid allowlist in force (a removed file) nothing is approved.
            DispatchError::Refused(_) | DispatchError::Allowlist(_) => {
                Failure::Refused(e.to_string())
            }
            DispatchError::Store(store) => store.into(),
            other => Failure::Internal(format!("{:#}", anyhow::Error::from(other))),
        }
    }
}

/// The overview: counts by state, what finished lately, what runs.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// Jobs per state, every state listed.
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Completed jobs per window (`5m`, `15m`, `60m`).
    pub finished: std::collections::BTreeMap<&'static str, u64>,
    /// Failed jobs per window.
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// The running jobs with their current attempt.
    #[serde(skip)]
    pub running: Vec<(JobRecord, Attempt)>,
    /// The dispatchers registered in the store, with their slots, running attempts and last
    /// heartbeat.
    pub dispatchers: Vec<DispatcherRecord>,
    /// What the dispatcher serving this state directory reports: what keeps it from its
    /// work, if anything.
    pub health: Option<crate::queue::health::Health>,
}

/// Reads the overview.
pub fn overview(
    store: &mut dyn Store,
    with_running: bool,
    health: Option<crate::queue::health::Health>,
) -> Result<Overview, Failure> {
    let Stats { by_state } = store.stats()?;
    let now = now_millis();
    let mut finished = std::collections::BTreeMap::new();
    let mut failed = std::collections::BTreeMap::new();
    for (label, minutes) in WINDOWS {
        let Finished {
            completed,
            failed: f,
        } = store.finished_since(now - minutes * 60_000)?;
        finished.insert(label, completed);
        failed.insert(label, f);
    }
    let running = if with_running {
        store.running()?
    } else {
        Vec::new()
    };
    Ok(Overview {
        by_state,
        finished,
        failed,
        running,
        dispatchers: store.dispatchers()?,
        health,
    })
}

/// A job list's filter and page, as asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsQuery {
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only of this class.
    pub class: Option<String>,
    /// Only of this priority.
    pub priority: Option<Priority>,
    /// The page, from 1.
    pub page: u32,
}

impl JobsQuery {
    /// The query of a request, or why it cannot be read (invalid UTF-8 is bad input).
    pub fn from_query(
        query: Result<axum::extract::Query<HashMap<String, String>>, QueryRejection>,
    ) -> Result<Self, Failure> {
        let axum::extract::Query(pairs) =
            query.map_err(|e| Failure::BadInput(format!("bad query: {}", e.body_text())))?;
        Self::parse(&pairs)
    }

    /// Reads `state`, `class`, `priority` and `page` from a query string's pairs; empty values
    /// mean no filter.
    fn parse(pairs: &HashMap<String, String>) -> Result<Self, Failure> {
        let get = |key: &str| pairs.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let state = get("state")
            .map(|s| {
                JobState::parse(s).ok_or_else(|| {
                    Failure::BadInput(format!(
                        "unknown state {s:?}: use queued, scheduled, running, completed, failed or cancelled"
                    ))
                })
            })
            .transpose()?;
        let priority = get("priority")
            .map(|p| {
                p.parse::<Priority>()
                    .map_err(|e| Failure::BadInput(e.to_string()))
            })
            .transpose()?;
        let page = match get("page") {
            None => 1,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Failure::BadInput(format!("page {p:?} is not a page number")))?,
        };
        Ok(Self {
            state,
            class: get("class").map(str::to_owned),
            priority,
            page,
        })
    }

    /// The query string for `page` of this list (without `?`), with empty filters left out.
    pub fn to_query(&self, page: u32) -> String {
        let mut pairs = Vec::new();
        if let Some(state) = self.state {
            pairs.push(format!("state={}", state.as_str()));
        }
        if let Some(class) = &self.class {
            pairs.push(format!("class={}", url_encode(class)));
        }
        if let Some(priority) = self.priority {
            pairs.push(format!("priority={}", priority.as_str()));
        }
        pairs.push(format!("page={page}"));
        pairs.join("&")
    }
}

/// The key of [`list`]'s read of `query` among the reads requests share
/// ([`super::shared_read`]).
pub fn list_key(query: &JobsQuery) -> String {
    format!("jobs?{}", query.to_query(query.page))
}

/// One page of jobs, newest first, and whether another page follows.
pub fn list(store: &mut dyn Store, query: &JobsQuery) -> Result<(Vec<JobRecord>, bool), Failure> {
    let filter = ListFilter {
        state: query.state,
        class: query.class.clone(),
        priority: query.priority,
        limit: PER_PAGE + 1,
        offset: query.page.saturating_sub(1).saturating_mul(PER_PAGE),
    };
    let mut jobs = store.list(&filter)?;
    let more = jobs.len() > PER_PAGE as usize;
    jobs.truncate(PER_PAGE as usize);
    Ok((jobs, more))
}

/// A job and its attempts.
pub fn job(store: &mut dyn Store, id: JobId) -> Result<(JobRecord, Vec<Attempt>), Failure> {
    store
        .job(id)?
        .ok_or_else(|| Failure::NotFound(format!("no job with id {id}")))
}

/// The last `max` bytes of an attempt's output file (lossy UTF-8) and how many bytes before
/// them are not shown. A missing file is no output.
pub fn output_tail(path: &Path, max: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let skipped = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(skipped)).is_err() {
        return (String::new(), 0);
    }
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    (String::from_utf8_lossy(&bytes).into_owned(), skipped)
}

/// The last `n` lines of a text file (lossy UTF-8), oldest first; reads at most the file's
/// last 4 MiB. A missing file has none.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    const CHUNK: u64 = 64 * 1024;
    const MAX: u64 = 4 * 1024 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    // Read backwards until n + 1 line ends are in hand (the first line may be cut).
    while start > 0 && len - start < MAX && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut chunk).is_err() {
            break;
        }
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| (*l).to_owned()).collect()
}

/// The tails of both log files.
#[derive(Debug, Serialize)]
pub struct Logs {
    /// `background_jobs.log`.
    pub main: Vec<String>,
    /// `background_jobs_errors.log`.
    pub errors: Vec<String>,
}

/// Reads the tails of both logs.
pub fn logs(app: &App) -> Logs {
    let dir = &app.settings.log_dir;
    Logs {
        main: tail_lines(&dir.join(LOG_FILE), LOG_LINES),
        errors: tail_lines(&dir.join(ERRORS_FILE), LOG_LINES),
    }
}

/// The plugin inventory, and the allowlist (or why it cannot be read).
pub struct Plugins {
    /// The inventory.
    pub inventory: Inventory,
    /// The allowlist.
    pub allowlist: Result<Allowlist, String>,
}

impl Plugins {
    /// Whether the allowlist approves `class@method`.
    pub fn approved(&self, class: &str, method: &str) -> bool {
        self.allowlist
            .as_ref()
            .is_ok_and(|list| list.check(class, method) == Verdict::Approved)
    }

    /// Every `Class@method` that a plugin's active version offers and the allowlist
    /// approves, in class order.
    pub fn runnable(&self) -> Vec<String> {
        let mut jobs = Vec::new();
        for class in self.inventory.classes() {
            for method in class.methods {
                if self.approved(class.class, method) {
                    jobs.push(format!("{}@{method}", class.class));
                }
            }
        }
        jobs
    }
}

/// Brings the catalog up to date (cheap when no file changed) and reads the allowlist in
/// force.
pub fn plugins(app: &App) -> Result<Plugins, Failure> {
    let inventory =
        Inventory::refresh(&app.settings).map_err(|e| Failure::Internal(format!("{e:#}")))?;
    let allowlist = inventory
        .allowlist(&app.settings)
        .map_err(|e| e.to_string());
    Ok(Plugins {
        inventory,
        allowlist,
    })
}

/// A job to run, as asked for by the form or the API.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The class.
    pub class: String,
    /// The method.
    pub method: String,
    /// A JSON object (named params) or array (positional); none is `{}`.
    #[serde(default)]
    pub params: Option<Value>,
    /// `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Seconds before the first attempt (default 0).
    #[serde(default)]
    pub delay: Option<f64>,
    /// Retries after the first failure (default: the settings').
    #[serde(default)]
    pub retries: Option<i64>,
    /// Seconds between attempts (default: the settings').
    #[serde(default)]
    pub retry_delay: Option<f64>,
    /// Seconds one attempt may run (default: the settings').
    #[serde(default)]
    pub timeout: Option<f64>,
}

fn seconds(what: &str, value: Option<f64>) -> Result<Option<Duration>, Failure> {
    value
        .map(|v| {
            crate::config::settings::parse_secs(&v.to_string()).ok_or_else(|| {
                Failure::BadInput(format!("{what} must be a non-negative number of seconds"))
            })
        })
        .transpose()
}

impl RunRequest {
    /// The job it asks for, checked for what needs no gate.
    pub fn into_job(self) -> Result<Job, Failure> {
        let params = match self.params {
            None => Value::Object(Default::default()),
            Some(v @ (Value::Object(_) | Value::Array(_))) => v,
            Some(_) => {
                return Err(Failure::BadInput(
                    "params must be a JSON object (named params) or array (positional params)"
                        .into(),
                ))
            }
        };
        let priority = match self.priority.as_deref().map(str::trim) {
            None | Some("") => Priority::Normal,
            Some(p) => p
                .parse::<Priority>()
                .map_err(|e: ParamsError| Failure::BadInput(e.to_string()))?,
        };
        let mut job = Job::new(self.class, self.method)
            .params(params)
            .priority(priority)
            .delay(seconds("delay", self.delay)?.unwrap_or_default());
        if let Some(retries) = self.retries {
            let retries = crate::job::retries_from("retries", i128::from(retries))
                .map_err(|e| Failure::BadInput(e.to_string()))?;
            job = job.retries(retries);
        }
        if let Some(d) = seconds("retry_delay", self.retry_delay)? {
            job = job.retry_delay(d);
        }
        if let Some(t) = seconds("timeout", self.timeout)? {
            job = job.timeout(t);
        }
        Ok(job)
    }
}

/// Runs `request` through the gate and stores it; the dashboard's change counter is bumped.
pub fn run(app: &App, request: RunRequest) -> Result<JobId, Failure> {
    let job = request.into_job()?;
    let id = app.client().dispatch(job)?;
    app.changes.bump();
    Ok(id)
}

/// Cancels job `id`: a waiting job at once, a running one by its dispatcher.
pub fn cancel(app: &App, id: JobId) -> Result<CancelOutcome, Failure> {
    let outcome = app.client().cancel(id)?;
    if let CancelOutcome::AlreadyFinished(state) = outcome {
        return Err(StoreError::WrongState {
            id,
            state,
            what: "it already finished; nothing to cancel",
        }
        .into());
    }
    app.changes.bump();
    Ok(outcome)
}

/// Queues a failed or cancelled job again.
pub fn retry(app: &App, id: JobId) -> Result<(), Failure> {
    app.client().retry(id)?;
    app.changes.bump();
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The milliseconds from `start` to `end` (or to now).
pub fn elapsed(start: Millis, end: Option<Millis>) -> i64 {
    (end.unwrap_or_else(now_millis) - start).max(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_form_is_utf8_once_decoded_or_refused() {
        for good in [
            &b"a=1&b=x+y"[..],
            b"t=%C3%A9",
            b"q=%zz&r=%",
            b"",
            b"=&&x",
            b"a=%E2%80%AE",
        ] {
            assert!(super::form_is_utf8(good), "{good:?}");
        }
        for bad in [&b"a=%FF"[..], b"%C3=1", b"a=1&b=%E2%80", b"x=\xff"] {
            assert!(!super::form_is_utf8(bad), "{bad:?}");
        }
        assert_eq!(super::percent_decoded(b"a+b%41%4"), b"a bA%4");
    }

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> HashMap<String, String> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn jobs_queries_parse_and_print_back() {
        let q = JobsQuery::parse(&pairs(&[
            ("state", "failed"),
            ("class", r"App\Jobs\X"),
            ("priority", ""),
            ("page", "3"),
        ]))
        .unwrap();
        assert_eq!(q.state, Some(JobState::Failed));
        assert_eq!(q.class.as_deref(), Some(r"App\Jobs\X"));
        assert_eq!(q.priority, None);
        assert_eq!(q.page, 3);
        assert_eq!(q.to_query(4), "state=failed&class=App%5CJobs%5CX&page=4");
        assert_eq!(JobsQuery::parse(&pairs(&[])).unwrap().page, 1);
        for bad in [("state", "done"), ("priority", "urgent"), ("page", "0")] {
            assert!(
                matches!(JobsQuery::parse(&pairs(&[bad])), Err(Failure::BadInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tail_lines_keeps_the_last_lines_of_a_long_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let lines = tail_lines(&path, 200);
        assert_eq!(lines.len(), 200);
        assert_eq!(lines[0], "line 49800");
        assert_eq!(lines[199], "line 49999");
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(tail_lines(&path, 200), ["a", "b"]);
        assert!(tail_lines(&dir.path().join("missing"), 5).is_empty());
    }

    #[test]
    fn output_tail_shows_the_end_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(output_tail(&path, 4), ("6789".to_owned(), 6));
        assert_eq!(output_tail(&path, 100), ("0123456789".to_owned(), 0));
        assert_eq!(output_tail(&dir.path().join("none"), 4), (String::new(), 0));
    }

    #[test]
    fn run_requests_check_params_priority_and_times() {
        let base = RunRequest {
            class: "A".into(),
            method: "m".into(),
            ..RunRequest::default()
        };
        assert!(base.clone().into_job().is_ok());
        let bad = [
            RunRequest {
                params: Some(serde_json::json!(5)),
                ..base.clone()
            },
            RunRequest {
                priority: Some("urgent".into()),
                ..base.clone()
            },
            RunRequest {
                delay: Some(-1.0),
                ..base.clone()
            },
            RunRequest {
                retry_delay: Some(-1.0),
                ..base.clone()
            },
        ];
        // Ranges (a zero timeout among them) are the spec's to check, as for every entry:
        // `JobSpec::validate`.
        for request in bad {
            assert!(
                matches!(request.clone().into_job(), Err(Failure::BadInput(_))),
                "{request:?}"
            );
        }
    }

    #[test]
    fn url_encode_leaves_only_unreserved_characters() {
        assert_eq!(url_encode(r"App\Jobs X&y=1"), "App%5CJobs%20X%26y%3D1");
        assert_eq!(url_encode("a-b_c.d~"), "a-b_c.d~");
    }
}
