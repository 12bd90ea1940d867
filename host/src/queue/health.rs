//! The dispatcher's health as other processes see it: what keeps it from its work right now
//! (a job database that cannot be used, workers that cannot be started, log files that cannot
//! be written), with since when and the last error.
//!
//! The dispatcher keeps it in `dispatcher.health` in the state directory, a file of fixed size
//! that it allocates when it starts and then only overwrites in place. So the report still
//! reaches `jobhost stats` and the dashboard when the state disk is full, which is one of the
//! troubles it reports. Readers take it as the truth only while a dispatcher holds the state
//! directory's lock (see [`crate::platform::FileLock::is_held`]).

use std::{
    fs::File,
    io::{Seek, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::store::Millis;

/// The health a dispatcher reports in `file` while it holds the state directory's `lock`:
/// none when no dispatcher holds it (a file left by one that was killed says nothing).
pub fn current(lock: &Path, file: &Path) -> Option<Health> {
    if !crate::platform::FileLock::is_held(lock) {
        return None;
    }
    HealthFile::read(file)
}

/// The health file's size: every write fits in it, so none needs new space on the disk.
const SIZE: usize = 8 * 1024;

/// The longest error text kept per problem, so that a report always fits in [`SIZE`].
const MAX_ERROR: usize = 1024;

/// What a running dispatcher reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The dispatcher's pid.
    pub pid: u32,
    /// When it last changed.
    pub updated_at: Millis,
    /// What is wrong now; empty when all is well.
    pub problems: Vec<Problem>,
}

/// One ongoing problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What does not work, e.g. "the job database cannot be used".
    pub what: String,
    /// Since when.
    pub since: Millis,
    /// The last error.
    pub error: String,
}

impl Problem {
    /// `what` has failed since `since`, last with `error` (cut to a bounded length).
    pub fn new(what: &str, since: Millis, error: &str) -> Self {
        let mut error = error.to_owned();
        if error.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
            error.push('…');
        }
        Self {
            what: what.to_owned(),
            since,
            error,
        }
    }
}

/// The dispatcher's health file, allocated once and overwritten in place.
#[derive(Debug)]
pub struct HealthFile {
    file: File,
}

impl HealthFile {
    /// Creates (or takes over) the health file at `path` and allocates its space.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        file.set_len(0)?;
        // Written, not only sized: a sparse file would need space at the first real write.
        file.write_all(&[b' '; SIZE])?;
        Ok(Self { file })
    }

    /// Replaces what the file says with `health`.
    pub fn write(&mut self, health: &Health) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(health)?;
        if bytes.len() > SIZE {
            // Too many problems to list: keep the first ones.
            let mut fewer = health.clone();
            while bytes.len() > SIZE && !fewer.problems.is_empty() {
                fewer.problems.pop();
                bytes = serde_json::to_vec(&fewer)?;
            }
        }
        bytes.resize(SIZE, b' ');
        self.file.rewind()?;
        self.file.write_all(&bytes)
    }

    /// What the health file at `path` says, if it exists and reads.
    pub fn read(path: &Path) -> Option<Health> {
        let text = crate::shared::files::read_capped_text(
            path,
            crate::shared::files::MAX_STATE_FILE_BYTES,
            "a health file",
        )
        .ok()?;
        serde_json::from_str(text.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_report_is_read_back_as_written_and_never_grows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.health");
        let mut file = HealthFile::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        let sick = Health {
            pid: 7,
            updated_at: 1_000,
            problems: vec![Problem::new("the job database cannot be used", 900, "busy")],
        };
        file.write(&sick).unwrap();
        assert_eq!(HealthFile::read(&path), Some(sick));
        let huge = Health {
            pid: 7,
            updated_at: 2_000,
            problems: (0..50)
                .map(|n| Problem::new(&format!("problem {n}"), 0, &"é".repeat(4000)))
                .collect(),
        };
        file.write(&huge).unwrap();
        let read = HealthFile::read(&path).unwrap();
        assert!(!read.problems.is_empty() && read.problems.len() < 50);
        assert!(read.problems[0].error.len() <= MAX_ERROR + '…'.len_utf8());
        file.write(&Health::default()).unwrap();
        assert_eq!(HealthFile::read(&path), Some(Health::default()));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
    }
}
