//! `GET /jobs`: the jobs, filtered by state, class and priority, newest first, a page at a time.

use std::collections::HashMap;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::Response,
    Extension,
};
use maud::html;

use super::{
    failure_page, page,
    parts::{head, job_link, options, state_badge, text, when, PRIORITIES},
    Live, Nav, PREFIX,
};
use crate::{
    job::Priority,
    store::JobState,
    web::{
        auth::Auth,
        data::{self, JobsQuery, PER_PAGE},
        shared_read, Shared,
    },
};

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
    let read = shared_read(&app, data::list_key(&query), move |app| {
        data::list(&mut **app.store(), &q)
    })
    .await;
    let (jobs, more) = match read.as_deref() {
        Ok(Ok((jobs, more))) => (jobs.as_slice(), *more),
        Ok(Err(f)) | Err(f) => return failure_page(csrf, f),
    };
    let first = (query.page - 1) * PER_PAGE + 1;
    let main = html! {
        h1 { "Jobs" }
        form id="filter" method="get" action={ (PREFIX) "/jobs" } class="filter" {
            label {
                "State "
                select name="state" {
                    (options(
                        JobState::ALL.iter().map(|s| s.as_str()),
                        query.state.map(JobState::as_str),
                        Some("any"),
                    ))
                }
            }
            label {
                "Class "
                input name="class" value=(text(query.class.as_deref().unwrap_or("")))
                    placeholder=r"App\Jobs\SendWelcomeEmail" spellcheck="false";
            }
            label {
                "Priority "
                select name="priority" {
                    (options(PRIORITIES, query.priority.map(Priority::as_str), Some("any")))
                }
            }
            button type="submit" id="filter-submit" { "Filter" }
            a href={ (PREFIX) "/jobs" } class="reset" { "Reset" }
        }
        table id="jobs" {
            (head(&[
                "Id", "Job", "State", "Attempts", "Priority", "Created", "Started", "Finished",
            ]))
            tbody {
                @for job in jobs {
                    "\n"
                    tr data-job-id=(job.id) {
                        td class="id" { (job_link(job.id)) }
                        td class="job" { (text(&job.name())) }
                        td class="state" { (state_badge(job.state, None)) }
                        td class="attempts" { (job.attempts) "/" (job.max_attempts) }
                        td class="priority" { (job.priority.as_str()) }
                        td class="created" { (when(Some(job.created_at))) }
                        td class="started" { (when(job.started_at)) }
                        td class="finished" { (when(job.finished_at)) }
                    }
                }
            }
        }
        @if jobs.is_empty() {
            p class="empty" { "No jobs match." }
        }
        nav class="pages" {
            @if query.page > 1 {
                a id="prev-page" href={ (PREFIX) "/jobs?" (query.to_query(query.page - 1)) } { "← Newer" }
            }
            @if !jobs.is_empty() {
                span class="muted" {
                    "Page " (query.page) " · jobs " (first) "–" (first as usize + jobs.len() - 1)
                }
            }
            @if more {
                a id="next-page" href={ (PREFIX) "/jobs?" (query.to_query(query.page + 1)) } { "Older →" }
            }
        }
    };
    page(StatusCode::OK, "Jobs", Nav::Jobs, csrf, Live::Yes, main)
}
