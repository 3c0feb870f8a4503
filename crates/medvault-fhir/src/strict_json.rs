//! Strict JSON for request bodies: an object that names the same key twice is refused.
//!
//! `serde_json` keeps the last of duplicate keys. A gateway, filter or audit tool in front of the
//! node may keep the first, so `{"meta": {"security": [HIV]}, "meta": {}}` would look labelled to
//! one and unlabelled to the other. FHIR JSON forbids duplicate keys; so does this parser.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON, refusing duplicate keys in any object.
///
/// # Errors
/// The parse error; for a duplicate key its message says so (without the key's value).
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = BTreeSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(
                    "an object names the same key twice (FHIR JSON allows each key once)",
                ));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_anywhere_and_the_rest_parses_as_serde_json_does() {
        for bad in [
            r#"{"a":1,"a":2}"#,
            r#"{"meta":{"security":[{"code":"HIV"}]},"meta":{}}"#,
            r#"[{"x":{"y":1,"y":1}}]"#,
        ] {
            assert!(from_slice(bad.as_bytes()).is_err(), "{bad}");
        }
        for ok in [
            r#"{"a":1,"b":[1,2.5,-3,true,null,"s"],"c":{"a":1}}"#,
            r#""text""#,
            "12345678901234567890",
        ] {
            let want: Value = serde_json::from_str(ok).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(from_slice(ok.as_bytes()).ok(), Some(want), "{ok}");
        }
        assert!(from_slice(b"{} trailing").is_err());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(from_slice(deep.as_bytes()).is_err(), "recursion is limited");
    }
}
