//! The slots: the attempts the dispatcher runs at once, each in a worker process, supervised by
//! [`Attempts`] (one thread for them all on Linux), which tells the loop when a worker was
//! spawned and how an attempt ended.

use std::{cell::RefCell, collections::BTreeMap};

use super::*;

/// An attempt, as the loop and its supervisor name it: the job and its attempt number.
pub(super) type Key = (JobId, u32);

/// The dispatcher's running attempts.
pub(super) struct Slots {
    settings: Settings,
    attempts: Attempts<Key>,
    /// Whether each plugin snapshot a job ran declares itself fork-safe, from the catalog
    /// (snapshots are named by their content, so what one says never changes).
    fork_safe: RefCell<BTreeMap<PathBuf, bool>>,
}

/// Starts the supervisor of the dispatcher's attempts, which tells `tx` how they end.
pub(super) fn start_slots(settings: &Settings, tx: &Sender<Event>) -> std::io::Result<Slots> {
    let tx = tx.clone();
    // The loop outlives its attempts; an event it can no longer take has nobody to tell.
    let on_ended: OnEnded<Key> = Arc::new(move |ended: AttemptEnded<Key>| {
        let (id, attempt) = ended.key;
        let _ = tx.send(Event::Finished {
            id,
            attempt,
            result: ended.result,
            released: ended.released,
        });
    });
    Ok(Slots {
        settings: settings.clone(),
        attempts: Attempts::new(settings, on_ended)?,
        fork_safe: RefCell::default(),
    })
}

impl Slots {
    /// Starts the attempt of `job`, just claimed, running the plugin version `plugin_hash`,
    /// stopped when `cancel` fires: its worker's start to record, and its go-ahead (the worker
    /// waits at its gate); `None` when it could not be started (its end says why, as
    /// [`Event::Finished`]).
    pub(super) fn start(
        &self,
        job: &JobRecord,
        plugin_hash: &str,
        cancel: Arc<CancelToken>,
    ) -> Option<(AttemptStart, GoAhead<Key>)> {
        let job_id = job.id.to_string();
        let allowlist = crate::catalog::inventory::allowlist_in_force(&self.settings);
        let spec = AttemptSpec {
            job_id: &job_id,
            attempt: job.attempts,
            class: &job.class,
            method: &job.method,
            params: &job.params,
            plugin: &job.plugin,
            timeout: job.timeout,
            allowlist: &allowlist,
            fork_safe: self.is_fork_safe(&job.plugin),
        };
        let spawned = self.attempts.start((job.id, job.attempts), &spec, cancel)?;
        let start = AttemptStart {
            pid: spawned.pid,
            plugin_hash: plugin_hash.to_owned(),
            output_path: AttemptPaths::new(&self.settings.state_dir, &job_id, job.attempts).output,
        };
        Some((start, spawned.go))
    }

    /// Whether the plugin snapshot `plugin` declares itself fork-safe: as the catalog said
    /// when it was first asked about it (read again for each snapshot not seen before), and
    /// `false` for one it does not list.
    fn is_fork_safe(&self, plugin: &Path) -> bool {
        if let Some(&known) = self.fork_safe.borrow().get(plugin) {
            return known;
        }
        let catalog = crate::catalog::inventory::CatalogPaths::new(&self.settings.state_dir).catalog;
        let mut known = self.fork_safe.borrow_mut();
        if let Some(inventory) = crate::catalog::inventory::Inventory::read(&catalog) {
            for (snapshot, fork_safe) in inventory.fork_safety() {
                known.entry(snapshot.to_owned()).or_insert(fork_safe);
            }
        }
        *known.entry(plugin.to_owned()).or_insert(false)
    }
}
