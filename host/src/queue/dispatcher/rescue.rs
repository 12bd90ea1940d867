//! Attempts nobody watches any more: adopting what a crashed predecessor on this host left
//! running, rescuing the jobs of dispatchers whose lease ran out, and amending attempts settled
//! lost once their report turns up.

use super::*;

impl Dispatcher {
    /// Rescues the jobs of dispatchers whose lease ran out: each of their running attempts is
    /// settled as `lost` and the job retried per its policy, then the dispatcher is
    /// deregistered. Also settles this dispatcher's own attempts that it does not know of (a
    /// claim whose answer the connection lost) and deregisters its predecessors once their
    /// attempts are settled. Returns whether it changed any job.
    pub(super) fn rescue(&mut self) -> Result<bool, DispatcherError> {
        let now = now_millis();
        let cutoff = now - self.settings.dispatcher.lease.as_millis() as i64;
        let expired: Vec<DispatcherRecord> = self
            .read("look for expired dispatchers", |s| {
                s.expired_dispatchers(cutoff)
            })?
            .unwrap_or_default()
            .into_iter()
            // Never itself: its own heartbeat may just be late on a loaded machine.
            .filter(|d| d.id != self.owner)
            .collect();
        // Its own unknown attempts are looked for once a heartbeat period; others' only when
        // some dispatcher's lease ran out.
        let own_check = self.checked_own.elapsed() >= self.settings.dispatcher.lease / 5;
        if expired.is_empty() && !own_check && self.predecessors.is_empty() {
            return Ok(false);
        }
        if own_check {
            self.checked_own = Instant::now();
        }
        let Some(running) = self.read("list running jobs", |s| s.running())? else {
            return Ok(false);
        };
        let mut unwatched = Vec::new();
        for (job, attempt) in running {
            // Its own, ended or not, whose settling it may still hold.
            let known = self.running.contains_key(&job.id)
                || self.unsettled.iter().any(|u| u.job.id == job.id);
            if known {
                continue;
            }
            let Some(owner) = attempt.dispatcher else {
                continue;
            };
            let ending = if owner == self.owner {
                // Claimed, but the answer was lost with the connection.
                Ending::ClaimNotLearned
            } else if let Some(dead) = expired.iter().find(|d| d.id == owner) {
                Ending::OwnerExpired {
                    owner: dead,
                    worker_recorded: attempt.pid.is_some(),
                }
            } else {
                continue;
            };
            let transition = lifecycle::decide(&job, ending, job.cancel_requested, now);
            unwatched.push((job, attempt.attempt, transition));
        }
        let changed = self.settle_unwatched(unwatched, now)?;
        for dead in expired {
            if self.store("deregister a dispatcher", |s| s.deregister(dead.id))? == Some(true) {
                tracing::warn!(
                    "Dispatcher {} (pid {} on {}, state {}) stopped heartbeating; its jobs were rescued",
                    dead.id,
                    dead.pid,
                    dead.host,
                    dead.state_dir
                );
            }
        }
        let mut predecessors = std::mem::take(&mut self.predecessors);
        let mut gone = Vec::new();
        for &id in &predecessors {
            if self.store("deregister a predecessor", |s| s.deregister(id))? == Some(true) {
                gone.push(id);
            }
        }
        predecessors.retain(|id| !gone.contains(id));
        self.heartbeats().predecessors.clone_from(&predecessors);
        self.predecessors = predecessors;
        if changed {
            self.changed();
        }
        Ok(changed)
    }

    /// Settles attempts no dispatcher is watching — each `(job, number, transition)` as
    /// [`lifecycle`] decided (lost, or not started) — in one call. Returns whether it settled
    /// any: one settled by somebody else first is left alone, and all are looked at again at
    /// the next look if the store did not answer.
    pub(super) fn settle_unwatched(
        &mut self,
        unwatched: Vec<(JobRecord, u32, Transition)>,
        now: Millis,
    ) -> Result<bool, DispatcherError> {
        if unwatched.is_empty() {
            return Ok(false);
        }
        let ends: Vec<(JobRecord, u32, AttemptEnd, Next)> = unwatched
            .into_iter()
            .map(|(job, number, transition)| {
                let Transition {
                    outcome,
                    error,
                    next,
                } = transition;
                let end = AttemptEnd {
                    finished_at: now,
                    outcome,
                    error: Some(error.unwrap_or_default()),
                    output_bytes: 0,
                };
                (job, number, end, next)
            })
            .collect();
        let items: Vec<Settlement<'_>> = ends
            .iter()
            .map(|(job, number, end, next)| Settlement {
                id: job.id,
                attempt: *number,
                end,
                next,
            })
            .collect();
        let settled = self.store("settle unwatched attempts", |s| s.settle_many(&items))?;
        drop(items);
        let Some(settled) = settled else {
            return Ok(false);
        };
        let mut changed = false;
        for ((job, number, end, next), settled) in ends.iter().zip(settled) {
            if settled {
                let reason = end.error.as_deref().unwrap_or_default();
                log_next(job, *number, next, reason, now);
                notify_waiters(&self.paths.waiters, job.id);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// This dispatcher's registration is gone: the others took it for dead and rescued its
    /// jobs, which may already run elsewhere. Its attempts are stopped (their results would
    /// not be recorded) and it registers again.
    pub(super) fn evicted(&mut self, id: DispatcherId) -> Result<(), DispatcherError> {
        if id != self.owner {
            return Ok(());
        }
        tracing::error!(
            "Dispatcher {id} was taken for dead by the others (no heartbeat for {}); stopping its {} attempts and registering again",
            crate::shared::text::secs(self.settings.dispatcher.lease),
            self.running.len()
        );
        self.interrupt_all();
        let info = self.info.clone();
        let Some(owner) = self.store("register again", |s| {
            s.register_dispatcher(&info, now_millis())
        })?
        else {
            // The heartbeat says so again at its next beat, and this is tried again.
            return Ok(());
        };
        self.owner = owner;
        self.heartbeats().owner = self.owner;
        Ok(())
    }

    /// Settles what a crashed predecessor left running: each orphan is adopted on its own
    /// thread (it may outnumber the slots) and reports back like any attempt. False, with
    /// nothing done, while the store cannot list them.
    pub(super) fn recover(&mut self) -> Result<bool, DispatcherError> {
        let predecessors = self.predecessors.clone();
        let Some(running) = self.read("list running jobs", |s| s.running())? else {
            return Ok(false);
        };
        let orphans = running.into_iter().filter(|(_, a)| {
            // Without a dispatcher id: recorded before dispatchers registered.
            a.dispatcher.is_none_or(|d| predecessors.contains(&d))
        });
        for (job, attempt) in orphans {
            let cancel = CancelToken::new().map_err(|source| DispatcherError::Setup {
                what: "create a cancel token".into(),
                source,
            })?;
            let deadline = attempt
                .started_at
                .saturating_add(job.timeout.as_millis() as i64);
            let time_left =
                Duration::from_millis(u64::try_from(deadline - now_millis()).unwrap_or(0));
            let (id, number, pid, timeout) = (job.id, attempt.attempt, attempt.pid, job.timeout);
            let settings = self.settings.clone();
            let tx = self.tx.clone();
            let token = Arc::clone(&cancel);
            tracing::warn!(
                "Adopting attempt {number} of job {id}, left running by a previous dispatcher"
            );
            std::thread::Builder::new()
                .name(format!("adopt-{id}"))
                .spawn(move || {
                    let job_id = id.to_string();
                    let orphan = Orphan {
                        job_id: &job_id,
                        attempt: number,
                        pid,
                        time_left,
                        timeout,
                    };
                    let result = adopt_attempt(&settings, &orphan, &token);
                    let _ = tx.send(Event::Finished {
                        id,
                        attempt: number,
                        result,
                        released: true,
                    });
                })
                .map_err(|source| DispatcherError::Setup {
                    what: "start an adoption thread".into(),
                    source,
                })?;
            self.running.insert(
                id,
                Running {
                    job,
                    plugin_hash: attempt.plugin_hash.clone().unwrap_or_default(),
                    cancel,
                    interrupted: false,
                },
            );
        }
        Ok(true)
    }

    /// Corrects the attempts of this host's earlier dispatchers that were settled `lost` while
    /// their workers ran on (the others rescued them after their lease ran out), from the
    /// reports those workers left in this state directory: the report is the truth. A job
    /// that still waits for the retry the lost attempt gave it moves on as its report says
    /// (a success completes it, never to run again); one that moved on keeps its course, its
    /// record corrected. Reports are only ever in the state directory of the host that ran
    /// the worker, so only that host's next dispatcher can do this.
    pub(super) fn amend_lost(&mut self) -> Result<(), DispatcherError> {
        let Some(lost) = self.read("list lost attempts", |s| s.lost_attempts())? else {
            return Ok(());
        };
        for (job, attempt) in lost {
            let number = attempt.attempt;
            let paths = AttemptPaths::new(&self.settings.state_dir, &job.id.to_string(), number);
            let Ok(Some(report)) = paths.read_report() else {
                continue;
            };
            let outcome = crate::runner::supervisor::reported_outcome(report, job.timeout);
            let now = now_millis();
            let Transition {
                outcome: label,
                error,
                next,
            } = lifecycle::decide(&job, Ending::Ended(&outcome), job.cancel_requested, now);
            let end = AttemptEnd {
                finished_at: attempt.finished_at.unwrap_or(now),
                outcome: label.clone(),
                error,
                output_bytes: attempt.output_bytes.unwrap_or(0),
            };
            let id = job.id;
            match self.store("correct a lost attempt", |s| {
                s.amend_lost(id, number, &end, &next)
            })? {
                Some(Amended::Moved) => {
                    tracing::warn!(
                        "Attempt {number} of job {id} was settled lost while its dispatcher was \
                         away, but its worker's report says {label}: the job moves on from it"
                    );
                    log_next(&job, number, &next, &end.error.unwrap_or_default(), now);
                    notify_waiters(&self.paths.waiters, id);
                    self.changed();
                }
                Some(Amended::Recorded) => tracing::warn!(
                    "Attempt {number} of job {id} was settled lost while its dispatcher was \
                     away, but its worker's report says {label}; the job had moved on already \
                     (it may have run again), so only the attempt's record is corrected"
                ),
                Some(Amended::NotLost) | None => {}
            }
        }
        Ok(())
    }
}
