//! `GET /`: the dispatcher's problems, counts by state, throughput, the running jobs and the
//! dispatchers sharing the store.

use axum::{extract::State, http::StatusCode, response::Response, Extension};
use maud::{html, Markup};

use super::{
    failure_page, page,
    parts::{clock, head, job_link, text, when},
    Live, Nav, PREFIX,
};
use crate::{
    store::{now_millis, DispatcherRecord, JobState},
    web::{
        auth::Auth,
        data::{self, WINDOWS},
        shared_read,
        Shared,
    },
};

/// `GET /`: counts by state, throughput, running jobs.
pub async fn overview(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let read = shared_read(&app, "overview".into(), |app| {
        let health = app.health();
        data::overview(&mut **app.store(), true, health)
    })
    .await;
    let overview = match read.as_deref() {
        Ok(Ok(o)) => o,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, f),
    };
    let problems = overview.health.iter().flat_map(|h| &h.problems);
    let main = html! {
        h1 { "Overview" }
        @for problem in problems {
            p class="problem" role="alert" {
                strong {
                    "The dispatcher reports: " (text(&problem.what)) " since "
                    (crate::shared::text::local_time(problem.since).unwrap_or_default()) "."
                }
                " " (text(&problem.error))
                " Running jobs stay supervised; nothing new starts until it recovers."
            }
        }
        section id="counts" class="cards" {
            @for state in JobState::ALL {
                @let s = state.as_str();
                a class="card state-card" data-state=(s) href={ (PREFIX) "/jobs?state=" (s) } {
                    span class="count" { (overview.by_state.get(s).copied().unwrap_or(0)) }
                    span class={ "label state state-" (s) } { (s) }
                }
            }
        }
        section id="throughput" {
            h2 { "Finished lately" }
            table class="throughput" {
                thead {
                    tr {
                        th {}
                        @for (label, minutes) in WINDOWS {
                            th data-window=(label) { "last " (minutes) " min" }
                        }
                    }
                }
                tbody {
                    @for (kind, title, counts) in [
                        ("finished", "Finished (completed)", &overview.finished),
                        ("failed", "Failed", &overview.failed),
                    ] {
                        "\n"
                        tr class=(kind) {
                            th { (title) }
                            @for (label, _) in WINDOWS {
                                td data-kind=(kind) data-window=(label) {
                                    (counts.get(label).copied().unwrap_or(0))
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Running" }
            table id="running" {
                (head(&["Id", "Job", "Attempt", "Priority", "Started", "Elapsed"]))
                tbody {
                    @for (job, attempt) in &overview.running {
                        "\n"
                        tr data-job-id=(job.id) {
                            td class="id" { (job_link(job.id)) }
                            td class="job" { (text(&job.name())) }
                            td class="attempts" { (job.attempts) "/" (job.max_attempts) }
                            td class="priority" { (job.priority.as_str()) }
                            td class="started" { (when(Some(attempt.started_at))) }
                            td class="elapsed" data-started-at=(attempt.started_at) {
                                (clock(data::elapsed(attempt.started_at, None)))
                            }
                        }
                    }
                }
            }
            @if overview.running.is_empty() {
                p class="empty" { "Nothing is running." }
            }
        }
        (dispatchers(&overview.dispatchers))
    };
    page(
        StatusCode::OK,
        "Overview",
        Nav::Overview,
        csrf,
        Live::Yes,
        main,
    )
}

/// The dispatchers sharing the store: where each runs, its slots and running attempts, and
/// how long ago it last heartbeated.
fn dispatchers(dispatchers: &[DispatcherRecord]) -> Markup {
    let now = now_millis();
    html! {
        section id="dispatchers" {
            h2 { "Dispatchers" }
            table {
                (head(&[
                    "Id", "Host", "Pid", "Slots", "Running", "Started", "Last heartbeat",
                    "State directory",
                ]))
                tbody {
                    @for d in dispatchers {
                        "\n"
                        tr data-dispatcher=(d.id) {
                            td class="id" { (d.id) }
                            td class="host" { (text(&d.host)) }
                            td class="pid" { (d.pid) }
                            td class="slots" { (d.slots) }
                            td class="running" { (d.running) }
                            td class="started" { (when(Some(d.started_at))) }
                            td class="heartbeat" data-heartbeat-at=(d.heartbeat_at) {
                                (clock(data::elapsed(d.heartbeat_at, Some(now)))) " ago"
                            }
                            td class="state-dir" { code { (text(&d.state_dir)) } }
                        }
                    }
                }
            }
            @if dispatchers.is_empty() {
                p class="empty" { "No dispatcher is registered." }
            }
        }
    }
}
