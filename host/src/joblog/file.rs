//! The log files: one shared [`LogFile`] per path and process, which keeps the lines it could
//! not write (a full disk) and writes them first when it can, and the health of them all.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde::Serialize;
use serde_json::json;
use tracing::Level;

use crate::store::{now_millis, Millis};

use super::{context, render, PENDING_LINES_MAX};

/// Why the logs could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}")]
pub struct LogOpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// How the writing of this process's log files goes: a plain snapshot, for `jobhost stats`
/// and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogHealth {
    /// Writes that failed since the process started, over all its log files.
    pub failed_writes: u64,
    /// Lines given up on because the buffer of unwritten lines was full.
    pub dropped_lines: u64,
    /// Lines waiting in memory to be written.
    pub pending_lines: u64,
    /// The last write failure: the file and the error. Kept after the file recovers.
    pub last_error: Option<String>,
    /// When (ms since the epoch) the current failure began; `None` while every file writes.
    pub since: Option<Millis>,
}

/// The health of the writing of every log file of this process.
pub fn health() -> LogHealth {
    let mut health = LogHealth::default();
    let mut last_at = None;
    for file in registry().values() {
        let file = lock(file);
        health.failed_writes += file.failed_writes;
        health.dropped_lines += file.dropped_lines;
        health.pending_lines += file.pending.len() as u64;
        if let Some((at, error)) = &file.last_error {
            if last_at < Some(*at) {
                last_at = Some(*at);
                health.last_error = Some(format!("{}: {error}", file.path.display()));
            }
        }
        if let Some(episode) = &file.episode {
            health.since = Some(health.since.map_or(episode.since, |s| s.min(episode.since)));
        }
    }
    health
}

/// Opens every log file of this process again by its path — after logrotate renamed it away,
/// a new file — writes first what could not be written before, and logs `Log files reopened`.
pub fn reopen() {
    let files: Vec<Arc<Mutex<LogFile>>> = registry().values().cloned().collect();
    for file in files {
        let change = lock(&file).reopen(now_millis());
        report(change);
    }
    let context = context([
        ("pid", json!(std::process::id())),
        ("status", json!("reopened")),
    ]);
    tracing::info!(context = context.as_str(), "Log files reopened");
}

/// Every log file of this process, by path.
static FILES: Mutex<BTreeMap<PathBuf, Arc<Mutex<LogFile>>>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<PathBuf, Arc<Mutex<LogFile>>>> {
    FILES.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn lock(file: &Mutex<LogFile>) -> MutexGuard<'_, LogFile> {
    file.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared log file at `path`, opened (created) if this process has not opened it yet.
pub(super) fn shared(path: PathBuf, env: &str) -> Result<Arc<Mutex<LogFile>>, LogOpenError> {
    let mut files = registry();
    if let Some(file) = files.get(&path) {
        return Ok(Arc::clone(file));
    }
    let file =
        LogFile::open(path.clone(), env, PENDING_LINES_MAX).map_err(|source| LogOpenError {
            path: path.clone(),
            source,
        })?;
    let file = Arc::new(Mutex::new(file));
    files.insert(path, Arc::clone(&file));
    Ok(file)
}

/// One log file: its handle, the lines that could not be written yet, and how writing went.
pub(super) struct LogFile {
    path: PathBuf,
    /// The environment, for the lines this file writes itself (`Log lines dropped`).
    env: String,
    /// None after a failed (re)open: the next write opens the path.
    file: Option<File>,
    /// Unwritten lines, oldest first; the first may be the unwritten rest of a line.
    pending: VecDeque<Vec<u8>>,
    capacity: usize,
    failed_writes: u64,
    dropped_lines: u64,
    /// Dropped lines not yet marked in the file by a `Log lines dropped` line.
    unmarked_drops: u64,
    last_error: Option<(Millis, String)>,
    episode: Option<Episode>,
}

/// A run of failed writes of one file.
struct Episode {
    since: Millis,
    failed_writes: u64,
    dropped_lines: u64,
}

/// What a write changed about a file's health, for people (on stderr).
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// It could be written, and now cannot.
    Failing { path: PathBuf, error: String },
    /// It could not be written since `since`, and now can.
    Recovered {
        path: PathBuf,
        since: Millis,
        failed_writes: u64,
        dropped_lines: u64,
    },
}

impl LogFile {
    fn open(path: PathBuf, env: &str, capacity: usize) -> io::Result<Self> {
        let file = open_append(&path)?;
        Ok(Self {
            path,
            env: env.to_owned(),
            file: Some(file),
            pending: VecDeque::new(),
            capacity,
            failed_writes: 0,
            dropped_lines: 0,
            unmarked_drops: 0,
            last_error: None,
            episode: None,
        })
    }

    /// Writes what is pending, then `line`; keeps what cannot be written.
    pub(super) fn write(&mut self, line: &[u8], now: Millis) -> Option<Change> {
        if let Err(error) = self.write_pending(now) {
            self.keep(line);
            return self.failed(&error, now);
        }
        match self.write_out(line) {
            Ok(()) => self.recovered(),
            Err((written, error)) => {
                if written > 0 {
                    // The rest of a line begun: kept whatever the buffer holds, or the file
                    // would get half a line.
                    self.pending.push_back(line[written..].to_vec());
                } else {
                    self.keep(line);
                }
                self.failed(&error, now)
            }
        }
    }

    /// Opens the path again, and writes what is pending.
    fn reopen(&mut self, now: Millis) -> Option<Change> {
        self.file = None;
        match self.write_pending(now) {
            Ok(()) => self.recovered(),
            Err(error) => self.failed(&error, now),
        }
    }

    /// Writes the pending lines, then marks dropped ones; opens the file first if needed.
    fn write_pending(&mut self, now: Millis) -> io::Result<()> {
        self.file()?;
        while let Some(front) = self.pending.front() {
            match self.write_out(&front.clone()) {
                Ok(()) => {
                    self.pending.pop_front();
                }
                Err((written, error)) => {
                    if let Some(front) = self.pending.front_mut() {
                        front.drain(..written);
                    }
                    return Err(error);
                }
            }
        }
        if self.unmarked_drops > 0 {
            let since = self.episode.as_ref().map_or(now, |e| e.since);
            let line = dropped_line(&self.env, &self.path, self.unmarked_drops, since);
            let result = self.write_out(line.as_bytes());
            if let Err((written, _)) = &result {
                if *written == 0 {
                    return result.map_err(|(_, e)| e);
                }
                self.pending.push_back(line.as_bytes()[*written..].to_vec());
            }
            self.unmarked_drops = 0;
            return result.map_err(|(_, e)| e);
        }
        Ok(())
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))
    }

    /// Writes all of `bytes`, or says how much was written before the error.
    fn write_out(&mut self, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
        let file = self.file().map_err(|e| (0, e))?;
        let mut written = 0;
        while written < bytes.len() {
            match file.write(&bytes[written..]) {
                Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }

    /// Keeps `line` to write later, or counts it dropped when the buffer is full.
    fn keep(&mut self, line: &[u8]) {
        if self.pending.len() < self.capacity {
            self.pending.push_back(line.to_vec());
            return;
        }
        self.dropped_lines += 1;
        self.unmarked_drops += 1;
        if let Some(episode) = &mut self.episode {
            episode.dropped_lines += 1;
        }
    }

    fn failed(&mut self, error: &io::Error, now: Millis) -> Option<Change> {
        self.failed_writes += 1;
        self.last_error = Some((now, error.to_string()));
        let first = self.episode.is_none();
        let episode = self.episode.get_or_insert(Episode {
            since: now,
            failed_writes: 0,
            dropped_lines: 0,
        });
        episode.failed_writes += 1;
        first.then(|| Change::Failing {
            path: self.path.clone(),
            error: error.to_string(),
        })
    }

    fn recovered(&mut self) -> Option<Change> {
        let episode = self.episode.take()?;
        Some(Change::Recovered {
            path: self.path.clone(),
            since: episode.since,
            failed_writes: episode.failed_writes,
            dropped_lines: episode.dropped_lines,
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The `Log lines dropped` (WARNING) line that marks where `dropped` lines are missing.
fn dropped_line(env: &str, path: &Path, dropped: u64, since: Millis) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let context = context([
        ("dropped_lines", json!(dropped)),
        (
            "failing_since",
            json!(crate::shared::text::local_time(since)),
        ),
        ("status", json!("dropped")),
    ]);
    render(
        env,
        &Level::WARN,
        &format!("Log lines dropped: {file}"),
        Some(&context),
    )
}

/// Tells people on stderr that a log file stopped or started being written again.
pub(super) fn report(change: Option<Change>) {
    let message = match change {
        None => return,
        Some(Change::Failing { path, error }) => format!(
            "jobhost: cannot write log file {}: {error}; its lines are kept in memory (up to \
             {PENDING_LINES_MAX}) and written when it can be written again",
            path.display()
        ),
        Some(Change::Recovered {
            path,
            since,
            failed_writes,
            dropped_lines,
        }) => format!(
            "jobhost: log file {} is written again, after {failed_writes} failed writes since \
             {}; {dropped_lines} lines were dropped",
            path.display(),
            crate::shared::text::local_time(since).unwrap_or_default()
        ),
    };
    let _ = writeln!(io::stderr().lock(), "{message}");
}

// Every test here writes through `/dev/full`, which only Linux has.
#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use crate::joblog::{SpecFormatLayer, ERRORS_FILE, LOG_FILE};

    /// A log file at a path that is a symlink to `/dev/full`: every write fails with ENOSPC,
    /// as on a full disk (root included).
    fn full_disk_log(dir: &Path, capacity: usize) -> (PathBuf, LogFile) {
        let path = dir.join(LOG_FILE);
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let file = LogFile::open(path.clone(), "local", capacity).unwrap();
        (path, file)
    }

    #[test]
    fn a_log_file_that_cannot_be_written_keeps_its_lines_and_writes_them_first_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = full_disk_log(dir.path(), 10);
        let Some(Change::Failing { error, .. }) = file.write(b"one\n", 1_000) else {
            panic!("the first failure is reported")
        };
        assert!(error.contains("No space left on device"), "{error}");
        assert_eq!(
            file.write(b"two\n", 2_000),
            None,
            "reported once per episode"
        );
        assert_eq!((file.failed_writes, file.pending.len()), (2, 2));
        assert_eq!(file.episode.as_ref().map(|e| e.since), Some(1_000));

        // The disk has room again: the path is a file that can be written.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            file.reopen(3_000),
            Some(Change::Recovered {
                path: path.clone(),
                since: 1_000,
                failed_writes: 2,
                dropped_lines: 0
            })
        );
        assert_eq!(file.write(b"three\n", 4_000), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
        assert!(file.pending.is_empty() && file.episode.is_none());
        assert_eq!(file.failed_writes, 2, "counted for good");
    }

    #[test]
    fn lines_beyond_the_buffer_are_counted_dropped_and_the_gap_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = full_disk_log(dir.path(), 2);
        for line in ["1\n", "2\n", "3\n", "4\n", "5\n"] {
            file.write(line.as_bytes(), 1_000);
        }
        assert_eq!((file.pending.len(), file.dropped_lines), (2, 3));

        // Recovery by the next write rather than a reopen: the path now names a file.
        std::fs::remove_file(&path).unwrap();
        file.file = None;
        let Some(Change::Recovered { dropped_lines, .. }) = file.write(b"6\n", 2_000) else {
            panic!("recovery is reported")
        };
        assert_eq!(dropped_lines, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!((lines[0], lines[1], lines[3]), ("1", "2", "6"));
        assert!(
            lines[2].contains(
                "local.WARNING: Log lines dropped: background_jobs.log {\"dropped_lines\":3,"
            ),
            "{text}"
        );
    }

    #[test]
    fn health_sums_the_files_of_the_process_and_says_since_when_they_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(ERRORS_FILE)).unwrap();
        let layer = SpecFormatLayer::open(dir.path(), "production").unwrap();
        assert_eq!(health(), LogHealth::default());
        tracing::dispatcher::with_default(&layer.into_dispatch(), || {
            tracing::info!("fine");
            tracing::error!("not in the errors file");
            tracing::error!("nor this");
        });
        let health = health();
        assert_eq!(
            (
                health.failed_writes,
                health.pending_lines,
                health.dropped_lines
            ),
            (2, 2, 0)
        );
        assert!(health.since.is_some());
        let error = health.last_error.unwrap();
        assert!(
            error.contains(ERRORS_FILE) && error.contains("No space left on device"),
            "{error}"
        );
        let main = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(main.lines().count(), 3, "the main file is written: {main}");
    }
}
