//! The Rust API for applications: jobhost's `runBackgroundJob`.
//!
//! ```no_run
//! use std::time::Duration;
//! use jobhost::{Job, Priority};
//!
//! // Settings come from the environment and ./jobhost.toml, as for the CLI.
//! let id = jobhost::dispatch(
//!     Job::new(r"App\Jobs\ProcessUserReport", "generate")
//!         .param("report_id", 456)
//!         .retries(5)
//!         .retry_delay(Duration::from_secs(10))
//!         .priority(Priority::High)
//!         .delay(Duration::from_secs(15))
//!         .timeout(Duration::from_secs(60)),
//! )?;
//! println!("queued job {id}");
//! # Ok::<(), jobhost::DispatchError>(())
//! ```
//!
//! A [`Client`] does the same with explicit settings, keeps its database connection and the
//! parsed allowlist and plugin inventory between calls, and enqueues many jobs in one
//! transaction with [`Client::dispatch_batch`]. Every job passes the same gate as on the
//! command line ([`crate::catalog::gate`]), is logged as `Job queued`, and wakes the dispatcher at
//! once — starting one, detached, if none serves the state directory (unless
//! `dispatcher.autostart` is off).
//!
//! # What an error means
//!
//! An `Err` from [`Client::dispatch`], [`Client::cancel`] or [`Client::retry`] means nothing
//! was changed, so calling again cannot do it twice — with one exception, a
//! [`StoreError::CommitUnknown`] (see [`DispatchError::outcome_unknown`]): the connection to
//! the database broke while the change committed, and only a look at the store tells whether
//! it was made. A connection lost before the commit is retried here a few times first. Telling
//! the dispatcher is best effort after the commit: when that fails (no dispatcher runs and
//! none can be started), the change stands, a dispatcher that starts later finds it, and the
//! client reports a [`WakeError`] to its warning handler ([`Client::on_warning`]) instead.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    catalog::gate::{authorize, Refused},
    catalog::inventory::{library_files, FileStamp, Inventory, InventoryError},
    config::allowlist::{Allowlist, AllowlistError},
    config::settings::{Overrides, Settings, SettingsError},
    job::{JobSpec, ParamsError, Priority},
    joblog::{self, SpecFormatLayer},
    platform::{self, Doorbell},
    queue::{
        doorbell::{RING_STOP, RING_WAKE},
        StatePaths,
    },
    store::{now_millis, Attempt, CancelOutcome, JobId, JobRecord, NewJob, Store, StoreError},
};

/// A job to dispatch, built up from a class and method.
#[derive(Debug, Clone)]
pub struct Job {
    class: String,
    method: String,
    named: Map<String, Value>,
    positional: Vec<Value>,
    raw: Option<Value>,
    bad_param: Option<String>,
    retries: Option<u32>,
    retry_delay: Option<Duration>,
    priority: Priority,
    delay: Duration,
    timeout: Option<Duration>,
}

impl Job {
    /// `class@method`, with no params and the settings' defaults (3 retries 5 s apart, normal
    /// priority, no delay, a 1 hour timeout unless configured otherwise).
    pub fn new(class: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            method: method.into(),
            named: Map::new(),
            positional: Vec::new(),
            raw: None,
            bad_param: None,
            retries: None,
            retry_delay: None,
            priority: Priority::Normal,
            delay: Duration::ZERO,
            timeout: None,
        }
    }

    /// Adds the named param `name`.
    pub fn param(mut self, name: &str, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.named.insert(name.to_owned(), v);
            }
            Err(e) => self.bad_param = Some(format!("param {name:?} is not serializable: {e}")),
        }
        self
    }

    /// Adds the next positional param.
    pub fn arg(mut self, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => self.positional.push(v),
            Err(e) => self.bad_param = Some(format!("positional param is not serializable: {e}")),
        }
        self
    }

    /// Sets all params at once: a JSON object (named) or array (positional).
    pub fn params(mut self, params: Value) -> Self {
        self.raw = Some(params);
        self
    }

    /// Retries after the first failed attempt.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Wait between attempts.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = Some(delay);
        self
    }

    /// Priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Wait before the first attempt.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// How long one attempt may run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The job as a spec, with `settings`' defaults filled in, checked: every option against
    /// its bound, the params against `settings`' limits.
    ///
    /// ```
    /// use std::{path::Path, time::Duration};
    /// use jobhost::{Job, Overrides, Priority, Settings};
    ///
    /// let settings = Settings::resolve_with(&Overrides::default(), Path::new("/srv/app"), |_| None)?;
    /// let spec = Job::new(r"App\Jobs\SendNotification", "send")
    ///     .arg(789)
    ///     .arg("Welcome!")
    ///     .priority(Priority::Low)
    ///     .into_spec(&settings)?;
    /// assert_eq!(spec.params, serde_json::json!([789, "Welcome!"]));
    /// // The spec's defaults: 3 retries, 5 s apart, no delay.
    /// assert_eq!((spec.retries, spec.retry_delay, spec.delay), (3, Duration::from_secs(5), Duration::ZERO));
    ///
    /// let mixed = Job::new(r"App\Jobs\SendNotification", "send").param("user_id", 1).arg(2);
    /// assert!(mixed.into_spec(&settings).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_spec(self, settings: &Settings) -> Result<JobSpec, ParamsError> {
        if let Some(problem) = self.bad_param {
            return Err(ParamsError::Unserializable(problem));
        }
        let params = match (self.raw, self.named.is_empty(), self.positional.is_empty()) {
            (Some(_), false, _) | (Some(_), _, false) => return Err(ParamsError::Both),
            (Some(raw), _, _) => raw,
            (None, false, false) => return Err(ParamsError::Mixed),
            (None, true, false) => Value::Array(self.positional),
            (None, _, true) => Value::Object(self.named),
        };
        let spec = JobSpec {
            class: self.class,
            method: self.method,
            params,
            retries: self.retries.unwrap_or(settings.defaults.retries),
            retry_delay: self.retry_delay.unwrap_or(settings.defaults.retry_delay),
            priority: self.priority,
            delay: self.delay,
            timeout: self.timeout.unwrap_or(settings.defaults.timeout),
        };
        spec.validate(&settings.limits.params())?;
        Ok(spec)
    }
}

/// Why a job was not dispatched. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The job itself is malformed: params, names, options.
    #[error(transparent)]
    BadInput(#[from] ParamsError),
    /// The allowlist refused it, or no plugin offers it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The allowlist file is invalid, or does not exist (then nothing is approved).
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),
    /// The plugin directory cannot be read.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The job database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The logs cannot be opened.
    #[error(transparent)]
    Log(#[from] joblog::LogOpenError),
    /// A file of the state directory could not be used (the doorbells).
    #[error("cannot use {path}")]
    StateDir {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl DispatchError {
    /// Whether the change may have been stored although the call failed: the connection to the
    /// database broke while it committed ([`StoreError::outcome_unknown`]). Every other error
    /// means nothing was changed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Store(e) if e.outcome_unknown())
    }
}

/// Why the dispatcher was not told of a change that was stored. The change stands: a
/// dispatcher that starts later finds it.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// No dispatcher answered, and starting one failed.
    #[error(
        "no dispatcher serves {state_dir} and none could be started with {program} \
         (`JOBHOST_BIN` names the jobhost program to start when it is not on PATH)"
    )]
    Start {
        /// The state directory.
        state_dir: PathBuf,
        /// The jobhost program that was tried.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No dispatcher answered, and `dispatcher.autostart` is off.
    #[error(
        "no dispatcher serves {state_dir}, and dispatcher.autostart is off: start one with `jobhost serve`"
    )]
    NotRunning {
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The dispatcher's doorbell could not be rung.
    #[error("cannot ring the dispatcher's doorbell {doorbell}")]
    Ring {
        /// The doorbell.
        doorbell: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How often a follower looks at its job and at whether a dispatcher serves, when nothing woke
/// it before.
const FOLLOW_LOOK: Duration = Duration::from_secs(1);
/// How often a follower checks whether it was interrupted.
const FOLLOW_TICK: Duration = Duration::from_millis(100);

/// What a [`Client`] does with a [`WakeError`].
pub type OnWarning = Box<dyn Fn(&WakeError) + Send>;

/// How often a store call that failed for a reason a new try at once can cure (a lost
/// connection, a conflicting transaction) is made in all, the pauses doubling from
/// [`STORE_RETRY_PAUSE`]: about 1.5 s.
const STORE_TRIES: u32 = 5;
const STORE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs `call`, again after a pause while it fails having changed nothing for a reason a new
/// try can cure: a lost connection (the store's next call connects again) or a transaction
/// that conflicted with another. A commit whose outcome is unknown is never repeated.
fn retrying<T>(mut call: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut pause = STORE_RETRY_PAUSE;
    for _ in 1..STORE_TRIES {
        match call() {
            Err(e @ (StoreError::ConnectionLost { .. } | StoreError::Conflict(_))) => {
                tracing::debug!("{e}; trying again in {pause:?}");
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
    call()
}

/// The allowlist and the plugin catalog, brought up to date only when the plugin directory's
/// listing or the allowlist file changed.
#[derive(Default)]
struct Gate {
    known: Option<Known>,
}

struct Known {
    files: Vec<(PathBuf, FileStamp)>,
    allowlist_stamp: Option<FileStamp>,
    inventory: Inventory,
    allowlist: Allowlist,
}

impl Gate {
    fn refresh(&mut self, settings: &Settings) -> Result<(&Allowlist, &Inventory), DispatchError> {
        let files =
            library_files(&settings.plugin_dir).map_err(|source| InventoryError::ReadDir {
                dir: settings.plugin_dir.clone(),
                source,
            })?;
        let allowlist_stamp = FileStamp::of(&settings.allowlist).ok();
        let known = match self.known.take() {
            Some(known)
                if known.files == files
                    && known.allowlist_stamp == allowlist_stamp
                    && !known.inventory.retry_due(crate::store::now_millis()) =>
            {
                self.known.insert(known)
            }
            _ => {
                let inventory = Inventory::refresh(settings)?;
                let allowlist = inventory.allowlist(settings)?;
                self.known.insert(Known {
                    files,
                    allowlist_stamp,
                    inventory,
                    allowlist,
                })
            }
        };
        Ok((&known.allowlist, &known.inventory))
    }
}

/// A connection to one jobhost installation (a state directory).
pub struct Client {
    settings: Settings,
    paths: StatePaths,
    store: Box<dyn Store>,
    gate: Gate,
    log: tracing::Dispatch,
    on_warning: OnWarning,
}

impl Client {
    /// A client for the installation `settings` describe.
    pub fn new(settings: Settings) -> Result<Self, DispatchError> {
        let paths = StatePaths::new(&settings.state_dir);
        let store = retrying(|| crate::store::open(&settings.store))?;
        let log = SpecFormatLayer::open(&settings.log_dir, &settings.env)?.into_dispatch();
        Ok(Self {
            settings,
            paths,
            store,
            gate: Gate::default(),
            log,
            on_warning: Box::new(|warning| {
                tracing::warn!("{}", crate::shared::text::chain(warning));
            }),
        })
    }

    /// Sets what to do when a change was stored but the dispatcher could not be told (a
    /// [`WakeError`]); by default it is logged as a `tracing` warning.
    pub fn on_warning(&mut self, handler: impl Fn(&WakeError) + Send + 'static) {
        self.on_warning = Box::new(handler);
    }

    /// A client with the settings the CLI would use here: environment, `./jobhost.toml`,
    /// defaults.
    pub fn from_env() -> Result<Self, DispatchError> {
        Self::new(Settings::resolve(&Overrides::default())?)
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The job database, for reading. Unstable: for jobhost's own tests and benches only (the
    /// `internals` feature).
    #[cfg(feature = "internals")]
    pub fn store(&mut self) -> &mut dyn Store {
        &mut *self.store
    }

    /// Checks `job`, stores it and wakes the dispatcher. Returns its id.
    pub fn dispatch(&mut self, job: Job) -> Result<JobId, DispatchError> {
        let mut ids = self.dispatch_batch([job])?;
        Ok(ids.remove(0))
    }

    /// Checks every job, then stores them all in one transaction (or none, if any is refused)
    /// and wakes the dispatcher once. Returns their ids, in order.
    pub fn dispatch_batch(
        &mut self,
        jobs: impl IntoIterator<Item = Job>,
    ) -> Result<Vec<JobId>, DispatchError> {
        let Self {
            settings,
            gate,
            log,
            store,
            ..
        } = self;
        let new_jobs = tracing::dispatcher::with_default(log, || {
            let (allowlist, inventory) = gate.refresh(settings)?;
            jobs.into_iter()
                .map(|job| {
                    let spec = job.into_spec(settings)?;
                    let offer = authorize(allowlist, inventory, &spec)?;
                    crate::catalog::gate::params_fit(&offer, &spec)?;
                    let plugin = offer.version.snapshot.clone();
                    Ok(NewJob { spec, plugin })
                })
                .collect::<Result<Vec<_>, DispatchError>>()
        })?;
        let ids = retrying(|| store.enqueue(&new_jobs, now_millis()))?;
        tracing::dispatcher::with_default(log, || {
            for (id, job) in ids.iter().zip(&new_jobs) {
                let spec = &job.spec;
                joblog::queued(
                    &spec.name(),
                    *id,
                    &spec.params,
                    spec.priority.as_str(),
                    spec.delay,
                );
            }
        });
        self.wake_dispatcher();
        Ok(ids)
    }

    /// Cancels a waiting job, or asks its dispatcher to stop a running one.
    pub fn cancel(&mut self, id: JobId) -> Result<CancelOutcome, DispatchError> {
        let store = &mut self.store;
        let outcome = retrying(|| store.cancel(id, now_millis()))?;
        if outcome == CancelOutcome::Cancelled {
            // Committed: what follows is best effort, and cannot undo the cancel.
            if let Ok(Some((job, _))) = self.store.job(id) {
                tracing::dispatcher::with_default(&self.log, || {
                    joblog::cancelled(&job.name(), &job.params);
                });
            }
            crate::queue::doorbell::notify_waiters(&self.paths.waiters, id);
        }
        if !matches!(outcome, CancelOutcome::AlreadyFinished(_)) {
            // A running job must be stopped; for a waiting one, the ring tells whoever watches
            // the queue (the dashboard) that it changed.
            self.wake_dispatcher();
        }
        Ok(outcome)
    }

    /// Queues a failed or cancelled job again.
    pub fn retry(&mut self, id: JobId) -> Result<(), DispatchError> {
        let store = &mut self.store;
        retrying(|| store.retry(id, now_millis()))?;
        self.wake_dispatcher();
        Ok(())
    }

    /// A job and its attempts.
    pub fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, DispatchError> {
        Ok(self.store.job(id)?)
    }

    /// Asks the dispatcher serving this state directory to stop; false if none runs.
    pub fn stop_dispatcher(&self) -> Result<bool, DispatchError> {
        platform::ring(&self.paths.doorbell, RING_STOP).map_err(|source| DispatchError::StateDir {
            path: self.paths.doorbell.clone(),
            source,
        })
    }

    /// Follows job `id` until it reaches a terminal state, or until `interrupted` says to stop
    /// following (the job goes on). Costs the dispatcher nothing: the follower is woken by the
    /// dispatcher's ring on its own doorbell in the state directory when the job moves on, and
    /// checks that a dispatcher serves the state directory without waking it
    /// (`platform::answers`). It reads the job itself every second too (a job
    /// finished by a dispatcher on another host rings no doorbell here). When no dispatcher
    /// serves, it starts one (unless `dispatcher.autostart` is off), telling the warning
    /// handler once if it cannot, and goes on waiting.
    pub fn follow(
        &mut self,
        id: JobId,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<JobRecord>, DispatchError> {
        let io = |source| DispatchError::StateDir {
            path: self.paths.waiters.clone(),
            source,
        };
        crate::shared::files::create_private_dir(&self.paths.waiters).map_err(io)?;
        let bell_path = self
            .paths
            .waiters
            .join(format!("{id}.{}.sock", std::process::id()));
        let bell = Doorbell::bind(&bell_path).map_err(io)?;
        let (rang, rings) = crossbeam_channel::unbounded();
        let listener = bell.try_clone().map_err(io)?;
        std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || while listener.wait().is_ok() && rang.send(()).is_ok() {})
            .map_err(io)?;
        let mut warned = false;
        let result = loop {
            let store = &mut self.store;
            match retrying(|| store.job(id)) {
                Err(e) => break Err(e.into()),
                Ok(None) => break Err(StoreError::NotFound(id).into()),
                Ok(Some((job, _))) if job.state.is_terminal() => break Ok(Some(job)),
                Ok(Some(_)) => {}
            }
            // Woken by the dispatcher; the ticks only notice an interrupt, and every
            // FOLLOW_LOOK they look at the job and at whether a dispatcher serves.
            let look = std::time::Instant::now() + FOLLOW_LOOK;
            let stop = loop {
                if interrupted() {
                    break true;
                }
                match rings.recv_deadline(look.min(std::time::Instant::now() + FOLLOW_TICK)) {
                    Ok(()) => break false,
                    Err(_) if std::time::Instant::now() >= look => {
                        if let Err(warning) = self.ensure_dispatcher() {
                            if !std::mem::replace(&mut warned, true) {
                                (self.on_warning)(&warning);
                            }
                        }
                        break false;
                    }
                    Err(_) => {}
                }
            };
            if stop {
                break Ok(None);
            }
        };
        let _ = bell.unlink();
        result
    }

    /// Starts a dispatcher if none serves the state directory (and `dispatcher.autostart`
    /// allows), without waking one that does.
    fn ensure_dispatcher(&self) -> Result<(), WakeError> {
        let doorbell = &self.paths.doorbell;
        let serving = platform::answers(doorbell).map_err(|source| WakeError::Ring {
            doorbell: doorbell.clone(),
            source,
        })?;
        if serving {
            return Ok(());
        }
        self.start_dispatcher()
    }

    /// Rings the dispatcher's doorbell, starting a dispatcher if nobody answers (and
    /// `dispatcher.autostart` allows). Best effort: what fails goes to the warning handler.
    fn wake_dispatcher(&self) {
        if let Err(warning) = self.try_wake_dispatcher() {
            (self.on_warning)(&warning);
        }
    }

    fn try_wake_dispatcher(&self) -> Result<(), WakeError> {
        let doorbell = &self.paths.doorbell;
        let answered = platform::ring(doorbell, RING_WAKE).map_err(|source| WakeError::Ring {
            doorbell: doorbell.clone(),
            source,
        })?;
        if answered {
            return Ok(());
        }
        self.start_dispatcher()
    }

    /// Starts a dispatcher on demand, if `dispatcher.autostart` allows.
    fn start_dispatcher(&self) -> Result<(), WakeError> {
        let state_dir = self.settings.state_dir.clone();
        if !self.settings.dispatcher.autostart {
            return Err(WakeError::NotRunning { state_dir });
        }
        start_dispatcher(&self.settings).map_err(|source| WakeError::Start {
            state_dir,
            program: crate::runner::jobhost_program(),
            source,
        })
    }
}

/// Starts a detached dispatcher for `settings` that exits once idle. A thread reaps it when
/// it ends, so a long-running caller keeps no zombie.
fn start_dispatcher(settings: &Settings) -> std::io::Result<()> {
    let mut command = Command::new(crate::runner::jobhost_program());
    command
        .current_dir(&settings.work_dir)
        .args(["serve", "--detached", "--idle-exit"])
        .arg(settings.dispatcher.idle_exit.as_secs_f64().to_string())
        .envs(settings.to_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    platform::detach_command(&mut command);
    let mut child = command.spawn()?;
    std::thread::Builder::new()
        .name("dispatcher-reaper".into())
        .spawn(move || child.wait())?;
    Ok(())
}

static GLOBAL: Mutex<Option<Client>> = Mutex::new(None);

/// Dispatches `job` with a process-wide [`Client`] built from the environment on first use:
/// the spec's `runBackgroundJob`.
pub fn dispatch(job: Job) -> Result<JobId, DispatchError> {
    let mut global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    let client = match global.take() {
        Some(client) => global.insert(client),
        None => global.insert(Client::from_env()?),
    };
    client.dispatch(job)
}
