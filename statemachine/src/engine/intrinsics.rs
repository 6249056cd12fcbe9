//! Intrinsic functions in `.$` values: `States.Format('{} of {}', $.a, 3)` and friends.
//!
//! Errors are `States.IntrinsicFailure`-worthy messages; the caller names the error.

use serde_json::{Map, Value};

use super::path;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Literal(Value),
    Path(String),
    Call(String, Vec<Arg>),
}

/// Evaluates an intrinsic call expression against the state input and the context object.
pub fn evaluate(expr: &str, input: &Value, context: &Value) -> Result<Value, String> {
    let mut parser = Parser {
        chars: expr.chars().collect(),
        pos: 0,
        text: expr,
    };
    parser.skip_ws();
    let call = parser.call()?;
    parser.skip_ws();
    if parser.pos != parser.chars.len() {
        return Err(format!("unexpected text after the call in {expr:?}"));
    }
    eval(&call, input, context)
}

/// Whether a `.$` value is an intrinsic call rather than a path.
pub fn is_call(expr: &str) -> bool {
    expr.trim_start().starts_with("States.")
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, why: &str) -> String {
        format!(
            "invalid intrinsic function {:?} at {}: {why}",
            self.text, self.pos
        )
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }
    fn call(&mut self) -> Result<Arg, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '.') {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if !name.starts_with("States.") {
            return Err(self.err("expected a States.<Function> name"));
        }
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.err("expected '('"));
        }
        self.pos += 1;
        let mut args = Vec::new();
        self.skip_ws();
        if self.peek() == Some(')') {
            self.pos += 1;
            return Ok(Arg::Call(name, args));
        }
        loop {
            self.skip_ws();
            args.push(self.arg()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(Arg::Call(name, args));
                }
                _ => return Err(self.err("expected ',' or ')'")),
            }
        }
    }
    fn arg(&mut self) -> Result<Arg, String> {
        match self.peek() {
            Some('\'') => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated string")),
                        Some('\\') => {
                            // Escapes keep `\{` and `\}` distinct from placeholders until Format runs.
                            let next = self
                                .chars
                                .get(self.pos + 1)
                                .copied()
                                .ok_or_else(|| self.err("dangling '\\'"))?;
                            if next == '{' || next == '}' {
                                s.push('\\');
                            }
                            s.push(next);
                            self.pos += 2;
                        }
                        Some('\'') => {
                            self.pos += 1;
                            return Ok(Arg::Literal(Value::String(s)));
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some('$') => {
                let start = self.pos;
                let mut depth = 0;
                let mut quote: Option<char> = None;
                while let Some(c) = self.peek() {
                    match (quote, c) {
                        (Some(q), c) if c == q => quote = None,
                        (Some(_), _) => {}
                        (None, '\'' | '"') => quote = Some(c),
                        (None, '[') => depth += 1,
                        (None, ']') => depth -= 1,
                        (None, ',' | ')') if depth == 0 => break,
                        _ => {}
                    }
                    self.pos += 1;
                }
                Ok(Arg::Path(
                    self.chars[start..self.pos]
                        .iter()
                        .collect::<String>()
                        .trim_end()
                        .to_string(),
                ))
            }
            Some('S') => self.call(),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',' && c != ')') {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_string();
                match serde_json::from_str::<Value>(&word) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                        Ok(Arg::Literal(v))
                    }
                    _ => Err(self.err(&format!(
                        "{word:?} is not a string, number, boolean, null, path or call"
                    ))),
                }
            }
        }
    }
}

fn eval(arg: &Arg, input: &Value, context: &Value) -> Result<Value, String> {
    match arg {
        Arg::Literal(v) => Ok(v.clone()),
        Arg::Path(p) => path::read(p, input, context)?
            .ok_or_else(|| format!("path {p} selects nothing in the input")),
        Arg::Call(name, args) => {
            let values = args
                .iter()
                .map(|a| eval(a, input, context))
                .collect::<Result<Vec<_>, _>>()?;
            call(name, values)
        }
    }
}

fn want_args(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!("{name} takes {n} argument(s), got {}", args.len()));
    }
    Ok(())
}

fn as_array<'a>(name: &str, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{name}: expected an array, got {v}"))
}

fn as_i64(name: &str, v: &Value) -> Result<i64, String> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| format!("{name}: expected an integer, got {v}"))
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    match name {
        "States.Format" => {
            let template = args
                .first()
                .and_then(Value::as_str)
                .ok_or("States.Format: the first argument must be a string")?;
            let mut values = args[1..].iter();
            let mut out = String::new();
            let mut chars = template.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '{' if chars.peek() == Some(&'}') => {
                        chars.next();
                        let v = values
                            .next()
                            .ok_or("States.Format: fewer arguments than {} placeholders")?;
                        match v {
                            Value::String(s) => out.push_str(s),
                            Value::Array(_) | Value::Object(_) => return Err("States.Format: arguments must be strings, numbers, booleans or null".into()),
                            other => out.push_str(&other.to_string()),
                        }
                    }
                    c => out.push(c),
                }
            }
            if values.next().is_some() {
                return Err("States.Format: more arguments than {} placeholders".into());
            }
            Ok(Value::String(out))
        }
        "States.StringToJson" => {
            want_args(name, &args, 1)?;
            let s = args[0]
                .as_str()
                .ok_or("States.StringToJson: expected a string")?;
            serde_json::from_str(s).map_err(|e| format!("States.StringToJson: not JSON: {e}"))
        }
        "States.JsonToString" => {
            want_args(name, &args, 1)?;
            Ok(Value::String(args[0].to_string()))
        }
        "States.Array" => Ok(Value::Array(args)),
        "States.ArrayLength" => {
            want_args(name, &args, 1)?;
            Ok(Value::from(as_array(name, &args[0])?.len()))
        }
        "States.ArrayContains" => {
            want_args(name, &args, 2)?;
            Ok(Value::Bool(as_array(name, &args[0])?.contains(&args[1])))
        }
        "States.ArrayGetItem" => {
            want_args(name, &args, 2)?;
            let i = as_i64(name, &args[1])?;
            as_array(name, &args[0])?
                .get(i as usize)
                .cloned()
                .ok_or_else(|| format!("States.ArrayGetItem: index {i} is out of range"))
        }
        "States.ArrayPartition" => {
            want_args(name, &args, 2)?;
            let size = as_i64(name, &args[1])?;
            if size <= 0 {
                return Err("States.ArrayPartition: the chunk size must be positive".into());
            }
            Ok(Value::Array(
                as_array(name, &args[0])?
                    .chunks(size as usize)
                    .map(|c| Value::Array(c.to_vec()))
                    .collect(),
            ))
        }
        "States.ArrayRange" => {
            want_args(name, &args, 3)?;
            let (start, end, step) = (
                as_i64(name, &args[0])?,
                as_i64(name, &args[1])?,
                as_i64(name, &args[2])?,
            );
            if step == 0 {
                return Err("States.ArrayRange: the step must not be 0".into());
            }
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i <= end) || (step < 0 && i >= end) {
                out.push(Value::from(i));
                i += step;
                if out.len() > 1000 {
                    return Err("States.ArrayRange: more than 1000 items".into());
                }
            }
            Ok(Value::Array(out))
        }
        "States.ArrayUnique" => {
            want_args(name, &args, 1)?;
            let mut out: Vec<Value> = Vec::new();
            for v in as_array(name, &args[0])? {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(Value::Array(out))
        }
        "States.JsonMerge" => {
            want_args(name, &args, 3)?;
            let (Some(a), Some(b)) = (args[0].as_object(), args[1].as_object()) else {
                return Err("States.JsonMerge: the first two arguments must be objects".into());
            };
            if args[2] != Value::Bool(false) {
                return Err("States.JsonMerge: only a shallow merge (third argument false) is supported, as in Step Functions".into());
            }
            let mut merged: Map<String, Value> = a.clone();
            merged.extend(b.clone());
            Ok(Value::Object(merged))
        }
        "States.UUID" => {
            want_args(name, &args, 0)?;
            Ok(Value::String(uuid::Uuid::new_v4().to_string()))
        }
        "States.MathAdd" => {
            want_args(name, &args, 2)?;
            let (Some(a), Some(b)) = (args[0].as_f64(), args[1].as_f64()) else {
                return Err("States.MathAdd: both arguments must be numbers".into());
            };
            Ok(number(a + b))
        }
        "States.MathRandom" => {
            if !(2..=3).contains(&args.len()) {
                return Err("States.MathRandom takes 2 or 3 arguments".into());
            }
            let (lo, hi) = (as_i64(name, &args[0])?, as_i64(name, &args[1])?);
            if hi <= lo {
                return Err("States.MathRandom: the end must be greater than the start".into());
            }
            Ok(Value::from(rand::random_range(lo..hi)))
        }
        "States.StringSplit" => {
            want_args(name, &args, 2)?;
            let (Some(s), Some(sep)) = (args[0].as_str(), args[1].as_str()) else {
                return Err("States.StringSplit: both arguments must be strings".into());
            };
            // Step Functions splits on any of the delimiter's characters and drops empty parts.
            Ok(Value::Array(
                s.split(|c| sep.contains(c))
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.into()))
                    .collect(),
            ))
        }
        other => Err(format!("unsupported intrinsic function {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(expr: &str, input: Value) -> Result<Value, String> {
        evaluate(expr, &input, &json!({"Execution": {"Name": "ex"}}))
    }

    #[test]
    fn format_fills_placeholders_with_paths_literals_and_escapes() {
        assert_eq!(
            ev(
                "States.Format('{} built {} AMIs for {}', $.name, 2, $$.Execution.Name)",
                json!({"name": "web"})
            )
            .unwrap(),
            json!("web built 2 AMIs for ex")
        );
        assert_eq!(
            ev(r"States.Format('it\'s \{literal\} {}', true)", json!({})).unwrap(),
            json!("it's {literal} true")
        );
        assert!(ev("States.Format('{} {}', 1)", json!({})).is_err());
        assert!(ev("States.Format('{}', $.missing)", json!({})).is_err());
    }

    #[test]
    fn json_round_trip_arrays_merge_math_uuid() {
        assert_eq!(
            ev("States.StringToJson($.s)", json!({"s": "{\"a\":[1]}"})).unwrap(),
            json!({"a": [1]})
        );
        assert_eq!(
            ev("States.JsonToString($.o)", json!({"o": {"a": 1}})).unwrap(),
            json!("{\"a\":1}")
        );
        assert_eq!(
            ev(
                "States.Array(1, 'two', $.x, States.Array())",
                json!({"x": null})
            )
            .unwrap(),
            json!([1, "two", null, []])
        );
        assert_eq!(
            ev("States.ArrayLength($.l)", json!({"l": [1, 2, 3]})).unwrap(),
            json!(3)
        );
        assert_eq!(
            ev(
                "States.JsonMerge($.a, $.b, false)",
                json!({"a": {"x": 1, "y": 1}, "b": {"y": 2}})
            )
            .unwrap(),
            json!({"x": 1, "y": 2})
        );
        assert!(ev("States.JsonMerge($.a, $.a, true)", json!({"a": {}})).is_err());
        assert_eq!(
            ev("States.MathAdd($.n, -1)", json!({"n": 5})).unwrap(),
            json!(4)
        );
        assert_eq!(ev("States.MathAdd(1.5, 1)", json!({})).unwrap(), json!(2.5));
        let id = ev("States.UUID()", json!({})).unwrap();
        assert!(uuid::Uuid::parse_str(id.as_str().unwrap()).is_ok());
        assert_eq!(
            ev("States.ArrayRange(1, 9, 4)", json!({})).unwrap(),
            json!([1, 5, 9])
        );
        assert_eq!(
            ev("States.ArrayPartition($.l, 2)", json!({"l": [1, 2, 3]})).unwrap(),
            json!([[1, 2], [3]])
        );
        assert_eq!(
            ev("States.StringSplit('a,b,,c', ',')", json!({})).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            ev("States.ArrayGetItem($['l'], 1)", json!({"l": [7, 8]})).unwrap(),
            json!(8)
        );
    }

    #[test]
    fn rejects_unknown_functions_and_bad_syntax() {
        assert!(ev("States.Nope(1)", json!({})).is_err());
        assert!(ev("States.Format('x'", json!({})).is_err());
        assert!(ev("States.Format('x') extra", json!({})).is_err());
        assert!(ev("States.Array(bogus)", json!({})).is_err());
    }
}
