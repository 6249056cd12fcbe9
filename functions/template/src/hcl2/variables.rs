//! `variable` blocks and where their values come from, with Packer's precedence:
//! default < `PKR_VAR_name` environment variables < `*.auto.pkrvars.hcl` (name order)
//! < `-var-file` (in order given) < `-var` (in order given). Then each value is converted
//! to the variable's type, checked against `nullable`, and its `validation` blocks run.

use std::collections::BTreeMap;
use std::ops::Range;

use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::Span;

use super::eval::{Ctx, Diag, Evaluator, Place, VarValue};
use super::files::{syntax_problem, SourceFile};
use super::value::{convert, Type, Value};
use super::{block_label, did_you_mean, problem_at};
use crate::problem::Problem;

const VARIABLE_KEYS: [&str; 6] = [
    "default",
    "description",
    "nullable",
    "sensitive",
    "type",
    "validation",
];

pub(crate) struct VarDecl<'a> {
    pub name: String,
    pub file: usize,
    pub span: Option<Range<usize>>,
    pub ty: Type,
    /// `None`: no default, so a value must be given.
    pub default: Option<Value>,
    pub description: Option<String>,
    pub sensitive: bool,
    pub nullable: bool,
    pub validations: Vec<Validation<'a>>,
}

pub(crate) struct Validation<'a> {
    pub file: usize,
    pub span: Option<Range<usize>>,
    pub condition: &'a Expression,
    pub error_message: &'a Expression,
}

/// Reads a `variable "name" { ... }` block. `ev` evaluates defaults (constants, functions, `env`).
pub(crate) fn declare<'a>(
    block: &'a Block,
    file: usize,
    ev: &Evaluator,
    problems: &mut Vec<Problem>,
) -> Option<VarDecl<'a>> {
    let files = ev.files;
    let at = |span: Option<Range<usize>>| files[file].at(span);
    let name = block_label(block, 1, "variable \"name\"", &at, problems)?.remove(0);
    let mut decl = VarDecl {
        name: name.clone(),
        file,
        span: block.span(),
        ty: Type::Any,
        default: None,
        description: None,
        sensitive: false,
        nullable: true,
        validations: Vec::new(),
    };
    let what = format!("variable \"{name}\"");
    let cx = Ctx::new(file, Place::VarDefault);
    for s in block.body.iter() {
        match s {
            Structure::Attribute(a) => {
                let key = a.key.value().as_str();
                let value = || ev.eval(&a.value, &cx);
                match key {
                    "type" => match parse_type(&a.value) {
                        Ok(t) => decl.ty = t,
                        Err(m) => problems.push(problem_at(at(a.value.span()), &what, m)),
                    },
                    "default" => match value() {
                        Ok(v) => decl.default = Some(v),
                        Err(d) => push_diag(files, d, &what, problems),
                    },
                    "description" => {
                        if let Ok(v) = value() {
                            decl.description = Some(v.to_string());
                        }
                    }
                    "sensitive" | "nullable" => match value() {
                        Ok(Value::Bool(b)) if key == "sensitive" => decl.sensitive = b,
                        Ok(Value::Bool(b)) => decl.nullable = b,
                        Ok(other) => problems.push(problem_at(
                            at(a.value.span()),
                            &what,
                            format!(
                                "`{key}` must be true or false, found a {}",
                                other.type_name()
                            ),
                        )),
                        Err(d) => push_diag(files, d, &what, problems),
                    },
                    other => problems.push(problem_at(
                        at(a.key.span()),
                        &what,
                        format!(
                            "unknown attribute `{other}`{}",
                            did_you_mean_or_list(other, &VARIABLE_KEYS)
                        ),
                    )),
                }
            }
            Structure::Block(b) if b.ident.value().as_str() == "validation" => {
                let condition = b.body.get_attribute("condition");
                let message = b.body.get_attribute("error_message");
                for s in b.body.iter() {
                    let k = match s {
                        Structure::Attribute(a) => a.key.value().as_str().to_string(),
                        Structure::Block(bb) => bb.ident.value().as_str().to_string(),
                    };
                    if k != "condition" && k != "error_message" {
                        problems.push(problem_at(
                            at(s.span()),
                            &what,
                            format!(
                                "unknown `{k}` in a validation block{}",
                                did_you_mean_or_list(&k, &["condition", "error_message"])
                            ),
                        ));
                    }
                }
                match (condition, message) {
                    (Some(c), Some(m)) => decl.validations.push(Validation {
                        file,
                        span: b.span(),
                        condition: &c.value,
                        error_message: &m.value,
                    }),
                    _ => problems.push(problem_at(
                        at(b.span()),
                        &what,
                        "a validation block needs `condition` and `error_message`",
                    )),
                }
            }
            Structure::Block(b) => {
                let k = b.ident.value().as_str();
                problems.push(problem_at(
                    at(b.ident.span()),
                    &what,
                    format!(
                        "unknown block `{k}`{}",
                        did_you_mean_or_list(k, &VARIABLE_KEYS)
                    ),
                ));
            }
        }
    }
    if let Some(d) = decl.default.take() {
        match convert(d, &decl.ty) {
            Ok(v) => decl.default = Some(v),
            Err(m) => {
                let span = block
                    .body
                    .get_attribute("default")
                    .and_then(|a| a.value.span());
                problems.push(problem_at(
                    at(span),
                    &what,
                    format!("the default does not match type {}: {m}", decl.ty),
                ));
            }
        }
    }
    Some(decl)
}

/// `; did you mean X?` or the list of known names.
pub(crate) fn did_you_mean_or_list(name: &str, known: &[&str]) -> String {
    let hint = did_you_mean(name, known.iter().copied());
    if hint.is_empty() {
        format!(" (known: {})", known.join(", "))
    } else {
        hint
    }
}

pub(crate) fn push_diag(files: &[SourceFile], d: Diag, what: &str, problems: &mut Vec<Problem>) {
    if let Some(m) = d.message {
        problems.push(problem_at(files[d.file].at(d.span), what, m));
    }
}

/// A `type = ...` constraint: `string`, `list(string)`, `map(number)`,
/// `object({ a = string })`, `optional(...)` in objects, or the legacy quoted form.
pub(crate) fn parse_type(e: &Expression) -> Result<Type, String> {
    match e {
        Expression::Variable(v) => primitive(v.value().as_str()),
        Expression::String(s) => primitive(s.value()),
        Expression::FuncCall(f) => {
            let name = f.name.name.value().as_str();
            let args: Vec<&Expression> = f.args.iter().collect();
            let one = || -> Result<Type, String> {
                match args.as_slice() {
                    [a] => parse_type(a),
                    _ => Err(format!("{name}(...) takes one type, e.g. {name}(string)")),
                }
            };
            match name {
                "list" => Ok(Type::List(Box::new(one()?))),
                "set" => Ok(Type::Set(Box::new(one()?))),
                "map" => Ok(Type::Map(Box::new(one()?))),
                "tuple" => match args.as_slice() {
                    [Expression::Array(items)] => items.iter().map(parse_type).collect::<Result<_, _>>().map(Type::Tuple),
                    _ => Err("tuple(...) takes a list of types, e.g. tuple([string, number])".into()),
                },
                "object" => match args.as_slice() {
                    [Expression::Object(o)] => {
                        let mut attrs = BTreeMap::new();
                        for (k, v) in o.iter() {
                            let key = match k {
                                hcl_edit::expr::ObjectKey::Ident(i) => i.value().as_str().to_string(),
                                hcl_edit::expr::ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                                _ => return Err("object type attribute names must be plain names".into()),
                            };
                            let (t, optional) = match v.expr() {
                                Expression::FuncCall(f) if f.name.name.value().as_str() == "optional" => {
                                    match f.args.iter().next() {
                                        Some(a) => (parse_type(a)?, true),
                                        None => return Err("optional(...) takes a type".into()),
                                    }
                                }
                                other => (parse_type(other)?, false),
                            };
                            attrs.insert(key, (t, optional));
                        }
                        Ok(Type::Object(attrs))
                    }
                    _ => Err("object(...) takes attribute types, e.g. object({ name = string })".into()),
                },
                other => Err(format!(
                    "unknown type constructor `{other}`{}",
                    did_you_mean_or_list(other, &["list", "set", "map", "object", "tuple"])
                )),
            }
        }
        _ => Err("a type is string, number, bool, any, list(T), set(T), map(T), object({...}) or tuple([...])".into()),
    }
}

fn primitive(name: &str) -> Result<Type, String> {
    match name {
        "string" => Ok(Type::String),
        "number" => Ok(Type::Number),
        "bool" => Ok(Type::Bool),
        "any" => Ok(Type::Any),
        "list" => Ok(Type::List(Box::new(Type::Any))),
        "map" => Ok(Type::Map(Box::new(Type::Any))),
        other => Err(format!(
            "unknown type `{other}`{}",
            did_you_mean_or_list(other, &["string", "number", "bool", "any"])
        )),
    }
}

/// A value from one input, before conversion to the variable's type.
enum Given {
    /// A value already parsed (a variable file).
    Value(Value, String),
    /// Text from `-var` or `PKR_VAR_`: taken as it is for primitive types, parsed as an HCL
    /// expression for collections.
    Text(String, String),
}

/// Where values come from besides defaults.
pub(crate) struct VarInputs<'a> {
    pub env: &'a BTreeMap<String, String>,
    /// Indexes in the evaluator's files: auto var files, then -var-file files, in precedence order.
    pub var_files: Vec<usize>,
    pub vars: &'a [(String, String)],
}

/// Every variable's value, and the problems. `ev` has the files; its vars are not used.
pub(crate) fn resolve(
    decls: &[VarDecl],
    inputs: &VarInputs,
    ev: &Evaluator,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, VarValue> {
    let files = ev.files;
    let known: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
    let mut given: BTreeMap<String, Given> = BTreeMap::new();

    for (k, v) in inputs.env {
        if let Some(name) = k.strip_prefix("PKR_VAR_") {
            // Undeclared ones are ignored, as Packer does: the environment is shared.
            if known.contains(&name) {
                given.insert(
                    name.to_string(),
                    Given::Text(v.clone(), format!("environment variable {k}")),
                );
            }
        }
    }
    for &f in &inputs.var_files {
        let file = &files[f];
        for (name, value, span) in read_var_file(file, f, ev, problems) {
            if known.contains(&name.as_str()) {
                given.insert(name, Given::Value(value, file.at(span)));
            } else {
                problems.push(problem_at(
                    file.at(span),
                    "variable file",
                    format!(
                        "variable `{name}` is not declared in the template{}; declare it with a variable block or remove it",
                        did_you_mean(&name, known.iter().copied())
                    ),
                ));
            }
        }
    }
    for (name, text) in inputs.vars {
        if known.contains(&name.as_str()) {
            given.insert(
                name.clone(),
                Given::Text(text.clone(), format!("-var {name}")),
            );
        } else {
            problems.push(Problem::new(format!(
                "-var {name}=…: variable `{name}` is not declared in the template{}; declare it with a variable block or remove the -var",
                did_you_mean(name, known.iter().copied())
            )));
        }
    }

    let mut out = BTreeMap::new();
    for d in decls {
        let what = format!("variable \"{}\"", d.name);
        let at = files[d.file].at(d.span.clone());
        let (raw, origin) = match given.remove(&d.name) {
            Some(Given::Value(v, origin)) => (v, origin),
            Some(Given::Text(text, origin)) => {
                if d.ty.is_primitive() {
                    (Value::str(text), origin)
                } else {
                    match parse_value_text(&text, ev) {
                        Ok(v) => (v, origin),
                        Err(m) => {
                            problems.push(problem_at(at.clone(), &what, format!("{origin}: {m}")));
                            continue;
                        }
                    }
                }
            }
            None => match &d.default {
                Some(v) => (v.clone(), "the default".to_string()),
                None => {
                    problems.push(problem_at(
                        at,
                        &what,
                        format!(
                            "a value is required (the variable has no default): pass -var '{0}=VALUE', set it in a *.pkrvars.hcl file, or set PKR_VAR_{0}",
                            d.name
                        ),
                    ));
                    continue;
                }
            },
        };
        let value = match convert(raw, &d.ty) {
            Ok(v) => v,
            Err(m) => {
                problems.push(problem_at(
                    at,
                    &what,
                    format!("{origin}: the value does not match type {}: {m}", d.ty),
                ));
                continue;
            }
        };
        if matches!(value, Value::Null) && !d.nullable {
            problems.push(problem_at(
                at,
                &what,
                "the value is null but the variable is declared `nullable = false`",
            ));
            continue;
        }
        out.insert(
            d.name.clone(),
            VarValue {
                value,
                sensitive: d.sensitive,
            },
        );
    }
    out
}

/// Runs every `validation` block of the variables that have a value.
pub(crate) fn validate(decls: &[VarDecl], ev: &Evaluator, problems: &mut Vec<Problem>) {
    for d in decls {
        if !ev.vars.contains_key(&d.name) {
            continue;
        }
        let what = format!("variable \"{}\"", d.name);
        for v in &d.validations {
            let cx = Ctx::new(v.file, Place::Validation);
            let at = ev.files[v.file].at(v.span.clone());
            match ev.eval(v.condition, &cx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => {
                    let message = match ev.eval(v.error_message, &cx) {
                        Ok(m) => m.to_string(),
                        Err(_) => "the validation condition is false".into(),
                    };
                    problems.push(problem_at(at, &what, format!("invalid value: {message}")));
                }
                Ok(other) => problems.push(problem_at(
                    at,
                    &what,
                    format!(
                        "the validation condition must be true or false, found a {}",
                        other.type_name()
                    ),
                )),
                Err(d) => push_diag(ev.files, d, &what, problems),
            }
        }
    }
}

/// The assignments of a `*.pkrvars.hcl` or `*.pkrvars.json` file: (name, value, span).
fn read_var_file(
    file: &SourceFile,
    index: usize,
    ev: &Evaluator,
    problems: &mut Vec<Problem>,
) -> Vec<(String, Value, Option<Range<usize>>)> {
    if file.name.ends_with(".json") {
        return match serde_json::from_str::<serde_json::Value>(&file.text) {
            Ok(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), Value::from_json(v), None))
                .collect(),
            Ok(_) => {
                problems.push(Problem::key(
                    file.name.clone(),
                    "a JSON variable file must be an object of \"name\": value",
                ));
                Vec::new()
            }
            Err(e) => {
                problems.push(Problem::key(
                    format!("{}:{}:{}", file.name, e.line(), e.column()),
                    format!("not valid JSON: {e}"),
                ));
                Vec::new()
            }
        };
    }
    let body: Body = match hcl_edit::parser::parse_body(&file.text) {
        Ok(b) => b,
        Err(e) => {
            problems.push(syntax_problem(&file.name, &e));
            return Vec::new();
        }
    };
    let cx = Ctx::new(index, Place::VarValue);
    let mut out = Vec::new();
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => match ev.eval(&a.value, &cx) {
                Ok(v) => out.push((a.key.value().as_str().to_string(), v, a.key.span())),
                Err(d) => push_diag(ev.files, d, "variable file", problems),
            },
            Structure::Block(b) => problems.push(problem_at(
                file.at(b.span()),
                "variable file",
                format!(
                    "a variable file holds `name = value` lines, not blocks (`{}`)",
                    b.ident.value().as_str()
                ),
            )),
        }
    }
    out
}

/// A `-var` or `PKR_VAR_` value of a collection type, parsed as an HCL expression.
fn parse_value_text(text: &str, ev: &Evaluator) -> Result<Value, String> {
    let e = hcl_edit::parser::parse_expr(text).map_err(|e| {
        format!("not a valid HCL value ({}); a list is written [\"a\", \"b\"], a map {{ key = \"value\" }}", e.message())
    })?;
    ev.eval(&e, &Ctx::new(0, Place::VarValue))
        .map_err(|d| d.message.unwrap_or_else(|| "cannot be evaluated".into()))
}
