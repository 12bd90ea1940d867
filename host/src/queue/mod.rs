//! The queue at work: the [`dispatcher`] owns job state in a state directory — it claims due
//! jobs from the store, runs each attempt through the runner, applies what [`lifecycle`]
//! decides (the one function that settles every attempt), and rescues attempts of dispatchers
//! that died; [`doorbell`] is how other processes wake it, stop it and wait for a job (both
//! sides use it); [`retention`] deletes finished jobs once they are old enough; [`health`] is
//! the dispatcher's report of what keeps it from its work, readable by other processes.

pub mod dispatcher;
pub mod doorbell;
pub mod health;
pub mod lifecycle;
pub mod retention;

use std::path::{Path, PathBuf};

/// The files of a state directory that belong to the dispatcher.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The lock a running dispatcher holds.
    pub lock: PathBuf,
    /// The dispatcher's doorbell socket.
    pub doorbell: PathBuf,
    /// Where `run --wait` followers put their own doorbells.
    pub waiters: PathBuf,
    /// The running dispatcher's health report ([`crate::queue::health`]).
    pub health: PathBuf,
}

impl StatePaths {
    /// The paths under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            lock: state_dir.join("dispatcher.lock"),
            doorbell: state_dir.join("dispatcher.sock"),
            waiters: state_dir.join("waiters"),
            health: state_dir.join("dispatcher.health"),
        }
    }
}
