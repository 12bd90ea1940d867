//! The dispatcher (`jobhost serve`): the one loop that owns job state.
//!
//! It claims due jobs from the store — never more than it has free slots — and hands each to
//! a slot thread, which runs the attempt in a worker process and reports back over a channel.
//! Everything that happens reaches the loop as an event: the doorbell rang (a job was
//! enqueued, cancelled or retried by some other process), an attempt's worker was spawned or
//! ended, a signal arrived. The loop sleeps until the next event or the next scheduled
//! `run_at`, never on a polling interval (a slow safety wake-up aside). State transitions are
//! decided by [`crate::lifecycle`] and applied by [`Store::settle`].
//!
//! One dispatcher serves a state directory at a time (a lock file); a second one exits at once.
//! On start it first settles the attempts a crashed predecessor left running
//! ([`crate::attempt::adopt_attempt`]); see `docs/job_state_machine.md`.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

use crate::{
    attempt::{
        adopt_attempt, run_attempt, AttemptError, AttemptPaths, AttemptRecord, AttemptSpec, Orphan,
        Outcome,
    },
    inventory::{self, CatalogPaths, FileStamp, Inventory},
    joblog, lifecycle,
    platform::{CancelToken, Doorbell, FileLock},
    settings::Settings,
    store::{
        now_millis, sqlite::SqliteStore, AttemptEnd, AttemptStart, DispatcherId, DispatcherInfo,
        JobId, JobRecord, Next, Store, StoreError,
    },
};

/// The doorbell byte that asks a dispatcher to stop.
pub const RING_STOP: u8 = b's';
/// The doorbell byte that says the queue changed.
pub const RING_WAKE: u8 = b'w';

/// How long the loop sleeps at most, even with nothing scheduled: a safety net, not the
/// mechanism (every change rings the doorbell).
const SAFETY_WAKE: Duration = Duration::from_secs(5);

/// The files of a state directory that belong to the dispatcher.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The job database.
    pub database: PathBuf,
    /// The lock a running dispatcher holds.
    pub lock: PathBuf,
    /// The dispatcher's doorbell socket.
    pub doorbell: PathBuf,
    /// Where `run --wait` followers put their own doorbells.
    pub waiters: PathBuf,
}

impl StatePaths {
    /// The paths under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            database: state_dir.join(crate::store::sqlite::DB_FILE),
            lock: state_dir.join("dispatcher.lock"),
            doorbell: state_dir.join("dispatcher.sock"),
            waiters: state_dir.join("waiters"),
        }
    }
}

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
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("idle_exit", &self.idle_exit)
            .field("on_change", &self.on_change.is_some())
            .field("companion", &self.companion.is_some())
            .finish()
    }
}

/// What the loop reacts to.
enum Event {
    Rang(u8),
    Spawned {
        id: JobId,
        attempt: u32,
        start: AttemptStart,
    },
    Finished {
        id: JobId,
        attempt: u32,
        result: Result<AttemptRecord, AttemptError>,
    },
    Signal,
    /// The watcher brought the plugin catalog up to date after a change.
    PluginsChanged,
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
    std::fs::create_dir_all(&settings.state_dir).map_err(setup("create the state directory"))?;
    let Some(lock) =
        FileLock::try_acquire(&paths.lock).map_err(setup("take the dispatcher lock"))?
    else {
        return Err(DispatcherError::AlreadyRunning {
            pid: FileLock::holder(&paths.lock).map_or_else(|| "unknown".into(), |p| p.to_string()),
            state_dir: settings.state_dir.clone(),
        });
    };
    let mut store = SqliteStore::open(&paths.database)?;
    let owner = store.register_dispatcher(
        &DispatcherInfo::this_process(settings.dispatcher.slots, &settings.state_dir),
        now_millis(),
    )?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let doorbell = listen(&paths.doorbell, &tx).map_err(setup("bind the doorbell"))?;
    start_checkpointer(&paths.database)?;
    watch_signals(&tx).map_err(setup("install signal handlers"))?;
    let mut dispatcher = Dispatcher {
        settings: settings.clone(),
        paths,
        store: Box::new(store),
        owner,
        running: HashMap::new(),
        orders: start_slots(settings, &tx),
        events: rx,
        tx,
        plugins: Plugins::new(settings),
        doorbell,
        stopping: None,
        on_change: options.on_change.clone(),
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
    if let Err(e) = dispatcher.store.deregister(owner) {
        tracing::warn!("cannot deregister the dispatcher: {e}");
    }
    drop(lock);
    result
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
/// order, so that no change falls between the two). Neither failing stops the dispatcher: the
/// versions in force keep serving, and enqueuers bring the catalog up to date themselves.
fn watch_plugins(settings: &Settings, tx: &Sender<Event>) {
    let events = tx.clone();
    let watched = crate::watch::start(settings, move |_| {
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

fn watch_signals(tx: &Sender<Event>) -> std::io::Result<()> {
    let tx = tx.clone();
    crate::platform::on_termination(move || {
        let _ = tx.send(Event::Signal);
    })
}

/// How often the database's write-ahead log is folded into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoints the database from a thread of its own, so that no commit on the hot path pays
/// for the fsync. Housekeeping on a timer: nothing waits for it.
fn start_checkpointer(database: &Path) -> Result<(), DispatcherError> {
    let store = SqliteStore::open(database)?;
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if let Err(e) = store.checkpoint() {
                tracing::warn!("checkpoint failed: {e}");
            }
        })
        .map_err(|source| DispatcherError::Setup {
            what: "start the checkpoint thread".into(),
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
                    let result = run_order(&settings, &job, &cancel, &tx);
                    if tx
                        .send(Event::Finished {
                            id,
                            attempt,
                            result,
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
) -> Result<AttemptRecord, AttemptError> {
    let job_id = job.id.to_string();
    let spec = AttemptSpec {
        job_id: &job_id,
        attempt: job.attempts,
        class: &job.class,
        method: &job.method,
        params: &job.params,
        plugin: &job.plugin,
        timeout: job.timeout,
    };
    let output_path = AttemptPaths::new(&settings.state_dir, &job_id, job.attempts).output;
    run_attempt(settings, &spec, cancel, &mut |pid| {
        let start = AttemptStart {
            pid,
            plugin_hash: String::new(),
            output_path: output_path.clone(),
        };
        let _ = tx.send(Event::Spawned {
            id: job.id,
            attempt: job.attempts,
            start,
        });
    })
}

struct Dispatcher {
    settings: Settings,
    paths: StatePaths,
    store: Box<dyn Store>,
    /// The id it registered under and claims under.
    owner: DispatcherId,
    running: HashMap<JobId, Running>,
    orders: Sender<Order>,
    events: Receiver<Event>,
    tx: Sender<Event>,
    plugins: Plugins,
    doorbell: Doorbell,
    /// When the running attempts must be stopped, once a stop was asked for.
    stopping: Option<Instant>,
    on_change: Option<OnChange>,
}

impl Dispatcher {
    fn run(&mut self, options: &ServeOptions) -> Result<(), DispatcherError> {
        self.recover()?;
        let mut check_cancels = true;
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.stopping.is_none() {
                if check_cancels {
                    self.apply_cancels()?;
                }
                self.claim()?;
            }
            if self.stopping.is_some() && self.running.is_empty() {
                return Ok(());
            }

            // How long to sleep: until the next scheduled job, the idle exit, or the stop
            // deadline, whichever is first. Jobs running in the store are this dispatcher's
            // (one per state directory), so nothing waiting and nothing running is idle.
            let now = Instant::now();
            let mut wake = now + SAFETY_WAKE;
            let next =
                if self.stopping.is_none() && self.running.len() < self.settings.dispatcher.slots {
                    self.store.next_run_at()?
                } else {
                    None
                };
            if let Some(deadline) = self.stopping {
                wake = wake.min(deadline);
            } else if let Some(at) = next {
                let wait = u64::try_from(at - now_millis()).unwrap_or(0);
                wake = wake.min(now + Duration::from_millis(wait));
            }
            if let Some(idle_exit) = options.idle_exit {
                if self.running.is_empty() && self.stopping.is_none() && next.is_none() {
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
                    Event::Spawned { id, attempt, start } => self.spawned(id, attempt, start)?,
                    Event::PluginsChanged => {
                        self.plugins.reload();
                        self.collect_snapshots()?;
                        self.changed();
                    }
                    Event::Finished {
                        id,
                        attempt,
                        result,
                    } => self.finished(id, attempt, result)?,
                }
            }
            if self
                .stopping
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                self.interrupt_all();
            }
        }
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
        let claimed = self.store.claim(self.owner, now_millis(), free)?;
        if !claimed.is_empty() {
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
        for id in self.store.cancel_requests()? {
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

    fn spawned(
        &mut self,
        id: JobId,
        attempt: u32,
        mut start: AttemptStart,
    ) -> Result<(), DispatcherError> {
        if let Some(running) = self.running.get(&id) {
            start.plugin_hash.clone_from(&running.plugin_hash);
        }
        self.store.attempt_started(id, attempt, &start)?;
        Ok(())
    }

    fn finished(
        &mut self,
        id: JobId,
        attempt: u32,
        result: Result<AttemptRecord, AttemptError>,
    ) -> Result<(), DispatcherError> {
        let Some(running) = self.running.remove(&id) else {
            return Ok(());
        };
        let mut job = running.job;
        let record = match result {
            Ok(record) => record,
            Err(error) => {
                tracing::error!("attempt {attempt} of job {id} could not run: {error:#}");
                AttemptRecord {
                    attempt,
                    pid: 0,
                    duration: Duration::ZERO,
                    outcome: Outcome::Lost(format!("the attempt could not run: {error}")),
                    output: crate::capture::CapturedOutput {
                        path: AttemptPaths::new(&self.settings.state_dir, &id.to_string(), attempt)
                            .output,
                        total_bytes: 0,
                        dropped_bytes: 0,
                    },
                }
            }
        };
        if !matches!(record.outcome, Outcome::Ok(_)) {
            // Whether a cancel arrived while it ran decides between "cancelled" and a retry.
            job.cancel_requested =
                job.cancel_requested || self.store.cancel_requests()?.contains(&id);
        }
        let now = now_millis();
        let (next, label) = if running.interrupted && !matches!(record.outcome, Outcome::Ok(_)) {
            (
                Next::Requeue,
                "interrupted: the dispatcher shut down".to_owned(),
            )
        } else {
            (
                lifecycle::next_after(&job, &record.outcome, now),
                record.outcome.label(),
            )
        };
        let error = match next {
            Next::Requeue => Some(label.clone()),
            _ => record.outcome.error(),
        };
        let end = AttemptEnd {
            finished_at: now,
            outcome: label,
            error: error.clone(),
            output_bytes: record.output.total_bytes,
        };
        if !self.store.settle(id, attempt, &end, &next)? {
            return Ok(());
        }
        self.changed();
        let name = job.name();
        joblog::attempt_finished(&name, id, &record);
        let error = error.unwrap_or_default();
        match &next {
            Next::Complete(_) => joblog::completed(&name, &job.params),
            Next::Retry(at) => {
                let delay = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
                joblog::retrying(&name, &job.params, attempt, &error, delay);
            }
            Next::Fail => joblog::failed(&name, &job.params, &error),
            Next::Cancel => joblog::cancelled(&name, &job.params),
            Next::Requeue => joblog::requeued(&name, &job.params, &error),
        }
        notify_waiters(&self.paths.waiters, id);
        if !self.plugins.is_active(&running.plugin_hash) {
            // It may have been the last job needing that version.
            self.collect_snapshots()?;
        }
        Ok(())
    }

    /// Removes the plugin snapshots nothing needs any more: not active, not the version of a
    /// waiting job, not run by an attempt of ours.
    fn collect_snapshots(&mut self) -> Result<(), DispatcherError> {
        let Some(inventory) = &self.plugins.inventory else {
            return Ok(());
        };
        let mut in_use: BTreeSet<String> = self
            .store
            .unfinished_plugins()?
            .iter()
            .filter_map(|p| inventory::snapshot_hash(p).map(str::to_owned))
            .collect();
        in_use.extend(self.running.values().map(|r| r.plugin_hash.clone()));
        inventory::collect_snapshots(&self.settings, inventory, &in_use);
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
        for running in self.running.values_mut() {
            if !running.interrupted {
                running.interrupted = true;
                running.cancel.cancel();
            }
        }
    }

    /// Settles what a crashed predecessor left running: each orphan is adopted on its own
    /// thread (it may outnumber the slots) and reports back like any attempt.
    fn recover(&mut self) -> Result<(), DispatcherError> {
        for (job, attempt) in self.store.running()? {
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
        Ok(())
    }

    /// The idle exit: stop answering the doorbell, then look once more. An enqueuer that
    /// committed before this look is seen; one after it finds no doorbell and starts a new
    /// dispatcher. Returns false (and answers the doorbell again) if work arrived.
    fn leave_if_still_idle(&mut self) -> Result<bool, DispatcherError> {
        let _ = self.doorbell.unlink();
        if self.store.next_run_at()?.is_none() {
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

/// Rings the doorbells of everyone following job `id` (`jobhost run --wait`).
pub fn notify_waiters(dir: &Path, id: JobId) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{id}.");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            if matches!(crate::platform::ring(&path, RING_WAKE), Ok(false)) {
                // Its follower is gone.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
