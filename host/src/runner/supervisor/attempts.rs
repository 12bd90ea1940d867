//! The attempts a dispatcher runs at once, each in a worker process of its own.
//!
//! A worker is started by whoever starts its attempt, in that caller's thread
//! ([`Attempts::start`]): it exists, and waits at its gate, when the call returns its pid. So a
//! dispatcher can spawn the workers of the jobs it claims inside the claim's transaction and
//! record their pids in it (one commit per round), letting them go once it committed.
//!
//! On Linux one thread then supervises them all: a poller over every worker's pidfd, output
//! pipe and cancel token (and a forked worker's status pipe), woken through a pipe when there
//! is a worker to watch or let go. So no thread waits on one attempt, and a dispatcher with
//! many slots has no more threads than one with two. On Windows, whose platform layer
//! supervises one process per thread, each attempt has a thread of its own, which spawns the
//! worker and hands its pid back to the caller.
//!
//! The caller hears of each attempt's end through one callback ([`AttemptEnded`]), also of one
//! whose worker could not be started.

use std::sync::Arc;

#[cfg(unix)]
use super::Spawner;
use super::{prepare, AttemptError, AttemptRecord, AttemptSpec, Prepared};
use crate::{config::settings::Settings, platform::CancelToken};

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

/// What [`Attempts`] tells of its attempts' ends.
pub type OnEnded<K> = Arc<dyn Fn(AttemptEnded<K>) + Send + Sync>;

/// A worker that exists and waits at its gate ([`Attempts::start`]).
pub struct Spawned<K> {
    /// Its pid.
    pub pid: u32,
    /// How to let it start, or not.
    pub go: GoAhead<K>,
}

/// The attempts running at once, each identified by a key of the caller's (`K`).
pub struct Attempts<K: Copy + PartialEq + Send + 'static> {
    settings: Settings,
    #[cfg(unix)]
    on_ended: OnEnded<K>,
    #[cfg(unix)]
    poller: poller::Poller<K>,
    #[cfg(windows)]
    threads: threads::Threads<K>,
    // Last: dropped after the poller stopped (a fork server is then told to leave).
    #[cfg(unix)]
    spawner: Spawner,
}

impl<K: Copy + PartialEq + Send + 'static> Attempts<K> {
    /// Runs attempts for `settings` (its workers started as `dispatcher.runner` says), telling
    /// `on_ended` how each ended.
    pub fn new(settings: &Settings, on_ended: OnEnded<K>) -> std::io::Result<Self> {
        Ok(Self {
            settings: settings.clone(),
            #[cfg(unix)]
            poller: poller::Handle::start(Arc::clone(&on_ended))?,
            #[cfg(unix)]
            spawner: Spawner::new(settings),
            #[cfg(unix)]
            on_ended,
            #[cfg(windows)]
            threads: threads::Threads::new(settings, on_ended),
        })
    }

    /// Starts attempt `key` of `spec`, stopped when `cancel` fires: its worker is spawned
    /// before this returns, and waits at its gate until it is let go ([`GoAhead::send`]). `None`
    /// when it could not be started; that, like every attempt's end, is told as
    /// [`AttemptEnded`] (for this one, before the call returns).
    pub fn start(&self, key: K, spec: &AttemptSpec<'_>, cancel: Arc<CancelToken>) -> Option<Spawned<K>> {
        let prepared = prepare(&self.settings, spec);
        #[cfg(unix)]
        return self.spawn(key, prepared, cancel);
        #[cfg(windows)]
        return self.threads.start(key, prepared, cancel);
    }

    /// Spawns the worker of a prepared attempt and has the poller watch it.
    #[cfg(unix)]
    fn spawn(&self, key: K, prepared: Ready, cancel: Arc<CancelToken>) -> Option<Spawned<K>> {
        let started = prepared.and_then(|prepared| {
            let (launch, output) = prepared.launch(&self.settings, &self.spawner)?;
            let supervised = crate::platform::Supervised::start(launch, output, prepared.options)
                .map_err(super::spawn_error)?;
            Ok((prepared, supervised))
        });
        match started {
            Ok((prepared, supervised)) => {
                let pid = supervised.pid();
                self.poller.watch(key, prepared, supervised, cancel);
                Some(Spawned {
                    pid,
                    go: GoAhead {
                        key,
                        poller: self.poller.handle(),
                    },
                })
            }
            Err(error) => {
                (self.on_ended)(AttemptEnded {
                    key,
                    result: Err(error),
                    released: false,
                });
                None
            }
        }
    }
}

/// Lets one spawned worker start, or not ([`Spawned`]).
pub struct GoAhead<K> {
    #[cfg(unix)]
    key: K,
    #[cfg(unix)]
    poller: poller::Handle<K>,
    #[cfg(windows)]
    gate: crossbeam_channel::Sender<bool>,
    #[cfg(windows)]
    _key: std::marker::PhantomData<K>,
}

/// The attempts' supervisor is gone (its dispatcher is shutting down): a go-ahead reaches
/// nobody.
#[derive(Debug)]
pub struct Gone;

impl<K: Copy + PartialEq + Send + 'static> GoAhead<K> {
    /// Lets the worker start (`go`), or has it end without starting anything.
    pub fn send(&self, go: bool) -> Result<(), Gone> {
        #[cfg(unix)]
        return self.poller.release(self.key, go);
        #[cfg(windows)]
        return self.gate.send(go).map_err(|_| Gone);
    }
}

/// Prepared attempts ready to start, or why they cannot.
type Ready = Result<Prepared, AttemptError>;

#[cfg(unix)]
mod poller {
    //! The Linux supervisor: one thread polling every running attempt.

    use std::{
        os::fd::{AsFd, BorrowedFd, OwnedFd},
        sync::Arc,
        time::Instant,
    };

    use crossbeam_channel::{Receiver, Sender, TryRecvError};
    use rustix::pipe::{pipe_with, PipeFlags};

    use super::{AttemptEnded, Gone, OnEnded};
    use crate::{
        platform::{poll_supervised, CancelToken, Supervised, SUPERVISED_FDS},
        runner::supervisor::{spawn_error, Prepared},
    };

    /// Work for the poller.
    enum Command<K> {
        /// Watch a worker just spawned, waiting at its gate.
        Watch(Box<Watched<K>>),
        Release {
            key: K,
            go: bool,
        },
        /// Leave at once (whatever still runs is left to the next dispatcher, as after a
        /// crash).
        Stop,
    }

    /// How to reach the poller: its commands, and the pipe that wakes it.
    pub(super) struct Handle<K> {
        commands: Sender<Command<K>>,
        wake: Arc<OwnedFd>,
    }

    /// The poller, as its [`super::Attempts`] holds it: stopped and waited for when dropped.
    pub(super) struct Poller<K: Copy + PartialEq + Send + 'static> {
        handle: Handle<K>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl<K: Copy + PartialEq + Send + 'static> Drop for Poller<K> {
        fn drop(&mut self) {
            self.handle.send(Command::Stop);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    impl<K: Copy + PartialEq + Send + 'static> Poller<K> {
        /// A handle for the go-aheads of the workers it watches.
        pub(super) fn handle(&self) -> Handle<K> {
            self.handle.clone()
        }

        /// Watches a worker just spawned, waiting at its gate, to its end.
        pub(super) fn watch(
            &self,
            key: K,
            prepared: Prepared,
            supervised: Supervised,
            cancel: Arc<CancelToken>,
        ) {
            self.handle.send(Command::Watch(Box::new(Watched {
                key,
                prepared,
                supervised,
                cancel,
                released: false,
            })));
        }
    }

    impl<K> Clone for Handle<K> {
        fn clone(&self) -> Self {
            Self {
                commands: self.commands.clone(),
                wake: Arc::clone(&self.wake),
            }
        }
    }

    impl<K: Copy + PartialEq + Send + 'static> Handle<K> {
        /// Starts the poller thread.
        pub(super) fn start(on_ended: OnEnded<K>) -> std::io::Result<Poller<K>> {
            let (wake_read, wake_write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            let (commands, inbox) = crossbeam_channel::unbounded();
            let handle = Self {
                commands,
                wake: Arc::new(wake_write),
            };
            let poller = Polling {
                on_ended,
                inbox,
                wake: wake_read,
                watched: Vec::new(),
            };
            let thread = std::thread::Builder::new()
                .name("attempts".into())
                .spawn(move || poller.run())?;
            Ok(Poller {
                handle,
                thread: Some(thread),
            })
        }

        pub(super) fn release(&self, key: K, go: bool) -> Result<(), Gone> {
            if self.commands.send(Command::Release { key, go }).is_err() {
                return Err(Gone);
            }
            self.ring();
            Ok(())
        }

        fn send(&self, command: Command<K>) {
            // The poller lives as long as the process once started; it only stops when
            // every handle is gone, so a send cannot fail while one is used.
            let _ = self.commands.send(command);
            self.ring();
        }

        fn ring(&self) {
            // A full pipe already wakes the poller.
            let _ = rustix::io::write(&*self.wake, &[1]);
        }
    }

    /// One attempt being watched.
    struct Watched<K> {
        key: K,
        prepared: Prepared,
        supervised: Supervised,
        cancel: Arc<CancelToken>,
        released: bool,
    }

    /// The poller thread's state.
    struct Polling<K> {
        on_ended: OnEnded<K>,
        inbox: Receiver<Command<K>>,
        wake: OwnedFd,
        watched: Vec<Watched<K>>,
    }

    impl<K: Copy + PartialEq + Send + 'static> Polling<K> {
        fn run(mut self) {
            let mut open = true;
            while open {
                let (woken, ready) = match self.wait() {
                    Ok(waited) => waited,
                    Err(e) => {
                        tracing::error!("the attempts' supervisor cannot wait: {e}");
                        return;
                    }
                };
                self.step(&ready);
                if woken {
                    open = self.take_commands();
                }
            }
        }

        /// Waits for something to happen: whether it was woken, and what is ready for each
        /// watched attempt.
        fn wait(&self) -> std::io::Result<(bool, Vec<[bool; SUPERVISED_FDS]>)> {
            let until = self
                .watched
                .iter()
                .filter_map(|w| w.supervised.wake_at())
                .min();
            let sets: Vec<[Option<BorrowedFd<'_>>; SUPERVISED_FDS]> = self
                .watched
                .iter()
                .map(|w| w.supervised.fds(&w.cancel))
                .collect();
            poll_supervised(Some(self.wake.as_fd()), &sets, until)
        }

        /// Steps every attempt something is ready for, or whose time has come; tells of those
        /// that ended.
        fn step(&mut self, ready: &[[bool; SUPERVISED_FDS]]) {
            let now = Instant::now();
            let mut ended = Vec::new();
            for (i, (watched, ready)) in self.watched.iter_mut().zip(ready).enumerate() {
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
            // From the highest index down, so that each removal leaves the rest in place.
            for (i, end) in ended.into_iter().rev() {
                let watched = self.watched.swap_remove(i);
                let result = end.and_then(|end| watched.prepared.conclude(end));
                (self.on_ended)(AttemptEnded {
                    key: watched.key,
                    result,
                    released: watched.released,
                });
            }
        }

        /// Empties the wake pipe and carries out every command waiting; false once told to
        /// stop.
        fn take_commands(&mut self) -> bool {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
            loop {
                match self.inbox.try_recv() {
                    Ok(Command::Watch(watched)) => self.watched.push(*watched),
                    Ok(Command::Release { key, go }) => {
                        if let Some(watched) = self.watched.iter_mut().find(|w| w.key == key) {
                            watched.supervised.release(go);
                            watched.released = go;
                        }
                    }
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                    Err(TryRecvError::Empty) => return true,
                }
            }
        }
    }
}

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
