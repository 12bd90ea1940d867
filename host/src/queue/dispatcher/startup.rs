//! What `serve` starts before the loop: the state directory's lock (taking over from a
//! dispatcher started on demand), the health file, the doorbell, the plugin watcher, the
//! store's listener for other hosts, the heartbeat, the signal thread and the store's
//! maintenance — each a thread that turns what it sees into an [`Event`] for the loop.

use super::*;

/// The dispatcher's health file in the state directory of `settings`.
pub(super) fn paths_health(settings: &Settings) -> PathBuf {
    StatePaths::new(&settings.state_dir).health
}

/// Creates the health file with an empty report; without one the dispatcher still runs.
pub(super) fn open_health(path: &Path) -> Option<HealthFile> {
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
pub(super) const ON_DEMAND: &str = "on-demand";
/// What any other dispatcher writes there.
pub(super) const SUPERVISED: &str = "supervised";

/// Takes the state directory's dispatcher lock. A dispatcher that is not `on_demand` (a
/// `jobhost serve` of an administrator or a supervisor) that finds one started on demand
/// holding it asks that one to stop (gracefully: its running attempts get
/// `dispatcher.shutdown_grace` to finish, then go back to the queue) and takes the lock once
/// it is gone; otherwise a held lock is [`DispatcherError::AlreadyRunning`].
pub(super) fn take_over(
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
pub(super) fn listen(path: &Path, tx: &Mail) -> std::io::Result<Doorbell> {
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
pub(super) fn watch_plugins(settings: &Settings, tx: &Mail) {
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
pub(super) fn forward_changes(
    mut listener: Box<dyn Listener>,
    tx: &Mail,
) -> std::io::Result<()> {
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
pub(super) fn start_heartbeat(
    settings: &Settings,
    heartbeats: &Arc<Mutex<Heartbeats>>,
    tx: &Mail,
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

pub(super) fn watch_signals(tx: &Mail) -> std::io::Result<()> {
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
pub(super) fn start_maintenance(
    mut maintenance: Box<dyn Maintenance>,
) -> Result<(), DispatcherError> {
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
