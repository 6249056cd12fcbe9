//! User variables: defaults, -var-file, -var, required ones, and their interpolation.
//!
//! Precedence as in Packer: declared default < -var-file (in the order given) < -var (in
//! the order given). Every value is then rendered: `{{env `X`}}` is allowed here and only
//! here, and a variable may use another one with `{{user `name`}}` (loops are reported).
//!
//! As Packer does, a -var or -var-file variable the template does not declare is ignored
//! with a warning naming it (one var-file often serves several templates), and `null` in a
//! var-file is the empty string, which gives a required variable its value.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::eval::{self, Data, Scope};
use super::limits::{Budget, MAX_VARIABLE_CHAIN, NODE_COST};
use super::raw::VarDecl;
use crate::problem::Problem;

pub(crate) struct VarInputs<'a> {
    pub decls: &'a [VarDecl],
    /// Each -var-file: where it came from (for messages) and its parsed JSON.
    pub files: Vec<(String, Value)>,
    pub vars: &'a [(String, String)],
    pub env: &'a BTreeMap<String, String>,
    pub time: DateTime<Utc>,
    pub template_dir: Option<&'a str>,
    /// What the whole template may expand to; the variables' values count against it.
    pub budget: &'a Budget,
}

/// The variables of a template resolved: values, problems, and warnings (each a line for
/// the user, naming the variable).
pub(crate) struct Resolved {
    /// The rendered value of every variable that could be resolved.
    pub values: BTreeMap<String, String>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

pub(crate) fn resolve(inputs: &VarInputs) -> Resolved {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut raw: BTreeMap<String, Option<String>> = inputs
        .decls
        .iter()
        .map(|d| (d.name.clone(), d.default.clone()))
        .collect();
    let declared_list = || {
        let names: Vec<&str> = inputs.decls.iter().map(|d| d.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };

    for (origin, content) in &inputs.files {
        let Value::Object(map) = content else {
            problems.push(Problem::new(format!(
                "-var-file {origin}: must be a JSON object of \"name\": \"value\""
            )));
            continue;
        };
        for (name, value) in map {
            let Some(slot) = raw.get_mut(name) else {
                warnings.push(format!(
                    "-var-file {origin}: variable `{name}` is not declared in the template's \"variables\" (declared: {}): ignored",
                    declared_list()
                ));
                continue;
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    problems.push(Problem::new(format!(
                        "-var-file {origin}: variable `{name}` must be a string"
                    )));
                    continue;
                }
            };
            *slot = Some(text);
        }
    }
    for (name, value) in inputs.vars {
        match raw.get_mut(name) {
            Some(slot) => *slot = Some(value.clone()),
            None => warnings.push(format!(
                "-var {name}=…: variable `{name}` is not declared in the template's \"variables\" (declared: {}): ignored",
                declared_list()
            )),
        }
    }
    for (name, value) in &raw {
        if value.is_none() {
            problems.push(Problem::key(
                format!("variables.{name}"),
                format!("variable `{name}` is required (declared null) but not given: pass -var '{name}=VALUE' or set it in a -var-file"),
            ));
        }
    }

    let resolver = Resolver {
        raw: &raw,
        inputs,
        done: RefCell::new(BTreeMap::new()),
        visiting: RefCell::new(Vec::new()),
        reported_limit: Cell::new(false),
    };
    for (name, value) in &raw {
        if value.is_some() {
            let _ = resolver.resolve(name);
        }
    }
    let mut values = BTreeMap::new();
    for (name, result) in resolver.done.into_inner() {
        match result {
            Ok(v) => {
                values.insert(name, v);
            }
            Err(Some(msg)) => problems.push(Problem::key(format!("variables.{name}"), msg)),
            // It uses a variable whose own problem is reported.
            Err(None) => {}
        }
    }
    Resolved {
        values,
        problems,
        warnings,
    }
}

enum Failure {
    /// This variable's own value is wrong: it is reported.
    Own,
    /// A variable it uses is wrong: that one is reported.
    Dependency,
    /// The variable was reached again while being resolved.
    Loop(String),
    /// A limit was reached (chain length, total size): reported once, by the variable
    /// that reached it.
    Limit(String),
}

struct Resolver<'a> {
    raw: &'a BTreeMap<String, Option<String>>,
    inputs: &'a VarInputs<'a>,
    /// Per variable: its value, or `Some(message)` for its own problem, `None` when a
    /// variable it uses has the problem.
    done: RefCell<BTreeMap<String, Result<String, Option<String>>>>,
    visiting: RefCell<Vec<String>>,
    /// A limit's problem is reported once: the variables past it fail quietly.
    reported_limit: Cell<bool>,
}

impl Resolver<'_> {
    fn resolve(&self, name: &str) -> Result<String, Failure> {
        if let Some(r) = self.done.borrow().get(name) {
            return r.clone().map_err(|_| Failure::Dependency);
        }
        let Some(Some(text)) = self.raw.get(name) else {
            return Err(Failure::Dependency);
        };
        if let Some(pos) = self.visiting.borrow().iter().position(|v| v == name) {
            let mut chain: Vec<String> = self.visiting.borrow()[pos..].to_vec();
            chain.push(name.to_string());
            return Err(Failure::Loop(format!(
                "variables use each other in a loop: {}",
                chain.join(" → ")
            )));
        }
        let depth = self.visiting.borrow().len();
        if depth >= MAX_VARIABLE_CHAIN {
            let chain = self.visiting.borrow();
            return Err(Failure::Limit(format!(
                "variables use each other in a chain longer than {MAX_VARIABLE_CHAIN} (the limit): `{}` → `{}` → … → `{}` → `{name}`; shorten the chain",
                chain[0],
                chain[1],
                chain[depth - 1]
            )));
        }
        self.visiting.borrow_mut().push(name.to_string());
        let dependency_failed = RefCell::new(false);
        let user = |dep: &str| -> Result<String, String> {
            match self.raw.get(dep) {
                None => Err(format!("variable `{dep}` is not declared in \"variables\"")),
                Some(_) => self.resolve(dep).map_err(|f| match f {
                    Failure::Loop(m) => m,
                    Failure::Limit(m) if !self.reported_limit.replace(true) => m,
                    Failure::Own | Failure::Dependency | Failure::Limit(_) => {
                        *dependency_failed.borrow_mut() = true;
                        format!("variable `{dep}` has no value")
                    }
                }),
            }
        };
        let env = |k: &str| self.inputs.env.get(k).cloned().unwrap_or_default();
        let scope = Scope {
            time: Some(self.inputs.time),
            user: Some(&user),
            env: Some(&env),
            build_name: None,
            build_type: None,
            template_dir: self.inputs.template_dir,
            data: Data::Unavailable("variables are rendered before any build starts"),
        };
        let result = eval::render(text, &scope);
        self.visiting.borrow_mut().pop();
        let (stored, out) = match result {
            // Past the template's total, which `prepare` reports once.
            Ok(v) if !self.inputs.budget.charge(v.len() + NODE_COST) => {
                (Err(None), Err(Failure::Dependency))
            }
            Ok(v) => (Ok(v.clone()), Ok(v)),
            Err(_) if *dependency_failed.borrow() => (Err(None), Err(Failure::Dependency)),
            Err(e) => (Err(Some(e.describe(text))), Err(Failure::Own)),
        };
        self.done.borrow_mut().insert(name.to_string(), stored);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn decl(name: &str, default: Option<&str>) -> VarDecl {
        VarDecl {
            name: name.into(),
            default: default.map(String::from),
        }
    }

    fn run(
        decls: &[VarDecl],
        files: Vec<(String, Value)>,
        vars: &[(String, String)],
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let (v, p, _) = run_warned(decls, files, vars);
        (v, p)
    }

    /// [`run`] with the warnings too.
    fn run_warned(
        decls: &[VarDecl],
        files: Vec<(String, Value)>,
        vars: &[(String, String)],
    ) -> (BTreeMap<String, String>, Vec<String>, Vec<String>) {
        let env: BTreeMap<String, String> = [("HOME".to_string(), "/home/me".to_string())].into();
        let budget = Budget::default();
        let inputs = VarInputs {
            decls,
            files,
            vars,
            env: &env,
            time: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            template_dir: None,
            budget: &budget,
        };
        let r = resolve(&inputs);
        (
            r.values,
            r.problems.iter().map(ToString::to_string).collect(),
            r.warnings,
        )
    }

    #[test]
    fn precedence_default_file_var() {
        let decls = [
            decl("a", Some("default")),
            decl("b", Some("default")),
            decl("c", Some("default")),
        ];
        let files = vec![
            (
                "f1.json".into(),
                serde_json::json!({"a": "file1", "b": "file1"}),
            ),
            ("f2.json".into(), serde_json::json!({"b": "file2"})),
        ];
        let vars = [("a".to_string(), "cli".to_string())];
        let (v, p) = run(&decls, files, &vars);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            (v["a"].as_str(), v["b"].as_str(), v["c"].as_str()),
            ("cli", "file2", "default")
        );
    }

    #[test]
    fn env_user_and_functions_in_variables() {
        let decls = [
            decl("home", Some("{{env `HOME`}}")),
            decl("dir", Some("{{user `home`}}/x-{{timestamp}}")),
            decl("none", Some("{{env `NOPE`}}")),
        ];
        let (v, p) = run(&decls, vec![], &[]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(v["dir"], "/home/me/x-1700000000");
        assert_eq!(v["none"], "");
    }

    #[test]
    fn required_undeclared_and_loops() {
        let decls = [
            decl("req", None),
            decl("uses_req", Some("{{user `req`}}")),
            decl("x", Some("{{user `y`}}")),
            decl("y", Some("{{user `x`}}")),
            decl("u", Some("{{user `ghost`}}")),
        ];
        let vars = [("typo".to_string(), "1".to_string())];
        let (_, p, warnings) = run_warned(
            &decls,
            vec![("vf.json".into(), serde_json::json!({"other": "1"}))],
            &vars,
        );
        let all = p.join("\n");
        assert!(
            all.contains("variable `req` is required") && all.contains("-var 'req=VALUE'"),
            "{all}"
        );
        // Undeclared -var and -var-file variables are ignored with a warning, as in Packer.
        let warned = warnings.join("\n");
        assert!(
            warned.contains("-var typo=…: variable `typo` is not declared"),
            "{warned}"
        );
        assert!(
            warned.contains("-var-file vf.json: variable `other` is not declared"),
            "{warned}"
        );
        assert!(!all.contains("not declared in the template"), "{all}");
        assert!(all.contains("in a loop"), "{all}");
        assert!(all.contains("variable `ghost` is not declared"), "{all}");
        // `uses_req` fails only because `req` does: reported once, for `req`.
        assert!(!all.contains("variables.uses_req"), "{all}");
        assert_eq!(all.matches("in a loop").count(), 1, "{all}");
    }
}
