//! The dispatcher (`jobhost serve`): the one loop that owns job state.
//!
//! It claims due jobs from the store — never more than it has free slots — and runs each in a
//! worker process ([`crate::runner::supervisor::attempts`]), which on Linux it supervises in its
//! own thread (the one `poll` it waits for every event in), and on Windows from a thread per
//! attempt that reports back over a channel.
//! Everything that happens reaches the loop as an event: the doorbell rang (a job was
//! enqueued, cancelled or retried by some other process), the store said another host changed
//! the queue, an attempt's worker was spawned or ended, a signal arrived, the heartbeat ticked.
//! The loop sleeps until the next event or the next scheduled `run_at`; the heartbeat wakes it
//! at least once a second, so a job whose ring was lost still starts within about a second.
//! Every attempt's end is decided by [`crate::queue::lifecycle::decide`] and applied by
//! [`Store::settle_many`]; the dispatcher makes no decision of its own. It writes in groups:
//! the workers spawned and the attempts ended during one round of events are recorded in one
//! store call and settled in one more, and an attempt is reported (logged, its followers rung)
//! only once the store has committed its settling.
//!
//! One dispatcher serves a state directory at a time (a lock file); a second one exits at once,
//! unless the one holding it was started on demand and the second was not: then the first
//! hands over (it stops gracefully) and the second serves. On start it first settles the
//! attempts a crashed predecessor left running ([`crate::runner::supervisor::adopt_attempt`]);
//! see `docs/job_state_machine.md`.
//!
//! Here: [`serve`] and the loop's state. Beside it: `startup` (the lock, the health file and the
//! threads that feed the loop), `slots` (the running attempts), `event_loop` (claim,
//! cancel, spawn, settle), `rescue` (adoption, expired leases, lost attempts amended),
//! `trouble` (what keeps it from its work, with backoff) and `plugins` (which version serves a
//! job).

mod event_loop;
mod plugins;
mod rescue;
mod slots;
mod startup;
mod trouble;

use self::{
    event_loop::log_next,
    plugins::Plugins,
    slots::{start_slots, Gate, Key, Slots},
    startup::*,
    trouble::Trouble,
};

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

#[cfg(unix)]
use crate::runner::supervisor::{attempts::Watch, Spawner};
#[cfg(windows)]
use crate::runner::supervisor::attempts::{Attempts, GoAhead, OnEnded};

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
    runner::supervisor::{
        adopt_attempt,
        attempts::AttemptEnded,
        AttemptError, AttemptPaths, AttemptRecord, AttemptSpec, Orphan,
    },
    store::{
        now_millis, Amended, AttemptEnd, AttemptStart, DispatcherId, DispatcherInfo,
        DispatcherRecord, JobId, JobRecord, Listener, Maintenance, Millis, Next, Settlement,
        SettledAndClaimed, Store, StoreError,
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
    /// It cannot wait for its events and workers.
    #[cfg(unix)]
    #[error("the dispatcher cannot wait for its events and workers: {0}")]
    Wait(#[source] std::io::Error),
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

/// How the threads that feed the loop send it their events: over a channel, and on Linux
/// through the loop's bell as well, since the loop waits for its events in the same poll as
/// for its workers ([`Slots::wait`]).
#[derive(Clone)]
struct Mail {
    tx: Sender<Event>,
    #[cfg(unix)]
    bell: Arc<std::os::fd::OwnedFd>,
}

/// The loop's side of its [`Mail`].
struct Inbox {
    events: Receiver<Event>,
    /// The bell's read end.
    #[cfg(unix)]
    bell: std::os::fd::OwnedFd,
}

/// The loop is gone: mail reaches nobody.
struct Undelivered;

/// A channel for the loop's events, and its bell.
fn mailbox() -> std::io::Result<(Mail, Inbox)> {
    let (tx, events) = crossbeam_channel::unbounded();
    #[cfg(unix)]
    {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok((
            Mail {
                tx,
                bell: Arc::new(write),
            },
            Inbox { events, bell: read },
        ))
    }
    #[cfg(windows)]
    Ok((Mail { tx }, Inbox { events }))
}

impl Mail {
    /// Sends `event` to the loop, and wakes it.
    fn send(&self, event: Event) -> Result<(), Undelivered> {
        self.tx.send(event).map_err(|_| Undelivered)?;
        // A full pipe already wakes the loop.
        #[cfg(unix)]
        let _ = rustix::io::write(&*self.bell, &[1]);
        Ok(())
    }
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
    let (tx, inbox) = mailbox().map_err(setup("create the loop's mailbox"))?;
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
        slots: start_slots(settings, &tx).map_err(setup("start the attempts' supervisor"))?,
        inbox,
        tx,
        plugins: Plugins::new(settings),
        doorbell,
        stopping: None,
        on_change: options.on_change.clone(),
        trouble: Trouble::default(),
        abandoned: HashSet::new(),
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
    slots: Slots,
    inbox: Inbox,
    tx: Mail,
    plugins: Plugins,
    doorbell: Doorbell,
    /// When the running attempts must be stopped, once a stop was asked for.
    stopping: Option<Instant>,
    on_change: Option<OnChange>,
    /// Why the store or the workers cannot be used just now, if they cannot.
    trouble: Trouble,
    /// Attempts whose workers were told not to start because the round that claimed them was
    /// not stored (or not known to be): their ends are not settled, and nothing is claimed
    /// until they have ended (so no new attempt shares their number and files).
    abandoned: HashSet<Key>,
    /// Where it reports its health, and what it reported last.
    health: Option<HealthFile>,
    reported: Vec<health::Problem>,
    /// Ended attempts whose settling the store has not taken yet, oldest first.
    unsettled: Vec<Unsettled>,
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
