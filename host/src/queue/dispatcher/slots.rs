//! The slots: the attempts the dispatcher runs at once, each in a worker process.
//!
//! On Linux the loop supervises them itself: it polls their workers in the same `poll` it
//! waits for its events in ([`Slots::wait`]), so an attempt's end reaches it with no thread in
//! between. On Windows [`Attempts`] supervises each in a thread of its own, which tells the
//! loop how it ended as an [`Event::Finished`].

use super::*;

/// An attempt, as the loop and its supervisor name it: the job and its attempt number.
pub(super) type Key = (JobId, u32);

/// How to let a spawned worker start, or not ([`Slots::release`]).
#[cfg(unix)]
pub(super) type Gate = Key;
#[cfg(windows)]
pub(super) type Gate = GoAhead<Key>;

/// The dispatcher's running attempts.
pub(super) struct Slots {
    settings: Settings,
    #[cfg(unix)]
    watch: Watch<Key>,
    // After the watch: dropped once nothing is watched (a fork server is then told to leave).
    #[cfg(unix)]
    spawner: Spawner,
    #[cfg(windows)]
    attempts: Attempts<Key>,
}

/// Starts the supervisor of the dispatcher's attempts; on Windows it tells `tx` how they end.
pub(super) fn start_slots(settings: &Settings, tx: &Mail) -> std::io::Result<Slots> {
    #[cfg(unix)]
    {
        let _ = tx;
        Ok(Slots {
            settings: settings.clone(),
            watch: Watch::default(),
            spawner: Spawner::new(settings),
        })
    }
    #[cfg(windows)]
    {
        let tx = tx.clone();
        // The loop outlives its attempts; an event it can no longer take has nobody to tell.
        let on_ended: OnEnded<Key> = Arc::new(move |ended: AttemptEnded<Key>| {
            let _ = tx.send(finished(ended));
        });
        Ok(Slots {
            settings: settings.clone(),
            attempts: Attempts::new(settings, on_ended)?,
        })
    }
}

/// The event that tells the loop of `ended`.
fn finished(ended: AttemptEnded<Key>) -> Event {
    let (id, attempt) = ended.key;
    Event::Finished {
        id,
        attempt,
        result: ended.result,
        released: ended.released,
    }
}

impl Slots {
    /// Starts the attempt of `job`, just claimed, running the plugin version `plugin_hash`
    /// (which declares itself fork-safe when `fork_safe`), stopped when `cancel` fires: its
    /// worker's start to record, and its gate (the worker waits at it); `None` when it could
    /// not be started (its end says why, as [`Event::Finished`]).
    pub(super) fn start(
        &mut self,
        job: &JobRecord,
        plugin_hash: &str,
        fork_safe: bool,
        cancel: Arc<CancelToken>,
    ) -> Option<(AttemptStart, Gate)> {
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
        let key = (job.id, job.attempts);
        #[cfg(unix)]
        let (pid, gate) = (
            self.watch
                .start(&self.settings, &self.spawner, key, &spec, cancel)?,
            key,
        );
        #[cfg(windows)]
        let (pid, gate) = {
            let spawned = self.attempts.start(key, &spec, cancel)?;
            (spawned.pid, spawned.go)
        };
        let start = AttemptStart {
            pid,
            plugin_hash: plugin_hash.to_owned(),
            output_path: AttemptPaths::new(&self.settings.state_dir, &job_id, job.attempts).output,
        };
        Some((start, gate))
    }

    /// Lets the worker behind `gate` start (`go`), or has it end without starting anything.
    pub(super) fn release(&mut self, gate: Gate, go: bool) {
        #[cfg(unix)]
        self.watch.release(gate, go);
        // Only a dispatcher that is shutting down has no supervisor to hear it.
        #[cfg(windows)]
        let _ = gate.send(go);
    }

    /// Waits until `inbox` has mail, a worker needs looking at, or `until` comes; the events
    /// that came, the ends of attempts among them.
    #[cfg(unix)]
    pub(super) fn wait(
        &mut self,
        inbox: &Inbox,
        until: Instant,
    ) -> Result<Vec<Event>, DispatcherError> {
        use std::os::fd::AsFd;
        let polled = self
            .watch
            .wait(Some(inbox.bell.as_fd()), Some(until))
            .map_err(DispatcherError::Wait)?;
        let mut events = Vec::new();
        if polled.woken() {
            crate::platform::empty_pipe(&inbox.bell);
        }
        // Mail sent before the bell rang is in the channel by now; mail whose ring comes
        // after this look wakes the next wait.
        events.extend(inbox.events.try_iter());
        events.extend(self.watch.step(&polled).into_iter().map(finished));
        Ok(events)
    }

    /// Waits until `inbox` has mail or `until` comes; the events that came.
    #[cfg(windows)]
    pub(super) fn wait(
        &mut self,
        inbox: &Inbox,
        until: Instant,
    ) -> Result<Vec<Event>, DispatcherError> {
        let first = inbox.events.recv_deadline(until).ok();
        Ok(first.into_iter().chain(inbox.events.try_iter()).collect())
    }
}
