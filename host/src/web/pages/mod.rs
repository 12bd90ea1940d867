//! The dashboard's HTML pages. This module owns what every page shares: the layout around a
//! page's `<main>` (the head with its CSRF meta tag, the header with its navigation, the live
//! status and the logout form) and the answer that carries a page; [`parts`] holds the pieces
//! several pages show (text as it is shown, times and durations, state badges, job links,
//! select options, table heads). One module per page: [`overview`] (`GET /`), [`jobs`] (`GET
//! /jobs`), [`job`] (`GET /jobs/{id}`, and the cancel and retry actions that answer with a
//! redirect), [`plugins`] (`GET /plugins`), [`logs`] (`GET /logs`), [`run`] (`GET` and `POST
//! /run`), [`login`] (the login page) and [`error`] (the page of one error message).
//!
//! The pages are maud templates, because maud checks them when the crate compiles, escapes
//! every interpolated value by default, and needs no template files to ship nor a build step.
//! Values from the queue, the plugins or the logs go through [`parts::text`] (or
//! [`parts::json`] for JSON), which also shows hidden characters as escapes and writes `'` as
//! `&#39;`. Nothing is written unescaped but the templates' own literals and maud's constant
//! `DOCTYPE`; no `PreEscaped` is used.
//! Each table row starts a line of the page's source (a `"\n"` before it), one row a line for
//! whoever reads the source.

mod error;
mod job;
mod jobs;
mod login;
mod logs;
mod overview;
mod parts;
mod plugins;
mod run;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{html, Markup, DOCTYPE};

pub(crate) use self::error::{error_page, failure_page};
pub use self::{
    job::{cancel, job, retry},
    jobs::jobs,
    login::login_page,
    logs::logs,
    overview::overview,
    plugins::plugins,
    run::{run, run_form},
};
use super::PREFIX;

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

/// The navigation's links: id, path under [`PREFIX`], label, and the page each leads to.
const NAV: [(&str, &str, &str, Nav); 5] = [
    ("nav-overview", "/", "Overview", Nav::Overview),
    ("nav-jobs", "/jobs", "Jobs", Nav::Jobs),
    ("nav-plugins", "/plugins", "Plugins", Nav::Plugins),
    ("nav-logs", "/logs", "Logs", Nav::Logs),
    ("nav-run", "/run", "Run a job", Nav::Run),
];

/// Whether the page refreshes itself when jobs change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    Yes,
    No,
}

/// A whole HTML document titled `title · jobhost`. A page of a session (`csrf`, its CSRF
/// token) has the token in `<meta name="csrf-token">` and the script that uses it; the login
/// page has neither.
fn document(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = csrf {
                    meta name="csrf-token" content=(csrf);
                }
                title { (title) " · jobhost" }
                link rel="stylesheet" href={ (PREFIX) "/assets/app.css" };
                @if csrf.is_some() {
                    script src={ (PREFIX) "/assets/app.js" } defer {}
                }
            }
            (body)
        }
    }
}

/// A whole page of a session around `main`, answered with `status`.
fn page(
    status: StatusCode,
    title: &str,
    nav: Nav,
    csrf: &str,
    live: Live,
    main: Markup,
) -> Response {
    let body = html! {
        body data-events={ (PREFIX) "/events" } {
            header class="top" {
                a class="brand" href={ (PREFIX) "/" } { "jobhost" }
                nav {
                    @for (id, path, label, this) in NAV {
                        a id=(id) href={ (PREFIX) (path) }
                            aria-current=[(nav == this).then_some("page")] { (label) }
                    }
                }
                span id="live-status" class="live-status"
                    title="Updates without reloading while this tab is visible" { "static" }
                form id="logout-form" method="post" action={ (PREFIX) "/logout" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button id="logout" type="submit" class="link" { "Log out" }
                }
            }
            main id="main" data-live=(if live == Live::Yes { "true" } else { "false" }) {
                (main)
            }
        }
    };
    (status, document(title, Some(csrf), body)).into_response()
}
