//! The [`Store`] interface on SQLite: every call one transaction (`BEGIN IMMEDIATE` for
//! writes), with the helpers its calls share.

use super::*;

/// Settles job `id`, which a claim found unreadable, as failed for `reason`.
pub(super) fn quarantine(
    tx: &Connection,
    id: JobId,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'failed', finished_at = ?2, last_error = ?3 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, now, rows::quarantine_error(reason)]))
    .map_err(query)?;
    Ok(())
}

pub(super) fn state_of(conn: &Connection, id: JobId) -> Result<JobState, StoreError> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(query)?;
    let state = state.ok_or(StoreError::NotFound(id))?;
    JobState::parse(&state)
        .ok_or_else(|| StoreError::Query(format!("job {id} has unknown state {state:?}")))
}

impl SqliteStore {
    /// Jobs each with one of their attempts, `from` naming `jobs j` and `attempts a`, how they
    /// join and which rows: what [`Store::running`] and [`Store::lost_attempts`] read.
    pub(super) fn jobs_with_attempts(&self, from: &str) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {}, {} {from}",
                prefixed(JOB_COLUMNS, "j"),
                prefixed(ATTEMPT_COLUMNS, "a")
            ))
            .map_err(query)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(attempt_at(row, JOB_COLUMN_COUNT).map(|attempt| (job_at(row, 0), attempt)))
            })
            .map_err(query)?;
        decoded(rows)
    }

    pub(super) fn immediate(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(query)
    }

    pub(super) fn ids(&self, sql: &str) -> Result<Vec<JobId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(query)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    pub(super) fn select_dispatchers(
        &self,
        filter: &str,
        cutoff: Option<Millis>,
    ) -> Result<Vec<DispatcherRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT_DISPATCHERS} {filter} ORDER BY d.id"))
            .map_err(query)?;
        let params: &[&dyn rusqlite::ToSql] = match &cutoff {
            Some(cutoff) => &[cutoff],
            None => &[],
        };
        let rows = stmt
            .query_map(params, |r| Ok(dispatcher_at(r)))
            .map_err(query)?;
        decoded(rows)
    }
}

/// The ids of up to `limit` jobs finished before their state's cutoff, oldest first per state:
/// a range scan of `jobs_finished` per cutoff.
pub(super) fn expired_ids(
    conn: &Connection,
    cutoffs: &[Cutoff],
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let mut due = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE state = ?1 AND finished_at < ?2 ORDER BY finished_at LIMIT ?3",
        )
        .map_err(query)?;
    let mut ids = Vec::new();
    for cutoff in cutoffs.iter().filter(|c| c.state.is_terminal()) {
        let wanted = i64::try_from(limit - ids.len()).unwrap_or(i64::MAX);
        if wanted == 0 {
            break;
        }
        let rows = due
            .query_map(params![cutoff.state.as_str(), cutoff.before, wanted], |r| {
                r.get(0)
            })
            .map_err(query)?;
        for id in rows {
            ids.push(id.map_err(query)?);
        }
    }
    Ok(ids)
}

/// How many attempts the jobs `ids` have.
pub(super) fn attempt_count(conn: &Connection, ids: &[JobId]) -> Result<u64, StoreError> {
    let mut count = conn
        .prepare_cached("SELECT COUNT(*) FROM attempts WHERE job_id = ?1")
        .map_err(query)?;
    let mut total = 0;
    for id in ids {
        let n: i64 = count.query_row([id], |r| r.get(0)).map_err(query)?;
        total += n.max(0) as u64;
    }
    Ok(total)
}

impl Store for SqliteStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>, StoreError> {
        let tx = self.immediate()?;
        let mut ids = Vec::with_capacity(jobs.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO jobs (class, method, params, priority, state, max_attempts, retries, \
                     retry_delay_ms, timeout_ms, plugin, run_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(query)?;
            for job in jobs {
                let row = NewRow::of(job, now);
                insert
                    .execute(params![
                        row.class,
                        row.method,
                        row.params,
                        row.priority,
                        row.state,
                        row.max_attempts,
                        row.retries,
                        row.retry_delay_ms,
                        row.timeout_ms,
                        row.plugin,
                        row.run_at,
                        now,
                    ])
                    .map_err(query)?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(query)?;
        Ok(ids)
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
        let tx = self.immediate()?;
        let (jobs, quarantined) = claim_in(&tx, owner, now, limit)?;
        tx.commit().map_err(query)?;
        self.quarantined.extend(quarantined);
        Ok(jobs)
    }

    fn attempts_started(&mut self, started: &[StartedAttempt<'_>]) -> Result<Vec<bool>, StoreError> {
        if started.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.immediate()?;
        let recorded = record_in(&tx, started)?;
        tx.commit().map_err(query)?;
        Ok(recorded)
    }

    fn settle_many(&mut self, settlements: &[Settlement<'_>]) -> Result<Vec<bool>, StoreError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.immediate()?;
        let done = settle_in(&tx, settlements)?;
        tx.commit().map_err(query)?;
        Ok(done)
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
        // One transaction, one commit: the pages the round changes (the jobs, their indexes,
        // the attempts) are written to the WAL once, and a job's claim and its worker's record
        // are durable together.
        let mut tx = self.immediate()?;
        let settled = settle_in(&tx, settlements)?;
        let claimed = if limit == 0 {
            Ok((Vec::new(), Vec::new(), Vec::new()))
        } else {
            // A claim that fails leaves the settles to commit.
            let claim = tx.savepoint().map_err(query)?;
            claim_in(&claim, owner, now, limit)
                .and_then(|(jobs, quarantined)| {
                    let recorded = crate::store::spawn_and_record(&jobs, spawn, |items| {
                        record_in(&claim, items)
                    })?;
                    Ok((jobs, quarantined, recorded))
                })
                .and_then(|claimed| claim.commit().map(|()| claimed).map_err(query))
        };
        tx.commit().map_err(query)?;
        let (claimed, recorded) = match claimed {
            Ok((jobs, quarantined, recorded)) => {
                self.quarantined.extend(quarantined);
                (Ok(jobs), recorded)
            }
            Err(e) => (Err(e), Vec::new()),
        };
        Ok(SettledAndClaimed {
            settled,
            claimed,
            recorded,
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
        let tx = self.immediate()?;
        let lost: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attempts WHERE job_id = ?1 AND attempt = ?2 \
                 AND outcome = 'lost')",
            )
            .and_then(|mut s| s.query_row(params![id, attempt], |r| r.get(0)))
            .map_err(query)?;
        if !lost {
            return Ok(Amended::NotLost);
        }
        tx.prepare_cached(
            "UPDATE attempts SET outcome = ?3, error = ?4 WHERE job_id = ?1 AND attempt = ?2",
        )
        .and_then(|mut s| s.execute(params![id, attempt, end.outcome, end.stored_error()]))
        .map_err(query)?;
        let settled = Settled::of(end, next);
        let moved = tx
            .prepare_cached(
                "UPDATE jobs SET state = ?3, run_at = COALESCE(?4, run_at), finished_at = ?5, \
                 last_error = ?6, result = ?7, max_attempts = max_attempts + ?8 \
                 WHERE id = ?1 AND attempts = ?2 AND state IN ('queued', 'scheduled')",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    attempt,
                    settled.state.as_str(),
                    settled.run_at,
                    settled.finished_at,
                    end.stored_error(),
                    settled.result,
                    settled.extra_attempts
                ])
            })
            .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(if moved == 1 {
            Amended::Moved
        } else {
            Amended::Recorded
        })
    }

    fn cancel(&mut self, id: JobId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let tx = self.immediate()?;
        let outcome = rows::cancel_outcome(state_of(&tx, id)?);
        match outcome {
            CancelOutcome::Cancelled => tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1",
                params![id, now],
            ),
            CancelOutcome::Requested => {
                tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])
            }
            CancelOutcome::AlreadyFinished(_) => Ok(0),
        }
        .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(outcome)
    }

    fn retry(&mut self, id: JobId, now: Millis) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        let (attempts, retries): (i64, i64) = tx
            .query_row(
                "SELECT attempts, retries FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(query)?
            .ok_or(StoreError::NotFound(id))?;
        let (retries, max_attempts) =
            rows::renewed_budget(id, state_of(&tx, id)?, attempts, retries)?;
        tx.execute(
            "UPDATE jobs SET state = 'queued', run_at = ?2, finished_at = NULL, cancel_requested = 0, \
             retries = ?3, max_attempts = ?4 WHERE id = ?1",
            params![id, now, retries, max_attempts],
        )
        .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(())
    }

    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, StoreError> {
        // One read transaction: both statements see one snapshot, so the attempts counted
        // are the attempts listed.
        let tx = self.conn.transaction().map_err(query)?;
        let job = tx
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(query)?;
        let Some(job) = job else { return Ok(None) };
        let attempts = tx
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 ORDER BY attempt"
            ))
            .and_then(|mut stmt| {
                stmt.query_map([id], attempt_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(Some(rows::with_attempts(job, attempts)))
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                 AND (?2 IS NULL OR class = ?2) AND (?3 IS NULL OR priority = ?3) \
                 ORDER BY id DESC LIMIT ?4 OFFSET ?5"
            ))
            .map_err(query)?;
        let rows = stmt
            .query_map(
                params![
                    filter.state.map(JobState::as_str),
                    filter.class,
                    filter.priority.map(rows::priority_to_i64),
                    i64::from(filter.limit),
                    i64::from(filter.offset)
                ],
                job_from_row,
            )
            .map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    fn stats(&mut self) -> Result<Stats, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .map_err(query)?;
        let counts = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(query)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query)?;
        Ok(rows::stats(counts))
    }

    fn finished_since(&mut self, since: Millis) -> Result<Finished, StoreError> {
        let mut count = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1 AND finished_at >= ?2")
            .map_err(query)?;
        let mut of = |state: JobState| {
            count
                .query_row(params![state.as_str(), since], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(query)
        };
        Ok(Finished {
            completed: of(JobState::Completed)?,
            failed: of(JobState::Failed)?,
        })
    }

    fn cancel_requests(&mut self) -> Result<Vec<JobId>, StoreError> {
        self.ids("SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = 1")
    }

    fn running(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        self.jobs_with_attempts(rows::FROM_RUNNING)
    }

    fn next_run_at(&mut self) -> Result<Option<Millis>, StoreError> {
        // The smallest run_at of each priority is the first entry of its range of `jobs_due`.
        let mut first = self
            .conn
            .prepare_cached(
                "SELECT MIN(run_at) FROM jobs WHERE state IN ('queued', 'scheduled') AND priority = ?1",
            )
            .map_err(query)?;
        let mut earliest: Option<Millis> = None;
        for priority in PRIORITIES_FIRST_TO_LAST {
            let at: Option<Millis> = first.query_row([priority], |r| r.get(0)).map_err(query)?;
            earliest = match (earliest, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    #[cfg(any(test, feature = "internals"))]
    fn unfinished(&mut self) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'scheduled', 'running')",
            )
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(query)
    }

    fn unfinished_plugins(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT plugin FROM jobs \
                 WHERE state IN ('queued', 'scheduled', 'running') ORDER BY plugin",
            )
            .map_err(query)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0).map(PathBuf::from))
            .map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    fn register_dispatcher(
        &mut self,
        info: &DispatcherInfo,
        now: Millis,
    ) -> Result<DispatcherId, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO dispatchers (host, pid, slots, state_dir, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![info.host, info.pid, info.slots, info.state_dir, now],
                    |r| r.get(0),
                )
            })
            .map_err(query)
    }

    fn heartbeat(&mut self, id: DispatcherId, now: Millis) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("UPDATE dispatchers SET heartbeat_at = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, now]))
            .map(|changed| changed == 1)
            .map_err(query)
    }

    fn deregister(&mut self, id: DispatcherId) -> Result<bool, StoreError> {
        let tx = self.immediate()?;
        let owns_unsettled: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attempts WHERE dispatcher = ?1 AND finished_at IS NULL)",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get(0)))
            .map_err(query)?;
        if owns_unsettled {
            return Ok(false);
        }
        tx.execute("DELETE FROM dispatchers WHERE id = ?1", [id])
            .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(true)
    }

    fn prune(&mut self, cutoffs: &[Cutoff], limit: usize) -> Result<Option<Pruned>, StoreError> {
        let tx = self.immediate()?;
        let jobs = expired_ids(&tx, cutoffs, limit)?;
        let mut attempts = 0;
        {
            let mut delete_attempts = tx
                .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")
                .map_err(query)?;
            let mut delete_job = tx
                .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                .map_err(query)?;
            for id in &jobs {
                attempts += delete_attempts.execute([id]).map_err(query)? as u64;
                delete_job.execute([id]).map_err(query)?;
            }
        }
        tx.commit().map_err(query)?;
        Ok(Some(Pruned { jobs, attempts }))
    }

    fn expired(&mut self, cutoffs: &[Cutoff]) -> Result<Pruned, StoreError> {
        // One read transaction: the jobs and their attempts counted on the same snapshot.
        let tx = self.conn.transaction().map_err(query)?;
        let jobs = expired_ids(&tx, cutoffs, usize::MAX)?;
        let attempts = attempt_count(&tx, &jobs)?;
        drop(tx);
        Ok(Pruned { jobs, attempts })
    }

    fn existing_jobs(&mut self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let mut exists = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
            .map_err(query)?;
        let mut found = Vec::new();
        for &id in ids {
            if exists.query_row([id], |r| r.get(0)).map_err(query)? {
                found.push(id);
            }
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("", None)
    }

    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("WHERE d.heartbeat_at < ?1", Some(cutoff))
    }
}

/// Claims up to `limit` due jobs for `owner` in `tx`, as [`Store::claim`] does: the jobs
/// claimed, and those found unreadable and settled as failed instead.
fn claim_in(
    tx: &Connection,
    owner: DispatcherId,
    now: Millis,
    limit: usize,
) -> Result<(Vec<JobRecord>, Vec<Quarantined>), StoreError> {
    let registered: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM dispatchers WHERE id = ?1)")
        .and_then(|mut s| s.query_row([owner], |r| r.get(0)))
        .map_err(query)?;
    if !registered {
        return Err(StoreError::NotRegistered(owner));
    }
    // One range scan of `jobs_due` per priority, highest first, until `limit` are found;
    // then the rows whose priority is none of those (only a hand edit writes them), so
    // that they are quarantined rather than left waiting for ever.
    let mut due: Vec<JobRecord> = Vec::with_capacity(limit);
    {
        let mut by_priority = tx
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') \
                 AND priority = ?1 AND run_at <= ?2 ORDER BY run_at, id LIMIT ?3"
            ))
            .map_err(query)?;
        for priority in PRIORITIES_FIRST_TO_LAST {
            let wanted = (limit - due.len()) as i64;
            if wanted == 0 {
                break;
            }
            let rows = by_priority
                .query_map(params![priority, now, wanted], job_from_row)
                .map_err(query)?;
            for job in rows {
                due.push(job.map_err(query)?);
            }
        }
        let wanted = (limit - due.len()) as i64;
        if wanted > 0 {
            let mut unknown = tx
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') \
                     AND (priority < 0 OR priority > 2) AND run_at <= ?1 \
                     ORDER BY run_at, id LIMIT ?2"
                ))
                .map_err(query)?;
            let rows = unknown
                .query_map(params![now, wanted], job_from_row)
                .map_err(query)?;
            for job in rows {
                due.push(job.map_err(query)?);
            }
        }
    }
    let mut quarantined = Vec::new();
    let mut jobs = Vec::with_capacity(due.len());
    {
        let mut claim = tx
            .prepare_cached(&format!(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, \
                 started_at = COALESCE(started_at, ?2) WHERE id = ?1 RETURNING {JOB_COLUMNS}"
            ))
            .map_err(query)?;
        for job in due {
            if let Some(reason) = rows::unclaimable(&job) {
                quarantine(tx, job.id, &reason, now)?;
                quarantined.push(Quarantined { id: job.id, reason });
                continue;
            }
            let claimed = claim
                .query_row(params![job.id, now], job_from_row)
                .map_err(query)?;
            if let Some(problem) = claimed.problem {
                return Err(StoreError::Query(format!(
                    "job {} cannot be read once claimed: {problem}",
                    job.id
                )));
            }
            jobs.push(claimed);
        }
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO attempts (job_id, attempt, started_at, dispatcher) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(query)?;
        for job in &jobs {
            insert
                .execute(params![job.id, job.attempts, now, owner])
                .map_err(query)?;
        }
    }
    Ok((jobs, quarantined))
}

/// Records the workers of claimed attempts in `tx`, as [`Store::attempts_started`] does.
fn record_in(tx: &Connection, started: &[StartedAttempt<'_>]) -> Result<Vec<bool>, StoreError> {
    let mut record = tx
        .prepare_cached(
            "UPDATE attempts SET pid = ?3, plugin_hash = ?4, output_path = ?5 \
             WHERE job_id = ?1 AND attempt = ?2 AND finished_at IS NULL",
        )
        .map_err(query)?;
    started
        .iter()
        .map(|item| {
            let changed = record
                .execute(params![
                    item.id,
                    item.attempt,
                    item.start.pid,
                    item.start.plugin_hash,
                    item.start.output_path.to_string_lossy()
                ])
                .map_err(query)?;
            Ok(changed == 1)
        })
        .collect()
}

/// Settles ended attempts in `tx`, as [`Store::settle_many`] does.
fn settle_in(
    tx: &Connection,
    settlements: &[Settlement<'_>],
) -> Result<Vec<bool>, StoreError> {
    let mut done = Vec::with_capacity(settlements.len());
    // The job moves on only while it runs that attempt; the attempt is recorded only
    // then. An earlier item for the same attempt leaves it no longer running.
    let mut move_job = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?3, run_at = COALESCE(?4, run_at), finished_at = ?5, \
             last_error = COALESCE(?6, last_error), result = ?7, \
             max_attempts = max_attempts + ?8 \
             WHERE id = ?1 AND state = 'running' AND attempts = ?2",
        )
        .map_err(query)?;
    let mut record = tx
        .prepare_cached(
            "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5, \
             output_bytes = ?6 WHERE job_id = ?1 AND attempt = ?2",
        )
        .map_err(query)?;
    for item in settlements {
        let (end, settled) = (item.end, Settled::of(item.end, item.next));
        let moved = move_job
            .execute(params![
                item.id,
                item.attempt,
                settled.state.as_str(),
                settled.run_at,
                settled.finished_at,
                end.stored_error(),
                settled.result,
                settled.extra_attempts
            ])
            .map_err(query)?
            == 1;
        if moved {
            record
                .execute(params![
                    item.id,
                    item.attempt,
                    end.finished_at,
                    end.outcome,
                    end.stored_error(),
                    i64::try_from(end.output_bytes).unwrap_or(i64::MAX)
                ])
                .map_err(query)?;
        }
        done.push(moved);
    }
    Ok(done)
}
