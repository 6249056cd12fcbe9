//! Evaluation of HCL expressions: references (`var.`, `local.`, `source.`, `build.`,
//! `path.`, `packer.`), templates with `${...}` and `%{ if/for }`, operators, `for`
//! expressions, splats and function calls.
//!
//! What stays for later is lowered to the JSON path's forms: `build.X` becomes
//! `{{ build `X` }}` in provisioners and post-processors and `{{ .X }}` in sources (the
//! steps render them with build data); a sensitive variable becomes `{{user `name`}}`, which
//! the JSON path turns into a placeholder revealed only at the moment of use.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use hcl_edit::expr::{BinaryOperator, Expression, ObjectKey, TraversalOperator, UnaryOperator};
use hcl_edit::template::{Directive, Element, Strip, Template};
use hcl_edit::{Decorated, Span};

use super::did_you_mean;
use super::files::SourceFile;
use super::functions::{self, FnCtx};
use super::value::{number_text, Text, Value};
use crate::template::limits::{value_too_long, MAX_VALUE_BYTES, MAX_VARIABLE_CHAIN};
use crate::template::PACKER_COMPAT_VERSION;

/// A problem found while evaluating: where, and what. `message: None` when the cause is
/// already reported (a local or variable that failed on its own).
#[derive(Debug, Clone)]
pub(crate) struct Diag {
    pub file: usize,
    pub span: Option<Range<usize>>,
    pub message: Option<String>,
}

impl Diag {
    pub fn new(file: usize, span: Option<Range<usize>>, message: impl Into<String>) -> Diag {
        Diag {
            file,
            span,
            message: Some(message.into()),
        }
    }

    fn reported(file: usize) -> Diag {
        Diag {
            file,
            span: None,
            message: None,
        }
    }
}

pub(crate) use crate::template::BUILD_DATA;

/// Where an expression is, which decides what it may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A variable's `default`: constants and functions; `env()` only here.
    VarDefault,
    /// A variable file or a `-var` value of a collection type: constants and functions.
    VarValue,
    /// A `validation` block: variables, with their real values.
    Validation,
    /// A `locals`/`local` block: variables and other locals.
    Local,
    /// A `source` block: build data is rendered later by the builder (`{{ .X }}`).
    Source,
    /// A `build` block (provisioners, post-processors): `source.*`, and build data as
    /// `{{ build `X` }}`.
    Build,
}

/// A resolved variable.
#[derive(Debug, Clone)]
pub(crate) struct VarValue {
    pub value: Value,
    pub sensitive: bool,
}

/// A data source as read: the block's attributes and what the lookup answered for them.
type DataRead = (serde_json::Value, serde_json::Value);

/// A `locals` entry or a `local` block.
pub(crate) struct LocalDef<'a> {
    pub file: usize,
    pub expr: &'a Expression,
    pub sensitive: bool,
}

pub(crate) struct Evaluator<'a> {
    pub files: &'a [SourceFile],
    /// Variables with a value; a declared variable missing here has a problem reported.
    pub vars: BTreeMap<String, VarValue>,
    pub declared: Vec<String>,
    pub locals: BTreeMap<String, LocalDef<'a>>,
    pub time: DateTime<Utc>,
    pub env: &'a BTreeMap<String, String>,
    /// `path.root` and `path.cwd`.
    pub root: String,
    pub cwd: String,
    /// Per (local, revealed): its value, or `None` when it failed (reported once).
    memo: RefCell<BTreeMap<(String, bool), Option<Value>>>,
    visiting: RefCell<Vec<String>>,
    /// Problems of locals, each reported once whoever uses the local.
    pub local_problems: RefCell<Vec<Diag>>,
    /// Sensitive values computed while lowering (sensitive locals, secret attributes of data
    /// sources), by the JSON variable name that holds them (`local.NAME`,
    /// `data.KIND.NAME.ATTRIBUTE`).
    pub sensitive_locals: RefCell<BTreeMap<String, String>>,
    /// `data` blocks by (kind, name), and what reads them (none: a problem when used).
    pub data: BTreeMap<(String, String), (usize, &'a hcl_edit::structure::Block)>,
    pub data_sources: Option<super::data::DataSources>,
    /// Per data source: its config and attributes, or `None` when it failed (reported once).
    data_memo: RefCell<BTreeMap<(String, String), Option<DataRead>>>,
    /// `templatefile` calls under way (a template file may call it again).
    templatefile_depth: std::cell::Cell<usize>,
}

/// How deep `templatefile` may nest (a file that includes itself stops here).
const MAX_TEMPLATEFILE_DEPTH: usize = 10;

/// What one expression is evaluated in.
#[derive(Clone)]
pub(crate) struct Ctx<'c> {
    pub file: usize,
    pub place: Place,
    /// Sensitive variables give their values instead of their placeholders.
    pub reveal: bool,
    /// `(type, name)` of the source a build-block expression is evaluated for.
    pub source: Option<(&'c str, &'c str)>,
    /// `for` and `dynamic` iterators, innermost last.
    pub bindings: Vec<(String, Value)>,
}

impl<'c> Ctx<'c> {
    pub fn new(file: usize, place: Place) -> Ctx<'c> {
        Ctx {
            file,
            place,
            reveal: matches!(place, Place::Validation),
            source: None,
            bindings: Vec::new(),
        }
    }

    pub fn bind(&self, name: &str, v: Value) -> Ctx<'c> {
        let mut c = self.clone();
        c.bindings.push((name.to_string(), v));
        c
    }
}

type R = Result<Value, Diag>;

impl<'a> Evaluator<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        files: &'a [SourceFile],
        vars: BTreeMap<String, VarValue>,
        declared: Vec<String>,
        locals: BTreeMap<String, LocalDef<'a>>,
        time: DateTime<Utc>,
        env: &'a BTreeMap<String, String>,
        root: String,
        cwd: String,
    ) -> Evaluator<'a> {
        Evaluator {
            files,
            vars,
            declared,
            locals,
            time,
            env,
            root,
            cwd,
            memo: RefCell::new(BTreeMap::new()),
            visiting: RefCell::new(Vec::new()),
            local_problems: RefCell::new(Vec::new()),
            sensitive_locals: RefCell::new(BTreeMap::new()),
            data: BTreeMap::new(),
            data_sources: None,
            data_memo: RefCell::new(BTreeMap::new()),
            templatefile_depth: std::cell::Cell::new(0),
        }
    }

    pub fn eval(&self, e: &Expression, cx: &Ctx) -> R {
        let err = |msg: String| Diag::new(cx.file, e.span(), msg);
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => Ok(Value::Number(n.value().as_f64().unwrap_or(0.0))),
            Expression::String(s) => Ok(Value::str(s.value().clone())),
            Expression::Array(items) => items
                .iter()
                .map(|i| self.eval(i, cx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            Expression::Object(obj) => {
                let mut out = BTreeMap::new();
                for (k, v) in obj.iter() {
                    let key = match k {
                        ObjectKey::Ident(id) => id.value().as_str().to_string(),
                        ObjectKey::Expression(ke) => {
                            let kv = self.eval(ke, cx)?;
                            self.key_text(&kv, ke, cx)?
                        }
                    };
                    out.insert(key, self.eval(v.expr(), cx)?);
                }
                Ok(Value::Map(out))
            }
            Expression::StringTemplate(t) => self.template(t, cx),
            Expression::HeredocTemplate(h) => self.heredoc(h, cx),
            Expression::Parenthesis(p) => self.eval(p.inner(), cx),
            Expression::Variable(v) => self.root(v, &[], cx),
            Expression::Traversal(t) => match &t.expr {
                Expression::Variable(v) => self.root(v, &t.operators, cx),
                other => {
                    let base = self.eval(other, cx)?;
                    self.apply_ops(base, &t.operators, cx)
                }
            },
            Expression::Conditional(c) => {
                let cond = self.eval(&c.cond_expr, cx)?;
                match self.bool_of(&cond) {
                    Some(true) => self.eval(&c.true_expr, cx),
                    Some(false) => self.eval(&c.false_expr, cx),
                    None => Err(Diag::new(
                        cx.file,
                        c.cond_expr.span(),
                        self.cond_message(&cond, "a condition"),
                    )),
                }
            }
            Expression::FuncCall(call) => self.call(call, cx),
            Expression::UnaryOp(op) => {
                let v = self.eval(&op.expr, cx)?;
                self.refuse_later(&v, "an operator", &op.expr, cx)?;
                match (op.operator.value(), &v) {
                    (UnaryOperator::Neg, _) => match self.number_of(&v) {
                        Some(n) => Ok(Value::Number(-n)),
                        None => Err(err(format!(
                            "`-` needs a number, found a {}",
                            v.type_name()
                        ))),
                    },
                    (UnaryOperator::Not, _) => match self.bool_of(&v) {
                        Some(b) => Ok(Value::Bool(!b)),
                        None => Err(err(format!("`!` needs a bool, found a {}", v.type_name()))),
                    },
                }
            }
            Expression::BinaryOp(op) => self.binary(op, cx),
            Expression::ForExpr(f) => self.for_expr(f, cx),
        }
    }

    fn key_text(&self, v: &Value, e: &Expression, cx: &Ctx) -> Result<String, Diag> {
        match v.as_text() {
            Some(t) if t.later.is_empty() => Ok(t.s),
            Some(t) => Err(Diag::new(
                cx.file,
                e.span(),
                format!(
                    "{} cannot be used as a key: its value is known only when the build runs",
                    t.later[0]
                ),
            )),
            None => Err(Diag::new(
                cx.file,
                e.span(),
                format!("a key must be a string, found a {}", v.type_name()),
            )),
        }
    }

    fn bool_of(&self, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(t) if t.later.is_empty() && t.s == "true" => Some(true),
            Value::String(t) if t.later.is_empty() && t.s == "false" => Some(false),
            _ => None,
        }
    }

    fn number_of(&self, v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => Some(*n),
            Value::String(t) if t.later.is_empty() => t.s.trim().parse().ok(),
            _ => None,
        }
    }

    fn cond_message(&self, v: &Value, what: &str) -> String {
        match v.later() {
            Some(r) => {
                format!("{what} cannot use {r}: its value is known only when the build runs")
            }
            None => format!("{what} must be a bool, found a {}", v.type_name()),
        }
    }

    fn refuse_later(&self, v: &Value, what: &str, e: &Expression, cx: &Ctx) -> Result<(), Diag> {
        match v.later() {
            Some(r) => Err(Diag::new(cx.file, e.span(), later_message(r, what))),
            None => Ok(()),
        }
    }

    /// A reference: `var.x`, `local.x`, `source.name`, `build.X`, `path.root`,
    /// `packer.version`, or an iterator of `for`/`dynamic`.
    fn root(
        &self,
        v: &Decorated<hcl_edit::Ident>,
        ops: &[Decorated<TraversalOperator>],
        cx: &Ctx,
    ) -> R {
        let name = v.value().as_str();
        let span = v.span();
        if let Some((_, val)) = cx.bindings.iter().rev().find(|(n, _)| n == name) {
            return self.apply_ops(val.clone(), ops, cx);
        }
        let attr = |i: usize| -> Option<(String, Option<Range<usize>>)> {
            match ops.get(i).map(|o| o.value()) {
                Some(TraversalOperator::GetAttr(a)) => {
                    Some((a.value().as_str().to_string(), a.span()))
                }
                Some(TraversalOperator::Index(Expression::String(s))) => {
                    Some((s.value().clone(), s.span()))
                }
                _ => None,
            }
        };
        let need_attr = |example: &str| {
            Diag::new(
                cx.file,
                span.clone(),
                format!("`{name}` must be followed by an attribute, e.g. {example}"),
            )
        };
        let not_here = |what: &str| {
            Diag::new(
                cx.file,
                span.clone(),
                format!("{what} cannot be used in {}", place_name(cx.place)),
            )
        };
        match name {
            "var" => {
                let Some((n, nspan)) = attr(0) else { return Err(need_attr("var.region")) };
                if matches!(cx.place, Place::VarDefault | Place::VarValue) {
                    return Err(not_here("a variable"));
                }
                let value = self.var(&n, nspan, cx)?;
                self.apply_ops(value, &ops[1..], cx)
            }
            "local" => {
                let Some((n, nspan)) = attr(0) else { return Err(need_attr("local.name")) };
                if !matches!(cx.place, Place::Local | Place::Source | Place::Build) {
                    return Err(not_here("a local"));
                }
                let value = self.local(&n, nspan, cx)?;
                self.apply_ops(value, &ops[1..], cx)
            }
            "source" => {
                let Some((n, nspan)) = attr(0) else { return Err(need_attr("source.name")) };
                let Some((ty, nm)) = cx.source else {
                    return Err(not_here("`source.*`"));
                };
                let value = match n.as_str() {
                    "name" => Value::str(nm),
                    "type" => Value::str(ty),
                    other => {
                        return Err(Diag::new(
                            cx.file,
                            nspan,
                            format!("`source` has `name` and `type`, not `{other}`{}", did_you_mean(other, ["name", "type"])),
                        ))
                    }
                };
                self.apply_ops(value, &ops[1..], cx)
            }
            "build" => {
                let Some((n, nspan)) = attr(0) else { return Err(need_attr("build.SourceAMIName")) };
                if !matches!(cx.place, Place::Build | Place::Source) {
                    return Err(not_here("build data"));
                }
                self.build_data(&n, nspan, ops, cx)
            }
            "path" => {
                let Some((n, nspan)) = attr(0) else { return Err(need_attr("path.root")) };
                let value = match n.as_str() {
                    "root" => Value::str(self.root.clone()),
                    "cwd" => Value::str(self.cwd.clone()),
                    other => {
                        return Err(Diag::new(
                            cx.file,
                            nspan,
                            format!("`path` has `root` and `cwd`, not `{other}`{}", did_you_mean(other, ["root", "cwd"])),
                        ))
                    }
                };
                self.apply_ops(value, &ops[1..], cx)
            }
            "packer" => match attr(0) {
                Some((n, _)) if n == "version" => self.apply_ops(Value::str(PACKER_COMPAT_VERSION), &ops[1..], cx),
                _ => Err(need_attr("packer.version")),
            },
            "data" => {
                if !matches!(cx.place, Place::Local | Place::Source | Place::Build) {
                    return Err(not_here("a data source"));
                }
                let (Some((kind, _)), Some((name, nspan))) = (attr(0), attr(1)) else {
                    return Err(need_attr("data.amazon-ami.NAME.id"));
                };
                let Some((attribute, aspan)) = attr(2) else {
                    return Err(Diag::new(
                        cx.file,
                        nspan,
                        format!("name the attribute of data.{kind}.{name} to use, e.g. data.{kind}.{name}.{}", 
                            super::data::kind(&kind).map_or("id", |k| k.outputs[0])),
                    ));
                };
                let value = self.data_attribute(&kind, &name, &attribute, nspan, aspan, cx)?;
                self.apply_ops(value, &ops[3..], cx)
            }
            "count" | "each" | "self" | "terraform" => Err(Diag::new(
                cx.file,
                span,
                format!("`{name}` is Terraform's, not Packer's: use a `for` expression or a `dynamic` block"),
            )),
            other => {
                let mut known: Vec<&str> = vec!["var", "local", "source", "build", "path", "packer"];
                known.extend(cx.bindings.iter().map(|(n, _)| n.as_str()));
                Err(Diag::new(
                    cx.file,
                    span,
                    format!("unknown name `{other}`{}", did_you_mean(other, known)),
                ))
            }
        }
    }

    fn var(&self, name: &str, span: Option<Range<usize>>, cx: &Ctx) -> R {
        match self.vars.get(name) {
            Some(v) if v.sensitive && !cx.reveal => {
                sensitive_text(&v.value, name, &format!("var.{name}"))
                    .map_err(|m| Diag::new(cx.file, span, m))
            }
            Some(v) => Ok(v.value.clone()),
            None if self.declared.iter().any(|d| d == name) => Err(Diag::reported(cx.file)),
            None => Err(Diag::new(
                cx.file,
                span,
                format!(
                    "no variable named `{name}` is declared{}",
                    did_you_mean(name, self.declared.iter().map(String::as_str))
                ),
            )),
        }
    }

    fn local(&self, name: &str, span: Option<Range<usize>>, cx: &Ctx) -> R {
        let Some(def) = self.locals.get(name) else {
            return Err(Diag::new(
                cx.file,
                span,
                format!(
                    "no local named `{name}` is defined{}",
                    did_you_mean(name, self.locals.keys().map(String::as_str))
                ),
            ));
        };
        // A sensitive local is computed from real values and used through its placeholder.
        let reveal = cx.reveal || def.sensitive;
        let key = (name.to_string(), reveal);
        if let Some(done) = self.memo.borrow().get(&key) {
            let v = done.clone().ok_or_else(|| Diag::reported(cx.file))?;
            return self.local_view(name, def, v, cx, span);
        }
        if let Some(pos) = self.visiting.borrow().iter().position(|v| v == name) {
            let mut chain = self.visiting.borrow()[pos..].to_vec();
            chain.push(name.to_string());
            return Err(Diag::new(
                cx.file,
                span,
                format!(
                    "locals refer to each other in a loop: {}",
                    chain.join(" → ")
                ),
            ));
        }
        if self.visiting.borrow().len() >= MAX_VARIABLE_CHAIN {
            return Err(Diag::new(
                cx.file,
                span,
                format!("locals refer to each other more than {MAX_VARIABLE_CHAIN} deep (at `{name}`): compute fewer steps in a chain"),
            ));
        }
        self.visiting.borrow_mut().push(name.to_string());
        let mut inner = Ctx::new(def.file, Place::Local);
        inner.reveal = reveal;
        let result = self.eval(def.expr, &inner);
        self.visiting.borrow_mut().pop();
        let stored = match result {
            Ok(v) => Some(v),
            Err(d) => {
                if d.message.is_some() {
                    self.local_problems.borrow_mut().push(d);
                }
                None
            }
        };
        self.memo.borrow_mut().insert(key, stored.clone());
        let v = stored.ok_or_else(|| Diag::reported(cx.file))?;
        self.local_view(name, def, v, cx, span)
    }

    /// `data.KIND.NAME.ATTRIBUTE`: the data source read once (its block evaluated with real
    /// values), a secret attribute as a placeholder whose value joins the sensitive ones.
    fn data_attribute(
        &self,
        kind: &str,
        name: &str,
        attribute: &str,
        span: Option<Range<usize>>,
        attribute_span: Option<Range<usize>>,
        cx: &Ctx,
    ) -> R {
        let key = (kind.to_string(), name.to_string());
        let Some(&(file, block)) = self.data.get(&key) else {
            let known: Vec<String> = self.data.keys().map(|(k, n)| format!("{k}.{n}")).collect();
            return Err(Diag::new(
                cx.file,
                span,
                format!(
                    "no data source data \"{kind}\" \"{name}\" is declared{}",
                    did_you_mean(&format!("{kind}.{name}"), known.iter().map(String::as_str))
                ),
            ));
        };
        let def = super::data::kind(kind).expect("scan refuses unknown kinds");
        if !def.outputs.contains(&attribute) {
            return Err(Diag::new(
                cx.file,
                attribute_span,
                format!(
                    "data.{kind}.{name} has no attribute `{attribute}`{} ({})",
                    did_you_mean(attribute, def.outputs.iter().copied()),
                    def.outputs.join(", ")
                ),
            ));
        }
        let memo = self.data_memo.borrow().get(&key).cloned();
        let (config, outputs) = match memo {
            Some(done) => done.ok_or_else(|| Diag::reported(cx.file))?,
            None => {
                let read = self.read_data(kind, name, file, block);
                let stored = match read {
                    Ok(v) => Some(v),
                    Err(d) => {
                        self.local_problems.borrow_mut().push(d);
                        None
                    }
                };
                self.data_memo.borrow_mut().insert(key, stored.clone());
                stored.ok_or_else(|| Diag::reported(cx.file))?
            }
        };
        let value = Value::from_json(&outputs[attribute]);
        if !def.is_sensitive(attribute, &config) || cx.reveal {
            return Ok(value);
        }
        let json_name = format!("data.{kind}.{name}.{attribute}");
        let t = sensitive_text(&value, &json_name, &json_name)
            .map_err(|m| Diag::new(cx.file, attribute_span, m))?;
        if let (Value::String(_), Some(text)) = (&t, value.as_text()) {
            self.sensitive_locals.borrow_mut().insert(json_name, text.s);
        }
        Ok(t)
    }

    /// The block's attributes (evaluated with real values: a secret's name may be one) and
    /// what the lookup answers for them.
    fn read_data(
        &self,
        kind: &str,
        name: &str,
        file: usize,
        block: &hcl_edit::structure::Block,
    ) -> Result<DataRead, Diag> {
        use hcl_edit::structure::Structure;
        let def = super::data::kind(kind).expect("scan refuses unknown kinds");
        let mut inner = Ctx::new(file, Place::Local);
        inner.reveal = true;
        let mut config = serde_json::Map::new();
        for item in block.body.iter() {
            match item {
                Structure::Attribute(a) => {
                    let key = a.key.value().as_str();
                    if !def.keys.contains(&key) {
                        return Err(Diag::new(
                            file,
                            a.key.span(),
                            format!(
                                "data \"{kind}\" \"{name}\": `{key}` is not a key amiflow reads{} (it reads {})",
                                did_you_mean(key, def.keys.iter().copied()),
                                def.keys.join(", ")
                            ),
                        ));
                    }
                    let v = self.eval(&a.value, &inner)?;
                    config.insert(key.to_string(), v.to_json());
                }
                Structure::Block(b) => {
                    return Err(Diag::new(
                        file,
                        b.ident.span(),
                        format!(
                            "data \"{kind}\" \"{name}\": a `{}` block is not read here; amiflow reads {} (filters as a map: filters = {{ name = \"...\" }})",
                            b.ident.value().as_str(),
                            def.keys.join(", ")
                        ),
                    ))
                }
            }
        }
        let config = serde_json::Value::Object(config);
        let Some(sources) = &self.data_sources else {
            return Err(Diag::new(
                file,
                block.ident.span(),
                format!("data \"{kind}\" \"{name}\" is read from AWS, and this command reads none: use `amiflow validate`, `build`, `start` or `policy`"),
            ));
        };
        let outputs = sources.0.lookup(kind, &config).map_err(|m| {
            Diag::new(
                file,
                block.ident.span(),
                format!("data \"{kind}\" \"{name}\": {m}"),
            )
        })?;
        Ok((config, outputs))
    }

    fn local_view(
        &self,
        name: &str,
        def: &LocalDef,
        v: Value,
        cx: &Ctx,
        span: Option<Range<usize>>,
    ) -> R {
        if !def.sensitive || cx.reveal {
            return Ok(v);
        }
        let json_name = format!("local.{name}");
        let t =
            sensitive_text(&v, &json_name, &json_name).map_err(|m| Diag::new(cx.file, span, m))?;
        if let (Value::String(_), Some(text)) = (&t, v.as_text()) {
            self.sensitive_locals.borrow_mut().insert(json_name, text.s);
        }
        Ok(t)
    }

    fn build_data(
        &self,
        name: &str,
        span: Option<Range<usize>>,
        ops: &[Decorated<TraversalOperator>],
        cx: &Ctx,
    ) -> R {
        const CREDENTIALS: [&str; 5] = [
            "Password",
            "SSHPrivateKey",
            "SSHPublicKey",
            "WinRMPassword",
            "SSHAgentAuth",
        ];
        if CREDENTIALS.contains(&name) {
            return Err(Diag::new(
                cx.file,
                span,
                format!("build.{name} is not available: credentials are kept out of build data"),
            ));
        }
        if !BUILD_DATA.contains(&name) {
            return Err(Diag::new(
                cx.file,
                span,
                format!(
                    "there is no build data named `{name}`{} (build data: {})",
                    did_you_mean(name, BUILD_DATA.iter().copied()),
                    BUILD_DATA.join(", ")
                ),
            ));
        }
        // `build.SourceAMITags.Team`: the step looks nested data up by its dotted key.
        let mut key = name.to_string();
        let mut rest = &ops[1..];
        if name == "SourceAMITags" {
            match rest.first().map(|o| o.value()) {
                Some(TraversalOperator::GetAttr(a)) => {
                    key = format!("{name}.{}", a.value().as_str());
                    rest = &rest[1..];
                }
                Some(TraversalOperator::Index(Expression::String(s))) => {
                    key = format!("{name}.{}", s.value());
                    rest = &rest[1..];
                }
                _ => {
                    return Err(Diag::new(
                        cx.file,
                        span,
                        "name the tag: build.SourceAMITags.NAME",
                    ))
                }
            }
        }
        if !rest.is_empty() {
            return Err(Diag::new(
                cx.file,
                rest[0].span(),
                format!("build.{key} is a string known only when the build runs: it has no attributes or elements"),
            ));
        }
        let s = if cx.place == Place::Source {
            format!("{{{{ .{key} }}}}")
        } else {
            format!("{{{{ build `{key}` }}}}")
        };
        Ok(Value::String(Text {
            s,
            later: vec![format!("build.{key}")],
        }))
    }

    fn apply_ops(&self, mut v: Value, ops: &[Decorated<TraversalOperator>], cx: &Ctx) -> R {
        for (i, op) in ops.iter().enumerate() {
            let span = op.span();
            let err = |msg: String| Diag::new(cx.file, span.clone(), msg);
            match op.value() {
                TraversalOperator::GetAttr(a) => {
                    v = self.get_key(v, a.value().as_str(), span.clone(), cx)?;
                }
                TraversalOperator::LegacyIndex(n) => {
                    v = self.index(v, &Value::Number(*n.value() as f64), span.clone(), cx)?;
                }
                TraversalOperator::Index(e) => {
                    let k = self.eval(e, cx)?;
                    v = self.index(v, &k, span.clone(), cx)?;
                }
                TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                    let items = match v {
                        Value::List(items) => items,
                        Value::Null => Vec::new(),
                        Value::Map(_) => return Err(err("a splat (`[*]`) applies to a list, found a map; use values(...) or a for expression".into())),
                        other => vec![other],
                    };
                    let rest = &ops[i + 1..];
                    let out = items
                        .into_iter()
                        .map(|item| self.apply_ops(item, rest, cx))
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok(Value::List(out));
                }
            }
        }
        Ok(v)
    }

    fn get_key(&self, v: Value, key: &str, span: Option<Range<usize>>, cx: &Ctx) -> R {
        match v {
            Value::Map(mut m) => match m.remove(key) {
                Some(x) => Ok(x),
                None => Err(Diag::new(
                    cx.file,
                    span,
                    format!(
                        "the object has no attribute `{key}`{}",
                        did_you_mean(key, m.keys().map(String::as_str))
                    ),
                )),
            },
            Value::Null => Err(Diag::new(
                cx.file,
                span,
                format!("cannot read `{key}` of null"),
            )),
            other => Err(Diag::new(
                cx.file,
                span,
                format!("cannot read attribute `{key}` of a {}", other.type_name()),
            )),
        }
    }

    fn index(&self, v: Value, k: &Value, span: Option<Range<usize>>, cx: &Ctx) -> R {
        match v {
            Value::List(mut items) => {
                let Some(n) = self.number_of(k) else {
                    return Err(Diag::new(
                        cx.file,
                        span,
                        format!("a list index must be a number, found a {}", k.type_name()),
                    ));
                };
                let len = items.len();
                if n < 0.0 || n.fract() != 0.0 || n as usize >= len {
                    return Err(Diag::new(
                        cx.file,
                        span,
                        format!(
                            "index {} is out of range for a list of {len} element(s)",
                            number_text(n)
                        ),
                    ));
                }
                Ok(items.swap_remove(n as usize))
            }
            Value::Map(_) => match k.as_text() {
                Some(t) if t.later.is_empty() => self.get_key(v, &t.s, span, cx),
                _ => Err(Diag::new(
                    cx.file,
                    span,
                    format!("a map key must be a string, found a {}", k.type_name()),
                )),
            },
            other => Err(Diag::new(
                cx.file,
                span,
                format!("cannot index a {}", other.type_name()),
            )),
        }
    }

    fn binary(&self, op: &hcl_edit::expr::BinaryOp, cx: &Ctx) -> R {
        use BinaryOperator as B;
        let operator = *op.operator.value();
        let lhs = self.eval(&op.lhs_expr, cx)?;
        // && and || stop early, as HCL's do not but as no one notices.
        if matches!(operator, B::And | B::Or) {
            self.refuse_later(&lhs, "`&&`/`||`", &op.lhs_expr, cx)?;
            let Some(l) = self.bool_of(&lhs) else {
                return Err(Diag::new(
                    cx.file,
                    op.lhs_expr.span(),
                    format!(
                        "`{}` needs bools, found a {}",
                        operator.as_str(),
                        lhs.type_name()
                    ),
                ));
            };
            if (operator == B::And && !l) || (operator == B::Or && l) {
                return Ok(Value::Bool(l));
            }
            let rhs = self.eval(&op.rhs_expr, cx)?;
            self.refuse_later(&rhs, "`&&`/`||`", &op.rhs_expr, cx)?;
            return match self.bool_of(&rhs) {
                Some(r) => Ok(Value::Bool(r)),
                None => Err(Diag::new(
                    cx.file,
                    op.rhs_expr.span(),
                    format!(
                        "`{}` needs bools, found a {}",
                        operator.as_str(),
                        rhs.type_name()
                    ),
                )),
            };
        }
        let rhs = self.eval(&op.rhs_expr, cx)?;
        self.refuse_later(&lhs, &format!("`{}`", operator.as_str()), &op.lhs_expr, cx)?;
        self.refuse_later(&rhs, &format!("`{}`", operator.as_str()), &op.rhs_expr, cx)?;
        match operator {
            B::Eq => Ok(Value::Bool(equal(&lhs, &rhs))),
            B::NotEq => Ok(Value::Bool(!equal(&lhs, &rhs))),
            _ => {
                let (Some(l), Some(r)) = (self.number_of(&lhs), self.number_of(&rhs)) else {
                    let (bad, e) = if self.number_of(&lhs).is_none() {
                        (&lhs, &op.lhs_expr)
                    } else {
                        (&rhs, &op.rhs_expr)
                    };
                    return Err(Diag::new(
                        cx.file,
                        e.span(),
                        format!(
                            "`{}` needs numbers, found a {}",
                            operator.as_str(),
                            bad.type_name()
                        ),
                    ));
                };
                Ok(match operator {
                    B::Plus => Value::Number(l + r),
                    B::Minus => Value::Number(l - r),
                    B::Mul => Value::Number(l * r),
                    B::Div => {
                        if r == 0.0 {
                            return Err(Diag::new(cx.file, op.rhs_expr.span(), "division by zero"));
                        }
                        Value::Number(l / r)
                    }
                    B::Mod => {
                        if r == 0.0 {
                            return Err(Diag::new(cx.file, op.rhs_expr.span(), "modulo by zero"));
                        }
                        Value::Number(l % r)
                    }
                    B::Less => Value::Bool(l < r),
                    B::LessEq => Value::Bool(l <= r),
                    B::Greater => Value::Bool(l > r),
                    B::GreaterEq => Value::Bool(l >= r),
                    B::Eq | B::NotEq | B::And | B::Or => unreachable!("handled above"),
                })
            }
        }
    }

    #[allow(clippy::map_entry)] // the duplicate key is an error, reported with its span
    fn for_expr(&self, f: &hcl_edit::expr::ForExpr, cx: &Ctx) -> R {
        let coll = self.eval(&f.intro.collection_expr, cx)?;
        let pairs = self.iterate(coll, &f.intro.collection_expr, cx)?;
        let key_var = f
            .intro
            .key_var
            .as_ref()
            .map(|k| k.value().as_str().to_string());
        let value_var = f.intro.value_var.value().as_str().to_string();
        let mut list = Vec::new();
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (k, v) in pairs {
            let mut inner = cx.clone();
            if let Some(kv) = &key_var {
                inner = inner.bind(kv, k);
            }
            inner = inner.bind(&value_var, v);
            if let Some(cond) = &f.cond {
                let c = self.eval(&cond.expr, &inner)?;
                match self.bool_of(&c) {
                    Some(true) => {}
                    Some(false) => continue,
                    None => {
                        return Err(Diag::new(
                            cx.file,
                            cond.expr.span(),
                            self.cond_message(&c, "a for condition"),
                        ))
                    }
                }
            }
            let value = self.eval(&f.value_expr, &inner)?;
            match &f.key_expr {
                None => list.push(value),
                Some(ke) => {
                    let kv = self.eval(ke, &inner)?;
                    let key = self.key_text(&kv, ke, &inner)?;
                    if f.grouping {
                        grouped.entry(key).or_default().push(value);
                    } else if map.contains_key(&key) {
                        return Err(Diag::new(
                            cx.file,
                            ke.span(),
                            format!("the for expression makes the key {key:?} twice; add `...` after the value to group them"),
                        ));
                    } else {
                        map.insert(key, value);
                    }
                }
            }
        }
        Ok(match &f.key_expr {
            None => Value::List(list),
            Some(_) if f.grouping => Value::Map(
                grouped
                    .into_iter()
                    .map(|(k, v)| (k, Value::List(v)))
                    .collect(),
            ),
            Some(_) => Value::Map(map),
        })
    }

    /// (key, value) pairs of a collection: indexes of a list, keys of a map.
    pub fn iterate(
        &self,
        coll: Value,
        e: &Expression,
        cx: &Ctx,
    ) -> Result<Vec<(Value, Value)>, Diag> {
        match coll {
            Value::List(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v))
                .collect()),
            Value::Map(m) => Ok(m.into_iter().map(|(k, v)| (Value::str(k), v)).collect()),
            Value::Null => Err(Diag::new(cx.file, e.span(), "cannot iterate over null")),
            other => Err(Diag::new(
                cx.file,
                e.span(),
                format!(
                    "can only iterate over a list or a map, found a {}",
                    other.type_name()
                ),
            )),
        }
    }

    fn template(&self, t: &Template, cx: &Ctx) -> R {
        // `"${x}"` alone is x itself, of whatever type.
        if let Some(Element::Interpolation(i)) = t.as_single_element() {
            return self.eval(&i.expr, cx);
        }
        let mut out = Text::default();
        self.render(t, cx, &mut out, &mut false, 0)?;
        bounded(Value::String(out), cx, t.span())
    }

    /// A heredoc: `<<-` strips the common indent from every line, which hcl-edit does for
    /// the top-level literals only; the literals inside `%{ }` directives are dedented here.
    fn heredoc(&self, h: &hcl_edit::template::HeredocTemplate, cx: &Ctx) -> R {
        if let Some(Element::Interpolation(i)) = h.template.as_single_element() {
            return self.eval(&i.expr, cx);
        }
        let mut out = Text::default();
        self.render(
            &h.template,
            cx,
            &mut out,
            &mut false,
            h.indent().unwrap_or(0),
        )?;
        Ok(Value::String(out))
    }

    /// Appends a template's output; `strip_next` asks to trim the next literal's leading
    /// whitespace (a `~}` marker). `dedent`: spaces to strip after each newline of the
    /// literals inside directives (heredoc `<<-`).
    fn render(
        &self,
        t: &Template,
        cx: &Ctx,
        out: &mut Text,
        strip_next: &mut bool,
        dedent: usize,
    ) -> Result<(), Diag> {
        self.render_in(t, cx, out, strip_next, dedent, false)
    }

    fn render_in(
        &self,
        t: &Template,
        cx: &Ctx,
        out: &mut Text,
        strip_next: &mut bool,
        dedent: usize,
        nested: bool,
    ) -> Result<(), Diag> {
        for el in t.iter() {
            match el {
                Element::Literal(l) => {
                    let dedented;
                    let mut s = l.value().as_str();
                    if nested && dedent > 0 {
                        dedented = dedent_after_newlines(s, dedent);
                        s = &dedented;
                    }
                    let s = if *strip_next { s.trim_start() } else { s };
                    *strip_next = false;
                    out.s.push_str(s);
                }
                Element::Interpolation(i) => {
                    strip(out, i.strip, strip_next);
                    let v = self.eval(&i.expr, cx)?;
                    out.push(&self.interpolated(&v, &i.expr, cx)?);
                    *strip_next = i.strip.strip_end();
                }
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => {
                        strip(out, d.if_expr.strip, strip_next);
                        let c = self.eval(&d.if_expr.cond_expr, cx)?;
                        let Some(b) = self.bool_of(&c) else {
                            return Err(Diag::new(
                                cx.file,
                                d.if_expr.cond_expr.span(),
                                self.cond_message(&c, "an %{if} condition"),
                            ));
                        };
                        *strip_next = d.if_expr.strip.strip_end();
                        if b {
                            self.render_in(&d.if_expr.template, cx, out, strip_next, dedent, true)?;
                        } else if let Some(e) = &d.else_expr {
                            strip(out, e.strip, strip_next);
                            *strip_next = e.strip.strip_end();
                            self.render_in(&e.template, cx, out, strip_next, dedent, true)?;
                        }
                        strip(out, d.endif_expr.strip, strip_next);
                        *strip_next = d.endif_expr.strip.strip_end();
                    }
                    Directive::For(d) => {
                        let f = &d.for_expr;
                        strip(out, f.strip, strip_next);
                        let coll = self.eval(&f.collection_expr, cx)?;
                        let pairs = self.iterate(coll, &f.collection_expr, cx)?;
                        for (k, v) in pairs {
                            let mut inner = cx.clone();
                            if let Some(kv) = &f.key_var {
                                inner = inner.bind(kv.value().as_str(), k);
                            }
                            inner = inner.bind(f.value_var.value().as_str(), v);
                            *strip_next = f.strip.strip_end();
                            self.render_in(&f.template, &inner, out, strip_next, dedent, true)?;
                            strip(out, d.endfor_expr.strip, strip_next);
                        }
                        *strip_next = d.endfor_expr.strip.strip_end();
                    }
                },
            }
        }
        Ok(())
    }

    fn interpolated(&self, v: &Value, e: &Expression, cx: &Ctx) -> Result<Text, Diag> {
        match v {
            Value::Null => Err(Diag::new(cx.file, e.span(), "cannot include null in a string: give the value a default, or use coalesce(x, \"\")")),
            Value::List(_) | Value::Map(_) => Err(Diag::new(
                cx.file,
                e.span(),
                format!("cannot include a {} in a string: use join(\",\", ...) or jsonencode(...)", v.type_name()),
            )),
            other => Ok(other.as_text().expect("primitive")),
        }
    }

    fn call(&self, call: &hcl_edit::expr::FuncCall, cx: &Ctx) -> R {
        let name = call.name.name.value().as_str();
        let span = call.name.name.span();
        let args: Vec<&Expression> = call.args.iter().collect();
        match name {
            // `try` and `can` see their arguments' failures.
            "try" => {
                if args.is_empty() {
                    return Err(Diag::new(cx.file, span, "try needs at least one argument"));
                }
                let mut last = None;
                for a in &args {
                    match self.eval(a, cx) {
                        Ok(v) => return Ok(v),
                        Err(d) => last = Some(d),
                    }
                }
                let d = last.expect("at least one argument");
                return Err(Diag {
                    message: Some(format!(
                        "no argument of try could be evaluated; the last failed with: {}",
                        d.message
                            .unwrap_or_else(|| "a problem reported elsewhere".into())
                    )),
                    ..d
                });
            }
            "templatefile" => return self.templatefile(&args, span, cx),
            "can" => {
                if args.len() != 1 {
                    return Err(Diag::new(
                        cx.file,
                        span,
                        format!("can takes 1 argument, got {}", args.len()),
                    ));
                }
                return Ok(Value::Bool(self.eval(args[0], cx).is_ok()));
            }
            _ => {}
        }
        let mut values = Vec::with_capacity(args.len());
        for a in &args {
            values.push(self.eval(a, cx)?);
        }
        if call.args.expand_final() {
            match values.pop() {
                Some(Value::List(items)) => values.extend(items),
                Some(other) => {
                    return Err(Diag::new(
                        cx.file,
                        args.last().and_then(|a| a.span()),
                        format!("`...` expands a list, found a {}", other.type_name()),
                    ))
                }
                None => {}
            }
        }
        let fcx = FnCtx {
            time: self.time,
            env: if cx.place == Place::VarDefault {
                Some(self.env)
            } else {
                None
            },
            place: place_name(cx.place),
        };
        let at = call.span().or(span);
        let v =
            functions::call(name, values, &fcx).map_err(|m| Diag::new(cx.file, at.clone(), m))?;
        bounded(v, cx, at)
    }
}

fn dedent_after_newlines(s: &str, n: usize) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            let spaces = line.len() - line.trim_start_matches(' ').len();
            out.push_str(&line[spaces.min(n)..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

impl Evaluator<'_> {
    /// `templatefile(path, vars)`: the file's text as a template that sees only `vars`
    /// (and functions).
    fn templatefile(&self, args: &[&Expression], span: Option<Range<usize>>, cx: &Ctx) -> R {
        let [path_e, vars_e] = args else {
            return Err(Diag::new(
                cx.file,
                span,
                format!(
                    "templatefile takes 2 arguments (path, variables), got {}",
                    args.len()
                ),
            ));
        };
        let path = match self.eval(path_e, cx)? {
            Value::String(t) if t.later.is_empty() => t.s,
            other => {
                return Err(Diag::new(
                    cx.file,
                    path_e.span(),
                    format!(
                        "templatefile: the path must be a string, found a {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let vars = match self.eval(vars_e, cx)? {
            Value::Map(m) => m,
            other => {
                return Err(Diag::new(
                    cx.file,
                    vars_e.span(),
                    format!(
                        "templatefile: the variables must be a map, found a {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Diag::new(
                cx.file,
                path_e.span(),
                format!("templatefile: cannot read {path:?}: {e}"),
            )
        })?;
        let template = hcl_edit::parser::parse_template(&text).map_err(|e| {
            let loc = e.location();
            Diag::new(
                cx.file,
                span.clone(),
                format!(
                    "templatefile: {path}:{}:{}: {}",
                    loc.line(),
                    loc.column(),
                    e.message()
                ),
            )
        })?;
        let mut inner = Ctx::new(cx.file, Place::VarValue);
        inner.bindings = vars.into_iter().collect();
        let depth = self.templatefile_depth.get();
        if depth >= MAX_TEMPLATEFILE_DEPTH {
            return Err(Diag::new(cx.file, span, format!("templatefile nests more than {MAX_TEMPLATEFILE_DEPTH} deep ({path}): does the template include itself?")));
        }
        self.templatefile_depth.set(depth + 1);
        let result = self.template(&template, &inner);
        self.templatefile_depth.set(depth);
        result.map_err(|d| Diag {
            file: cx.file,
            span: span.clone(),
            message: d.message.map(|m| {
                if m.starts_with("templatefile") {
                    m
                } else {
                    format!("templatefile {path}: {m}")
                }
            }),
        })
    }
}

/// A string longer than one value may be is a problem, as in the JSON path
/// (`template/limits.rs`).
fn bounded(v: Value, cx: &Ctx, span: Option<Range<usize>>) -> R {
    match &v {
        Value::String(t) if t.s.len() > MAX_VALUE_BYTES => {
            Err(Diag::new(cx.file, span, value_too_long()))
        }
        _ => Ok(v),
    }
}

fn strip(out: &mut Text, s: Strip, strip_next: &mut bool) {
    if s.strip_start() {
        let trimmed = out.s.trim_end().len();
        out.s.truncate(trimmed);
    }
    *strip_next = false;
}

/// A sensitive value as the placeholder the JSON path resolves: `{{user `NAME`}}`.
fn sensitive_text(v: &Value, json_name: &str, reference: &str) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(Value::String(Text {
            s: format!("{{{{user `{json_name}`}}}}"),
            later: vec![reference.to_string()],
        })),
        other => Err(format!(
            "{reference} is sensitive and a {}: only strings, numbers and bools can be sensitive here (its value is put in place when the build runs)",
            other.type_name()
        )),
    }
}

/// Why a value put in place later cannot go through `what`.
pub(crate) fn later_message(reference: &str, what: &str) -> String {
    if reference.starts_with("build.") {
        format!(
            "{what} cannot take {reference}: build data is known only when the build runs; use it as it is in a string (\"...${{{reference}}}...\")"
        )
    } else {
        format!(
            "{what} cannot take {reference}: it is sensitive, and its value is put in place only when used; use it as it is in a string, or compute the new value in a `local` block with `sensitive = true`"
        )
    }
}

fn place_name(p: Place) -> &'static str {
    match p {
        Place::VarDefault => "a variable's default",
        Place::VarValue => "a variable's value",
        Place::Validation => "a validation block",
        Place::Local => "a local",
        Place::Source => "a source block",
        Place::Build => "a build block",
    }
}

/// HCL equality: same type and same value (numbers by value).
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.s == y.s,
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && equal(v1, v2))
        }
        _ => a == b,
    }
}
