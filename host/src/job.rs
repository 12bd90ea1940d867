//! What a job is before it runs: class, method, params and its policy (retries, delay,
//! priority, timeout), and the parsing of params given on the command line.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// A param could not be turned into JSON.
    #[error("{0}")]
    Unserializable(String),
    /// A zero timeout.
    #[error("timeout must be more than 0 seconds")]
    ZeroTimeout,
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

impl JobSpec {
    /// `Class@method`, as the logs name a job.
    pub fn name(&self) -> String {
        format!("{}@{}", self.class, self.method)
    }

    /// Checks the parts that need no outside knowledge: names and params size.
    pub fn validate(&self, max_params_bytes: usize) -> Result<(), ParamsError> {
        check_name("class", &self.class, true)?;
        check_name("method", &self.method, false)?;
        let size = self.params.to_string().len();
        if size > max_params_bytes {
            return Err(ParamsError::TooLarge {
                size,
                limit: max_params_bytes,
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

    #[test]
    fn oversized_params_are_refused() {
        let spec = JobSpec {
            class: "A".into(),
            method: "b".into(),
            params: json!({"blob": "x".repeat(100)}),
            retries: 0,
            retry_delay: Duration::ZERO,
            priority: Priority::Normal,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            spec.validate(50),
            Err(ParamsError::TooLarge { limit: 50, .. })
        ));
        spec.validate(1000).expect("fits");
    }

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
    }
}
