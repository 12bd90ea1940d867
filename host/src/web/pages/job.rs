//! `GET /jobs/{id}`: one job, its params and result, every attempt with its output; and the
//! cancel and retry actions on its page, which answer with a redirect back to it.

use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::StatusCode,
    response::Response,
    Extension,
};
use maud::{html, Markup};

use super::{
    failure_page, page,
    parts::{clock, head, job_url, json, short_hash, state_badge, text, took, when},
    Live, Nav, PREFIX,
};
use crate::{
    store::{Attempt, JobId, JobRecord, JobState},
    web::{
        auth::Auth,
        blocking,
        data::{self, Failure},
        redirect, shared_read, App, Shared,
    },
};

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
    let found = shared_read(&app, format!("job-page/{id}"), move |app| {
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
    let (job, attempts, outputs) = match found.as_deref() {
        Ok(Ok(r)) => r,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, f),
    };
    let main = job_main(job, attempts, outputs, csrf);
    let title = format!("Job {}", job.id);
    page(StatusCode::OK, &title, Nav::Jobs, csrf, Live::Yes, main)
}

/// The job page's `<main>`: `outputs` has the end of each attempt's output, and how many
/// bytes before it are not shown.
fn job_main(
    job: &JobRecord,
    attempts: &[Attempt],
    outputs: &[(String, u64)],
    csrf: &str,
) -> Markup {
    let action = |kind: &str, label: &str| {
        html! {
            form id={ (kind) "-form" } method="post" action={ (PREFIX) "/jobs/" (job.id) "/" (kind) }
                class="inline" {
                input type="hidden" name="csrf" value=(csrf);
                button id=(kind) type="submit" class=(kind) { (label) }
            }
        }
    };
    let actions = match job.state {
        JobState::Queued | JobState::Scheduled | JobState::Running => Some(html! {
            (action("cancel", "Cancel"))
            @if job.cancel_requested {
                span class="muted" id="cancel-requested" {
                    "Cancel requested; the dispatcher is stopping it."
                }
            }
        }),
        JobState::Failed | JobState::Cancelled => Some(action("retry", "Retry")),
        JobState::Completed => None,
    };
    let duration = match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => html! { span id="duration" { (took(end - start)) } },
        (Some(start), None) if job.state == JobState::Running => html! {
            span id="duration" data-started-at=(start) { (clock(data::elapsed(start, None))) }
        },
        _ => html! { span id="duration" { "—" } },
    };
    let facts = [
        ("Priority", html! { (job.priority.as_str()) }),
        (
            "Attempts",
            html! {
                span id="attempts-used" { (job.attempts) "/" (job.max_attempts) }
                " (retries: " (job.retries) ")"
            },
        ),
        ("Created", html! { (when(Some(job.created_at))) }),
        ("Runs at", html! { (when(Some(job.run_at))) }),
        ("Started", html! { (when(job.started_at)) }),
        ("Finished", html! { (when(job.finished_at)) }),
        ("Execution time", duration),
        (
            "Timeout",
            html! { (job.timeout.as_secs_f64()) " s per attempt" },
        ),
        (
            "Retry delay",
            html! { (job.retry_delay.as_secs_f64()) " s" },
        ),
        (
            "Plugin",
            html! { code { (text(&job.plugin.display().to_string())) } },
        ),
    ];
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    html! {
        h1 {
            "Job " span id="job-id" { (job.id) } " "
            span id="job-name" class="job-name" { (text(&job.name())) } " "
            (state_badge(job.state, Some("job-state")))
        }
        @if let Some(actions) = actions {
            div class="actions" { (actions) }
        }
        dl class="facts" {
            @for (term, value) in facts {
                dt { (term) } dd { (value) }
            }
            @if let Some(problem) = &job.problem {
                dt { "Problem" }
                dd id="problem" class="error-text" {
                    "its stored row cannot be read: " (text(problem))
                }
            }
            @if let Some(error) = &job.last_error {
                dt { "Last error" }
                dd id="last-error" class="error-text" { (text(error)) }
            }
        }
        h2 { "Params" }
        pre id="params" { (json(&pretty(&job.params))) }
        @if let Some(result) = &job.result {
            h2 { "Result" }
            pre id="result" { (json(&pretty(result))) }
        }
        h2 { "Attempts" }
        table id="attempts" {
            (head(&["#", "Outcome", "Started", "Duration", "Pid", "Error", "Plugin hash"]))
            tbody {
                @for (attempt, (output, skipped)) in attempts.iter().zip(outputs) {
                    "\n" (attempt_row(attempt, output, *skipped))
                }
            }
        }
        @if attempts.is_empty() {
            p class="empty" { "No attempt yet." }
        }
    }
}

/// One attempt's row: `output` is the end of its output, after `skipped` bytes not shown.
fn attempt_row(attempt: &Attempt, output: &str, skipped: u64) -> Markup {
    let outcome = attempt.outcome.as_deref().unwrap_or("running");
    let outcome_class = match outcome {
        "ok" => "ok",
        "running" => "running",
        "cancelled" => "cancelled",
        _ => "bad",
    };
    let hash = attempt.plugin_hash.as_deref().unwrap_or("");
    html! {
        tr data-attempt=(attempt.attempt) {
            td class="n" { (attempt.attempt) }
            td class={ "outcome outcome-" (outcome_class) } { (text(outcome)) }
            td class="started" { (when(Some(attempt.started_at))) }
            @match attempt.finished_at {
                Some(end) => td class="duration" { (took(end - attempt.started_at)) },
                None => td class="duration" data-started-at=(attempt.started_at) {
                    (clock(data::elapsed(attempt.started_at, None)))
                },
            }
            td class="pid" {
                @match attempt.pid {
                    Some(pid) => (pid),
                    None => "—",
                }
            }
            td class="error" { (text(attempt.error.as_deref().unwrap_or(""))) }
            td class="hash" title=(text(hash)) { code { (text(short_hash(hash))) } }
            td class="output" {
                @if skipped > 0 {
                    p class="muted small" {
                        "The first " (skipped) " bytes are not shown; the whole output is in "
                        code {
                            @if let Some(path) = &attempt.output_path {
                                (text(&path.display().to_string()))
                            }
                        }
                        "."
                    }
                }
                pre class={ "output" @if output.is_empty() { " empty" } } { (text(output)) }
            }
        }
    }
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

/// Does `action` on the job of the address, then goes back to its page; an action the job's
/// state does not allow shows a "Not done" page that says why.
async fn act(
    app: Shared,
    auth: Auth,
    id: Result<Path<String>, PathRejection>,
    action: fn(&App, JobId) -> Result<(), Failure>,
) -> Response {
    let csrf = auth.csrf();
    let id = match data::job_id(id) {
        Ok(id) => id,
        Err(f) => return failure_page(csrf, &f),
    };
    match blocking(&app, move |app| action(app, id)).await {
        Ok(Ok(())) => redirect(&job_url(id)),
        Ok(Err(Failure::BadInput(message))) => {
            let main = html! {
                h1 { "Not done" }
                p class="error" id="action-error" { (text(&message)) }
                p { a href=(job_url(id)) { "Back to job " (id) } }
            };
            page(
                StatusCode::BAD_REQUEST,
                "Not done",
                Nav::Jobs,
                csrf,
                Live::No,
                main,
            )
        }
        Ok(Err(f)) | Err(f) => failure_page(csrf, &f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Priority;

    /// A failed job with HTML in its params and error, and its one attempt.
    fn failed_job() -> (JobRecord, Attempt) {
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
        (job, attempt)
    }

    #[test]
    fn a_job_page_shows_params_as_text() {
        let (job, attempt) = failed_job();
        let html = job_main(&job, &[attempt], &[("<img src=x>".into(), 0)], "tok").into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains(r#"<form id="retry-form""#));
        assert!(!html.contains(r#"id="cancel""#));
        assert!(html.contains(r#"<span id="duration">1.50 s</span>"#));
        assert!(html.contains(r#"<td class="pid">42</td>"#), "{html}");
    }

    #[test]
    fn a_hash_that_is_not_ascii_is_shortened_by_characters() {
        let (job, mut attempt) = failed_job();
        attempt.plugin_hash = Some(format!("a{}", "é".repeat(20)));
        attempt.pid = None;
        let html = job_main(&job, &[attempt], &[(String::new(), 0)], "tok").into_string();
        let shown = ["<code>a", &"é".repeat(15), "</code>"].concat();
        assert!(html.contains(&shown), "{html}");
        assert!(html.contains(r#"<td class="pid">—</td>"#), "{html}");
        assert!(
            html.contains(r#"<pre class="output empty"></pre>"#),
            "{html}"
        );
    }
}
