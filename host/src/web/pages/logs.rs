//! `GET /logs`: the last lines of both log files, newest last.

use axum::{extract::State, http::StatusCode, response::Response, Extension};
use maud::{html, Markup};

use super::{failure_page, page, parts::text, Live, Nav};
use crate::{
    joblog::{ERRORS_FILE, LOG_FILE},
    web::{auth::Auth, data, shared_read, Shared},
};

/// `GET /logs`: the last lines of both log files.
pub async fn logs(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let read = shared_read(&app, "logs".into(), data::logs).await;
    let logs = match read.as_deref() {
        Ok(l) => l,
        Err(f) => return failure_page(csrf, f),
    };
    let main = html! {
        h1 { "Logs" }
        p class="muted" {
            "In " code { (text(&app.settings.log_dir.display().to_string())) } ", newest last."
        }
        (block("log-main", LOG_FILE, &logs.main))
        (block("log-errors", ERRORS_FILE, &logs.errors))
    };
    page(StatusCode::OK, "Logs", Nav::Logs, csrf, Live::Yes, main)
}

/// The last `lines` of log file `file`, in `<pre id="ID">`.
fn block(id: &str, file: &str, lines: &[String]) -> Markup {
    html! {
        section class="log" {
            h2 { code { (file) } " " span class="muted small" { "last " (lines.len()) " lines" } }
            pre id=(id) class="log" { (text(&lines.join("\n"))) }
        }
    }
}
