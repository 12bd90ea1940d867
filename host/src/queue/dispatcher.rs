//! The dispatcher (`jobhost serve`): the one loop that owns job state.
//!
//! It claims due jobs from the store — never more than it has free slots — and hands each to
//! a slot thread, which runs the attempt in a worker process and reports back over a channel.
//! Everything that happens reaches the loop as an event: the doorbell rang (a job was
//! enqueued, cancelled or retried by some other process), an attempt's worker was spawned or
//! ended, a signal arrived. The loop sleeps until the next event or the next scheduled
//! `run_at`, never on a polling interval (a slow safety wake-up aside). State transitions are
//! decided by [`crate::queue::lifecycle`] and applied by [`Store::settle`].
//!
//! One dispatcher serves a state directory at a time (a lock file); a second one exits at once,
//! unless the one holding it was started on demand and the second was not: then the first
//! hands over (it stops gracefully) and the second serves.
//! On start it first settles the attempts a crashed predecessor left running
//! ([`crate::runner::supervisor::adopt_attempt`]); see `docs/job_state_machine.md`.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

use crate::{
    catalog::inventory::{self, CatalogPaths, FileStamp, Inventory},
    config::settings::Settings,
    job::outcome::Outcome,
    joblog,
    platform::{CancelToken, Doorbell, FileLock},
    queue::health::{self, Health, HealthFile},
    queue::lifecycle::{self, Ending, Transition},
    queue::{
        doorbell::{notify_waiters, RING_STOP, RING_WAKE},
        StatePaths,
    },
    runner::protocol::{read_report, WorkerReport},
    runner::supervisor::{
        adopt_attempt, run_attempt, AttemptError, AttemptPaths, AttemptRecord, AttemptSpec, Orphan,
    },
    store::{
        now_millis, Amended, AttemptEnd, AttemptStart, DispatcherId, DispatcherInfo,
        DispatcherRecord, JobId, JobRecord, Listener, Maintenance, Millis, Next, Store, StoreError,
    },
};

/// How long the loop sleeps at most, even with nothing scheduled: a safety net, not the
/// mechanism (every change rings the doorbell).
const SAFETY_WAKE: Duration = Duration::from_secs(5);

/// The registrations the heartbeat thread keeps alive: this dispatcher's own, and those of
/// its predecessors on this host and state directory until their attempts are settled.
#[derive(Debug, Clone)]
struct Heartbeats {
    owner: DispatcherId,
    predecessors: Vec<DispatcherId>,
}

/// How often the dispatcher looks for reports of its host's attempts that were settled lost.
const AMEND_EVERY: Duration = Duration::from_secs(60);

/// How often at most the loop looks for dispatchers whose lease ran out.
const RESCUE_TICK: Duration = Duration::from_secs(1);
/// How long the store's listener waits after failing to connect again before it tries again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Why the dispatcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Another dispatcher holds the state directory.
    #[error("another dispatcher (pid {pid}) already serves {state_dir}")]
    AlreadyRunning {
        /// Its pid, as it wrote it.
        pid: String,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Setting up failed.
    #[error("cannot start the dispatcher: {what}")]
    Setup {
        /// What could not be set up.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Called after the dispatcher changed jobs (claimed, settled, stopped a cancelled attempt) or
/// heard that another process changed the queue: how the dashboard knows to refresh.
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// Starts something that runs beside the dispatcher for as long as it serves the state
/// directory (the dashboard): called once the dispatcher holds the lock; what it returns is
/// dropped, stopping it, before the dispatcher lets the lock go.
pub type Companion = Arc<dyn Fn() -> Option<Box<dyn std::any::Any>> + Send + Sync>;

/// How the dispatcher should run.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Exit after this long with nothing queued, scheduled or running.
    pub idle_exit: Option<Duration>,
    /// Told about every change.
    pub on_change: Option<OnChange>,
    /// Runs beside the dispatcher.
    pub companion: Option<Companion>,
    /// Started on demand (by an enqueuer, `serve --detached`): it hands the state directory
    /// over to a `jobhost serve` that is not, stopping gracefully when that one asks.
    pub on_demand: bool,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("idle_exit", &self.idle_exit)
            .field("on_change", &self.on_change.is_some())
            .field("companion", &self.companion.is_some())
            .field("on_demand", &self.on_demand)
            .finish()
    }
}

/// What the loop reacts to.
enum Event {
    Rang(u8),
    /// A worker exists and waits for `go`: true once its pid is recorded, false if the
    /// attempt must not start after all.
    Spawned {
        id: JobId,
        attempt: u32,
        start: AttemptStart,
        go: Sender<bool>,
    },
    Finished {
        id: JobId,
        attempt: u32,
        result: Result<AttemptRecord, AttemptError>,
        /// Whether its worker was let start (an attempt that could not run may have failed
        /// before or after).
        released: bool,
    },
    Signal,
    /// The watcher brought the plugin catalog up to date after a change.
    PluginsChanged,
    /// A heartbeat went out: time to look for dispatchers to rescue.
    Tick,
    /// Registration `DispatcherId` is gone: other dispatchers rescued this one's jobs.
    Evicted(DispatcherId),
}

/// Work for a slot thread.
enum Order {
    Run {
        job: JobRecord,
        cancel: Arc<CancelToken>,
    },
}

struct Running {
    job: JobRecord,
    /// The hash of the plugin version it runs.
    plugin_hash: String,
    cancel: Arc<CancelToken>,
    /// Stopped because the dispatcher is shutting down, not by a user's cancel.
    interrupted: bool,
}

/// Runs the dispatcher until it is told to stop (a signal, `jobhost stop`) or, with
/// `idle_exit`, until it has had nothing to do for that long.
pub fn serve(settings: &Settings, options: ServeOptions) -> Result<(), DispatcherError> {
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| DispatcherError::Setup { what, source }
    };
    let paths = StatePaths::new(&settings.state_dir);
    crate::shared::files::create_private_dir(&settings.state_dir)
        .map_err(setup("create the state directory"))?;
    if let Some(mode) = crate::shared::files::loose_permissions(&settings.state_dir) {
        let dir = settings.state_dir.display();
        tracing::warn!(
            "the state directory {dir} is open to other users (mode {mode:o}); it holds every \
             job's params and output, and the dashboard's login: make it owner-only with \
             chmod 700 {dir}"
        );
    }
    let lock = take_over(settings, &paths, options.on_demand)?;
    let mut store = crate::store::open(&settings.store)?;
    let info = DispatcherInfo::this_process(settings.dispatcher.slots, &settings.state_dir);
    let owner = store.register_dispatcher(&info, now_millis())?;
    // Earlier dispatchers of this host and state directory: the lock says they are gone.
    let predecessors: Vec<DispatcherId> = store
        .dispatchers()?
        .into_iter()
        .filter(|d| d.id != owner && d.host == info.host && d.state_dir == info.state_dir)
        .map(|d| d.id)
        .collect();
    let (tx, rx) = crossbeam_channel::unbounded();
    let doorbell = listen(&paths.doorbell, &tx).map_err(setup("bind the doorbell"))?;
    // Their leases start again now, and are kept by this dispatcher's heartbeat while it
    // settles their attempts: nobody else rescues what it adopts.
    for &id in &predecessors {
        store.heartbeat(id, now_millis())?;
    }
    let heartbeats = Arc::new(Mutex::new(Heartbeats {
        owner,
        predecessors: predecessors.clone(),
    }));
    if let Some(maintenance) = crate::store::maintenance(&settings.store)? {
        start_maintenance(maintenance)?;
    }
    let listener = crate::store::listener(&settings.store)
        .map_err(|e| setup("start the job database's listener")(std::io::Error::other(e)))?;
    if let Some(listener) = listener {
        forward_changes(listener, &tx).map_err(setup("start the job database's listener"))?;
    }
    start_heartbeat(settings, &heartbeats, &tx)?;
    let _retention = crate::queue::retention::start(settings, crate::store::open(&settings.store)?)
        .map_err(setup("start the retention thread"))?;
    watch_signals(&tx).map_err(setup("install signal handlers"))?;
    let mut dispatcher = Dispatcher {
        settings: settings.clone(),
        paths,
        store,
        info,
        owner,
        heartbeats,
        predecessors,
        checked_own: Instant::now(),
        amended: Instant::now(),
        running: HashMap::new(),
        orders: start_slots(settings, &tx),
        events: rx,
        tx,
        plugins: Plugins::new(settings),
        doorbell,
        stopping: None,
        on_change: options.on_change.clone(),
        trouble: Trouble::default(),
        unrecorded: Vec::new(),
        health: open_health(&paths_health(settings)),
        reported: Vec::new(),
        unsettled: Vec::new(),
    };
    joblog::dispatcher(
        "Dispatcher started",
        settings.dispatcher.slots,
        &settings.state_dir,
    );
    watch_plugins(settings, &dispatcher.tx);
    let companion = options.companion.as_ref().and_then(|start| start());
    let result = dispatcher.run(&options);
    drop(companion);
    joblog::dispatcher(
        "Dispatcher stopped",
        settings.dispatcher.slots,
        &settings.state_dir,
    );
    let _ = dispatcher.doorbell.unlink();
    if dispatcher.health.take().is_some() {
        let _ = std::fs::remove_file(paths_health(settings));
    }
    let owner = dispatcher.owner;
    if let Err(e) = dispatcher.store.deregister(owner) {
        tracing::warn!("cannot deregister the dispatcher: {e}");
    }
    drop(lock);
    result
}

/// The dispatcher's health file in the state directory of `settings`.
fn paths_health(settings: &Settings) -> PathBuf {
    StatePaths::new(&settings.state_dir).health
}

/// Creates the health file with an empty report; without one the dispatcher still runs.
fn open_health(path: &Path) -> Option<HealthFile> {
    let created = HealthFile::create(path).and_then(|mut file| {
        file.write(&Health {
            pid: std::process::id(),
            updated_at: now_millis(),
            problems: Vec::new(),
        })?;
        Ok(file)
    });
    created
        .map_err(|e| tracing::warn!("cannot create the dispatcher's health file: {e}"))
        .ok()
}

/// What a dispatcher started on demand writes under its pid in the lock file.
const ON_DEMAND: &str = "on-demand";
/// What any other dispatcher writes there.
const SUPERVISED: &str = "supervised";

/// Takes the state directory's dispatcher lock. A dispatcher that is not `on_demand` (a
/// `jobhost serve` of an administrator or a supervisor) that finds one started on demand
/// holding it asks that one to stop (gracefully: its running attempts get
/// `dispatcher.shutdown_grace` to finish, then go back to the queue) and takes the lock once
/// it is gone; otherwise a held lock is [`DispatcherError::AlreadyRunning`].
fn take_over(
    settings: &Settings,
    paths: &StatePaths,
    on_demand: bool,
) -> Result<FileLock, DispatcherError> {
    let note = if on_demand { ON_DEMAND } else { SUPERVISED };
    // Its attempts' grace, their stopping, and its exit.
    let deadline = Instant::now()
        + settings.dispatcher.shutdown_grace
        + settings.limits.kill_grace
        + Duration::from_secs(30);
    let mut asked = None;
    loop {
        let taken = FileLock::try_acquire_noted(&paths.lock, note).map_err(|source| {
            DispatcherError::Setup {
                what: "take the dispatcher lock".into(),
                source,
            }
        })?;
        if let Some(lock) = taken {
            return Ok(lock);
        }
        let holder = FileLock::holder(&paths.lock);
        let held_on_demand = FileLock::holder_note(&paths.lock).as_deref() == Some(ON_DEMAND);
        if on_demand || !held_on_demand || Instant::now() >= deadline {
            return Err(DispatcherError::AlreadyRunning {
                pid: holder.map_or_else(|| "unknown".into(), |p| p.to_string()),
                state_dir: settings.state_dir.clone(),
            });
        }
        if asked != Some(holder) {
            tracing::info!(
                "Dispatcher taking over {} from the dispatcher started on demand (pid {}); it stops first",
                settings.state_dir.display(),
                holder.map_or_else(|| "unknown".into(), |p| p.to_string())
            );
            // Not answering: it is on its way out already.
            let _ = crate::platform::ring(&paths.doorbell, RING_STOP);
            asked = Some(holder);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Binds the doorbell and forwards its rings to the loop from a listener thread.
fn listen(path: &Path, tx: &Sender<Event>) -> std::io::Result<Doorbell> {
    let doorbell = Doorbell::bind(path)?;
    let listener = doorbell.try_clone()?;
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("doorbell".into())
        .spawn(move || {
            while let Ok(byte) = listener.wait() {
                if tx.send(Event::Rang(byte)).is_err() {
                    return;
                }
            }
        })?;
    Ok(doorbell)
}

/// Starts watching the plugin directory, then brings the plugin catalog up to date (in that
/// order, so that no change falls between the two): at most `limits.inspect_timeout` when a
/// file is slow to load. Neither failing stops the dispatcher: the versions in force keep
/// serving, and enqueuers bring the catalog up to date themselves.
fn watch_plugins(settings: &Settings, tx: &Sender<Event>) {
    let events = tx.clone();
    let watched = crate::catalog::watch::start(settings, move |_| {
        events.send(Event::PluginsChanged).is_ok()
    });
    if let Err(e) = watched {
        tracing::warn!(
            "the plugin directory is not watched ({e}); changes are taken in at the next enqueue"
        );
    }
    match Inventory::refresh(settings) {
        Ok(_) => {
            let _ = tx.send(Event::PluginsChanged);
        }
        Err(e) => tracing::warn!("plugin catalog not updated: {:#}", anyhow::Error::from(e)),
    }
}

/// Forwards the store's word that processes on other hosts changed the queue (enqueue,
/// cancel, retry) to the loop, as the doorbell does for this host's processes.
fn forward_changes(mut listener: Box<dyn Listener>, tx: &Sender<Event>) -> std::io::Result<()> {
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("store-listen".into())
        .spawn(move || loop {
            match listener.wait_for_change(SAFETY_WAKE) {
                Ok(false) => {}
                Ok(true) => {
                    if tx.send(Event::Rang(RING_WAKE)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("job database listener: {e}; reconnecting");
                    std::thread::sleep(RECONNECT_PAUSE);
                }
            }
        })?;
    Ok(())
}

/// Heartbeats from a thread of its own with its own connection, every fifth of the lease, and
/// ticks the loop at least every second (more often with a short lease), which then rescues
/// the jobs of dispatchers whose lease ran out: so a dead dispatcher's jobs are rescued within
/// the lease and a second of its last heartbeat. Tells the loop when its registration is gone.
fn start_heartbeat(
    settings: &Settings,
    heartbeats: &Arc<Mutex<Heartbeats>>,
    tx: &Sender<Event>,
) -> Result<(), DispatcherError> {
    let mut store = crate::store::open(&settings.store)?;
    let every = settings.dispatcher.lease / 5;
    let tick = every.min(RESCUE_TICK);
    let (heartbeats, tx) = (Arc::clone(heartbeats), tx.clone());
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let mut beat = Instant::now();
            loop {
                std::thread::sleep(tick);
                let mut event = Event::Tick;
                if beat.elapsed() + tick / 2 >= every {
                    beat = Instant::now();
                    let Heartbeats {
                        owner,
                        predecessors,
                    } = heartbeats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let now = now_millis();
                    match store.heartbeat(owner, now) {
                        Ok(true) => {}
                        Ok(false) => event = Event::Evicted(owner),
                        // The next heartbeat reconnects.
                        Err(e) => tracing::warn!("heartbeat failed: {e}"),
                    }
                    for id in predecessors {
                        // Gone already is fine: the loop deregistered it.
                        let _ = store.heartbeat(id, now);
                    }
                }
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| DispatcherError::Setup {
            what: "start the heartbeat thread".into(),
            source,
        })?;
    Ok(())
}

fn watch_signals(tx: &Sender<Event>) -> std::io::Result<()> {
    let tx = tx.clone();
    crate::platform::on_signals(move |request| match request {
        crate::platform::SignalRequest::Stop => {
            let _ = tx.send(Event::Signal);
        }
        crate::platform::SignalRequest::ReopenLogs => crate::joblog::reopen(),
    })
}

/// Runs the store's housekeeping ([`Maintenance`]) from a thread of its own, on its timer:
/// nothing waits for it.
fn start_maintenance(mut maintenance: Box<dyn Maintenance>) -> Result<(), DispatcherError> {
    std::thread::Builder::new()
        .name("store-maintain".into())
        .spawn(move || loop {
            std::thread::sleep(maintenance.interval());
            if let Err(e) = maintenance.maintain() {
                tracing::warn!("maintenance of the job database failed: {e}");
            }
        })
        .map_err(|source| DispatcherError::Setup {
            what: "start the job database's maintenance thread".into(),
            source,
        })?;
    Ok(())
}

/// Starts the slot threads: each runs one attempt at a time.
fn start_slots(settings: &Settings, tx: &Sender<Event>) -> Sender<Order> {
    let (orders, inbox) = crossbeam_channel::unbounded::<Order>();
    for slot in 0..settings.dispatcher.slots {
        let inbox: Receiver<Order> = inbox.clone();
        let tx = tx.clone();
        let settings = settings.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("slot-{slot}"))
            .spawn(move || {
                for Order::Run { job, cancel } in inbox {
                    let (id, attempt) = (job.id, job.attempts);
                    let mut released = false;
                    let result = run_order(&settings, &job, &cancel, &tx, &mut released);
                    if tx
                        .send(Event::Finished {
                            id,
                            attempt,
                            result,
                            released,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start slot thread {slot}: {e}");
        }
    }
    orders
}

fn run_order(
    settings: &Settings,
    job: &JobRecord,
    cancel: &CancelToken,
    tx: &Sender<Event>,
    released: &mut bool,
) -> Result<AttemptRecord, AttemptError> {
    let job_id = job.id.to_string();
    let allowlist = crate::catalog::inventory::allowlist_in_force(settings);
    let spec = AttemptSpec {
        job_id: &job_id,
        attempt: job.attempts,
        class: &job.class,
        method: &job.method,
        params: &job.params,
        plugin: &job.plugin,
        timeout: job.timeout,
        allowlist: &allowlist,
    };
    let output_path = AttemptPaths::new(&settings.state_dir, &job_id, job.attempts).output;
    run_attempt(settings, &spec, cancel, &mut |pid| {
        let start = AttemptStart {
            pid,
            plugin_hash: String::new(),
            output_path: output_path.clone(),
        };
        let (go, answer) = crossbeam_channel::bounded(1);
        let asked = tx.send(Event::Spawned {
            id: job.id,
            attempt: job.attempts,
            start,
            go,
        });
        // No answer (the loop is gone) means no start.
        *released = asked.is_ok() && answer.recv().unwrap_or(false);
        *released
    })
}

struct Dispatcher {
    settings: Settings,
    paths: StatePaths,
    store: Box<dyn Store>,
    /// What it registered as.
    info: DispatcherInfo,
    /// The id it registered under and claims under.
    owner: DispatcherId,
    /// The same, for the heartbeat thread.
    heartbeats: Arc<Mutex<Heartbeats>>,
    /// Earlier registrations of this host and state directory, deregistered once their
    /// attempts are settled.
    predecessors: Vec<DispatcherId>,
    /// When it last looked for running attempts of its own that it does not know of.
    checked_own: Instant,
    /// When it last looked for reports of attempts settled lost ([`Dispatcher::amend_lost`]).
    amended: Instant,
    running: HashMap<JobId, Running>,
    orders: Sender<Order>,
    events: Receiver<Event>,
    tx: Sender<Event>,
    plugins: Plugins,
    doorbell: Doorbell,
    /// When the running attempts must be stopped, once a stop was asked for.
    stopping: Option<Instant>,
    on_change: Option<OnChange>,
    /// Why the store or the workers cannot be used just now, if they cannot.
    trouble: Trouble,
    /// Spawned workers waiting at their gate until their pid is on record.
    unrecorded: Vec<Unrecorded>,
    /// Where it reports its health, and what it reported last.
    health: Option<HealthFile>,
    reported: Vec<health::Problem>,
    /// Ended attempts whose settling the store has not taken yet, oldest first.
    unsettled: Vec<Unsettled>,
}

/// A spawned worker whose pid the store has not recorded yet: it waits for its go-ahead.
struct Unrecorded {
    id: JobId,
    attempt: u32,
    start: AttemptStart,
    go: Sender<bool>,
}

/// An ended attempt to settle, with what to log once the store has taken it.
struct Unsettled {
    job: JobRecord,
    attempt: u32,
    end: AttemptEnd,
    next: Next,
    /// The attempt as the supervisor saw it, for its log line; none for an attempt nobody
    /// watched.
    record: Option<AttemptRecord>,
    plugin_hash: String,
}

/// What keeps the dispatcher from its work for a while: the store failing with an error that
/// passes (busy, disk full, lost connection), or workers that cannot be started. While in
/// trouble it claims nothing new, keeps supervising what runs, holds what it could not write,
/// and tries again with a backoff; every change is logged once.
#[derive(Default)]
struct Trouble {
    store: Option<Problem>,
    workers: Option<Problem>,
}

/// One ongoing problem.
struct Problem {
    since: Instant,
    /// The same, for the health report.
    since_at: Millis,
    error: String,
    /// When to try again.
    retry_at: Instant,
    /// The pause before the next try after this one fails.
    backoff: Duration,
}

/// The first pause after a failure, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Problem {
    fn new(error: String) -> Self {
        Self {
            since: Instant::now(),
            since_at: now_millis(),
            error,
            retry_at: Instant::now() + BACKOFF_FIRST,
            backoff: BACKOFF_FIRST * 2,
        }
    }

    /// The same problem again: wait longer before the next try.
    fn again(&mut self, error: String) {
        self.error = error;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

impl Trouble {
    /// Whether the dispatcher may claim now.
    fn may_claim(&self) -> bool {
        let now = Instant::now();
        [&self.store, &self.workers]
            .into_iter()
            .flatten()
            .all(|p| now >= p.retry_at)
    }

    /// When to look again, if anything waits for a retry.
    fn retry_at(&self) -> Option<Instant> {
        [&self.store, &self.workers]
            .into_iter()
            .flatten()
            .map(|p| p.retry_at)
            .min()
    }

    /// The problems as the health report lists them.
    fn problems(&self) -> Vec<health::Problem> {
        [
            (&self.store, "the job database cannot be used"),
            (&self.workers, "workers cannot be started"),
        ]
        .into_iter()
        .filter_map(|(slot, what)| {
            let p = slot.as_ref()?;
            Some(health::Problem::new(what, p.since_at, &p.error))
        })
        .collect()
    }

    /// Records that `what` failed with `error` (`what` names the problem in the log).
    fn failed(slot: &mut Option<Problem>, what: &str, error: String) {
        match slot {
            Some(problem) => problem.again(error),
            None => {
                tracing::error!(
                    "{what}: {error}; running attempts stay supervised, nothing new is claimed \
                     until it recovers (retrying with a backoff)"
                );
                *slot = Some(Problem::new(error));
            }
        }
    }

    /// Records that `what` works again.
    fn recovered(slot: &mut Option<Problem>, what: &str) {
        if let Some(problem) = slot.take() {
            tracing::warn!(
                "{what} recovered after {} (last error: {})",
                crate::shared::text::secs(problem.since.elapsed()),
                problem.error
            );
        }
    }
}

impl Dispatcher {
    fn run(&mut self, options: &ServeOptions) -> Result<(), DispatcherError> {
        let mut recovered = false;
        let mut check_cancels = true;
        let mut idle_since: Option<Instant> = None;
        loop {
            self.retry_deferred()?;
            if !recovered {
                // What a predecessor left running is settled before anything is claimed.
                recovered = self.recover()?;
                if recovered {
                    self.amend_lost()?;
                }
            }
            if self.stopping.is_none() && recovered {
                if check_cancels {
                    self.apply_cancels()?;
                }
                self.claim()?;
            }
            // Once stopping, what the store did not take by the deadline is settled from the
            // workers' reports by the next dispatcher.
            let settled_or_late =
                self.unsettled.is_empty() || self.stopping.is_some_and(|d| Instant::now() >= d);
            if self.stopping.is_some() && self.running.is_empty() && settled_or_late {
                return Ok(());
            }

            // How long to sleep: until the next scheduled job, the idle exit, or the stop
            // deadline, whichever is first. Idle is nothing waiting in the store and nothing
            // running here (other dispatchers' running jobs are theirs to finish).
            let now = Instant::now();
            let mut wake = now + SAFETY_WAKE;
            let next =
                if self.stopping.is_none() && self.running.len() < self.settings.dispatcher.slots {
                    self.read("look for waiting jobs", |s| s.next_run_at())?
                        .flatten()
                } else {
                    None
                };
            if let Some(at) = self.trouble.retry_at() {
                wake = wake.min(at);
            }
            if let Some(deadline) = self.stopping {
                wake = wake.min(deadline);
            } else if let Some(at) = next {
                let wait = u64::try_from(at - now_millis()).unwrap_or(0);
                wake = wake.min(now + Duration::from_millis(wait));
            }
            if let Some(idle_exit) = options.idle_exit {
                let idle = self.running.is_empty()
                    && self.unsettled.is_empty()
                    && self.trouble.retry_at().is_none();
                if idle && self.stopping.is_none() && next.is_none() {
                    let since = *idle_since.get_or_insert(now);
                    if now >= since + idle_exit {
                        if self.leave_if_still_idle()? {
                            return Ok(());
                        }
                        idle_since = None;
                        continue;
                    }
                    wake = wake.min(since + idle_exit);
                } else {
                    idle_since = None;
                }
            }

            check_cancels = false;
            let first = match self.events.recv_deadline(wake) {
                Ok(event) => Some(event),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // Handle everything that is waiting before touching the store again.
            let pending: Vec<Event> = first.into_iter().chain(self.events.try_iter()).collect();
            for event in pending {
                match event {
                    Event::Rang(RING_STOP) | Event::Signal => self.begin_stop(),
                    Event::Rang(_) => {
                        // Another process enqueued, cancelled or retried.
                        check_cancels = true;
                        self.changed();
                    }
                    Event::Spawned {
                        id,
                        attempt,
                        start,
                        go,
                    } => self.spawned(id, attempt, start, go)?,
                    Event::PluginsChanged => {
                        self.plugins.reload();
                        self.collect_snapshots()?;
                        self.changed();
                    }
                    Event::Tick => {
                        if self.rescue()? {
                            check_cancels = true;
                        }
                        if self.amended.elapsed() >= AMEND_EVERY {
                            // Workers rescued while they ran on may have ended since.
                            self.amended = Instant::now();
                            self.amend_lost()?;
                        }
                    }
                    Event::Evicted(id) => self.evicted(id)?,
                    Event::Finished {
                        id,
                        attempt,
                        result,
                        released,
                    } => self.finished(id, attempt, result, released)?,
                }
            }
            if self
                .stopping
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                self.interrupt_all();
            }
            self.report_health();
        }
    }

    /// Rewrites the health file when the list of problems changed.
    fn report_health(&mut self) {
        let mut problems = self.trouble.problems();
        let logs = joblog::health();
        if let Some(since) = logs.since {
            let error = format!(
                "{} ({} lines waiting to be written, {} dropped)",
                logs.last_error.unwrap_or_default(),
                logs.pending_lines,
                logs.dropped_lines
            );
            problems.push(health::Problem::new(
                "the log files cannot be written",
                since,
                &error,
            ));
        }
        if problems == self.reported {
            return;
        }
        let Some(file) = &mut self.health else {
            return;
        };
        let report = Health {
            pid: std::process::id(),
            updated_at: now_millis(),
            problems: problems.clone(),
        };
        if let Err(e) = file.write(&report) {
            tracing::warn!("cannot write the dispatcher's health file: {e}");
        }
        self.reported = problems;
    }

    /// Claims as many due jobs as there are free slots and starts them.
    fn claim(&mut self) -> Result<(), DispatcherError> {
        let free = self
            .settings
            .dispatcher
            .slots
            .saturating_sub(self.running.len());
        if free == 0 {
            return Ok(());
        }
        let owner = self.owner;
        if !self.trouble.may_claim() || !self.unsettled.is_empty() {
            return Ok(());
        }
        let Some(claimed) = self.store("claim jobs", |s| s.claim(owner, now_millis(), free))?
        else {
            return Ok(());
        };
        Trouble::recovered(&mut self.trouble.workers, "Starting workers");
        let quarantined = self.store.take_quarantined();
        for job in &quarantined {
            joblog::quarantined(job.id, &job.reason);
        }
        if !claimed.is_empty() || !quarantined.is_empty() {
            self.changed();
            self.plugins.reload();
        }
        for mut job in claimed {
            joblog::started(&job.name(), &job.params);
            let (plugin, plugin_hash) = self.plugins.version_for(&job);
            job.plugin = plugin;
            let cancel = CancelToken::new().map_err(|source| DispatcherError::Setup {
                what: "create a cancel token".into(),
                source,
            })?;
            let order = Order::Run {
                job: job.clone(),
                cancel: Arc::clone(&cancel),
            };
            self.running.insert(
                job.id,
                Running {
                    job,
                    plugin_hash,
                    cancel,
                    interrupted: false,
                },
            );
            // The slot threads live as long as the dispatcher; a send cannot fail.
            let _ = self.orders.send(order);
        }
        Ok(())
    }

    /// Fires the cancel tokens of running jobs whose cancellation was requested.
    fn apply_cancels(&mut self) -> Result<(), DispatcherError> {
        if self.running.is_empty() {
            return Ok(());
        }
        let mut fired = false;
        let Some(requests) = self.read("read cancel requests", |s| s.cancel_requests())? else {
            return Ok(());
        };
        for id in requests {
            if let Some(running) = self.running.get(&id) {
                running.cancel.cancel();
                fired = true;
            }
        }
        if fired {
            self.changed();
        }
        Ok(())
    }

    /// Records a spawned worker, then lets it start: an attempt counts only once its worker
    /// is on record, so one whose dispatcher died before this point is known never to have
    /// run ([`Outcome::NotStarted`]). While the store is in trouble the worker waits at its
    /// gate, and is recorded and let go once the store answers.
    fn spawned(
        &mut self,
        id: JobId,
        attempt: u32,
        mut start: AttemptStart,
        go: Sender<bool>,
    ) -> Result<(), DispatcherError> {
        if let Some(running) = self.running.get(&id) {
            start.plugin_hash.clone_from(&running.plugin_hash);
        }
        let waiting = Unrecorded {
            id,
            attempt,
            start,
            go,
        };
        if !self.unrecorded.is_empty() {
            self.unrecorded.push(waiting);
            return Ok(());
        }
        match self.store("record a worker", |s| {
            s.attempt_started(id, attempt, &waiting.start)
        }) {
            Ok(Some(())) => {
                let _ = waiting.go.send(true);
                Ok(())
            }
            Ok(None) => {
                self.unrecorded.push(waiting);
                Ok(())
            }
            Err(e) => {
                let _ = waiting.go.send(false);
                Err(e)
            }
        }
    }

    /// An attempt ended: decides what follows ([`lifecycle`]) and settles it, or holds the
    /// settling until the store takes it.
    fn finished(
        &mut self,
        id: JobId,
        attempt: u32,
        result: Result<AttemptRecord, AttemptError>,
        released: bool,
    ) -> Result<(), DispatcherError> {
        let Some(running) = self.running.remove(&id) else {
            return Ok(());
        };
        let job = running.job;
        let record = match result {
            Ok(record) => record,
            Err(error) => {
                if !released {
                    // A dispatcher's problem, not the job's: it goes back to the queue, and
                    // claims pause until workers can be started again.
                    Trouble::failed(
                        &mut self.trouble.workers,
                        "Workers cannot be started",
                        format!("{error:#}"),
                    );
                }
                tracing::error!("attempt {attempt} of job {id} could not run: {error:#}");
                AttemptRecord {
                    attempt,
                    pid: 0,
                    duration: Duration::ZERO,
                    outcome: error.outcome(released),
                    output: crate::runner::supervisor::capture::CapturedOutput {
                        path: AttemptPaths::new(&self.settings.state_dir, &id.to_string(), attempt)
                            .output,
                        total_bytes: 0,
                        dropped_bytes: 0,
                    },
                }
            }
        };
        let mut cancel_requested = job.cancel_requested;
        if !matches!(record.outcome, Outcome::Ok(_)) {
            // Whether a cancel arrived while it ran decides between "cancelled" and a retry;
            // without an answer from the store, what this dispatcher knew decides.
            let requests = self.read("read cancel requests", |s| s.cancel_requests())?;
            cancel_requested |= requests.is_some_and(|ids| ids.contains(&id));
        }
        let now = now_millis();
        let ending = if running.interrupted {
            Ending::Interrupted(&record.outcome)
        } else {
            Ending::Ended(&record.outcome)
        };
        let Transition {
            outcome,
            error,
            next,
        } = lifecycle::decide(&job, ending, cancel_requested, now);
        let end = AttemptEnd {
            finished_at: now,
            outcome,
            error,
            output_bytes: record.output.total_bytes,
        };
        self.unsettled.push(Unsettled {
            job,
            attempt,
            end,
            next,
            record: Some(record),
            plugin_hash: running.plugin_hash,
        });
        self.retry_deferred()
    }

    /// Removes the plugin snapshots nothing needs any more: not active, not the version of a
    /// waiting job, not run by an attempt of ours.
    fn collect_snapshots(&mut self) -> Result<(), DispatcherError> {
        if self.plugins.inventory.is_none() {
            return Ok(());
        }
        let Some(unfinished) = self.read("list the plugin versions in use", |s| {
            s.unfinished_plugins()
        })?
        else {
            return Ok(());
        };
        let mut in_use: BTreeSet<String> = unfinished
            .iter()
            .filter_map(|p| inventory::snapshot_hash(p).map(str::to_owned))
            .collect();
        in_use.extend(self.running.values().map(|r| r.plugin_hash.clone()));
        inventory::collect_snapshots(&self.settings, &in_use);
        Ok(())
    }

    fn heartbeats(&self) -> std::sync::MutexGuard<'_, Heartbeats> {
        self.heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on the store (`what` says what for, in the log). An error that passes
    /// (busy, disk full, a lost connection: [`StoreError::is_transient`]) puts the dispatcher
    /// in trouble and gives `Ok(None)`: the caller defers or skips its work, and nothing new is
    /// claimed until the store answers again. A refused call is logged and gives `None` too.
    /// Only a fatal error (a corrupt database, a newer schema) ends the dispatcher. A lost
    /// connection is tried once more at once, since the store reconnects on its next call.
    fn store<T>(
        &mut self,
        what: &str,
        call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        self.call_store(what, true, call)
    }

    /// Like [`Dispatcher::store`] for a call that only reads: its success says nothing about
    /// whether writes work again (a store may let readers go on while another process holds
    /// its write lock), so it leaves the trouble as it is.
    fn read<T>(
        &mut self,
        what: &str,
        call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        self.call_store(what, false, call)
    }

    fn call_store<T>(
        &mut self,
        what: &str,
        writes: bool,
        mut call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        let result = match call(&mut *self.store) {
            // Repeating is harmless for every call the dispatcher makes (a settle or a start
            // already stored is refused as such; a claim it did not learn of is requeued).
            Err(StoreError::ConnectionLost { .. } | StoreError::CommitUnknown { .. }) => {
                call(&mut *self.store)
            }
            other => other,
        };
        match result {
            Ok(value) => {
                if writes {
                    Trouble::recovered(&mut self.trouble.store, "The job database");
                }
                Ok(Some(value))
            }
            Err(e) if e.is_fatal() => Err(e.into()),
            Err(e) if e.is_transient() => {
                Trouble::failed(
                    &mut self.trouble.store,
                    "The job database cannot be used",
                    format!("cannot {what}: {e}"),
                );
                Ok(None)
            }
            Err(e) => {
                tracing::error!("The job database refused to {what}: {e}");
                Ok(None)
            }
        }
    }

    /// Retries what the store did not take while it was in trouble, once its retry is due:
    /// first the pids of workers waiting at their gate, then the attempts to settle, in order.
    fn retry_deferred(&mut self) -> Result<(), DispatcherError> {
        let due = self
            .trouble
            .store
            .as_ref()
            .is_none_or(|p| Instant::now() >= p.retry_at);
        if !due {
            return Ok(());
        }
        while let Some(waiting) = self.unrecorded.first() {
            let (id, attempt, start) = (waiting.id, waiting.attempt, waiting.start.clone());
            if self
                .store("record a worker", |s| {
                    s.attempt_started(id, attempt, &start)
                })?
                .is_none()
            {
                return Ok(());
            }
            let _ = self.unrecorded.remove(0).go.send(true);
        }
        while let Some(first) = self.unsettled.first() {
            let (id, attempt, end, next) = (first.job.id, first.attempt, &first.end, &first.next);
            let (end, next) = (end.clone(), next.clone());
            let Some(settled) =
                self.store("settle an attempt", |s| s.settle(id, attempt, &end, &next))?
            else {
                return Ok(());
            };
            let done = self.unsettled.remove(0);
            if settled {
                self.settled(done)?;
            }
        }
        Ok(())
    }

    /// What follows an attempt the store has settled: its log lines, the followers' wake-up,
    /// the dashboard's refresh, and the snapshots it may have been the last to need.
    fn settled(&mut self, done: Unsettled) -> Result<(), DispatcherError> {
        let Unsettled {
            job,
            attempt,
            end,
            next,
            record,
            plugin_hash,
        } = done;
        self.changed();
        if let Some(record) = &record {
            let attempt = joblog::FinishedAttempt {
                attempt: record.attempt,
                pid: record.pid,
                duration: record.duration,
                outcome: &record.outcome.label(),
                output: &record.output.path,
            };
            joblog::attempt_finished(&job.name(), job.id, &attempt);
        }
        let error = end.error.unwrap_or_default();
        log_next(&job, attempt, &next, &error, end.finished_at);
        notify_waiters(&self.paths.waiters, job.id);
        if record.is_some() && !self.plugins.is_active(&plugin_hash) {
            // It may have been the last job needing that version.
            self.collect_snapshots()?;
        }
        Ok(())
    }

    /// Rescues the jobs of dispatchers whose lease ran out: each of their running attempts is
    /// settled as `lost` and the job retried per its policy, then the dispatcher is
    /// deregistered. Also settles this dispatcher's own attempts that it does not know of (a
    /// claim whose answer the connection lost) and deregisters its predecessors once their
    /// attempts are settled. Returns whether it changed any job.
    fn rescue(&mut self) -> Result<bool, DispatcherError> {
        let now = now_millis();
        let cutoff = now - self.settings.dispatcher.lease.as_millis() as i64;
        let expired: Vec<DispatcherRecord> = self
            .read("look for expired dispatchers", |s| {
                s.expired_dispatchers(cutoff)
            })?
            .unwrap_or_default()
            .into_iter()
            // Never itself: its own heartbeat may just be late on a loaded machine.
            .filter(|d| d.id != self.owner)
            .collect();
        // Its own unknown attempts are looked for once a heartbeat period; others' only when
        // some dispatcher's lease ran out.
        let own_check = self.checked_own.elapsed() >= self.settings.dispatcher.lease / 5;
        if expired.is_empty() && !own_check && self.predecessors.is_empty() {
            return Ok(false);
        }
        if own_check {
            self.checked_own = Instant::now();
        }
        let Some(running) = self.read("list running jobs", |s| s.running())? else {
            return Ok(false);
        };
        let mut changed = false;
        for (job, attempt) in running {
            // Its own, ended or not, whose settling it may still hold.
            let known = self.running.contains_key(&job.id)
                || self.unsettled.iter().any(|u| u.job.id == job.id);
            if known {
                continue;
            }
            let Some(owner) = attempt.dispatcher else {
                continue;
            };
            let ending = if owner == self.owner {
                // Claimed, but the answer was lost with the connection.
                Ending::ClaimNotLearned
            } else if let Some(dead) = expired.iter().find(|d| d.id == owner) {
                Ending::OwnerExpired {
                    owner: dead,
                    worker_recorded: attempt.pid.is_some(),
                }
            } else {
                continue;
            };
            let transition = lifecycle::decide(&job, ending, job.cancel_requested, now);
            changed |= self.settle_unwatched(&job, attempt.attempt, transition, now)?;
        }
        for dead in expired {
            if self.store("deregister a dispatcher", |s| s.deregister(dead.id))? == Some(true) {
                tracing::warn!(
                    "Dispatcher {} (pid {} on {}, state {}) stopped heartbeating; its jobs were rescued",
                    dead.id,
                    dead.pid,
                    dead.host,
                    dead.state_dir
                );
            }
        }
        let mut predecessors = std::mem::take(&mut self.predecessors);
        let mut gone = Vec::new();
        for &id in &predecessors {
            if self.store("deregister a predecessor", |s| s.deregister(id))? == Some(true) {
                gone.push(id);
            }
        }
        predecessors.retain(|id| !gone.contains(id));
        self.heartbeats().predecessors.clone_from(&predecessors);
        self.predecessors = predecessors;
        if changed {
            self.changed();
        }
        Ok(changed)
    }

    /// Settles attempt `number` of `job`, which no dispatcher is watching, as [`lifecycle`]
    /// decided (lost, or not started). Returns false if somebody settled it first.
    fn settle_unwatched(
        &mut self,
        job: &JobRecord,
        number: u32,
        transition: Transition,
        now: Millis,
    ) -> Result<bool, DispatcherError> {
        let Transition {
            outcome,
            error,
            next,
        } = transition;
        let reason = error.unwrap_or_default();
        let end = AttemptEnd {
            finished_at: now,
            outcome,
            error: Some(reason.clone()),
            output_bytes: 0,
        };
        let id = job.id;
        let settled = self.store("settle an attempt", |s| s.settle(id, number, &end, &next))?;
        if settled != Some(true) {
            // Settled by somebody else, or to be tried again at the next look.
            return Ok(false);
        }
        log_next(job, number, &next, &reason, now);
        notify_waiters(&self.paths.waiters, id);
        Ok(true)
    }

    /// This dispatcher's registration is gone: the others took it for dead and rescued its
    /// jobs, which may already run elsewhere. Its attempts are stopped (their results would
    /// not be recorded) and it registers again.
    fn evicted(&mut self, id: DispatcherId) -> Result<(), DispatcherError> {
        if id != self.owner {
            return Ok(());
        }
        tracing::error!(
            "Dispatcher {id} was taken for dead by the others (no heartbeat for {}); stopping its {} attempts and registering again",
            crate::shared::text::secs(self.settings.dispatcher.lease),
            self.running.len()
        );
        self.interrupt_all();
        let info = self.info.clone();
        let Some(owner) = self.store("register again", |s| {
            s.register_dispatcher(&info, now_millis())
        })?
        else {
            // The heartbeat says so again at its next beat, and this is tried again.
            return Ok(());
        };
        self.owner = owner;
        self.heartbeats().owner = self.owner;
        Ok(())
    }

    fn changed(&self) {
        if let Some(on_change) = &self.on_change {
            on_change();
        }
    }

    fn begin_stop(&mut self) {
        match self.stopping {
            // A second request: stop the attempts now.
            Some(_) => self.interrupt_all(),
            None => {
                self.stopping = Some(Instant::now() + self.settings.dispatcher.shutdown_grace);
                tracing::info!(
                    "Dispatcher stopping: no new attempts; {} running",
                    self.running.len()
                );
            }
        }
    }

    fn interrupt_all(&mut self) {
        // Workers still waiting for their pid to be recorded are let go without starting.
        for waiting in self.unrecorded.drain(..) {
            let _ = waiting.go.send(false);
        }
        for running in self.running.values_mut() {
            if !running.interrupted {
                running.interrupted = true;
                running.cancel.cancel();
            }
        }
    }

    /// Settles what a crashed predecessor left running: each orphan is adopted on its own
    /// thread (it may outnumber the slots) and reports back like any attempt. False, with
    /// nothing done, while the store cannot list them.
    fn recover(&mut self) -> Result<bool, DispatcherError> {
        let predecessors = self.predecessors.clone();
        let Some(running) = self.read("list running jobs", |s| s.running())? else {
            return Ok(false);
        };
        let orphans = running.into_iter().filter(|(_, a)| {
            // Without a dispatcher id: recorded before dispatchers registered.
            a.dispatcher.is_none_or(|d| predecessors.contains(&d))
        });
        for (job, attempt) in orphans {
            let cancel = CancelToken::new().map_err(|source| DispatcherError::Setup {
                what: "create a cancel token".into(),
                source,
            })?;
            let deadline = attempt
                .started_at
                .saturating_add(job.timeout.as_millis() as i64);
            let time_left =
                Duration::from_millis(u64::try_from(deadline - now_millis()).unwrap_or(0));
            let (id, number, pid, timeout) = (job.id, attempt.attempt, attempt.pid, job.timeout);
            let settings = self.settings.clone();
            let tx = self.tx.clone();
            let token = Arc::clone(&cancel);
            tracing::warn!(
                "Adopting attempt {number} of job {id}, left running by a previous dispatcher"
            );
            std::thread::Builder::new()
                .name(format!("adopt-{id}"))
                .spawn(move || {
                    let job_id = id.to_string();
                    let orphan = Orphan {
                        job_id: &job_id,
                        attempt: number,
                        pid,
                        time_left,
                        timeout,
                    };
                    let result = adopt_attempt(&settings, &orphan, &token);
                    let _ = tx.send(Event::Finished {
                        id,
                        attempt: number,
                        result,
                        released: true,
                    });
                })
                .map_err(|source| DispatcherError::Setup {
                    what: "start an adoption thread".into(),
                    source,
                })?;
            self.running.insert(
                id,
                Running {
                    job,
                    plugin_hash: attempt.plugin_hash.clone().unwrap_or_default(),
                    cancel,
                    interrupted: false,
                },
            );
        }
        Ok(true)
    }

    /// Corrects the attempts of this host's earlier dispatchers that were settled `lost` while
    /// their workers ran on (the others rescued them after their lease ran out), from the
    /// reports those workers left in this state directory: the report is the truth. A job
    /// that still waits for the retry the lost attempt gave it moves on as its report says
    /// (a success completes it, never to run again); one that moved on keeps its course, its
    /// record corrected. Reports are only ever in the state directory of the host that ran
    /// the worker, so only that host's next dispatcher can do this.
    fn amend_lost(&mut self) -> Result<(), DispatcherError> {
        let Some(lost) = self.read("list lost attempts", |s| s.lost_attempts())? else {
            return Ok(());
        };
        for (job, attempt) in lost {
            let number = attempt.attempt;
            let report_path =
                AttemptPaths::new(&self.settings.state_dir, &job.id.to_string(), number).report;
            let Ok(Some(report)) = read_report::<WorkerReport>(&report_path) else {
                continue;
            };
            let outcome = crate::runner::supervisor::reported_outcome(report, job.timeout);
            let now = now_millis();
            let Transition {
                outcome: label,
                error,
                next,
            } = lifecycle::decide(&job, Ending::Ended(&outcome), job.cancel_requested, now);
            let end = AttemptEnd {
                finished_at: attempt.finished_at.unwrap_or(now),
                outcome: label.clone(),
                error,
                output_bytes: attempt.output_bytes.unwrap_or(0),
            };
            let id = job.id;
            match self.store("correct a lost attempt", |s| {
                s.amend_lost(id, number, &end, &next)
            })? {
                Some(Amended::Moved) => {
                    tracing::warn!(
                        "Attempt {number} of job {id} was settled lost while its dispatcher was \
                         away, but its worker's report says {label}: the job moves on from it"
                    );
                    log_next(&job, number, &next, &end.error.unwrap_or_default(), now);
                    notify_waiters(&self.paths.waiters, id);
                    self.changed();
                }
                Some(Amended::Recorded) => tracing::warn!(
                    "Attempt {number} of job {id} was settled lost while its dispatcher was \
                     away, but its worker's report says {label}; the job had moved on already \
                     (it may have run again), so only the attempt's record is corrected"
                ),
                Some(Amended::NotLost) | None => {}
            }
        }
        Ok(())
    }

    /// The idle exit: stop answering the doorbell, then look once more. An enqueuer that
    /// committed before this look is seen; one after it finds no doorbell and starts a new
    /// dispatcher. Returns false (and answers the doorbell again) if work arrived.
    fn leave_if_still_idle(&mut self) -> Result<bool, DispatcherError> {
        let _ = self.doorbell.unlink();
        let nothing_waits = self.trouble.retry_at().is_none()
            && self.unsettled.is_empty()
            && self.read("look for waiting jobs", |s| s.next_run_at())? == Some(None);
        if nothing_waits {
            return Ok(true);
        }
        self.doorbell =
            listen(&self.paths.doorbell, &self.tx).map_err(|source| DispatcherError::Setup {
                what: "bind the doorbell again".into(),
                source,
            })?;
        Ok(false)
    }
}

/// The plugin catalog as the dispatcher last read it: which version a claimed job runs.
struct Plugins {
    catalog: PathBuf,
    stamp: Option<FileStamp>,
    inventory: Option<Inventory>,
}

impl Plugins {
    fn new(settings: &Settings) -> Self {
        let mut plugins = Self {
            catalog: CatalogPaths::new(&settings.state_dir).catalog,
            stamp: None,
            inventory: None,
        };
        plugins.reload();
        plugins
    }

    /// Reads the catalog again if it changed since the last read: one `stat` when it did not.
    fn reload(&mut self) {
        let stamp = FileStamp::of(&self.catalog).ok();
        if stamp != self.stamp || self.inventory.is_none() {
            self.inventory = Inventory::read(&self.catalog);
            self.stamp = stamp;
        }
    }

    /// Whether the version with `hash` serves new jobs.
    fn is_active(&self, hash: &str) -> bool {
        self.inventory
            .as_ref()
            .is_some_and(|i| i.active_hashes().contains(hash))
    }

    /// The snapshot and hash a claimed job runs: its class's active version now, so a deploy
    /// reaches jobs already waiting; if no plugin offers the class any more, the version it
    /// was enqueued with (its snapshot is kept while it waits).
    fn version_for(&self, job: &JobRecord) -> (PathBuf, String) {
        let active = self
            .inventory
            .as_ref()
            .and_then(|i| i.find(&job.class))
            .map(|offer| (offer.version.snapshot.clone(), offer.version.hash.clone()));
        active.unwrap_or_else(|| {
            let hash = inventory::snapshot_hash(&job.plugin).unwrap_or_default();
            (job.plugin.clone(), hash.to_owned())
        })
    }
}

/// Logs what became of `job` after attempt `attempt`: the spec's line for `next`.
fn log_next(job: &JobRecord, attempt: u32, next: &Next, error: &str, now: Millis) {
    let name = job.name();
    match next {
        Next::Complete(_) => joblog::completed(&name, &job.params),
        Next::Retry(at) => {
            let delay = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
            joblog::retrying(&name, &job.params, attempt, error, delay);
        }
        Next::Fail => joblog::failed(&name, &job.params, error),
        Next::Cancel => joblog::cancelled(&name, &job.params),
        Next::Requeue => joblog::requeued(&name, &job.params, error),
    }
}
