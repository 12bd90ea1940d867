//! The connection: opening (and refusing a database newer than this jobhost), waiting out a
//! busy database, and errors classified with what a user can do about them; reading rows.

use rusqlite::config::DbConfig;

use super::*;

/// The error for the database at `path` that cannot be opened, for this reason.
pub(super) fn open_error(path: &Path) -> impl Fn(String) -> StoreError + '_ {
    move |reason| StoreError::Open {
        database: path.display().to_string(),
        reason,
    }
}

/// Opens a connection to `path` with `flags` and reads its schema version.
pub(super) fn connect(path: &Path, flags: OpenFlags) -> Result<(Connection, i64), StoreError> {
    let open_error = open_error(path);
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_error(e.to_string()))?;
    // The query planner stability guarantee: without it SQLite re-prepares (parses and plans
    // again) a statement whose bound `LIMIT` changed since its last run, as the claim's does
    // whenever the number of free slots changes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| open_error(e.to_string()))?;
    // The first statement that reads the file is where a corrupt file shows itself.
    let version: i64 = retry_busy(|| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .map_err(|e| open_failure(&path.display().to_string(), "", &e))?;
    Ok((conn, version))
}

/// Refuses a database whose schema is newer than this build's.
pub(super) fn check_not_newer(path: &Path, version: i64) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::NewerSchema {
            database: path.display().to_string(),
            found: version,
            supported,
        });
    }
    Ok(())
}

/// How long a statement waits for another connection's lock.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `op`, retrying it while SQLite says "database is locked" for up to [`BUSY_TIMEOUT`].
/// Some statements at open time (a WAL file being recovered or removed by a closing
/// connection) fail that way at once instead of waiting in the busy handler.
pub(super) fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// One line for a SQLite error, naming the usual causes plainly.
pub(super) fn describe(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (corrupt, or not jobhost's); it was left untouched"
                .into()
        }
        Some(ErrorCode::DatabaseCorrupt) => "the database is corrupt; it was left untouched".into(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "another connection held its lock for longer than {}s ({e})",
            BUSY_TIMEOUT.as_secs()
        ),
        Some(ErrorCode::DiskFull) => format!("the disk or the database's size limit is full ({e})"),
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::ReadOnly) => {
            format!("cannot open or write it: {e}")
        }
        _ => e.to_string(),
    }
}

pub(super) fn query(e: rusqlite::Error) -> StoreError {
    classify(&e)
}

/// `e` as a store error of its class (see [`StoreError::class`]).
pub(super) fn classify(e: &rusqlite::Error) -> StoreError {
    let reason = describe(e);
    let Some(code) = e.sqlite_error_code() else {
        return StoreError::Query(reason);
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Busy(reason),
        ErrorCode::DiskFull => StoreError::DiskFull(reason),
        ErrorCode::ReadOnly if extended_code(e) == Some(SQLITE_READONLY_DBMOVED) => {
            StoreError::Corrupt(reason)
        }
        ErrorCode::SystemIoFailure
        | ErrorCode::OutOfMemory
        | ErrorCode::CannotOpen
        | ErrorCode::PermissionDenied
        | ErrorCode::ReadOnly
        | ErrorCode::FileLockingProtocolFailed => StoreError::Io(reason),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreError::Corrupt(reason),
        _ => StoreError::Query(reason),
    }
}

/// SQLite's extended result code of `e`, if it has one.
pub(super) fn extended_code(e: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
        _ => None,
    }
}

/// The database file was moved or deleted while open: writes would go nowhere anyone reads.
pub(super) const SQLITE_READONLY_DBMOVED: std::ffi::c_int = rusqlite::ffi::SQLITE_READONLY_DBMOVED;

/// What failed while opening `database`: a condition that passes (busy, full, an I/O error)
/// as its own class, so that opening again may succeed; anything else — not a database, a
/// file that cannot be opened or written at all — as [`StoreError::Open`], its reason after
/// `context`.
pub(super) fn open_failure(database: &str, context: &str, e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory,
        ) => classify(e),
        _ => StoreError::Open {
            database: database.to_owned(),
            reason: format!("{context}{}", describe(e)),
        },
    }
}

/// A stored value as messages show it: SQLite lets any column hold any type.
pub(super) fn shown(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let mut short: String = text.chars().take(40).collect();
            if short.len() < text.len() {
                short.push_str("...");
            }
            format!("{short:?}")
        }
        ValueRef::Blob(bytes) => format!("a blob of {} bytes", bytes.len()),
    }
}

impl Columns for Row<'_> {
    fn int(&self, index: usize) -> Result<Option<i64>, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            other => Err(format!("holds {}, not an integer", shown(other))),
        }
    }

    fn text(&self, index: usize) -> Result<Option<String>, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| "holds text that is not UTF-8".into()),
            other => Err(format!("holds {}, not text", shown(other))),
        }
    }

    fn flag(&self, index: usize) -> Result<bool, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Integer(i) => Ok(i != 0),
            other => Err(format!("holds {}, not 0 or 1", shown(other))),
        }
    }

    fn name(&self, index: usize) -> String {
        self.as_ref()
            .column_name(index)
            .map_or_else(|_| index.to_string(), str::to_owned)
    }
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(job_at(row, 0))
}

pub(super) fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Attempt, BadColumn>> {
    Ok(attempt_at(row, 0))
}

/// Rows decoded with `decode` (which reports a bad column as a [`BadColumn`]), or the first
/// failure.
pub(super) fn decoded<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, BadColumn>>>,
) -> Result<Vec<T>, StoreError> {
    rows.map(|row| Ok(row.map_err(query)??)).collect()
}
