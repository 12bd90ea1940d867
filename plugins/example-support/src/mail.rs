//! Pieces of an RFC 5322 (email) message shared by the mail-writing example jobs.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as an RFC 2822 date in UTC, e.g. `Thu, 01 Jan 1970 00:00:00 +0000`.
///
/// Times before the Unix epoch are written as the epoch.
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

/// Whether `s` is a bare `local@domain` address that is safe to put in a header.
///
/// Both parts must be non-empty printable ASCII without spaces and without any of
/// `@<>()[]\,;:"`, which rules out display names, comments and header injection.
pub fn is_plain_address(s: &str) -> bool {
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
/// a job id is safe in a file name, a `Message-ID` and a MIME boundary.
pub fn safe_component(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::at;

    #[test]
    fn dates_are_rfc2822() {
        assert_eq!(rfc2822_date(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc2822_date(at(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc2822_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc2822_date(at(4_102_444_799)),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }

    #[test]
    fn plain_addresses_only() {
        for ok in ["ada@example.org", "user7@example.com", "a.b+c@d"] {
            assert!(is_plain_address(ok), "{ok:?}");
        }
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "a@b@c",
            "Ada <ada@example.org>",
            "ada @example.org",
            "a@example.com\r\nBcc: all@example.com",
        ] {
            assert!(!is_plain_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn safe_component_keeps_only_letters_digits_dash_and_underscore() {
        assert_eq!(safe_component("job-1_A"), "job-1_A");
        assert_eq!(safe_component("job/../7"), "job____7");
        assert_eq!(safe_component("a b\r\né"), "a_b___");
    }
}
