//! The connection: server errors classified by their SQLSTATE, statements prepared once per
//! session, a session that reconnects on the call after one that found it broken, and the
//! transaction every call runs in.

use super::*;

/// One line for a PostgreSQL error: the server's message with its SQLSTATE, or the client's
/// error with its causes.
pub(super) fn describe(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    crate::shared::text::chain(e)
}

/// Whether `e`, met on `client`, means the connection is gone rather than the statement failed.
pub(super) fn connection_lost(e: &::postgres::Error, client: &Client) -> bool {
    client.is_closed()
        || e.is_closed()
        || e.code().is_some_and(|code| {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        })
}

/// `e`, met on `client`, as a store error of its class (see [`StoreError::class`]): a lost
/// connection is [`StoreError::CommitUnknown`] when it broke while `committing`, else
/// [`StoreError::ConnectionLost`]; the server's errors go by their SQLSTATE.
pub(super) fn classify(
    e: &::postgres::Error,
    client: &Client,
    database: &str,
    committing: bool,
) -> StoreError {
    let reason = describe(e);
    if connection_lost(e, client) {
        let database = database.to_owned();
        return if committing {
            StoreError::CommitUnknown { database, reason }
        } else {
            StoreError::ConnectionLost { database, reason }
        };
    }
    let Some(code) = e.code() else {
        return StoreError::Query(reason);
    };
    let class = &code.code()[..2];
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .contains(code)
    {
        StoreError::Conflict(reason)
    } else if [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED].contains(code) {
        StoreError::Busy(reason)
    } else if *code == SqlState::DISK_FULL {
        StoreError::DiskFull(reason)
    } else if [SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED].contains(code) {
        StoreError::Corrupt(reason)
    } else if class == "53" || class == "58" {
        // Insufficient resources (memory, connections) or a system error (I/O).
        StoreError::Io(reason)
    } else {
        StoreError::Query(reason)
    }
}

/// Connects with `config` as the application `name` (unless the URL names one).
pub(super) fn connect(config: &Config, name: &str) -> Result<Client, ::postgres::Error> {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name(name);
    }
    config.connect(NoTls)
}

impl Columns for Row {
    fn int(&self, index: usize) -> Result<Option<i64>, String> {
        self.try_get(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))
    }

    fn text(&self, index: usize) -> Result<Option<String>, String> {
        self.try_get(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))
    }

    fn flag(&self, index: usize) -> Result<bool, String> {
        self.try_get::<_, Option<bool>>(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))?
            .ok_or_else(|| "is NULL".to_owned())
    }

    fn name(&self, index: usize) -> String {
        self.columns()
            .get(index)
            .map_or_else(|| index.to_string(), |c| c.name().to_owned())
    }
}

/// A row of a simple query, whose columns are text: an integer or a flag is read from its
/// text as PostgreSQL writes it.
impl Columns for SimpleQueryRow {
    fn int(&self, index: usize) -> Result<Option<i64>, String> {
        self.text(index)?
            .map(|text| {
                text.parse()
                    .map_err(|_| format!("holds {text:?}, not an integer"))
            })
            .transpose()
    }

    fn text(&self, index: usize) -> Result<Option<String>, String> {
        self.try_get(index)
            .map(|text| text.map(str::to_owned))
            .map_err(|e| format!("cannot be read: {}", describe(&e)))
    }

    fn flag(&self, index: usize) -> Result<bool, String> {
        match self.text(index)?.as_deref() {
            Some("t") => Ok(true),
            Some("f") => Ok(false),
            Some(other) => Err(format!("holds {other:?}, not a boolean")),
            None => Err("is NULL".to_owned()),
        }
    }

    fn name(&self, index: usize) -> String {
        self.columns()
            .get(index)
            .map_or_else(|| index.to_string(), |c| c.name().to_owned())
    }
}

/// The rows of each statement of a simple query, in order (a statement that returns none, as
/// `BEGIN`, has an empty list).
fn rows_by_statement(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<SimpleQueryRow>> {
    let mut statements = Vec::new();
    let mut rows = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => rows.push(row),
            SimpleQueryMessage::CommandComplete(_) => statements.push(std::mem::take(&mut rows)),
            _ => {}
        }
    }
    statements
}

/// Column `index` of `row`, which the query makes sure has type `T` (a count, an id).
pub(super) fn get<'a, T: ::postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| query(&e))
}

pub(super) fn query(e: &::postgres::Error) -> StoreError {
    StoreError::Query(describe(e))
}

/// Why a call failed: PostgreSQL's error (which may be a lost connection), PostgreSQL's error
/// while committing (or while a write of a single statement ran, which commits by itself), or
/// the store's.
pub(super) enum Failure {
    Pg(::postgres::Error),
    Commit(::postgres::Error),
    Store(StoreError),
}

impl Failure {
    /// The same failure, met while a write of a single statement ran (which commits by itself).
    pub(super) fn committing(self) -> Self {
        match self {
            Self::Pg(e) => Self::Commit(e),
            other => other,
        }
    }
}

impl From<::postgres::Error> for Failure {
    fn from(e: ::postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A client with the statements it prepared, by SQL text.
pub(super) struct Prepared<'a, C> {
    pub(super) client: &'a mut C,
    pub(super) statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Prepared<'_, C> {
    pub(super) fn statement(&mut self, sql: &str) -> Result<Statement, ::postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    pub(super) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }

    /// Each row of `sql` decoded by `decode`.
    pub(super) fn rows<T>(
        &mut self,
        sql: &str,
        params: &Params<'_>,
        decode: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, Failure> {
        Ok(self
            .query(sql, params)?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?)
    }

    /// Tells the listeners `wake` (`Enqueued`, `Cancel` or `Retry`) when the transaction
    /// commits.
    pub(super) fn notify(&mut self, wake: &Wake) -> Result<(), ::postgres::Error> {
        self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &wake.payload()])
            .map(drop)
    }

    /// The ids of up to `limit` jobs finished before their state's cutoff, oldest first per
    /// state (a range scan of `jobs_finished` per cutoff); with `lock`, locked until the
    /// transaction ends, skipping those another transaction holds.
    pub(super) fn expired_ids(
        &mut self,
        cutoffs: &[Cutoff],
        limit: usize,
        lock: bool,
    ) -> Result<Vec<JobId>, Failure> {
        let sql = format!(
            "SELECT id FROM jobs WHERE state = $1 AND finished_at < $2 ORDER BY finished_at \
             LIMIT $3{}",
            if lock { " FOR UPDATE SKIP LOCKED" } else { "" }
        );
        let mut ids = Vec::new();
        for cutoff in cutoffs.iter().filter(|c| c.state.is_terminal()) {
            let wanted = i64::try_from(limit - ids.len()).unwrap_or(i64::MAX);
            if wanted == 0 {
                break;
            }
            ids.extend(self.rows(
                &sql,
                &[&cutoff.state.as_str(), &cutoff.before, &wanted],
                |row| get::<i64>(row, 0),
            )?);
        }
        Ok(ids)
    }

    /// The state of job `id`, locked until the transaction ends.
    pub(super) fn lock_state(&mut self, id: JobId) -> Result<JobState, Failure> {
        let row = self
            .query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id])?
            .ok_or(StoreError::NotFound(id))?;
        let state: String = row.try_get(0)?;
        Ok(JobState::parse(&state)
            .ok_or_else(|| StoreError::Query(format!("job {id} has unknown state {state:?}")))?)
    }
}

/// An open connection.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) statements: HashMap<String, Statement>,
    /// Whether the statements a round names (`PREPARE`d by SQL, so that a simple query can
    /// `EXECUTE` them) are prepared on this connection. Like those in `statements`, they last
    /// as long as the connection: nothing jobhost sends deallocates them.
    round_prepared: bool,
}

impl Session {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            statements: HashMap::new(),
            round_prepared: false,
        }
    }

    /// The connection outside a transaction: each statement commits by itself.
    pub(super) fn direct(&mut self) -> Prepared<'_, Client> {
        Prepared {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Runs `op` in a transaction, committed if it succeeds and rolled back if not.
    pub(super) fn transaction<T>(
        &mut self,
        op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let tx = self.client.transaction()?;
        within(tx, &mut self.statements, op)
    }

    /// Like [`Session::transaction`], but `op` may give up: `None` rolls the transaction back.
    pub(super) fn transaction_or_rollback<T>(
        &mut self,
        op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<Option<T>, Failure>,
    ) -> Result<Option<T>, Failure> {
        let mut tx = self.client.transaction()?;
        let value = op(&mut Prepared {
            client: &mut tx,
            statements: &mut self.statements,
        })?;
        match value {
            Some(value) => {
                tx.commit().map_err(Failure::Commit)?;
                Ok(Some(value))
            }
            None => {
                tx.rollback()?;
                Ok(None)
            }
        }
    }

    /// Runs `op` in a transaction begun by `first`: one simple query (`BEGIN` and the
    /// statements that follow it, values written in, in one round trip) whose rows `op` is
    /// given, a list per statement. `prepare` (SQL `PREPARE`s of the statements `first` may
    /// `EXECUTE`) runs once per connection, before its first round. `op` may end the
    /// transaction with its last statements ([`Round::commit_with`]): committed if `op`
    /// succeeds (by `op`, or here), rolled back if it gives up (`None`) or fails, or if
    /// `first` does.
    pub(super) fn round<T>(
        &mut self,
        prepare: &str,
        first: &str,
        op: impl FnOnce(&mut Round<'_>, Vec<Vec<SimpleQueryRow>>) -> Result<Option<T>, Failure>,
    ) -> Result<Option<T>, Failure> {
        if !self.round_prepared {
            self.client.batch_execute(prepare)?;
            self.round_prepared = true;
        }
        let rows = match self.client.simple_query(first) {
            Ok(messages) => rows_by_statement(messages),
            Err(e) => {
                if e.as_db_error().is_some() {
                    let _ = self.client.batch_execute("ROLLBACK");
                }
                return Err(e.into());
            }
        };
        let mut round = Round {
            prepared: Prepared {
                client: &mut self.client,
                statements: &mut self.statements,
            },
            open: true,
        };
        let result = op(&mut round, rows);
        let open = round.open;
        match result {
            Ok(Some(value)) => {
                if open {
                    self.client.batch_execute("COMMIT").map_err(Failure::Commit)?;
                }
                Ok(Some(value))
            }
            Ok(None) => {
                if open {
                    self.client.batch_execute("ROLLBACK")?;
                }
                Ok(None)
            }
            Err(e) => {
                if open && !self.client.is_closed() {
                    // What failed is the error to tell; a connection that cannot roll back
                    // is found broken by the next call.
                    let _ = self.client.batch_execute("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// Runs the reads of `op` on one snapshot.
    pub(super) fn snapshot<T>(
        &mut self,
        op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        within(tx, &mut self.statements, op)
    }
}

/// A transaction of [`Session::round`]: its statements go through `prepared`, and its last
/// ones may go with its `COMMIT`.
pub(super) struct Round<'a> {
    pub(super) prepared: Prepared<'a, Client>,
    /// Whether the transaction is still open.
    open: bool,
}

impl Round<'_> {
    /// Runs `statements` (the simple query protocol: values written in, several statements
    /// separated by `;`) and commits, in one round trip; the rows they returned.
    ///
    /// Refused by the server, none of it took (the statements and the `COMMIT` run in order,
    /// and the first error skips the rest, or the `COMMIT` failed and rolled back): the
    /// transaction is rolled back. Any other error leaves it unknown whether it committed.
    pub(super) fn commit_with(&mut self, statements: &str) -> Result<Vec<SimpleQueryRow>, Failure> {
        match self
            .prepared
            .client
            .simple_query(&format!("{statements}; COMMIT"))
        {
            Ok(messages) => {
                self.open = false;
                Ok(rows_by_statement(messages).into_iter().flatten().collect())
            }
            Err(e) if e.as_db_error().is_some() => Err(Failure::Pg(e)),
            Err(e) => {
                self.open = false;
                Err(Failure::Commit(e))
            }
        }
    }
}

/// Runs `op` in `tx` and commits it; an error rolls it back.
pub(super) fn within<T>(
    mut tx: Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let value = op(&mut Prepared {
        client: &mut tx,
        statements,
    })?;
    tx.commit().map_err(Failure::Commit)?;
    Ok(value)
}
