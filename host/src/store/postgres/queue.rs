//! The [`Store`] interface on PostgreSQL: every call one transaction, claims with
//! `FOR UPDATE SKIP LOCKED`, enqueue, cancel and retry with a `NOTIFY`.

use super::*;

pub(super) fn job_from_row(row: &Row) -> Result<JobRecord, StoreError> {
    Ok(job_at(row, 0))
}

/// What [`fast_claim`] found.
enum FastClaim {
    /// These jobs, claimed.
    Claimed(Vec<JobRecord>),
    /// Nothing: the owner is not registered.
    NotRegistered,
    /// A due row that must be looked at before it is claimed (it may have to be quarantined):
    /// roll back, and claim checking each row first.
    CheckEach,
}

/// Claims up to `$2` due jobs at time `$1` for the dispatcher `$3` in one statement.
///
/// Most claims find only rows jobhost wrote: one statement checks the owner's registration,
/// locks the due jobs, claims them and records their attempts, and the claim stands if every
/// claimed row reads back as it should ([`claimed`]). A share lock on the owner's row: a
/// concurrent deregister waits for this claim, then sees its attempts, and a claim after it
/// sees the row gone.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH owner AS (SELECT id FROM dispatchers WHERE id = $3 FOR KEY SHARE), \
         due AS (SELECT id FROM jobs WHERE state IN ('queued', 'scheduled') AND run_at <= $1 \
             AND EXISTS (SELECT 1 FROM owner) \
             ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, \
             started_at = COALESCE(j.started_at, $1) FROM due WHERE j.id = due.id \
             RETURNING j.*), \
         recorded AS ( \
             INSERT INTO attempts (job_id, attempt, started_at, dispatcher) \
             SELECT id, attempts, $1, $3 FROM claimed) \
         SELECT r.registered, {} FROM (SELECT EXISTS (SELECT 1 FROM owner) AS registered) r \
         LEFT JOIN claimed c ON TRUE ORDER BY c.priority DESC, c.run_at, c.id",
        prefixed(JOB_COLUMNS, "c")
    )
});

/// The statements a round `EXECUTE`s (`jobhost_settle`, [`SETTLE_BATCH`], and
/// `jobhost_claim`, [`CLAIM`]), prepared by SQL on each connection so that one simple query
/// can begin the round, settle and claim.
static ROUND_PREPARE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PREPARE jobhost_settle (bigint[], bigint[], bigint[], text[], text[], bigint[], \
         text[], bigint[], bigint[], text[], bigint[]) AS {SETTLE_BATCH}; \
         PREPARE jobhost_claim (bigint, bigint, bigint) AS {}",
        *CLAIM
    )
});

/// Claims up to `limit` due jobs for `owner` ([`CLAIM`]), on the transaction `tx`.
fn fast_claim<C: GenericClient>(
    tx: &mut Prepared<'_, C>,
    owner: DispatcherId,
    now: Millis,
    limit: i64,
) -> Result<FastClaim, Failure> {
    let rows = match tx.query(&CLAIM, &[&now, &limit, &owner]) {
        Ok(rows) => rows,
        Err(e) if is_data_exception(&e) => return Ok(FastClaim::CheckEach),
        Err(e) => return Err(e.into()),
    };
    Ok(claimed(&rows)?)
}

/// Whether the server refused a statement for a value it met (a data exception: a count out
/// of range in a row the claim cannot read).
fn is_data_exception(e: &::postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

/// What the rows of a [`CLAIM`] say.
fn claimed<R: Columns>(rows: &[R]) -> Result<FastClaim, StoreError> {
    let unreadable = |e: String| StoreError::Query(format!("a claim's row {e}"));
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        if !row.flag(0).map_err(unreadable)? {
            return Ok(FastClaim::NotRegistered);
        }
        if row.int(1).map_err(unreadable)?.is_none() {
            continue;
        }
        let job = job_at(row, 1);
        // Claimable before (see `rows::unclaimable`) is: reads back whole once claimed, with
        // one more attempt than it had.
        if job.problem.is_some() || job.attempts > crate::job::MAX_ATTEMPTS {
            return Ok(FastClaim::CheckEach);
        }
        jobs.push(job);
    }
    Ok(FastClaim::Claimed(jobs))
}

/// `text` as an SQL string literal, unless it holds a NUL (which no literal, and no text
/// value, can).
fn literal(text: &str) -> Option<String> {
    (!text.contains('\0')).then(|| postgres_protocol::escape::escape_literal(text))
}

/// A `bigint[]` of `values`, written as SQL.
fn int_array(values: impl Iterator<Item = Option<i64>>) -> String {
    let items: Vec<String> = values
        .map(|v| v.map_or_else(|| "NULL".to_owned(), |v| v.to_string()))
        .collect();
    format!("ARRAY[{}]::bigint[]", items.join(", "))
}

/// A `text[]` of `values`, written as SQL; `None` if one holds a NUL.
fn text_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    let items: Option<Vec<String>> = values
        .map(|v| v.map_or_else(|| Some("NULL".to_owned()), literal))
        .collect();
    Some(format!("ARRAY[{}]::text[]", items?.join(", ")))
}

/// Records one started attempt's worker ([`StartBatch::run`]).
pub(super) const RECORD_START: &str =
    "UPDATE attempts SET pid = $3, plugin_hash = $4, output_path = $5 \
     WHERE job_id = $1 AND attempt = $2 AND COALESCE(finished_at, -1) < 0 \
     RETURNING job_id, attempt";

/// Settles a batch of attempts ([`SettleBatch::run`]).
pub(super) const SETTLE_BATCH: &str = "WITH i AS (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], \
     $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], \
     $9::bigint[], $10::text[], $11::bigint[]) AS i (job_id, attempt, ended_at, \
     outcome, error, output_bytes, state, run_at, finished_at, result, extra)), \
     locked AS (SELECT id, state, attempts FROM jobs WHERE id = ANY($1) \
     ORDER BY id FOR UPDATE), \
     moved AS (UPDATE jobs j SET state = i.state, \
     run_at = COALESCE(i.run_at, j.run_at), finished_at = i.finished_at, \
     last_error = COALESCE(i.error, j.last_error), result = i.result, \
     max_attempts = j.max_attempts + i.extra FROM i JOIN locked l ON l.id = i.job_id \
     AND l.state = 'running' AND l.attempts = i.attempt WHERE j.id = l.id \
     RETURNING j.id AS job_id, j.attempts AS attempt), \
     recorded AS (UPDATE attempts a SET finished_at = i.ended_at, \
     outcome = i.outcome, error = i.error, output_bytes = i.output_bytes \
     FROM moved m JOIN i ON i.job_id = m.job_id AND i.attempt = m.attempt \
     WHERE a.job_id = m.job_id AND a.attempt = m.attempt) \
     SELECT job_id, attempt FROM moved";

/// Started attempts to record: a list per column, each attempt once, by its last item (the
/// start a later call would have left).
struct StartBatch {
    keys: Vec<(JobId, u32)>,
    ids: Vec<i64>,
    attempts: Vec<i64>,
    pids: Vec<i64>,
    hashes: Vec<String>,
    paths: Vec<String>,
}

impl StartBatch {
    fn new(started: &[StartedAttempt<'_>]) -> Self {
        let keys: Vec<(JobId, u32)> = started.iter().map(|s| (s.id, s.attempt)).collect();
        let written = rows::one_per_attempt(&keys, true);
        let items = || written.iter().map(|&i| &started[i]);
        Self {
            ids: items().map(|s| s.id).collect(),
            attempts: items().map(|s| i64::from(s.attempt)).collect(),
            pids: items().map(|s| i64::from(s.start.pid)).collect(),
            hashes: items().map(|s| s.start.plugin_hash.clone()).collect(),
            paths: items()
                .map(|s| s.start.output_path.to_string_lossy().into_owned())
                .collect(),
            keys,
        }
    }

    /// Records the batch on `client`, a statement per attempt; returns the attempts it
    /// recorded: those still running, unsettled.
    ///
    /// Each attempt is found by its whole primary key, and "unsettled" is written so that it
    /// does not match the partial index `attempts_unsettled`. That index keeps an entry for
    /// every attempt settled since the table was last vacuumed, and so does a plan that joins
    /// the batch to the table: planned on statistics from when the table was small, both walk
    /// every attempt of the last minutes (a cost that grows with each job until autovacuum
    /// comes by; measured 0.4-0.9 ms a call after 3,000-5,000 jobs). A lookup by the key stays
    /// one index probe whatever the statistics say. `finished_at` is a time in milliseconds,
    /// never negative. A round records one or two workers, so the statements cost less than
    /// the one slow plan did.
    fn run<C: GenericClient>(
        &self,
        client: &mut Prepared<'_, C>,
    ) -> Result<HashSet<(JobId, u32)>, Failure> {
        let mut recorded = HashSet::new();
        for k in 0..self.ids.len() {
            let rows = client.query(
                RECORD_START,
                &[
                    &self.ids[k],
                    &self.attempts[k],
                    &self.pids[k],
                    &self.hashes[k],
                    &self.paths[k],
                ],
            )?;
            recorded.extend(attempt_keys(&rows)?);
        }
        Ok(recorded)
    }

    /// Records the batch and commits the transaction of `round`, in one round trip: the
    /// statements of [`StartBatch::run`] with their values written in, then `COMMIT`. The
    /// attempts it recorded. An empty batch, or one with a value that cannot be written in (a
    /// NUL, which no path or hash has), is recorded as [`StartBatch::run`] records it, leaving
    /// the round to commit.
    fn record_and_commit(&self, round: &mut Round<'_>) -> Result<HashSet<(JobId, u32)>, Failure> {
        let statements: Option<Vec<String>> = (0..self.ids.len())
            .map(|k| {
                let values = [
                    self.ids[k].to_string(),
                    self.attempts[k].to_string(),
                    self.pids[k].to_string(),
                    literal(&self.hashes[k])?,
                    literal(&self.paths[k])?,
                ];
                Some(with_values(RECORD_START, &values))
            })
            .collect();
        let statements = match statements {
            Some(statements) if !statements.is_empty() => statements,
            _ => return self.run(&mut round.prepared),
        };
        Ok(attempt_keys(&round.commit_with(&statements.join("; "))?)?)
    }

    /// Each item's answer, given the attempts the statements recorded.
    fn answers(&self, recorded: &HashSet<(JobId, u32)>) -> Vec<bool> {
        self.keys.iter().map(|key| recorded.contains(key)).collect()
    }
}

/// `sql` with each parameter `$N` replaced by `values[N - 1]`, in one pass (a value that holds
/// `$2` stays as it is).
fn with_values(sql: &str, values: &[String]) -> String {
    let mut out = String::with_capacity(sql.len() + values.iter().map(String::len).sum::<usize>());
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let value = rest[at + 1..at + 1 + digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| values.get(n.checked_sub(1)?));
        match value {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[at..at + 1 + digits]),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

/// Settlements as one statement settles them: one array per column, each attempt once, by its
/// first item (a later one finds it settled, as it would one call later).
struct SettleBatch<'a> {
    keys: Vec<(JobId, u32)>,
    written: Vec<usize>,
    ids: Vec<i64>,
    attempts: Vec<i64>,
    ended_at: Vec<i64>,
    outcomes: Vec<&'a str>,
    errors: Vec<Option<Cow<'a, str>>>,
    output_bytes: Vec<i64>,
    states: Vec<&'static str>,
    run_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    results: Vec<Option<String>>,
    extra: Vec<i64>,
}

impl<'a> SettleBatch<'a> {
    fn new(settlements: &[Settlement<'a>]) -> Self {
        let keys: Vec<(JobId, u32)> = settlements.iter().map(|s| (s.id, s.attempt)).collect();
        let written = rows::one_per_attempt(&keys, false);
        let mut batch = Self {
            keys,
            ids: Vec::with_capacity(written.len()),
            attempts: Vec::with_capacity(written.len()),
            ended_at: Vec::with_capacity(written.len()),
            outcomes: Vec::with_capacity(written.len()),
            errors: Vec::with_capacity(written.len()),
            output_bytes: Vec::with_capacity(written.len()),
            states: Vec::with_capacity(written.len()),
            run_at: Vec::with_capacity(written.len()),
            finished_at: Vec::with_capacity(written.len()),
            results: Vec::with_capacity(written.len()),
            extra: Vec::with_capacity(written.len()),
            written,
        };
        for &i in &batch.written {
            let Settlement {
                id,
                attempt,
                end,
                next,
            } = settlements[i];
            let settled = Settled::of(end, next);
            batch.ids.push(id);
            batch.attempts.push(i64::from(attempt));
            batch.ended_at.push(end.finished_at);
            batch.outcomes.push(&end.outcome);
            batch.errors.push(end.stored_error());
            batch
                .output_bytes
                .push(i64::try_from(end.output_bytes).unwrap_or(i64::MAX));
            batch.states.push(settled.state.as_str());
            batch.run_at.push(settled.run_at);
            batch.finished_at.push(settled.finished_at);
            batch.results.push(settled.result);
            batch.extra.push(settled.extra_attempts);
        }
        batch
    }

    /// Settles the batch in one statement on `client`; returns the attempts it settled.
    ///
    /// The jobs are locked first, in the order of their ids, so that concurrent batches (a
    /// rescuer's and a slow owner's) wait for each other rather than deadlock. A job moves on
    /// only while it runs that attempt, as the row locked says (after waiting for a concurrent
    /// settler, the lock reads what it left); the attempt is recorded for the jobs that moved,
    /// which their update returns.
    ///
    /// Every job is found by its key, and its state is checked on the locked row, never in a
    /// condition on `jobs` itself: one on the state would let the planner walk the partial
    /// index `jobs_unfinished`, which keeps an entry for every job that ran since the table
    /// was last vacuumed (see [`StartBatch::run`]). The statement runs on a generic plan
    /// (`plan_cache_mode`, set by the caller): PostgreSQL would otherwise plan it anew for each
    /// call, which costs more than running it.
    fn run<C: GenericClient>(
        &self,
        client: &mut Prepared<'_, C>,
    ) -> Result<HashSet<(JobId, u32)>, Failure> {
        let rows = client.query(
            SETTLE_BATCH,
            &[
                &self.ids,
                &self.attempts,
                &self.ended_at,
                &self.outcomes,
                &self.errors,
                &self.output_bytes,
                &self.states,
                &self.run_at,
                &self.finished_at,
                &self.results,
                &self.extra,
            ],
        )?;
        Ok(attempt_keys(&rows)?)
    }

    /// The batch's `EXECUTE jobhost_settle(…)` ([`ROUND_PREPARE`]), its arrays written in;
    /// `None` if a value holds a NUL (none does: errors are stored without, and the other
    /// texts are jobhost's own or JSON).
    fn execute(&self) -> Option<String> {
        let ints = |values: &[i64]| int_array(values.iter().map(|&v| Some(v)));
        Some(format!(
            "EXECUTE jobhost_settle({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
            ints(&self.ids),
            ints(&self.attempts),
            ints(&self.ended_at),
            text_array(self.outcomes.iter().map(|&o| Some(o)))?,
            text_array(self.errors.iter().map(Option::as_deref))?,
            ints(&self.output_bytes),
            text_array(self.states.iter().map(|&s| Some(s)))?,
            int_array(self.run_at.iter().copied()),
            int_array(self.finished_at.iter().copied()),
            text_array(self.results.iter().map(Option::as_deref))?,
            ints(&self.extra),
        ))
    }

    /// Each settlement's answer, given the attempts the statement settled.
    fn answers(&self, settled: &HashSet<(JobId, u32)>) -> Vec<bool> {
        let mut answers = vec![false; self.keys.len()];
        for &i in &self.written {
            answers[i] = settled.contains(&self.keys[i]);
        }
        answers
    }
}

/// The job and attempt numbers of `rows` ([`attempt_key`]).
fn attempt_keys<R: Columns>(rows: &[R]) -> Result<HashSet<(JobId, u32)>, StoreError> {
    rows.iter().map(attempt_key).collect()
}

/// The job and attempt number in the first two columns of `row`.
fn attempt_key<R: Columns>(row: &R) -> Result<(JobId, u32), StoreError> {
    let number = |index| {
        row.int(index)
            .and_then(|n| n.ok_or_else(|| "is NULL".to_owned()))
            .map_err(|e| StoreError::Query(format!("column {} of an attempt's key {e}", row.name(index))))
    };
    let attempt = number(1)?;
    let attempt = u32::try_from(attempt)
        .map_err(|_| StoreError::Query(format!("attempt number {attempt} is out of range")))?;
    Ok((number(0)?, attempt))
}

impl Store for PostgresStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<NewRow> = jobs.iter().map(|job| NewRow::of(job, now)).collect();
        // One array per column, for one INSERT of every row.
        let texts = |column: fn(&NewRow) -> &str| rows.iter().map(column).collect::<Vec<_>>();
        let numbers = |column: fn(&NewRow) -> i64| rows.iter().map(column).collect::<Vec<_>>();
        self.run(|session| {
            session.transaction(|tx| {
                // Ids are drawn in the order rows are inserted, which is the order of the
                // arrays: sorted, they are the jobs' ids in order.
                let mut ids = tx
                    .query(
                        "INSERT INTO jobs (class, method, params, priority, state, max_attempts, \
                         retries, retry_delay_ms, timeout_ms, plugin, run_at, created_at) \
                         SELECT class, method, params, priority, state, max_attempts, retries, \
                         retry_delay_ms, timeout_ms, plugin, run_at, $12 \
                         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], \
                         $11::bigint[]) WITH ORDINALITY AS n (class, method, params, priority, \
                         state, max_attempts, retries, retry_delay_ms, timeout_ms, plugin, run_at, \
                         position) ORDER BY position RETURNING id",
                        &[
                            &texts(|r| &r.class),
                            &texts(|r| &r.method),
                            &texts(|r| &r.params),
                            &numbers(|r| r.priority),
                            &texts(|r| r.state),
                            &numbers(|r| r.max_attempts),
                            &numbers(|r| r.retries),
                            &numbers(|r| r.retry_delay_ms),
                            &numbers(|r| r.timeout_ms),
                            &texts(|r| &r.plugin),
                            &numbers(|r| r.run_at),
                            &now,
                        ],
                    )?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<Vec<JobId>, _>>()?;
                ids.sort_unstable();
                tx.notify(&Wake::Enqueued)?;
                Ok(ids)
            })
        })
    }

    fn claim(
        &mut self,
        owner: DispatcherId,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let claimed = self.run(|session| {
            session.transaction_or_rollback(|tx| match fast_claim(tx, owner, now, limit)? {
                FastClaim::Claimed(jobs) => Ok(Some(jobs)),
                FastClaim::NotRegistered => Err(StoreError::NotRegistered(owner).into()),
                FastClaim::CheckEach => Ok(None),
            })
        })?;
        if let Some(jobs) = claimed {
            return Ok(jobs);
        }
        // The due jobs are read whole and locked first, so that a row that cannot be read is
        // quarantined before anything is claimed, then the readable ones are claimed.
        let due_sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') AND run_at <= $1 \
             ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        );
        let claim_sql = format!(
            "WITH claimed AS ( \
                 UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, \
                 started_at = COALESCE(j.started_at, $1) WHERE j.id = ANY($2) \
                 RETURNING j.*), \
             recorded AS ( \
                 INSERT INTO attempts (job_id, attempt, started_at, dispatcher) \
                 SELECT id, attempts, $1, $3 FROM claimed) \
             SELECT {JOB_COLUMNS} FROM claimed ORDER BY priority DESC, run_at, id"
        );
        let (jobs, quarantined) = self.run(|session| {
            session.transaction(|tx| {
                // A share lock on the owner's row: a concurrent deregister waits for this
                // claim, then sees its attempts, and a claim after it sees the row gone.
                let registered = tx.query_opt(
                    "SELECT 1 FROM dispatchers WHERE id = $1 FOR KEY SHARE",
                    &[&owner],
                )?;
                if registered.is_none() {
                    return Err(StoreError::NotRegistered(owner).into());
                }
                let mut quarantined = Vec::new();
                let mut ids = Vec::new();
                for job in tx.rows(&due_sql, &[&now, &limit], job_from_row)? {
                    match rows::unclaimable(&job) {
                        Some(reason) => {
                            tx.execute(
                                "UPDATE jobs SET state = 'failed', finished_at = $2, \
                                 last_error = $3 WHERE id = $1",
                                &[&job.id, &now, &rows::quarantine_error(&reason)],
                            )?;
                            quarantined.push(Quarantined { id: job.id, reason });
                        }
                        None => ids.push(job.id),
                    }
                }
                if ids.is_empty() {
                    return Ok((Vec::new(), quarantined));
                }
                let jobs = tx.rows(&claim_sql, &[&now, &ids, &owner], |row| {
                    let job = job_at(row, 0);
                    match &job.problem {
                        None => Ok(job),
                        Some(problem) => Err(StoreError::Query(format!(
                            "job {} cannot be read once claimed: {problem}",
                            job.id
                        ))),
                    }
                })?;
                Ok((jobs, quarantined))
            })
        })?;
        self.quarantined.extend(quarantined);
        Ok(jobs)
    }

    fn attempts_started(&mut self, started: &[StartedAttempt<'_>]) -> Result<Vec<bool>, StoreError> {
        if started.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction, so one commit.
        let batch = StartBatch::new(started);
        let recorded = self.run(|session| session.transaction(|tx| batch.run(tx)))?;
        Ok(batch.answers(&recorded))
    }

    fn settle_many(&mut self, settlements: &[Settlement<'_>]) -> Result<Vec<bool>, StoreError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, so one round trip and one commit.
        let batch = SettleBatch::new(settlements);
        let settled = self.run(|session| batch.run(&mut session.direct()).map_err(Failure::committing))?;
        Ok(batch.answers(&settled))
    }

    fn settle_and_claim(
        &mut self,
        settlements: &[Settlement<'_>],
        owner: DispatcherId,
        now: Millis,
        limit: usize,
        spawn: &mut SpawnWorkers<'_>,
    ) -> Result<SettledAndClaimed, StoreError> {
        if settlements.is_empty() && limit == 0 {
            return Ok(SettledAndClaimed {
                settled: Vec::new(),
                claimed: Ok(Vec::new()),
                recorded: Vec::new(),
            });
        }
        // All in one transaction: one commit, after which every worker recorded may start.
        // Two round trips: one simple query that begins it, settles and claims, and the
        // workers' pids recorded with the COMMIT.
        let settles = SettleBatch::new(settlements);
        let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut first = String::from("BEGIN");
        if !settlements.is_empty() {
            let Some(settle) = settles.execute() else {
                return crate::store::settle_then_claim(self, settlements, owner, now, limit, spawn);
            };
            // PostgreSQL plans the settle anew for every call otherwise (a plan for the
            // arrays it was given looks cheaper than the cached one), which costs three times
            // what running it does (measured: 0.5 ms against 0.17 ms).
            first.push_str("; SET LOCAL plan_cache_mode = force_generic_plan; ");
            first.push_str(&settle);
        }
        if limit > 0 {
            first.push_str(&format!("; EXECUTE jobhost_claim({now}, {wanted}, {owner})"));
        }
        let done = self.run(|session| {
            let round = session.round(&ROUND_PREPARE, &first, |round, rows| {
                // The rows of BEGIN, then (SET and) the settle's, then the claim's.
                let mut statements = rows.into_iter().skip(1);
                let mut next = |what: &str| {
                    statements.next().ok_or_else(|| {
                        StoreError::Query(format!("the server answered no rows for the round's {what}"))
                    })
                };
                let settled = if settlements.is_empty() {
                    HashSet::new()
                } else {
                    next("SET")?;
                    attempt_keys(&next("settle")?)?
                };
                if limit == 0 {
                    return Ok(Some((settled, Ok(Vec::new()), Vec::new())));
                }
                let jobs = match claimed(&next("claim")?)? {
                    FastClaim::Claimed(jobs) => jobs,
                    FastClaim::NotRegistered => {
                        return Ok(Some((
                            settled,
                            Err(StoreError::NotRegistered(owner)),
                            Vec::new(),
                        )))
                    }
                    FastClaim::CheckEach => return Ok(None),
                };
                let recorded = crate::store::spawn_and_record(&jobs, spawn, |items| {
                    let records = StartBatch::new(items);
                    Ok::<_, Failure>(records.answers(&records.record_and_commit(round)?))
                })?;
                Ok(Some((settled, Ok(jobs), recorded)))
            });
            match round {
                // A row the claim cannot read, or a value the settle cannot store: all rolled
                // back, and done one by one, where the two are told apart.
                Err(Failure::Pg(e)) if is_data_exception(&e) => Ok(None),
                other => other,
            }
        })?;
        match done {
            Some((settled, claimed, recorded)) => Ok(SettledAndClaimed {
                settled: settles.answers(&settled),
                claimed,
                recorded,
            }),
            // A due row the claim must look at first: all rolled back (before any worker was
            // started), and done one by one.
            None => crate::store::settle_then_claim(self, settlements, owner, now, limit, spawn),
        }
    }

    fn cancel(&mut self, id: JobId, now: Millis) -> Result<CancelOutcome, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let outcome = rows::cancel_outcome(tx.lock_state(id)?);
                match outcome {
                    CancelOutcome::Cancelled => tx.execute(
                        "UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1",
                        &[&id, &now],
                    )?,
                    CancelOutcome::Requested => tx.execute(
                        "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1",
                        &[&id],
                    )?,
                    CancelOutcome::AlreadyFinished(_) => return Ok(outcome),
                };
                tx.notify(&Wake::Cancel(id))?;
                Ok(outcome)
            })
        })
    }

    fn retry(&mut self, id: JobId, now: Millis) -> Result<(), StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let state = tx.lock_state(id)?;
                let row =
                    tx.query_one("SELECT attempts, retries FROM jobs WHERE id = $1", &[&id])?;
                let (retries, max_attempts) =
                    rows::renewed_budget(id, state, get(&row, 0)?, get(&row, 1)?)?;
                tx.execute(
                    "UPDATE jobs SET state = 'queued', run_at = $2, finished_at = NULL, \
                     cancel_requested = FALSE, retries = $3, max_attempts = $4 WHERE id = $1",
                    &[&id, &now, &retries, &max_attempts],
                )?;
                tx.notify(&Wake::Retry(id))?;
                Ok(())
            })
        })
    }

    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, StoreError> {
        let job_sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let attempts_sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = $1 ORDER BY attempt");
        self.run(|session| {
            session.snapshot(|tx| {
                let Some(row) = tx.query_opt(&job_sql, &[&id])? else {
                    return Ok(None);
                };
                let attempts = tx.rows(&attempts_sql, &[&id], |row| Ok(attempt_at(row, 0)))?;
                Ok(Some(rows::with_attempts(job_at(&row, 0), attempts)))
            })
        })
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::text IS NULL OR class = $2) AND ($3::bigint IS NULL OR priority = $3) \
             ORDER BY id DESC LIMIT $4 OFFSET $5"
        );
        let state = filter.state.map(JobState::as_str);
        let priority = filter.priority.map(rows::priority_to_i64);
        let (limit, offset) = (i64::from(filter.limit), i64::from(filter.offset));
        self.run(|session| {
            session.direct().rows(
                &sql,
                &[&state, &filter.class, &priority, &limit, &offset],
                job_from_row,
            )
        })
    }

    fn stats(&mut self) -> Result<Stats, StoreError> {
        self.run(|session| {
            let counts = session.direct().rows(
                "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                &[],
                |row| Ok((get(row, 0)?, get(row, 1)?)),
            )?;
            Ok(rows::stats(counts))
        })
    }

    fn finished_since(&mut self, since: Millis) -> Result<Finished, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 'completed'), \
                 COUNT(*) FILTER (WHERE state = 'failed') FROM jobs \
                 WHERE state IN ('completed', 'failed') AND finished_at >= $1",
                &[&since],
            )?;
            Ok(Finished {
                completed: get::<i64>(&row, 0)?.max(0) as u64,
                failed: get::<i64>(&row, 1)?.max(0) as u64,
            })
        })
    }

    fn cancel_requests(&mut self) -> Result<Vec<JobId>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT id FROM jobs WHERE state = 'running' AND cancel_requested ORDER BY id",
                &[],
                |row| get(row, 0),
            )
        })
    }

    fn lost_attempts(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        self.jobs_with_attempts(rows::FROM_LOST_ATTEMPTS)
    }

    fn amend_lost(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<Amended, StoreError> {
        let attempt = i64::from(attempt);
        let settled = Settled::of(end, next);
        self.run(|session| {
            session.transaction(|tx| {
                // Locked: a second amender waits here, then finds the attempt amended.
                let lost = tx.query_opt(
                    "SELECT 1 FROM attempts WHERE job_id = $1 AND attempt = $2 \
                     AND outcome = 'lost' FOR UPDATE",
                    &[&id, &attempt],
                )?;
                if lost.is_none() {
                    return Ok(Amended::NotLost);
                }
                tx.execute(
                    "UPDATE attempts SET outcome = $3, error = $4 WHERE job_id = $1 AND attempt = $2",
                    &[&id, &attempt, &end.outcome, &end.stored_error()],
                )?;
                let moved = tx.execute(
                    "UPDATE jobs SET state = $3, run_at = COALESCE($4, run_at), finished_at = $5, \
                     last_error = $6, result = $7, max_attempts = max_attempts + $8 \
                     WHERE id = $1 AND attempts = $2 AND state IN ('queued', 'scheduled')",
                    &[
                        &id,
                        &attempt,
                        &settled.state.as_str(),
                        &settled.run_at,
                        &settled.finished_at,
                        &end.stored_error(),
                        &settled.result,
                        &settled.extra_attempts,
                    ],
                )?;
                Ok(if moved == 1 {
                    Amended::Moved
                } else {
                    Amended::Recorded
                })
            })
        })
    }

    fn running(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        self.jobs_with_attempts(rows::FROM_RUNNING)
    }

    fn next_run_at(&mut self) -> Result<Option<Millis>, StoreError> {
        self.run(|session| {
            // The first entry of each priority's range of `jobs_due`, then the earliest.
            let row = session.direct().query_one(
                "SELECT MIN(first.run_at) FROM (VALUES (0::bigint), (1), (2)) AS p (priority), \
                 LATERAL (SELECT run_at FROM jobs WHERE state IN ('queued', 'scheduled') \
                 AND priority = p.priority ORDER BY run_at LIMIT 1) AS first",
                &[],
            )?;
            Ok(get::<Option<i64>>(&row, 0)?)
        })
    }

    #[cfg(any(test, feature = "internals"))]
    fn unfinished(&mut self) -> Result<u64, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'scheduled', 'running')",
                &[],
            )?;
            Ok(get::<i64>(&row, 0)?.max(0) as u64)
        })
    }

    fn unfinished_plugins(&mut self) -> Result<Vec<std::path::PathBuf>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT DISTINCT plugin FROM jobs \
                 WHERE state IN ('queued', 'scheduled', 'running') ORDER BY plugin",
                &[],
                |row| Ok(get::<String>(row, 0)?.into()),
            )
        })
    }

    fn register_dispatcher(
        &mut self,
        info: &DispatcherInfo,
        now: Millis,
    ) -> Result<DispatcherId, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "INSERT INTO dispatchers (host, pid, slots, state_dir, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                &[
                    &info.host,
                    &i64::from(info.pid),
                    &i64::from(info.slots),
                    &info.state_dir,
                    &now,
                ],
            ).map_err(Failure::Commit)?;
            Ok(get(&row, 0)?)
        })
    }

    fn heartbeat(&mut self, id: DispatcherId, now: Millis) -> Result<bool, StoreError> {
        self.run(|session| {
            let changed = session
                .direct()
                .execute(
                    "UPDATE dispatchers SET heartbeat_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .map_err(Failure::Commit)?;
            Ok(changed == 1)
        })
    }

    fn deregister(&mut self, id: DispatcherId) -> Result<bool, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                // Waits for claims under this id in progress (they hold a share lock on the
                // row); the check below, a statement of its own, then sees their attempts.
                let registered =
                    tx.query_opt("SELECT 1 FROM dispatchers WHERE id = $1 FOR UPDATE", &[&id])?;
                if registered.is_none() {
                    return Ok(true);
                }
                let owns_unsettled = tx.query_opt(
                    "SELECT 1 FROM attempts WHERE dispatcher = $1 AND finished_at IS NULL LIMIT 1",
                    &[&id],
                )?;
                if owns_unsettled.is_some() {
                    return Ok(false);
                }
                tx.execute("DELETE FROM dispatchers WHERE id = $1", &[&id])?;
                Ok(true)
            })
        })
    }

    fn prune(&mut self, cutoffs: &[Cutoff], limit: usize) -> Result<Option<Pruned>, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let row = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])?;
                if !get::<bool>(&row, 0)? {
                    return Ok(None);
                }
                let jobs = tx.expired_ids(cutoffs, limit, true)?;
                let attempts =
                    tx.execute("DELETE FROM attempts WHERE job_id = ANY($1)", &[&jobs])?;
                tx.execute("DELETE FROM jobs WHERE id = ANY($1)", &[&jobs])?;
                Ok(Some(Pruned { jobs, attempts }))
            })
        })
    }

    fn expired(&mut self, cutoffs: &[Cutoff]) -> Result<Pruned, StoreError> {
        self.run(|session| {
            session.snapshot(|tx| {
                let jobs = tx.expired_ids(cutoffs, usize::MAX, false)?;
                let row = tx.query_one(
                    "SELECT COUNT(*) FROM attempts WHERE job_id = ANY($1)",
                    &[&jobs],
                )?;
                let attempts = get::<i64>(&row, 0)?.max(0) as u64;
                Ok(Pruned { jobs, attempts })
            })
        })
    }

    fn existing_jobs(&mut self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id",
                &[&ids],
                |row| get::<i64>(row, 0),
            )
        })
    }

    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError> {
        let sql = format!("{SELECT_DISPATCHERS} ORDER BY d.id");
        self.run(|session| {
            session
                .direct()
                .rows(&sql, &[], |row| Ok(dispatcher_at(row)?))
        })
    }

    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError> {
        let sql = format!("{SELECT_DISPATCHERS} WHERE d.heartbeat_at < $1 ORDER BY d.id");
        self.run(|session| {
            session
                .direct()
                .rows(&sql, &[&cutoff], |row| Ok(dispatcher_at(row)?))
        })
    }
}
