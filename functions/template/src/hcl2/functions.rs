//! Packer's HCL2 functions, as many as real templates use. A Packer function that is not
//! here is refused naming it ([`NOT_SUPPORTED`]); an unknown name gets a "did you mean".
//!
//! `try`, `can` and `templatefile` need the evaluator and live in `eval.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Datelike, Duration as ChronoDuration, FixedOffset, Timelike, Utc};

use super::did_you_mean;
use super::eval::{equal, later_message};
use super::value::{convert, number_text, Text, Type, Value};
use crate::template::golayout;

pub(crate) struct FnCtx<'a> {
    pub time: DateTime<Utc>,
    /// The environment, where `env()` may read it (variables' defaults only).
    pub env: Option<&'a BTreeMap<String, String>>,
    /// Where the call is, for messages.
    pub place: &'a str,
}

/// Every function amiflow evaluates (with `try`, `can`, `templatefile` from eval.rs).
pub(crate) const SUPPORTED: &[&str] = &[
    "abs",
    "abspath",
    "alltrue",
    "anytrue",
    "base64decode",
    "base64encode",
    "basename",
    "bcrypt",
    "can",
    "ceil",
    "chomp",
    "chunklist",
    "cidrhost",
    "cidrnetmask",
    "cidrsubnet",
    "coalesce",
    "coalescelist",
    "compact",
    "concat",
    "contains",
    "csvdecode",
    "dirname",
    "distinct",
    "element",
    "endswith",
    "env",
    "file",
    "fileexists",
    "fileset",
    "flatten",
    "floor",
    "format",
    "formatdate",
    "formatlist",
    "indent",
    "index",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "legacy_isotime",
    "legacy_strftime",
    "length",
    "lookup",
    "lower",
    "max",
    "md5",
    "merge",
    "min",
    "one",
    "parseint",
    "pathexpand",
    "pow",
    "range",
    "regex",
    "regex_replace",
    "regexall",
    "replace",
    "reverse",
    "setintersection",
    "setunion",
    "sha1",
    "sha256",
    "sha512",
    "signum",
    "slice",
    "sort",
    "split",
    "startswith",
    "strcontains",
    "strrev",
    "substr",
    "sum",
    "templatefile",
    "timeadd",
    "timestamp",
    "title",
    "tobool",
    "tolist",
    "tomap",
    "tonumber",
    "toset",
    "tostring",
    "trim",
    "trimprefix",
    "trimspace",
    "trimsuffix",
    "try",
    "upper",
    "urlencode",
    "uuidv4",
    "uuidv5",
    "values",
    "yamldecode",
    "yamlencode",
    "zipmap",
];

/// Packer functions amiflow does not evaluate, and why or what to use instead.
pub(crate) const NOT_SUPPORTED: &[(&str, &str)] = &[
    ("aws_secretsmanager", "read the secret with a data source instead: data \"amazon-secretsmanager\" \"x\" { name = \"...\" key = \"...\" } and data.amazon-secretsmanager.x.value, which stays sensitive"),
    ("aws_secretsmanager_raw", "read the secret with a data source instead: data \"amazon-secretsmanager\" \"x\" { name = \"...\" } and data.amazon-secretsmanager.x.secret_string, which stays sensitive"),
    ("vault", "amiflow does not fetch secrets while reading a template: pass the value with -var and declare the variable `sensitive = true`"),
    ("consul_key", "amiflow does not read Consul while reading a template: pass the value with -var"),
    ("rsadecrypt", "not implemented by amiflow"),
    ("base64gzip", "not implemented by amiflow"),
    ("textencodebase64", "not implemented by amiflow"),
    ("textdecodebase64", "not implemented by amiflow"),
    ("setproduct", "not implemented by amiflow"),
    ("cidrsubnets", "not implemented by amiflow"),
    ("convert", "not implemented by amiflow: use tostring, tonumber, tolist or tomap"),
    ("log", "not implemented by amiflow"),
];

/// Functions that pass sensitive placeholders and build data through unchanged.
const PASSTHROUGH: &[&str] = &[
    "coalesce",
    "coalescelist",
    "compact",
    "concat",
    "element",
    "flatten",
    "format",
    "formatlist",
    "join",
    "keys",
    "length",
    "lookup",
    "merge",
    "one",
    "reverse",
    "slice",
    "tolist",
    "tomap",
    "tostring",
    "values",
];

pub(crate) fn call(name: &str, args: Vec<Value>, cx: &FnCtx) -> Result<Value, String> {
    if !SUPPORTED.contains(&name) {
        if let Some((_, why)) = NOT_SUPPORTED.iter().find(|(n, _)| *n == name) {
            return Err(format!("function `{name}` is not supported: {why}"));
        }
        return Err(format!(
            "there is no function named `{name}`{}",
            did_you_mean(name, SUPPORTED.iter().copied())
        ));
    }
    if !PASSTHROUGH.contains(&name) {
        if let Some(r) = args.iter().find_map(Value::later) {
            return Err(later_message(r, &format!("`{name}`")));
        }
    }
    let f = Args { name, args };
    f.run(cx)
}

struct Args<'n> {
    name: &'n str,
    args: Vec<Value>,
}

impl Args<'_> {
    fn arity(&self, min: usize, max: usize) -> Result<(), String> {
        let n = self.args.len();
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(format!("`{}` takes {want} argument(s), got {n}", self.name));
        }
        Ok(())
    }

    fn text(&self, i: usize) -> Result<Text, String> {
        self.args[i].as_text().ok_or_else(|| {
            format!(
                "argument {} of `{}` must be a string, found a {}",
                i + 1,
                self.name,
                self.args[i].type_name()
            )
        })
    }

    fn s(&self, i: usize) -> Result<String, String> {
        self.text(i).map(|t| t.s)
    }

    fn num(&self, i: usize) -> Result<f64, String> {
        match &self.args[i] {
            Value::Number(n) => Ok(*n),
            Value::String(t) => t.s.trim().parse().map_err(|_| {
                format!(
                    "argument {} of `{}` must be a number, found {:?}",
                    i + 1,
                    self.name,
                    t.s
                )
            }),
            other => Err(format!(
                "argument {} of `{}` must be a number, found a {}",
                i + 1,
                self.name,
                other.type_name()
            )),
        }
    }

    fn int(&self, i: usize) -> Result<i64, String> {
        let n = self.num(i)?;
        if n.fract() != 0.0 {
            return Err(format!(
                "argument {} of `{}` must be a whole number, found {}",
                i + 1,
                self.name,
                number_text(n)
            ));
        }
        Ok(n as i64)
    }

    fn list(&self, i: usize) -> Result<Vec<Value>, String> {
        match &self.args[i] {
            Value::List(items) => Ok(items.clone()),
            other => Err(format!(
                "argument {} of `{}` must be a list, found a {}",
                i + 1,
                self.name,
                other.type_name()
            )),
        }
    }

    fn map(&self, i: usize) -> Result<BTreeMap<String, Value>, String> {
        match &self.args[i] {
            Value::Map(m) => Ok(m.clone()),
            other => Err(format!(
                "argument {} of `{}` must be a map, found a {}",
                i + 1,
                self.name,
                other.type_name()
            )),
        }
    }

    fn strings(&self, i: usize) -> Result<Vec<Text>, String> {
        self.list(i)?
            .iter()
            .map(|v| {
                v.as_text().ok_or_else(|| {
                    format!(
                        "argument {} of `{}` must be a list of strings, found a {} in it",
                        i + 1,
                        self.name,
                        v.type_name()
                    )
                })
            })
            .collect()
    }

    fn run(self, cx: &FnCtx) -> Result<Value, String> {
        let name = self.name;
        let str_v = |s: String| Ok(Value::str(s));
        match name {
            // Strings.
            "format" => {
                self.arity(1, usize::MAX)?;
                format(&self.text(0)?.s, &self.args[1..]).map(Value::String)
            }
            "formatlist" => {
                self.arity(1, usize::MAX)?;
                let spec = self.s(0)?;
                let mut len: Option<usize> = None;
                for a in &self.args[1..] {
                    if let Value::List(items) = a {
                        match len {
                            Some(l) if l != items.len() => {
                                return Err(
                                    "`formatlist`: every list argument must have the same length"
                                        .into(),
                                )
                            }
                            _ => len = Some(items.len()),
                        }
                    }
                }
                let n = len.unwrap_or(1);
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let row: Vec<Value> = self.args[1..]
                        .iter()
                        .map(|a| match a {
                            Value::List(items) => items[i].clone(),
                            other => other.clone(),
                        })
                        .collect();
                    out.push(Value::String(format(&spec, &row)?));
                }
                Ok(Value::List(out))
            }
            "join" => {
                self.arity(2, usize::MAX)?;
                let sep = self.text(0)?;
                let mut out = Text::default();
                let mut first = true;
                for i in 1..self.args.len() {
                    for item in self.strings(i)? {
                        if !first {
                            out.push(&sep);
                        }
                        first = false;
                        out.push(&item);
                    }
                }
                Ok(Value::String(out))
            }
            "split" => {
                self.arity(2, 2)?;
                let (sep, s) = (self.s(0)?, self.s(1)?);
                if s.is_empty() {
                    return Ok(Value::List(Vec::new()));
                }
                Ok(Value::List(s.split(sep.as_str()).map(Value::str).collect()))
            }
            "replace" => {
                self.arity(3, 3)?;
                let (s, sub, rep) = (self.s(0)?, self.s(1)?, self.s(2)?);
                if sub.len() > 1 && sub.starts_with('/') && sub.ends_with('/') {
                    let re = regex(&sub[1..sub.len() - 1])?;
                    return str_v(re.replace_all(&s, rep.as_str()).into_owned());
                }
                str_v(s.replace(&sub, &rep))
            }
            "regex_replace" => {
                self.arity(3, 3)?;
                let re = regex(&self.s(1)?)?;
                str_v(
                    re.replace_all(&self.s(0)?, self.s(2)?.as_str())
                        .into_owned(),
                )
            }
            "regex" => {
                self.arity(2, 2)?;
                let re = regex(&self.s(0)?)?;
                let s = self.s(1)?;
                let caps = re.captures(&s).ok_or_else(|| {
                    format!(
                        "`regex`: pattern {:?} does not match {s:?}",
                        self.s(0).unwrap_or_default()
                    )
                })?;
                Ok(captures_value(&re, &caps))
            }
            "regexall" => {
                self.arity(2, 2)?;
                let re = regex(&self.s(0)?)?;
                let s = self.s(1)?;
                Ok(Value::List(
                    re.captures_iter(&s)
                        .map(|c| captures_value(&re, &c))
                        .collect(),
                ))
            }
            "lower" => {
                self.arity(1, 1)?;
                str_v(self.s(0)?.to_lowercase())
            }
            "upper" => {
                self.arity(1, 1)?;
                str_v(self.s(0)?.to_uppercase())
            }
            "title" => {
                self.arity(1, 1)?;
                let mut out = String::new();
                let mut at_start = true;
                for c in self.s(0)?.chars() {
                    if at_start && c.is_alphabetic() {
                        out.extend(c.to_uppercase());
                    } else {
                        out.push(c);
                    }
                    at_start = !c.is_alphanumeric();
                }
                str_v(out)
            }
            "trimspace" => {
                self.arity(1, 1)?;
                str_v(self.s(0)?.trim().to_string())
            }
            "trim" => {
                self.arity(2, 2)?;
                let cut: Vec<char> = self.s(1)?.chars().collect();
                str_v(self.s(0)?.trim_matches(|c| cut.contains(&c)).to_string())
            }
            "trimprefix" => {
                self.arity(2, 2)?;
                let (s, p) = (self.s(0)?, self.s(1)?);
                str_v(s.strip_prefix(p.as_str()).unwrap_or(&s).to_string())
            }
            "trimsuffix" => {
                self.arity(2, 2)?;
                let (s, p) = (self.s(0)?, self.s(1)?);
                str_v(s.strip_suffix(p.as_str()).unwrap_or(&s).to_string())
            }
            "chomp" => {
                self.arity(1, 1)?;
                str_v(self.s(0)?.trim_end_matches(['\n', '\r']).to_string())
            }
            "indent" => {
                self.arity(2, 2)?;
                let pad = " ".repeat(usize::try_from(self.int(0)?).unwrap_or(0));
                let s = self.s(1)?;
                str_v(s.replace('\n', &format!("\n{pad}")))
            }
            "strrev" => {
                self.arity(1, 1)?;
                str_v(self.s(0)?.chars().rev().collect())
            }
            "substr" => {
                self.arity(3, 3)?;
                let chars: Vec<char> = self.s(0)?.chars().collect();
                let len = chars.len() as i64;
                let mut offset = self.int(1)?;
                let length = self.int(2)?;
                if offset < 0 {
                    offset += len;
                }
                if offset < 0 || offset > len {
                    return Err(format!(
                        "`substr`: offset {} is outside a string of {len} characters",
                        self.int(1)?
                    ));
                }
                let end = if length < 0 {
                    len
                } else {
                    (offset + length).min(len)
                };
                str_v(chars[offset as usize..end as usize].iter().collect())
            }
            "startswith" => {
                self.arity(2, 2)?;
                Ok(Value::Bool(self.s(0)?.starts_with(&self.s(1)?)))
            }
            "endswith" => {
                self.arity(2, 2)?;
                Ok(Value::Bool(self.s(0)?.ends_with(&self.s(1)?)))
            }
            "strcontains" => {
                self.arity(2, 2)?;
                Ok(Value::Bool(self.s(0)?.contains(&self.s(1)?)))
            }
            // Collections.
            "concat" => {
                let mut out = Vec::new();
                for i in 0..self.args.len() {
                    out.extend(self.list(i)?);
                }
                Ok(Value::List(out))
            }
            "contains" => {
                self.arity(2, 2)?;
                Ok(Value::Bool(
                    self.list(0)?.iter().any(|v| equal(v, &self.args[1])),
                ))
            }
            "element" => {
                self.arity(2, 2)?;
                let items = self.list(0)?;
                if items.is_empty() {
                    return Err("`element` cannot take an element of an empty list".into());
                }
                let i = self.int(1)?;
                if i < 0 {
                    return Err("`element`: the index must not be negative".into());
                }
                Ok(items[(i as usize) % items.len()].clone())
            }
            "flatten" => {
                self.arity(1, 1)?;
                fn flat(v: Vec<Value>, out: &mut Vec<Value>) {
                    for item in v {
                        match item {
                            Value::List(inner) => flat(inner, out),
                            other => out.push(other),
                        }
                    }
                }
                let mut out = Vec::new();
                flat(self.list(0)?, &mut out);
                Ok(Value::List(out))
            }
            "keys" => {
                self.arity(1, 1)?;
                Ok(Value::List(
                    self.map(0)?.into_keys().map(Value::str).collect(),
                ))
            }
            "values" => {
                self.arity(1, 1)?;
                Ok(Value::List(self.map(0)?.into_values().collect()))
            }
            "length" => {
                self.arity(1, 1)?;
                let n = match &self.args[0] {
                    Value::List(items) => items.len(),
                    Value::Map(m) => m.len(),
                    Value::String(t) if t.later.is_empty() => t.s.chars().count(),
                    Value::String(t) => return Err(later_message(&t.later[0], "`length`")),
                    other => {
                        return Err(format!(
                            "`length` takes a string, list or map, found a {}",
                            other.type_name()
                        ))
                    }
                };
                Ok(Value::Number(n as f64))
            }
            "lookup" => {
                self.arity(2, 3)?;
                let m = self.map(0)?;
                let key = self.s(1)?;
                match m.get(&key) {
                    Some(v) => Ok(v.clone()),
                    None if self.args.len() == 3 => Ok(self.args[2].clone()),
                    None => Err(format!(
                        "`lookup`: the map has no key {key:?} and no default was given{}",
                        did_you_mean(&key, m.keys().map(String::as_str))
                    )),
                }
            }
            "merge" => {
                let mut out = BTreeMap::new();
                for (i, a) in self.args.iter().enumerate() {
                    if !matches!(a, Value::Null) {
                        out.extend(self.map(i)?);
                    }
                }
                Ok(Value::Map(out))
            }
            "coalesce" => {
                self.arity(1, usize::MAX)?;
                self.args
                    .iter()
                    .find(|v| match v {
                        Value::Null => false,
                        Value::String(t) => !t.s.is_empty(),
                        _ => true,
                    })
                    .cloned()
                    .ok_or_else(|| "`coalesce`: every argument is null or an empty string".into())
            }
            "coalescelist" => {
                self.arity(1, usize::MAX)?;
                for i in 0..self.args.len() {
                    let l = self.list(i)?;
                    if !l.is_empty() {
                        return Ok(Value::List(l));
                    }
                }
                Err("`coalescelist`: every list is empty".into())
            }
            "compact" => {
                self.arity(1, 1)?;
                Ok(Value::List(
                    self.list(0)?
                        .into_iter()
                        .filter(|v| match v {
                            Value::Null => false,
                            Value::String(t) => !t.s.is_empty(),
                            _ => true,
                        })
                        .collect(),
                ))
            }
            "distinct" | "toset" => {
                self.arity(1, 1)?;
                let mut out: Vec<Value> = Vec::new();
                for v in self.list(0)? {
                    if !out.iter().any(|o| equal(o, &v)) {
                        out.push(v);
                    }
                }
                if name == "toset" {
                    out.sort_by_key(|a| a.to_string());
                }
                Ok(Value::List(out))
            }
            "index" => {
                self.arity(2, 2)?;
                self.list(0)?
                    .iter()
                    .position(|v| equal(v, &self.args[1]))
                    .map(|i| Value::Number(i as f64))
                    .ok_or_else(|| format!("`index`: the list does not contain {}", self.args[1]))
            }
            "reverse" => {
                self.arity(1, 1)?;
                let mut l = self.list(0)?;
                l.reverse();
                Ok(Value::List(l))
            }
            "slice" => {
                self.arity(3, 3)?;
                let l = self.list(0)?;
                let (a, b) = (self.int(1)?, self.int(2)?);
                if a < 0 || b < a || b as usize > l.len() {
                    return Err(format!(
                        "`slice`: [{a}, {b}) is outside a list of {} element(s)",
                        l.len()
                    ));
                }
                Ok(Value::List(l[a as usize..b as usize].to_vec()))
            }
            "sort" => {
                self.arity(1, 1)?;
                let mut l: Vec<String> = self.strings(0)?.into_iter().map(|t| t.s).collect();
                l.sort();
                Ok(Value::List(l.into_iter().map(Value::str).collect()))
            }
            "range" => {
                self.arity(1, 3)?;
                let (start, end, step) = match self.args.len() {
                    1 => (0.0, self.num(0)?, 1.0),
                    2 => (self.num(0)?, self.num(1)?, 1.0),
                    _ => (self.num(0)?, self.num(1)?, self.num(2)?),
                };
                if step == 0.0 || (end > start && step < 0.0) || (end < start && step > 0.0) {
                    return Err(
                        "`range`: the step must be non-zero and go from start towards end".into(),
                    );
                }
                let mut out = Vec::new();
                let mut x = start;
                while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
                    out.push(Value::Number(x));
                    x += step;
                    if out.len() > 1024 {
                        return Err("`range`: more than 1024 elements".into());
                    }
                }
                Ok(Value::List(out))
            }
            "zipmap" => {
                self.arity(2, 2)?;
                let (k, v) = (self.strings(0)?, self.list(1)?);
                if k.len() != v.len() {
                    return Err(format!("`zipmap`: {} keys but {} values", k.len(), v.len()));
                }
                Ok(Value::Map(k.into_iter().map(|t| t.s).zip(v).collect()))
            }
            "setunion" => {
                let mut out: Vec<Value> = Vec::new();
                for i in 0..self.args.len() {
                    for v in self.list(i)? {
                        if !out.iter().any(|o| equal(o, &v)) {
                            out.push(v);
                        }
                    }
                }
                Ok(Value::List(out))
            }
            "setintersection" => {
                self.arity(1, usize::MAX)?;
                let mut out = self.list(0)?;
                for i in 1..self.args.len() {
                    let other = self.list(i)?;
                    out.retain(|v| other.iter().any(|o| equal(o, v)));
                }
                Ok(Value::List(out))
            }
            "chunklist" => {
                self.arity(2, 2)?;
                let l = self.list(0)?;
                let size = self.int(1)?;
                if size < 0 {
                    return Err("`chunklist`: the size must not be negative".into());
                }
                if size == 0 {
                    return Ok(Value::List(vec![Value::List(l)]));
                }
                Ok(Value::List(
                    l.chunks(size as usize)
                        .map(|c| Value::List(c.to_vec()))
                        .collect(),
                ))
            }
            "one" => {
                self.arity(1, 1)?;
                let l = self.list(0)?;
                match l.len() {
                    0 => Ok(Value::Null),
                    1 => Ok(l[0].clone()),
                    n => Err(format!(
                        "`one` takes a list of at most one element, found {n}"
                    )),
                }
            }
            "alltrue" | "anytrue" => {
                self.arity(1, 1)?;
                let mut bools = Vec::new();
                for v in self.list(0)? {
                    match convert(v, &Type::Bool)? {
                        Value::Bool(b) => bools.push(b),
                        _ => bools.push(false),
                    }
                }
                Ok(Value::Bool(if name == "alltrue" {
                    bools.iter().all(|b| *b)
                } else {
                    bools.iter().any(|b| *b)
                }))
            }
            // Numbers.
            "sum" => {
                self.arity(1, 1)?;
                let mut total = 0.0;
                for v in self.list(0)? {
                    match convert(v, &Type::Number)? {
                        Value::Number(n) => total += n,
                        _ => return Err("`sum`: the list holds a null".into()),
                    }
                }
                Ok(Value::Number(total))
            }
            "min" | "max" => {
                self.arity(1, usize::MAX)?;
                let mut best = self.num(0)?;
                for i in 1..self.args.len() {
                    let n = self.num(i)?;
                    if (name == "min" && n < best) || (name == "max" && n > best) {
                        best = n;
                    }
                }
                Ok(Value::Number(best))
            }
            "abs" => {
                self.arity(1, 1)?;
                Ok(Value::Number(self.num(0)?.abs()))
            }
            "ceil" => {
                self.arity(1, 1)?;
                Ok(Value::Number(self.num(0)?.ceil()))
            }
            "floor" => {
                self.arity(1, 1)?;
                Ok(Value::Number(self.num(0)?.floor()))
            }
            "pow" => {
                self.arity(2, 2)?;
                Ok(Value::Number(self.num(0)?.powf(self.num(1)?)))
            }
            "signum" => {
                self.arity(1, 1)?;
                let n = self.num(0)?;
                Ok(Value::Number(if n > 0.0 {
                    1.0
                } else if n < 0.0 {
                    -1.0
                } else {
                    0.0
                }))
            }
            "parseint" => {
                self.arity(2, 2)?;
                let (s, base) = (self.s(0)?, self.int(1)?);
                if !(2..=62).contains(&base) {
                    return Err(format!("`parseint`: base {base} is not between 2 and 62"));
                }
                i64::from_str_radix(&s, base as u32)
                    .map(|n| Value::Number(n as f64))
                    .map_err(|_| format!("`parseint`: {s:?} is not a base-{base} integer"))
            }
            // Conversions.
            "tostring" => {
                self.arity(1, 1)?;
                convert(self.args[0].clone(), &Type::String)
            }
            "tonumber" => {
                self.arity(1, 1)?;
                convert(self.args[0].clone(), &Type::Number)
            }
            "tobool" => {
                self.arity(1, 1)?;
                convert(self.args[0].clone(), &Type::Bool)
            }
            "tolist" => {
                self.arity(1, 1)?;
                self.list(0).map(Value::List)
            }
            "tomap" => {
                self.arity(1, 1)?;
                self.map(0).map(Value::Map)
            }
            // Encodings.
            "jsonencode" => {
                self.arity(1, 1)?;
                str_v(self.args[0].to_json().to_string())
            }
            "jsondecode" => {
                self.arity(1, 1)?;
                let s = self.s(0)?;
                serde_json::from_str::<serde_json::Value>(&s)
                    .map(|j| Value::from_json(&j))
                    .map_err(|e| format!("`jsondecode`: not valid JSON: {e}"))
            }
            "base64encode" => {
                self.arity(1, 1)?;
                str_v(base64::engine::general_purpose::STANDARD.encode(self.s(0)?))
            }
            "base64decode" => {
                self.arity(1, 1)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(self.s(0)?.trim())
                    .map_err(|e| format!("`base64decode`: not valid base64: {e}"))?;
                String::from_utf8(bytes)
                    .map(Value::str)
                    .map_err(|_| "`base64decode`: the decoded bytes are not UTF-8 text".into())
            }
            "urlencode" => {
                self.arity(1, 1)?;
                let mut out = String::new();
                for b in self.s(0)?.bytes() {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        out.push(b as char);
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                str_v(out)
            }
            // Files.
            "file" => {
                self.arity(1, 1)?;
                let p = self.s(0)?;
                std::fs::read_to_string(&p)
                    .map(Value::str)
                    .map_err(|e| format!("`file`: cannot read {p:?}: {e}"))
            }
            "fileexists" => {
                self.arity(1, 1)?;
                Ok(Value::Bool(Path::new(&self.s(0)?).is_file()))
            }
            "basename" => {
                self.arity(1, 1)?;
                let p = self.s(0)?;
                str_v(
                    Path::new(&p)
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or(p),
                )
            }
            "dirname" => {
                self.arity(1, 1)?;
                let p = self.s(0)?;
                str_v(match Path::new(&p).parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
                    _ => ".".into(),
                })
            }
            "abspath" => {
                self.arity(1, 1)?;
                let p = Path::new(&self.s(0)?).to_path_buf();
                let abs = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir()
                        .map_err(|e| format!("`abspath`: {e}"))?
                        .join(p)
                };
                str_v(abs.display().to_string())
            }
            "pathexpand" => {
                self.arity(1, 1)?;
                let p = self.s(0)?;
                match p.strip_prefix('~') {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        let home = std::env::var("HOME")
                            .map_err(|_| "`pathexpand`: HOME is not set".to_string())?;
                        str_v(format!("{home}{rest}"))
                    }
                    _ => str_v(p),
                }
            }
            // Time.
            "timestamp" => {
                self.arity(0, 0)?;
                str_v(cx.time.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
            "formatdate" => {
                self.arity(2, 2)?;
                let t = parse_rfc3339(&self.s(1)?)?;
                formatdate(&self.s(0)?, &t).map(Value::str)
            }
            "timeadd" => {
                self.arity(2, 2)?;
                let t = parse_rfc3339(&self.s(0)?)?;
                let d: crate::config::Duration =
                    self.s(1)?.parse().map_err(|e| format!("`timeadd`: {e}"))?;
                let secs = d.as_std().as_secs_f64();
                let t = t + ChronoDuration::milliseconds((secs * 1000.0) as i64);
                str_v(if t.offset().local_minus_utc() == 0 {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                } else {
                    t.to_rfc3339()
                })
            }
            "legacy_isotime" => {
                self.arity(0, 1)?;
                let layout = if self.args.is_empty() {
                    "2006-01-02T15:04:05Z07:00".to_string()
                } else {
                    self.s(0)?
                };
                str_v(golayout::format(&cx.time, &layout))
            }
            "legacy_strftime" => {
                self.arity(1, 1)?;
                use chrono::format::{Item, StrftimeItems};
                let f = self.s(0)?;
                let items: Vec<Item> = StrftimeItems::new(&f).collect();
                if items.iter().any(|i| matches!(i, Item::Error)) {
                    return Err(format!(
                        "`legacy_strftime`: {f:?} is not a valid strftime format"
                    ));
                }
                str_v(cx.time.format_with_items(items.into_iter()).to_string())
            }
            // Identifiers and hashes.
            "uuidv4" => {
                self.arity(0, 0)?;
                str_v(uuid::Uuid::new_v4().to_string())
            }
            "uuidv5" => {
                self.arity(2, 2)?;
                let ns = match self.s(0)?.as_str() {
                    "dns" => uuid::Uuid::NAMESPACE_DNS,
                    "url" => uuid::Uuid::NAMESPACE_URL,
                    "oid" => uuid::Uuid::NAMESPACE_OID,
                    "x500" => uuid::Uuid::NAMESPACE_X500,
                    other => uuid::Uuid::parse_str(other).map_err(|_| format!("`uuidv5`: the namespace must be dns, url, oid, x500 or a UUID, found {other:?}"))?,
                };
                str_v(uuid::Uuid::new_v5(&ns, self.s(1)?.as_bytes()).to_string())
            }
            "yamlencode" => {
                self.arity(1, 1)?;
                serde_norway::to_string(&self.args[0].to_json())
                    .map(Value::str)
                    .map_err(|e| format!("`yamlencode`: {e}"))
            }
            "yamldecode" => {
                self.arity(1, 1)?;
                serde_norway::from_str::<serde_json::Value>(&self.s(0)?)
                    .map(|j| Value::from_json(&j))
                    .map_err(|e| {
                        format!("`yamldecode`: not valid YAML (or a key is not a string): {e}")
                    })
            }
            "csvdecode" => {
                self.arity(1, 1)?;
                csvdecode(&self.s(0)?)
            }
            "fileset" => {
                self.arity(2, 2)?;
                fileset(&self.s(0)?, &self.s(1)?)
            }
            "bcrypt" => {
                self.arity(1, 2)?;
                let cost = if self.args.len() == 2 {
                    self.int(1)?
                } else {
                    10
                };
                if !(4..=31).contains(&cost) {
                    return Err(format!(
                        "`bcrypt`: the cost must be from 4 to 31, got {cost}"
                    ));
                }
                // Go's bcrypt, which Packer uses, writes the `$2a$` prefix.
                bcrypt::hash_with_result(self.s(0)?, cost as u32)
                    .map(|h| Value::str(h.format_for_version(bcrypt::Version::TwoA)))
                    .map_err(|e| format!("`bcrypt`: {e}"))
            }
            "cidrhost" => {
                self.arity(2, 2)?;
                cidrhost(&self.s(0)?, self.int(1)?)
            }
            "cidrnetmask" => {
                self.arity(1, 1)?;
                match parse_cidr(&self.s(0)?)? {
                    ipnet::IpNet::V4(n) => str_v(n.netmask().to_string()),
                    ipnet::IpNet::V6(_) => {
                        Err("`cidrnetmask`: only IPv4 prefixes have a netmask".into())
                    }
                }
            }
            "cidrsubnet" => {
                self.arity(3, 3)?;
                cidrsubnet(&self.s(0)?, self.int(1)?, self.int(2)?)
            }
            "md5" => {
                self.arity(1, 1)?;
                use md5::Digest as _;
                str_v(hex(&md5::Md5::digest(self.s(0)?.as_bytes())))
            }
            "sha1" => {
                self.arity(1, 1)?;
                use sha1::Digest as _;
                str_v(hex(&sha1::Sha1::digest(self.s(0)?.as_bytes())))
            }
            "sha256" => {
                self.arity(1, 1)?;
                use sha2::Digest as _;
                str_v(hex(&sha2::Sha256::digest(self.s(0)?.as_bytes())))
            }
            "sha512" => {
                self.arity(1, 1)?;
                use sha2::Digest as _;
                str_v(hex(&sha2::Sha512::digest(self.s(0)?.as_bytes())))
            }
            "env" => {
                self.arity(1, 1)?;
                let env = cx.env.ok_or_else(|| {
                    format!("`env` can only be used in a variable's default, not in {}: declare a variable with default = env(\"NAME\") and use var.NAME here", cx.place)
                })?;
                str_v(env.get(&self.s(0)?).cloned().unwrap_or_default())
            }
            other => Err(format!(
                "function `{other}` is listed but has no implementation"
            )),
        }
    }
}

/// `csvdecode`: RFC 4180 text, the first line naming the columns; a list of maps of strings.
fn csvdecode(text: &str) -> Result<Value, String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut was_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                row.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                was_quoted = false;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("`csvdecode`: a quoted field is not closed".into());
    }
    if !field.is_empty() || !row.is_empty() || was_quoted {
        row.push(field);
        rows.push(row);
    }
    let mut rows = rows.into_iter();
    let Some(header) = rows.next() else {
        return Ok(Value::List(Vec::new()));
    };
    rows.enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                return Err(format!(
                    "`csvdecode`: line {} has {} fields, the header {}",
                    i + 2,
                    r.len(),
                    header.len()
                ));
            }
            Ok(Value::Map(
                header
                    .iter()
                    .cloned()
                    .zip(r.into_iter().map(Value::str))
                    .collect(),
            ))
        })
        .collect::<Result<_, _>>()
        .map(Value::List)
}

/// `fileset(path, pattern)`: the files under `path` matching `pattern` (`*`, `**`, `?`,
/// `[...]`), relative to `path`, sorted.
fn fileset(path: &str, pattern: &str) -> Result<Value, String> {
    let full = format!(
        "{}/{pattern}",
        glob::Pattern::escape(path.trim_end_matches('/'))
    );
    let entries = glob::glob(&full).map_err(|e| format!("`fileset`: pattern {pattern:?}: {e}"))?;
    let mut out = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| format!("`fileset`: {e}"))?;
        if !p.is_file() {
            continue;
        }
        let rel = p.strip_prefix(path).unwrap_or(&p);
        out.push(rel.to_string_lossy().to_string());
    }
    out.sort();
    out.dedup();
    Ok(Value::List(out.into_iter().map(Value::str).collect()))
}

fn parse_cidr(prefix: &str) -> Result<ipnet::IpNet, String> {
    prefix.parse::<ipnet::IpNet>().map_err(|_| {
        format!("{prefix:?} is not an address prefix in CIDR notation (e.g. \"10.0.0.0/16\")")
    })
}

/// An address as a number and its width in bits.
fn addr_bits(a: std::net::IpAddr) -> (u128, u32) {
    match a {
        std::net::IpAddr::V4(a) => (u32::from(a) as u128, 32),
        std::net::IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn addr_of(n: u128, bits: u32) -> std::net::IpAddr {
    if bits == 32 {
        std::net::IpAddr::V4((n as u32).into())
    } else {
        std::net::IpAddr::V6(n.into())
    }
}

/// `cidrhost(prefix, hostnum)`: the host's address in the prefix; a negative number
/// counts back from the end, as Packer's.
fn cidrhost(prefix: &str, hostnum: i64) -> Result<Value, String> {
    let net = parse_cidr(prefix)?;
    let (base, bits) = addr_bits(net.network());
    let host_bits = bits - u32::from(net.prefix_len());
    let size: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let n = if hostnum < 0 {
        size.checked_sub(hostnum.unsigned_abs() as u128)
    } else {
        Some(hostnum as u128).filter(|n| *n < size)
    };
    let n = n.ok_or_else(|| format!("`cidrhost`: prefix {prefix} has no host number {hostnum}"))?;
    Ok(Value::str(addr_of(base + n, bits).to_string()))
}

/// `cidrsubnet(prefix, newbits, netnum)`: subnet `netnum` of the prefix made `newbits`
/// longer.
fn cidrsubnet(prefix: &str, newbits: i64, netnum: i64) -> Result<Value, String> {
    let net = parse_cidr(prefix)?;
    let (base, bits) = addr_bits(net.network());
    let len = i64::from(net.prefix_len()) + newbits;
    if newbits < 0 || len > i64::from(bits) {
        return Err(format!(
            "`cidrsubnet`: {prefix} cannot be extended by {newbits} bits (at most {} here)",
            i64::from(bits) - i64::from(net.prefix_len())
        ));
    }
    if netnum < 0 || (newbits < 64 && netnum >= 1i64 << newbits) {
        return Err(format!(
            "`cidrsubnet`: netnum {netnum} does not fit in {newbits} bits"
        ));
    }
    let shift = bits as i64 - len;
    let start = base + ((netnum as u128) << shift);
    Ok(Value::str(format!("{}/{len}", addr_of(start, bits))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(pattern)
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

/// What `regex` returns for one match: the match without groups, a list of unnamed
/// groups, or a map of named ones.
fn captures_value(re: &regex_lite::Regex, caps: &regex_lite::Captures) -> Value {
    let names: Vec<Option<&str>> = re.capture_names().skip(1).collect();
    if names.is_empty() {
        return Value::str(caps.get(0).map_or("", |m| m.as_str()));
    }
    let text = |i: usize| caps.get(i).map_or(Value::Null, |m| Value::str(m.as_str()));
    if names.iter().all(Option::is_some) {
        Value::Map(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.expect("named").to_string(), text(i + 1)))
                .collect(),
        )
    } else {
        Value::List((1..=names.len()).map(text).collect())
    }
}

/// Go's `fmt` verbs as HCL's `format` takes them: `%s %v %#v %d %f %e %g %t %q %x %X %o %b %%`
/// with flags, width and precision. A value put in place later may only go through
/// `%s` or `%v` unchanged.
fn format(spec: &str, args: &[Value]) -> Result<Text, String> {
    let mut out = Text::default();
    let mut chars = spec.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.s.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.s.push('%');
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if "-+# 0".contains(f) {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse().unwrap_or(0));
        }
        let verb = chars
            .next()
            .ok_or("`format`: the spec ends with an unfinished %")?;
        let arg = args.get(next).ok_or_else(|| {
            format!(
                "`format`: not enough arguments for %{verb} (the spec wants more than {})",
                args.len()
            )
        })?;
        next += 1;
        if let Some(r) = arg.later() {
            if matches!(verb, 's' | 'v')
                && flags.is_empty()
                && width.is_empty()
                && precision.is_none()
            {
                out.push(&arg.as_text().ok_or_else(|| later_message(r, "`format`"))?);
                continue;
            }
            return Err(later_message(r, &format!("`format` with %{verb}")));
        }
        let body = match verb {
            's' | 'v' if flags.contains('#') => arg.to_json().to_string(),
            's' | 'v' => match arg {
                Value::Null if verb == 's' => return Err("`format`: %s cannot take null".into()),
                Value::Null => "null".into(),
                Value::List(_) | Value::Map(_) if verb == 's' => {
                    return Err(format!(
                        "`format`: %s cannot take a {}; use %v or jsonencode",
                        arg.type_name()
                    ))
                }
                Value::List(_) | Value::Map(_) => arg.to_json().to_string(),
                other => {
                    let s = other.to_string();
                    match precision {
                        Some(p) => s.chars().take(p).collect(),
                        None => s,
                    }
                }
            },
            'q' => serde_json::Value::String(arg.as_text().ok_or("`format`: %q takes a string")?.s)
                .to_string(),
            't' => match arg {
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "`format`: %t takes a bool, found a {}",
                        other.type_name()
                    ))
                }
            },
            'd' | 'x' | 'X' | 'o' | 'b' => {
                let n = match convert(arg.clone(), &Type::Number) {
                    Ok(Value::Number(n)) if n.fract() == 0.0 => n as i64,
                    _ => {
                        return Err(format!(
                            "`format`: %{verb} takes a whole number, found {arg}"
                        ))
                    }
                };
                let digits = match verb {
                    'd' => n.abs().to_string(),
                    'x' => format!("{:x}", n.abs()),
                    'X' => format!("{:X}", n.abs()),
                    'o' => format!("{:o}", n.abs()),
                    _ => format!("{:b}", n.abs()),
                };
                let sign = if n < 0 {
                    "-"
                } else if flags.contains('+') {
                    "+"
                } else {
                    ""
                };
                format!("{sign}{digits}")
            }
            'f' | 'e' | 'g' => {
                let n = match convert(arg.clone(), &Type::Number) {
                    Ok(Value::Number(n)) => n,
                    _ => return Err(format!("`format`: %{verb} takes a number, found {arg}")),
                };
                let s = match verb {
                    'f' => format!("{n:.*}", precision.unwrap_or(6)),
                    'e' => format!("{n:.*e}", precision.unwrap_or(6)),
                    _ => number_text(n),
                };
                if flags.contains('+') && n >= 0.0 {
                    format!("+{s}")
                } else {
                    s
                }
            }
            other => {
                return Err(format!(
                    "`format`: unsupported verb %{other} (use %s, %d, %f, %v, %q, %t, %x)"
                ))
            }
        };
        let w: usize = width.parse().unwrap_or(0);
        let len = body.chars().count();
        if len < w {
            let pad = w - len;
            if flags.contains('-') {
                out.s.push_str(&body);
                out.s.push_str(&" ".repeat(pad));
            } else if flags.contains('0') && "dfexXob".contains(verb) {
                let (sign, digits) = match body.strip_prefix(['-', '+']) {
                    Some(d) => (&body[..1], d),
                    None => ("", body.as_str()),
                };
                out.s.push_str(sign);
                out.s.push_str(&"0".repeat(pad));
                out.s.push_str(digits);
            } else {
                out.s.push_str(&" ".repeat(pad));
                out.s.push_str(&body);
            }
        } else {
            out.s.push_str(&body);
        }
    }
    if next < args.len() {
        return Err(format!(
            "`format`: {} argument(s) given but the spec uses {next}",
            args.len()
        ));
    }
    Ok(out)
}

fn parse_rfc3339(s: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(s).map_err(|_| format!("{s:?} is not an RFC 3339 timestamp like \"2024-03-05T14:07:09Z\" (timestamp() gives one)"))
}

/// Terraform's `formatdate` spec: YYYY YY MMMM MMM MM M DD D EEEE EEE hh h HH H AA aa mm m
/// ss s ZZZZZ ZZZZ ZZZ Z, and 'quoted literals'.
fn formatdate(spec: &str, t: &DateTime<FixedOffset>) -> Result<String, String> {
    use crate::template::golayout::{LONG_DAYS, LONG_MONTHS};
    let chars: Vec<char> = spec.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            if j >= chars.len() {
                return Err("`formatdate`: unterminated quoted literal in the spec".into());
            }
            if j == i + 1 {
                out.push('\'');
            } else {
                out.extend(&chars[i + 1..j]);
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let hour12 = match t.hour() % 12 {
            0 => 12,
            h => h,
        };
        let offset = t.offset().local_minus_utc();
        let (sign, oh, om) = (
            if offset < 0 { '-' } else { '+' },
            offset.abs() / 3600,
            (offset.abs() % 3600) / 60,
        );
        let piece = match (c, n) {
            ('Y', 4) => format!("{:04}", t.year()),
            ('Y', 2) => format!("{:02}", t.year() % 100),
            ('M', 4) => LONG_MONTHS[t.month0() as usize].to_string(),
            ('M', 3) => LONG_MONTHS[t.month0() as usize][..3].to_string(),
            ('M', 2) => format!("{:02}", t.month()),
            ('M', 1) => t.month().to_string(),
            ('D', 2) => format!("{:02}", t.day()),
            ('D', 1) => t.day().to_string(),
            ('E', 4) => LONG_DAYS[t.weekday().num_days_from_sunday() as usize].to_string(),
            ('E', 3) => LONG_DAYS[t.weekday().num_days_from_sunday() as usize][..3].to_string(),
            ('h', 2) => format!("{:02}", t.hour()),
            ('h', 1) => t.hour().to_string(),
            ('H', 2) => format!("{hour12:02}"),
            ('H', 1) => hour12.to_string(),
            ('A', 2) => (if t.hour() < 12 { "AM" } else { "PM" }).to_string(),
            ('a', 2) => (if t.hour() < 12 { "am" } else { "pm" }).to_string(),
            ('m', 2) => format!("{:02}", t.minute()),
            ('m', 1) => t.minute().to_string(),
            ('s', 2) => format!("{:02}", t.second()),
            ('s', 1) => t.second().to_string(),
            ('Z', 5) => format!("{sign}{oh:02}:{om:02}"),
            ('Z', 4) => format!("{sign}{oh:02}{om:02}"),
            ('Z', 3) => {
                if offset == 0 {
                    "UTC".to_string()
                } else {
                    format!("{sign}{oh:02}{om:02}")
                }
            }
            ('Z', 1) => {
                if offset == 0 {
                    "Z".to_string()
                } else {
                    format!("{sign}{oh:02}:{om:02}")
                }
            }
            _ => {
                let token: String = std::iter::repeat_n(c, n).collect();
                return Err(format!("`formatdate`: unsupported sequence {token:?} in the spec; quote literal letters, e.g. 'T'"));
            }
        };
        out.push_str(&piece);
        i += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cx() -> FnCtx<'static> {
        FnCtx {
            time: Utc.with_ymd_and_hms(2024, 3, 5, 14, 7, 9).unwrap(),
            env: None,
            place: "a source block",
        }
    }

    fn s(v: &str) -> Value {
        Value::str(v)
    }

    fn n(v: f64) -> Value {
        Value::Number(v)
    }

    fn l(items: &[Value]) -> Value {
        Value::List(items.to_vec())
    }

    fn c(name: &str, args: &[Value]) -> Result<Value, String> {
        call(name, args.to_vec(), &cx())
    }

    #[test]
    fn yaml_csv_fileset_bcrypt_and_cidr() {
        let m = |pairs: &[(&str, Value)]| {
            Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )
        };
        let doc = m(&[("a", l(&[n(1.0), s("x")])), ("b", Value::Bool(true))]);
        let yaml = c("yamlencode", std::slice::from_ref(&doc)).unwrap();
        assert_eq!(yaml, s("a:\n- 1\n- x\nb: true\n"));
        assert_eq!(c("yamldecode", &[yaml]).unwrap(), doc);
        assert!(c("yamldecode", &[s("a: [")])
            .unwrap_err()
            .contains("not valid YAML"));

        assert_eq!(
            c(
                "csvdecode",
                &[s("name,size\nweb,\"1,5\"\r\ndb,\"say \"\"hi\"\"\"\n")]
            )
            .unwrap(),
            l(&[
                m(&[("name", s("web")), ("size", s("1,5"))]),
                m(&[("name", s("db")), ("size", s("say \"hi\""))])
            ])
        );
        assert!(c("csvdecode", &[s("a,b\n1\n")])
            .unwrap_err()
            .contains("line 2 has 1 fields"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deep")).unwrap();
        for f in ["a.sh", "b.txt", "sub/c.sh", "sub/deep/d.sh"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let root = dir.path().display().to_string();
        assert_eq!(
            c("fileset", &[s(&root), s("**/*.sh")]).unwrap(),
            l(&[s("a.sh"), s("sub/c.sh"), s("sub/deep/d.sh")])
        );
        assert_eq!(
            c("fileset", &[s(&root), s("*.txt")]).unwrap(),
            l(&[s("b.txt")])
        );

        let Value::String(hash) = c("bcrypt", &[s("secret"), n(4.0)]).unwrap() else {
            panic!()
        };
        assert!(hash.s.starts_with("$2a$04$"), "{}", hash.s);
        assert!(bcrypt::verify("secret", &hash.s).unwrap());
        assert!(c("bcrypt", &[s("x"), n(3.0)]).is_err());

        assert_eq!(
            c("cidrhost", &[s("10.12.112.0/20"), n(16.0)]).unwrap(),
            s("10.12.112.16")
        );
        assert_eq!(
            c("cidrhost", &[s("10.12.112.0/20"), n(268.0)]).unwrap(),
            s("10.12.113.12")
        );
        assert_eq!(
            c("cidrhost", &[s("10.0.0.0/24"), n(-1.0)]).unwrap(),
            s("10.0.0.255")
        );
        assert_eq!(
            c("cidrhost", &[s("fd00:fd12:3456:7890::/56"), n(34.0)]).unwrap(),
            s("fd00:fd12:3456:7800::22")
        );
        assert!(c("cidrhost", &[s("10.0.0.0/24"), n(256.0)]).is_err());
        assert_eq!(
            c("cidrsubnet", &[s("172.16.0.0/12"), n(4.0), n(2.0)]).unwrap(),
            s("172.18.0.0/16")
        );
        assert_eq!(
            c("cidrsubnet", &[s("10.1.2.0/24"), n(4.0), n(15.0)]).unwrap(),
            s("10.1.2.240/28")
        );
        assert_eq!(
            c(
                "cidrsubnet",
                &[s("fd00:fd12:3456:7890::/56"), n(16.0), n(162.0)]
            )
            .unwrap(),
            s("fd00:fd12:3456:7800:a200::/72")
        );
        assert!(c("cidrsubnet", &[s("10.0.0.0/24"), n(4.0), n(16.0)]).is_err());
        assert_eq!(
            c("cidrnetmask", &[s("172.16.0.0/12")]).unwrap(),
            s("255.240.0.0")
        );
        assert!(c("cidrhost", &[s("nope"), n(1.0)])
            .unwrap_err()
            .contains("CIDR"));
    }

    #[test]
    fn strings() {
        assert_eq!(
            c(
                "format",
                &[
                    s("%s-%03d-%.2f-%v-%5s|%-3s|"),
                    s("a"),
                    n(7.0),
                    n(1.5),
                    Value::Bool(true),
                    s("x"),
                    s("y")
                ]
            )
            .unwrap(),
            s("a-007-1.50-true-    x|y  |")
        );
        assert_eq!(
            c("format", &[s("%q %%"), s("a\"b")]).unwrap(),
            s("\"a\\\"b\" %")
        );
        assert!(c("format", &[s("%s %s"), s("a")])
            .unwrap_err()
            .contains("not enough arguments"));
        assert_eq!(
            c("join", &[s(","), l(&[s("a"), s("b")]), l(&[s("c")])]).unwrap(),
            s("a,b,c")
        );
        assert_eq!(
            c("split", &[s(","), s("a,b")]).unwrap(),
            l(&[s("a"), s("b")])
        );
        assert_eq!(
            c("replace", &[s("a-b-c"), s("-"), s("_")]).unwrap(),
            s("a_b_c")
        );
        assert_eq!(
            c("replace", &[s("a1b22"), s("/[0-9]+/"), s("#")]).unwrap(),
            s("a#b#")
        );
        assert_eq!(
            c(
                "regex_replace",
                &[s("ubuntu-22.04"), s("([a-z]+)-(.*)"), s("$2/$1")]
            )
            .unwrap(),
            s("22.04/ubuntu")
        );
        assert_eq!(c("regex", &[s("[0-9]+"), s("ab12cd")]).unwrap(), s("12"));
        assert_eq!(
            c("regex", &[s("(?P<a>[a-z]+)-(?P<n>[0-9]+)"), s("x-1")]).unwrap(),
            Value::Map([("a".to_string(), s("x")), ("n".to_string(), s("1"))].into())
        );
        assert_eq!(
            c("regexall", &[s("[0-9]"), s("a1b2")]).unwrap(),
            l(&[s("1"), s("2")])
        );
        assert_eq!(
            c("substr", &[s("hello"), n(1.0), n(3.0)]).unwrap(),
            s("ell")
        );
        assert_eq!(
            c("substr", &[s("hello"), n(-3.0), n(-1.0)]).unwrap(),
            s("llo")
        );
        assert_eq!(c("trim", &[s("?!hello?!"), s("!?")]).unwrap(), s("hello"));
        assert_eq!(
            c("trimprefix", &[s("ami-123"), s("ami-")]).unwrap(),
            s("123")
        );
        assert_eq!(c("chomp", &[s("x\n\n")]).unwrap(), s("x"));
        assert_eq!(c("title", &[s("hello world")]).unwrap(), s("Hello World"));
        assert_eq!(c("indent", &[n(2.0), s("a\nb")]).unwrap(), s("a\n  b"));
    }

    #[test]
    fn collections() {
        let m = Value::Map([("a".to_string(), n(1.0)), ("b".to_string(), n(2.0))].into());
        assert_eq!(
            c("keys", std::slice::from_ref(&m)).unwrap(),
            l(&[s("a"), s("b")])
        );
        assert_eq!(
            c("values", std::slice::from_ref(&m)).unwrap(),
            l(&[n(1.0), n(2.0)])
        );
        assert_eq!(c("lookup", &[m.clone(), s("z"), s("d")]).unwrap(), s("d"));
        assert!(c("lookup", &[m.clone(), s("aa")])
            .unwrap_err()
            .contains("did you mean a"));
        assert_eq!(c("length", &[m]).unwrap(), n(2.0));
        assert_eq!(
            c("element", &[l(&[s("a"), s("b")]), n(3.0)]).unwrap(),
            s("b")
        );
        assert_eq!(
            c("flatten", &[l(&[l(&[s("a")]), s("b"), l(&[l(&[s("c")])])])]).unwrap(),
            l(&[s("a"), s("b"), s("c")])
        );
        assert_eq!(
            c("coalesce", &[Value::Null, s(""), s("x")]).unwrap(),
            s("x")
        );
        assert_eq!(
            c("concat", &[l(&[s("a")]), l(&[s("b")])]).unwrap(),
            l(&[s("a"), s("b")])
        );
        assert_eq!(
            c("contains", &[l(&[s("a")]), s("a")]).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            c("distinct", &[l(&[s("a"), s("a"), s("b")])]).unwrap(),
            l(&[s("a"), s("b")])
        );
        assert_eq!(c("range", &[n(3.0)]).unwrap(), l(&[n(0.0), n(1.0), n(2.0)]));
        assert_eq!(
            c("zipmap", &[l(&[s("k")]), l(&[n(1.0)])]).unwrap(),
            Value::Map([("k".to_string(), n(1.0))].into())
        );
        assert_eq!(c("tonumber", &[s("5")]).unwrap(), n(5.0));
        assert_eq!(c("max", &[n(1.0), n(5.0), n(3.0)]).unwrap(), n(5.0));
    }

    #[test]
    fn encodings_hashes_and_time() {
        assert_eq!(
            c(
                "jsonencode",
                &[Value::Map(
                    [("a".to_string(), l(&[n(1.0), Value::Bool(true)]))].into()
                )]
            )
            .unwrap(),
            s("{\"a\":[1,true]}")
        );
        assert_eq!(
            c("jsondecode", &[s("{\"a\": [1, \"x\"]}")]).unwrap(),
            Value::Map([("a".to_string(), l(&[n(1.0), s("x")]))].into())
        );
        assert_eq!(c("base64encode", &[s("hello")]).unwrap(), s("aGVsbG8="));
        assert_eq!(c("base64decode", &[s("aGVsbG8=")]).unwrap(), s("hello"));
        assert_eq!(
            c("md5", &[s("hello")]).unwrap(),
            s("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(
            c("sha256", &[s("hello")]).unwrap(),
            s("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(
            c("sha1", &[s("hello")]).unwrap(),
            s("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
        );
        assert_eq!(c("timestamp", &[]).unwrap(), s("2024-03-05T14:07:09Z"));
        assert_eq!(
            c(
                "formatdate",
                &[
                    s("YYYYMMDD-hhmmss 'at' EEE, DD MMM YY h:mm AA ZZZ"),
                    s("2024-03-05T14:07:09Z")
                ]
            )
            .unwrap(),
            s("20240305-140709 at Tue, 05 Mar 24 14:07 PM UTC")
        );
        assert_eq!(
            c("timeadd", &[s("2024-03-05T14:07:09Z"), s("1h30m")]).unwrap(),
            s("2024-03-05T15:37:09Z")
        );
        assert_eq!(
            c("legacy_isotime", &[s("2006-01-02")]).unwrap(),
            s("2024-03-05")
        );
        assert_eq!(c("uuidv4", &[]).unwrap().to_string().len(), 36);
        assert_eq!(
            c("uuidv5", &[s("dns"), s("example.com")]).unwrap(),
            s("cfbff0d1-9375-5685-968c-48ce8b15ae17")
        );
    }

    #[test]
    fn refusals_name_the_function() {
        assert!(c("vault", &[s("a"), s("b")])
            .unwrap_err()
            .contains("function `vault` is not supported"));
        assert!(c("fromat", &[s("a")])
            .unwrap_err()
            .contains("did you mean format?"));
        assert!(c("env", &[s("HOME")])
            .unwrap_err()
            .contains("only be used in a variable's default"));
        let secret = Value::String(Text {
            s: "{{user `pw`}}".into(),
            later: vec!["var.pw".into()],
        });
        assert!(c("upper", std::slice::from_ref(&secret))
            .unwrap_err()
            .contains("`upper` cannot take var.pw"));
        let joined = c("join", &[s(":"), l(&[s("u"), secret.clone()])]).unwrap();
        assert_eq!(
            joined,
            Value::String(Text {
                s: "u:{{user `pw`}}".into(),
                later: vec!["var.pw".into()]
            })
        );
        assert!(c("format", &[s("%5s"), secret])
            .unwrap_err()
            .contains("`format` with %s cannot take var.pw"));
    }
}
