//! Packer decodes configs with mapstructure's weak typing: `"22"` is a fine `ssh_port`,
//! `"true"` a fine bool, `5` a fine string. Interpolated values (`{{user `size`}}`) are
//! always strings, so templates rely on it. Top-level keys are coerced generically in
//! `validate.rs`; these helpers do it for fields of nested blocks.

use serde::de::{Deserializer, Error};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

fn to_i64<E: Error>(v: &Value) -> Result<Option<i64>, E> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| E::custom(format!("expected an integer, found {n}"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| E::custom(format!("expected an integer, found string {s:?}"))),
        other => Err(E::custom(format!("expected an integer, found {other}"))),
    }
}

fn to_bool<E: Error>(v: &Value) -> Result<Option<bool>, E> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => Ok(Some(n.as_f64() != Some(0.0))),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "1" | "t" | "true" => Ok(Some(true)),
            "0" | "f" | "false" => Ok(Some(false)),
            _ => Err(E::custom(format!(
                "expected a boolean (true or false), found string {s:?}"
            ))),
        },
        other => Err(E::custom(format!(
            "expected a boolean (true or false), found {other}"
        ))),
    }
}

fn to_string<E: Error>(v: &Value) -> Result<Option<String>, E> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(E::custom(format!("expected a string, found {other}"))),
    }
}

pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    to_i64(&Value::deserialize(d)?)
}

pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match to_i64::<D::Error>(&Value::deserialize(d)?)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected a non-negative integer, found {n}"))),
    }
}

pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(to_bool::<D::Error>(&Value::deserialize(d)?)?.unwrap_or(false))
}

pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    to_bool(&Value::deserialize(d)?)
}

pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    to_string(&Value::deserialize(d)?)
}

/// A list of strings; a single string counts as a one-element list (mapstructure does the same).
pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                to_string::<D::Error>(i).and_then(|s| {
                    s.ok_or_else(|| D::Error::custom("expected a string, found null"))
                })
            })
            .collect(),
        other => Ok(to_string::<D::Error>(&other)?.into_iter().collect()),
    }
}

/// A map of strings (tags, filters); numbers and bools become their text.
pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| to_string::<D::Error>(v).map(|s| (k.clone(), s.unwrap_or_default())))
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected an object of string values, found {other}"
        ))),
    }
}

/// Turn a value into what a field of the given JSON kind expects, the way mapstructure's
/// weak decoding would; `None` when no coercion applies.
pub fn coerce_candidates(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    match v {
        Value::String(s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<i64>() {
                out.push(Value::from(n));
            } else if let Ok(f) = t.parse::<f64>() {
                if f.is_finite() {
                    out.push(Value::from(f));
                }
            }
            if let Ok(Some(b)) = to_bool::<serde_json::Error>(v) {
                out.push(Value::Bool(b));
            }
            out.push(Value::Array(vec![v.clone()]));
        }
        Value::Number(n) => {
            out.push(Value::String(n.to_string()));
            out.push(Value::Bool(n.as_f64() != Some(0.0)));
            out.push(Value::Array(vec![Value::String(n.to_string())]));
        }
        Value::Bool(b) => {
            out.push(Value::String(b.to_string()));
            out.push(Value::from(*b as i64));
        }
        _ => {}
    }
    out
}
