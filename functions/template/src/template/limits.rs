//! Bounds on what a template may make the parser and the evaluator do, so that no input
//! aborts the process (stack overflow, memory exhausted) where a clear problem can be
//! reported instead. Each limit is far above what a real template uses: the Step Functions
//! state that carries the prepared builds holds 256 KB, and the Lambda that prepares them
//! has 256 MB.

use std::cell::Cell;

use crate::problem::Problem;

/// How deep `( ... )` sub-pipelines may nest in one action. The parser and the evaluator
/// recurse once per level.
pub const MAX_NESTING: usize = 100;

/// How many variables may use each other in a chain (`a` uses `b`, which uses `c`, …).
/// Resolving recurses once per variable of the chain.
pub const MAX_VARIABLE_CHAIN: usize = 100;

/// The longest value one `{{ ... }}` rendering, or one function's result, may produce.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The most the whole template may expand to: every variable's value and every string,
/// key and value of the prepared builds, each counted with [`NODE_COST`].
pub const MAX_TOTAL_BYTES: usize = 32 << 20;

/// What one JSON value costs besides its text (its place in a map or list).
pub const NODE_COST: usize = 32;

/// `n` bytes in the units of the messages (`1 MiB`).
pub fn shown(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// The message for a value over [`MAX_VALUE_BYTES`].
pub fn value_too_long() -> String {
    format!(
        "the rendered value is longer than {} (the limit of one value): \
         check for variables or functions that repeat a long text",
        shown(MAX_VALUE_BYTES)
    )
}

/// What the template has expanded to so far, against [`MAX_TOTAL_BYTES`]. Shared by the
/// variables and the builds of one `prepare`.
#[derive(Debug, Default)]
pub struct Budget {
    used: Cell<usize>,
}

impl Budget {
    /// Counts `bytes` more; false once the total is over the limit.
    pub fn charge(&self, bytes: usize) -> bool {
        self.used.set(self.used.get().saturating_add(bytes));
        !self.exhausted()
    }

    pub fn exhausted(&self) -> bool {
        self.used.get() > MAX_TOTAL_BYTES
    }

    /// The problem to report once the budget is exhausted.
    pub fn problem(&self) -> Option<Problem> {
        self.exhausted().then(|| {
            Problem::new(format!(
                "the template expands to more than {} (the limit): its variables and builds \
                 repeat large values too often; use fewer copies (a file provisioner for large \
                 content) or smaller values",
                shown(MAX_TOTAL_BYTES)
            ))
        })
    }
}

/// Each limit met by a template that would otherwise abort the process (stack overflow or
/// memory exhausted): `prepare` reports a problem, in-process, naming the key.
#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::{prepare, PrepareOptions};

    fn opts() -> PrepareOptions {
        PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"))
    }

    fn builder(name: &str, ami_name: &str) -> Value {
        json!({"type": "amazon-ebs", "name": name, "region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2",
               "instance_type": "t3.micro", "communicator": "none", "ami_name": ami_name})
    }

    /// The problems of a template that must not prepare.
    fn problems(tpl: &Value) -> String {
        match prepare(&tpl.to_string(), &opts()) {
            Ok(_) => panic!("expected problems"),
            Err(p) => p.to_string(),
        }
    }

    /// `v0` uses `v1`, …, the last is a literal.
    fn chain(n: usize) -> Map<String, Value> {
        (0..n)
            .map(|i| {
                let text = if i + 1 == n {
                    "end".to_string()
                } else {
                    format!("{{{{user `v{}`}}}}", i + 1)
                };
                (format!("v{i}"), Value::String(text))
            })
            .collect()
    }

    #[test]
    fn deep_parentheses_are_refused_naming_the_key() {
        let deep = 200_000;
        let ami_name = format!("{{{{{}timestamp{}}}}}", "(".repeat(deep), ")".repeat(deep));
        let all = problems(&json!({"builders": [builder("deep", &ami_name)]}));
        assert!(
            all.contains("deep: ami_name: parentheses nested more than 100 deep (the limit)"),
            "{all}"
        );
        // The message quotes the start of the value, not all 400 000 characters.
        assert!(all.len() < 1000, "{} characters", all.len());
        // At the limit itself the action parses and renders.
        let at_limit = format!(
            "x{{{{{}timestamp{}}}}}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        let tpl = json!({"builders": [builder("ok", &at_limit)]});
        let p = prepare(&tpl.to_string(), &opts()).expect("100 levels prepare");
        let config = serde_json::to_value(&p.builds[0].config).unwrap();
        assert_eq!(config["amazon-ebs"]["ami_name"], "x1700000000");
    }

    #[test]
    fn long_variable_chains_are_refused_once() {
        let all = problems(
            &json!({"variables": chain(100_000), "builders": [builder("b", "{{user `v0`}}")]}),
        );
        assert!(
            all.contains("variables use each other in a chain longer than 100 (the limit): `v"),
            "{all}"
        );
        assert_eq!(all.matches("chain longer than").count(), 1, "{all}");
        // A chain at the limit resolves (and fits the stack of a test thread).
        let tpl = json!({"variables": chain(MAX_VARIABLE_CHAIN), "builders": [builder("b", "{{user `v0`}}")]});
        let p = prepare(&tpl.to_string(), &opts()).expect("100 variables prepare");
        assert_eq!(p.variables["v0"], "end");
    }

    #[test]
    fn doubling_variables_stop_at_one_value_limit() {
        let mut vars = Map::new();
        vars.insert("d0".into(), json!("x".repeat(1024)));
        for i in 1..40 {
            let prev = format!("{{{{user `d{}`}}}}", i - 1);
            vars.insert(format!("d{i}"), json!(format!("{prev}{prev}")));
        }
        let all =
            problems(&json!({"variables": vars, "builders": [builder("b", "{{user `d39`}}")]}));
        // d10 is 1 MiB, d11 would be 2 MiB.
        assert!(
            all.contains(
                "variables.d11: the rendered value is longer than 1 MiB (the limit of one value)"
            ),
            "{all}"
        );
        assert_eq!(all.lines().count(), 1, "{all}");
    }

    #[test]
    fn functions_that_multiply_text_are_bounded() {
        let mut expr = "`aaaaaaaaaa`".to_string();
        for _ in 0..12 {
            expr = format!("(replace_all `a` `aaaaaaaaaa` {expr})");
        }
        let all = problems(&json!({"builders": [builder("b", &format!("{{{{ {expr} }}}}"))]}));
        assert!(
            all.contains("b: ami_name: the rendered value is longer than 1 MiB"),
            "{all}"
        );
    }

    #[test]
    fn total_expansion_is_bounded() {
        // Each value is under the limit of one value; 100 copies are not under the total.
        let mut vars = Map::new();
        vars.insert("big".into(), json!("y".repeat(512 << 10)));
        for i in 0..100 {
            vars.insert(format!("copy{i}"), json!("{{user `big`}}"));
        }
        let all = problems(&json!({"variables": vars, "builders": [builder("b", "ami")]}));
        assert!(
            all.contains("the template expands to more than 32 MiB (the limit)"),
            "{all}"
        );
        assert_eq!(all.lines().count(), 1, "{all}");
        // A provisioner is copied into every build: 200 builds of a 200 KiB script.
        let builders: Vec<Value> = (0..200).map(|i| builder(&format!("b{i}"), "ami")).collect();
        let tpl = json!({"builders": builders,
            "provisioners": [{"type": "shell", "inline": ["z".repeat(200 << 10)]}]});
        let all = problems(&tpl);
        assert!(
            all.contains("the template expands to more than 32 MiB (the limit)"),
            "{all}"
        );
        assert_eq!(all.lines().count(), 1, "{all}");
    }
}
