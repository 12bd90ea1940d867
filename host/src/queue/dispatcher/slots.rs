//! The slot threads: a fixed number of them, each running one attempt at a time in a worker
//! process and telling the loop when it was spawned and how it ended.

use super::*;

/// Starts the slot threads: each runs one attempt at a time, its worker started by the one
/// spawner they share.
pub(super) fn start_slots(settings: &Settings, tx: &Sender<Event>) -> Sender<Order> {
    let (orders, inbox) = crossbeam_channel::unbounded::<Order>();
    let spawner = Arc::new(Spawner::new(settings));
    for slot in 0..settings.dispatcher.slots {
        let inbox: Receiver<Order> = inbox.clone();
        let tx = tx.clone();
        let settings = settings.clone();
        let spawner = Arc::clone(&spawner);
        let spawned = std::thread::Builder::new()
            .name(format!("slot-{slot}"))
            .spawn(move || {
                for Order::Run { job, cancel } in inbox {
                    let (id, attempt) = (job.id, job.attempts);
                    let mut released = false;
                    let result = run_order(&settings, &spawner, &job, &cancel, &tx, &mut released);
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

pub(super) fn run_order(
    settings: &Settings,
    spawner: &Spawner,
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
    run_attempt(settings, spawner, &spec, cancel, &mut |pid| {
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
