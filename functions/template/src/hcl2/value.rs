//! HCL values as the front end evaluates them, and type constraints of `variable` blocks.
//!
//! A string may hold text that is only put in place later: a sensitive variable's
//! `{{user `name`}}` (revealed at the moment of use, see `template/secrets.rs`) or build
//! data's `{{ build `X` }}` (rendered by the steps). [`Text::later`] names those references,
//! so that a function which would transform the placeholder instead of the value refuses it.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(Text),
    /// HCL lists, tuples and sets.
    List(Vec<Value>),
    /// HCL maps and objects (keys in lexical order, as HCL iterates them).
    Map(BTreeMap<String, Value>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Text {
    pub s: String,
    /// References whose placeholder `s` holds (`var.password`, `build.SourceAMIName`).
    pub later: Vec<String>,
}

impl Text {
    pub fn plain(s: impl Into<String>) -> Text {
        Text {
            s: s.into(),
            later: Vec::new(),
        }
    }

    pub fn push(&mut self, other: &Text) {
        self.s.push_str(&other.s);
        for r in &other.later {
            if !self.later.contains(r) {
                self.later.push(r.clone());
            }
        }
    }
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(Text::plain(s))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// The first reference put in place later anywhere in the value.
    pub fn later(&self) -> Option<&str> {
        match self {
            Value::String(t) => t.later.first().map(String::as_str),
            Value::List(items) => items.iter().find_map(Value::later),
            Value::Map(m) => m.values().find_map(Value::later),
            _ => None,
        }
    }

    /// A primitive as text (HCL's automatic string conversion); `None` for null and
    /// collections.
    pub fn as_text(&self) -> Option<Text> {
        match self {
            Value::String(t) => Some(t.clone()),
            Value::Number(n) => Some(Text::plain(number_text(*n))),
            Value::Bool(b) => Some(Text::plain(b.to_string())),
            _ => None,
        }
    }

    /// The JSON the JSON template path takes: whole numbers as integers; `null` inside
    /// collections stays `null` (callers drop null attributes themselves).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => number_json(*n),
            Value::String(t) => J::String(t.s.clone()),
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    pub fn from_json(v: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
            J::String(s) => Value::str(s.clone()),
            J::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            J::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// How HCL prints a number: whole numbers without a fraction.
pub(crate) fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn number_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

impl fmt::Display for Value {
    /// Values as HCL writes them, for messages and `inspect` (strings unquoted at the top).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(t) => f.write_str(&t.s),
            other => f.write_str(&hcl_literal(other)),
        }
    }
}

/// A value as an HCL expression (strings quoted and escaped).
pub(crate) fn hcl_literal(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_text(*n),
        Value::String(t) => quote(&t.s),
        Value::List(items) => format!(
            "[{}]",
            items.iter().map(hcl_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{} = {}", quote_key(k), hcl_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An HCL quoted string: `"`, `\` and control characters escaped, and `${`/`%{` doubled so
/// that they stay literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An object key: bare when it is an identifier, quoted otherwise.
pub(crate) fn quote_key(k: &str) -> String {
    if is_identifier(k) {
        k.to_string()
    } else {
        quote(k)
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// A `variable` block's `type`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    /// Attribute types; `true` marks `optional(...)` ones.
    Object(BTreeMap<String, (Type, bool)>),
    Tuple(Vec<Type>),
}

impl Type {
    /// Whether -var and PKR_VAR_ values are taken as they are (a primitive type) rather
    /// than parsed as an HCL expression.
    pub fn is_primitive(&self) -> bool {
        matches!(self, Type::Any | Type::String | Type::Number | Type::Bool)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Any => f.write_str("any"),
            Type::String => f.write_str("string"),
            Type::Number => f.write_str("number"),
            Type::Bool => f.write_str("bool"),
            Type::List(t) => write!(f, "list({t})"),
            Type::Set(t) => write!(f, "set({t})"),
            Type::Map(t) => write!(f, "map({t})"),
            Type::Object(attrs) => {
                f.write_str("object({")?;
                for (i, (k, (t, optional))) in attrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if *optional {
                        write!(f, "{k} = optional({t})")?;
                    } else {
                        write!(f, "{k} = {t}")?;
                    }
                }
                f.write_str("})")
            }
            Type::Tuple(items) => {
                f.write_str("tuple([")?;
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str("])")
            }
        }
    }
}

/// Converts a value to a type as HCL does for variables: primitives convert to and from
/// strings, collections element by element. The error says what did not fit, where.
pub(crate) fn convert(v: Value, t: &Type) -> Result<Value, String> {
    convert_at(v, t, "")
}

fn convert_at(v: Value, t: &Type, at: &str) -> Result<Value, String> {
    let place = |msg: String| {
        if at.is_empty() {
            msg
        } else {
            format!("{at}: {msg}")
        }
    };
    if matches!(v, Value::Null) {
        return Ok(Value::Null);
    }
    match t {
        Type::Any => Ok(v),
        Type::String => match v.as_text() {
            Some(t) => Ok(Value::String(t)),
            None => Err(place(format!(
                "a string is required, found a {}",
                v.type_name()
            ))),
        },
        Type::Number => match &v {
            Value::Number(_) => Ok(v),
            Value::String(t) if t.later.is_empty() => {
                t.s.trim()
                    .parse::<f64>()
                    .map(Value::Number)
                    .map_err(|_| place(format!("a number is required, found {:?}", t.s)))
            }
            other => Err(place(format!(
                "a number is required, found a {}",
                other.type_name()
            ))),
        },
        Type::Bool => match &v {
            Value::Bool(_) => Ok(v),
            Value::String(t) if t.s == "true" => Ok(Value::Bool(true)),
            Value::String(t) if t.s == "false" => Ok(Value::Bool(false)),
            Value::String(t) => Err(place(format!(
                "a bool is required (true or false), found {:?}",
                t.s
            ))),
            other => Err(place(format!(
                "a bool is required, found a {}",
                other.type_name()
            ))),
        },
        Type::List(inner) | Type::Set(inner) => match v {
            Value::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let item = convert_at(item, inner, &format!("{at}[{i}]"))?;
                    if matches!(t, Type::Set(_)) && out.contains(&item) {
                        continue;
                    }
                    out.push(item);
                }
                Ok(Value::List(out))
            }
            other => Err(place(format!(
                "a {t} is required, found a {}",
                other.type_name()
            ))),
        },
        Type::Map(inner) => match v {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, item)| {
                    let item = convert_at(item, inner, &format!("{at}[{k:?}]"))?;
                    Ok((k, item))
                })
                .collect::<Result<_, String>>()
                .map(Value::Map),
            other => Err(place(format!(
                "a {t} is required, found a {}",
                other.type_name()
            ))),
        },
        Type::Object(attrs) => match v {
            Value::Map(mut m) => {
                let mut out = BTreeMap::new();
                for (k, (at_type, optional)) in attrs {
                    match m.remove(k) {
                        Some(item) => {
                            let inner_at = if at.is_empty() {
                                k.clone()
                            } else {
                                format!("{at}.{k}")
                            };
                            out.insert(k.clone(), convert_at(item, at_type, &inner_at)?);
                        }
                        None if *optional => {
                            out.insert(k.clone(), Value::Null);
                        }
                        None => return Err(place(format!("attribute `{k}` is required"))),
                    }
                }
                Ok(Value::Map(out))
            }
            other => Err(place(format!(
                "an object is required, found a {}",
                other.type_name()
            ))),
        },
        Type::Tuple(types) => match v {
            Value::List(items) if items.len() == types.len() => items
                .into_iter()
                .zip(types)
                .enumerate()
                .map(|(i, (item, t))| convert_at(item, t, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Value::List),
            Value::List(items) => Err(place(format!(
                "a tuple of {} elements is required, found {}",
                types.len(),
                items.len()
            ))),
            other => Err(place(format!(
                "a tuple is required, found a {}",
                other.type_name()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_and_serialize_whole_when_whole() {
        assert_eq!(number_text(20.0), "20");
        assert_eq!(number_text(0.5), "0.5");
        assert_eq!(Value::Number(20.0).to_json(), serde_json::json!(20));
        assert_eq!(Value::Number(1.5).to_json(), serde_json::json!(1.5));
    }

    #[test]
    fn quote_escapes_hcl_sequences() {
        assert_eq!(quote("a\"b\\c\n${x}%{y}$z"), r#""a\"b\\c\n$${x}%%{y}$z""#);
    }

    #[test]
    fn conversions() {
        assert_eq!(
            convert(Value::str("42"), &Type::Number),
            Ok(Value::Number(42.0))
        );
        assert_eq!(
            convert(Value::Bool(true), &Type::String),
            Ok(Value::str("true"))
        );
        assert!(convert(Value::str("x"), &Type::Number)
            .unwrap_err()
            .contains("a number is required, found \"x\""));
        let set = Type::Set(Box::new(Type::String));
        assert_eq!(
            convert(Value::List(vec![Value::str("a"), Value::str("a")]), &set),
            Ok(Value::List(vec![Value::str("a")]))
        );
        let obj = Type::Object(
            [
                ("size".to_string(), (Type::Number, false)),
                ("kind".to_string(), (Type::String, true)),
            ]
            .into(),
        );
        let m = Value::Map([("size".to_string(), Value::str("8"))].into());
        assert_eq!(
            convert(m, &obj),
            Ok(Value::Map(
                [
                    ("kind".to_string(), Value::Null),
                    ("size".to_string(), Value::Number(8.0))
                ]
                .into()
            ))
        );
        let e = convert(
            Value::List(vec![Value::Map(BTreeMap::new())]),
            &Type::List(Box::new(obj)),
        )
        .unwrap_err();
        assert!(e.contains("[0]: attribute `size` is required"), "{e}");
    }
}
