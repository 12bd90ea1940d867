//! Who may see and do what on the dashboard: the login page, sessions, CSRF tokens, bearer
//! tokens for API clients, and the slowdown of failed logins.
//!
//! [`guard`] runs before every route: only the login page and the two assets are served
//! without a valid session (or an `Authorization: Bearer` admin token). A session is a random
//! id in the `jobhost_session` cookie (HttpOnly, SameSite=Strict) kept in memory for 12 hours,
//! each with a CSRF token that every state-changing request made with the cookie must carry:
//! the form field `csrf` or the header `X-CSRF-Token`. Tokens are compared in constant time.
//! A wrong admin token is logged (`Failed dashboard login`) and answered only after a delay
//! that doubles with each consecutive failure from the same address.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{rejection::FormRejection, ConnectInfo, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Extension, Form,
};
use serde::Deserialize;

use super::{api, pages, redirect, Shared, PREFIX};

/// The session cookie's name.
pub const COOKIE: &str = "jobhost_session";

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// The delay after the first failed login; each further consecutive failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest delay after a failed login.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// The largest form body the guard reads to find its CSRF token.
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// How a request was let in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// With a session cookie; the session's CSRF token.
    Session(String),
    /// With the admin token as a bearer token (an API client: no cookie, no CSRF).
    Bearer,
}

impl Auth {
    /// The CSRF token to put in pages: empty for a bearer client.
    pub fn csrf(&self) -> &str {
        match self {
            Auth::Session(csrf) => csrf,
            Auth::Bearer => "",
        }
    }
}

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, taking the same time for every `b` of `a`'s length: the
/// lengths are compared first (a token's length is no secret), then every byte is XOR-folded.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether `offered` is the session's CSRF token.
pub fn csrf_ok(expected: &str, offered: Option<&str>) -> bool {
    !expected.is_empty()
        && offered.is_some_and(|offered| constant_time_eq(expected.as_bytes(), offered.as_bytes()))
}

/// The delay before answering the `failures`-th consecutive failed login: 250 ms, 500 ms,
/// 1 s, ... up to 8 s.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// The open sessions, by id.
#[derive(Default)]
pub struct Sessions {
    open: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session `id` with CSRF token `csrf` at `now`.
    pub fn open(&mut self, id: String, csrf: String, now: Instant) {
        self.open.retain(|_, s| s.expires > now);
        self.open.insert(
            id,
            Session {
                csrf,
                expires: now + SESSION_LIFETIME,
            },
        );
    }

    /// The CSRF token of session `id` if it is open at `now`; an expired one is closed.
    pub fn csrf(&mut self, id: &str, now: Instant) -> Option<String> {
        match self.open.get(id) {
            Some(session) if session.expires > now => Some(session.csrf.clone()),
            Some(_) => {
                self.open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Closes session `id`.
    pub fn close(&mut self, id: &str) {
        self.open.remove(id);
    }
}

/// Failed logins per client address. A login attempt holds its address's lock through its
/// delay, so attempts from one address are answered one after another.
#[derive(Default)]
pub struct Throttle {
    per_ip: Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<u32>>>>,
}

impl Throttle {
    /// Checks `offered` against the admin token `token` for a client at `ip`: a failure is
    /// logged and answered after its delay; a success resets the count.
    pub async fn check(&self, ip: IpAddr, offered: &str, token: &str) -> bool {
        let entry = {
            let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() > 1024 {
                // Forget the addresses that are neither failing nor waiting.
                map.retain(|_, e| {
                    Arc::strong_count(e) > 1 || e.try_lock().map_or(true, |n| *n > 0)
                });
            }
            Arc::clone(map.entry(ip).or_default())
        };
        let mut failures = entry.lock().await;
        if constant_time_eq(offered.as_bytes(), token.as_bytes()) {
            *failures = 0;
            return true;
        }
        *failures = failures.saturating_add(1);
        crate::joblog::failed_login(&ip.to_string());
        tokio::time::sleep(backoff(*failures)).await;
        false
    }
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Whether `path` is served without a session.
fn is_public(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return path == "/";
    };
    matches!(rest, "" | "/login" | "/assets/app.css" | "/assets/app.js")
}

/// Lets a request through only with a valid session (and, for a POST, its CSRF token) or the
/// admin token as a bearer token. Otherwise: a page is redirected to the login page, an API
/// route answers 401, a POST with a wrong CSRF token 403.
pub async fn guard(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with(PREFIX) && path != "/" {
        // Browsers ask for a site icon at the root; there is none, and no need to say so loudly.
        if path == "/favicon.ico" {
            return StatusCode::NO_CONTENT.into_response();
        }
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if is_public(&path) {
        return next.run(request).await;
    }
    let is_api = path.starts_with(&format!("{PREFIX}/api/"));

    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    if let Some(offered) = bearer {
        if !app.throttle.check(peer.ip(), &offered, &app.token).await {
            return api::error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        request.extensions_mut().insert(Auth::Bearer);
        return next.run(request).await;
    }

    let csrf =
        cookie(request.headers(), COOKIE).and_then(|id| app.sessions().csrf(id, Instant::now()));
    let Some(csrf) = csrf else {
        return if is_api {
            api::error(StatusCode::UNAUTHORIZED, "unauthorized")
        } else {
            redirect(&format!("{PREFIX}/login"))
        };
    };
    if request.method() == Method::POST {
        let Some(passed) = check_csrf(request, &csrf).await else {
            return if is_api {
                api::error(StatusCode::FORBIDDEN, "missing or wrong CSRF token")
            } else {
                pages::error_page(
                    &csrf,
                    StatusCode::FORBIDDEN,
                    "csrf-error",
                    "The form was missing its CSRF token, or it was wrong. Reload the page and try again.",
                )
            };
        };
        request = passed;
    }
    request.extensions_mut().insert(Auth::Session(csrf));
    next.run(request).await
}

/// Checks a POST's CSRF token: the `X-CSRF-Token` header, else the form field `csrf` (the body
/// is read, then put back for the handler). Returns the request if the token is right.
async fn check_csrf(request: Request, csrf: &str) -> Option<Request> {
    let header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    if header.is_some() {
        return csrf_ok(csrf, header).then_some(request);
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return None;
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.ok()?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let offered = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    csrf_ok(csrf, offered).then(|| Request::from_parts(parts, Body::from(bytes)))
}

/// `GET /login`.
pub async fn login_page() -> Response {
    pages::login_page(StatusCode::OK, false)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: the admin token opens a session.
pub async fn login(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let offered = form.map(|f| f.0.token).unwrap_or_default();
    if !app
        .throttle
        .check(peer.ip(), offered.trim(), &app.token)
        .await
    {
        return pages::login_page(StatusCode::UNAUTHORIZED, true);
    }
    let (id, csrf) = match (random_hex(), random_hex()) {
        (Ok(id), Ok(csrf)) => (id, csrf),
        _ => {
            return api::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no randomness for a session",
            )
        }
    };
    app.sessions().open(id.clone(), csrf, Instant::now());
    let mut response = redirect(&format!("{PREFIX}/"));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path={PREFIX}; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: closes the session (the guard checked its CSRF token).
pub async fn logout(
    State(app): State<Shared>,
    headers: HeaderMap,
    _auth: Extension<Auth>,
) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        app.sessions().close(id);
    }
    let mut response = redirect(&format!("{PREFIX}/login"));
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path={PREFIX}; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_lengths_then_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"Secret"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn csrf_needs_the_sessions_token_exactly() {
        assert!(csrf_ok("abc123", Some("abc123")));
        assert!(!csrf_ok("abc123", Some("abc124")));
        assert!(!csrf_ok("abc123", Some("")));
        assert!(!csrf_ok("abc123", None));
        // A bearer client has no CSRF token; an empty one never matches.
        assert!(!csrf_ok("", Some("")));
    }

    #[test]
    fn backoff_doubles_from_250_ms_up_to_8_s() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(ms(0), 0);
        assert_eq!(
            (1..=8).map(ms).collect::<Vec<_>>(),
            [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]
        );
        assert_eq!(ms(u32::MAX), 8000);
    }

    #[test]
    fn sessions_expire_after_12_hours_and_close() {
        let start = Instant::now();
        let mut sessions = Sessions::default();
        sessions.open("id1".into(), "csrf1".into(), start);
        assert_eq!(sessions.csrf("id1", start).as_deref(), Some("csrf1"));
        assert_eq!(sessions.csrf("nope", start), None);
        let almost = start + SESSION_LIFETIME - Duration::from_secs(1);
        assert_eq!(sessions.csrf("id1", almost).as_deref(), Some("csrf1"));
        assert_eq!(sessions.csrf("id1", start + SESSION_LIFETIME), None);
        // Expired means gone, even if asked about with an earlier clock.
        assert_eq!(sessions.csrf("id1", start), None);

        sessions.open("id2".into(), "csrf2".into(), start);
        sessions.close("id2");
        assert_eq!(sessions.csrf("id2", start), None);
    }

    #[test]
    fn random_tokens_are_64_hex_digits_and_differ() {
        let a = random_hex().unwrap();
        let b = random_hex().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; jobhost_session=xyz"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn only_the_login_page_and_assets_are_public() {
        for path in [
            "/admin/background-jobs/login",
            "/admin/background-jobs/assets/app.css",
            "/admin/background-jobs/assets/app.js",
            "/admin/background-jobs",
            "/",
        ] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/admin/background-jobs/",
            "/admin/background-jobs/jobs",
            "/admin/background-jobs/api/stats",
            "/admin/background-jobs/assets/other.js",
            "/admin/background-jobs/login/x",
            "/admin/background-jobs/events",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }
}
