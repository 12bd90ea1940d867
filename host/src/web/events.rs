//! `GET PREFIX/events`: server-sent events that tell an open page to refresh itself.
//!
//! Each change to the queue (counted by [`super::Changes`]) becomes `event: change` with the
//! counter as its data; bursts are coalesced to at most one event per [`MIN_GAP`]. A comment
//! line keeps the connection alive every 15 s. The stream ends when the dashboard stops.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use tokio::{sync::watch, time::Instant};

use super::Shared;

/// The shortest time between two events on one stream.
pub const MIN_GAP: Duration = Duration::from_millis(200);

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Stream {
    changes: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    last: Option<Instant>,
}

impl Stream {
    /// The next change to announce, at least [`MIN_GAP`] after the previous one; `None` when
    /// the dashboard stops.
    async fn next(&mut self) -> Option<u64> {
        tokio::select! {
            changed = self.changes.changed() => changed.ok()?,
            _ = self.stopping.wait_for(|stop| *stop) => return None,
        }
        if let Some(last) = self.last {
            tokio::select! {
                () = tokio::time::sleep_until(last + MIN_GAP) => {}
                _ = self.stopping.wait_for(|stop| *stop) => return None,
            }
        }
        self.last = Some(Instant::now());
        // Whatever changed meanwhile is part of this event.
        Some(*self.changes.borrow_and_update())
    }
}

/// `GET /events`.
pub async fn events(State(app): State<Shared>) -> Response {
    let stream = Stream {
        changes: app.changes.subscribe(),
        stopping: app.stopping.clone(),
        last: None,
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
    use super::*;
    use crate::web::Changes;

    #[tokio::test(start_paused = true)]
    async fn bursts_become_one_event_at_most_every_200_ms() {
        let changes = Changes::new();
        let (stop, stopping) = watch::channel(false);
        let mut stream = Stream {
            changes: changes.subscribe(),
            stopping,
            last: None,
        };
        changes.bump();
        let start = Instant::now();
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first change is told at once"
        );
        for _ in 0..10 {
            changes.bump();
        }
        assert_eq!(stream.next().await, Some(11));
        assert_eq!(start.elapsed(), MIN_GAP);
        stop.send(true).unwrap();
        assert_eq!(stream.next().await, None);
    }
}
