//! The spec's line format: [`SpecFormatLayer`] renders each `tracing` event as one line of
//! `[time] env.LEVEL: message {context}` and writes it to the main log (and WARNING and up to
//! the errors log).

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex},
};

use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

use super::{
    file::{lock, report, shared, LogFile},
    render, LogOpenError, ERRORS_FILE, LOG_FILE,
};
use crate::store::now_millis;

/// Renders events as spec-format lines into the two log files.
pub struct SpecFormatLayer {
    env: String,
    max_level: Level,
    mirror_to_stderr: bool,
    all: Arc<Mutex<LogFile>>,
    errors: Arc<Mutex<LogFile>>,
}

impl SpecFormatLayer {
    /// Opens (creating) both log files in `log_dir` for environment `env`.
    pub fn open(log_dir: &Path, env: &str) -> Result<Self, LogOpenError> {
        Ok(Self {
            env: env.to_owned(),
            max_level: if env == "production" {
                Level::INFO
            } else {
                Level::DEBUG
            },
            mirror_to_stderr: env == "local",
            all: shared(log_dir.join(LOG_FILE), env)?,
            errors: shared(log_dir.join(ERRORS_FILE), env)?,
        })
    }

    /// Installs this layer as the process's global subscriber.
    pub fn install(self) {
        // A second install (tests calling twice) keeps the first; that is fine.
        let _ = tracing_subscriber::registry().with(self).try_init();
    }

    /// This layer as a dispatch of its own, for a library that must log the job lines
    /// whatever subscriber its application installed (see `tracing::dispatcher::with_default`).
    pub fn into_dispatch(self) -> tracing::Dispatch {
        tracing::Dispatch::new(tracing_subscriber::registry().with(self))
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    context: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "context" => self.context = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "context" => self.context = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for SpecFormatLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > self.max_level {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = render(
            &self.env,
            &level,
            &fields.message,
            fields.context.as_deref(),
        );
        let now = now_millis();
        report(lock(&self.all).write(line.as_bytes(), now));
        if level <= Level::WARN {
            report(lock(&self.errors).write(line.as_bytes(), now));
        }
        if self.mirror_to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::joblog::context;
    use serde_json::{json, Value};
    #[test]
    fn lines_follow_the_spec_format() {
        let context = context([
            ("params", json!({"user_id": 123})),
            ("status", json!("running")),
        ]);
        let line = render(
            "local",
            &Level::INFO,
            r"Job started: App\Jobs\SendWelcomeEmail@handle",
            Some(&context),
        );
        let (stamp, rest) = line.split_at(22);
        assert!(stamp.starts_with('[') && stamp.ends_with("] "), "{stamp:?}");
        chrono::NaiveDateTime::parse_from_str(&stamp[1..20], "%Y-%m-%d %H:%M:%S")
            .expect("timestamp in the spec's format");
        assert_eq!(
            rest,
            "local.INFO: Job started: App\\Jobs\\SendWelcomeEmail@handle {\"params\":{\"user_id\":123},\"status\":\"running\"}\n"
        );
    }

    #[test]
    fn hidden_characters_are_escaped_and_the_context_stays_exact_json() {
        let params = json!({"file": "\u{202E}exe.txt\u{200B}"});
        let context = context([("params", params.clone())]);
        let line = render("local", &Level::INFO, "Job x\u{2066}: A@b", Some(&context));
        assert!(
            line.ends_with(
                "local.INFO: Job x\\u{2066}: A@b {\"params\":{\"file\":\"\\u202Eexe.txt\\u200B\"}}\n"
            ),
            "{line}"
        );
        let json = &line[line.find(" {\"").unwrap() + 1..];
        let back: Value = serde_json::from_str(json).unwrap();
        assert_eq!(back["params"], params);
    }

    #[test]
    fn warnings_use_the_spec_level_name_and_sorted_keys() {
        let context = context([
            ("status", json!("failed")),
            ("error", json!("boom")),
            ("params", json!({})),
        ]);
        let line = render("production", &Level::WARN, "x", Some(&context));
        assert!(line.ends_with("] production.WARNING: x {\"error\":\"boom\",\"params\":{},\"status\":\"failed\"}\n"), "{line}");
    }
}
