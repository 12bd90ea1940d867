//! Loading a plugin library, in a child process only.
//!
//! `dlopen` runs a library's constructors before any check, and abi_stable never unloads a
//! library, so the host process itself never calls into this module: only the short-lived
//! worker and inspector processes do (see `docs/architecture.md`). Every failure becomes one
//! line a user can act on; abi_stable's ~20 KB layout report is cut down to its `Error:` lines.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use job_sdk::ffi::PluginModRef;

use crate::runner::reason::Reason;

/// The plugins this process loaded and checked before it was forked (the fork server's
/// preloads), by path: a forked worker finds its plugin here, loaded and checked already.
static PRELOADED: Mutex<Vec<(PathBuf, PluginModRef)>> = Mutex::new(Vec::new());

/// Loads the plugin at `path`, as [`load`] does, and keeps it for the children this process
/// forks; called by the fork server with a plugin that declares itself fork-safe. One that
/// does not load is not kept: each worker loads it, and says why it is refused, itself.
#[cfg(unix)]
pub fn preload(path: &Path) {
    if let Ok(plugin) = load(path) {
        let mut preloaded = PRELOADED.lock().unwrap_or_else(PoisonError::into_inner);
        // `load` answered from this list when it holds the path already.
        if !preloaded.iter().any(|(loaded, _)| loaded == path) {
            preloaded.push((path.to_owned(), plugin));
        }
    }
}

/// Loads the plugin at `path` and checks its root module, layout and SDK version against this
/// host's; or takes it as this process's fork server loaded and checked it ([`preload`]).
pub fn load(path: &Path) -> Result<PluginModRef, Reason> {
    let preloaded = PRELOADED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(loaded, _)| loaded == path)
        .map(|(_, plugin)| *plugin);
    if let Some(plugin) = preloaded {
        return Ok(plugin);
    }
    let header = lib_header_from_path(path).map_err(|e| condense(&e))?;
    // Every abi_stable library exports the same header; whose root module it carries is named
    // in it. Another application's is neither an SDK version nor a layout problem.
    let consts = header.root_mod_consts();
    if consts.name().as_str() != PluginModRef::NAME {
        return Err(Reason::foreign_plugin(
            consts.name().as_str(),
            consts.version_strings().version.as_str(),
            PluginModRef::NAME,
        ));
    }
    header
        .init_root_module::<PluginModRef>()
        .map_err(|e| condense(&e))
}

/// One line saying why a library is not a usable plugin.
pub fn condense(error: &LibraryError) -> Reason {
    match error {
        LibraryError::OpenError { err, .. } => Reason::not_loadable(err),
        LibraryError::GetSymbolError { .. } => Reason::no_export(),
        LibraryError::ParseVersionError(e) => Reason::unreadable_sdk_version(e),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => Reason::incompatible_sdk_version(actual_version, expected_version),
        LibraryError::RootModule { err, .. } => Reason::root_module_failed(err),
        LibraryError::AbiInstability(report) => {
            Reason::incompatible_layout(&error_lines(&report.to_string()))
        }
        LibraryError::InvalidAbiHeader(_) => Reason::incompatible_abi_stable(),
        LibraryError::InvalidCAbi { .. } => Reason::incompatible_c_abi(),
        LibraryError::Many(errors) => Reason::all(errors.iter().map(condense)),
    }
}

/// The distinct `Error:` entries of an abi_stable layout report, each with the first line of
/// what was expected and what was found, joined.
fn error_lines(report: &str) -> String {
    let mut problems: Vec<String> = Vec::new();
    let mut lines = report.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(what) = line.strip_prefix("Error:").map(str::trim) else {
            continue;
        };
        let mut first_after = |label: &str| -> Option<String> {
            lines.by_ref().find(|l| *l == label)?;
            lines.by_ref().find(|l| !l.is_empty()).map(str::to_owned)
        };
        let expected = first_after("Expected:");
        let found = first_after("Found:");
        let problem = match (expected, found) {
            (Some(e), Some(f)) => format!("{what} (expected {e}, found {f})"),
            _ => what.to_owned(),
        };
        if !problem.is_empty() && !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    match problems.len() {
        0 => report
            .lines()
            .next()
            .unwrap_or("layout mismatch")
            .trim()
            .to_owned(),
        n if n > 3 => format!("{} (and {} more)", problems[..3].join("; "), n - 3),
        _ => problems.join("; "),
    }
}
