//! `GET PREFIX/events`: server-sent events that tell an open page to refresh itself.
//!
//! The changes to the queue are counted by [`super::Changes`] as they happen, as often as the
//! dispatcher makes them (several a job); one task ([`coalesce`]) turns them into *tells*, at
//! most one per [`gap`] whatever the rate of changes: the first change after a quiet gap is
//! told at once, those that follow within it together at its end. The gap is [`TELL_EVERY`]
//! (250 ms) while at most [`EVENTS_PER_SECOND`] / 4 streams are open, and grows with the
//! streams beyond that, so that all of them together are sent at most [`EVENTS_PER_SECOND`]
//! events a second: each event makes its page re-fetch itself, and the dashboard runs in the
//! dispatcher's process, so its work must stay bounded however many tabs are open. Every
//! stream follows the tells, so each sends at most one `event: change` (with the counter as its
//! data) per gap, and all open pages hear of a change at the same moment: their re-fetches
//! arrive together, and the reads they need are shared ([`super::reads`]). A comment line keeps
//! the connection alive every 15 s. The stream ends when the dashboard stops.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use tokio::sync::watch;

use super::Shared;

/// The shortest time between two tells, and so between two events on one stream: at most
/// four a second, however fast jobs run.
pub const TELL_EVERY: Duration = Duration::from_millis(250);

/// The most events a second all open streams together are sent (with more than a quarter of
/// this many open; with fewer, each gets four a second at most).
pub const EVENTS_PER_SECOND: u32 = 200;

/// The time between two tells with `streams` event streams open: [`TELL_EVERY`], or longer
/// when that many streams would be sent more than [`EVENTS_PER_SECOND`] events a second.
pub fn gap(streams: usize) -> Duration {
    let share = Duration::from_secs(1) * u32::try_from(streams).unwrap_or(u32::MAX);
    TELL_EVERY.max(share / EVENTS_PER_SECOND)
}

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Tells `told` of what `changes` counts, at most once per [`gap`] for the `streams` open
/// (the first change after a quiet gap at once), until `stopping` turns true or the counter is
/// gone.
pub async fn coalesce(
    mut changes: watch::Receiver<u64>,
    told: Arc<watch::Sender<u64>>,
    streams: Arc<AtomicUsize>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        // Whatever changed up to now is part of this tell.
        let n = *changes.borrow_and_update();
        told.send_replace(n);
        tokio::select! {
            () = tokio::time::sleep(gap(streams.load(Ordering::Relaxed))) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

struct Stream {
    told: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    _open: Open,
}

/// Counts a stream among the open ones while it lives.
pub(super) struct Open(Arc<AtomicUsize>);

impl Open {
    pub(super) fn new(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(streams))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stream {
    /// The next tell to announce; `None` when the dashboard stops.
    async fn next(&mut self) -> Option<u64> {
        tokio::select! {
            changed = self.told.changed() => changed.ok()?,
            _ = self.stopping.wait_for(|stop| *stop) => return None,
        }
        // A stream that fell behind announces the latest tell only.
        Some(*self.told.borrow_and_update())
    }
}

/// `GET /events`.
pub async fn events(State(app): State<Shared>) -> Response {
    let (told, open) = app.changes.subscribe();
    let stream = Stream {
        told,
        stopping: app.stopping.clone(),
        _open: open,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let n = stream.next().await?;
        let event = Event::default().event("change").data(n.to_string());
        Some((Ok::<_, Infallible>(event), stream))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::web::Changes;

    /// A stream on `changes` with the coalescing task running; the stop switch.
    fn stream(changes: &Changes) -> (Stream, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(changes.coalesce(stopping.clone()));
        (open(changes, &stopping), stop)
    }

    fn open(changes: &Changes, stopping: &watch::Receiver<bool>) -> Stream {
        let (told, open) = changes.subscribe();
        Stream {
            told,
            stopping: stopping.clone(),
            _open: open,
        }
    }

    #[test]
    fn the_gap_grows_with_the_streams_beyond_a_quarter_of_the_budget() {
        assert_eq!(gap(0), TELL_EVERY);
        assert_eq!(gap(1), TELL_EVERY);
        assert_eq!(gap(50), TELL_EVERY);
        assert_eq!(gap(100), Duration::from_millis(500));
        assert_eq!(gap(200), Duration::from_secs(1));
        assert_eq!(gap(usize::MAX), Duration::from_secs(u32::MAX as u64) / EVENTS_PER_SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_change_is_told_at_once_and_a_burst_once_at_the_end_of_the_gap() {
        let changes = Changes::new();
        let (mut stream, stop) = stream(&changes);
        changes.bump();
        let start = Instant::now();
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(start.elapsed(), Duration::ZERO, "told at once");
        for _ in 0..10 {
            changes.bump();
        }
        assert_eq!(stream.next().await, Some(11), "the burst is one event");
        assert_eq!(start.elapsed(), TELL_EVERY);
        // Quiet for longer than the gap: the next change is told at once again.
        tokio::time::sleep(TELL_EVERY * 3).await;
        changes.bump();
        let quiet = Instant::now();
        assert_eq!(stream.next().await, Some(12));
        assert_eq!(quiet.elapsed(), Duration::ZERO);
        stop.send(true).unwrap();
        assert_eq!(stream.next().await, None);
    }

    /// Counts what one of `streams` streams open on `changes` is sent while 20,000 changes come
    /// over 10 s of (paused, so exact) time: 2,000 a second, as a dispatcher running several
    /// hundred jobs a second makes them.
    async fn burst(streams: usize) {
        const CHANGES: u64 = 20_000;
        const EVERY: Duration = Duration::from_micros(500);
        let changes = Changes::new();
        let (mut stream, stop) = stream(&changes);
        let others: Vec<Stream> = (1..streams)
            .map(|_| open(&changes, &stream.stopping))
            .collect();
        let counting = tokio::spawn(async move {
            let mut events = Vec::new();
            while let Some(n) = stream.next().await {
                events.push((Instant::now(), n));
            }
            events
        });
        let start = Instant::now();
        for _ in 0..CHANGES {
            changes.bump();
            tokio::time::sleep(EVERY).await;
        }
        let span = start.elapsed();
        // Long enough for the last change to be told.
        tokio::time::sleep(gap(streams) * 2).await;
        stop.send(true).unwrap();
        let events = counting.await.unwrap();
        drop(others);

        let every = gap(streams);
        let bound = (span.as_nanos() / every.as_nanos()) as usize + 1;
        assert!(
            events.len() <= bound,
            "{} events for {CHANGES} changes over {span:?} with {streams} streams open: more \
             than one per {every:?} ({bound})",
            events.len()
        );
        assert!(
            events.len() >= bound - 1,
            "{} events over {span:?}: changes went untold",
            events.len()
        );
        for pair in events.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= every, "{pair:?}");
            assert!(pair[1].1 > pair[0].1, "{pair:?}");
        }
        assert_eq!(events[0], (start, 1), "the first change is told at once");
        assert_eq!(
            events.last().map(|e| e.1),
            Some(CHANGES),
            "the last change is told"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_sends_at_most_one_event_per_gap_however_many_changes_come() {
        burst(1).await;
    }

    #[tokio::test(start_paused = true)]
    async fn many_open_streams_together_are_sent_at_most_the_budget_of_events() {
        // 200 streams: one tell a second, 200 events a second in all.
        assert_eq!(gap(200), Duration::from_secs(1));
        burst(200).await;
    }
}
