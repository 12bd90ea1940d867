//! The attempts a dispatcher runs at once, each in a worker process of its own.
//!
//! A worker is started by whoever starts its attempt, in that caller's thread: it exists, and
//! waits at its gate, when the call returns its pid. So a dispatcher can spawn the workers of
//! the jobs it claims inside the claim's transaction and record their pids in it (one commit
//! per round), letting them go once it committed.
//!
//! On Linux the caller then supervises them all itself ([`Watch`]): one poll over every
//! worker's pidfd, output pipe and cancel token (and a forked worker's status pipe), beside a
//! descriptor of the caller's own. So no thread waits on one attempt, an attempt's end reaches
//! the dispatcher's loop with no thread in between, and a dispatcher with many slots has no
//! more threads than one with two. On Windows, whose platform layer supervises one process per
//! thread, each attempt has a thread of its own ([`Attempts`]), which spawns the worker, hands
//! its pid back to the caller and tells the attempt's end through a callback.
//!
//! Either way each attempt's end is told as an [`AttemptEnded`], also that of one whose worker
//! could not be started.

#[cfg(windows)]
use std::sync::Arc;

#[cfg(windows)]
use super::prepare;
#[cfg(unix)]
use super::Spawner;
use super::{AttemptError, AttemptRecord, AttemptSpec, Prepared};
use crate::config::settings::Settings;
#[cfg(windows)]
use crate::platform::CancelToken;

/// Attempt `key` ended, or could not run.
pub struct AttemptEnded<K> {
    /// The attempt.
    pub key: K,
    /// How it ended, or why it could not run.
    pub result: Result<AttemptRecord, AttemptError>,
    /// Whether its worker was let start (an attempt that could not run may have failed before
    /// or after).
    pub released: bool,
}

/// Runs attempt `spec` to its end as a dispatcher's slot would, its worker let start at once
/// (there is no store to record its pid in), and waits for it: for jobhost's benches, which
/// time attempts without a queue.
#[cfg(feature = "internals")]
pub fn run_attempt(
    settings: &Settings,
    spawner: &super::Spawner,
    spec: &AttemptSpec<'_>,
    cancel: std::sync::Arc<crate::platform::CancelToken>,
) -> Result<AttemptRecord, AttemptError> {
    #[cfg(unix)]
    {
        let mut watch = Watch::default();
        if watch.start(settings, spawner, (), spec, cancel).is_some() {
            watch.release((), true);
        }
        loop {
            let polled = watch.wait(None, None).map_err(super::spawn_error)?;
            if let Some(ended) = watch.step(&polled).pop() {
                return ended.result;
            }
        }
    }
    #[cfg(windows)]
    prepare(settings, spec)?.run(settings, spawner, &cancel, &mut |_| true)
}

#[cfg(unix)]
pub use watch::Watch;

#[cfg(unix)]
/// Prepares and spawns the worker of `spec`, waiting at its gate, under supervision.
#[cfg(unix)]
fn spawn_supervised(
    settings: &Settings,
    spawner: &Spawner,
    spec: &AttemptSpec<'_>,
) -> Result<(Prepared, crate::platform::Supervised), AttemptError> {
    let prepared = super::prepare(settings, spec)?;
    let (launch, output) = prepared.launch(settings, spawner)?;
    let supervised = crate::platform::Supervised::start(launch, output, prepared.options)
        .map_err(super::spawn_error)?;
    Ok((prepared, supervised))
}

#[cfg(unix)]
mod watch {
    //! The Linux supervisor: the running attempts, polled all at once by one thread.

    use std::{
        os::fd::BorrowedFd,
        sync::Arc,
        time::{Duration, Instant},
    };

    use super::{spawn_supervised, AttemptEnded, Spawner};
    use crate::{
        config::settings::Settings,
        platform::{poll_supervised, CancelToken, Supervised, SUPERVISED_FDS},
        runner::supervisor::{spawn_error, AttemptSpec, Prepared},
    };

    /// What one poll found ready, for each watched attempt in order.
    pub struct Polled {
        woken: bool,
        attempts: Vec<[bool; SUPERVISED_FDS]>,
    }

    impl Polled {
        /// Whether the descriptor given to [`Watch::wait`] beside the attempts' was ready.
        pub fn woken(&self) -> bool {
            self.woken
        }
    }

    /// The attempts one thread supervises: it starts them ([`Watch::start`]), polls them
    /// ([`Watch::wait`], with a descriptor of its own beside theirs) and steps them
    /// ([`Watch::step`]), which gives their ends. No thread of its own: the poller thread of
    /// [`super::Attempts`] drives one, and a dispatcher's loop drives its own in the poll it
    /// waits for its events in.
    pub struct Watch<K> {
        watched: Vec<Watched<K>>,
        /// Attempts that could not start, told at the next step.
        failed: Vec<AttemptEnded<K>>,
    }

    /// One attempt being watched.
    struct Watched<K> {
        key: K,
        prepared: Prepared,
        supervised: Supervised,
        cancel: Arc<CancelToken>,
        released: bool,
    }

    impl<K: Copy + PartialEq> Default for Watch<K> {
        fn default() -> Self {
            Self {
                watched: Vec::new(),
                failed: Vec::new(),
            }
        }
    }

    impl<K: Copy + PartialEq> Watch<K> {
        /// Starts attempt `key` of `spec`, stopped when `cancel` fires: its worker is spawned,
        /// waiting at its gate until [`Watch::release`], and its pid answered. `None` when it
        /// could not be started: the next [`Watch::step`] tells why.
        pub fn start(
            &mut self,
            settings: &Settings,
            spawner: &Spawner,
            key: K,
            spec: &AttemptSpec<'_>,
            cancel: Arc<CancelToken>,
        ) -> Option<u32> {
            match spawn_supervised(settings, spawner, spec) {
                Ok((prepared, supervised)) => {
                    let pid = supervised.pid();
                    self.watch(key, prepared, supervised, cancel);
                    Some(pid)
                }
                Err(error) => {
                    self.failed.push(AttemptEnded {
                        key,
                        result: Err(error),
                        released: false,
                    });
                    None
                }
            }
        }

        /// Watches a worker just spawned, waiting at its gate, to its end.
        pub(super) fn watch(
            &mut self,
            key: K,
            prepared: Prepared,
            supervised: Supervised,
            cancel: Arc<CancelToken>,
        ) {
            self.watched.push(Watched {
                key,
                prepared,
                supervised,
                cancel,
                released: false,
            });
        }

        /// Lets the worker of attempt `key` start (`go`), or has it end without starting
        /// anything.
        pub fn release(&mut self, key: K, go: bool) {
            if let Some(watched) = self.watched.iter_mut().find(|w| w.key == key) {
                watched.supervised.release(go);
                watched.released = go;
            }
        }

        /// Waits until something is ready for an attempt (or for `wake`, if given), one of
        /// them is due, or `until` comes; at once when an attempt that could not start waits
        /// to be told.
        pub fn wait(
            &self,
            wake: Option<BorrowedFd<'_>>,
            until: Option<Instant>,
        ) -> std::io::Result<Polled> {
            let due = self
                .watched
                .iter()
                .filter_map(|w| w.supervised.wake_at())
                .chain(until)
                .min();
            let due = if self.failed.is_empty() {
                due
            } else {
                Some(Instant::now() - Duration::from_millis(1))
            };
            let sets: Vec<[Option<BorrowedFd<'_>>; SUPERVISED_FDS]> = self
                .watched
                .iter()
                .map(|w| w.supervised.fds(&w.cancel))
                .collect();
            let (woken, attempts) = poll_supervised(wake, &sets, due)?;
            Ok(Polled { woken, attempts })
        }

        /// Steps every attempt something is ready for (`ready`, from the last
        /// [`Watch::wait`]), or whose time has come; the ends of those that ended, and of those
        /// that could not start.
        pub fn step(&mut self, ready: &Polled) -> Vec<AttemptEnded<K>> {
            let now = Instant::now();
            let mut ended = Vec::new();
            for (i, (watched, ready)) in self.watched.iter_mut().zip(&ready.attempts).enumerate() {
                let due = watched.supervised.wake_at().is_some_and(|at| at <= now);
                if !due && !ready.iter().any(|&r| r) {
                    continue;
                }
                match watched.supervised.step(
                    *ready,
                    &watched.cancel,
                    &mut watched.prepared.capture,
                ) {
                    Ok(None) => {}
                    Ok(Some(end)) => ended.push((i, Ok(end))),
                    Err(e) => ended.push((i, Err(spawn_error(e)))),
                }
            }
            let mut told = std::mem::take(&mut self.failed);
            // From the highest index down, so that each removal leaves the rest in place.
            for (i, end) in ended.into_iter().rev() {
                let watched = self.watched.swap_remove(i);
                let result = end.and_then(|end| watched.prepared.conclude(end));
                told.push(AttemptEnded {
                    key: watched.key,
                    result,
                    released: watched.released,
                });
            }
            told
        }
    }
}

/// What [`Attempts`] tells of its attempts' ends.
#[cfg(windows)]
pub type OnEnded<K> = Arc<dyn Fn(AttemptEnded<K>) + Send + Sync>;

/// A worker that exists and waits at its gate ([`Attempts::start`]).
#[cfg(windows)]
pub struct Spawned<K> {
    /// Its pid.
    pub pid: u32,
    /// How to let it start, or not.
    pub go: GoAhead<K>,
}

/// The attempts running at once, each identified by a key of the caller's (`K`), each
/// supervised by a thread of its own.
#[cfg(windows)]
pub struct Attempts<K: Copy + PartialEq + Send + 'static> {
    settings: Settings,
    threads: threads::Threads<K>,
}

#[cfg(windows)]
impl<K: Copy + PartialEq + Send + 'static> Attempts<K> {
    /// Runs attempts for `settings` (its workers started as `dispatcher.runner` says), telling
    /// `on_ended` how each ended.
    pub fn new(settings: &Settings, on_ended: OnEnded<K>) -> std::io::Result<Self> {
        Ok(Self {
            settings: settings.clone(),
            threads: threads::Threads::new(settings, on_ended),
        })
    }

    /// Starts attempt `key` of `spec`, stopped when `cancel` fires: its worker is spawned
    /// before this returns, and waits at its gate until it is let go ([`GoAhead::send`]). `None`
    /// when it could not be started; that, like every attempt's end, is told as
    /// [`AttemptEnded`].
    pub fn start(&self, key: K, spec: &AttemptSpec<'_>, cancel: Arc<CancelToken>) -> Option<Spawned<K>> {
        self.threads.start(key, prepare(&self.settings, spec), cancel)
    }
}

/// Lets one spawned worker start, or not ([`Spawned`]).
#[cfg(windows)]
pub struct GoAhead<K> {
    gate: crossbeam_channel::Sender<bool>,
    _key: std::marker::PhantomData<K>,
}

/// The attempts' supervisor is gone (its dispatcher is shutting down): a go-ahead reaches
/// nobody.
#[cfg(windows)]
#[derive(Debug)]
pub struct Gone;

#[cfg(windows)]
impl<K: Copy + PartialEq + Send + 'static> GoAhead<K> {
    /// Lets the worker start (`go`), or has it end without starting anything.
    pub fn send(&self, go: bool) -> Result<(), Gone> {
        self.gate.send(go).map_err(|_| Gone)
    }
}

/// Prepared attempts ready to start, or why they cannot.
#[cfg(windows)]
type Ready = Result<Prepared, AttemptError>;

#[cfg(windows)]
mod threads {
    //! The Windows supervisor: a thread per running attempt, which spawns its worker and hands
    //! the pid back to the caller.

    use std::sync::Arc;

    use super::{AttemptEnded, GoAhead, OnEnded, Ready, Spawned};
    use crate::{
        config::settings::Settings,
        platform::CancelToken,
        runner::supervisor::{spawn_error, Spawner},
    };

    pub(super) struct Threads<K> {
        settings: Settings,
        spawner: Arc<Spawner>,
        on_ended: OnEnded<K>,
    }

    impl<K: Copy + PartialEq + Send + 'static> Threads<K> {
        pub(super) fn new(settings: &Settings, on_ended: OnEnded<K>) -> Self {
            Self {
                settings: settings.clone(),
                spawner: Arc::new(Spawner::new(settings)),
                on_ended,
            }
        }

        pub(super) fn start(
            &self,
            key: K,
            prepared: Ready,
            cancel: Arc<CancelToken>,
        ) -> Option<Spawned<K>> {
            let (settings, spawner, on_ended) = (
                self.settings.clone(),
                Arc::clone(&self.spawner),
                Arc::clone(&self.on_ended),
            );
            // The thread hands back the worker's pid and its gate once it exists; it drops
            // the sender unused when there is none.
            let (spawned, pid) = crossbeam_channel::bounded(1);
            let run = move || {
                let mut released = false;
                let result = prepared.and_then(|prepared| {
                    prepared.run(&settings, &spawner, &cancel, &mut |pid| {
                        let (gate, answer) = crossbeam_channel::bounded(1);
                        let _ = spawned.send((pid, gate));
                        // No answer (the dispatcher is gone) means no start.
                        released = answer.recv().unwrap_or(false);
                        released
                    })
                });
                on_ended(AttemptEnded {
                    key,
                    result,
                    released,
                });
            };
            if let Err(source) = std::thread::Builder::new().name("attempt".into()).spawn(run) {
                (self.on_ended)(AttemptEnded {
                    key,
                    result: Err(spawn_error(source)),
                    released: false,
                });
                return None;
            }
            let (pid, gate) = pid.recv().ok()?;
            Some(Spawned {
                pid,
                go: GoAhead {
                    gate,
                    _key: std::marker::PhantomData,
                },
            })
        }
    }
}
