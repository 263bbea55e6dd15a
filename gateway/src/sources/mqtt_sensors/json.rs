//! A sensor message's JSON, read without copying it: pure, no I/O.
//!
//! [`Json`] is `serde_json::Value` with its text borrowed from the payload: a string or a
//! key is a slice of the message unless it holds an escape (`\n`, `\u00e9`), and an object
//! is its members in order rather than a map. Reading a message then costs one allocation
//! per object or array instead of one per key and per text plus a map's nodes: at 20,000
//! messages a second, most of what the decoder spent.
//!
//! # Invariants
//! - It is built by serde_json's own parser through the same `deserialize_any` calls as
//!   `Value`, so it accepts and refuses exactly the documents `Value` does (syntax, numbers
//!   beyond `f64`, nesting deeper than 128, trailing characters) with the same errors.
//! - A key given twice means its last value ([`Json::get`]), as in `Value`, whose map keeps
//!   the last insert.
//! - Numbers are `serde_json::Number`s made as `Value` makes them.
//!
//! The tests check both against each other (`the_borrowed_document_is_what_serde_json_reads`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value, its text borrowed from the document where it can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// The members in the document's order, a repeated key included.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parse a whole document, as `serde_json::from_str::<Value>` would.
    pub fn parse(text: &'a str) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// A member of an object: the last one with this key, as `Value` keeps it.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // As Value: a float that is no Number (never from JSON text) is null.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// A key, borrowed unless it holds an escape (serde's own `Cow<str>` always copies).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::Value;

    /// What `Value` makes of the same document: members inserted in order, so a repeated
    /// key keeps its last value.
    fn to_value(json: &Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            Json::Object(members) => {
                let mut map = serde_json::Map::new();
                for (k, v) in members {
                    map.insert(k.to_string(), to_value(v));
                }
                Value::Object(map)
            }
        }
    }

    /// Both readings of one text: the same document, or the same error.
    fn same_as_serde_json(text: &str) {
        match (Json::parse(text), serde_json::from_str::<Value>(text)) {
            (Ok(json), Ok(value)) => assert_eq!(to_value(&json), value, "{text}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            (a, b) => panic!("{text}: {a:?} but serde_json: {b:?}"),
        }
    }

    #[test]
    fn text_and_keys_are_borrowed_unless_they_hold_an_escape() {
        let json = Json::parse(r#"{"plain":"a b","esc\u00e9":"line\nbreak"}"#).unwrap();
        let Json::Object(members) = &json else {
            panic!("{json:?}")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(members[0].1, Json::String(Cow::Borrowed("a b"))));
        assert_eq!(members[1].0, "escé");
        assert!(matches!(&members[1].1, Json::String(Cow::Owned(s)) if s == "line\nbreak"));
    }

    #[test]
    fn a_repeated_key_means_its_last_value() {
        let json = Json::parse(r#"{"a":1,"b":{"c":2},"a":{"x":true}}"#).unwrap();
        assert_eq!(json.get("a"), Some(&Json::parse(r#"{"x":true}"#).unwrap()));
        assert_eq!(json.get("nope"), None);
        assert_eq!(Json::Array(vec![]).get("a"), None);
    }

    #[test]
    fn the_borrowed_document_is_what_serde_json_reads() {
        for text in [
            r#"{"o":310,"n":12}"#,
            r#"{"a":-0,"b":1.5e3,"c":18446744073709551615,"d":-9223372036854775808}"#,
            r#"{"big":123456789012345678901234567890,"tiny":1e-400,"f":0.1}"#,
            r#"{"a":[1,[2,{"b":null}]],"t":true,"s":"\"\\\/\b\f\n\r\t\u0041\ud83d\ude00"}"#,
            r#"{"a":1,"a":2,"b":{"c":1},"b":[3]}"#,
            r#" { } "#,
            "[]",
            "7",
            r#""text""#,
            "null",
            r#"{"a":1e400}"#,
            r#"{"a":NaN}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"unterminated}"#,
            r#"{1:2}"#,
            "",
            &format!("{}{}", "[".repeat(200), "]".repeat(200)),
            &format!("{}1{}", r#"{"a":"#.repeat(127), "}".repeat(127)),
            &format!("{}1{}", r#"{"a":"#.repeat(128), "}".repeat(128)),
        ] {
            same_as_serde_json(text);
        }
    }

    proptest::proptest! {
        /// Any text: the same document or the same error as serde_json::Value.
        #[test]
        fn any_text_reads_as_serde_json_reads_it(text in "\\PC{0,64}") {
            same_as_serde_json(&text);
        }

        /// JSON-shaped text, with repeated keys, escapes, nesting and odd numbers.
        #[test]
        fn any_json_object_reads_as_serde_json_reads_it(
            text in "\\{(\"(a|b|\\\\u0061|c\\\\n)\":(-?[0-9]{1,25}(\\.[0-9]{1,5})?([eE][-+]?[0-9]{1,3})?|\"([^\"\\\\]|\\\\[nt\"\\\\/]|\\\\u00[0-9a-f]{2}){0,12}\"|true|false|null|\\[[0-9,]{0,8}\\]|\\{\"(a|c)\":[0-9]{1,3}\\}|\\[\\{\"c\":\"[0-9.eE+-]{0,8}\"\\}\\]),?){0,6}\\} ?"
        ) {
            same_as_serde_json(&text);
        }
    }
}
