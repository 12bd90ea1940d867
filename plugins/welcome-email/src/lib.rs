//! Example jobhost plugin: the `App\Jobs\SendWelcomeEmail` job class.
//!
//! `handle(user_id, email?, name?)` "sends" a welcome email by writing it, as a complete
//! RFC 5322 message, to `<storage>/mail/welcome-<user_id>-<job_id>.eml`. The storage directory
//! is `$APP_STORAGE_DIR`, or `./storage` relative to the worker's current directory.

use std::{path::Path, time::SystemTime};

use example_support::{is_plain_address, safe_component, write_atomically};
pub use example_support::{rfc2822_date, storage_dir};
use job_sdk::{export_plugin, JobClass, JobContext, JobError, Methods};
use serde::{Deserialize, Serialize};

/// Sends the welcome email to a newly registered user.
#[derive(Default)]
pub struct SendWelcomeEmail;

/// The params of `handle`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleParams {
    /// The new user's id; must be positive.
    pub user_id: u64,
    /// The address to write to; `user<id>@example.com` when absent.
    #[serde(default)]
    pub email: Option<String>,
    /// The name to greet; "there" when absent.
    #[serde(default)]
    pub name: Option<String>,
}

/// What `handle` wrote.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// The path of the written `.eml` file.
    pub path: String,
    /// The recipient address.
    pub to: String,
    /// The message's `Message-ID`, without the angle brackets.
    pub message_id: String,
}

impl JobClass for SendWelcomeEmail {
    const NAME: &'static str = r"App\Jobs\SendWelcomeEmail";
    const DOC: &'static str = "Welcomes a newly registered user by email.";

    fn methods(methods: &mut Methods<Self>) {
        methods.add(
            "handle",
            "Writes a welcome email for `user_id` to storage/mail (params: user_id, email?, name?).",
            Self::handle,
        );
    }
}

impl SendWelcomeEmail {
    fn handle(&self, ctx: &JobContext<'_>, params: HandleParams) -> Result<Sent, JobError> {
        send_welcome(&storage_dir(), ctx, params, SystemTime::now())
    }
}

export_plugin!(
    #[fork_safe]
    SendWelcomeEmail
);

/// The job itself, writing under `storage` and dating the message `now`.
pub fn send_welcome(
    storage: &Path,
    ctx: &JobContext<'_>,
    params: HandleParams,
    now: SystemTime,
) -> Result<Sent, JobError> {
    if params.user_id == 0 {
        return Err(JobError::permanent("user_id must be positive"));
    }
    let to = match params.email {
        Some(email) => {
            let email = email.trim().to_owned();
            if !is_plain_address(&email) {
                return Err(JobError::permanent(format!(
                    "email {email:?} is not a valid address"
                )));
            }
            email
        }
        None => format!("user{}@example.com", params.user_id),
    };
    let name = params
        .name
        .as_deref()
        .map(|n| n.replace(char::is_control, " ").trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "there".to_owned());

    let job_id = safe_component(ctx.job_id());
    let message_id = format!("welcome-{}-{job_id}@jobhost.example.com", params.user_id);
    let message = [
        "From: jobhost <noreply@example.com>".to_owned(),
        format!("To: {to}"),
        "Subject: Welcome to jobhost!".to_owned(),
        format!("Date: {}", rfc2822_date(now)),
        format!("Message-ID: <{message_id}>"),
        "MIME-Version: 1.0".to_owned(),
        "Content-Type: text/plain; charset=utf-8".to_owned(),
        "Content-Transfer-Encoding: 8bit".to_owned(),
        String::new(),
        format!("Hi {name},"),
        String::new(),
        "Welcome to jobhost! Your account is ready, and we are glad to have you.".to_owned(),
        "If you have any questions, just reply to this email.".to_owned(),
        String::new(),
        "Cheers,".to_owned(),
        "The jobhost team".to_owned(),
        String::new(),
    ]
    .join("\r\n");

    let path = storage
        .join("mail")
        .join(format!("welcome-{}-{job_id}.eml", params.user_id));
    write_atomically(&path, message.as_bytes())
        .map_err(|e| JobError::new(format!("cannot write {}: {e}", path.display())))?;
    ctx.log(format_args!(
        "wrote welcome email for user {} to {}",
        params.user_id,
        path.display()
    ));
    Ok(Sent {
        path: path.display().to_string(),
        to,
        message_id,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use example_support::testing::{at, file_names, TestDir};
    use job_sdk::ErrorKind;

    use super::*;

    /// The `handle` params for `user_id`, with an optional address and name.
    fn handle_params(user_id: u64, email: Option<&str>, name: Option<&str>) -> HandleParams {
        HandleParams {
            user_id,
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn writes_an_rfc5322_message() {
        let dir = TestDir::new("welcome-email", "writes");
        let ctx = JobContext::detached("job-1", 1);
        let params = handle_params(42, Some("ada@example.org"), Some("Ada"));
        let sent = send_welcome(&dir.0, &ctx, params, at(1_700_000_000)).expect("sends");

        let path = dir.0.join("mail/welcome-42-job-1.eml");
        assert_eq!(sent.path, path.display().to_string());
        assert_eq!(sent.to, "ada@example.org");
        let eml = fs::read_to_string(&path).expect("the message was written");
        let (head, body) = eml
            .split_once("\r\n\r\n")
            .expect("headers end with a blank line");
        let headers: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(
            headers,
            [
                "From: jobhost <noreply@example.com>",
                "To: ada@example.org",
                "Subject: Welcome to jobhost!",
                "Date: Tue, 14 Nov 2023 22:13:20 +0000",
                "Message-ID: <welcome-42-job-1@jobhost.example.com>",
                "MIME-Version: 1.0",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 8bit",
            ]
        );
        assert!(body.starts_with("Hi Ada,\r\n"), "{body}");
        assert!(
            !eml.replace("\r\n", "").contains('\n'),
            "only CRLF line ends"
        );
        // No temporary file is left behind.
        assert_eq!(file_names(&dir.0.join("mail")), ["welcome-42-job-1.eml"]);
    }

    #[test]
    fn defaults_the_address_and_greeting() {
        let dir = TestDir::new("welcome-email", "defaults");
        let ctx = JobContext::detached("job/../7", 2);
        let params = handle_params(7, None, None);
        let sent = send_welcome(&dir.0, &ctx, params, at(0)).expect("sends");
        assert_eq!(sent.to, "user7@example.com");
        assert_eq!(sent.message_id, "welcome-7-job____7@jobhost.example.com");
        let eml = fs::read_to_string(dir.0.join("mail/welcome-7-job____7.eml")).expect("written");
        assert!(eml.contains("\r\nTo: user7@example.com\r\n"));
        assert!(eml.contains("\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
        assert!(eml.contains("\r\n\r\nHi there,\r\n"));
    }

    #[test]
    fn user_zero_is_a_permanent_error() {
        let dir = TestDir::new("welcome-email", "zero");
        let ctx = JobContext::detached("job-1", 1);
        let params = handle_params(0, None, None);
        let err = send_welcome(&dir.0, &ctx, params, at(0)).expect_err("user 0 is refused");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.message(), "user_id must be positive");
        assert!(!dir.0.join("mail").exists(), "nothing was written");
    }

    #[test]
    fn header_injection_is_refused() {
        let dir = TestDir::new("welcome-email", "inject");
        let ctx = JobContext::detached("job-1", 1);
        let params = handle_params(3, Some("a@example.com\r\nBcc: all@example.com"), None);
        let err = send_welcome(&dir.0, &ctx, params, at(0)).expect_err("bad address");
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }
}
