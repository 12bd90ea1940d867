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

/// Starts the supervisor of the dispatcher's attempts, which tells `tx` what happens to them.
pub(super) fn start_slots(settings: &Settings, tx: &Sender<Event>) -> std::io::Result<Slots> {
    let tx = tx.clone();
    let state_dir = settings.state_dir.clone();
    // The loop outlives its attempts; an event it can no longer take has nobody to tell.
    let on_event: OnEvent<Key> = Arc::new(move |event| {
        let _ = tx.send(match event {
            AttemptEvent::Spawned {
                key: (id, attempt),
                pid,
                go,
            } => Event::Spawned {
                id,
                attempt,
                start: AttemptStart {
                    pid,
                    plugin_hash: String::new(),
                    output_path: AttemptPaths::new(&state_dir, &id.to_string(), attempt).output,
                },
                go,
            },
            AttemptEvent::Ended {
                key: (id, attempt),
                result,
                released,
            } => Event::Finished {
                id,
                attempt,
                result,
                released,
            },
        });
    });
    Ok(Slots {
        settings: settings.clone(),
        attempts: Attempts::new(settings, on_event)?,
    })
}

impl Slots {
    /// Starts the attempt `order` asks for.
    pub(super) fn send(&self, order: Order) {
        let Order::Run { job, cancel } = order;
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
        };
        self.attempts.start((job.id, job.attempts), &spec, cancel);
    }
}
