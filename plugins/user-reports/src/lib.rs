//! Example jobhost plugin: the `App\Jobs\ProcessUserReport` job class.
//!
//! `generate(report_id, rows?)` writes a deterministic CSV report to
//! `<storage>/reports/report-<report_id>.csv`; `send(report_id, to?)` mails it by writing a
//! MIME multipart message with the CSV attached to `<storage>/mail/report-<report_id>-<job_id>.eml`.
//! The storage directory is `$APP_STORAGE_DIR`, or `./storage` relative to the worker's current
//! directory.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::SystemTime,
};

pub use example_support::storage_dir;
use example_support::{is_plain_address, rfc2822_date, safe_component, write_atomically};
use job_sdk::{export_plugin, JobClass, JobContext, JobError, Methods};
use serde::{Deserialize, Serialize};

/// Generates user reports and mails them.
#[derive(Default)]
pub struct ProcessUserReport;

/// The largest report `generate` writes.
pub const MAX_ROWS: u32 = 1_000_000;

/// The params of `generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// The report to generate.
    pub report_id: u64,
    /// How many data rows to write; 10 when absent.
    #[serde(default)]
    pub rows: Option<u32>,
}

/// What `generate` wrote.
#[derive(Debug, Serialize)]
pub struct Generated {
    /// The path of the CSV file.
    pub path: String,
    /// The number of data rows (the header not counted).
    pub rows: u32,
    /// The sum of the `signups` column.
    pub total_signups: u64,
    /// The sum of the `revenue_cents` column.
    pub total_revenue_cents: u64,
}

/// The params of `send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// The report to send; it must have been generated.
    pub report_id: u64,
    /// The recipient; `reports@example.com` when absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// What `send` wrote.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// The path of the written `.eml` file.
    pub path: String,
    /// The recipient address.
    pub to: String,
    /// The attachment's file name.
    pub attachment: String,
    /// The attachment's size in bytes.
    pub attachment_bytes: u64,
}

impl JobClass for ProcessUserReport {
    const NAME: &'static str = r"App\Jobs\ProcessUserReport";
    const DOC: &'static str = "Generates user reports as CSV and mails them.";

    fn methods(methods: &mut Methods<Self>) {
        methods
            .add(
                "generate",
                "Writes storage/reports/report-<report_id>.csv (params: report_id, rows? = 10).",
                Self::generate,
            )
            .add(
                "send",
                "Mails a generated report as a CSV attachment (params: report_id, to?).",
                Self::send,
            );
    }
}

impl ProcessUserReport {
    fn generate(
        &self,
        ctx: &JobContext<'_>,
        params: GenerateParams,
    ) -> Result<Generated, JobError> {
        generate(&storage_dir(), ctx, params)
    }

    fn send(&self, ctx: &JobContext<'_>, params: SendParams) -> Result<Sent, JobError> {
        send(&storage_dir(), ctx, params, SystemTime::now())
    }
}

export_plugin!(
    #[fork_safe]
    ProcessUserReport
);

/// The CSV file of report `report_id` under `storage`.
pub fn report_path(storage: &Path, report_id: u64) -> PathBuf {
    storage
        .join("reports")
        .join(format!("report-{report_id}.csv"))
}

/// Row `i` (from 1) of report `report_id`: `(user_id, signups, revenue_cents)`.
pub fn report_row(report_id: u64, i: u32) -> (u64, u64, u64) {
    let i = u64::from(i);
    let user_id = report_id.wrapping_mul(1000).wrapping_add(i);
    let signups = (report_id % 97 + i * 7) % 20 + 1;
    let revenue_cents = signups * 1999;
    (user_id, signups, revenue_cents)
}

/// The `generate` job, writing under `storage`.
pub fn generate(
    storage: &Path,
    ctx: &JobContext<'_>,
    params: GenerateParams,
) -> Result<Generated, JobError> {
    let rows = params.rows.unwrap_or(10);
    if rows > MAX_ROWS {
        return Err(JobError::permanent(format!(
            "rows must be at most {MAX_ROWS}, got {rows}"
        )));
    }
    let mut csv = String::from("user_id,signups,revenue_cents\n");
    let (mut total_signups, mut total_revenue_cents) = (0u64, 0u64);
    for i in 1..=rows {
        ctx.check_cancelled()?;
        let (user_id, signups, revenue_cents) = report_row(params.report_id, i);
        csv.push_str(&format!("{user_id},{signups},{revenue_cents}\n"));
        total_signups += signups;
        total_revenue_cents += revenue_cents;
    }
    let path = report_path(storage, params.report_id);
    write_atomically(&path, csv.as_bytes())
        .map_err(|e| JobError::new(format!("cannot write {}: {e}", path.display())))?;
    ctx.log(format_args!(
        "generated report {} with {rows} rows at {}",
        params.report_id,
        path.display()
    ));
    Ok(Generated {
        path: path.display().to_string(),
        rows,
        total_signups,
        total_revenue_cents,
    })
}

/// The `send` job, reading and writing under `storage` and dating the message `now`.
pub fn send(
    storage: &Path,
    ctx: &JobContext<'_>,
    params: SendParams,
    now: SystemTime,
) -> Result<Sent, JobError> {
    let report_id = params.report_id;
    let to = match params.to {
        Some(to) => {
            let to = to.trim().to_owned();
            if !is_plain_address(&to) {
                return Err(JobError::permanent(format!(
                    "{to:?} is not a valid address"
                )));
            }
            to
        }
        None => "reports@example.com".to_owned(),
    };
    let csv_path = report_path(storage, report_id);
    let csv = match fs::read(&csv_path) {
        Ok(csv) => csv,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(JobError::permanent(format!(
                "report {report_id} has not been generated; run generate first"
            )))
        }
        Err(e) => {
            return Err(JobError::new(format!(
                "cannot read {}: {e}",
                csv_path.display()
            )))
        }
    };

    let job_id = safe_component(ctx.job_id());
    let attachment = format!("report-{report_id}.csv");
    // Base64 never contains '-', so the boundary cannot occur in the encoded attachment.
    let boundary = format!("----=_jobhost_report_{report_id}_{job_id}");
    let mut lines = vec![
        "From: jobhost <noreply@example.com>".to_owned(),
        format!("To: {to}"),
        format!("Subject: User report {report_id}"),
        format!("Date: {}", rfc2822_date(now)),
        format!("Message-ID: <report-{report_id}-{job_id}@jobhost.example.com>"),
        "MIME-Version: 1.0".to_owned(),
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\""),
        String::new(),
        "This is a multi-part message in MIME format.".to_owned(),
        format!("--{boundary}"),
        "Content-Type: text/plain; charset=utf-8".to_owned(),
        "Content-Transfer-Encoding: 7bit".to_owned(),
        String::new(),
        "Hello,".to_owned(),
        String::new(),
        format!("Attached is user report {report_id}."),
        String::new(),
        "-- jobhost".to_owned(),
        format!("--{boundary}"),
        format!("Content-Type: text/csv; charset=utf-8; name=\"{attachment}\""),
        format!("Content-Disposition: attachment; filename=\"{attachment}\""),
        "Content-Transfer-Encoding: base64".to_owned(),
        String::new(),
    ];
    let encoded = base64(&csv);
    lines.extend(
        encoded
            .as_bytes()
            .chunks(76)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned()),
    );
    lines.push(format!("--{boundary}--"));
    lines.push(String::new());
    let message = lines.join("\r\n");

    let path = storage
        .join("mail")
        .join(format!("report-{report_id}-{job_id}.eml"));
    write_atomically(&path, message.as_bytes())
        .map_err(|e| JobError::new(format!("cannot write {}: {e}", path.display())))?;
    ctx.log(format_args!(
        "mailed report {report_id} to {to} at {}",
        path.display()
    ));
    Ok(Sent {
        path: path.display().to_string(),
        to,
        attachment,
        attachment_bytes: csv.len() as u64,
    })
}

/// Standard base64 (RFC 4648, with padding) of `data`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use example_support::testing::{at, TestDir};
    use job_sdk::ErrorKind;

    use super::*;

    /// Runs `generate` under `dir` as attempt 1 of job `job-1`.
    fn generate_report(
        dir: &Path,
        report_id: u64,
        rows: Option<u32>,
    ) -> Result<Generated, JobError> {
        let ctx = JobContext::detached("job-1", 1);
        generate(dir, &ctx, GenerateParams { report_id, rows })
    }

    #[test]
    fn generate_writes_a_deterministic_csv() {
        let dir = TestDir::new("user-reports", "generate");
        let out = generate_report(&dir.0, 7, Some(3)).expect("generates");
        let path = dir.0.join("reports/report-7.csv");
        assert_eq!(out.path, path.display().to_string());
        assert_eq!(out.rows, 3);
        let csv = fs::read_to_string(&path).expect("written");
        assert_eq!(
            csv,
            "user_id,signups,revenue_cents\n\
             7001,15,29985\n\
             7002,2,3998\n\
             7003,9,17991\n"
        );
        assert_eq!(out.total_signups, 26);
        assert_eq!(out.total_revenue_cents, 51974);
        // Generating again gives the same file.
        generate_report(&dir.0, 7, Some(3)).expect("generates");
        assert_eq!(fs::read_to_string(&path).expect("rewritten"), csv);
    }

    #[test]
    fn generate_defaults_to_ten_rows() {
        let dir = TestDir::new("user-reports", "default-rows");
        let out = generate_report(&dir.0, 1, None).expect("generates");
        assert_eq!(out.rows, 10);
        let csv = fs::read_to_string(dir.0.join("reports/report-1.csv")).expect("written");
        assert_eq!(csv.lines().count(), 11);
    }

    #[test]
    fn generate_refuses_too_many_rows() {
        let dir = TestDir::new("user-reports", "too-many");
        let err = generate_report(&dir.0, 1, Some(MAX_ROWS + 1)).expect_err("too many rows");
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn send_attaches_the_csv() {
        let dir = TestDir::new("user-reports", "send");
        generate_report(&dir.0, 7, Some(3)).expect("generates");
        let csv = fs::read(dir.0.join("reports/report-7.csv")).expect("generated");
        let ctx = JobContext::detached("job-2", 1);
        let params = SendParams {
            report_id: 7,
            to: Some("boss@example.com".into()),
        };
        let sent = send(&dir.0, &ctx, params, at(0)).expect("sent");
        let path = dir.0.join("mail/report-7-job-2.eml");
        assert_eq!(sent.path, path.display().to_string());
        assert_eq!(sent.attachment_bytes, csv.len() as u64);

        let eml = fs::read_to_string(&path).expect("written");
        assert!(
            !eml.replace("\r\n", "").contains('\n'),
            "only CRLF line ends"
        );
        let (head, body) = eml.split_once("\r\n\r\n").expect("headers end");
        assert!(head.contains("To: boss@example.com\r\n"));
        assert!(head.contains("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
        assert!(head.contains("Message-ID: <report-7-job-2@jobhost.example.com>\r\n"));
        let boundary = "----=_jobhost_report_7_job-2";
        assert!(head.ends_with(&format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\""
        )));
        let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 4, "preamble, two parts, epilogue: {body}");
        assert_eq!(parts[3], "--\r\n");
        let (att_head, att_body) = parts[2].split_once("\r\n\r\n").expect("part headers");
        assert!(att_head.contains("filename=\"report-7.csv\""));
        assert!(att_head.contains("Content-Transfer-Encoding: base64"));
        let encoded: String = att_body.split("\r\n").collect();
        assert_eq!(encoded, base64(&csv));
        assert!(att_body.split("\r\n").all(|line| line.len() <= 76));
    }

    #[test]
    fn send_before_generate_is_a_permanent_error() {
        let dir = TestDir::new("user-reports", "missing");
        let ctx = JobContext::detached("job-1", 1);
        let params = SendParams {
            report_id: 5,
            to: None,
        };
        let err = send(&dir.0, &ctx, params, SystemTime::now()).expect_err("not generated");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(
            err.message(),
            "report 5 has not been generated; run generate first"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }
}
