//! The login page: the admin token's form.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::html;

use super::{document, PREFIX};

/// The login page; `failed` adds the "Wrong token" message.
pub fn login_page(status: StatusCode, failed: bool) -> Response {
    let body = html! {
        body class="login" {
            main id="main" data-live="false" {
                form id="login" method="post" action={ (PREFIX) "/login" } class="card login-card" {
                    h1 { "jobhost" }
                    p class="muted" { "Background jobs dashboard" }
                    @if failed {
                        p class="error" id="login-error" { "Wrong token" }
                    }
                    label for="token" { "Admin token" }
                    input id="token" name="token" type="password"
                        autocomplete="current-password" autofocus required;
                    button id="login-submit" type="submit" { "Log in" }
                    p class="muted small" {
                        "The token is " code { "web.admin_token" } ", "
                        code { "JOBHOST_ADMIN_TOKEN" } ", or the one " code { "jobhost serve" }
                        " generated (in " code { "dashboard.json" } " in the state directory)."
                    }
                }
            }
        }
    };
    (status, document("Log in", None, body)).into_response()
}
