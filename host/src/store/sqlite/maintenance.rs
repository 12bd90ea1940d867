//! The housekeeping a SQLite store needs and a dispatcher runs on its timer: checkpoints that
//! keep the write-ahead log from growing without bound.

use super::*;

/// How often the database's write-ahead log is folded into the database file.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A dispatcher's checkpointer: so that no commit on the hot path pays for the fsync. A
/// passive checkpoint never holds anybody up, but while commits keep coming the WAL seldom
/// starts over; so when it holds more than [`WAL_LIMIT`] the checkpointer truncates it, which
/// holds writers up briefly and gives up rather than long.
impl Maintenance for SqliteStore {
    fn interval(&self) -> Duration {
        CHECKPOINT_EVERY
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        if self.checkpoint()? > WAL_LIMIT as u64 {
            self.truncate_wal()?;
        }
        Ok(())
    }
}

/// The size the WAL file is cut back to when a writer starts it over after a complete
/// checkpoint (`journal_size_limit`): without it the file keeps the size of its largest burst.
pub const WAL_LIMIT: i64 = 8 * 1024 * 1024;

/// How long a truncating checkpoint waits for readers of older snapshots, holding up writers
/// meanwhile, before it gives up until next time.
pub(super) const TRUNCATE_PATIENCE: Duration = Duration::from_millis(100);
