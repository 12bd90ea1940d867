//! `GET /run` and `POST /run`: the form that queues a job the plugins offer and the allowlist
//! approves, and what it sends.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::StatusCode,
    response::Response,
    Extension,
};
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    failure_page, page,
    parts::{job_url, json, options, text, PRIORITIES},
    Live, Nav, PREFIX,
};
use crate::{
    job::{json_text_depth, ParamsError},
    web::{
        auth::Auth,
        blocking,
        data::{self, Failure},
        redirect, Shared,
    },
};

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

/// The form, filled with `form` (the defaults where it is empty), after `error` if given.
fn run_main(csrf: &str, runnable: &[String], form: &RunForm, error: Option<&str>) -> Markup {
    fn or<'a>(value: &'a str, default: &'a str) -> &'a str {
        if value.is_empty() {
            default
        } else {
            value
        }
    }
    html! {
        h1 { "Run a job" }
        p class="muted" {
            "Every job a plugin offers and the allowlist approves. It is queued like "
            code { "jobhost run" } " queues it: same checks, same logs."
        }
        @if let Some(error) = error {
            p class="error" id="run-error" { (text(error)) }
        }
        form id="run-form" method="post" action={ (PREFIX) "/run" } class="card run-form" {
            input type="hidden" name="csrf" value=(csrf);
            label for="run-job" { "Job" }
            select id="run-job" name="job" {
                @if runnable.is_empty() {
                    option value="" { "(no approved job is offered by a plugin)" }
                } @else {
                    (options(runnable.iter().map(String::as_str), Some(form.job.as_str()), None))
                }
            }
            label for="run-params" {
                "Params " span class="muted small" { "a JSON object (named) or array (positional)" }
            }
            textarea id="run-params" name="params" rows="6" spellcheck="false" {
                (json(or(&form.params, "{}")))
            }
            div class="row" {
                div {
                    label for="run-priority" { "Priority" }
                    select id="run-priority" name="priority" {
                        (options(PRIORITIES, Some(or(&form.priority, "normal")), None))
                    }
                }
                div {
                    label for="run-delay" { "Delay " span class="muted small" { "seconds" } }
                    input id="run-delay" name="delay" type="text" inputmode="decimal"
                        value=(text(or(&form.delay, "0")));
                }
            }
            button id="run-submit" type="submit" { "Run" }
        }
    }
}

/// `GET /run`: the form.
pub async fn run_form(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let runnable = match blocking(&app, |app| data::plugins(app).map(|p| p.runnable())).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let main = run_main(csrf, &runnable, &RunForm::default(), None);
    page(StatusCode::OK, "Run a job", Nav::Run, csrf, Live::No, main)
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
                "Run a job",
                Nav::Run,
                &csrf,
                Live::No,
                main,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
