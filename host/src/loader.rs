//! Loading a plugin library, in a child process only.
//!
//! `dlopen` runs a library's constructors before any check, and abi_stable never unloads a
//! library, so the host process itself never calls into this module: only the short-lived
//! worker and inspector processes do (see `docs/architecture.md`). Every failure becomes one
//! line a user can act on; abi_stable's ~20 KB layout report is cut down to its `Error:` lines.

use std::path::Path;

use abi_stable::library::{lib_header_from_path, LibraryError};
use job_sdk::ffi::PluginModRef;

/// Loads the plugin at `path` and checks its layout and SDK version against this host's.
pub fn load(path: &Path) -> Result<PluginModRef, String> {
    lib_header_from_path(path)
        .and_then(|header| header.init_root_module::<PluginModRef>())
        .map_err(|e| condense(&e))
}

/// One line saying why a library is not a usable plugin.
pub fn condense(error: &LibraryError) -> String {
    match error {
        LibraryError::OpenError { err, .. } => {
            format!("not a loadable shared library: {err}")
        }
        LibraryError::GetSymbolError { .. } => {
            "not a jobhost plugin: the library exports no job-sdk root module (was it built with job_sdk::export_plugin!?)".to_owned()
        }
        LibraryError::ParseVersionError(e) => format!("unreadable SDK version: {e}"),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "incompatible SDK version: built against job-sdk {actual_version}, this host uses job-sdk {expected_version}"
        ),
        LibraryError::RootModule { err, .. } => format!("the plugin's root module failed to initialise: {err}"),
        LibraryError::AbiInstability(report) => {
            format!("incompatible SDK layout: {}", error_lines(&report.to_string()))
        }
        LibraryError::InvalidAbiHeader(_) => {
            "built with an incompatible version of abi_stable".to_owned()
        }
        LibraryError::InvalidCAbi { .. } => "built for an incompatible C ABI".to_owned(),
        LibraryError::Many(errors) => errors.iter().map(condense).collect::<Vec<_>>().join("; "),
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
