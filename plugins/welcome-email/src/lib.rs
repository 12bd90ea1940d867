//! Example jobhost plugin: the `App\Jobs\SendWelcomeEmail` job class.
//!
//! `handle(user_id, email?, name?)` "sends" a welcome email by writing it, as a complete
//! RFC 5322 message, to `<storage>/mail/welcome-<user_id>-<job_id>.eml`. The storage directory
//! is `$APP_STORAGE_DIR`, or `./storage` relative to the worker's current directory.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

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

export_plugin!(SendWelcomeEmail);

/// The storage directory: `$APP_STORAGE_DIR` if set and non-empty, else `./storage`.
pub fn storage_dir() -> PathBuf {
    std::env::var_os("APP_STORAGE_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("storage"), PathBuf::from)
}

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

/// Whether `s` is a bare `local@domain` address that is safe to put in a header.
fn is_plain_address(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_graphic() && !"@<>()[]\\,;:\"".contains(c))
    };
    ok(local) && ok(domain)
}

/// `s` with every character other than ASCII letters, digits, `-` and `_` replaced by `_`, so
/// a job id is safe in a file name and in a `Message-ID`.
fn safe_component(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`, creating
/// the parent directory if needed; readers never see a partial file.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `time` as an RFC 2822 date in UTC, e.g. `Thu, 01 Jan 1970 00:00:00 +0000`.
pub fn rfc2822_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[((days + 4) % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use job_sdk::ErrorKind;

    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("welcome-email-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create test dir");
            Self(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn writes_an_rfc5322_message() {
        let dir = TestDir::new("writes");
        let ctx = JobContext::detached("job-1", 1);
        let params = HandleParams {
            user_id: 42,
            email: Some("ada@example.org".into()),
            name: Some("Ada".into()),
        };
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
        let names: Vec<_> = fs::read_dir(dir.0.join("mail"))
            .expect("mail dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["welcome-42-job-1.eml"]);
    }

    #[test]
    fn defaults_the_address_and_greeting() {
        let dir = TestDir::new("defaults");
        let ctx = JobContext::detached("job/../7", 2);
        let params = HandleParams {
            user_id: 7,
            email: None,
            name: None,
        };
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
        let dir = TestDir::new("zero");
        let ctx = JobContext::detached("job-1", 1);
        let params = HandleParams {
            user_id: 0,
            email: None,
            name: None,
        };
        let err = send_welcome(&dir.0, &ctx, params, at(0)).expect_err("user 0 is refused");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.message(), "user_id must be positive");
        assert!(!dir.0.join("mail").exists(), "nothing was written");
    }

    #[test]
    fn header_injection_is_refused() {
        let dir = TestDir::new("inject");
        let ctx = JobContext::detached("job-1", 1);
        let params = HandleParams {
            user_id: 3,
            email: Some("a@example.com\r\nBcc: all@example.com".into()),
            name: None,
        };
        let err = send_welcome(&dir.0, &ctx, params, at(0)).expect_err("bad address");
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn dates_are_rfc2822() {
        assert_eq!(
            rfc2822_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc2822_date(at(4_102_444_799)),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }
}
