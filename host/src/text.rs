//! Small text helpers shared by the file parsers, the CLI and the dashboard.

/// The 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A duration as seconds for people: `5s`, `0.25s`.
pub fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// A time in milliseconds since the Unix epoch for people: the local time zone, in the logs'
/// format (`2024-11-12 10:00:00`); `None` when out of range.
pub fn local_time(millis: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(millis).map(|t| {
        t.with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
}

/// An error and its causes on one line, as the CLI prints them: `what failed: why: root cause`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
