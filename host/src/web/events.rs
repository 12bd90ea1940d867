//! `GET PREFIX/events`: server-sent events that tell an open page to refresh itself.
//!
//! The changes to the queue are counted by [`super::Changes`] as they happen, as often as the
//! dispatcher makes them (several a job); one task ([`coalesce`]) turns them into *tells*, at
//! most one every [`TELL_EVERY`] whatever the rate of changes: the first change after a quiet
//! [`TELL_EVERY`] is told at once, those that follow within it together at its end. Every
//! stream follows the tells, so each sends at most one `event: change` (with the counter as its
//! data) per [`TELL_EVERY`], and all open pages hear of a change at the same moment: their
//! re-fetches arrive together, and the reads they need are shared ([`super::reads`]). A comment
//! line keeps the connection alive every 15 s. The stream ends when the dashboard stops.

use std::{convert::Infallible, sync::Arc, time::Duration};

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

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Tells `told` of what `changes` counts, at most once every [`TELL_EVERY`] (the first change
/// after a quiet period at once), until `stopping` turns true or the counter is gone.
pub async fn coalesce(
    mut changes: watch::Receiver<u64>,
    told: Arc<watch::Sender<u64>>,
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
            () = tokio::time::sleep(TELL_EVERY) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

struct Stream {
    told: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
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
    let stream = Stream {
        told: app.changes.subscribe(),
        stopping: app.stopping.clone(),
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
        let stream = Stream {
            told: changes.subscribe(),
            stopping,
        };
        (stream, stop)
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_sends_at_most_one_event_per_gap_however_many_changes_come() {
        // 20,000 changes over 10 s of (paused, so exact) time: 2,000 a second, as a dispatcher
        // running several hundred jobs a second makes them.
        const CHANGES: u64 = 20_000;
        const EVERY: Duration = Duration::from_micros(500);
        let changes = Changes::new();
        let (mut stream, stop) = stream(&changes);
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
        tokio::time::sleep(TELL_EVERY * 2).await;
        stop.send(true).unwrap();
        let events = counting.await.unwrap();

        let bound = (span.as_nanos() / TELL_EVERY.as_nanos()) as usize + 1;
        assert!(
            events.len() <= bound,
            "{} events for {CHANGES} changes over {span:?}: more than one per {TELL_EVERY:?} \
             ({bound})",
            events.len()
        );
        assert!(
            events.len() >= bound - 1,
            "{} events over {span:?}: changes went untold",
            events.len()
        );
        for pair in events.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= TELL_EVERY, "{pair:?}");
            assert!(pair[1].1 > pair[0].1, "{pair:?}");
        }
        assert_eq!(events[0], (start, 1), "the first change is told at once");
        assert_eq!(
            events.last().map(|e| e.1),
            Some(CHANGES),
            "the last change is told"
        );
    }
}
