//! The plugin inventory: every library file in the plugin directory, with the classes it
//! offers or the one-line reason it was rejected, and the version of it that serves new jobs.
//!
//! Jobs never run from the plugin directory itself: a file overwritten in place while a worker
//! has it mapped kills that worker. A new or changed file is copied into a content-addressed
//! snapshot (`<state>/plugins/snapshots/<blake3>.so`, read-only) and the copy is inspected in
//! a child process (`dlopen` runs the library's constructors, which may crash or hang) — but
//! only once [`plugin_file`](crate::catalog::plugin_file) has looked at it without loading it: what
//! kind of file it is, its size, its headers and its exports. A good
//! copy becomes the file's *active version*, the one new jobs of its classes run; a bad one
//! (not a plugin, another SDK, half written) is reported once and the previous version keeps
//! serving; so does a name that is no usable file at all (a dangling link, a directory): only
//! removing the name takes its classes offline. Every entry whose name ends in the platform's
//! suffix (`.so`, `.dll`, `.dylib`) is listed, whatever it is; hidden names and other names are
//! skipped. When two files offer the same class,
//! the first in file-name order wins and a warning names both.
//!
//! The result is the *catalog* (`<state>/plugins/catalog.json`), shared by every process of a
//! state directory: whoever notices a change first (the dispatcher's watcher, an enqueuer)
//! updates it under a lock, and a file whose size, modification time and inode did not change
//! is never read again. The allowlist is kept the same way: its last valid version is copied
//! into the catalog directory, and an invalid edit leaves it in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

pub use super::inspection::FileStatus;
use super::inspection::{in_parallel, inspect_file, take_snapshot, Inspection};
use crate::{
    catalog::plugin_file::Candidate,
    config::allowlist::{Allowlist, AllowlistError},
    config::settings::Settings,
    joblog,
    platform::{self},
    runner::protocol::{read_report, write_report, ClassEntry},
    runner::reason::Reason,
    store::{now_millis, Millis},
};

/// The files of the catalog, under the state directory.
#[derive(Debug, Clone)]
pub struct CatalogPaths {
    /// The catalog itself.
    pub catalog: PathBuf,
    /// Held while the catalog is brought up to date.
    pub lock: PathBuf,
    /// The content-addressed plugin snapshots.
    pub snapshots: PathBuf,
    /// The allowlist in force: the last valid version of the allowlist file.
    pub allowlist: PathBuf,
}

impl CatalogPaths {
    /// The paths under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join("plugins");
        Self {
            catalog: dir.join("catalog.json"),
            lock: dir.join("catalog.lock"),
            snapshots: dir.join("snapshots"),
            allowlist: dir.join("allowlist.toml"),
        }
    }

    /// The snapshot of the content with BLAKE3 hash `hash`.
    pub fn snapshot(&self, hash: &str) -> PathBuf {
        self.snapshots
            .join(format!("{hash}{}", std::env::consts::DLL_SUFFIX))
    }
}

/// The entries of `dir` named like libraries, in name order, with their stamps: every one,
/// whatever it is (a directory, a named pipe, a dangling link), so that each is listed with
/// what it is.
pub fn library_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, FileStamp)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_library_name(&path) {
            // A file that vanished since the listing is simply not there any more.
            if let Ok(stamp) = FileStamp::of(&path) {
                files.push((path, stamp));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Whether `path` is named like a plugin library: the platform's suffix, not hidden.
pub fn is_library_name(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| !n.starts_with('.') && n.ends_with(std::env::consts::DLL_SUFFIX))
}

/// How long a file whose loading hung is left alone before it is inspected again, unless it
/// changes first: so a hanging file costs `limits.inspect_timeout` once per period, not on
/// every refresh (every `jobhost run`).
pub const HUNG_RETRY: Duration = Duration::from_secs(10 * 60);

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
    /// The catalog's files in the state directory cannot be written.
    #[error("cannot update the plugin catalog in {dir}")]
    Catalog {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl InventoryError {
    /// Whether the plugin directory the settings name does not exist: bad input (a setting
    /// naming nothing), not a failure of jobhost's.
    pub fn is_missing_dir(&self) -> bool {
        matches!(self, Self::ReadDir { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A good version of a plugin file, snapshotted: what new jobs of its classes run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Version {
    /// The BLAKE3 hash of its content, hex.
    pub hash: String,
    /// Its snapshot, which workers load.
    pub snapshot: PathBuf,
    /// When it became active (ms since the epoch).
    pub since: Millis,
    /// The job-sdk version it was built with.
    pub sdk_version: String,
    /// Its classes.
    pub classes: Vec<ClassEntry>,
    /// Whether it declares that loading it is safe before a fork.
    #[serde(default)]
    pub fork_safe: bool,
}

impl Version {
    /// The names of its classes.
    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }
}

/// One file of the plugin directory.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginFile {
    /// Its path.
    pub path: PathBuf,
    /// The BLAKE3 hash of its current content, hex (empty when unreadable).
    pub hash: String,
    /// What its current content is.
    #[serde(flatten)]
    pub status: FileStatus,
    /// The version serving its classes: the current content when that is a good plugin,
    /// else the last good one (if any).
    pub active: Option<Version>,
    /// When the verdict is provisional, not the file's own: when jobhost failed to inspect it
    /// (examined again at the next refresh) or loading it hung (examined again when it changes
    /// or [`HUNG_RETRY`] after). The time, in ms since the epoch, from which it is examined
    /// again even unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    /// The version of the file this entry describes.
    stamp: FileStamp,
}

/// The allowlist in force.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AllowlistState {
    /// The allowlist file.
    pub path: PathBuf,
    /// The BLAKE3 hash of the version in force (empty when none was ever valid).
    pub hash: String,
    /// When that version came into force.
    pub since: Millis,
    /// Why the file as it is now is not in force, when it is not.
    pub error: Option<String>,
    /// Whether the file does not exist: then no version is in force, and nothing is approved.
    #[serde(default)]
    pub missing: bool,
    /// How many classes the version in force approves.
    #[serde(default)]
    pub classes: usize,
    /// The version of the file this describes.
    stamp: Option<FileStamp>,
}

/// The plugin directory, inspected: the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Inventory {
    /// The directory.
    pub dir: PathBuf,
    /// Its library files, in name order.
    pub files: Vec<PluginFile>,
    /// The allowlist in force.
    pub allowlist: Option<AllowlistState>,
}

/// A class and the version serving it (`jobhost plugins`, the dashboard).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveClass<'a> {
    /// The class.
    pub class: &'a str,
    /// The plugin file whose version serves it.
    pub file: &'a Path,
    /// That version's hash.
    pub hash: &'a str,
    /// Since when it serves (ms since the epoch).
    pub since: Millis,
    /// Its methods.
    pub methods: Vec<&'a str>,
}

/// The catalog as `jobhost plugins --json` and `GET /api/plugins` show it.
#[derive(Debug, Serialize)]
pub struct Listing<'a> {
    /// The catalog.
    #[serde(flatten)]
    pub inventory: &'a Inventory,
    /// Every class with the version serving it.
    pub classes: Vec<ActiveClass<'a>>,
}

impl<'a> From<&'a Inventory> for Listing<'a> {
    fn from(inventory: &'a Inventory) -> Self {
        Self {
            inventory,
            classes: inventory.classes(),
        }
    }
}

/// Where a class is offered.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// The file.
    pub file: &'a PluginFile,
    /// Its version serving the class.
    pub version: &'a Version,
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
    /// Brings the catalog up to date with the plugin directory and the allowlist file, and
    /// returns it. Changes are logged: a version coming into force, a file rejected (with the
    /// version that keeps serving), a file removed, a class offered twice, the allowlist
    /// reloaded or rejected.
    pub fn refresh(settings: &Settings) -> Result<Self, InventoryError> {
        let paths = CatalogPaths::new(&settings.state_dir);
        let catalog_error = |source| InventoryError::Catalog {
            dir: paths.snapshots.clone(),
            source,
        };
        crate::shared::files::create_private_dir(&paths.snapshots).map_err(catalog_error)?;
        let _lock = platform::FileLock::acquire(&paths.lock).map_err(catalog_error)?;
        let old = Self::read(&paths.catalog).filter(|old| old.dir == settings.plugin_dir);
        let stamped =
            library_files(&settings.plugin_dir).map_err(|source| InventoryError::ReadDir {
                dir: settings.plugin_dir.clone(),
                source,
            })?;
        let known = |path: &Path| {
            old.as_ref()
                .and_then(|old| old.files.iter().find(|f| f.path == path))
        };
        let now = now_millis();
        let files = in_parallel(&stamped, |(path, stamp)| {
            let previous = known(path);
            // A file rejected unread (for what it is, its size, its headers) is looked at
            // again: that costs a `stat` and its headers, and settings such as
            // `limits.max_plugin_bytes` may have changed.
            match previous {
                Some(file)
                    if file.stamp == *stamp
                        && !file.hash.is_empty()
                        && file.retry_at.is_none_or(|at| now < at) =>
                {
                    file.clone()
                }
                _ => examine(settings, &paths, path, *stamp, previous, old.as_ref()),
            }
        });
        let allowlist = refresh_allowlist(
            settings,
            &paths,
            old.as_ref().and_then(|o| o.allowlist.as_ref()),
        )
        .map_err(catalog_error)?;
        let fresh = Self {
            dir: settings.plugin_dir.clone(),
            files,
            allowlist: Some(allowlist),
        };
        if old.as_ref() != Some(&fresh) {
            log_changes(old.as_ref(), &fresh);
            write_report(&paths.catalog, &fresh).map_err(catalog_error)?;
        }
        Ok(fresh)
    }

    /// The catalog as last written, without looking at the plugin directory.
    pub fn read(catalog: &Path) -> Option<Self> {
        read_report(catalog).ok().flatten()
    }

    /// The file offering `class` in its active version: the first in name order when several
    /// do.
    pub fn find(&self, class: &str) -> Option<Offer<'_>> {
        self.files.iter().find_map(|file| {
            let version = file.active.as_ref()?;
            version
                .classes
                .iter()
                .find(|c| c.name == class)
                .map(|class| Offer {
                    file,
                    version,
                    class,
                })
        })
    }

    /// Every class offered by active versions of different content, with the files offering
    /// it in name order (the first serves). Files with the same content (two copies of one
    /// build, the usual `libfoo.so -> libfoo-1.0.so` link) are no conflict: whichever serves,
    /// the same code runs.
    pub fn conflicts(&self) -> BTreeMap<&str, Vec<&PluginFile>> {
        let mut offered: BTreeMap<&str, Vec<&PluginFile>> = BTreeMap::new();
        for file in &self.files {
            for class in file.active.iter().flat_map(|v| &v.classes) {
                offered.entry(class.name.as_str()).or_default().push(file);
            }
        }
        let hash = |file: &PluginFile| file.active.as_ref().map(|v| v.hash.clone());
        offered.retain(|_, files| files.iter().map(|f| hash(f)).collect::<BTreeSet<_>>().len() > 1);
        offered
    }

    /// The allowlist in force, read from its copy in the catalog, with errors naming the
    /// allowlist file (never the copy). When no version of it is in force (none was ever
    /// valid, or the file was removed), the file's own error: [`AllowlistError::Missing`] for
    /// a file that does not exist.
    pub fn allowlist(&self, settings: &Settings) -> Result<Allowlist, AllowlistError> {
        let copy = CatalogPaths::new(&settings.state_dir).allowlist;
        match &self.allowlist {
            Some(state) if !state.hash.is_empty() => {
                let text = crate::shared::files::read_capped_text(
                    &copy,
                    crate::shared::files::MAX_ALLOWLIST_BYTES,
                    "an allowlist",
                )
                .map_err(|source| AllowlistError::InForce {
                    path: state.path.clone(),
                    source,
                })?;
                Allowlist::parse(&state.path, &text)
            }
            _ => Allowlist::load(&settings.allowlist),
        }
    }

    /// Every class new jobs can be given, with the version that serves it, in class order.
    pub fn classes(&self) -> Vec<ActiveClass<'_>> {
        let mut classes: BTreeMap<&str, ActiveClass<'_>> = BTreeMap::new();
        for file in &self.files {
            for class in file.active.iter().flat_map(|v| &v.classes) {
                classes.entry(&class.name).or_insert_with(|| ActiveClass {
                    class: &class.name,
                    file: &file.path,
                    hash: file.active.as_ref().map_or("", |v| v.hash.as_str()),
                    since: file.active.as_ref().map_or(0, |v| v.since),
                    methods: class.methods.iter().map(|m| m.name.as_str()).collect(),
                });
            }
        }
        classes.into_values().collect()
    }

    /// Whether a file's provisional verdict is due to be examined again (see
    /// [`PluginFile::retry_at`]), so a refresh would inspect it though nothing changed.
    pub fn retry_due(&self, now: Millis) -> bool {
        self.files
            .iter()
            .any(|f| f.retry_at.is_some_and(|at| at <= now))
    }

    /// The hashes of the active versions.
    pub fn active_hashes(&self) -> BTreeSet<&str> {
        self.files
            .iter()
            .filter_map(|f| f.active.as_ref())
            .map(|v| v.hash.as_str())
            .collect()
    }
}

/// The allowlist workers check: the version in force, or the file itself when none is (before
/// the catalog ever took one, or after the file was removed, when the copy is removed too).
pub fn allowlist_in_force(settings: &Settings) -> PathBuf {
    let copy = CatalogPaths::new(&settings.state_dir).allowlist;
    if copy.exists() {
        copy
    } else {
        settings.allowlist.clone()
    }
}

/// Takes in a file that is new or changed since `previous` (or whose provisional verdict is
/// due again): copies it into a snapshot, inspects the copy and, when good, makes it the
/// active version. A failure of jobhost's own (I/O, the inspector) is no verdict on the file:
/// it is reported, and the file examined again at the next refresh.
fn examine(
    settings: &Settings,
    paths: &CatalogPaths,
    path: &Path,
    stamp: FileStamp,
    previous: Option<&PluginFile>,
    old: Option<&Inventory>,
) -> PluginFile {
    let kept = previous.and_then(|p| p.active.clone());
    let entry = |hash: String, status: FileStatus, active: Option<Version>| PluginFile {
        path: path.to_path_buf(),
        hash,
        status,
        active,
        retry_at: None,
        stamp,
    };
    let rejected =
        |hash: String, reason: Reason| entry(hash, FileStatus::Rejected { reason }, kept.clone());
    // What it is, its size and its headers, before anything reads it whole or loads it.
    let candidate = match Candidate::open(path, settings.limits.max_plugin_bytes) {
        Ok(candidate) => candidate,
        Err(reason) => return rejected(String::new(), reason),
    };
    let hash = match candidate.hash() {
        Ok(hash) => hash,
        Err(reason) => return rejected(String::new(), reason),
    };
    if let Some(previous) = previous.filter(|p| p.hash == hash && p.retry_at.is_none()) {
        // Touched, or moved back and forth: the same content, already judged.
        return PluginFile {
            stamp,
            ..previous.clone()
        };
    }
    if let Some(twin) = same_content(old, path, &hash) {
        let active = match &twin.status {
            FileStatus::Plugin { .. } => twin.active.clone().map(|v| Version {
                since: now_millis(),
                ..v
            }),
            FileStatus::Rejected { .. } => kept,
        };
        return PluginFile {
            retry_at: twin.retry_at,
            ..entry(hash, twin.status.clone(), active)
        };
    }
    let snapshot = paths.snapshot(&hash);
    let (inspected, inspection) = if snapshot.exists() {
        (snapshot.clone(), inspect_file(settings, &snapshot))
    } else {
        take_snapshot(settings, &paths.snapshots, &snapshot, candidate, &hash)
    };
    let provisional = |reason: Reason, retry_at: Millis| PluginFile {
        retry_at: Some(retry_at),
        ..rejected(hash.clone(), reason)
    };
    let status = match inspection {
        Inspection::Verdict(status) => status,
        Inspection::Hung => {
            let reason = Reason::hung(
                &crate::shared::text::secs(settings.limits.inspect_timeout),
                HUNG_RETRY.as_secs() / 60,
            );
            return provisional(reason, now_millis() + HUNG_RETRY.as_millis() as Millis);
        }
        Inspection::Failed(reason) => {
            return provisional(Reason::inspection_failed(&reason), 0);
        }
    };
    let active = match &status {
        FileStatus::Plugin {
            sdk_version,
            classes,
            fork_safe,
        } => Some(Version {
            hash: hash.clone(),
            snapshot,
            since: now_millis(),
            sdk_version: sdk_version.clone(),
            classes: classes.clone(),
            fork_safe: *fork_safe,
        }),
        FileStatus::Rejected { .. } => kept.clone(),
    };
    // The loader's messages name the copy it was given: name the user's file instead.
    let status = match status {
        FileStatus::Rejected { reason } => FileStatus::Rejected {
            reason: reason.naming(&inspected, path),
        },
        plugin => plugin,
    };
    entry(hash, status, active)
}

/// Another file of the catalog `old` with the content `hash` that is a good plugin (with its
/// snapshot there to serve) or hung while loading (and is not due to be tried again): its
/// verdict is this file's too, with no second inspection, so a copy of a hanging file does not
/// cost the limit again. Other rejections are not shared: their reasons may name the file.
fn same_content<'a>(old: Option<&'a Inventory>, path: &Path, hash: &str) -> Option<&'a PluginFile> {
    let now = now_millis();
    old?.files.iter().find(|f| {
        f.path != path
            && f.hash == hash
            && f.retry_at.is_none_or(|at| now < at)
            && match &f.status {
                FileStatus::Plugin { .. } => f
                    .active
                    .as_ref()
                    .is_some_and(|v| v.hash == hash && v.snapshot.exists()),
                FileStatus::Rejected { .. } => f.retry_at.is_some(),
            }
    })
}

/// Brings the allowlist in force up to date: a valid new version replaces it, an invalid one
/// (unreadable, too big, not a regular file, not valid TOML) is recorded as the error and
/// changes nothing else. A file that does not exist is a deliberate removal: nothing is in
/// force any more (the copy is removed too), so nothing is approved until it exists again.
fn refresh_allowlist(
    settings: &Settings,
    paths: &CatalogPaths,
    previous: Option<&AllowlistState>,
) -> std::io::Result<AllowlistState> {
    let path = settings.allowlist.clone();
    let stamp = FileStamp::of(&path).ok();
    let previous = previous.filter(|p| p.path == path);
    if let Some(previous) = previous.filter(|p| p.stamp == stamp) {
        return Ok(previous.clone());
    }
    let kept = |error: String| AllowlistState {
        path: path.clone(),
        hash: previous.map(|p| p.hash.clone()).unwrap_or_default(),
        since: previous.map_or(0, |p| p.since),
        error: Some(error),
        missing: false,
        classes: previous.map_or(0, |p| p.classes),
        stamp,
    };
    let text = match crate::shared::files::read_capped_text(
        &path,
        crate::shared::files::MAX_ALLOWLIST_BYTES,
        "an allowlist",
    ) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::remove_file(&paths.allowlist) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let error = AllowlistError::Missing { path: path.clone() }.to_string();
            return Ok(AllowlistState {
                path,
                hash: String::new(),
                since: now_millis(),
                error: Some(error),
                missing: true,
                classes: 0,
                stamp: None,
            });
        }
        Err(e) => {
            return Ok(kept(crate::shared::text::chain(&AllowlistError::read(
                &path, e,
            ))))
        }
    };
    let classes = match Allowlist::parse(&path, &text) {
        Ok(allowlist) => allowlist.jobs().len(),
        Err(e) => return Ok(kept(e.to_string())),
    };
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    let since = match previous {
        Some(p) if p.hash == hash && paths.allowlist.exists() => p.since,
        _ => {
            crate::shared::files::write_atomically(&paths.allowlist, text.as_bytes())?;
            now_millis()
        }
    };
    Ok(AllowlistState {
        path,
        hash,
        since,
        error: None,
        missing: false,
        classes,
        stamp,
    })
}

/// Logs what changed between two catalogs.
fn log_changes(old: Option<&Inventory>, new: &Inventory) {
    let old_file = |path: &Path| old.and_then(|o| o.files.iter().find(|f| f.path == path));
    for file in &new.files {
        let before = old_file(&file.path);
        let name = file.path.display().to_string();
        match &file.status {
            FileStatus::Plugin { .. } => {
                let was = before
                    .and_then(|b| b.active.as_ref())
                    .map(|v| v.hash.as_str());
                if let Some(active) = file
                    .active
                    .as_ref()
                    .filter(|a| Some(a.hash.as_str()) != was)
                {
                    joblog::plugin_active(&name, &active.hash, &active.class_names(), was);
                }
            }
            FileStatus::Rejected { reason } => {
                // An unread file (empty hash) may be anything new.
                let new = |b: &PluginFile| b.hash != file.hash || file.hash.is_empty();
                if before.is_none_or(|b| b.stamp != file.stamp && new(b)) {
                    let serving = file.active.as_ref().map(|v| v.hash.as_str());
                    joblog::plugin_rejected(&name, reason.as_str(), serving);
                }
            }
        }
    }
    for gone in old.iter().flat_map(|o| &o.files) {
        if !new.files.iter().any(|f| f.path == gone.path) {
            if let Some(version) = &gone.active {
                joblog::plugin_removed(
                    &gone.path.display().to_string(),
                    &version.hash,
                    &version.class_names(),
                );
            }
        }
    }
    let before = old.map(Inventory::conflicts).unwrap_or_default();
    for (class, files) in new.conflicts() {
        let names =
            |files: &[&PluginFile]| files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        if before.get(class).map(|b| names(b)) != Some(names(&files)) {
            joblog::plugin_conflict(class, &names(&files));
        }
    }
    if let Some(allowlist) = &new.allowlist {
        let was = old.and_then(|o| o.allowlist.as_ref());
        let path = allowlist.path.display().to_string();
        match &allowlist.error {
            Some(_) if allowlist.missing => {
                if let Some(was) = was.filter(|w| !w.missing) {
                    joblog::allowlist_removed(&path, !was.hash.is_empty());
                }
            }
            Some(error) if was.is_none_or(|w| w.stamp != allowlist.stamp) => {
                joblog::allowlist_rejected(&path, error, !allowlist.hash.is_empty());
            }
            None if was.is_some_and(|w| w.hash != allowlist.hash) => {
                joblog::allowlist_reloaded(&path, allowlist.classes);
            }
            _ => {}
        }
    }
}

/// Removes the snapshots that no active version of the catalog and nothing in `in_use`
/// (hashes of jobs waiting or running) refers to. Done under the catalog's lock, from the
/// catalog as written then; skipped while someone holds the lock, since a refresh under way
/// may have put in place a snapshot its catalog does not name yet (the next round collects).
pub fn collect_snapshots(settings: &Settings, in_use: &BTreeSet<String>) {
    let paths = CatalogPaths::new(&settings.state_dir);
    let Ok(Some(_lock)) = platform::FileLock::try_acquire(&paths.lock) else {
        return;
    };
    let Some(inventory) = Inventory::read(&paths.catalog) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&paths.snapshots) else {
        return;
    };
    let active = inventory.active_hashes();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(hash) = snapshot_hash(&path) else {
            continue;
        };
        if active.contains(hash) || in_use.contains(hash) {
            continue;
        }
        // A snapshot still mapped by a worker may refuse to go (Windows); the next round
        // tries again. On Unix the worker keeps its mapping of the removed file.
        let mut permissions = match entry.metadata() {
            Ok(m) => m.permissions(),
            Err(_) => continue,
        };
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        let _ =
            std::fs::set_permissions(&path, permissions).and_then(|()| std::fs::remove_file(&path));
    }
}

/// The hash a snapshot's path names, if it is a snapshot.
pub fn snapshot_hash(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let hash = name.strip_suffix(std::env::consts::DLL_SUFFIX)?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FileStamp {
    len: u64,
    modified_ns: i128,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path`, following links; of the link itself when it leads
    /// nowhere.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path).or_else(|_| std::fs::symlink_metadata(path))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_64_hex_digits_and_the_suffix() {
        let hash = "ab".repeat(32);
        let name = format!("{hash}{}", std::env::consts::DLL_SUFFIX);
        assert_eq!(snapshot_hash(Path::new(&name)), Some(hash.as_str()));
        assert_eq!(snapshot_hash(Path::new(".incoming-1-abcd.so")), None);
        assert_eq!(snapshot_hash(Path::new("catalog.json")), None);
    }
}
