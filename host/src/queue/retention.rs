//! Retention: finished jobs, their attempts and their attempts' files are deleted once they
//! are older than their state's period (`[retention]`, [`RetentionSettings`]), as River's job
//! cleaner does.
//!
//! The dispatcher runs [`start`]: a thread with its own store connection that, every
//! `retention.interval`, deletes the due jobs in batches of [`BATCH`] — one short transaction
//! each, with a pause between, so that the dispatcher's own writes never wait long — and
//! removes each pruned job's files from this host's state directory: its directory,
//! `attempts/<job_id>/`, and its attempts' reports beside it,
//! `attempts/<job_id>.<n>.report.json`. On PostgreSQL the store lets one dispatcher prune at a
//! time ([`Store::prune`]); the others skip the round.
//!
//! With several hosts sharing a PostgreSQL store, the dispatcher that prunes a job can only
//! remove the files on its own host. So every dispatcher also sweeps its own `attempts/`
//! directory at its first round and every [`SWEEP_EVERY`] rounds after, removing the
//! files of jobs the store no longer has (ids are never reused): every host removes its
//! own files of pruned jobs within that many rounds. `jobhost prune` ([`prune_by_hand`]) does
//! a pruning by hand. A round that fails is logged and the next one tries again; nothing here
//! stops the dispatcher.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::{
    config::settings::{RetentionSettings, Settings},
    runner::supervisor::attempts_dir,
    store::{now_millis, Cutoff, JobId, JobState, Millis, Store, StoreError},
};

/// The most jobs deleted in one transaction.
pub const BATCH: usize = 1000;

/// The pause between two batches of one round: the dispatcher's writes get the lock between.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// The sweep of the attempts directory runs at the first round and every this many rounds
/// after: every half hour at the default 30 s interval.
pub const SWEEP_EVERY: u32 = 60;

/// How many job directories a sweep asks the store about at once.
const SWEEP_CHUNK: usize = 1000;

/// The states whose jobs are pruned: the ends.
pub const FINISHED: [JobState; 3] = [JobState::Completed, JobState::Failed, JobState::Cancelled];

/// What a pruning removed, or would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Jobs deleted from the store.
    pub jobs: u64,
    /// Their attempts.
    pub attempts: u64,
    /// Bytes of their attempts' files removed from this host's state directory.
    pub bytes: u64,
}

impl Removed {
    fn add(&mut self, other: Removed) {
        self.jobs += other.jobs;
        self.attempts += other.attempts;
        self.bytes += other.bytes;
    }
}

/// The cutoffs at `now` for the jobs of `states` older than `period` says: none for a state it
/// keeps forever (`None`).
pub fn cutoffs(
    states: &[JobState],
    period: impl Fn(JobState) -> Option<Duration>,
    now: Millis,
) -> Vec<Cutoff> {
    states
        .iter()
        .filter_map(|&state| {
            let period = i64::try_from(period(state)?.as_millis()).unwrap_or(i64::MAX);
            Some(Cutoff {
                state,
                before: now.saturating_sub(period),
            })
        })
        .collect()
}

/// The cutoffs of `retention` at `now`.
fn configured(retention: &RetentionSettings, now: Millis) -> Vec<Cutoff> {
    cutoffs(&FINISHED, |state| retention.period(state), now)
}

/// Deletes every job due by `cutoffs` in batches of [`BATCH`], removing its files from
/// `state_dir`. Between two batches it calls `pause` with [`BATCH_PAUSE`], which returns
/// false to stop. When another connection is pruning, it gives up (`patient` false: that one
/// prunes for everybody) or pauses and tries again (`patient`). Returns what it removed so
/// far, and the error that ended it, if any.
fn prune_due(
    store: &mut dyn Store,
    cutoffs: &[Cutoff],
    state_dir: &Path,
    patient: bool,
    pause: &dyn Fn(Duration) -> bool,
) -> (Removed, Option<StoreError>) {
    let mut removed = Removed::default();
    if cutoffs.is_empty() {
        return (removed, None);
    }
    loop {
        match store.prune(cutoffs, BATCH) {
            Err(e) => return (removed, Some(e)),
            Ok(None) if !patient => return (removed, None),
            Ok(None) => {}
            Ok(Some(batch)) => {
                let bytes = batch
                    .jobs
                    .iter()
                    .map(|&id| remove_job_files(state_dir, id))
                    .sum();
                removed.add(Removed {
                    jobs: batch.jobs.len() as u64,
                    attempts: batch.attempts,
                    bytes,
                });
                if batch.jobs.len() < BATCH {
                    return (removed, None);
                }
            }
        }
        if !pause(BATCH_PAUSE) {
            return (removed, None);
        }
    }
}

/// The directory of job `id`'s attempts' output in `state_dir`.
fn job_dir(state_dir: &Path, id: JobId) -> PathBuf {
    attempts_dir(state_dir).join(id.to_string())
}

/// Job `id`'s attempt files in `state_dir` that exist: its directory, and the reports beside
/// it from its first attempt on, up to the first attempt that left none (a report of a later
/// one goes with the next [`sweep`]).
fn job_files(state_dir: &Path, id: JobId) -> Vec<PathBuf> {
    let dir = job_dir(state_dir, id);
    let reports = (1u32..)
        .map(|attempt| attempts_dir(state_dir).join(format!("{id}.{attempt}.report.json")))
        .take_while(|report| report.exists());
    std::iter::once(dir)
        .filter(|dir| dir.exists())
        .chain(reports)
        .collect()
}

/// Removes job `id`'s attempt files from `state_dir` ([`job_files`]); returns the bytes they
/// held (0 when there are none on this host). A file that cannot be removed is logged and
/// left.
fn remove_job_files(state_dir: &Path, id: JobId) -> u64 {
    job_files(state_dir, id)
        .iter()
        .map(|path| remove_entry(path, id))
        .sum()
}

/// The bytes of `path`, a file or a directory and everything in it (0 if it does not exist).
fn entry_bytes(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |meta| bytes_of(path, &meta))
}

/// The bytes of `path`, whose metadata is `meta`.
fn bytes_of(path: &Path, meta: &std::fs::Metadata) -> u64 {
    if meta.is_dir() {
        dir_bytes(path)
    } else {
        meta.len()
    }
}

/// Removes `path`, a file or a directory of job `id`'s attempt files, and everything in it;
/// returns the bytes it held (0 if it does not exist). One that cannot be removed is logged.
fn remove_entry(path: &Path, id: JobId) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let bytes = bytes_of(path, &meta);
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("cannot remove {} of pruned job {id}: {e}", path.display());
            0
        }
        _ => bytes,
    }
}

/// The bytes of the files under `dir` (0 if it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| entry.metadata().map_or(0, |meta| bytes_of(&entry.path(), &meta)))
        .sum()
}

/// The job whose attempt file `name` in `attempts/` is: its directory (`ID`), a report
/// (`ID.ATTEMPT.report.json`) or a worker's temporary one (`ID.ATTEMPT.report.json.PID.tmp`).
fn job_of_entry(name: &str) -> Option<JobId> {
    let id = name.split_once('.').map_or(name, |(id, _)| id);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: JobId = id.parse().ok()?;
    (id > 0).then_some(id)
}

/// Removes the files under `state_dir`'s `attempts/` of jobs `store` no longer has; returns
/// how many jobs' files it removed and their bytes (`attempts` is not counted: their rows are
/// gone). Entries not named like a job's are left alone.
fn sweep(store: &mut dyn Store, state_dir: &Path) -> Result<Removed, StoreError> {
    let mut removed = Removed::default();
    let Ok(entries) = std::fs::read_dir(attempts_dir(state_dir)) else {
        return Ok(removed);
    };
    let mut by_job: std::collections::BTreeMap<JobId, Vec<PathBuf>> = Default::default();
    for entry in entries.flatten() {
        if let Some(id) = entry.file_name().to_str().and_then(job_of_entry) {
            by_job.entry(id).or_default().push(entry.path());
        }
    }
    let ids: Vec<JobId> = by_job.keys().copied().collect();
    for chunk in ids.chunks(SWEEP_CHUNK) {
        let stored = store.existing_jobs(chunk)?;
        for &id in chunk.iter().filter(|id| stored.binary_search(id).is_err()) {
            removed.jobs += 1;
            for path in by_job.remove(&id).unwrap_or_default() {
                removed.bytes += remove_entry(&path, id);
            }
        }
    }
    Ok(removed)
}

/// The retention thread; it stops when this is dropped.
pub struct Service {
    _stop: Sender<()>,
}

/// Starts pruning `settings`' store by its `[retention]` periods from a thread of its own,
/// with the connection `store`: a round at once, then one every `retention.interval`.
pub fn start(settings: &Settings, mut store: Box<dyn Store>) -> std::io::Result<Service> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let (retention, state_dir) = (settings.retention, settings.state_dir.clone());
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            let go_on =
                |wait: Duration| matches!(stopped.recv_timeout(wait), Err(RecvTimeoutError::Timeout));
            let mut round: u32 = 0;
            loop {
                let cutoffs = configured(&retention, now_millis());
                let (pruned, error) = prune_due(&mut *store, &cutoffs, &state_dir, false, &go_on);
                if pruned.jobs > 0 {
                    tracing::info!(
                        "Pruned {} finished jobs ({} attempts, {} bytes of attempt files)",
                        pruned.jobs,
                        pruned.attempts,
                        pruned.bytes
                    );
                }
                if let Some(e) = error {
                    tracing::warn!("pruning finished jobs failed, trying again later: {e}");
                }
                if round.is_multiple_of(SWEEP_EVERY) {
                    match sweep(&mut *store, &state_dir) {
                        Ok(swept) if swept.jobs > 0 => tracing::info!(
                            "Removed the attempt files of {} pruned jobs ({} bytes)",
                            swept.jobs,
                            swept.bytes
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            "sweeping the attempt files of pruned jobs failed, trying again later: {e}"
                        ),
                    }
                }
                round = round.wrapping_add(1);
                if !go_on(retention.interval) {
                    return;
                }
            }
        })?;
    Ok(Service { _stop: stop })
}

/// What `jobhost prune` does.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// Prune the jobs finished longer ago than this, instead of each state's period.
    pub older_than: Option<Duration>,
    /// Only jobs in this state (one of [`FINISHED`]); all three if `None`.
    pub state: Option<JobState>,
    /// Only count what would be removed.
    pub dry_run: bool,
}

/// Prunes `settings`' store by hand: the jobs `request` names, each finished longer ago than
/// `older_than` or its state's period (a state kept forever is skipped then), with their
/// attempts and their files in this host's state directory. With `dry_run` it changes nothing
/// and says what it would remove.
pub fn prune_by_hand(settings: &Settings, request: &PruneRequest) -> Result<Removed, StoreError> {
    let states: Vec<JobState> = match request.state {
        Some(state) => vec![state],
        None => FINISHED.to_vec(),
    };
    let period = |state| match request.older_than {
        Some(age) => Some(age),
        None => settings.retention.period(state),
    };
    let cutoffs = cutoffs(&states, period, now_millis());
    let mut store = crate::store::open(&settings.store)?;
    if request.dry_run {
        let expired = store.expired(&cutoffs)?;
        return Ok(Removed {
            jobs: expired.jobs.len() as u64,
            attempts: expired.attempts,
            bytes: expired
                .jobs
                .iter()
                .flat_map(|&id| job_files(&settings.state_dir, id))
                .map(|path| entry_bytes(&path))
                .sum(),
        });
    }
    let sleep = |wait| {
        std::thread::sleep(wait);
        true
    };
    match prune_due(&mut *store, &cutoffs, &settings.state_dir, true, &sleep) {
        (removed, None) => Ok(removed),
        (_, Some(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{sqlite::SqliteStore, AttemptEnd, DispatcherInfo, NewJob, Next};

    fn job() -> NewJob {
        NewJob {
            spec: crate::job::JobSpec {
                class: "A".into(),
                method: "handle".into(),
                params: serde_json::json!({}),
                retries: 0,
                retry_delay: Duration::ZERO,
                priority: crate::job::Priority::Normal,
                delay: Duration::ZERO,
                timeout: Duration::from_secs(60),
            },
            plugin: "/p/liba.so".into(),
        }
    }

    /// A store in `dir` with `n` jobs completed at `at`, each with a 10-byte output file and a
    /// 2-byte report in `dir`'s `attempts/`.
    fn completed_jobs(dir: &Path, n: usize, at: Millis) -> (SqliteStore, Vec<JobId>) {
        let mut store = SqliteStore::open(&dir.join("jobs.sqlite3")).unwrap();
        let info = DispatcherInfo::this_process(1, dir);
        let me = store.register_dispatcher(&info, 0).unwrap();
        let ids = store.enqueue(&vec![job(); n], 0).unwrap();
        assert_eq!(store.claim(me, at, n).unwrap().len(), n);
        for &id in &ids {
            let end = AttemptEnd {
                finished_at: at,
                outcome: "ok".into(),
                error: None,
                output_bytes: 10,
            };
            store
                .settle(id, 1, &end, &Next::Complete(serde_json::json!(null)))
                .unwrap();
            std::fs::create_dir_all(job_dir(dir, id)).unwrap();
            std::fs::write(job_dir(dir, id).join("1.out"), "0123456789").unwrap();
            std::fs::write(attempts_dir(dir).join(format!("{id}.1.report.json")), "{}").unwrap();
        }
        (store, ids)
    }

    #[test]
    fn cutoffs_are_now_less_each_period_and_none_for_states_kept_forever() {
        let retention = RetentionSettings {
            completed: Some(Duration::from_secs(10)),
            failed: None,
            cancelled: Some(Duration::from_millis(1500)),
            interval: Duration::from_secs(1),
        };
        assert_eq!(
            configured(&retention, 100_000),
            [
                Cutoff {
                    state: JobState::Completed,
                    before: 90_000
                },
                Cutoff {
                    state: JobState::Cancelled,
                    before: 98_500
                },
            ]
        );
        let everything = cutoffs(&[JobState::Failed], |_| Some(Duration::MAX), 5);
        assert_eq!(everything[0].before, 5 - i64::MAX);
    }

    #[test]
    fn pruning_removes_the_jobs_files_in_batches_and_counts_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, ids) = completed_jobs(dir.path(), BATCH + 5, 1000);
        let pauses = std::cell::Cell::new(0);
        let pause = |_| {
            pauses.set(pauses.get() + 1);
            true
        };
        let cutoffs = cutoffs(&FINISHED, |_| Some(Duration::ZERO), 1001);
        let (removed, error) = prune_due(&mut store, &cutoffs, dir.path(), false, &pause);
        assert!(error.is_none(), "{error:?}");
        let n = ids.len() as u64;
        assert_eq!(
            removed,
            Removed {
                jobs: n,
                attempts: n,
                bytes: 12 * n
            }
        );
        assert_eq!(pauses.get(), 1, "two batches, one pause between");
        assert!(ids.iter().all(|&id| !job_dir(dir.path(), id).exists()));
        assert_eq!(
            std::fs::read_dir(attempts_dir(dir.path())).unwrap().count(),
            0,
            "the reports went with their jobs"
        );
        assert_eq!(store.stats().unwrap().by_state["completed"], 0);
    }

    #[test]
    fn the_sweep_removes_the_files_of_jobs_the_store_no_longer_has_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, ids) = completed_jobs(dir.path(), 3, 1000);
        // Jobs another host pruned: 7 with output and a report, 8 with a report and a
        // worker's leftover temporary one, 9 as an earlier jobhost kept it (the report in the
        // job's directory); and what is not a job's.
        let attempts = attempts_dir(dir.path());
        for gone in ["7", "9"] {
            std::fs::create_dir_all(attempts.join(gone)).unwrap();
            std::fs::write(attempts.join(gone).join("1.out"), "12345").unwrap();
        }
        std::fs::write(attempts.join("9").join("1.report.json"), "{}").unwrap();
        std::fs::write(attempts.join("7.1.report.json"), "{}").unwrap();
        std::fs::write(attempts.join("8.1.report.json"), "{}").unwrap();
        std::fs::write(attempts.join("8.2.report.json.4242.tmp"), "").unwrap();
        std::fs::create_dir_all(attempts.join("notes")).unwrap();
        std::fs::write(attempts.join("notes.1.report.json"), "{}").unwrap();
        let swept = sweep(&mut store, dir.path()).unwrap();
        assert_eq!(
            swept,
            Removed {
                jobs: 3,
                attempts: 0,
                bytes: 16
            }
        );
        assert!(ids.iter().all(|&id| job_dir(dir.path(), id).exists()));
        for gone in ["7", "9", "7.1.report.json", "8.1.report.json", "8.2.report.json.4242.tmp"] {
            assert!(!attempts.join(gone).exists(), "{gone}");
        }
        assert!(attempts.join("notes").exists());
        assert!(attempts.join("notes.1.report.json").exists());
        assert_eq!(sweep(&mut store, dir.path()).unwrap(), Removed::default());
    }
}
