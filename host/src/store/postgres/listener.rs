//! Waking dispatchers on other hosts: the `LISTEN` connection of a [`PgListener`] and the
//! [`Wake`] messages sent on [`CHANNEL`].

use super::*;

/// What a notification on [`CHANNEL`] says changed, or that the listener reconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Jobs were enqueued.
    Enqueued,
    /// Job `id` was cancelled while waiting, or its cancellation was requested while it runs:
    /// the dispatcher running it should stop it.
    Cancel(JobId),
    /// Job `id` was queued again.
    Retry(JobId),
    /// The listener lost its connection and connected again: notifications sent in between
    /// were missed, so look at the store afresh.
    Reconnected,
    /// A payload this jobhost does not know (from a newer one): look at the store afresh.
    Other(String),
}

impl Wake {
    /// The notification's payload: `enqueue`, `cancel:ID` or `retry:ID` (the store sends no
    /// other).
    pub(super) fn payload(&self) -> String {
        match self {
            Wake::Enqueued => "enqueue".into(),
            Wake::Cancel(id) => format!("cancel:{id}"),
            Wake::Retry(id) => format!("retry:{id}"),
            Wake::Reconnected => "reconnected".into(),
            Wake::Other(payload) => payload.clone(),
        }
    }

    /// The wake a notification's payload describes.
    pub(super) fn parse(payload: &str) -> Self {
        let id = |prefix: &str| payload.strip_prefix(prefix)?.parse::<JobId>().ok();
        if payload == "enqueue" {
            Wake::Enqueued
        } else if let Some(id) = id("cancel:") {
            Wake::Cancel(id)
        } else if let Some(id) = id("retry:") {
            Wake::Retry(id)
        } else {
            Wake::Other(payload.to_owned())
        }
    }
}

/// A connection of its own that `LISTEN`s on [`CHANNEL`], for a dispatcher to sleep on.
///
/// [`PgListener::wait`] blocks until a notification arrives or the timeout passes. A lost
/// connection is made again within `wait`, which then reports [`Wake::Reconnected`].
pub struct PgListener {
    pub(super) config: Config,
    /// The URL with its password masked, for messages.
    pub(super) database: String,
    /// None after the connection was lost and connecting again failed.
    pub(super) client: Option<Client>,
}

impl PgListener {
    /// Connects to the database at the PostgreSQL URL `url` and listens on [`CHANNEL`].
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let database = masked(url);
        let config = parse_url(url).map_err(|reason| StoreError::Open {
            database: database.clone(),
            reason,
        })?;
        let client = listen(&config).map_err(|e| StoreError::Open {
            database: database.clone(),
            reason: describe(&e),
        })?;
        Ok(Self {
            config,
            database,
            client: Some(client),
        })
    }

    /// The next notification, waiting up to `timeout` for one (a zero timeout only takes one
    /// already received); `None` if none came.
    ///
    /// When the connection is lost, it connects again at once and returns
    /// [`Wake::Reconnected`]; if that fails, it returns [`StoreError::ConnectionLost`] and
    /// the next call tries again. A caller looping on `wait` should pause after an error, so
    /// that a server that is down is not called in a tight loop.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Wake>, StoreError> {
        let Some(client) = self.client.as_mut() else {
            return self.reconnect(None);
        };
        let next = client.notifications().timeout_iter(timeout).next();
        match next {
            Ok(Some(notification)) => Ok(Some(Wake::parse(notification.payload()))),
            Ok(None) if !client.is_closed() => Ok(None),
            Ok(None) => self.reconnect(None),
            Err(e) => self.reconnect(Some(e)),
        }
    }

    /// Connects again after the connection was lost (with `cause`, if an error said so).
    pub(super) fn reconnect(&mut self, cause: Option<::postgres::Error>) -> Result<Option<Wake>, StoreError> {
        self.client = None;
        match listen(&self.config) {
            Ok(client) => {
                self.client = Some(client);
                Ok(Some(Wake::Reconnected))
            }
            Err(e) => Err(StoreError::ConnectionLost {
                database: self.database.clone(),
                reason: match cause {
                    Some(cause) => format!(
                        "{}; connecting again failed: {}",
                        describe(&cause),
                        describe(&e)
                    ),
                    None => format!("connecting again failed: {}", describe(&e)),
                },
            }),
        }
    }
}

impl Listener for PgListener {
    fn wait_for_change(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        Ok(self.wait(timeout)?.is_some())
    }
}

/// A new connection listening on [`CHANNEL`].
pub(super) fn listen(config: &Config) -> Result<Client, ::postgres::Error> {
    let mut client = connect(config, "jobhost listener")?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}
