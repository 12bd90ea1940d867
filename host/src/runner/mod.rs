//! One attempt of one job in a process of its own — the process boundary of the design.
//!
//! [`supervisor`] is the host's side: it starts the child (`jobhost __worker`, or the
//! inspector for a plugin file), holds its output ([`supervisor::capture`]), stops it at the
//! timeout or on cancel, adopts it after a dispatcher restart, and turns how it ended into an
//! outcome. [`child`] is the code that runs *inside* the child process: it reads the request,
//! re-checks the allowlist, loads the plugin ([`child::loader`]), calls the method and writes
//! the report. The two sides share only the wire contract, [`protocol`] (requests, reports,
//! subcommand names), and [`reason`], why a file is not a plugin; the child side imports
//! nothing of the supervisor side, and the host process never loads plugin code.

pub mod child;
pub mod protocol;
pub mod reason;
pub mod supervisor;

use std::path::PathBuf;

/// The `jobhost` program: `$JOBHOST_BIN`; else this executable when it is jobhost; else a
/// `jobhost` beside this executable or one directory up (cargo's target layout); else the
/// one on `PATH`.
pub fn jobhost_program() -> PathBuf {
    if let Some(bin) = std::env::var_os("JOBHOST_BIN") {
        return bin.into();
    }
    let name = format!("jobhost{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().ok();
    if let Some(exe) = &exe {
        if exe.file_name().is_some_and(|n| n == name.as_str()) {
            return exe.clone();
        }
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}
