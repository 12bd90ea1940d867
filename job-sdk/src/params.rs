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

/// One param a method declares: the host checks a job's params against these when the job is
/// requested, with [`check_params`], and the worker again before the method runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Param {
    /// Its name (a field of the method's params struct, as serde names it).
    pub name: String,
    /// Whether a job must give it (not an `Option`, no `#[serde(default)]`).
    pub required: bool,
}

/// Checks `params` (an object of named params, an array of positional ones, or `null`)
/// against the params a method `declared`, with the messages serde gives when it maps them
/// onto the params struct: too many positional params, an unknown name (which serde would
/// silently drop from a struct that does not deny unknown fields: a misspelt optional param
/// would go unnoticed), a required one missing. The first problem found is the one reported.
/// Types are not checked here; the method's own decoding checks them.
pub fn check_params(declared: &[Param], params: &Value) -> Result<(), String> {
    let names: Vec<&str> = declared.iter().map(|p| p.name.as_str()).collect();
    let given: Vec<&str> = match params {
        Value::Null => Vec::new(),
        Value::Array(values) => {
            if values.len() > names.len() {
                return Err(too_many(&names, values.len()));
            }
            names[..values.len()].to_vec()
        }
        Value::Object(map) => {
            if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
                return Err(unknown_field(unknown, &names));
            }
            map.keys().map(String::as_str).collect()
        }
        // Not params a struct takes: its own decoding says why.
        _ => return Ok(()),
    };
    match declared
        .iter()
        .find(|p| p.required && !given.contains(&p.name.as_str()))
    {
        Some(missing) => Err(format!("missing field `{}`", missing.name)),
        None => Ok(()),
    }
}

/// serde's message for a field not in `names`.
fn unknown_field(field: &str, names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{field}`, there are no fields"),
        [one] => format!("unknown field `{field}`, expected {one}"),
        [a, b] => format!("unknown field `{field}`, expected {a} or {b}"),
        all => format!(
            "unknown field `{field}`, expected one of {}",
            all.join(", ")
        ),
    }
}

/// The message for `got` positional params given to a method taking `names`.
fn too_many(names: &[&str], got: usize) -> String {
    let takes = match names.len() {
        0 => "no params".to_owned(),
        n => format!("{n} ({})", names.join(", ")),
    };
    format!("too many positional params: the method takes {takes}, got {got}")
}

/// Turns `params_json` into `P`, with one error message that names what was wrong. When the
/// method `declared` its params ([`declared`]), they are checked first, as the host checks
/// them ([`check_params`]).
pub(crate) fn decode<P: DeserializeOwned>(
    params_json: &str,
    declared: Option<&[Param]>,
) -> Result<P, String> {
    let value: Value =
        serde_json::from_str(params_json).map_err(|e| format!("params are not valid JSON: {e}"))?;
    if let Some(declared) = declared {
        check_params(declared, &value)?;
    }
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
        return Err(too_many(fields, values.len()));
    }
    Ok(fields.iter().map(|f| (*f).to_owned()).zip(values).collect())
}

/// The params `P` declares, when it deserializes as a struct whose fields can be told apart:
/// each field, and whether it is required. Found by asking `P`'s `Deserialize` impl: first
/// which fields it requests, then whether it accepts a map of every field but one (with
/// placeholder values: zero, empty, the first variant). `None` when it is no struct, or when
/// even the map of every field is refused (a field type with checks of its own): then nothing
/// is declared, and only decoding checks the params.
pub(crate) fn declared<P: DeserializeOwned>() -> Option<Vec<Param>> {
    let fields = struct_fields::<P>()?;
    P::deserialize(StructProbe { omit: None }).ok()?;
    fields
        .iter()
        .map(|field| {
            let required = match P::deserialize(StructProbe { omit: Some(field) }) {
                Ok(_) => false,
                Err(Probe::Missing(missing)) if missing == *field => true,
                Err(_) => return None,
            };
            Some(Param {
                name: (*field).to_owned(),
                required,
            })
        })
        .collect()
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
    Missing(&'static str),
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

    fn missing_field(field: &'static str) -> Self {
        Probe::Missing(field)
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

/// A struct given as a map of every field requested but `omit`, each with a placeholder.
struct StructProbe {
    omit: Option<&'static str>,
}

impl<'de> de::Deserializer<'de> for StructProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Probe> {
        visitor.visit_map(Fields::new(fields, self.omit, 0))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// How deep placeholders nest structs in structs before the probe gives up.
const PROBE_DEPTH: usize = 8;

/// The fields of a struct, each with a [`Placeholder`] value.
struct Fields {
    fields: std::vec::IntoIter<&'static str>,
    depth: usize,
}

impl Fields {
    fn new(fields: &'static [&'static str], omit: Option<&str>, depth: usize) -> Self {
        let fields: Vec<&'static str> = fields
            .iter()
            .copied()
            .filter(|f| Some(*f) != omit)
            .collect();
        Self {
            fields: fields.into_iter(),
            depth,
        }
    }
}

impl<'de> de::MapAccess<'de> for Fields {
    type Error = Probe;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Probe> {
        match self.fields.next() {
            Some(field) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Probe> {
        seed.deserialize(Placeholder(self.depth))
    }
}

/// `count` placeholders in a row: a tuple's elements.
struct Elements {
    count: usize,
    depth: usize,
}

impl<'de> de::SeqAccess<'de> for Elements {
    type Error = Probe;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Probe> {
        if self.count == 0 {
            return Ok(None);
        }
        self.count -= 1;
        seed.deserialize(Placeholder(self.depth)).map(Some)
    }
}

/// The plainest value of whatever type asks for one: `false`, zero, `""`, nothing, an empty
/// sequence or map, a struct of placeholders, an enum's first variant. At the given depth.
struct Placeholder(usize);

impl<'de> de::Deserializer<'de> for Placeholder {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_unit()
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_bool(false)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_i64(0)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_i128(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_u64(0)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_u128(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_char('a')
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_borrowed_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_borrowed_str("")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_borrowed_bytes(&[])
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_borrowed_bytes(&[])
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_none()
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Probe> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Probe> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_seq(Elements {
            count: 0,
            depth: self.0,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_seq(Elements {
            count: len,
            depth: self.0,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Probe> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_map(Fields::new(&[], None, self.0))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Probe> {
        if self.0 >= PROBE_DEPTH {
            return Err(Probe::Other);
        }
        visitor.visit_map(Fields::new(fields, None, self.0 + 1))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Probe> {
        match variants.first() {
            Some(variant) => visitor.visit_enum(Variant {
                name: variant,
                depth: self.0,
            }),
            None => Err(Probe::Other),
        }
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_borrowed_str("")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_unit()
    }
}

/// An enum's first variant, with placeholder contents.
struct Variant {
    name: &'static str,
    depth: usize,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = Probe;
    type Variant = Self;

    fn variant_seed<V: de::DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Probe> {
        let name = seed.deserialize(de::value::BorrowedStrDeserializer::new(self.name))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant {
    type Error = Probe;

    fn unit_variant(self) -> Result<(), Probe> {
        Ok(())
    }
    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Probe> {
        seed.deserialize(Placeholder(self.depth))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Probe> {
        visitor.visit_seq(Elements {
            count: len,
            depth: self.depth,
        })
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Probe> {
        de::Deserializer::deserialize_struct(Placeholder(self.depth), "", fields, visitor)
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

    /// Decodes as a method's handler does: with the params `P` declares.
    fn decoded<P: DeserializeOwned>(json: &str) -> Result<P, String> {
        decode::<P>(json, declared::<P>().as_deref())
    }

    fn param(name: &str, required: bool) -> Param {
        Param {
            name: name.to_owned(),
            required,
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Channel {
        Mail,
        Sms { number: String },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        id: u32,
        tags: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Welcome {
        user_id: u64,
        email: Option<String>,
        #[serde(default)]
        name: String,
        #[serde(rename = "type")]
        kind: Channel,
        inner: Inner,
        pair: (u8, bool),
        raw: Value,
    }

    #[test]
    fn a_params_struct_declares_its_fields_and_which_are_required() {
        assert_eq!(
            declared::<Welcome>().expect("declared"),
            vec![
                param("user_id", true),
                param("email", false),
                param("name", false),
                param("type", true),
                param("inner", true),
                param("pair", true),
                param("raw", true),
            ]
        );
        let welcome: Welcome = decoded(
            r#"{"user_id":1,"type":{"Sms":{"number":"5"}},"inner":{"id":2,"tags":[]},"pair":[3,true],"raw":null}"#,
        )
        .expect("decodes");
        assert_eq!(
            welcome,
            Welcome {
                user_id: 1,
                email: None,
                name: String::new(),
                kind: Channel::Sms { number: "5".into() },
                inner: Inner {
                    id: 2,
                    tags: vec![]
                },
                pair: (3, true),
                raw: Value::Null,
            }
        );
        assert_ne!(welcome.kind, Channel::Mail);
        assert_eq!(declared::<NoParams>(), Some(vec![]));
        assert_eq!(declared::<Value>(), None, "not a struct: nothing declared");
        assert_eq!(declared::<Vec<u32>>(), None);
    }

    #[test]
    fn unknown_missing_and_surplus_params_get_serde_s_messages() {
        let declared = declared::<Send>().unwrap();
        let check = |json: &str| check_params(&declared, &serde_json::from_str(json).unwrap());
        assert_eq!(check(r#"{"user_id":1,"message":"m"}"#), Ok(()));
        assert_eq!(check(r#"[1,"m"]"#), Ok(()));
        assert_eq!(
            check(r#"{"usr_id":1,"message":"m"}"#),
            Err("unknown field `usr_id`, expected `user_id` or `message`".into())
        );
        assert_eq!(
            check(r#"{"user_id":1}"#),
            Err("missing field `message`".into())
        );
        assert_eq!(check("null"), Err("missing field `user_id`".into()));
        assert_eq!(check("[1]"), Err("missing field `message`".into()));
        assert_eq!(
            check(r#"[1,"m",3]"#),
            Err("too many positional params: the method takes 2 (user_id, message), got 3".into())
        );
        // What the worker says is what the host said.
        for json in [
            r#"{"usr_id":1,"message":"m"}"#,
            r#"{"user_id":1}"#,
            "[1]",
            r#"[1,"m",3]"#,
        ] {
            assert_eq!(decoded::<Send>(json).map(|_| ()), check(json), "{json}");
        }
    }

    #[test]
    fn named_params_map_onto_fields() {
        let p: Send = decoded(r#"{"user_id":7,"message":"hi"}"#).expect("decodes");
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
        let p: Send = decoded(r#"[7,"hi"]"#).expect("decodes");
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
        let err = decoded::<Send>(r#"[7]"#).expect_err("message is missing");
        assert_eq!(err, "missing field `message`");
    }

    #[test]
    fn ill_typed_param_is_named() {
        let err = decoded::<Send>(r#"{"user_id":"abc","message":"hi"}"#).expect_err("bad type");
        assert!(
            err.starts_with("param `user_id`: invalid type: string \"abc\""),
            "{err}"
        );
    }

    #[test]
    fn too_many_positional_params_lists_the_fields() {
        let err = decoded::<Send>(r#"[1,"a",3]"#).expect_err("too many");
        assert_eq!(
            err,
            "too many positional params: the method takes 2 (user_id, message), got 3"
        );
    }

    #[test]
    fn no_params_accepts_null_empty_object_and_empty_array() {
        for json in ["null", "{}", "[]"] {
            decoded::<NoParams>(json).expect(json);
        }
        let err = decoded::<NoParams>("[1]").expect_err("takes none");
        assert_eq!(
            err,
            "too many positional params: the method takes no params, got 1"
        );
        assert!(decoded::<NoParams>(r#"{"x":1}"#).is_err());
    }

    #[test]
    fn non_struct_params_pass_through() {
        let p: Vec<u32> = decoded("[1,2]").expect("decodes");
        assert_eq!(p, vec![1, 2]);
        let v: Value = decoded(r#"{"a":1}"#).expect("decodes");
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn invalid_json_is_reported() {
        let err = decoded::<Send>("{").expect_err("not json");
        assert!(err.starts_with("params are not valid JSON"), "{err}");
    }
}
