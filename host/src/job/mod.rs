//! What a job is before it runs: class, method, params and its policy (retries, delay,
//! priority, timeout), the parsing of params given on the command line, and the bounds every
//! one of those values is checked against wherever it enters (the command line, the Rust API,
//! the dashboard's API and forms, the settings file): [`JobSpec::validate`] and the constants
//! below are the one place they are defined (`docs/limits.md` lists them). [`outcome`] is how an
//! attempt of a job can end, in the job's own terms, for the runner to decide and the queue to
//! act on.

pub mod outcome;

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most retries a job may ask for.
pub const MAX_RETRIES: u32 = 1_000;

/// The longest `delay` or `retry_delay`: ten years (of 365 days).
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The shortest timeout: one millisecond, the store's unit. A timeout is kept in whole
/// milliseconds, rounded down, so anything shorter would be stored as none at all.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest timeout: seven days. An attempt that needs longer should report progress and
/// be split into jobs.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most `limits.max_params_bytes` may be: 16 MiB.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024 * 1024;

/// The deepest `limits.max_params_depth` may be. The worker's request wraps the params in one
/// more level and `jobhost show --json` in two; JSON readers (serde_json's among them) refuse
/// input nested 128 levels deep, so the params stay well below that.
pub const MAX_PARAMS_DEPTH: usize = 100;

/// The deepest result a job may return (arrays and objects nested in each other), for the
/// same reason as [`MAX_PARAMS_DEPTH`]: its report and `jobhost show --json` wrap it.
pub const MAX_RESULT_DEPTH: usize = 100;

/// The largest result a job may return, as JSON: half the largest report the host reads
/// ([`crate::shared::files::MAX_REPORT_BYTES`]), whose escaping may double it.
pub const MAX_RESULT_BYTES: usize = (crate::shared::files::MAX_REPORT_BYTES / 2) as usize;

/// The most attempts a job may have in all, manual retries renewing its budget included: a
/// retry that would allow more is refused.
pub const MAX_ATTEMPTS: u32 = 1_000_000;

/// A value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} is out of range: allowed {allowed}")]
pub struct OutOfRange {
    /// The field, as the caller names it: `retries`, `timeout`, `limits.max_params_depth`, ...
    pub field: &'static str,
    /// The value given, with its unit.
    pub value: String,
    /// The allowed range, with its unit.
    pub allowed: String,
}

/// Checks a number of retries against 0..=[`MAX_RETRIES`].
pub fn check_retries(field: &'static str, retries: u32) -> Result<u32, OutOfRange> {
    check_count(field, retries, 0, MAX_RETRIES)
}

/// A number of retries as given in text or JSON, any whole number, checked against
/// 0..=[`MAX_RETRIES`]: a count too large even for the type is refused with the same range.
pub fn retries_from(field: &'static str, retries: i128) -> Result<u32, OutOfRange> {
    check_count(field, retries, 0, i128::from(MAX_RETRIES)).map(|n| n as u32)
}

/// Checks a count (`slots`, a limit in bytes or levels) against `min..=max`.
pub fn check_count<T: PartialOrd + fmt::Display>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, OutOfRange> {
    if min <= value && value <= max {
        Ok(value)
    } else {
        Err(OutOfRange {
            field,
            value: value.to_string(),
            allowed: format!("{min} to {max}"),
        })
    }
}

/// Checks a duration against `min..=max`; a timeout's minimum applies after rounding down to
/// whole milliseconds, as it is stored.
pub fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, OutOfRange> {
    let stored = Duration::from_millis(u64::try_from(value.as_millis()).unwrap_or(u64::MAX));
    if stored >= min && value <= max {
        Ok(value)
    } else {
        Err(OutOfRange {
            field,
            value: format!("{} s", value.as_secs_f64()),
            allowed: format!("{} s to {}", min.as_secs_f64(), seconds_and_days(max)),
        })
    }
}

/// `604800 s (7 days)`.
fn seconds_and_days(d: Duration) -> String {
    let secs = d.as_secs();
    let days = secs / 86_400;
    if days > 0 && secs.is_multiple_of(86_400) {
        format!("{secs} s ({days} days)")
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// Checks a delay (`delay`, `retry_delay`) against 0..=[`MAX_DELAY`].
pub fn check_delay(field: &'static str, delay: Duration) -> Result<Duration, OutOfRange> {
    check_duration(field, delay, Duration::ZERO, MAX_DELAY)
}

/// Checks a timeout against [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`].
pub fn check_timeout(field: &'static str, timeout: Duration) -> Result<Duration, OutOfRange> {
    check_duration(field, timeout, MIN_TIMEOUT, MAX_TIMEOUT)
}

/// How deeply arrays and objects nest in `value` (a scalar is 0, `[]` 1, `[[1]]` 2), counted
/// without recursion and no further than `limit + 1`: enough to say it is too deep.
pub fn json_depth(value: &Value, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > limit {
            break;
        }
        stack.extend(children.map(|child| (child, depth)));
    }
    deepest
}

/// How deeply arrays and objects nest in the JSON text `text`, as [`json_depth`] counts, read
/// without parsing and no further than `limit + 1`: a JSON parser refuses to nest deeper than
/// its recursion limit, so this is how to tell "too deep" from "not JSON".
pub fn json_text_depth(text: &str, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A job's priority. Higher priority jobs run first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs after everything else.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Runs before everything else.
    High,
}

impl Priority {
    /// Its name: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ParamsError;

    fn from_str(s: &str) -> Result<Self, ParamsError> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(ParamsError::Priority(other.to_owned())),
        }
    }
}

/// Why params or job options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// `key=value` and bare values were mixed.
    #[error("params mix named (key=value) and positional values; use one form or --params-json")]
    Mixed,
    /// `--params-json` and PARAM arguments were both given.
    #[error("give params either as PARAM arguments or with --params-json, not both")]
    Both,
    /// A `key=value` with an unusable key.
    #[error("malformed param {0:?}: the name before `=` must be letters, digits and `_` (use --params-json for other names)")]
    MalformedName(String),
    /// A key given twice.
    #[error("param {0:?} is given twice")]
    Duplicate(String),
    /// `--params-json` is not valid JSON.
    #[error("--params-json is not valid JSON: {0}")]
    InvalidJson(String),
    /// `--params-json` is JSON but neither an object nor an array.
    #[error(
        "--params-json must be a JSON object (named params) or array (positional params), got {0}"
    )]
    NotObjectOrArray(&'static str),
    /// The params are larger than the limit.
    #[error("params are {size} bytes as JSON, over the limit of {limit} bytes (limits.max_params_bytes)")]
    TooLarge {
        /// Their size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The params nest deeper than the limit.
    #[error("params nest more than {limit} levels deep (limits.max_params_depth)")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// A param could not be turned into JSON.
    #[error("{0}")]
    Unserializable(String),
    /// The params do not fit the params the method declares: the message the worker would
    /// give.
    #[error("invalid params for {job}: {message}")]
    DoNotFit {
        /// `Class@method`.
        job: String,
        /// What does not fit, as the worker would say it.
        message: String,
    },
    /// An option outside its allowed range.
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    /// An unknown priority.
    #[error("unknown priority {0:?}: use high, normal or low")]
    Priority(String),
    /// A class or method name that cannot be one.
    #[error("{what} {name:?} is not a valid name")]
    Name {
        /// `class` or `method`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// A job as requested, before any checks against the allowlist or the plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Fully qualified class name.
    pub class: String,
    /// Method name.
    pub method: String,
    /// Params: an object (named), an array (positional), or null.
    pub params: Value,
    /// Retries after the first failed attempt.
    pub retries: u32,
    /// Wait between attempts.
    pub retry_delay: Duration,
    /// Priority.
    pub priority: Priority,
    /// Wait before the first attempt.
    pub delay: Duration,
    /// How long one attempt may run.
    pub timeout: Duration,
}

/// How large and how deep a job's params may be (`limits.max_params_bytes` and
/// `limits.max_params_depth` in the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamsLimits {
    /// The most bytes the params may take as JSON.
    pub max_bytes: usize,
    /// The deepest they may nest.
    pub max_depth: usize,
}

impl Default for ParamsLimits {
    /// 64 KiB, 32 levels.
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 32,
        }
    }
}

impl JobSpec {
    /// `Class@method`, as the logs name a job.
    pub fn name(&self) -> String {
        format!("{}@{}", self.class, self.method)
    }

    /// Checks the parts that need no outside knowledge: names, every option against its
    /// bound, and the params' depth and size against `limits`.
    pub fn validate(&self, limits: &ParamsLimits) -> Result<(), ParamsError> {
        check_name("class", &self.class, true)?;
        check_name("method", &self.method, false)?;
        check_retries("retries", self.retries)?;
        check_delay("retry_delay", self.retry_delay)?;
        check_delay("delay", self.delay)?;
        check_timeout("timeout", self.timeout)?;
        // Depth first: measuring the size of something nested too deep would recurse as deep.
        if json_depth(&self.params, limits.max_depth) > limits.max_depth {
            return Err(ParamsError::TooDeep {
                limit: limits.max_depth,
            });
        }
        let size = self.params.to_string().len();
        if size > limits.max_bytes {
            return Err(ParamsError::TooLarge {
                size,
                limit: limits.max_bytes,
            });
        }
        match self.params {
            Value::Object(_) | Value::Array(_) | Value::Null => Ok(()),
            ref other => Err(ParamsError::NotObjectOrArray(json_kind(other))),
        }
    }
}

fn check_name(what: &'static str, name: &str, is_class: bool) -> Result<(), ParamsError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || (is_class && c == '\\'));
    if ok {
        Ok(())
    } else {
        Err(ParamsError::Name {
            what,
            name: name.to_owned(),
        })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses command-line params: `key=value` items are named, bare items positional. A value is
/// a JSON scalar when it parses as one (`123`, `true`, `null`, `"quoted"`), else a string.
pub fn parse_cli_params(items: &[String], params_json: Option<&str>) -> Result<Value, ParamsError> {
    if let Some(json) = params_json {
        if !items.is_empty() {
            return Err(ParamsError::Both);
        }
        let value: Value =
            serde_json::from_str(json).map_err(|e| ParamsError::InvalidJson(e.to_string()))?;
        return match value {
            Value::Object(_) | Value::Array(_) => Ok(value),
            other => Err(ParamsError::NotObjectOrArray(json_kind(&other))),
        };
    }
    let mut named = Map::new();
    let mut positional = Vec::new();
    for item in items {
        match item.split_once('=') {
            Some((key, value)) => {
                let valid = key
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && key.chars().all(|c| c.is_alphanumeric() || c == '_');
                if !valid {
                    return Err(ParamsError::MalformedName(item.clone()));
                }
                if named.insert(key.to_owned(), scalar(value)).is_some() {
                    return Err(ParamsError::Duplicate(key.to_owned()));
                }
            }
            None => positional.push(scalar(item)),
        }
    }
    match (named.is_empty(), positional.is_empty()) {
        (false, false) => Err(ParamsError::Mixed),
        (true, false) => Ok(Value::Array(positional)),
        _ => Ok(Value::Object(named)),
    }
}

fn scalar(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn key_value_params_are_named_with_json_scalars() {
        let v = parse_cli_params(
            &items(&["user_id=123", "name=Ada", "vip=true", "note=\"42\""]),
            None,
        )
        .expect("parses");
        assert_eq!(
            v,
            json!({"user_id": 123, "name": "Ada", "vip": true, "note": "42"})
        );
    }

    #[test]
    fn bare_params_are_positional() {
        let v = parse_cli_params(&items(&["789", "Welcome!"]), None).expect("parses");
        assert_eq!(v, json!([789, "Welcome!"]));
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let v = parse_cli_params(&items(&["q=a=b"]), None).expect("parses");
        assert_eq!(v, json!({"q": "a=b"}));
    }

    #[test]
    fn no_params_is_an_empty_object() {
        assert_eq!(parse_cli_params(&[], None).expect("parses"), json!({}));
    }

    #[test]
    fn bad_params_are_refused_with_a_reason() {
        assert_eq!(
            parse_cli_params(&items(&["a=1", "2"]), None),
            Err(ParamsError::Mixed)
        );
        assert_eq!(
            parse_cli_params(&items(&["=5"]), None),
            Err(ParamsError::MalformedName("=5".into()))
        );
        assert_eq!(
            parse_cli_params(&items(&["user id=5"]), None),
            Err(ParamsError::MalformedName("user id=5".into()))
        );
        assert_eq!(
            parse_cli_params(&items(&["a=1", "a=2"]), None),
            Err(ParamsError::Duplicate("a".into()))
        );
        assert!(matches!(
            parse_cli_params(&[], Some("{")),
            Err(ParamsError::InvalidJson(_))
        ));
        assert_eq!(
            parse_cli_params(&[], Some("5")),
            Err(ParamsError::NotObjectOrArray("a number"))
        );
        assert_eq!(
            parse_cli_params(&items(&["a=1"]), Some("{}")),
            Err(ParamsError::Both)
        );
    }

    #[test]
    fn params_json_takes_objects_and_arrays() {
        assert_eq!(
            parse_cli_params(&[], Some(r#"{"a":[1]}"#)).expect("ok"),
            json!({"a": [1]})
        );
        assert_eq!(
            parse_cli_params(&[], Some("[1,2]")).expect("ok"),
            json!([1, 2])
        );
    }

    fn spec() -> JobSpec {
        JobSpec {
            class: "A".into(),
            method: "b".into(),
            params: json!({}),
            retries: 0,
            retry_delay: Duration::ZERO,
            priority: Priority::Normal,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        }
    }

    fn limits(max_bytes: usize, max_depth: usize) -> ParamsLimits {
        ParamsLimits {
            max_bytes,
            max_depth,
        }
    }

    #[test]
    fn oversized_params_are_refused() {
        let spec = JobSpec {
            params: json!({"blob": "x".repeat(100)}),
            ..spec()
        };
        assert!(matches!(
            spec.validate(&limits(50, 32)),
            Err(ParamsError::TooLarge { limit: 50, .. })
        ));
        spec.validate(&limits(1000, 32)).expect("fits");
    }

    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn params_nested_deeper_than_the_limit_are_refused() {
        assert_eq!(json_depth(&json!(1), 10), 0);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]}), 10), 4);
        assert_eq!(
            json_depth(&nested(127), 32),
            33,
            "counts no further than needed"
        );
        let at_limit = JobSpec {
            params: nested(32),
            ..spec()
        };
        at_limit
            .validate(&limits(1 << 20, 32))
            .expect("32 levels fit");
        for depth in [33, 126, 127, 500] {
            let deep = JobSpec {
                params: nested(depth),
                ..spec()
            };
            assert_eq!(
                deep.validate(&limits(1 << 20, 32)),
                Err(ParamsError::TooDeep { limit: 32 }),
                "{depth}"
            );
        }
    }

    #[test]
    fn the_depth_of_json_text_is_counted_outside_strings() {
        assert_eq!(json_text_depth("1", 10), 0);
        assert_eq!(json_text_depth(r#"{"a": [1, {"b": []}]}"#, 10), 4);
        assert_eq!(json_text_depth(r#"["[[[", "\"{{", {}]"#, 10), 2);
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert_eq!(json_text_depth(&deep, 100), 101);
        assert_eq!(
            json_depth(
                &serde_json::from_str(&nested(100).to_string()).unwrap(),
                100
            ),
            100
        );
    }

    #[test]
    fn every_option_is_checked_against_its_bound_naming_field_and_range() {
        let refused = |spec: JobSpec| match spec.validate(&ParamsLimits::default()) {
            Err(ParamsError::OutOfRange(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(JobSpec {
                retries: u32::MAX,
                ..spec()
            }),
            "retries 4294967295 is out of range: allowed 0 to 1000"
        );
        assert_eq!(
            refused(JobSpec {
                timeout: Duration::from_micros(400),
                ..spec()
            }),
            "timeout 0.0004 s is out of range: allowed 0.001 s to 604800 s (7 days)"
        );
        assert!(refused(JobSpec {
            timeout: Duration::from_nanos(1),
            ..spec()
        })
        .starts_with("timeout 0.000000001 s is out of range"));
        assert!(refused(JobSpec {
            timeout: MAX_TIMEOUT + Duration::from_millis(1),
            ..spec()
        })
        .starts_with("timeout 604800.001 s"));
        assert!(refused(JobSpec {
            delay: MAX_DELAY + Duration::from_secs(1),
            ..spec()
        })
        .starts_with("delay 315360001 s is out of range: allowed 0 s to 315360000 s (3650 days)"));
        assert!(refused(JobSpec {
            retry_delay: Duration::MAX,
            ..spec()
        })
        .starts_with("retry_delay "));
        JobSpec {
            retries: MAX_RETRIES,
            retry_delay: MAX_DELAY,
            delay: MAX_DELAY,
            timeout: MIN_TIMEOUT,
            ..spec()
        }
        .validate(&ParamsLimits::default())
        .expect("the bounds themselves are allowed");
        JobSpec {
            timeout: MAX_TIMEOUT,
            ..spec()
        }
        .validate(&ParamsLimits::default())
        .expect("the longest timeout is allowed");
    }

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
    }
}
