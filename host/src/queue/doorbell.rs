//! The doorbell: how other processes reach a running dispatcher, and how it reaches the
//! followers of a job. A dispatcher listens on its state directory's doorbell
//! ([`super::StatePaths::doorbell`]); an enqueuer rings [`RING_WAKE`] after storing a job,
//! `jobhost stop` rings [`RING_STOP`]. A follower (`jobhost run --wait`, [`crate::Client`])
//! binds a doorbell of its own under [`super::StatePaths::waiters`], named for its job, and
//! whoever changes that job rings it ([`notify_waiters`]). A ring is a hint, never the
//! truth: the store is, so a lost ring costs a wait, never a job. Both sides import this module.

use std::path::Path;

use crate::store::JobId;

/// The doorbell byte that asks a dispatcher to stop.
pub const RING_STOP: u8 = b's';
/// The doorbell byte that says the queue changed.
pub const RING_WAKE: u8 = b'w';

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
