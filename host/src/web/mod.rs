//! The admin dashboard that `jobhost serve` runs at `http://127.0.0.1:8000/admin/background-jobs`
//! (`docs/dashboard.md`): this module owns its lifetime — the listening socket, the `tokio`
//! runtime on a thread of its own, the router, the response headers every answer carries, and
//! `dashboard.json` in the state directory (the login URL and a generated token).
//!
//! The submodules: [`auth`] decides who may see what (login, sessions, CSRF, the slowdown of
//! failed logins); [`pages`] renders the HTML pages, [`api`] the JSON API, [`events`] the
//! server-sent change events; [`data`] reads and acts on the queue for both pages and API;
//! [`reads`] shares one read among the requests for the same page that arrive together.
//! Reads go to a store connection of the dashboard's own (never the dispatcher's: on SQLite, in
//! WAL mode, a reader does not hold up the dispatcher's writes), one read at a time; actions
//! (cancel, retry, run) go through a [`Client`], so they pass the same gate, are logged the
//! same way and ring the dispatcher's doorbell like the command line's.

mod api;
mod auth;
mod data;
mod events;
mod pages;
mod reads;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use http_body::Body as HttpBody;
use tokio::sync::watch;

use crate::{
    config::settings::Settings, queue::dispatcher::ServeOptions, store::Store, Client,
    DispatchError,
};

/// Where the dashboard lives.
pub const PREFIX: &str = "/admin/background-jobs";

/// The file in the state directory that holds the login URL (and a generated token).
pub const DASHBOARD_FILE: &str = "dashboard.json";

/// How long a stopping dashboard waits for open connections before it drops them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The largest request body the dashboard reads, unless params may be larger: 1 MiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest request body the dashboard reads: 1 MiB, or room for the largest params
/// (`limits.max_params_bytes`) percent-encoded in a form, when that is more. A larger one is
/// answered 413 without being read.
fn body_limit(settings: &Settings) -> usize {
    MAX_BODY_BYTES.max(
        settings
            .limits
            .max_params_bytes
            .saturating_mul(3)
            .saturating_add(64 * 1024),
    )
}

/// The changes to the queue: counted as they happen by the dispatcher and by the dashboard's
/// own actions ([`Changes::bump`]), and told to the open event streams at most once every
/// [`events::gap`] by a task the dashboard runs ([`events::coalesce`]).
#[derive(Clone)]
pub struct Changes {
    /// Every change.
    counted: Arc<watch::Sender<u64>>,
    /// The changes as the event streams are told of them.
    told: Arc<watch::Sender<u64>>,
    /// The event streams open.
    streams: Arc<AtomicUsize>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            counted: Arc::new(watch::Sender::new(0)),
            told: Arc::new(watch::Sender::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Changes {
    /// A new counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one change. Never blocks (it takes a lock the coalescing task holds only to
    /// read the counter); cheap enough for the dispatcher's loop.
    pub fn bump(&self) {
        self.counted.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The tells, for an event stream, and its place among the open streams.
    fn subscribe(&self) -> (watch::Receiver<u64>, events::Open) {
        (self.told.subscribe(), events::Open::new(&self.streams))
    }

    /// The task that tells the streams of the changes counted from now on, until `stopping`.
    fn coalesce(
        &self,
        stopping: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        events::coalesce(
            self.counted.subscribe(),
            Arc::clone(&self.told),
            Arc::clone(&self.streams),
            stopping,
        )
    }
}

/// The running dashboard. Dropping it stops the server and removes `dashboard.json`.
pub struct WebHandle {
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    file: PathBuf,
}

impl Drop for WebHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// What every handler shares.
pub(crate) struct App {
    settings: Settings,
    /// The largest request body read ([`body_limit`]).
    body_limit: usize,
    token: String,
    sessions: Mutex<auth::Sessions>,
    throttle: auth::Throttle,
    store: Mutex<Box<dyn Store>>,
    /// The reads of the store and the logs that concurrent requests share.
    reads: reads::Reads,
    client: Mutex<Client>,
    changes: Changes,
    stopping: watch::Receiver<bool>,
}

impl App {
    fn store(&self) -> MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the dispatcher serving this state directory reports about itself.
    fn health(&self) -> Option<crate::queue::health::Health> {
        let paths = crate::queue::StatePaths::new(&self.settings.state_dir);
        crate::queue::health::current(&paths.lock, &paths.health)
    }

    fn sessions(&self) -> MutexGuard<'_, auth::Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) type Shared = Arc<App>;

/// Starts the dashboard for `settings.web` on a thread of its own and writes `dashboard.json`;
/// `changes` is the counter the dispatcher bumps. Fails, starting nothing, when the address
/// cannot be bound (the port is taken) or the state directory cannot be written.
pub fn start(settings: &Settings, changes: Changes) -> std::io::Result<WebHandle> {
    let (token, generated) = match &settings.web.admin_token {
        Some(token) => (token.clone(), false),
        None => (auth::random_hex()?, true),
    };
    let listen = settings.web.listen;
    let listener = TcpListener::bind(listen)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let store = crate::store::open(&settings.store).map_err(std::io::Error::other)?;
    let client = Client::new(settings.clone()).map_err(|e: DispatchError| {
        std::io::Error::other(format!("cannot open the queue for the dashboard: {e}"))
    })?;
    let (stop, stopping) = watch::channel(false);
    let coalescing = changes.coalesce(stopping.clone());
    let app = Arc::new(App {
        settings: settings.clone(),
        body_limit: body_limit(settings),
        token: token.clone(),
        sessions: Mutex::new(auth::Sessions::default()),
        throttle: auth::Throttle::default(),
        store: Mutex::new(store),
        reads: reads::Reads::default(),
        client: Mutex::new(client),
        changes,
        stopping: stopping.clone(),
    });

    let url = login_url(addr);
    let file = settings.state_dir.join(DASHBOARD_FILE);
    write_dashboard_file(&file, &url, generated.then_some(token.as_str()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("web")
        .enable_all()
        .build()?;
    runtime.spawn(coalescing);
    let router = router(app.clone());
    let thread = std::thread::Builder::new()
        .name("web".into())
        .spawn(move || serve(runtime, listener, router, stopping, app))?;
    if generated {
        // Best effort: a stderr that is gone must not stop the dispatcher.
        // One write, so that nobody reading stderr sees half the line.
        let line = format!("dashboard: {url} (token: {token})\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    tracing::info!("Dashboard listening on {url}");
    Ok(WebHandle {
        stop: Some(stop),
        thread: Some(thread),
        file,
    })
}

/// Sets `options` up to run the dashboard beside the dispatcher when `settings.web.enabled`:
/// started once the dispatcher holds the state directory, told about every change, stopped
/// before the dispatcher lets go. A dashboard that cannot start (the port is taken) is logged as
/// a WARNING; the dispatcher runs on without it.
pub fn attach(settings: &Settings, options: &mut ServeOptions) {
    if !settings.web.enabled {
        return;
    }
    let changes = Changes::new();
    let bump = changes.clone();
    options.on_change = Some(Arc::new(move || bump.bump()));
    let settings = settings.clone();
    options.companion = Some(Arc::new(move || match start(&settings, changes.clone()) {
        Ok(handle) => Some(Box::new(handle) as Box<dyn std::any::Any>),
        Err(e) => {
            tracing::warn!("Dashboard not started: {e}; the dispatcher runs without it");
            None
        }
    }));
}

/// Runs the server until `stopping` turns true, then gives open connections a moment.
///
/// `app` is let go last, once the runtime is shut down, so that the stores it holds are
/// closed on this thread: a synchronous PostgreSQL client cannot shut its connection down
/// from inside an async runtime (it panics, and a panic in a destructor aborts the process).
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    router: Router,
    mut stopping: watch::Receiver<bool>,
    app: Shared,
) {
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("Dashboard stopped: {e}");
                return;
            }
        };
        let mut until_stopped = stopping.clone();
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = until_stopped.wait_for(|stop| *stop).await;
        });
        let server = std::pin::pin!(std::future::IntoFuture::into_future(server));
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!("Dashboard stopped: {e}");
                }
            }
            // Connections that stay open past the grace period are dropped with the runtime.
            () = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(STOP_GRACE).await;
            } => {}
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    drop(app);
}

/// `http://HOST:PORT/admin/background-jobs/login`; an unspecified address (`0.0.0.0`) is
/// reached through loopback.
fn login_url(addr: SocketAddr) -> String {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{shown}{PREFIX}/login")
}

/// Writes `{"url": ..., "token": ...}`, readable by its owner only (written under a temporary
/// name and renamed, so nobody reads half of it).
fn write_dashboard_file(path: &Path, url: &str, token: Option<&str>) -> std::io::Result<()> {
    let body = serde_json::json!({ "url": url, "token": token }).to_string();
    crate::shared::files::write_privately(path, body.as_bytes())
}

/// Every route. The guard ([`auth::guard`]) runs before all of them, the fallback included.
fn router(app: Shared) -> Router {
    let p = |path: &str| format!("{PREFIX}{path}");
    Router::new()
        .route(&p("/login"), get(auth::login_page).post(auth::login))
        .route(&p("/logout"), post(auth::logout))
        .route(&p("/assets/app.css"), get(stylesheet))
        .route(&p("/assets/app.js"), get(script))
        .route(&p("/"), get(pages::overview))
        .route(PREFIX, get(to_overview))
        .route("/", get(to_overview))
        .route(&p("/jobs"), get(pages::jobs))
        .route(&p("/jobs/{id}"), get(pages::job))
        .route(&p("/jobs/{id}/cancel"), post(pages::cancel))
        .route(&p("/jobs/{id}/retry"), post(pages::retry))
        .route(&p("/plugins"), get(pages::plugins))
        .route(&p("/logs"), get(pages::logs))
        .route(&p("/run"), get(pages::run_form).post(pages::run))
        .route(&p("/events"), get(events::events))
        .route(&p("/api/stats"), get(api::stats))
        .route(&p("/api/jobs"), get(api::jobs).post(api::run))
        .route(&p("/api/jobs/{id}"), get(api::job))
        .route(&p("/api/jobs/{id}/cancel"), post(api::cancel))
        .route(&p("/api/jobs/{id}/retry"), post(api::retry))
        .route(&p("/api/plugins"), get(api::plugins))
        .route(&p("/api/logs"), get(api::logs))
        .route(&p("/api/dispatchers"), get(api::dispatchers))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth::guard))
        .layer(middleware::from_fn_with_state(app.clone(), limit_body))
        .layer(DefaultBodyLimit::max(app.body_limit))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(close_if_body_unread))
        .with_state(app)
}

/// Whether `path` is a route of the JSON API, whose every answer is JSON.
pub(crate) fn is_api(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with("/api/"))
}

/// The answer to a request that is refused before any route sees it: JSON on the API, a page
/// (with the session's CSRF token `csrf`, if known) elsewhere.
pub(crate) fn refusal(
    path: &str,
    csrf: &str,
    status: StatusCode,
    id: &str,
    message: &str,
) -> Response {
    if is_api(path) {
        api::error(status, message)
    } else {
        pages::error_page(csrf, status, id, message)
    }
}

/// Answers 413 to a request whose declared body is over the limit, before anything reads it
/// (a body of unknown length is cut at the limit by [`DefaultBodyLimit`] where it is read).
async fn limit_body(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.body_limit as u64) {
        let too_large = data::Failure::too_large(app.body_limit);
        return refusal(
            request.uri().path(),
            "",
            too_large.status(),
            "too-large",
            too_large.message(),
        );
    }
    next.run(request).await
}

/// The headers every response carries: no framing, no foreign scripts or styles, no `<base>`,
/// forms posting only here, no MIME sniffing, nothing cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Says `Connection: close` on the answer to a request whose body was not read to its end (a
/// refusal before the body, a route that takes none). The server cannot reuse such a connection
/// and drops it; without the header a client that keeps connections alive would send its next
/// request on the dropped one and see it fail.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let read = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = axum::body::Body::new(Watched {
        inner: body,
        read: Arc::clone(&read),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn to_overview() -> Response {
    redirect(&format!("{PREFIX}/"))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn not_found(auth: Option<axum::Extension<auth::Auth>>, request: Request) -> Response {
    let path = request.uri().path();
    let csrf = auth.map(|a| a.0.csrf().to_owned()).unwrap_or_default();
    let message = if is_api(path) {
        "no such route"
    } else {
        "No such page."
    };
    refusal(path, &csrf, StatusCode::NOT_FOUND, "not-found", message)
}

/// A `303 See Other` to `location`.
pub(crate) fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Runs `work` on tokio's blocking pool (SQLite, the gate, the plugin inventory and log files
/// block), with the shared state.
pub(crate) async fn blocking<T: Send + 'static>(
    app: &Shared,
    work: impl FnOnce(&App) -> T + Send + 'static,
) -> Result<T, data::Failure> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || work(&app))
        .await
        .map_err(|e| data::Failure::Internal(format!("the request failed: {e}")))
}

/// Runs the read `work` on tokio's blocking pool, as [`blocking`] does, shared with the
/// requests for the same `key` that arrive while an earlier read of it is under way
/// ([`reads`]): every open tab re-fetching its page after the same change costs one read of
/// the store, not one each.
pub(crate) async fn shared_read<T: Send + Sync + 'static>(
    app: &Shared,
    key: String,
    work: impl FnOnce(&App) -> T + Send + 'static,
) -> Result<Arc<T>, data::Failure> {
    blocking(app, move |app| app.reads.get(&key, || work(app))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_url_reaches_an_unspecified_address_through_loopback() {
        let at = |s: &str| login_url(s.parse().unwrap());
        assert_eq!(
            at("127.0.0.1:8000"),
            "http://127.0.0.1:8000/admin/background-jobs/login"
        );
        assert_eq!(
            at("0.0.0.0:9000"),
            "http://127.0.0.1:9000/admin/background-jobs/login"
        );
        assert_eq!(at("[::]:80"), "http://[::1]:80/admin/background-jobs/login");
    }

    #[test]
    fn the_dashboard_file_is_json_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DASHBOARD_FILE);
        write_dashboard_file(&path, "http://x/login", Some("abc")).unwrap();
        write_dashboard_file(&path, "http://y/login", None).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"url": "http://y/login", "token": null})
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
