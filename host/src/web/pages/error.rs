//! The page of one error message: a refused request, a failure, an address that is no page.

use axum::{http::StatusCode, response::Response};
use maud::html;

use super::{page, parts::text, Live, Nav, PREFIX};
use crate::web::data::Failure;

/// A page with one error message, `<p class="error" id="ID">`.
pub(crate) fn error_page(csrf: &str, status: StatusCode, id: &str, message: &str) -> Response {
    let main = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p class="error" id=(id) { (text(message)) }
        p { a href={ (PREFIX) "/" } { "Back to the overview" } }
    };
    page(status, "Error", Nav::Other, csrf, Live::No, main)
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
