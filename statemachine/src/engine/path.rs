//! ASL reference paths: `$`, `$.a.b`, `$.a[0]`, `$['x y']`, and `[*]` / `.*` for reads.
//!
//! Hand-written because ResultPath needs *writes* (creating the objects on the way), which
//! the JSONPath crates evaluated (serde_json_path, jsonpath-rust, jsonpath_lib) do not do:
//! they only query. The grammar ASL allows in reference paths is small.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
    /// `[*]` or `.*`: every element (reads only; the result is an array).
    Wildcard,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub segments: Vec<Segment>,
}

impl Path {
    /// Parses `$…`. A `$$…` context path is parsed by the caller after stripping one `$`.
    pub fn parse(text: &str) -> Result<Path, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("path {text:?} must start with '$'"))?;
        let chars: Vec<char> = rest.chars().collect();
        let mut i = 0;
        let mut segments = Vec::new();
        let bad = |why: &str| format!("invalid path {text:?}: {why}");
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    let name: String = chars[start..i].iter().collect();
                    if name.is_empty() {
                        return Err(bad("empty name after '.'"));
                    }
                    segments.push(if name == "*" {
                        Segment::Wildcard
                    } else {
                        Segment::Key(name)
                    });
                }
                '[' => {
                    i += 1;
                    if i < chars.len() && (chars[i] == '\'' || chars[i] == '"') {
                        let quote = chars[i];
                        i += 1;
                        let mut name = String::new();
                        while i < chars.len() && chars[i] != quote {
                            if chars[i] == '\\' && i + 1 < chars.len() {
                                i += 1;
                            }
                            name.push(chars[i]);
                            i += 1;
                        }
                        if i + 1 >= chars.len() || chars[i + 1] != ']' {
                            return Err(bad("unterminated quoted name"));
                        }
                        i += 2;
                        segments.push(Segment::Key(name));
                    } else {
                        let start = i;
                        while i < chars.len() && chars[i] != ']' {
                            i += 1;
                        }
                        if i >= chars.len() {
                            return Err(bad("missing ']'"));
                        }
                        let inner: String = chars[start..i].iter().collect();
                        i += 1;
                        if inner.trim() == "*" {
                            segments.push(Segment::Wildcard);
                        } else {
                            let n = inner
                                .trim()
                                .parse::<usize>()
                                .map_err(|_| bad(&format!("[{inner}] is not an index")))?;
                            segments.push(Segment::Index(n));
                        }
                    }
                }
                c => return Err(bad(&format!("unexpected {c:?}"))),
            }
        }
        Ok(Path { segments })
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The value at this path, or None when any part is missing.
    pub fn get(&self, root: &Value) -> Option<Value> {
        get_from(&self.segments, root)
    }

    /// Writes `value` at this path inside `root`, creating objects on the way (ResultPath).
    /// Fails when the way passes through something that is not an object.
    pub fn set(&self, root: &mut Value, value: Value) -> Result<(), String> {
        if self.is_root() {
            *root = value;
            return Ok(());
        }
        let mut cur = root;
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if cur.is_null() {
                        *cur = Value::Object(Map::new());
                    }
                    let obj = cur.as_object_mut().ok_or_else(|| {
                        format!("cannot set field {k:?}: the value there is not an object")
                    })?;
                    if i == last {
                        obj.insert(k.clone(), value);
                        return Ok(());
                    }
                    cur = obj.entry(k.clone()).or_insert(Value::Null);
                }
                Segment::Index(n) => {
                    let arr = cur.as_array_mut().ok_or_else(|| {
                        format!("cannot set [{n}]: the value there is not an array")
                    })?;
                    let len = arr.len();
                    let slot = arr
                        .get_mut(*n)
                        .ok_or_else(|| format!("cannot set [{n}]: the array has {len} elements"))?;
                    if i == last {
                        *slot = value;
                        return Ok(());
                    }
                    cur = slot;
                }
                Segment::Wildcard => return Err("a ResultPath cannot contain '*'".into()),
            }
        }
        unreachable!("the loop returns at the last segment")
    }
}

fn get_from(segments: &[Segment], value: &Value) -> Option<Value> {
    let Some((first, rest)) = segments.split_first() else {
        return Some(value.clone());
    };
    match first {
        Segment::Key(k) => get_from(rest, value.as_object()?.get(k)?),
        Segment::Index(n) => get_from(rest, value.as_array()?.get(*n)?),
        Segment::Wildcard => {
            let items: Vec<&Value> = match value {
                Value::Array(a) => a.iter().collect(),
                Value::Object(o) => o.values().collect(),
                _ => return None,
            };
            Some(Value::Array(
                items
                    .into_iter()
                    .filter_map(|v| get_from(rest, v))
                    .collect(),
            ))
        }
    }
}

/// Reads a path that may be a context path (`$$.…`).
pub fn read(text: &str, input: &Value, context: &Value) -> Result<Option<Value>, String> {
    if let Some(ctx_path) = text.strip_prefix("$$") {
        Ok(Path::parse(&format!("${ctx_path}"))?.get(context))
    } else {
        Ok(Path::parse(text)?.get(input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_reference_path_forms() {
        assert!(Path::parse("$").unwrap().is_root());
        assert_eq!(
            Path::parse("$.a.b[2]['x y'][\"z\"]").unwrap().segments,
            vec![
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::Index(2),
                Segment::Key("x y".into()),
                Segment::Key("z".into())
            ]
        );
        assert!(Path::parse("a.b").is_err());
        assert!(Path::parse("$.").is_err());
        assert!(Path::parse("$[x]").is_err());
        assert!(Path::parse("$['x'").is_err());
    }

    #[test]
    fn reads_nested_values_and_wildcards() {
        let v = json!({"a": {"b": [10, {"c": true}]}, "list": [{"n": 1}, {"n": 2}]});
        assert_eq!(Path::parse("$.a.b[0]").unwrap().get(&v), Some(json!(10)));
        assert_eq!(
            Path::parse("$.a.b[1].c").unwrap().get(&v),
            Some(json!(true))
        );
        assert_eq!(Path::parse("$.a.missing").unwrap().get(&v), None);
        assert_eq!(Path::parse("$.a.b[5]").unwrap().get(&v), None);
        assert_eq!(
            Path::parse("$.list[*].n").unwrap().get(&v),
            Some(json!([1, 2]))
        );
    }

    #[test]
    fn writes_create_objects_on_the_way_and_refuse_non_objects() {
        let mut v = json!({"keep": 1});
        Path::parse("$.a.b.c")
            .unwrap()
            .set(&mut v, json!("x"))
            .unwrap();
        assert_eq!(v, json!({"keep": 1, "a": {"b": {"c": "x"}}}));
        Path::parse("$.keep")
            .unwrap()
            .set(&mut v, json!([1, 2]))
            .unwrap();
        Path::parse("$.keep[1]")
            .unwrap()
            .set(&mut v, json!(3))
            .unwrap();
        assert_eq!(v["keep"], json!([1, 3]));
        assert!(Path::parse("$.keep.x")
            .unwrap()
            .set(&mut v, json!(0))
            .is_err());
        let mut root = json!(1);
        Path::parse("$")
            .unwrap()
            .set(&mut root, json!({"r": 2}))
            .unwrap();
        assert_eq!(root, json!({"r": 2}));
    }

    #[test]
    fn context_paths_read_the_context_object() {
        let ctx = json!({"Execution": {"Name": "exec-1"}});
        assert_eq!(
            read("$$.Execution.Name", &json!({}), &ctx).unwrap(),
            Some(json!("exec-1"))
        );
        assert_eq!(read("$.x", &json!({"x": 2}), &ctx).unwrap(), Some(json!(2)));
    }
}
