//! The dispatcher's view of the plugin catalog: which version serves a job's class, and which
//! snapshots are still in use.

use super::*;

/// The plugin catalog as the dispatcher last read it: which version a claimed job runs.
pub(super) struct Plugins {
    pub(super) catalog: PathBuf,
    pub(super) stamp: Option<FileStamp>,
    pub(super) inventory: Option<Inventory>,
}

impl Plugins {
    pub(super) fn new(settings: &Settings) -> Self {
        let mut plugins = Self {
            catalog: CatalogPaths::new(&settings.state_dir).catalog,
            stamp: None,
            inventory: None,
        };
        plugins.reload();
        plugins
    }

    /// Reads the catalog again if it changed since the last read: one `stat` when it did not.
    pub(super) fn reload(&mut self) {
        let stamp = FileStamp::of(&self.catalog).ok();
        if stamp != self.stamp || self.inventory.is_none() {
            self.inventory = Inventory::read(&self.catalog);
            self.stamp = stamp;
        }
    }

    /// Whether the version with `hash` serves new jobs.
    pub(super) fn is_active(&self, hash: &str) -> bool {
        self.inventory
            .as_ref()
            .is_some_and(|i| i.active_hashes().contains(hash))
    }

    /// The version a claimed job runs: its class's active version now, so a deploy reaches
    /// jobs already waiting; if no plugin offers the class any more, the version it was
    /// enqueued with (its snapshot is kept while it waits), which the catalog no longer
    /// describes, so it is not taken for fork-safe.
    pub(super) fn version_for(&self, job: &JobRecord) -> Serving {
        let active = self
            .inventory
            .as_ref()
            .and_then(|i| i.find(&job.class))
            .map(|offer| Serving {
                snapshot: offer.version.snapshot.clone(),
                hash: offer.version.hash.clone(),
                fork_safe: offer.version.fork_safe,
            });
        active.unwrap_or_else(|| Serving {
            snapshot: job.plugin.clone(),
            hash: inventory::snapshot_hash(&job.plugin)
                .unwrap_or_default()
                .to_owned(),
            fork_safe: false,
        })
    }
}

/// The plugin version a claimed job runs.
pub(super) struct Serving {
    /// Its snapshot, which the worker loads.
    pub(super) snapshot: PathBuf,
    /// Its hash, recorded with the attempt.
    pub(super) hash: String,
    /// Whether it declares itself fork-safe (a fork server may load it before forking).
    pub(super) fork_safe: bool,
}
