//! The messages between the host and its short-lived child processes, as plain data.
//!
//! The host starts a child with one JSON request on its command line; the child writes one
//! JSON report to the file the request names (written to a temporary name, then renamed, so a
//! report is either whole or absent). Plugin code shares the child's stdout and stderr, never
//! the report file, so nothing a job prints can forge or corrupt its outcome. Every message
//! carries [`PROTOCOL_VERSION`]; fields a newer peer adds are ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of this protocol; a child refuses a request with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The hidden subcommand that runs a worker: one attempt of one job.
pub const WORKER_SUBCOMMAND: &str = "__worker";

/// The hidden subcommand that inspects one plugin file: the inspector, which runs the
/// [`LOAD_SUBCOMMAND`] child and ends whatever it started.
pub const INSPECT_SUBCOMMAND: &str = "__inspect";

/// The hidden subcommand the inspector runs to load the file and list its classes.
pub const LOAD_SUBCOMMAND: &str = "__inspect-load";

/// The hidden subcommand that runs the fork server, which forks a worker for each request
/// the dispatcher sends it (`runner = "fork"`).
pub const ZYGOTE_SUBCOMMAND: &str = "__zygote";

/// Host → worker: run one attempt of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRequest {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The job's id.
    pub job_id: String,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The class to run.
    pub class: String,
    /// The method to run.
    pub method: String,
    /// The params: an object (named), an array (positional) or null.
    pub params: Value,
    /// The plugin library to load.
    pub plugin: PathBuf,
    /// The allowlist to check before loading anything.
    pub allowlist: PathBuf,
    /// The allowlist file messages name, when `allowlist` is the copy of it in force.
    #[serde(default)]
    pub allowlist_file: Option<PathBuf>,
    /// Where to write the [`WorkerReport`].
    pub report: PathBuf,
    /// What the worker opens for reading and keeps open, so that its output survives a
    /// restart of its supervisor: its own stdout pipe (`/proc/self/fd/1` on Linux; see
    /// `platform::HELD_OUTPUT`).
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Whether the worker must wait for its supervisor's go-ahead on stdin before it loads
    /// anything: one byte `g` once the supervisor has recorded the worker's pid durably. End
    /// of input without it means the supervisor is gone (or gave up on the attempt), and the
    /// worker reports [`FailureKind::NotStarted`] without running any plugin code. So an
    /// attempt whose pid was never recorded is known never to have run.
    #[serde(default)]
    pub gate: bool,
}

/// The byte a supervisor writes to a gated worker's stdin to let it start (the platform's
/// supervisor writes it; it is part of the contract all the same).
pub use crate::platform::GO;

/// Host → inspector: list the classes of one plugin file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectRequest {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The library to inspect.
    pub plugin: PathBuf,
    /// Where to write the [`InspectReport`].
    pub report: PathBuf,
    /// How long loading the library may take, in milliseconds, before the inspector stops it
    /// and reports [`InspectReport::Hung`].
    pub timeout_ms: u64,
}

/// Why an attempt did not produce a result, as the worker saw it (the job's domain names the
/// kinds; the report carries one).
pub use crate::job::outcome::FailureKind;

/// Worker → host: how the attempt ended inside the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WorkerReport {
    /// The method returned this result.
    Ok {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The method's JSON result.
        result: Value,
    },
    /// The attempt failed.
    Error {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// What kind of failure.
        kind: FailureKind,
        /// The error message.
        message: String,
    },
}

/// One method as listed by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodEntry {
    /// The method's name.
    pub name: String,
    /// Its one-line description.
    pub doc: String,
    /// The params it declares, in order, when it does (see `job_sdk::PARAMS_QUERY`):
    /// jobs are checked against them when they are requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<job_sdk::Param>>,
}

/// One class as listed by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassEntry {
    /// The class name.
    pub name: String,
    /// Its one-line description.
    pub doc: String,
    /// Its methods.
    pub methods: Vec<MethodEntry>,
}

/// Inspector → host: what one plugin file offers, or why it is not usable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum InspectReport {
    /// A loadable plugin.
    Plugin {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The job-sdk version it was built against.
        sdk_version: String,
        /// Its classes.
        classes: Vec<ClassEntry>,
        /// Whether it declares that loading it is safe before a fork (`job_sdk::export_plugin!`'s
        /// `#[fork_safe]`): the fork server may then load it before forking its workers.
        #[serde(default)]
        fork_safe: bool,
    },
    /// Not a usable plugin.
    Rejected {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// One line saying why.
        reason: crate::runner::reason::Reason,
    },
    /// Loading the library did not end within the request's timeout, and was stopped: no
    /// verdict on the file (a loaded machine can make a good plugin slow).
    Hung {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// The inspection itself failed (its report could not be written, the loading process
    /// could not be started, ...): no verdict on the file.
    Failed {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// One line saying what went wrong.
        reason: String,
    },
}

/// Writes `message` as JSON to `path` atomically: a temporary file in the same directory,
/// renamed over `path`, so a reader sees the whole report or none.
pub fn write_report<T: Serialize>(path: &Path, message: &T) -> std::io::Result<()> {
    crate::shared::files::write_atomically(path, &serde_json::to_vec(message)?)
}

/// A report's file, its space taken before the job runs: a job that ends while the disk is
/// full still has its report, so its outcome is never lost (and a success never run again).
/// Written like [`write_report`]: into a temporary file of [`ReservedReport::SIZE`] bytes,
/// then renamed over the report's path.
#[derive(Debug)]
pub struct ReservedReport {
    tmp: PathBuf,
    path: PathBuf,
    file: std::fs::File,
}

impl ReservedReport {
    /// The space taken for a report. A larger one is written if the disk has room; on a full
    /// disk it is replaced by a shorter one that fits (see [`ReservedReport::write`]).
    pub const SIZE: usize = 64 * 1024;

    /// Takes the space for the report at `path`.
    pub fn reserve(path: &Path) -> std::io::Result<Self> {
        let tmp = crate::shared::files::temporary_beside(path);
        let mut file = std::fs::File::create(&tmp)?;
        if let Err(e) = Self::take_space(&mut file) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Self {
            tmp,
            path: path.to_path_buf(),
            file,
        })
    }

    /// Takes [`ReservedReport::SIZE`] bytes of disk for `file`: allocated, not only sized (a
    /// sparse file would need its space at the real write). `fallocate` where the file system
    /// has it, which takes the blocks without writing them; else written.
    fn take_space(file: &mut std::fs::File) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        match rustix::fs::fallocate(
            &*file,
            rustix::fs::FallocateFlags::empty(),
            0,
            Self::SIZE as u64,
        ) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
        std::io::Write::write_all(file, &[b' '; Self::SIZE])
    }

    /// Writes `report` and puts it in place. When it does not fit the space taken and the
    /// disk has no room for the rest, `shorter` makes one that fits from the error (a
    /// success stays a success, its result replaced by a note).
    pub fn write<T: Serialize>(
        mut self,
        report: &T,
        shorter: impl FnOnce(String) -> T,
    ) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let bytes = serde_json::to_vec(report)?;
        self.file.rewind()?;
        let whole = self.file.write_all(&bytes);
        let bytes = match whole {
            Ok(()) => bytes,
            Err(e) => {
                let note = format!(
                    "the report ({} bytes) could not be written in full: {e}",
                    bytes.len()
                );
                let mut bytes = serde_json::to_vec(&shorter(note))?;
                bytes.truncate(Self::SIZE);
                self.file.rewind()?;
                self.file.write_all(&bytes)?;
                bytes
            }
        };
        self.file.set_len(bytes.len() as u64)?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.path)
    }
}

/// Reads a report written by [`write_report`]; `Ok(None)` when there is none. At most
/// [`crate::shared::files::MAX_REPORT_BYTES`] are read, and only from a regular file.
pub fn read_report<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match crate::shared::files::read_capped(
        path,
        crate::shared::files::MAX_REPORT_BYTES,
        "a report",
    ) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
