//! Finding out what a plugin file offers without loading it in this process: each new
//! version is copied under a name of its own and the copy inspected by `jobhost __inspect`
//! (which loads it in a child of its own, within `limits.inspect_timeout`, and ends whatever
//! loading started); a good copy becomes the version's snapshot. Up to
//! [`MAX_PARALLEL_INSPECTIONS`] files are inspected at once.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use serde::Serialize;

use super::plugin_file::Candidate;
use crate::{
    config::settings::Settings,
    platform::{self, ExitKind, ProcessEnd, SuperviseOptions},
    runner::{
        protocol::{read_report, ClassEntry, InspectReport, InspectRequest, PROTOCOL_VERSION},
        reason::Reason,
    },
};

/// What the current content of a file in the plugin directory is.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// A usable plugin.
    Plugin {
        /// The job-sdk version it was built with.
        sdk_version: String,
        /// Its classes.
        classes: Vec<ClassEntry>,
        /// Whether it declares that loading it is safe before a fork, so that the fork server
        /// may load it before forking its workers.
        #[serde(default)]
        fork_safe: bool,
    },
    /// Not usable.
    Rejected {
        /// Why, in one line.
        reason: Reason,
    },
}

/// The most files inspected at once by one refresh.
pub const MAX_PARALLEL_INSPECTIONS: usize = 8;

/// How much longer than `limits.inspect_timeout` the inspector may take in all (starting, the
/// report, ending what loading started) before it is stopped itself.
const INSPECTOR_MARGIN: Duration = Duration::from_secs(10);

/// Copies the file `candidate` (whose content has the hash `hash`) under a name of its own,
/// inspects the copy and, when it is a good plugin, makes it the snapshot `snapshot`: a
/// snapshot is always a whole, good plugin. Returns the copy's path (which the loader's
/// messages name) and what the inspection found.
///
/// The name is unique to this inspection (process, and a count within it), so two files with
/// the same content, in one refresh or in two processes at once, never share it. When two
/// produce the same snapshot at once, the second finds it in place, which is just as good: it
/// has the same content.
pub(super) fn take_snapshot(
    settings: &Settings,
    snapshots: &Path,
    snapshot: &Path,
    candidate: Candidate,
    hash: &str,
) -> (PathBuf, Inspection) {
    static INCOMING: AtomicU64 = AtomicU64::new(0);
    let failed = |what: &str, e: std::io::Error| Inspection::Failed(format!("{what}: {e}"));
    let incoming = snapshots.join(format!(
        ".incoming-{}-{}{}",
        std::process::id(),
        INCOMING.fetch_add(1, Ordering::Relaxed),
        std::env::consts::DLL_SUFFIX
    ));
    match candidate.copy_to(&incoming) {
        Ok(Some(copied)) if copied == hash => {}
        copied => {
            let _ = std::fs::remove_file(&incoming);
            let inspection = match copied {
                Err(e) => failed("cannot copy it into the state directory", e),
                // Its content is not what was hashed a moment ago: a verdict on this version.
                Ok(_) => Inspection::Verdict(FileStatus::Rejected {
                    reason: Reason::changed_while_read(),
                }),
            };
            return (incoming, inspection);
        }
    }
    drop(candidate);
    let inspection = inspect_file(settings, &incoming);
    if matches!(inspection, Inspection::Verdict(FileStatus::Plugin { .. })) {
        if let Err(e) = make_readonly(&incoming).and_then(|()| {
            std::fs::rename(&incoming, snapshot).or_else(|e| {
                // Renaming over a snapshot in use can fail (Windows); one in place will do.
                if snapshot.exists() {
                    std::fs::remove_file(&incoming)
                } else {
                    Err(e)
                }
            })
        }) {
            let _ = std::fs::remove_file(&incoming);
            return (incoming, failed("cannot keep its snapshot", e));
        }
    } else {
        let _ = std::fs::remove_file(&incoming);
    }
    (incoming, inspection)
}

fn make_readonly(path: &Path) -> std::io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions)
}

/// `f` of every item, in order, at most [`MAX_PARALLEL_INSPECTIONS`] at once.
pub(super) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = items.len().min(MAX_PARALLEL_INSPECTIONS);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut results = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return results;
                        };
                        results.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// What inspecting a file found.
pub(super) enum Inspection {
    /// A verdict on the file's content.
    Verdict(FileStatus),
    /// Loading it took longer than `limits.inspect_timeout`: no verdict.
    Hung,
    /// jobhost could not inspect it: no verdict. One line saying why.
    Failed(String),
}

/// Inspects the library at `path` in an inspector process (see
/// [`crate::runner::child::inspect_main`]), which loads it in a child of its own within
/// `limits.inspect_timeout` and ends whatever loading it started.
pub(super) fn inspect_file(settings: &Settings, path: &Path) -> Inspection {
    static INSPECTIONS: AtomicU64 = AtomicU64::new(0);
    let dir = settings.state_dir.join("inspect");
    let n = INSPECTIONS.fetch_add(1, Ordering::Relaxed);
    let report_path = dir.join(format!("{}-{n}.json", std::process::id()));
    let ended = std::fs::create_dir_all(&dir)
        .and_then(|()| run_inspector(settings, path, &report_path))
        .map_err(|e| format!("cannot start the inspector: {e}"))
        .and_then(|end| {
            let report: Option<InspectReport> = read_report(&report_path)
                .map_err(|e| format!("cannot read the inspector's report: {e}"))?;
            Ok((end, report))
        });
    let _ = std::fs::remove_file(&report_path);
    let (end, report) = match ended {
        Ok(ended) => ended,
        Err(reason) => return Inspection::Failed(reason),
    };
    match report {
        Some(InspectReport::Plugin {
            sdk_version,
            classes,
            fork_safe,
            ..
        }) => Inspection::Verdict(FileStatus::Plugin {
            sdk_version,
            classes,
            fork_safe,
        }),
        Some(InspectReport::Rejected { reason, .. }) => {
            Inspection::Verdict(FileStatus::Rejected { reason })
        }
        Some(InspectReport::Hung { .. }) => Inspection::Hung,
        Some(InspectReport::Failed { reason, .. }) => Inspection::Failed(reason),
        None => Inspection::Failed(match (end.stopped, end.exit) {
            (Some(_), _) => format!(
                "the inspector did not finish within {}",
                crate::shared::text::secs(settings.limits.inspect_timeout + INSPECTOR_MARGIN)
            ),
            (None, Some(ExitKind::Signaled(signal))) => format!(
                "the inspector crashed ({}) without a report",
                platform::crash_name(signal)
            ),
            (None, Some(ExitKind::Exited(code))) => {
                format!("the inspector ended with code {code} without a report")
            }
            // Not for an inspector, which is executed, so its exit status is read.
            (None, None) => "the inspector ended without a report".to_owned(),
        }),
    }
}

/// Runs the inspector on `path`, its report going to `report_path`.
fn run_inspector(
    settings: &Settings,
    path: &Path,
    report_path: &Path,
) -> std::io::Result<ProcessEnd> {
    let timeout = settings.limits.inspect_timeout;
    let request = InspectRequest {
        protocol: PROTOCOL_VERSION,
        plugin: path.to_path_buf(),
        report: report_path.to_path_buf(),
        timeout_ms: timeout.as_millis().max(1) as u64,
    };
    let mut command = Command::new(crate::runner::jobhost_program());
    command
        .arg(crate::runner::protocol::INSPECT_SUBCOMMAND)
        .arg(serde_json::to_string(&request)?)
        .env("RUST_BACKTRACE", "0");
    let options = SuperviseOptions {
        timeout: timeout + INSPECTOR_MARGIN,
        kill_grace: settings.limits.kill_grace,
    };
    platform::supervise_quietly(command, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_parallel_keeps_the_order_and_runs_at_most_the_bound_at_once() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let items: Vec<usize> = (0..40).collect();
        let doubled = in_parallel(&items, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(doubled, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((1..=MAX_PARALLEL_INSPECTIONS).contains(&most), "{most}");
        assert!(in_parallel(&[] as &[usize], |&i| i).is_empty());
    }
}
