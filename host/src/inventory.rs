//! The plugin inventory: every library file in the plugin directory, with the classes it
//! offers or the one-line reason it was rejected.
//!
//! Each file is inspected in its own child process (`dlopen` runs the library's constructors,
//! which may crash or hang), several at a time. A library file is one whose name ends in the
//! platform's suffix (`.so`, `.dll`, `.dylib`); hidden files and other names are not plugins
//! and are skipped. When two files offer the same class, the first in file-name order wins.
//! Verdicts are remembered in the state directory per file version (size, modification time,
//! inode), so only new or changed files are inspected again.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::Serialize;

use crate::{
    platform::{self, CancelToken, ExitKind, OutputPair, OutputSink, SuperviseOptions},
    protocol::{read_report, ClassEntry, InspectReport, InspectRequest, PROTOCOL_VERSION},
    settings::Settings,
};

/// Where the inventory remembers what it found, per file version, in the state directory.
const CACHE_FILE: &str = "inventory.json";

/// One remembered inspection: a file's verdict for the version with this stamp.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct CachedFile {
    stamp: FileStamp,
    file: PluginFile,
}

/// The library files in `dir`, in name order, with their stamps.
pub fn library_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, FileStamp)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_library =
            name.is_some_and(|n| !n.starts_with('.') && n.ends_with(std::env::consts::DLL_SUFFIX));
        if is_library && !path.is_dir() {
            // A file that vanished since the listing is simply not there any more.
            if let Ok(stamp) = FileStamp::of(&path) {
                files.push((path, stamp));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// The hidden subcommand that inspects one plugin file.
pub const INSPECT_SUBCOMMAND: &str = "__inspect";

/// How long inspecting one file may take before it is rejected as hanging.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the inventory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The plugin directory cannot be listed.
    #[error("cannot read plugin directory {dir}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The inspector could not run.
    #[error("cannot inspect plugin {path}")]
    Inspect {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What one file in the plugin directory is.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// A usable plugin.
    Plugin {
        /// The job-sdk version it was built with.
        sdk_version: String,
        /// Its classes.
        classes: Vec<ClassEntry>,
    },
    /// Not usable.
    Rejected {
        /// Why, in one line.
        reason: String,
    },
}

/// One file of the plugin directory.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginFile {
    /// Its path.
    pub path: PathBuf,
    /// The BLAKE3 hash of its content, hex (empty when unreadable).
    pub hash: String,
    /// What it is.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// The plugin directory, inspected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    /// The directory.
    pub dir: PathBuf,
    /// Its library files, in name order.
    pub files: Vec<PluginFile>,
}

/// Where a class is offered.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// The file.
    pub file: &'a PluginFile,
    /// The class.
    pub class: &'a ClassEntry,
}

impl PluginFile {
    /// The file's name, for display (the whole path if it has none).
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

impl Inventory {
    /// Inspects every library file in `settings.plugin_dir`.
    pub fn scan(settings: &Settings) -> Result<Self, InventoryError> {
        let dir = &settings.plugin_dir;
        let read_dir = |source| InventoryError::ReadDir {
            dir: dir.clone(),
            source,
        };
        let stamped = library_files(dir).map_err(read_dir)?;
        let cache_path = settings.state_dir.join(CACHE_FILE);
        let cache: Vec<CachedFile> = std::fs::read(&cache_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let files = std::thread::scope(|scope| {
            let tasks: Vec<_> = stamped
                .iter()
                .map(|(path, stamp)| {
                    let cached = cache
                        .iter()
                        .find(|c| c.file.path == *path && c.stamp == *stamp)
                        .map(|c| c.file.clone());
                    scope.spawn(move || match cached {
                        Some(file) => Ok(file),
                        None => inspect_file(settings, path),
                    })
                })
                .collect();
            tasks
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let fresh: Vec<CachedFile> = stamped
            .iter()
            .zip(&files)
            .map(|((_, stamp), file)| CachedFile {
                stamp: *stamp,
                file: file.clone(),
            })
            .collect();
        if fresh != cache {
            // A cache that cannot be written only costs the next scan its speed.
            let _ = std::fs::create_dir_all(&settings.state_dir)
                .and_then(|()| crate::protocol::write_report(&cache_path, &fresh));
        }
        Ok(Self {
            dir: dir.clone(),
            files,
        })
    }

    /// The file offering `class`: the first in name order when several do.
    pub fn find(&self, class: &str) -> Option<Offer<'_>> {
        self.files.iter().find_map(|file| match &file.status {
            FileStatus::Plugin { classes, .. } => classes
                .iter()
                .find(|c| c.name == class)
                .map(|class| Offer { file, class }),
            FileStatus::Rejected { .. } => None,
        })
    }
}

fn inspect_file(settings: &Settings, path: &Path) -> Result<PluginFile, InventoryError> {
    let rejected = |hash: String, reason: String| PluginFile {
        path: path.to_path_buf(),
        hash,
        status: FileStatus::Rejected { reason },
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(rejected(String::new(), format!("unreadable: {e}"))),
    };
    let hash = blake3::hash(&bytes).to_hex().to_string();
    if bytes.is_empty() {
        return Ok(rejected(hash, "empty file".into()));
    }
    drop(bytes);

    let io = |source| InventoryError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let dir = settings.state_dir.join("inspect");
    std::fs::create_dir_all(&dir).map_err(io)?;
    let stem = format!("{}-{}", std::process::id(), &hash[..16]);
    let report_path = dir.join(format!("{stem}.json"));
    let request = InspectRequest {
        protocol: PROTOCOL_VERSION,
        plugin: path.to_path_buf(),
        report: report_path.clone(),
    };
    let mut command = Command::new(crate::attempt::jobhost_program());
    command
        .arg(INSPECT_SUBCOMMAND)
        .arg(serde_json::to_string(&request).map_err(|e| io(e.into()))?)
        .env("RUST_BACKTRACE", "0");
    let options = SuperviseOptions {
        timeout: INSPECT_TIMEOUT,
        kill_grace: settings.limits.kill_grace,
    };
    let never = CancelToken::new().map_err(io)?;
    let output = OutputPair::pipe().map_err(io)?;
    let end = platform::supervise(command, output, options, &never, &mut Discard, &mut |_| {})
        .map_err(io)?;
    let report: Option<InspectReport> = read_report(&report_path).map_err(io)?;
    let _ = std::fs::remove_file(&report_path);
    let status = match (report, end.stopped, end.exit) {
        (
            Some(InspectReport::Plugin {
                sdk_version,
                classes,
                ..
            }),
            _,
            _,
        ) => FileStatus::Plugin {
            sdk_version,
            classes,
        },
        (Some(InspectReport::Rejected { reason, .. }), _, _) => FileStatus::Rejected { reason },
        (None, Some(_), _) => FileStatus::Rejected {
            reason: format!(
                "loading it hung for over {}",
                crate::text::secs(INSPECT_TIMEOUT)
            ),
        },
        (None, None, ExitKind::Signaled(signal)) => FileStatus::Rejected {
            reason: format!(
                "loading it crashed the process: {}",
                platform::crash_name(signal)
            ),
        },
        (None, None, ExitKind::Exited(code)) => FileStatus::Rejected {
            reason: format!("loading it ended the process with code {code}"),
        },
    };
    Ok(PluginFile {
        path: path.to_path_buf(),
        hash,
        status,
    })
}

/// What a library prints while being inspected is of no use: its verdict is the report.
struct Discard;

impl OutputSink for Discard {
    fn write(&mut self, _: &[u8]) {}
}

/// Plugin file hashes, recomputed only when a file's size, modification time or inode changes.
#[derive(Debug, Default)]
pub struct PluginHashes {
    known: std::collections::HashMap<PathBuf, (FileStamp, String)>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FileStamp {
    len: u64,
    modified_ns: i128,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Self {
            len: meta.len(),
            modified_ns,
            inode,
        })
    }
}

impl PluginHashes {
    /// The BLAKE3 hash of the file at `path`, hex; empty if it cannot be read.
    pub fn hash(&mut self, path: &Path) -> String {
        let Ok(stamp) = FileStamp::of(path) else {
            return String::new();
        };
        if let Some((known, hash)) = self.known.get(path) {
            if *known == stamp {
                return hash.clone();
            }
        }
        let hash = std::fs::read(path)
            .map(|bytes| blake3::hash(&bytes).to_hex().to_string())
            .unwrap_or_default();
        self.known.insert(path.to_path_buf(), (stamp, hash.clone()));
        hash
    }
}
