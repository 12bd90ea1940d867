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

/// How [`visible`] writes a character that would not show as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `\u{202E}`: for text (an error, a program's output, a log message).
    Text,
    /// `\u202E` (a UTF-16 surrogate pair beyond U+FFFF): for JSON text, which stays valid JSON
    /// with the same value.
    Json,
}

/// Whether `c` is a character that shows as nothing, or changes how what surrounds it shows:
/// controls (but `\n` and `\t`), the right-to-left and other bidirectional controls (U+202A to
/// U+202E, U+2066 to U+2069, U+200E, U+200F, U+061C), zero-width characters (U+200B to U+200D,
/// U+2060, U+FEFF) and every other format character (Unicode category Cf), and the line and
/// paragraph separators U+2028 and U+2029.
pub fn is_hidden(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        c if c.is_control() => true,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}' => true,
        _ => false,
    }
}

/// `text` with every [hidden](is_hidden) character written as an escape, so that what is shown
/// is what is there: `"\u{202E}exe.txt"` shows as `\u{202E}exe.txt`, not as "txt.exe". A
/// carriage return before a line feed is kept (a Windows line end). Borrowed when nothing is
/// hidden. The dashboard's pages, `jobhost show` and `list`, and the log files show values
/// through it; JSON answers (`--json`, the dashboard's API) keep values exact.
pub fn visible(text: &str, escape: Escape) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    let hidden =
        |(i, c): &(usize, char)| is_hidden(*c) && !(*c == '\r' && text[i + 1..].starts_with('\n'));
    if !text.char_indices().any(|ic| hidden(&ic)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (i, c) in text.char_indices() {
        if !hidden(&(i, c)) {
            out.push(c);
            continue;
        }
        match escape {
            Escape::Text => {
                let _ = write!(out, "\\u{{{:X}}}", u32::from(c));
            }
            Escape::Json => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04X}", unit);
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_to_left_and_invisible_characters_are_escaped() {
        let text = "\u{202E}exe.txt";
        assert_eq!(visible(text, Escape::Text), r"\u{202E}exe.txt");
        assert_eq!(visible(text, Escape::Json), r"\u202Eexe.txt");
        for c in [
            '\u{202A}',
            '\u{202D}',
            '\u{2066}',
            '\u{2069}',
            '\u{200E}',
            '\u{200F}',
            '\u{061C}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{2028}',
            '\u{0}',
            '\u{7}',
            '\u{1B}',
            '\r',
            '\u{7F}',
            '\u{85}',
            '\u{9F}',
            '\u{E0041}',
        ] {
            let text = format!("a{c}b");
            assert_eq!(
                visible(&text, Escape::Text),
                format!("a\\u{{{:X}}}b", u32::from(c)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn what_shows_as_itself_is_kept_and_borrowed() {
        for text in [
            "plain",
            "line\nbreak\tand tab",
            "é ✓ 日本 😀",
            "a\r\nb",
            r"App\Jobs\X",
            "",
        ] {
            assert!(
                matches!(visible(text, Escape::Text), std::borrow::Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
        assert_eq!(visible("a\rb\r", Escape::Text), r"a\u{D}b\u{D}");
    }

    #[test]
    fn the_json_escape_keeps_json_valid_and_its_value_exact() {
        let value = serde_json::json!({"name": "\u{202E}x\u{E0041}\u{200B}\u{85}", "n": 1});
        let text = serde_json::to_string_pretty(&value).unwrap();
        let shown = visible(&text, Escape::Json);
        assert!(!shown.chars().any(is_hidden), "{shown}");
        assert!(
            shown.contains(r"\u202Ex\uDB40\uDC41\u200B\u0085"),
            "{shown}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
    }
}
