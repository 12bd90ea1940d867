//! The dashboard's HTML pages: overview, jobs, job detail, plugins, logs, run, login and
//! error pages, and the form actions (cancel, retry, run) that answer with a redirect.
//!
//! Pages are plain strings built with `format!`. Every interpolated string goes through
//! [`esc`], the one escaping function; what is not escaped is either a literal of this file or
//! a number. URLs built from values are percent-encoded first ([`super::data::url_encode`]),
//! then escaped like any other value.

use std::{collections::HashMap, fmt::Write as _};

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    Extension,
};
use serde::Deserialize;

use super::{
    auth::Auth,
    blocking,
    data::{self, Failure, JobsQuery, Plugins, PER_PAGE, WINDOWS},
    redirect, Shared, PREFIX,
};
use crate::{
    catalog::inventory::FileStatus,
    job::{json_text_depth, ParamsError, Priority},
    shared::text::{visible, Escape},
    store::{now_millis, Attempt, DispatcherRecord, JobId, JobRecord, JobState, Millis},
};

/// Escapes `text` for HTML text and quoted attribute values: `& < > " '`, and shows the
/// characters that would not show as themselves (right-to-left controls, zero-width and
/// control characters) as `\u{202E}` escapes ([`crate::shared::text::visible`]).
pub fn esc(text: &str) -> String {
    let text = visible(text, Escape::Text);
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// [`esc`] for JSON text: hidden characters become JSON escapes (`\u202E`), so that what is
/// shown is still the JSON of the same value.
fn esc_json(text: &str) -> String {
    esc(&visible(text, Escape::Json))
}

/// The page a request is on, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Jobs,
    Plugins,
    Logs,
    Run,
    Other,
}

/// Whether the page refreshes itself when jobs change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    Yes,
    No,
}

/// A whole page around `main`.
fn layout(title: &str, nav: Nav, csrf: &str, live: Live, main: &str) -> String {
    let link = |id: &str, path: &str, label: &str, this: Nav| {
        let current = if nav == this {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(
            r#"<a id="{id}" href="{}"{current}>{}</a>"#,
            esc(&format!("{PREFIX}{path}")),
            esc(label)
        )
    };
    let links = [
        link("nav-overview", "/", "Overview", Nav::Overview),
        link("nav-jobs", "/jobs", "Jobs", Nav::Jobs),
        link("nav-plugins", "/plugins", "Plugins", Nav::Plugins),
        link("nav-logs", "/logs", "Logs", Nav::Logs),
        link("nav-run", "/run", "Run a job", Nav::Run),
    ]
    .join("\n      ");
    let live = if live == Live::Yes { "true" } else { "false" };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="csrf-token" content="{csrf}">
  <title>{title} · jobhost</title>
  <link rel="stylesheet" href="{prefix}/assets/app.css">
  <script src="{prefix}/assets/app.js" defer></script>
</head>
<body data-events="{prefix}/events">
  <header class="top">
    <a class="brand" href="{prefix}/">jobhost</a>
    <nav>
      {links}
    </nav>
    <span id="live-status" class="live-status" title="Updates without reloading while this tab is visible">static</span>
    <form id="logout-form" method="post" action="{prefix}/logout">
      <input type="hidden" name="csrf" value="{csrf}">
      <button id="logout" type="submit" class="link">Log out</button>
    </form>
  </header>
  <main id="main" data-live="{live}">
{main}
  </main>
</body>
</html>
"#,
        csrf = esc(csrf),
        title = esc(title),
        prefix = esc(PREFIX),
    )
}

fn page(status: StatusCode, html: String) -> Response {
    (status, Html(html)).into_response()
}

/// A page with one error message, `<p class="error" id="ID">`.
pub fn error_page(csrf: &str, status: StatusCode, id: &str, message: &str) -> Response {
    let main = format!(
        r#"<h1>{}</h1>
<p class="error" id="{}">{}</p>
<p><a href="{}">Back to the overview</a></p>"#,
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(id),
        esc(message),
        esc(&format!("{PREFIX}/")),
    );
    page(status, layout("Error", Nav::Other, csrf, Live::No, &main))
}

/// The error page for `failure`: its status, its message, an id that says its kind.
pub(crate) fn failure_page(csrf: &str, failure: &Failure) -> Response {
    let id = match failure {
        Failure::NotFound(_) => "not-found",
        Failure::BadInput(_) => "bad-request",
        Failure::TooLarge(_) => "too-large",
        _ => "error",
    };
    error_page(csrf, failure.status(), id, failure.message())
}

/// The login page; `failed` adds the "Wrong token" message.
pub fn login_page(status: StatusCode, failed: bool) -> Response {
    let error = if failed {
        r#"<p class="error" id="login-error">Wrong token</p>"#
    } else {
        ""
    };
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Log in · jobhost</title>
  <link rel="stylesheet" href="{prefix}/assets/app.css">
</head>
<body class="login">
  <main id="main" data-live="false">
    <form id="login" method="post" action="{prefix}/login" class="card login-card">
      <h1>jobhost</h1>
      <p class="muted">Background jobs dashboard</p>
      {error}
      <label for="token">Admin token</label>
      <input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
      <button id="login-submit" type="submit">Log in</button>
      <p class="muted small">The token is <code>web.admin_token</code>, <code>JOBHOST_ADMIN_TOKEN</code>, or the one <code>jobhost serve</code> generated (in <code>dashboard.json</code> in the state directory).</p>
    </form>
  </main>
</body>
</html>
"#,
        prefix = esc(PREFIX),
    );
    page(status, html)
}

/// A time for people, in the local time zone, as the logs write it; `—` for none.
fn when(millis: Option<Millis>) -> String {
    millis
        .and_then(crate::shared::text::local_time)
        .unwrap_or_else(|| "—".into())
}

/// A finished duration: `850 ms`, `4.25 s`, `3m 07s`, `2h 05m`.
fn took(ms: i64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        ms => clock(ms),
    }
}

/// A running duration, to the second: `12 s`, `3m 07s`, `2h 05m` (app.js ticks the same).
fn clock(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn state_badge(state: JobState, id: Option<&str>) -> String {
    let id = id
        .map(|id| format!(r#" id="{}""#, esc(id)))
        .unwrap_or_default();
    format!(
        r#"<span{id} class="state state-{s}">{s}</span>"#,
        s = esc(state.as_str())
    )
}

fn job_url(id: JobId) -> String {
    format!("{PREFIX}/jobs/{id}")
}

fn job_link(id: JobId) -> String {
    format!(
        r#"<a class="job-link" href="{}">#{id}</a>"#,
        esc(&job_url(id))
    )
}

/// `GET /`: counts by state, throughput, running jobs.
pub async fn overview(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let overview = match blocking(&app, |app| {
        let health = app.health();
        data::overview(&mut **app.store(), true, health)
    })
    .await
    {
        Ok(Ok(o)) => o,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let mut main = String::from("<h1>Overview</h1>\n");
    let problems = overview.health.iter().flat_map(|h| &h.problems);
    for problem in problems {
        let since = crate::shared::text::local_time(problem.since).unwrap_or_default();
        let _ = writeln!(
            main,
            r#"<p class="problem" role="alert"><strong>The dispatcher reports: {} since {}.</strong> {} Running jobs stay supervised; nothing new starts until it recovers.</p>"#,
            esc(&problem.what),
            esc(&since),
            esc(&problem.error),
        );
    }
    main.push_str("<section id=\"counts\" class=\"cards\">\n");
    for state in JobState::ALL {
        let count = overview.by_state.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            main,
            r#"  <a class="card state-card" data-state="{s}" href="{href}"><span class="count">{count}</span><span class="label state state-{s}">{s}</span></a>"#,
            s = esc(state.as_str()),
            href = esc(&format!("{PREFIX}/jobs?state={}", state.as_str())),
        );
    }
    main.push_str("</section>\n");

    main.push_str(
        "<section id=\"throughput\">\n<h2>Finished lately</h2>\n<table class=\"throughput\">\n<thead><tr><th></th>",
    );
    for (label, minutes) in WINDOWS {
        let _ = write!(
            main,
            r#"<th data-window="{}">last {minutes} min</th>"#,
            esc(label)
        );
    }
    main.push_str("</tr></thead>\n<tbody>\n");
    for (kind, title, counts) in [
        ("finished", "Finished (completed)", &overview.finished),
        ("failed", "Failed", &overview.failed),
    ] {
        let _ = write!(
            main,
            r#"<tr class="{k}"><th>{}</th>"#,
            esc(title),
            k = esc(kind)
        );
        for (label, _) in WINDOWS {
            let n = counts.get(label).copied().unwrap_or(0);
            let _ = write!(
                main,
                r#"<td data-kind="{}" data-window="{}">{n}</td>"#,
                esc(kind),
                esc(label)
            );
        }
        main.push_str("</tr>\n");
    }
    main.push_str("</tbody>\n</table>\n</section>\n");

    main.push_str(
        "<section>\n<h2>Running</h2>\n<table id=\"running\">\n<thead><tr><th>Id</th><th>Job</th><th>Attempt</th><th>Priority</th><th>Started</th><th>Elapsed</th></tr></thead>\n<tbody>\n",
    );
    for (job, attempt) in &overview.running {
        let _ = writeln!(
            main,
            r#"<tr data-job-id="{id}"><td class="id">{link}</td><td class="job">{name}</td><td class="attempts">{a}/{m}</td><td class="priority">{p}</td><td class="started">{started}</td><td class="elapsed" data-started-at="{at}">{elapsed}</td></tr>"#,
            id = job.id,
            link = job_link(job.id),
            name = esc(&job.name()),
            a = job.attempts,
            m = job.max_attempts,
            p = esc(job.priority.as_str()),
            started = esc(&when(Some(attempt.started_at))),
            at = attempt.started_at,
            elapsed = esc(&clock(data::elapsed(attempt.started_at, None))),
        );
    }
    main.push_str("</tbody>\n</table>\n");
    if overview.running.is_empty() {
        main.push_str("<p class=\"empty\">Nothing is running.</p>\n");
    }
    main.push_str("</section>\n");
    dispatchers_section(&mut main, &overview.dispatchers);
    page(
        StatusCode::OK,
        layout("Overview", Nav::Overview, csrf, Live::Yes, &main),
    )
}

/// The dispatchers sharing the store: where each runs, its slots and running attempts, and
/// how long ago it last heartbeated.
fn dispatchers_section(main: &mut String, dispatchers: &[DispatcherRecord]) {
    main.push_str(
        "<section id=\"dispatchers\">\n<h2>Dispatchers</h2>\n<table>\n<thead><tr><th>Id</th><th>Host</th><th>Pid</th><th>Slots</th><th>Running</th><th>Started</th><th>Last heartbeat</th><th>State directory</th></tr></thead>\n<tbody>\n",
    );
    let now = now_millis();
    for d in dispatchers {
        let _ = writeln!(
            main,
            r#"<tr data-dispatcher="{id}"><td class="id">{id}</td><td class="host">{host}</td><td class="pid">{pid}</td><td class="slots">{slots}</td><td class="running">{running}</td><td class="started">{started}</td><td class="heartbeat" data-heartbeat-at="{at}">{ago} ago</td><td class="state-dir"><code>{dir}</code></td></tr>"#,
            id = d.id,
            host = esc(&d.host),
            pid = d.pid,
            slots = d.slots,
            running = d.running,
            started = esc(&when(Some(d.started_at))),
            at = d.heartbeat_at,
            ago = esc(&clock(data::elapsed(d.heartbeat_at, Some(now)))),
            dir = esc(&d.state_dir),
        );
    }
    main.push_str("</tbody>\n</table>\n");
    if dispatchers.is_empty() {
        main.push_str("<p class=\"empty\">No dispatcher is registered.</p>\n");
    }
    main.push_str("</section>");
}

fn options<'a>(
    values: impl IntoIterator<Item = &'a str>,
    selected: Option<&str>,
    any: Option<&str>,
) -> String {
    let mut out = String::new();
    if let Some(any) = any {
        let _ = write!(out, r#"<option value="">{}</option>"#, esc(any));
    }
    for value in values {
        let sel = if selected == Some(value) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<option value="{v}"{sel}>{v}</option>"#,
            v = esc(value)
        );
    }
    out
}

const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// `GET /jobs`: filtered, paginated, newest first.
pub async fn jobs(
    State(app): State<Shared>,
    Extension(auth): Extension<Auth>,
    pairs: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let csrf = auth.csrf();
    let query = match JobsQuery::from_query(pairs) {
        Ok(q) => q,
        Err(f) => return failure_page(csrf, &f),
    };
    let q = query.clone();
    let (jobs, more) = match blocking(&app, move |app| data::list(&mut **app.store(), &q)).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let mut main = String::from("<h1>Jobs</h1>\n");
    let _ = write!(
        main,
        r#"<form id="filter" method="get" action="{action}" class="filter">
<label>State <select name="state">{states}</select></label>
<label>Class <input name="class" value="{class}" placeholder="App\Jobs\SendWelcomeEmail" spellcheck="false"></label>
<label>Priority <select name="priority">{priorities}</select></label>
<button type="submit" id="filter-submit">Filter</button>
<a href="{action}" class="reset">Reset</a>
</form>
"#,
        action = esc(&format!("{PREFIX}/jobs")),
        states = options(
            JobState::ALL.iter().map(|s| s.as_str()),
            query.state.map(JobState::as_str),
            Some("any"),
        ),
        class = esc(query.class.as_deref().unwrap_or("")),
        priorities = options(
            PRIORITIES,
            query.priority.map(Priority::as_str),
            Some("any")
        ),
    );
    main.push_str(
        "<table id=\"jobs\">\n<thead><tr><th>Id</th><th>Job</th><th>State</th><th>Attempts</th><th>Priority</th><th>Created</th><th>Started</th><th>Finished</th></tr></thead>\n<tbody>\n",
    );
    for job in &jobs {
        let _ = writeln!(
            main,
            r#"<tr data-job-id="{id}"><td class="id">{link}</td><td class="job">{name}</td><td class="state">{state}</td><td class="attempts">{a}/{m}</td><td class="priority">{p}</td><td class="created">{created}</td><td class="started">{started}</td><td class="finished">{finished}</td></tr>"#,
            id = job.id,
            link = job_link(job.id),
            name = esc(&job.name()),
            state = state_badge(job.state, None),
            a = job.attempts,
            m = job.max_attempts,
            p = esc(job.priority.as_str()),
            created = esc(&when(Some(job.created_at))),
            started = esc(&when(job.started_at)),
            finished = esc(&when(job.finished_at)),
        );
    }
    main.push_str("</tbody>\n</table>\n");
    if jobs.is_empty() {
        main.push_str("<p class=\"empty\">No jobs match.</p>\n");
    }
    main.push_str("<nav class=\"pages\">");
    let here = format!("{PREFIX}/jobs");
    if query.page > 1 {
        let _ = write!(
            main,
            r#"<a id="prev-page" href="{}">← Newer</a>"#,
            esc(&format!("{here}?{}", query.to_query(query.page - 1)))
        );
    }
    let first = (query.page - 1) * PER_PAGE + 1;
    if !jobs.is_empty() {
        let _ = write!(
            main,
            r#"<span class="muted">Page {} · jobs {first}–{}</span>"#,
            query.page,
            first as usize + jobs.len() - 1
        );
    }
    if more {
        let _ = write!(
            main,
            r#"<a id="next-page" href="{}">Older →</a>"#,
            esc(&format!("{here}?{}", query.to_query(query.page + 1)))
        );
    }
    main.push_str("</nav>");
    page(
        StatusCode::OK,
        layout("Jobs", Nav::Jobs, csrf, Live::Yes, &main),
    )
}

/// `GET /jobs/{id}`: the job, its params and result, every attempt with its output.
pub async fn job(
    State(app): State<Shared>,
    Extension(auth): Extension<Auth>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let csrf = auth.csrf();
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure_page(csrf, &f),
    };
    let found = blocking(&app, move |app| {
        let (job, attempts) = data::job(&mut **app.store(), id)?;
        let outputs: Vec<(String, u64)> = attempts
            .iter()
            .map(|a| {
                a.output_path.as_deref().map_or((String::new(), 0), |p| {
                    data::output_tail(p, data::OUTPUT_SHOWN)
                })
            })
            .collect();
        Ok::<_, Failure>((job, attempts, outputs))
    })
    .await;
    let (job, attempts, outputs) = match found {
        Ok(Ok(r)) => r,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let main = job_main(&job, &attempts, &outputs, csrf);
    page(
        StatusCode::OK,
        layout(
            &format!("Job {}", job.id),
            Nav::Jobs,
            csrf,
            Live::Yes,
            &main,
        ),
    )
}

fn job_main(
    job: &JobRecord,
    attempts: &[Attempt],
    outputs: &[(String, u64)],
    csrf: &str,
) -> String {
    let mut main = String::new();
    let _ = writeln!(
        main,
        r#"<h1>Job <span id="job-id">{id}</span> <span id="job-name" class="job-name">{name}</span> {state}</h1>"#,
        id = job.id,
        name = esc(&job.name()),
        state = state_badge(job.state, Some("job-state")),
    );

    // Actions.
    let action = |kind: &str, label: &str| {
        format!(
            r#"<form id="{kind}-form" method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button id="{kind}" type="submit" class="{kind}">{label}</button></form>"#,
            kind = esc(kind),
            action = esc(&format!("{PREFIX}/jobs/{}/{kind}", job.id)),
            csrf = esc(csrf),
            label = esc(label),
        )
    };
    let mut actions = String::new();
    match job.state {
        JobState::Queued | JobState::Scheduled | JobState::Running => {
            actions.push_str(&action("cancel", "Cancel"));
            if job.cancel_requested {
                actions.push_str(r#"<span class="muted" id="cancel-requested">Cancel requested; the dispatcher is stopping it.</span>"#);
            }
        }
        JobState::Failed | JobState::Cancelled => actions.push_str(&action("retry", "Retry")),
        JobState::Completed => {}
    }
    if !actions.is_empty() {
        let _ = writeln!(main, r#"<div class="actions">{actions}</div>"#);
    }

    // Facts.
    let duration = match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => {
            format!(r#"<span id="duration">{}</span>"#, esc(&took(end - start)))
        }
        (Some(start), None) if job.state == JobState::Running => format!(
            r#"<span id="duration" data-started-at="{start}">{}</span>"#,
            esc(&clock(data::elapsed(start, None)))
        ),
        _ => r#"<span id="duration">—</span>"#.to_owned(),
    };
    let facts = [
        ("Priority", esc(job.priority.as_str())),
        (
            "Attempts",
            format!(
                r#"<span id="attempts-used">{}/{}</span> (retries: {})"#,
                job.attempts, job.max_attempts, job.retries
            ),
        ),
        ("Created", esc(&when(Some(job.created_at)))),
        ("Runs at", esc(&when(Some(job.run_at)))),
        ("Started", esc(&when(job.started_at))),
        ("Finished", esc(&when(job.finished_at))),
        ("Execution time", duration),
        (
            "Timeout",
            esc(&format!("{} s per attempt", job.timeout.as_secs_f64())),
        ),
        (
            "Retry delay",
            esc(&format!("{} s", job.retry_delay.as_secs_f64())),
        ),
        (
            "Plugin",
            format!("<code>{}</code>", esc(&job.plugin.display().to_string())),
        ),
    ];
    main.push_str("<dl class=\"facts\">\n");
    for (term, value) in facts {
        let _ = writeln!(main, "<dt>{}</dt><dd>{value}</dd>", esc(term));
    }
    if let Some(problem) = &job.problem {
        let _ = writeln!(
            main,
            r#"<dt>Problem</dt><dd id="problem" class="error-text">its stored row cannot be read: {}</dd>"#,
            esc(problem)
        );
    }
    if let Some(error) = &job.last_error {
        let _ = writeln!(
            main,
            r#"<dt>Last error</dt><dd id="last-error" class="error-text">{}</dd>"#,
            esc(error)
        );
    }
    main.push_str("</dl>\n");

    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = writeln!(
        main,
        "<h2>Params</h2>\n<pre id=\"params\">{}</pre>",
        esc_json(&pretty(&job.params))
    );
    if let Some(result) = &job.result {
        let _ = writeln!(
            main,
            "<h2>Result</h2>\n<pre id=\"result\">{}</pre>",
            esc_json(&pretty(result))
        );
    }

    main.push_str(
        "<h2>Attempts</h2>\n<table id=\"attempts\">\n<thead><tr><th>#</th><th>Outcome</th><th>Started</th><th>Duration</th><th>Pid</th><th>Error</th><th>Plugin hash</th></tr></thead>\n<tbody>\n",
    );
    for (attempt, (output, skipped)) in attempts.iter().zip(outputs) {
        let outcome = attempt.outcome.as_deref().unwrap_or("running");
        let outcome_class = match outcome {
            "ok" => "ok",
            "running" => "running",
            "cancelled" => "cancelled",
            _ => "bad",
        };
        let duration = match attempt.finished_at {
            Some(end) => format!(
                r#"<td class="duration">{}</td>"#,
                esc(&took(end - attempt.started_at))
            ),
            None => format!(
                r#"<td class="duration" data-started-at="{}">{}</td>"#,
                attempt.started_at,
                esc(&clock(data::elapsed(attempt.started_at, None)))
            ),
        };
        let hash = attempt.plugin_hash.as_deref().unwrap_or("");
        let short = &hash[..hash.len().min(16)];
        let note = if *skipped > 0 {
            format!(
                r#"<p class="muted small">The first {skipped} bytes are not shown; the whole output is in <code>{}</code>.</p>"#,
                esc(&attempt
                    .output_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default())
            )
        } else {
            String::new()
        };
        let empty = if output.is_empty() { " empty" } else { "" };
        let _ = writeln!(
            main,
            r#"<tr data-attempt="{n}"><td class="n">{n}</td><td class="outcome outcome-{oc}">{outcome}</td><td class="started">{started}</td>{duration}<td class="pid">{pid}</td><td class="error">{error}</td><td class="hash" title="{hash}"><code>{short}</code></td><td class="output">{note}<pre class="output{empty}">{output}</pre></td></tr>"#,
            n = attempt.attempt,
            oc = esc(outcome_class),
            outcome = esc(outcome),
            started = esc(&when(Some(attempt.started_at))),
            pid = esc(&attempt
                .pid
                .map_or_else(|| "—".to_owned(), |p| p.to_string())),
            error = esc(attempt.error.as_deref().unwrap_or("")),
            hash = esc(hash),
            short = esc(short),
            output = esc(output),
        );
    }
    main.push_str("</tbody>\n</table>\n");
    if attempts.is_empty() {
        main.push_str("<p class=\"empty\">No attempt yet.</p>\n");
    }
    main
}

/// `POST /jobs/{id}/cancel` (the guard checked the CSRF token).
pub async fn cancel(
    State(app): State<Shared>,
    Extension(auth): Extension<Auth>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    act(app, auth, id, |app, id| data::cancel(app, id).map(|_| ())).await
}

/// `POST /jobs/{id}/retry` (the guard checked the CSRF token).
pub async fn retry(
    State(app): State<Shared>,
    Extension(auth): Extension<Auth>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    act(app, auth, id, data::retry).await
}

async fn act(
    app: Shared,
    auth: Auth,
    id: Result<Path<String>, PathRejection>,
    action: fn(&super::App, JobId) -> Result<(), Failure>,
) -> Response {
    let csrf = auth.csrf();
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure_page(csrf, &f),
    };
    match blocking(&app, move |app| action(app, id)).await {
        Ok(Ok(())) => redirect(&job_url(id)),
        Ok(Err(Failure::BadInput(message))) => {
            let main = format!(
                r#"<h1>Not done</h1>
<p class="error" id="action-error">{}</p>
<p><a href="{}">Back to job {id}</a></p>"#,
                esc(&message),
                esc(&job_url(id))
            );
            page(
                StatusCode::BAD_REQUEST,
                layout("Not done", Nav::Jobs, csrf, Live::No, &main),
            )
        }
        Ok(Err(f)) | Err(f) => failure_page(csrf, &f),
    }
}

/// `GET /plugins`: the inventory, and what the allowlist approves.
pub async fn plugins(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let plugins = match blocking(&app, data::plugins).await {
        Ok(Ok(p)) => p,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let main = plugins_main(&plugins);
    page(
        StatusCode::OK,
        layout("Plugins", Nav::Plugins, csrf, Live::No, &main),
    )
}

fn plugins_main(plugins: &Plugins) -> String {
    let inventory = &plugins.inventory;
    let mut main = format!(
        "<h1>Plugins</h1>\n<p class=\"muted\">Plugin directory <code>{}</code>",
        esc(&inventory.dir.display().to_string())
    );
    match (&plugins.allowlist, &inventory.allowlist) {
        (Ok(list), state) => {
            let _ = writeln!(
                main,
                "; allowlist <code>{}</code>{}.</p>",
                esc(&list.path().display().to_string()),
                state.as_ref().map_or_else(String::new, |s| format!(
                    ", in force since {}",
                    when(Some(s.since))
                )),
            );
            if let Some(error) = state.as_ref().and_then(|s| s.error.as_ref()) {
                let _ = writeln!(
                    main,
                    "<p class=\"error\" id=\"allowlist-error\">The allowlist file was changed but is not valid, so the previous version stays in force: {}</p>",
                    esc(error)
                );
            }
        }
        (Err(e), _) => {
            let _ = writeln!(
                main,
                "</p>\n<p class=\"error\" id=\"allowlist-error\">{}</p>",
                esc(e)
            );
        }
    }
    active_classes(&mut main, inventory);
    if inventory.files.is_empty() {
        main.push_str("<p class=\"empty\">No plugin files.</p>\n");
    }
    main.push_str("<div id=\"plugins\">\n");
    for file in &inventory.files {
        plugin_file(&mut main, plugins, file);
    }
    main.push_str("</div>");
    main
}

/// The table of classes and the versions serving them, with a warning per class offered by
/// several files.
fn active_classes(main: &mut String, inventory: &crate::catalog::inventory::Inventory) {
    main.push_str(
        "<section>\n<h2>Serving new jobs</h2>\n<table id=\"active-classes\">\n<thead><tr><th>Class</th><th>File</th><th>Version (blake3)</th><th>Since</th></tr></thead>\n<tbody>\n",
    );
    let classes = inventory.classes();
    if classes.is_empty() {
        main.push_str("<tr><td colspan=\"4\" class=\"empty\">No class is offered.</td></tr>\n");
    }
    for class in classes {
        let file = class.file.file_name().unwrap_or_default().to_string_lossy();
        let _ = writeln!(
            main,
            r#"<tr data-class="{c}"><td><code>{c}</code></td><td class="file">{file}</td><td><code class="hash" title="{hash}">{short}</code></td><td class="since">{since}</td></tr>"#,
            c = esc(class.class),
            file = esc(&file),
            hash = esc(class.hash),
            short = esc(&class.hash[..class.hash.len().min(16)]),
            since = when(Some(class.since)),
        );
    }
    main.push_str("</tbody></table>\n");
    for (class, files) in inventory.conflicts() {
        let names: Vec<String> = files.iter().map(|f| esc(&f.file_name())).collect();
        let _ = writeln!(
            main,
            r#"<p class="warn conflict" data-class="{c}">Class <code>{c}</code> is offered by {files}; the first serves.</p>"#,
            c = esc(class),
            files = names.join(", "),
        );
    }
    main.push_str("</section>\n");
}

/// One file of the plugin directory: what it is now, and the version of it that serves.
fn plugin_file(main: &mut String, plugins: &Plugins, file: &crate::catalog::inventory::PluginFile) {
    let name = esc(&file.file_name());
    let short = |hash: &str| esc(&hash[..hash.len().min(16)]);
    match &file.status {
        FileStatus::Plugin { sdk_version, .. } => {
            let _ = writeln!(
                main,
                r#"<section class="card plugin-file" data-file="{name}">
<h2>{name}</h2>
<p class="muted small">job-sdk <span class="sdk-version">{sdk}</span> · blake3 <code class="hash" title="{hash}">{short}</code></p>"#,
                sdk = esc(sdk_version),
                hash = esc(&file.hash),
                short = short(&file.hash),
            );
        }
        FileStatus::Rejected { reason } => {
            let _ = writeln!(
                main,
                r#"<section class="card plugin-file rejected" data-file="{name}">
<h2>{name} <span class="tag bad">rejected</span></h2>
<p class="reason">{reason}</p>"#,
                reason = esc(reason.as_str()),
            );
        }
    }
    if let Some(version) = &file.active {
        if version.hash != file.hash {
            let _ = writeln!(
                main,
                r#"<p class="kept">Still serving its previous version, blake3 <code class="hash" title="{hash}">{short}</code>, since {since}.</p>"#,
                hash = esc(&version.hash),
                short = short(&version.hash),
                since = when(Some(version.since)),
            );
        }
        for class in &version.classes {
            let _ = writeln!(
                main,
                r#"<div class="class" data-class="{c}"><h3><code>{c}</code></h3>{doc}<ul class="methods">"#,
                c = esc(&class.name),
                doc = if class.doc.is_empty() {
                    String::new()
                } else {
                    format!(r#"<p class="doc">{}</p>"#, esc(&class.doc))
                },
            );
            for method in &class.methods {
                let approved = plugins.approved(&class.name, &method.name);
                let _ = writeln!(
                    main,
                    r#"<li class="method {cls}" data-method="{m}"><code>@{m}</code> <span class="doc">{doc}</span> {mark}</li>"#,
                    cls = if approved { "approved" } else { "unapproved" },
                    m = esc(&method.name),
                    doc = esc(&method.doc),
                    mark = if approved {
                        r#"<span class="tag ok">approved</span>"#
                    } else {
                        r#"<span class="tag warn">not in the allowlist</span>"#
                    },
                );
            }
            main.push_str("</ul></div>\n");
        }
    }
    main.push_str("</section>\n");
}

/// `GET /logs`: the last lines of both log files.
pub async fn logs(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let logs = match blocking(&app, data::logs).await {
        Ok(l) => l,
        Err(f) => return failure_page(csrf, &f),
    };
    let dir = app.settings.log_dir.display().to_string();
    let block = |id: &str, file: &str, lines: &[String]| {
        format!(
            r#"<section class="log">
<h2><code>{file}</code> <span class="muted small">last {n} lines</span></h2>
<pre id="{id}" class="log">{text}</pre>
</section>
"#,
            file = esc(file),
            n = lines.len(),
            id = esc(id),
            text = esc(&lines.join("\n")),
        )
    };
    let main = format!(
        "<h1>Logs</h1>\n<p class=\"muted\">In <code>{}</code>, newest last.</p>\n{}{}",
        esc(&dir),
        block("log-main", crate::joblog::LOG_FILE, &logs.main),
        block("log-errors", crate::joblog::ERRORS_FILE, &logs.errors),
    );
    page(
        StatusCode::OK,
        layout("Logs", Nav::Logs, csrf, Live::Yes, &main),
    )
}

/// What the run form sends.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RunForm {
    #[serde(default)]
    job: String,
    #[serde(default)]
    params: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    delay: String,
}

fn run_main(csrf: &str, runnable: &[String], form: &RunForm, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" id="run-error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let jobs = if runnable.is_empty() {
        r#"<option value="">(no approved job is offered by a plugin)</option>"#.to_owned()
    } else {
        options(
            runnable.iter().map(String::as_str),
            Some(form.job.as_str()),
            None,
        )
    };
    let params = if form.params.is_empty() {
        "{}"
    } else {
        form.params.as_str()
    };
    let priority = if form.priority.is_empty() {
        "normal"
    } else {
        form.priority.as_str()
    };
    let delay = if form.delay.is_empty() {
        "0"
    } else {
        form.delay.as_str()
    };
    format!(
        r#"<h1>Run a job</h1>
<p class="muted">Every job a plugin offers and the allowlist approves. It is queued like <code>jobhost run</code> queues it: same checks, same logs.</p>
{error}
<form id="run-form" method="post" action="{action}" class="card run-form">
<input type="hidden" name="csrf" value="{csrf}">
<label for="run-job">Job</label>
<select id="run-job" name="job">{jobs}</select>
<label for="run-params">Params <span class="muted small">a JSON object (named) or array (positional)</span></label>
<textarea id="run-params" name="params" rows="6" spellcheck="false">{params}</textarea>
<div class="row">
<div><label for="run-priority">Priority</label>
<select id="run-priority" name="priority">{priorities}</select></div>
<div><label for="run-delay">Delay <span class="muted small">seconds</span></label>
<input id="run-delay" name="delay" type="text" inputmode="decimal" value="{delay}"></div>
</div>
<button id="run-submit" type="submit">Run</button>
</form>"#,
        action = esc(&format!("{PREFIX}/run")),
        csrf = esc(csrf),
        params = esc_json(params),
        priorities = options(PRIORITIES, Some(priority), None),
        delay = esc(delay),
    )
}

/// `GET /run`: the form.
pub async fn run_form(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let runnable = match blocking(&app, |app| data::plugins(app).map(|p| p.runnable())).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let main = run_main(csrf, &runnable, &RunForm::default(), None);
    page(
        StatusCode::OK,
        layout("Run a job", Nav::Run, csrf, Live::No, &main),
    )
}

impl RunForm {
    /// The request it makes, or what is wrong with it. Params nested deeper than
    /// `max_params_depth` are refused naming that limit before a JSON reader stops at its own.
    fn request(&self, max_params_depth: usize) -> Result<data::RunRequest, Failure> {
        let job = self.job.trim();
        let Some((class, method)) = job.rsplit_once('@') else {
            return Err(Failure::BadInput("job: choose a job (Class@method)".into()));
        };
        if json_text_depth(&self.params, max_params_depth) > max_params_depth {
            let too_deep = ParamsError::TooDeep {
                limit: max_params_depth,
            };
            return Err(Failure::BadInput(format!("params: {too_deep}")));
        }
        let params = match self.params.trim() {
            "" => serde_json::Value::Object(Default::default()),
            text => serde_json::from_str(text)
                .map_err(|e| Failure::BadInput(format!("params: not valid JSON: {e}")))?,
        };
        if !(params.is_object() || params.is_array()) {
            return Err(Failure::BadInput(
                "params: must be a JSON object (named params) or array (positional params)".into(),
            ));
        }
        let delay = match self.delay.trim() {
            "" => None,
            text => Some(
                text.parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d >= 0.0)
                    .ok_or_else(|| {
                        Failure::BadInput(format!(
                            "delay: {text:?} is not a non-negative number of seconds"
                        ))
                    })?,
            ),
        };
        Ok(data::RunRequest {
            class: class.to_owned(),
            method: method.to_owned(),
            params: Some(params),
            priority: Some(self.priority.clone()),
            delay,
            ..data::RunRequest::default()
        })
    }
}

/// `POST /run`: queues the job and shows it, or shows the form again with what was wrong.
pub async fn run(
    State(app): State<Shared>,
    Extension(auth): Extension<Auth>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let csrf = auth.csrf().to_owned();
    let form: RunForm = match data::read_form(body, app.body_limit) {
        Ok(form) => form,
        Err(failure) => return failure_page(&csrf, &failure),
    };
    let submitted = form.clone();
    let outcome = blocking(&app, move |app| {
        let result = form
            .request(app.settings.limits.max_params_depth)
            .and_then(|request| data::run(app, request));
        let runnable = data::plugins(app).map(|p| p.runnable()).unwrap_or_default();
        (result, runnable)
    })
    .await;
    let (result, runnable) = match outcome {
        Ok(r) => r,
        Err(f) => return failure_page(&csrf, &f),
    };
    match result {
        Ok(id) => redirect(&job_url(id)),
        Err(failure) => {
            let main = run_main(&csrf, &runnable, &submitted, Some(failure.message()));
            page(
                failure.status(),
                layout("Run a job", Nav::Run, &csrf, Live::No, &main),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_the_five_characters() {
        assert_eq!(
            esc(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(esc("\u{202E}<exe>.txt"), r"\u{202E}&lt;exe&gt;.txt");
        assert_eq!(
            esc_json("{\"f\": \"\u{202E}\"}"),
            r"{&quot;f&quot;: &quot;\u202E&quot;}"
        );
        assert_eq!(esc(""), "");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(took(850), "850 ms");
        assert_eq!(took(4250), "4.25 s");
        assert_eq!(took(187_000), "3m 07s");
        assert_eq!(clock(12_900), "12 s");
        assert_eq!(clock(187_000), "3m 07s");
        assert_eq!(clock(7_500_000), "2h 05m");
        assert_eq!(clock(-5), "0 s");
    }

    #[test]
    fn the_run_form_names_what_is_wrong() {
        let form = |job: &str, params: &str, delay: &str| RunForm {
            job: job.into(),
            params: params.into(),
            priority: "normal".into(),
            delay: delay.into(),
        };
        let message = |f: RunForm| match f.request(32) {
            Err(Failure::BadInput(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(message(form("", "{}", "0")).starts_with("job:"));
        assert!(message(form("A@m", "{", "0")).starts_with("params: not valid JSON"));
        assert!(message(form("A@m", "3", "0")).starts_with("params: must be"));
        assert!(message(form("A@m", "{}", "-1")).starts_with("delay:"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            message(form("A@m", &deep, "0")),
            "params: params nest more than 32 levels deep (limits.max_params_depth)"
        );
        let ok = form(r"App\Jobs\X@handle", r#"{"a":1}"#, "2.5")
            .request(32)
            .unwrap();
        assert_eq!(
            (ok.class.as_str(), ok.method.as_str()),
            (r"App\Jobs\X", "handle")
        );
        assert_eq!(ok.delay, Some(2.5));
    }

    #[test]
    fn a_job_page_shows_params_as_text() {
        let job = JobRecord {
            id: 7,
            class: r"App\Jobs\X".into(),
            method: "handle".into(),
            params: serde_json::json!({"name": "<script>alert(1)</script>"}),
            priority: Priority::Normal,
            state: JobState::Failed,
            attempts: 1,
            max_attempts: 1,
            retries: 0,
            retry_delay: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(60),
            plugin: "/p/libx.so".into(),
            run_at: 0,
            created_at: 0,
            started_at: Some(0),
            finished_at: Some(1500),
            cancel_requested: false,
            last_error: Some("<b>boom</b>".into()),
            result: None,
            problem: None,
        };
        let attempt = Attempt {
            job_id: 7,
            attempt: 1,
            started_at: 0,
            finished_at: Some(1500),
            outcome: Some("error".into()),
            error: Some("<b>boom</b>".into()),
            output_path: None,
            output_bytes: None,
            pid: Some(42),
            plugin_hash: Some("ab".repeat(32)),
            dispatcher: None,
        };
        let html = job_main(&job, &[attempt], &[("<img src=x>".into(), 0)], "tok");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains(r#"<form id="retry-form""#));
        assert!(!html.contains(r#"id="cancel""#));
        assert!(html.contains(r#"<span id="duration">1.50 s</span>"#));
    }
}
