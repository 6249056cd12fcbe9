//! Choice rule evaluation.

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use super::path;
use crate::model::{ChoiceRule, Comparison, Condition};

/// Whether `rule` holds for `input`. A missing Variable is an error (Step Functions raises
/// States.Runtime) except for IsPresent, which exists to test for it.
pub fn matches(rule: &ChoiceRule, input: &Value, context: &Value) -> Result<bool, String> {
    match &rule.condition {
        Condition::And(rules) => {
            for r in rules {
                if !matches(r, input, context)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Condition::Or(rules) => {
            for r in rules {
                if matches(r, input, context)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Condition::Not(r) => Ok(!matches(r, input, context)?),
        Condition::Compare(c) => compare(c, input, context),
    }
}

fn timestamp(v: &Value) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

fn compare(c: &Comparison, input: &Value, context: &Value) -> Result<bool, String> {
    let var = path::read(&c.variable, input, context)?;
    if c.operator == "IsPresent" {
        return Ok(var.is_some() == (c.value == Value::Bool(true)));
    }
    let var = var.ok_or_else(|| {
        format!(
            "Invalid path '{}': the choice rule's Variable selects nothing in the input",
            c.variable
        )
    })?;
    let want = |b: bool| Ok(b == (c.value == Value::Bool(true)));
    match c.operator.as_str() {
        "IsNull" => return want(var.is_null()),
        "IsNumeric" => return want(var.is_number()),
        "IsString" => return want(var.is_string()),
        "IsBoolean" => return want(var.is_boolean()),
        "IsTimestamp" => return want(timestamp(&var).is_some()),
        "StringMatches" => {
            let (Some(s), Some(pattern)) = (var.as_str(), c.value.as_str()) else {
                return Ok(false);
            };
            return Ok(wildcard_match(pattern, s));
        }
        _ => {}
    }
    let (op, other) = match c.operator.strip_suffix("Path") {
        Some(op) => {
            let p = c
                .value
                .as_str()
                .ok_or_else(|| format!("{} needs a path string", c.operator))?;
            let v = path::read(p, input, context)?.ok_or_else(|| {
                format!("Invalid path '{p}' in {}: it selects nothing", c.operator)
            })?;
            (op, v)
        }
        None => (c.operator.as_str(), c.value.clone()),
    };
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = if op.starts_with("String") {
        match (var.as_str(), other.as_str()) {
            (Some(a), Some(b)) => Some(a.cmp(b)),
            _ => None,
        }
    } else if op.starts_with("Numeric") {
        match (var.as_f64(), other.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => None,
        }
    } else if op.starts_with("Timestamp") {
        match (timestamp(&var), timestamp(&other)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => None,
        }
    } else if op == "BooleanEquals" {
        return Ok(matches!((var.as_bool(), other.as_bool()), (Some(a), Some(b)) if a == b));
    } else {
        return Err(format!("unsupported Choice operator {}", c.operator));
    };
    // A type mismatch makes the comparison false, as in Step Functions.
    let Some(ordering) = ordering else {
        return Ok(false);
    };
    let suffix = op
        .trim_start_matches("String")
        .trim_start_matches("Numeric")
        .trim_start_matches("Timestamp");
    Ok(match suffix {
        "Equals" => ordering == Ordering::Equal,
        "LessThan" => ordering == Ordering::Less,
        "GreaterThan" => ordering == Ordering::Greater,
        "LessThanEquals" => ordering != Ordering::Greater,
        "GreaterThanEquals" => ordering != Ordering::Less,
        _ => return Err(format!("unsupported Choice operator {}", c.operator)),
    })
}

/// `*` matches any run of characters; `\*` is a literal star, `\\` a backslash.
fn wildcard_match(pattern: &str, s: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Star,
        Ch(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => toks.extend(chars.next().map(Tok::Ch)),
            '*' => toks.push(Tok::Star),
            c => toks.push(Tok::Ch(c)),
        }
    }
    let s: Vec<char> = s.chars().collect();
    // dp[j]: toks[..i] matches s[..j]
    let mut dp = vec![false; s.len() + 1];
    dp[0] = true;
    for t in &toks {
        let mut next = vec![false; s.len() + 1];
        match t {
            Tok::Star => {
                let mut any = false;
                for j in 0..=s.len() {
                    any |= dp[j];
                    next[j] = any;
                }
            }
            Tok::Ch(c) => {
                for j in 1..=s.len() {
                    next[j] = dp[j - 1] && s[j - 1] == *c;
                }
            }
        }
        dp = next;
    }
    dp[s.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> ChoiceRule {
        serde_json::from_value(v).unwrap()
    }
    fn m(r: Value, input: Value) -> Result<bool, String> {
        matches(&rule(r), &input, &json!({"State": {"Name": "C"}}))
    }

    #[test]
    fn string_numeric_boolean_timestamp_comparisons() {
        let input =
            json!({"s": "amazon-ebs", "n": 5, "b": true, "t": "2024-01-02T00:00:00Z", "other": 7});
        assert!(m(
            json!({"Variable": "$.s", "StringEquals": "amazon-ebs"}),
            input.clone()
        )
        .unwrap());
        assert!(!m(
            json!({"Variable": "$.s", "StringEquals": "amazon-chroot"}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.s", "StringLessThan": "amazon-f"}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.n", "NumericEquals": 5}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.n", "NumericGreaterThan": 4.5}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.n", "NumericLessThanEquals": 5}),
            input.clone()
        )
        .unwrap());
        assert!(!m(
            json!({"Variable": "$.n", "NumericLessThan": 5}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.n", "NumericGreaterThanEquals": 5}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.n", "NumericLessThanPath": "$.other"}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.b", "BooleanEquals": true}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$.t", "TimestampGreaterThan": "2024-01-01T23:59:59+00:00"}),
            input.clone()
        )
        .unwrap());
        // type mismatch is false, not an error
        assert!(!m(
            json!({"Variable": "$.s", "NumericEquals": 1}),
            input.clone()
        )
        .unwrap());
        assert!(m(
            json!({"Variable": "$$.State.Name", "StringEquals": "C"}),
            input
        )
        .unwrap());
    }

    #[test]
    fn presence_null_and_type_tests() {
        let input = json!({"x": null, "s": "a"});
        assert!(m(json!({"Variable": "$.x", "IsPresent": true}), input.clone()).unwrap());
        assert!(m(
            json!({"Variable": "$.y", "IsPresent": false}),
            input.clone()
        )
        .unwrap());
        assert!(m(json!({"Variable": "$.x", "IsNull": true}), input.clone()).unwrap());
        assert!(m(json!({"Variable": "$.s", "IsString": true}), input.clone()).unwrap());
        assert!(m(
            json!({"Variable": "$.s", "IsNumeric": false}),
            input.clone()
        )
        .unwrap());
        assert!(
            m(json!({"Variable": "$.y", "StringEquals": "a"}), input).is_err(),
            "a missing variable is a runtime error"
        );
    }

    #[test]
    fn and_or_not_and_string_matches() {
        let input = json!({"name": "web-2024.log", "n": 3});
        assert!(m(json!({"And": [{"Variable": "$.n", "NumericGreaterThan": 1}, {"Not": {"Variable": "$.n", "NumericEquals": 4}}]}), input.clone()).unwrap());
        assert!(m(json!({"Or": [{"Variable": "$.n", "NumericEquals": 1}, {"Variable": "$.name", "StringMatches": "web-*.log"}]}), input.clone()).unwrap());
        assert!(!m(
            json!({"Variable": "$.name", "StringMatches": "*.txt"}),
            input.clone()
        )
        .unwrap());
        assert!(wildcard_match(r"a\*b", "a*b"));
        assert!(!wildcard_match(r"a\*b", "axb"));
        assert!(wildcard_match("*", ""));
    }
}
