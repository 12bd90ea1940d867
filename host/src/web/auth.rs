//! Who may see and do what on the dashboard: the login page, sessions, CSRF tokens, bearer
//! tokens for API clients, and the slowdown of failed logins.
//!
//! [`guard`] runs before every route: only the login page and the two assets are served
//! without a valid session (or an `Authorization: Bearer` admin token). A session is a random
//! id in the `jobhost_session` cookie (HttpOnly, SameSite=Strict) kept in memory for 12 hours,
//! each with a CSRF token that every state-changing request made with the cookie must carry:
//! the form field `csrf` or the header `X-CSRF-Token`. Tokens are compared in constant time.
//! A POST whose `Origin` (or `Referer`) names another origin is refused. A wrong admin token is
//! logged (`Failed dashboard login`) and answered only after a delay that doubles with each
//! consecutive failure from the same client address (behind a trusted proxy, the one
//! `X-Forwarded-For` names); a right token is never delayed, whatever fails beside it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, ConnectInfo, FromRequest, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Extension,
};
use serde::Deserialize;

use super::{
    data::{self, Failure},
    is_api, pages, redirect, refusal, Shared, PREFIX,
};
use crate::config::settings::IpRange;

/// The session cookie's name.
pub const COOKIE: &str = "jobhost_session";

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// The delay after the first failed login; each further consecutive failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest delay after a failed login.
const MAX_DELAY: Duration = Duration::from_secs(8);

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

/// One client address's failed logins: how many in a row, and the turn its next failure waits
/// for.
#[derive(Default)]
struct Failures {
    count: AtomicU32,
    turn: tokio::sync::Mutex<()>,
}

/// Failed logins per client address. The token is checked first: a right one passes at once,
/// whatever else is waiting, and resets its address's count. Only a wrong one waits — for the
/// wrong ones from its address before it, one after another, then for its own delay.
#[derive(Default)]
pub struct Throttle {
    per_client: Mutex<HashMap<IpAddr, Arc<Failures>>>,
}

/// Addresses remembered before those neither failing nor waiting are forgotten.
const REMEMBERED: usize = 1024;

impl Throttle {
    /// Checks `offered` against the admin token `token` for the client at `client`: a success
    /// answers at once; a failure is logged and answered after its delay.
    pub async fn check(&self, client: IpAddr, offered: &str, token: &str) -> bool {
        if constant_time_eq(offered.as_bytes(), token.as_bytes()) {
            if let Some(failures) = self.map().get(&client) {
                failures.count.store(0, Ordering::Relaxed);
            }
            return true;
        }
        crate::joblog::failed_login(&client.to_string());
        let failures = {
            let mut map = self.map();
            if map.len() >= REMEMBERED {
                map.retain(|_, f| Arc::strong_count(f) > 1 || f.count.load(Ordering::Relaxed) > 0);
            }
            if map.len() >= 4 * REMEMBERED {
                // Many addresses failing at once: keep only those with an attempt waiting.
                map.retain(|_, f| Arc::strong_count(f) > 1);
            }
            Arc::clone(map.entry(client).or_default())
        };
        let _turn = failures.turn.lock().await;
        let count = failures
            .count
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        tokio::time::sleep(backoff(count)).await;
        false
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, Arc<Failures>>> {
        self.per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The address of the client behind a request from `peer`: `peer` itself, unless it is one
/// of the `trusted` proxies (`web.trusted_proxies`); then the rightmost address of
/// `X-Forwarded-For` that is not a trusted proxy (each proxy appends the address it was
/// reached from; what the client wrote before that is its own claim). `peer` when the header
/// is missing, names only trusted proxies, or holds something that is no address.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let ip = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        match ip {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip.to_canonical(),
            Err(_) => return peer,
        }
    }
    peer
}

/// Whether a request's `Origin` header — or, lacking it, its `Referer` — names the origin the
/// request was sent to (its `Host`, over `http` or `https`). A request with neither (curl, an
/// API client) passes; a browser sends `Origin` with every POST.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    let Some(claimed) = text(header::ORIGIN).or_else(|| text(header::REFERER)) else {
        return true;
    };
    let Some(host) = text(header::HOST) else {
        return false;
    };
    let authority = claimed
        .strip_prefix("http://")
        .or_else(|| claimed.strip_prefix("https://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next());
    authority.is_some_and(|a| !a.is_empty() && a.eq_ignore_ascii_case(host))
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
/// route answers 401, a POST with a wrong CSRF token 403. A POST that says it comes from
/// another origin ([`same_origin`]) is refused 403 before anything else, the login included.
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
    let is_post = request.method() == Method::POST;
    if is_post && !same_origin(request.headers()) {
        return refusal(
            &path,
            "",
            StatusCode::FORBIDDEN,
            "origin-error",
            "refused: the request comes from another origin (its Origin or Referer header is not this dashboard)",
        );
    }
    let client = client_address(
        peer.ip(),
        request.headers(),
        &app.settings.web.trusted_proxies,
    );
    request.extensions_mut().insert(Client(client));
    if is_public(&path) {
        return next.run(request).await;
    }

    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    if let Some(offered) = bearer {
        if !app.throttle.check(client, &offered, &app.token).await {
            return super::api::error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        request.extensions_mut().insert(Auth::Bearer);
        return next.run(request).await;
    }

    let csrf =
        cookie(request.headers(), COOKIE).and_then(|id| app.sessions().csrf(id, Instant::now()));
    let Some(csrf) = csrf else {
        return if is_api(&path) {
            super::api::error(StatusCode::UNAUTHORIZED, "unauthorized")
        } else {
            redirect(&format!("{PREFIX}/login"))
        };
    };
    if is_post {
        request = match check_csrf(request, &csrf, app.body_limit).await {
            Ok(passed) => passed,
            Err(failure) => {
                let (id, message) = match &failure {
                    Failure::TooLarge(m) => ("too-large", m.as_str()),
                    Failure::BadInput(m) => ("bad-request", m.as_str()),
                    _ if is_api(&path) => ("csrf-error", "missing or wrong CSRF token"),
                    _ => ("csrf-error", "The form was missing its CSRF token, or it was wrong. Reload the page and try again."),
                };
                return refusal(&path, &csrf, failure.status(), id, message);
            }
        };
    }
    request.extensions_mut().insert(Auth::Session(csrf));
    next.run(request).await
}

/// The address of the client a request comes from ([`client_address`]), for the handlers.
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// Checks a POST's CSRF token: the `X-CSRF-Token` header, else the form field `csrf` (the body,
/// at most `limit` bytes, is read, then put back for the handler). Returns the request if the
/// token is right; else why not: a body too large to read, one that is no form, or a missing or
/// wrong token (403).
async fn check_csrf(request: Request, csrf: &str, limit: usize) -> Result<Request, Failure> {
    let wrong = || Failure::Refused("missing or wrong CSRF token".into());
    let header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    if header.is_some() {
        return csrf_ok(csrf, header).then_some(request).ok_or_else(wrong);
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(wrong());
    }
    let (parts, body) = request.into_parts();
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(|e| Failure::unreadable(e.status(), e.body_text(), limit))?;
    let fields: Vec<(String, String)> = data::read_form(Ok(bytes.clone()), limit)?;
    let offered = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if csrf_ok(csrf, offered) {
        Ok(Request::from_parts(parts, Body::from(bytes)))
    } else {
        Err(wrong())
    }
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

/// `POST /login`: the admin token opens a session, and closes the one the request came with
/// (logging in again gets a new session id). A form that cannot be read — too large,
/// malformed — is answered 413 or 400 and is no failed login.
pub async fn login(
    State(app): State<Shared>,
    Extension(Client(client)): Extension<Client>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let offered = match data::read_form::<LoginForm>(body, app.body_limit) {
        Ok(form) => form.token,
        Err(failure) => return pages::failure_page("", &failure),
    };
    if !app.throttle.check(client, offered.trim(), &app.token).await {
        return pages::login_page(StatusCode::UNAUTHORIZED, true);
    }
    let (id, csrf) = match (random_hex(), random_hex()) {
        (Ok(id), Ok(csrf)) => (id, csrf),
        _ => {
            return pages::failure_page(
                "",
                &Failure::Internal("no randomness for a session".into()),
            )
        }
    };
    {
        let mut sessions = app.sessions();
        if let Some(old) = cookie(&headers, COOKIE) {
            sessions.close(old);
        }
        sessions.open(id.clone(), csrf, Instant::now());
    }
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_untrusted_end() {
        let trusted = [
            IpRange::parse("127.0.0.1").unwrap(),
            IpRange::parse("10.0.0.0/8").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer: &str, pairs: &[(&'static str, &'static str)]| {
            client_address(ip(peer), &headers(pairs), &trusted)
        };
        let xff = "x-forwarded-for";
        // Not from a trusted proxy: the peer, whatever it claims.
        assert_eq!(
            client("192.0.2.1", &[(xff, "203.0.113.1")]),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers(&[(xff, "203.0.113.1")]), &[]),
            ip("127.0.0.1")
        );
        // From one: the rightmost address that is not a trusted proxy.
        assert_eq!(
            client("127.0.0.1", &[(xff, "203.0.113.1")]),
            ip("203.0.113.1")
        );
        assert_eq!(
            client("::ffff:127.0.0.1", &[(xff, "203.0.113.1")]),
            ip("203.0.113.1")
        );
        assert_eq!(
            client("127.0.0.1", &[(xff, "198.51.100.9, 203.0.113.1, 10.0.0.7")]),
            ip("203.0.113.1")
        );
        assert_eq!(
            client("127.0.0.1", &[(xff, "198.51.100.9"), (xff, "203.0.113.2")]),
            ip("203.0.113.2")
        );
        assert_eq!(
            client("127.0.0.1", &[(xff, "[2001:db8::1]:443")]),
            ip("2001:db8::1")
        );
        // Nothing, only proxies, or garbage at the end: the peer.
        assert_eq!(client("127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(
            client("127.0.0.1", &[(xff, "10.1.1.1, 127.0.0.1")]),
            ip("127.0.0.1")
        );
        assert_eq!(
            client("127.0.0.1", &[(xff, "203.0.113.1, unknown")]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_post_must_not_say_it_comes_from_another_origin() {
        let host = ("host", "127.0.0.1:8000");
        for pairs in [
            vec![host],
            vec![host, ("origin", "http://127.0.0.1:8000")],
            vec![host, ("origin", "https://127.0.0.1:8000")],
            vec![("host", "Jobs.Example"), ("origin", "https://jobs.example")],
            vec![
                host,
                (
                    "referer",
                    "http://127.0.0.1:8000/admin/background-jobs/jobs/1",
                ),
            ],
            vec![host, ("referer", "http://127.0.0.1:8000?x")],
            vec![],
        ] {
            assert!(same_origin(&headers(&pairs)), "{pairs:?}");
        }
        for pairs in [
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "http://127.0.0.1:8001")],
            vec![host, ("origin", "http://127.0.0.1:8000.evil.example")],
            vec![host, ("origin", "ftp://127.0.0.1:8000")],
            vec![host, ("origin", "http://")],
            vec![host, ("referer", "http://127.0.0.1:8000@evil.example/")],
            // Origin wins over Referer.
            vec![
                host,
                ("origin", "http://evil.example"),
                ("referer", "http://127.0.0.1:8000/"),
            ],
            vec![("origin", "http://127.0.0.1:8000")],
        ] {
            assert!(!same_origin(&headers(&pairs)), "{pairs:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_right_token_passes_while_wrong_ones_wait_their_turn() {
        let throttle = Arc::new(Throttle::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let wrong: Vec<_> = (0..3)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move { throttle.check(ip, "wrong", "right").await })
            })
            .collect();
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        assert!(throttle.check(ip, "right", "right").await);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the right token did not wait"
        );
        for task in wrong {
            assert!(!task.await.unwrap());
        }
        // One after another: 250 ms + 500 ms + 1 s, less what the right token's reset saved.
        assert!(
            start.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
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
