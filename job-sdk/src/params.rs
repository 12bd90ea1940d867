//! Maps a job's JSON params onto a method's typed params.
//!
//! Params arrive named (a JSON object) or positional (a JSON array). When the method's params
//! type is a struct, positional values are matched to its fields in declaration order, so both
//! forms end up as one object and every error names the param it concerns.

use serde::{
    de::{self, DeserializeOwned, Visitor},
    forward_to_deserialize_any, Deserialize,
};
use serde_json::{Map, Value};

/// A params type for methods that take no params: accepts `null`, `{}` and `[]`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Turns `params_json` into `P`, with one error message that names what was wrong.
pub(crate) fn decode<P: DeserializeOwned>(params_json: &str) -> Result<P, String> {
    let value: Value =
        serde_json::from_str(params_json).map_err(|e| format!("params are not valid JSON: {e}"))?;
    let value = match (value, struct_fields::<P>()) {
        (Value::Null, Some(_)) => Value::Object(Map::new()),
        (Value::Array(values), Some(fields)) => Value::Object(name_positional(values, fields)?),
        (value, _) => value,
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("param `{path}`: {}", e.into_inner())
        }
    })
}

fn name_positional(values: Vec<Value>, fields: &[&str]) -> Result<Map<String, Value>, String> {
    if values.len() > fields.len() {
        let takes = match fields.len() {
            0 => "no params".to_owned(),
            n => format!("{n} ({})", fields.join(", ")),
        };
        return Err(format!(
            "too many positional params: the method takes {takes}, got {}",
            values.len()
        ));
    }
    Ok(fields.iter().map(|f| (*f).to_owned()).zip(values).collect())
}

/// The field names of `P` when it deserializes as a struct, found by asking its `Deserialize`
/// impl which fields it would request.
fn struct_fields<P: DeserializeOwned>() -> Option<&'static [&'static str]> {
    match P::deserialize(FieldProbe) {
        Err(Probe::Struct(fields)) => Some(fields),
        _ => None,
    }
}

struct FieldProbe;

#[derive(Debug)]
enum Probe {
    Struct(&'static [&'static str]),
    Other,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Probe::Other
    }
}

impl<'de> de::Deserializer<'de> for FieldProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probe> {
        Err(Probe::Struct(fields))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Send {
        user_id: u64,
        message: String,
    }

    #[test]
    fn named_params_map_onto_fields() {
        let p: Send = decode(r#"{"user_id":7,"message":"hi"}"#).expect("decodes");
        assert_eq!(
            p,
            Send {
                user_id: 7,
                message: "hi".into()
            }
        );
    }

    #[test]
    fn positional_params_map_onto_fields_in_order() {
        let p: Send = decode(r#"[7,"hi"]"#).expect("decodes");
        assert_eq!(
            p,
            Send {
                user_id: 7,
                message: "hi".into()
            }
        );
    }

    #[test]
    fn missing_param_is_named() {
        let err = decode::<Send>(r#"[7]"#).expect_err("message is missing");
        assert_eq!(err, "missing field `message`");
    }

    #[test]
    fn ill_typed_param_is_named() {
        let err = decode::<Send>(r#"{"user_id":"abc","message":"hi"}"#).expect_err("bad type");
        assert!(
            err.starts_with("param `user_id`: invalid type: string \"abc\""),
            "{err}"
        );
    }

    #[test]
    fn too_many_positional_params_lists_the_fields() {
        let err = decode::<Send>(r#"[1,"a",3]"#).expect_err("too many");
        assert_eq!(
            err,
            "too many positional params: the method takes 2 (user_id, message), got 3"
        );
    }

    #[test]
    fn no_params_accepts_null_empty_object_and_empty_array() {
        for json in ["null", "{}", "[]"] {
            decode::<NoParams>(json).expect(json);
        }
        let err = decode::<NoParams>("[1]").expect_err("takes none");
        assert_eq!(
            err,
            "too many positional params: the method takes no params, got 1"
        );
        assert!(decode::<NoParams>(r#"{"x":1}"#).is_err());
    }

    #[test]
    fn non_struct_params_pass_through() {
        let p: Vec<u32> = decode("[1,2]").expect("decodes");
        assert_eq!(p, vec![1, 2]);
        let v: Value = decode(r#"{"a":1}"#).expect("decodes");
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn invalid_json_is_reported() {
        let err = decode::<Send>("{").expect_err("not json");
        assert!(err.starts_with("params are not valid JSON"), "{err}");
    }
}
