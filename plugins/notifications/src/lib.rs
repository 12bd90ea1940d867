//! Example jobhost plugin: the `App\Jobs\SendNotification` job class.
//!
//! `send(user_id, message)` delivers an in-app notification by appending one JSON line
//! (`{"user_id","message","job_id","attempt","sent_at"}`) to
//! `<storage>/notifications/<user_id>.jsonl`. The storage directory is `$APP_STORAGE_DIR`, or
//! `./storage` relative to the worker's current directory.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

pub use example_support::storage_dir;
use job_sdk::{export_plugin, JobClass, JobContext, JobError, Methods};
use serde::{Deserialize, Serialize};

/// Sends in-app notifications to users.
#[derive(Default)]
pub struct SendNotification;

/// The params of `send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// The user to notify.
    pub user_id: u64,
    /// The notification text; must not be empty.
    pub message: String,
}

/// One line of a user's notifications file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notification {
    /// The notified user.
    pub user_id: u64,
    /// The notification text.
    pub message: String,
    /// The job that sent it.
    pub job_id: String,
    /// The attempt that sent it.
    pub attempt: u32,
    /// When it was sent, in seconds since the Unix epoch.
    pub sent_at: u64,
}

/// What `send` wrote.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// The path of the user's notifications file.
    pub path: String,
    /// The notified user.
    pub user_id: u64,
    /// When it was sent, in seconds since the Unix epoch.
    pub sent_at: u64,
}

impl JobClass for SendNotification {
    const NAME: &'static str = r"App\Jobs\SendNotification";
    const DOC: &'static str = "Sends in-app notifications to users.";

    fn methods(methods: &mut Methods<Self>) {
        methods.add(
            "send",
            "Appends `message` to storage/notifications/<user_id>.jsonl (params: user_id, message).",
            Self::send,
        );
    }
}

impl SendNotification {
    fn send(&self, ctx: &JobContext<'_>, params: SendParams) -> Result<Sent, JobError> {
        send(&storage_dir(), ctx, params, SystemTime::now())
    }
}

export_plugin!(
    #[fork_safe]
    SendNotification
);

/// The `send` job, appending under `storage` with `now` as the send time.
pub fn send(
    storage: &Path,
    ctx: &JobContext<'_>,
    params: SendParams,
    now: SystemTime,
) -> Result<Sent, JobError> {
    if params.message.trim().is_empty() {
        return Err(JobError::permanent("message must not be empty"));
    }
    let sent_at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let notification = Notification {
        user_id: params.user_id,
        message: params.message,
        job_id: ctx.job_id().to_owned(),
        attempt: ctx.attempt(),
        sent_at,
    };
    // serde_json escapes newlines in strings, so this is exactly one line.
    let mut line = serde_json::to_string(&notification)
        .map_err(|e| JobError::permanent(format!("cannot encode the notification: {e}")))?;
    line.push('\n');

    let dir = storage.join("notifications");
    let path = dir.join(format!("{}.jsonl", params.user_id));
    fs::create_dir_all(&dir)
        .map_err(|e| JobError::new(format!("cannot create {}: {e}", dir.display())))?;
    // One write of the whole line to a file opened for appending, so concurrent jobs for the
    // same user never interleave their lines.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| JobError::new(format!("cannot append to {}: {e}", path.display())))?;
    ctx.log(format_args!(
        "notified user {} ({})",
        params.user_id,
        path.display()
    ));
    Ok(Sent {
        path: path.display().to_string(),
        user_id: params.user_id,
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use example_support::testing::{at, TestDir};
    use job_sdk::ErrorKind;

    use super::*;

    #[test]
    fn appends_one_json_line_per_notification() {
        let dir = TestDir::new("notifications", "append");
        let first = SendParams {
            user_id: 9,
            message: "Hello".into(),
        };
        let sent = send(&dir.0, &JobContext::detached("job-1", 1), first, at(100)).expect("sent");
        let path = dir.0.join("notifications/9.jsonl");
        assert_eq!(sent.path, path.display().to_string());
        assert_eq!(sent.sent_at, 100);
        let second = SendParams {
            user_id: 9,
            message: "two\nlines \"quoted\"".into(),
        };
        send(&dir.0, &JobContext::detached("job-2", 3), second, at(200)).expect("sent");

        let contents = fs::read_to_string(&path).expect("written");
        assert!(contents.starts_with(
            r#"{"user_id":9,"message":"Hello","job_id":"job-1","attempt":1,"sent_at":100}"#
        ));
        let lines: Vec<Notification> = contents
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        assert_eq!(
            lines,
            [
                Notification {
                    user_id: 9,
                    message: "Hello".into(),
                    job_id: "job-1".into(),
                    attempt: 1,
                    sent_at: 100,
                },
                Notification {
                    user_id: 9,
                    message: "two\nlines \"quoted\"".into(),
                    job_id: "job-2".into(),
                    attempt: 3,
                    sent_at: 200,
                },
            ]
        );
    }

    #[test]
    fn empty_message_is_a_permanent_error() {
        let dir = TestDir::new("notifications", "empty");
        for message in ["", "  \n"] {
            let params = SendParams {
                user_id: 1,
                message: message.into(),
            };
            let err = send(&dir.0, &JobContext::detached("job-1", 1), params, at(0))
                .expect_err("empty message");
            assert_eq!(err.kind(), ErrorKind::Permanent);
            assert_eq!(err.message(), "message must not be empty");
        }
        assert!(!dir.0.join("notifications").exists(), "nothing was written");
    }
}
