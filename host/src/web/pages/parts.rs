//! Pieces several pages show: values as text, times and durations, a job's state badge and
//! link, select options and table heads.

use maud::{html, Markup, Render};

use super::PREFIX;
use crate::{
    shared::text::{visible, Escape},
    store::{JobId, JobState, Millis},
};

/// A value from the queue, a plugin or a log, as a page shows it: the characters that would
/// not show as themselves (right-to-left controls, zero-width and control characters) written
/// as escapes ([`crate::shared::text::visible`]), then escaped by maud, `'` too.
pub(super) struct Shown<'a> {
    text: &'a str,
    escape: Escape,
}

/// `text` as text: hidden characters shown as Rust escapes (`\u{202E}`).
pub(super) fn text(text: &str) -> Shown<'_> {
    Shown {
        text,
        escape: Escape::Text,
    }
}

/// `text`, which is JSON, as text: hidden characters shown as JSON escapes (`\u202E`), so
/// that what is shown is still the JSON of the same value.
pub(super) fn json(text: &str) -> Shown<'_> {
    Shown {
        text,
        escape: Escape::Json,
    }
}

impl Render for Shown<'_> {
    fn render_to(&self, buffer: &mut String) {
        let shown = visible(self.text, self.escape);
        let mut parts = shown.split('\'');
        if let Some(first) = parts.next() {
            first.render_to(buffer);
        }
        for part in parts {
            // maud escapes `& < > "`; a quote is written as its entity too, so that a value
            // reads the same in any attribute.
            buffer.push_str("&#39;");
            part.render_to(buffer);
        }
    }
}

/// The first 16 characters of a hash, as tables show it (characters, not bytes: a hash read
/// from a store may be anything).
pub(super) fn short_hash(hash: &str) -> &str {
    hash.char_indices()
        .nth(16)
        .map_or(hash, |(at, _)| &hash[..at])
}

/// A time for people, in the local time zone, as the logs write it; `—` for none.
pub(super) fn when(millis: Option<Millis>) -> String {
    millis
        .and_then(crate::shared::text::local_time)
        .unwrap_or_else(|| "—".into())
}

/// A finished duration: `850 ms`, `4.25 s`, `3m 07s`, `2h 05m`.
pub(super) fn took(ms: i64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        ms => clock(ms),
    }
}

/// A running duration, to the second: `12 s`, `3m 07s`, `2h 05m` (app.js ticks the same).
pub(super) fn clock(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A job's state, `<span class="state state-STATE">`, with the element id `id` if given.
pub(super) fn state_badge(state: JobState, id: Option<&str>) -> Markup {
    html! {
        span id=[id] class={ "state state-" (state.as_str()) } { (state.as_str()) }
    }
}

/// The address of job `id`'s page.
pub(super) fn job_url(id: JobId) -> String {
    format!("{PREFIX}/jobs/{id}")
}

/// A link to job `id`'s page, `#ID`.
pub(super) fn job_link(id: JobId) -> Markup {
    html! {
        a class="job-link" href=(job_url(id)) { "#" (id) }
    }
}

/// The priorities, as the filter and the run form offer them.
pub(super) const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// `<option>`s of `values`, `selected` marked, after one of value `""` labelled `any` if given.
pub(super) fn options<'a>(
    values: impl IntoIterator<Item = &'a str>,
    selected: Option<&str>,
    any: Option<&str>,
) -> Markup {
    html! {
        @if let Some(any) = any {
            option value="" { (any) }
        }
        @for value in values {
            option value=(text(value)) selected[selected == Some(value)] { (text(value)) }
        }
    }
}

/// A table's `<thead>` of one row of `columns`.
pub(super) fn head(columns: &[&str]) -> Markup {
    html! {
        thead { tr { @for column in columns { th { (column) } } } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_hidden_characters_shown() {
        let shown = |s: Shown<'_>| s.render().into_string();
        assert_eq!(
            shown(text(r#"<script>alert('x' & "y")</script>"#)),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(shown(text("plain text, é ✓")), "plain text, é ✓");
        assert_eq!(shown(text("\u{202E}<exe>.txt")), r"\u{202E}&lt;exe&gt;.txt");
        assert_eq!(
            shown(json("{\"f\": \"\u{202E}\"}")),
            r"{&quot;f&quot;: &quot;\u202E&quot;}"
        );
        assert_eq!(shown(text("'")), "&#39;");
        assert_eq!(shown(text("")), "");
    }

    #[test]
    fn a_short_hash_takes_characters_not_bytes() {
        assert_eq!(short_hash(&"ab".repeat(32)), "abababababababab");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash(&"é".repeat(20)), "é".repeat(16));
        assert_eq!(short_hash(""), "");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(took(850), "850 ms");
        assert_eq!(took(4250), "4.25 s");
        assert_eq!(took(187_000), "3m 07s");
        assert_eq!(clock(12_900), "12 s");
        assert_eq!(clock(187_000), "3m 07s");
        assert_eq!(clock(7_500_000), "2h 05m");
        assert_eq!(clock(-5), "0 s");
    }

    #[test]
    fn a_badge_and_options_keep_their_markup() {
        assert_eq!(
            state_badge(JobState::Failed, Some("job-state")).into_string(),
            r#"<span id="job-state" class="state state-failed">failed</span>"#
        );
        assert_eq!(
            state_badge(JobState::Queued, None).into_string(),
            r#"<span class="state state-queued">queued</span>"#
        );
        assert_eq!(
            options(PRIORITIES, Some("low"), Some("any")).into_string(),
            r#"<option value="">any</option><option value="high">high</option><option value="normal">normal</option><option value="low" selected>low</option>"#
        );
    }
}
