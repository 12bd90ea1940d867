//! Reads the open pages share: when many requests ask for the same thing at once (every open
//! tab re-fetching its page after the same change event), one read of the store answers all
//! of those that arrived while the previous read of it was under way, instead of one read
//! each, queued behind one another on the dashboard's connection.
//!
//! No answer is older than its request: a request never takes the result of a read that had
//! already started when it arrived (that read may have missed a change the request was sent
//! to see); it waits for the next read, which starts once that one ends, and shares it with
//! every request that arrived meanwhile. So a burst of N identical requests costs at most two
//! reads, and a lone request costs one, as before.

use std::{
    any::Any,
    collections::HashMap,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

/// What a read gave: its value, or `None` if it panicked (each waiter then reads for itself).
type Outcome = Option<Arc<dyn Any + Send + Sync>>;

/// One read, and the requests waiting for it.
#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Flight {
    /// Waits until the read has ended; what it gave.
    fn wait(&self) -> Outcome {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = &*outcome {
                return outcome.clone();
            }
            outcome = self
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn finish(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.done.notify_all();
    }
}

/// The read of one key under way, and the one the requests that came after it wait for.
#[derive(Default)]
struct Slot {
    running: Option<Arc<Flight>>,
    next: Option<Arc<Flight>>,
}

/// The reads under way, by key (a page or API route and its arguments).
#[derive(Default)]
pub struct Reads {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Reads {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `read()`, or the result of a read of `key` that started after this call did. Blocks
    /// (call it off the async threads); `read` runs on this thread if at all. All reads of
    /// one key must give the same type `T`.
    pub fn get<T: Send + Sync + 'static>(&self, key: &str, read: impl FnOnce() -> T) -> Arc<T> {
        let (flight, lead) = {
            let mut slots = self.slots();
            let slot = slots.entry(key.to_owned()).or_default();
            match (&slot.running, &slot.next) {
                (None, _) => {
                    let flight = Arc::new(Flight::default());
                    slot.running = Some(Arc::clone(&flight));
                    (flight, None)
                }
                (Some(running), Some(next)) => {
                    // Someone already waits to read after the one under way: share theirs.
                    let (next, running) = (Arc::clone(next), Arc::clone(running));
                    drop(slots);
                    drop(running);
                    return self.shared(next, key, read);
                }
                (Some(running), None) => {
                    // Read after the one under way, for everyone who comes meanwhile.
                    let flight = Arc::new(Flight::default());
                    slot.next = Some(Arc::clone(&flight));
                    (flight, Some(Arc::clone(running)))
                }
            }
        };
        if let Some(running) = lead {
            // When it ends, its reader makes this flight the one under way.
            running.wait();
        }
        self.run(flight, key, read)
    }

    /// Waits for `flight`; reads for itself if that read panicked.
    fn shared<T: Send + Sync + 'static>(
        &self,
        flight: Arc<Flight>,
        key: &str,
        read: impl FnOnce() -> T,
    ) -> Arc<T> {
        match flight.wait().map(Arc::downcast::<T>) {
            Some(Ok(value)) => value,
            Some(Err(_)) => panic!("the reads of {key} give different types"),
            None => Arc::new(read()),
        }
    }

    /// Runs `read` as `flight`, the read of `key` under way; then hands the key to the next
    /// flight, if requests wait for one, and tells this one's waiters.
    fn run<T: Send + Sync + 'static>(
        &self,
        flight: Arc<Flight>,
        key: &str,
        read: impl FnOnce() -> T,
    ) -> Arc<T> {
        let result = catch_unwind(AssertUnwindSafe(read)).map(Arc::new);
        {
            let mut slots = self.slots();
            if let Some(slot) = slots.get_mut(key) {
                slot.running = slot.next.take();
                if slot.running.is_none() {
                    slots.remove(key);
                }
            }
        }
        match result {
            Ok(value) => {
                flight.finish(Some(Arc::clone(&value) as Arc<dyn Any + Send + Sync>));
                value
            }
            Err(panic) => {
                flight.finish(None);
                resume_unwind(panic)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Barrier,
    };

    use super::*;

    #[test]
    fn a_lone_read_runs_and_nothing_is_kept_after_it() {
        let reads = Reads::default();
        assert_eq!(*reads.get("a", || 1), 1);
        assert_eq!(*reads.get("a", || 2), 2, "a later request reads again");
        assert!(reads.slots().is_empty());
    }

    #[test]
    fn requests_during_a_read_share_the_next_one_and_none_takes_an_older_one() {
        let reads = Arc::new(Reads::default());
        let count = Arc::new(AtomicUsize::new(0));
        // The first read is held until every other request has arrived.
        let (arrived, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let first = {
            let (reads, count, arrived, release) = (
                Arc::clone(&reads),
                Arc::clone(&count),
                Arc::clone(&arrived),
                Arc::clone(&release),
            );
            std::thread::spawn(move || {
                *reads.get("k", || {
                    arrived.wait();
                    release.wait();
                    count.fetch_add(1, Ordering::SeqCst)
                })
            })
        };
        arrived.wait();
        // The first read is under way: 20 more requests come.
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let (reads, count) = (Arc::clone(&reads), Arc::clone(&count));
                std::thread::spawn(move || *reads.get("k", || count.fetch_add(1, Ordering::SeqCst)))
            })
            .collect();
        // Each has either become the next read's leader or joined it; wait until all are in.
        jobhost_testing_wait(|| {
            let slots = reads.slots();
            let next = slots["k"].next.as_ref().map_or(0, Arc::strong_count);
            // The slot's own reference, the leader's and one per joined request.
            next == 1 + 20
        });
        release.wait();
        assert_eq!(first.join().unwrap(), 0, "the first read saw the first state");
        let seen: Vec<usize> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(seen, vec![1; 20], "all 20 got the one read that began after them");
        assert_eq!(count.load(Ordering::SeqCst), 2, "two reads for 21 requests");
        assert!(reads.slots().is_empty());
    }

    /// Polls `ready` every millisecond, for up to a minute.
    fn jobhost_testing_wait(ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "not ready within 60 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
