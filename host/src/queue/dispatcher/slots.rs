//! The slots: the attempts the dispatcher runs at once, each in a worker process, supervised by
//! [`Attempts`] (one thread for them all on Linux), which tells the loop when a worker was
//! spawned and how an attempt ended.

use super::*;

/// An attempt, as the loop and its supervisor name it: the job and its attempt number.
pub(super) type Key = (JobId, u32);

/// The dispatcher's running attempts.
pub(super) struct Slots {
    settings: Settings,
    attempts: Attempts<Key>,
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
    })
}

impl Slots {
    /// Starts the attempt of `job`, just claimed, running the plugin version `plugin_hash`
    /// (which declares itself fork-safe when `fork_safe`), stopped when `cancel` fires: its
    /// worker's start to record, and its go-ahead (the worker waits at its gate); `None` when
    /// it could not be started (its end says why, as [`Event::Finished`]).
    pub(super) fn start(
        &self,
        job: &JobRecord,
        plugin_hash: &str,
        fork_safe: bool,
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
            fork_safe,
        };
        let spawned = self.attempts.start((job.id, job.attempts), &spec, cancel)?;
        let start = AttemptStart {
            pid: spawned.pid,
            plugin_hash: plugin_hash.to_owned(),
            output_path: AttemptPaths::new(&self.settings.state_dir, &job_id, job.attempts).output,
        };
        Some((start, spawned.go))
    }
}
