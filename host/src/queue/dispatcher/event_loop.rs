//! The loop itself: wait for the next event, then claim what is due into free slots, apply
//! cancels, record spawns and settle finished attempts as [`crate::queue::lifecycle`] decides.

use super::*;

/// When the loop is to wake next ([`Dispatcher::next_wake`]).
enum Wake {
    /// At this instant, or at the first event before it.
    At(Instant),
    /// At once: look at the store again.
    Again,
    /// Never: the dispatcher leaves.
    Leave,
}

impl Dispatcher {
    pub(super) fn run(&mut self, options: &ServeOptions) -> Result<(), DispatcherError> {
        let mut recovered = false;
        let mut check_cancels = true;
        let mut idle_since: Option<Instant> = None;
        loop {
            let claimed = self.write_pending(self.stopping.is_none() && recovered)?;
            if !recovered {
                // What a predecessor left running is settled before anything is claimed.
                recovered = self.recover()?;
                if recovered {
                    self.amend_lost()?;
                }
            }
            if self.stopping.is_none() && recovered {
                if check_cancels {
                    self.apply_cancels()?;
                }
                if !claimed {
                    self.claim()?;
                }
            }
            // Once stopping, what the store did not take by the deadline is settled from the
            // workers' reports by the next dispatcher.
            let settled_or_late =
                self.unsettled.is_empty() || self.stopping.is_some_and(|d| Instant::now() >= d);
            if self.stopping.is_some() && self.running.is_empty() && settled_or_late {
                return Ok(());
            }

            let wake = match self.next_wake(options, &mut idle_since)? {
                Wake::At(wake) => wake,
                Wake::Again => continue,
                Wake::Leave => return Ok(()),
            };

            check_cancels = false;
            // Handle everything that is waiting before touching the store again: the attempts
            // ended meanwhile are settled together at the top of the loop (group commit), in
            // the round that claims into their slots.
            for event in self.slots.wait(&self.inbox, wake)? {
                check_cancels |= self.handle(event)?;
            }
            if self
                .stopping
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                self.interrupt_all();
            }
            self.report_health();
        }
    }

    /// When the loop wakes next: at the next scheduled job, the idle exit or the stop deadline,
    /// whichever is first (and never later than [`SAFETY_WAKE`]); or at once, or never (the
    /// idle exit came and nothing arrived meanwhile). Idle is nothing waiting in the store and
    /// nothing running here (other dispatchers' running jobs are theirs to finish).
    fn next_wake(
        &mut self,
        options: &ServeOptions,
        idle_since: &mut Option<Instant>,
    ) -> Result<Wake, DispatcherError> {
        let now = Instant::now();
        let mut wake = now + SAFETY_WAKE;
        let next =
            if self.stopping.is_none() && self.running.len() < self.settings.dispatcher.slots {
                self.read("look for waiting jobs", |s| s.next_run_at())?
                    .flatten()
            } else {
                None
            };
        if let Some(at) = self.trouble.retry_at() {
            wake = wake.min(at);
        }
        if let Some(deadline) = self.stopping {
            wake = wake.min(deadline);
        } else if let Some(at) = next {
            let wait = u64::try_from(at - now_millis()).unwrap_or(0);
            wake = wake.min(now + Duration::from_millis(wait));
        }
        if let Some(idle_exit) = options.idle_exit {
            let idle = self.running.is_empty()
                && self.unsettled.is_empty()
                && self.trouble.retry_at().is_none();
            if idle && self.stopping.is_none() && next.is_none() {
                let since = *idle_since.get_or_insert(now);
                if now >= since + idle_exit {
                    if self.leave_if_still_idle()? {
                        return Ok(Wake::Leave);
                    }
                    *idle_since = None;
                    return Ok(Wake::Again);
                }
                wake = wake.min(since + idle_exit);
            } else {
                *idle_since = None;
            }
        }
        Ok(Wake::At(wake))
    }

    /// Handles one event; true when it may have asked to cancel a running job.
    fn handle(&mut self, event: Event) -> Result<bool, DispatcherError> {
        let mut check_cancels = false;
        match event {
            Event::Rang(RING_STOP) | Event::Signal => self.begin_stop(),
            Event::Rang(_) => {
                // Another process enqueued, cancelled or retried.
                check_cancels = true;
                self.changed();
            }
            Event::PluginsChanged => {
                self.plugins.reload();
                self.collect_snapshots()?;
                self.changed();
            }
            Event::Tick => {
                if self.rescue()? {
                    check_cancels = true;
                }
                if self.amended.elapsed() >= AMEND_EVERY {
                    // Workers rescued while they ran on may have ended since.
                    self.amended = Instant::now();
                    self.amend_lost()?;
                }
            }
            Event::Evicted(id) => self.evicted(id)?,
            Event::Finished {
                id,
                attempt,
                result,
                released,
            } => self.finished(id, attempt, result, released)?,
        }
        Ok(check_cancels)
    }

    /// Rewrites the health file when the list of problems changed.
    pub(super) fn report_health(&mut self) {
        let mut problems = self.trouble.problems();
        let logs = joblog::health();
        if let Some(since) = logs.since {
            let error = format!(
                "{} ({} lines waiting to be written, {} dropped)",
                logs.last_error.unwrap_or_default(),
                logs.pending_lines,
                logs.dropped_lines
            );
            problems.push(health::Problem::new(
                "the log files cannot be written",
                since,
                &error,
            ));
        }
        if problems == self.reported {
            return;
        }
        let Some(file) = &mut self.health else {
            return;
        };
        let report = Health {
            pid: std::process::id(),
            updated_at: now_millis(),
            problems: problems.clone(),
        };
        if let Err(e) = file.write(&report) {
            tracing::warn!("cannot write the dispatcher's health file: {e}");
        }
        self.reported = problems;
    }

    /// How many jobs it may claim now: its free slots, or none while the store or the workers
    /// are in trouble, ended attempts wait to be settled or abandoned workers to end.
    fn free_to_claim(&self) -> usize {
        let free = self
            .settings
            .dispatcher
            .slots
            .saturating_sub(self.running.len());
        if free == 0
            || !self.trouble.may_claim()
            || !self.unsettled.is_empty()
            || !self.abandoned.is_empty()
        {
            return 0;
        }
        free
    }

    /// Claims as many due jobs as there are free slots and starts them.
    pub(super) fn claim(&mut self) -> Result<(), DispatcherError> {
        let free = self.free_to_claim();
        if free == 0 {
            return Ok(());
        }
        self.round(Vec::new(), free).map(|_| ())
    }

    /// Fires the cancel tokens of running jobs whose cancellation was requested.
    pub(super) fn apply_cancels(&mut self) -> Result<(), DispatcherError> {
        if self.running.is_empty() {
            return Ok(());
        }
        let mut fired = false;
        let Some(requests) = self.read("read cancel requests", |s| s.cancel_requests())? else {
            return Ok(());
        };
        for id in requests {
            if let Some(running) = self.running.get(&id) {
                running.cancel.cancel();
                fired = true;
            }
        }
        if fired {
            self.changed();
        }
        Ok(())
    }

    /// An attempt ended: decides what follows ([`lifecycle`]) and holds it to settle, with
    /// the other attempts ended meanwhile, once the loop has taken in every pending event
    /// ([`Dispatcher::write_pending`]).
    pub(super) fn finished(
        &mut self,
        id: JobId,
        attempt: u32,
        result: Result<AttemptRecord, AttemptError>,
        released: bool,
    ) -> Result<(), DispatcherError> {
        if self.abandoned.remove(&(id, attempt)) {
            // Its round was not stored: the store holds no such attempt of ours (or, were its
            // commit lost in doubt, settles it as claimed but not learned).
            return Ok(());
        }
        let Some(running) = self.running.remove(&id) else {
            return Ok(());
        };
        let job = running.job;
        let record = match result {
            Ok(record) => {
                if released && matches!(record.outcome, Outcome::NotStarted(_)) {
                    // Let go, it still did not start (it died first, say): a worker problem,
                    // so claims pause, as when one cannot be spawned, rather than the job
                    // going round and round.
                    Trouble::failed(
                        &mut self.trouble.workers,
                        "Workers cannot be started",
                        format!(
                            "the worker (pid {}) of attempt {attempt} of job {id} did not start: {}",
                            record.pid,
                            record.outcome.error().unwrap_or_default()
                        ),
                    );
                }
                record
            }
            Err(error) => {
                if !released {
                    // A dispatcher's problem, not the job's: it goes back to the queue, and
                    // claims pause until workers can be started again.
                    Trouble::failed(
                        &mut self.trouble.workers,
                        "Workers cannot be started",
                        format!("{error:#}"),
                    );
                }
                tracing::error!("attempt {attempt} of job {id} could not run: {error:#}");
                AttemptRecord {
                    attempt,
                    pid: 0,
                    duration: Duration::ZERO,
                    outcome: error.outcome(released),
                    output: crate::runner::supervisor::capture::CapturedOutput {
                        path: AttemptPaths::new(&self.settings.state_dir, &id.to_string(), attempt)
                            .output,
                        total_bytes: 0,
                        dropped_bytes: 0,
                        not_saved: None,
                    },
                }
            }
        };
        let mut cancel_requested = job.cancel_requested;
        if !matches!(record.outcome, Outcome::Ok(_)) {
            // Whether a cancel arrived while it ran decides between "cancelled" and a retry;
            // without an answer from the store, what this dispatcher knew decides.
            let requests = self.read("read cancel requests", |s| s.cancel_requests())?;
            cancel_requested |= requests.is_some_and(|ids| ids.contains(&id));
        }
        let now = now_millis();
        let ending = if running.interrupted {
            Ending::Interrupted(&record.outcome)
        } else {
            Ending::Ended(&record.outcome)
        };
        let Transition {
            outcome,
            error,
            next,
        } = lifecycle::decide(&job, ending, cancel_requested, now);
        let end = AttemptEnd {
            finished_at: now,
            outcome,
            error,
            output_bytes: record.output.total_bytes,
        };
        self.unsettled.push(Unsettled {
            job,
            attempt,
            end,
            next,
            record: Some(record),
            plugin_hash: running.plugin_hash,
        });
        Ok(())
    }

    /// Removes the plugin snapshots nothing needs any more: not active, not the version of a
    /// waiting job, not run by an attempt of ours.
    pub(super) fn collect_snapshots(&mut self) -> Result<(), DispatcherError> {
        if self.plugins.inventory.is_none() {
            return Ok(());
        }
        let Some(unfinished) = self.read("list the plugin versions in use", |s| {
            s.unfinished_plugins()
        })?
        else {
            return Ok(());
        };
        let mut in_use: BTreeSet<String> = unfinished
            .iter()
            .filter_map(|p| inventory::snapshot_hash(p).map(str::to_owned))
            .collect();
        in_use.extend(self.running.values().map(|r| r.plugin_hash.clone()));
        inventory::collect_snapshots(&self.settings, &in_use);
        Ok(())
    }

    pub(super) fn heartbeats(&self) -> std::sync::MutexGuard<'_, Heartbeats> {
        self.heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on the store (`what` says what for, in the log). An error that passes
    /// (busy, disk full, a lost connection: [`StoreError::is_transient`]) puts the dispatcher
    /// in trouble and gives `Ok(None)`: the caller defers or skips its work, and nothing new is
    /// claimed until the store answers again. A refused call is logged and gives `None` too.
    /// Only a fatal error (a corrupt database, a newer schema) ends the dispatcher. A lost
    /// connection is tried once more at once, since the store reconnects on its next call.
    pub(super) fn store<T>(
        &mut self,
        what: &str,
        call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        self.call_store(what, true, call)
    }

    /// Like [`Dispatcher::store`] for a call that only reads: its success says nothing about
    /// whether writes work again (a store may let readers go on while another process holds
    /// its write lock), so it leaves the trouble as it is.
    pub(super) fn read<T>(
        &mut self,
        what: &str,
        call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        self.call_store(what, false, call)
    }

    pub(super) fn call_store<T>(
        &mut self,
        what: &str,
        writes: bool,
        mut call: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        let mut result = call(&mut *self.store);
        // Repeating is harmless for every call the dispatcher makes (a settle or a start
        // already stored is refused as such; a claim it did not learn of is requeued).
        if lost_connection(&result) {
            result = call(&mut *self.store);
        }
        self.judge(what, writes, result)
    }

    /// What [`Dispatcher::call_store`] makes of the `result` of a call to `what`.
    pub(super) fn judge<T>(
        &mut self,
        what: &str,
        writes: bool,
        result: Result<T, StoreError>,
    ) -> Result<Option<T>, DispatcherError> {
        match result {
            Ok(value) => {
                if writes {
                    Trouble::recovered(&mut self.trouble.store, "The job database");
                }
                Ok(Some(value))
            }
            Err(e) if e.is_fatal() => Err(e.into()),
            Err(e) if e.is_transient() => {
                Trouble::failed(
                    &mut self.trouble.store,
                    "The job database cannot be used",
                    format!("cannot {what}: {e}"),
                );
                Ok(None)
            }
            Err(e) => {
                tracing::error!("The job database refused to {what}: {e}");
                Ok(None)
            }
        }
    }

    /// Settles the attempts that ended, once the store's retry is due if it is in trouble,
    /// claiming into the free slots with `may_claim` ([`Dispatcher::round`]). True when it
    /// claimed (so the loop need not).
    pub(super) fn write_pending(&mut self, may_claim: bool) -> Result<bool, DispatcherError> {
        let due = self
            .trouble
            .store
            .as_ref()
            .is_none_or(|p| Instant::now() >= p.retry_at);
        if !due || self.unsettled.is_empty() {
            return Ok(false);
        }
        let ended = std::mem::take(&mut self.unsettled);
        let free = if may_claim { self.free_to_claim() } else { 0 };
        self.round(ended, free)
    }

    /// One round with the store, in one call ([`Store::settle_and_claim`]: one transaction on
    /// SQLite and PostgreSQL): the attempts in `ended` settled, in order, each reported
    /// ([`Dispatcher::settled`]) only once the store has committed it; up to `free` due jobs
    /// claimed, their workers spawned while the claim is not yet committed and recorded with it;
    /// and once it committed, those workers let go. What the store did not take is held, in
    /// order, for the next try, and workers whose claim was not stored are told not to start
    /// ([`Dispatcher::abandon`]). True when it claimed.
    fn round(&mut self, ended: Vec<Unsettled>, free: usize) -> Result<bool, DispatcherError> {
        let settlements: Vec<Settlement<'_>> = ended
            .iter()
            .map(|u| Settlement {
                id: u.job.id,
                attempt: u.attempt,
                end: &u.end,
                next: &u.next,
            })
            .collect();
        let what = match settlements.len() {
            0 => "claim jobs",
            1 => "settle an attempt",
            _ => "settle attempts",
        };
        let (mut result, mut starting) = self.store_round(&settlements, free);
        if lost_connection(&result)
            && starting.claimed.is_empty()
            && starting.failed.is_none()
        {
            // Lost before any job was given a slot: asked again at once, since the store
            // reconnects on its next call. (Once one was, its worker is told not to start, and
            // nothing is claimed until it ended: a claim that was rolled back would be claimed
            // again under the same attempt number.)
            (result, starting) = self.store_round(&settlements, free);
        }
        drop(settlements);
        if let Some(error) = starting.failed.take() {
            self.abandon(starting);
            return Err(error);
        }
        // On a fatal error the go-aheads are dropped: no worker starts.
        let Some(answer) = self.judge(what, true, result)? else {
            self.abandon(starting);
            self.unsettled = ended;
            return Ok(false);
        };
        for (done, settled) in ended.into_iter().zip(answer.settled) {
            // False: settled by somebody else (a rescuer) first.
            if settled {
                self.settled(done)?;
            }
        }
        if free == 0 {
            return Ok(false);
        }
        let quarantined = self.store.take_quarantined();
        for job in &quarantined {
            joblog::quarantined(job.id, &job.reason);
        }
        let Some(claimed) = self.judge("claim jobs", true, answer.claimed)? else {
            self.abandon(starting);
            return Ok(true);
        };
        Trouble::recovered(&mut self.trouble.workers, "Starting workers");
        if !claimed.is_empty() || !quarantined.is_empty() {
            self.changed();
        }
        // `spawn` gave every claimed job a slot, in order.
        for ((job, recorded), (_, gate)) in
            claimed.iter().zip(answer.recorded).zip(starting.claimed)
        {
            joblog::started(&job.name(), &job.params);
            let Some(gate) = gate else {
                // No worker: its end, why, is on its way.
                continue;
            };
            if !recorded {
                tracing::warn!(
                    "Attempt {} of job {} is no longer running in the job database (its \
                     dispatcher was taken for dead and its jobs rescued): its worker does \
                     not start",
                    job.attempts,
                    job.id
                );
            }
            self.slots.release(gate, recorded);
        }
        Ok(true)
    }

    /// One try of [`Dispatcher::round`]'s store call; the workers it spawned.
    fn store_round(
        &mut self,
        settlements: &[Settlement<'_>],
        free: usize,
    ) -> (Result<SettledAndClaimed, StoreError>, Starting) {
        let mut starting = Starting::default();
        let owner = self.owner;
        let Self {
            store,
            plugins,
            running,
            slots,
            ..
        } = self;
        let result = store.settle_and_claim(settlements, owner, now_millis(), free, &mut |jobs| {
            starting.start(jobs, plugins, running, slots)
        });
        (result, starting)
    }

    /// Gives up the attempts of a claim that was not stored (or not known to be): their
    /// workers are told not to start, and their ends are not settled
    /// ([`Dispatcher::abandoned`]).
    fn abandon(&mut self, starting: Starting) {
        if starting.claimed.is_empty() {
            return;
        }
        if self.trouble.store.is_none() {
            // Refused rather than failed (the store is in trouble already if it failed): the
            // next claims back off all the same, rather than spawn workers in a loop.
            let jobs: Vec<String> = starting.claimed.iter().map(|((id, _), _)| id.to_string()).collect();
            Trouble::failed(
                &mut self.trouble.store,
                "The job database cannot be used",
                format!(
                    "the claim of job(s) {} was not stored, so their workers do not start",
                    jobs.join(", ")
                ),
            );
        }
        for (key, gate) in starting.claimed {
            if let Some(gate) = gate {
                self.slots.release(gate, false);
            }
            self.running.remove(&key.0);
            self.abandoned.insert(key);
        }
    }

    /// What follows an attempt the store has settled: its log lines, the followers' wake-up,
    /// the dashboard's refresh, and the snapshots it may have been the last to need.
    pub(super) fn settled(&mut self, done: Unsettled) -> Result<(), DispatcherError> {
        let Unsettled {
            job,
            attempt,
            end,
            next,
            record,
            plugin_hash,
        } = done;
        self.changed();
        if let Some(record) = &record {
            let attempt = joblog::FinishedAttempt {
                attempt: record.attempt,
                pid: record.pid,
                duration: record.duration,
                outcome: &record.outcome.label(),
                output: (record.output.total_bytes > 0).then_some(record.output.path.as_path()),
            };
            joblog::attempt_finished(&job.name(), job.id, &attempt);
            if let Some(error) = &record.output.not_saved {
                joblog::output_not_saved(&job.name(), job.id, record.attempt, error);
            }
        }
        let error = end.error.unwrap_or_default();
        log_next(&job, attempt, &next, &error, end.finished_at);
        notify_waiters(&self.paths.waiters, job.id);
        if record.is_some() && !self.plugins.is_active(&plugin_hash) {
            // It may have been the last job needing that version.
            self.collect_snapshots()?;
        }
        Ok(())
    }

    pub(super) fn changed(&self) {
        if let Some(on_change) = &self.on_change {
            on_change();
        }
    }

    pub(super) fn begin_stop(&mut self) {
        match self.stopping {
            // A second request: stop the attempts now.
            Some(_) => self.interrupt_all(),
            None => {
                self.stopping = Some(Instant::now() + self.settings.dispatcher.shutdown_grace);
                tracing::info!(
                    "Dispatcher stopping: no new attempts; {} running",
                    self.running.len()
                );
            }
        }
    }

    pub(super) fn interrupt_all(&mut self) {
        for running in self.running.values_mut() {
            if !running.interrupted {
                running.interrupted = true;
                running.cancel.cancel();
            }
        }
    }

    /// The idle exit: stop answering the doorbell, then look once more. An enqueuer that
    /// committed before this look is seen; one after it finds no doorbell and starts a new
    /// dispatcher. Returns false (and answers the doorbell again) if work arrived.
    pub(super) fn leave_if_still_idle(&mut self) -> Result<bool, DispatcherError> {
        let _ = self.doorbell.unlink();
        let nothing_waits = self.trouble.retry_at().is_none()
            && self.unsettled.is_empty()
            && self.read("look for waiting jobs", |s| s.next_run_at())? == Some(None);
        if nothing_waits {
            return Ok(true);
        }
        self.doorbell =
            listen(&self.paths.doorbell, &self.tx).map_err(|source| DispatcherError::Setup {
                what: "bind the doorbell again".into(),
                source,
            })?;
        Ok(false)
    }
}

/// Logs what became of `job` after attempt `attempt`: the spec's line for `next`.
pub(super) fn log_next(job: &JobRecord, attempt: u32, next: &Next, error: &str, now: Millis) {
    let name = job.name();
    match next {
        Next::Complete(_) => joblog::completed(&name, &job.params),
        Next::Retry(at) => {
            let delay = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
            joblog::retrying(&name, &job.params, attempt, error, delay);
        }
        Next::Fail => joblog::failed(&name, &job.params, error),
        Next::Cancel => joblog::cancelled(&name, &job.params),
        Next::Requeue => joblog::requeued(&name, &job.params, error),
    }
}

/// Whether `result` failed on a lost connection, so that the call is worth making again at
/// once: the store reconnects on its next call.
fn lost_connection<T>(result: &Result<T, StoreError>) -> bool {
    matches!(
        result,
        Err(StoreError::ConnectionLost { .. } | StoreError::CommitUnknown { .. })
    )
}

/// The workers a round started, inside its claim's transaction.
#[derive(Default)]
struct Starting {
    /// The attempts given a slot, in the order of the jobs claimed, each with its worker's
    /// gate (none when no worker could be started): each ends (its worker's end, or why
    /// none could be started) as an [`Event::Finished`].
    claimed: Vec<(Key, Option<Gate>)>,
    /// Why the dispatcher cannot go on, if it cannot.
    failed: Option<DispatcherError>,
}

impl Starting {
    /// Gives each of `jobs`, just claimed, a slot ([`Running`], running the active version of
    /// its plugin) and a worker waiting at its gate; answers each one's start to record.
    fn start(
        &mut self,
        jobs: &[JobRecord],
        plugins: &mut Plugins,
        running: &mut HashMap<JobId, Running>,
        slots: &mut Slots,
    ) -> Vec<Option<AttemptStart>> {
        plugins.reload();
        jobs.iter()
            .map(|job| {
                if self.failed.is_some() {
                    return None;
                }
                let mut job = job.clone();
                let serving = plugins.version_for(&job);
                job.plugin = serving.snapshot;
                let plugin_hash = serving.hash;
                let cancel = match CancelToken::new() {
                    Ok(cancel) => cancel,
                    Err(source) => {
                        self.failed = Some(DispatcherError::Setup {
                            what: "create a cancel token".into(),
                            source,
                        });
                        return None;
                    }
                };
                let spawned = slots.start(&job, &plugin_hash, serving.fork_safe, Arc::clone(&cancel));
                let key = (job.id, job.attempts);
                running.insert(
                    job.id,
                    Running {
                        job,
                        plugin_hash,
                        cancel,
                        interrupted: false,
                    },
                );
                let (start, gate) = spawned.unzip();
                self.claimed.push((key, gate));
                start
            })
            .collect()
    }
}
