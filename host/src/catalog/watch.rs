//! Watching the plugin directory and the allowlist, so that `jobhost serve` takes in a deploy
//! without a restart.
//!
//! Three things are watched, none recursively: the plugin directory (files added, changed,
//! renamed, removed), its parent (the directory itself replaced by a rename or a symlink swap,
//! as deploy tools do) and the allowlist's directory (editors save by writing a new file and
//! renaming it). Events are debounced — the catalog is brought up to date once the burst has
//! been quiet for [`QUIET`], or [`AT_MOST`] after its first event — then
//! [`Inventory::refresh`] does the rest: snapshots, inspection in a subprocess, logging.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::{catalog::inventory::Inventory, config::settings::Settings};

/// How long a burst of events must have been quiet before the catalog is refreshed.
pub const QUIET: Duration = Duration::from_millis(30);

/// How long after a burst's first event the catalog is refreshed even if events keep coming.
pub const AT_MOST: Duration = Duration::from_millis(250);

/// What is watched.
struct Targets {
    plugin_dir: PathBuf,
    allowlist: PathBuf,
}

impl Targets {
    /// Whether an event touching `path` can change the catalog.
    fn concerns(&self, path: &Path) -> bool {
        path == self.allowlist || path.starts_with(&self.plugin_dir)
    }
}

/// Starts watching on a thread of its own; `on_refresh` gets every catalog brought up to date
/// after a change, until it returns false. A watch that cannot be set up is an error; the
/// plugin directory missing for a while (mid-swap) is not.
pub fn start(
    settings: &Settings,
    on_refresh: impl Fn(Inventory) -> bool + Send + 'static,
) -> notify::Result<()> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let targets = Targets {
        plugin_dir: absolute(&settings.plugin_dir),
        allowlist: absolute(&settings.allowlist),
    };
    let (tx, events) = crossbeam_channel::unbounded();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })?;
    let parents = [targets.plugin_dir.parent(), targets.allowlist.parent()];
    for (i, parent) in parents.iter().enumerate() {
        if let Some(parent) = parent.filter(|p| !parents[..i].contains(&Some(p))) {
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
    }
    // Missing now is fine: its parent's watch sees it arrive.
    let _ = watcher.watch(&targets.plugin_dir, RecursiveMode::NonRecursive);
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("plugin-watch".into())
        .spawn(move || {
            let relevant = |event: &notify::Result<notify::Event>| match event {
                Ok(event) => {
                    !matches!(event.kind, EventKind::Access(_))
                        && event.paths.iter().any(|p| targets.concerns(p))
                }
                // A lost event (queue overflow) means something changed.
                Err(_) => true,
            };
            while let Ok(first) = events.recv() {
                if !relevant(&first) {
                    continue;
                }
                let deadline = Instant::now() + AT_MOST;
                let mut dir_replaced = touches_dir(&first, &targets.plugin_dir);
                while let Ok(event) = events.recv_deadline(deadline.min(Instant::now() + QUIET)) {
                    dir_replaced |= touches_dir(&event, &targets.plugin_dir);
                }
                if dir_replaced {
                    // The watch followed the old directory: watch whatever has the name now.
                    let _ = watcher.unwatch(&targets.plugin_dir);
                    let _ = watcher.watch(&targets.plugin_dir, RecursiveMode::NonRecursive);
                }
                match Inventory::refresh(&settings) {
                    Ok(inventory) => {
                        if !on_refresh(inventory) {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(
                        "plugin catalog not updated, the versions in force keep serving: {:#}",
                        anyhow::Error::from(e)
                    ),
                }
            }
        })?;
    Ok(())
}

/// Whether `event` is about the plugin directory itself (created, removed, renamed).
fn touches_dir(event: &notify::Result<notify::Event>, dir: &Path) -> bool {
    match event {
        Ok(event) => event.paths.iter().any(|p| p == dir),
        Err(_) => true,
    }
}
