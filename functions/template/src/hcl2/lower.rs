//! From HCL2 blocks to the JSON template: `packer` checks, `locals`, each `source` of each
//! `build` as a builder, provisioners and post-processors with their `only`/`except`/
//! `override` resolved per build.
//!
//! Builders are named as Packer names HCL2 builds: `TYPE.NAME`, or `BUILD.TYPE.NAME` in a
//! named `build` block. A provisioner is evaluated once per build it applies to (it may use
//! `source.name`, or be overridden for one source); builds that give the same JSON share
//! one entry, restricted with `only` when it is not every build of the template.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::Span;
use serde_json::{json, Map, Value as J};

use super::eval::{Ctx, Diag, Evaluator, LocalDef, Place, VarValue};
use super::files::{self, SourceFile};
use super::value::Value;
use super::variables::{self, did_you_mean_or_list, push_diag, VarDecl, VarInputs};
use super::{block_label, did_you_mean, problem_at, Hcl2Template};
use crate::config::BuilderType;
use crate::problem::Problem;
use crate::template::inspect::{BuilderSummary, StepSummary, TemplateSummary, VariableSummary};
use crate::template::secrets::{Secrets, MASK};
use crate::template::version::Version;
use crate::template::PACKER_COMPAT_VERSION;
use crate::PrepareOptions;

/// Where a part of the lowered template was written: `builder` and `key` as the JSON
/// path's problems name them (`ami_name`, `provisioners[2]`), `at` as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub builder: Option<String>,
    pub key: String,
    pub at: String,
}

/// The most specific origin for a problem of the JSON path.
pub(crate) fn origin_of<'o>(
    origins: &'o [Origin],
    builder: Option<&str>,
    key: Option<&str>,
) -> Option<&'o str> {
    let key = key.unwrap_or("");
    origins
        .iter()
        .filter(|o| {
            o.builder.as_deref() == builder
                || (builder.is_some() && o.builder.is_none() && !o.key.is_empty())
        })
        .filter(|o| {
            o.key.is_empty()
                || key == o.key
                || (key.starts_with(&o.key) && key[o.key.len()..].starts_with(['.', '[', ' ']))
        })
        .max_by_key(|o| (o.builder.as_deref() == builder, o.key.len()))
        .map(|o| o.at.as_str())
}

const TOP_BLOCKS: [&str; 7] = [
    "build", "data", "local", "locals", "packer", "source", "variable",
];
const BUILD_KEYS: [&str; 9] = [
    "description",
    "error-cleanup-provisioner",
    "hcp_packer_registry",
    "name",
    "post-processor",
    "post-processors",
    "provisioner",
    "source",
    "sources",
];
/// Blocks that Packer repeats into a list even when there is one.
const LIST_BLOCKS: [&str; 5] = [
    "ami_block_device_mappings",
    "ebs_volumes",
    "launch_block_device_mappings",
    "region_launch_templates",
    "Statement",
];
/// `tag { key = ..., value = ... }`-style blocks, folded into their map.
const FOLDED_BLOCKS: [(&str, &str); 8] = [
    ("tag", "tags"),
    ("run_tag", "run_tags"),
    ("run_volume_tag", "run_volume_tags"),
    ("spot_tag", "spot_tags"),
    ("fleet_tag", "fleet_tags"),
    ("snapshot_tag", "snapshot_tags"),
    ("root_volume_tag", "root_volume_tags"),
    ("filter", "filters"),
];

/// One source of one build: a builder of the JSON template.
struct Instance<'a> {
    ty: String,
    /// The source's name in this build (`name = ...` in a build-level source block renames it).
    name: String,
    /// The builder's name: `TYPE.NAME` or `BUILD.TYPE.NAME`.
    full: String,
    base: (usize, &'a Block),
    /// A build-level `source "source.TYPE.NAME" { ... }` body adding fields.
    extra: Option<(usize, &'a Body)>,
    at: String,
}

impl Instance<'_> {
    /// Whether an `only`/`except` entry names this build: `TYPE.NAME` (as Packer writes
    /// them) or the full build name.
    fn named(&self, n: &str) -> bool {
        n == format!("{}.{}", self.ty, self.name) || n == self.full
    }
}

struct BuildBlock<'a> {
    file: usize,
    block: &'a Block,
    description: Option<String>,
    instances: Vec<Instance<'a>>,
}

/// A `locals` attribute or a `local` block.
struct LocalEntry<'a> {
    file: usize,
    name: String,
    expr: &'a Expression,
    sensitive: bool,
    span: Option<Range<usize>>,
}

/// A source a `build` block uses: `sources = [...]` entries and `source` blocks.
struct SourceRef<'a> {
    reference: String,
    /// A build-level source block's body (and its file).
    extra: Option<(usize, &'a Body)>,
    rename: Option<String>,
    span: Option<Range<usize>>,
}

/// A nested block's body with what it is evaluated in (a `dynamic` iterator bound).
type Expanded<'a, 'c> = (&'a Body, Ctx<'c>, Option<Range<usize>>);

/// The top-level blocks of every file.
#[derive(Default)]
struct Scan<'a> {
    packer: Vec<(usize, &'a Block)>,
    variables: Vec<(usize, &'a Block)>,
    locals: Vec<LocalEntry<'a>>,
    sources: BTreeMap<(String, String), (usize, &'a Block)>,
    data: BTreeMap<(String, String), (usize, &'a Block)>,
    builds: Vec<(usize, &'a Block)>,
}

fn scan<'a>(
    files: &[SourceFile],
    bodies: &'a [(usize, Body)],
    problems: &mut Vec<Problem>,
) -> Scan<'a> {
    let mut s = Scan::default();
    for (file, body) in bodies {
        let file = *file;
        let at = |span: Option<Range<usize>>| files[file].at(span);
        for item in body.iter() {
            let block = match item {
                Structure::Block(b) => b,
                Structure::Attribute(a) => {
                    problems.push(problem_at(
                        at(a.key.span()),
                        "",
                        format!(
                            "`{}` cannot be set at the top level: a template holds blocks ({})",
                            a.key.value().as_str(),
                            TOP_BLOCKS.join(", ")
                        ),
                    ));
                    continue;
                }
            };
            let ident = block.ident.value().as_str();
            match ident {
                "packer" => s.packer.push((file, block)),
                "variable" => s.variables.push((file, block)),
                "locals" => {
                    for item in block.body.iter() {
                        match item {
                            Structure::Attribute(a) => s.locals.push(LocalEntry {
                                file,
                                name: a.key.value().as_str().to_string(),
                                expr: &a.value,
                                sensitive: false,
                                span: a.key.span(),
                            }),
                            Structure::Block(b) => problems.push(problem_at(
                                at(b.span()),
                                "locals",
                                "a locals block holds `name = expression` lines, not blocks",
                            )),
                        }
                    }
                }
                "local" => {
                    let Some(labels) = block_label(block, 1, "local \"name\"", &at, problems)
                    else {
                        continue;
                    };
                    let mut sensitive = false;
                    let mut expr = None;
                    for item in block.body.iter() {
                        match item {
                            Structure::Attribute(a) if a.key.value().as_str() == "expression" => {
                                expr = Some(&a.value)
                            }
                            Structure::Attribute(a) if a.key.value().as_str() == "sensitive" => {
                                match &a.value {
                                    Expression::Bool(b) => sensitive = *b.value(),
                                    _ => problems.push(problem_at(
                                        at(a.value.span()),
                                        &format!("local \"{}\"", labels[0]),
                                        "`sensitive` must be true or false",
                                    )),
                                }
                            }
                            other => {
                                let k = match other {
                                    Structure::Attribute(a) => a.key.value().as_str().to_string(),
                                    Structure::Block(b) => b.ident.value().as_str().to_string(),
                                };
                                problems.push(problem_at(
                                    at(other.span()),
                                    &format!("local \"{}\"", labels[0]),
                                    format!(
                                        "unknown `{k}`{}",
                                        did_you_mean_or_list(&k, &["expression", "sensitive"])
                                    ),
                                ));
                            }
                        }
                    }
                    match expr {
                        Some(e) => s.locals.push(LocalEntry {
                            file,
                            name: labels[0].clone(),
                            expr: e,
                            sensitive,
                            span: block.span(),
                        }),
                        None => problems.push(problem_at(
                            at(block.span()),
                            &format!("local \"{}\"", labels[0]),
                            "a local block needs `expression = ...`",
                        )),
                    }
                }
                "source" => {
                    let Some(labels) =
                        block_label(block, 2, "source \"amazon-ebs\" \"name\"", &at, problems)
                    else {
                        continue;
                    };
                    let key = (labels[0].clone(), labels[1].clone());
                    if let Some((f0, b0)) = s.sources.get(&key) {
                        problems.push(problem_at(
                            at(block.span()),
                            &format!("source \"{}\" \"{}\"", key.0, key.1),
                            format!(
                                "is defined twice (first at {}); give each source a different name",
                                files[*f0].at(b0.span())
                            ),
                        ));
                        continue;
                    }
                    if BuilderType::parse(&key.0).is_none() {
                        let known: Vec<&str> =
                            BuilderType::ALL.iter().map(|t| t.as_str()).collect();
                        problems.push(problem_at(
                            at(block.labels[0].span()),
                            &format!("source \"{}\" \"{}\"", key.0, key.1),
                            format!(
                                "builder type `{}` is not supported{}; amiflow builds {}",
                                key.0,
                                did_you_mean(&key.0, known.iter().copied()),
                                known.join(", ")
                            ),
                        ));
                    }
                    s.sources.insert(key, (file, block));
                }
                "build" => s.builds.push((file, block)),
                "data" => {
                    let Some(labels) =
                        block_label(block, 2, "data \"amazon-ami\" \"name\"", &at, problems)
                    else {
                        continue;
                    };
                    let key = (labels[0].clone(), labels[1].clone());
                    if super::data::kind(&key.0).is_none() {
                        let known: Vec<&str> = super::data::KINDS.iter().map(|k| k.name).collect();
                        problems.push(problem_at(
                            at(block.labels[0].span()),
                            &format!("data \"{}\" \"{}\"", key.0, key.1),
                            format!(
                                "data source `{}` is not supported{}; amiflow reads {}",
                                key.0,
                                did_you_mean(&key.0, known.iter().copied()),
                                known.join(", ")
                            ),
                        ));
                        continue;
                    }
                    if let Some((f0, b0)) = s.data.get(&key) {
                        problems.push(problem_at(
                            at(block.span()),
                            &format!("data \"{}\" \"{}\"", key.0, key.1),
                            format!("is defined twice (first at {}); give each data source a different name", files[*f0].at(b0.span())),
                        ));
                        continue;
                    }
                    s.data.insert(key, (file, block));
                }
                "variables" => problems.push(problem_at(
                    at(block.ident.span()),
                    "",
                    "declare each variable in its own block: variable \"name\" { default = ... }",
                )),
                other => problems.push(problem_at(
                    at(block.ident.span()),
                    "",
                    format!(
                        "unknown block `{other}`{}",
                        did_you_mean_or_list(other, &TOP_BLOCKS)
                    ),
                )),
            }
        }
    }
    s
}

/// `required_version` and `required_plugins` of `packer` blocks.
fn check_packer(ev: &Evaluator, blocks: &[(usize, &Block)], problems: &mut Vec<Problem>) {
    for (file, block) in blocks {
        let at = |span: Option<Range<usize>>| ev.files[*file].at(span);
        let cx = Ctx::new(*file, Place::VarValue);
        for item in block.body.iter() {
            match item {
                Structure::Attribute(a) if a.key.value().as_str() == "required_version" => {
                    match ev.eval(&a.value, &cx) {
                        Ok(Value::String(t)) => {
                            if let Err(m) = version_allows(&t.s, PACKER_COMPAT_VERSION) {
                                problems.push(problem_at(at(a.value.span()), "packer", m));
                            }
                        }
                        Ok(other) => problems.push(problem_at(
                            at(a.value.span()),
                            "packer",
                            format!(
                                "required_version must be a string like \">= 1.7.0\", found a {}",
                                other.type_name()
                            ),
                        )),
                        Err(d) => push_diag(ev.files, d, "packer", problems),
                    }
                }
                Structure::Block(b) if b.ident.value().as_str() == "required_plugins" => {
                    for p in b.body.attributes() {
                        let name = p.key.value().as_str();
                        let source = match ev.eval(&p.value, &cx) {
                            Ok(Value::Map(m)) => m.get("source").map(|s| s.to_string()),
                            Ok(Value::String(t)) => Some(t.s),
                            _ => None,
                        };
                        let amazon = match &source {
                            Some(s) => {
                                s.trim_end_matches('/').rsplit('/').next() == Some("amazon")
                                    && s.contains("hashicorp")
                            }
                            None => name == "amazon",
                        };
                        if !amazon {
                            problems.push(problem_at(
                                at(p.key.span()),
                                "packer.required_plugins",
                                format!(
                                    "plugin `{name}`{} is not supported: amiflow runs the amazon plugin's builders (source github.com/hashicorp/amazon) with shell, file and shell-local provisioners; remove it",
                                    source.map(|s| format!(" ({s})")).unwrap_or_default()
                                ),
                            ));
                        }
                    }
                }
                other => {
                    let k = match other {
                        Structure::Attribute(a) => a.key.value().as_str().to_string(),
                        Structure::Block(b) => b.ident.value().as_str().to_string(),
                    };
                    problems.push(problem_at(
                        at(other.span()),
                        "packer",
                        format!(
                            "unknown `{k}`{}",
                            did_you_mean_or_list(&k, &["required_plugins", "required_version"])
                        ),
                    ));
                }
            }
        }
    }
}

/// Checks a version constraint like `>= 1.7.0, < 2.0.0` (also `~>`, `=`, `!=`).
pub(crate) fn version_allows(constraint: &str, have: &str) -> Result<(), String> {
    let have_v = Version::parse(have).map_err(|e| e.to_string())?;
    for part in constraint.split(',') {
        let part = part.trim();
        let (op, v) = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|rest| (*op, rest.trim())))
            .unwrap_or(("=", part));
        let want =
            Version::parse(v).map_err(|e| format!("required_version {constraint:?}: {e}"))?;
        let ok = match op {
            ">=" => have_v >= want,
            "<=" => have_v <= want,
            ">" => have_v > want,
            "<" => have_v < want,
            "!=" => have_v != want,
            "~>" => {
                // ~> 1.7 allows 1.x from 1.7; ~> 1.7.2 allows 1.7.x from 1.7.2.
                let parts = v.split('.').count();
                let lower_ok = have_v >= want;
                let prefix: Vec<&str> = v.split('.').take(parts.saturating_sub(1).max(1)).collect();
                let have_prefix: Vec<&str> = have.split('.').take(prefix.len()).collect();
                lower_ok && prefix == have_prefix
            }
            _ => have_v == want,
        };
        if !ok {
            return Err(format!(
                "the template requires Packer {constraint}; amiflow follows Packer {have}"
            ));
        }
    }
    Ok(())
}

/// Glob match of -only/-except patterns (`*` matches any run of characters).
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn m(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| m(&p[1..], &n[i..])),
            Some(c) => n.first() == Some(c) && m(&p[1..], &n[1..]),
        }
    }
    m(&p, &n)
}

struct Lowering<'a, 'e> {
    ev: &'e Evaluator<'a>,
    problems: Vec<Problem>,
    origins: Vec<Origin>,
}

impl<'a> Lowering<'a, '_> {
    fn at(&self, file: usize, span: Option<Range<usize>>) -> String {
        self.ev.files[file].at(span)
    }

    fn diag(&mut self, d: Diag, what: &str) {
        push_diag(self.ev.files, d, what, &mut self.problems);
    }

    fn origin(
        &mut self,
        builder: Option<&str>,
        key: String,
        file: usize,
        span: Option<Range<usize>>,
    ) {
        let at = self.at(file, span);
        self.origins.push(Origin {
            builder: builder.map(String::from),
            key,
            at,
        });
    }

    /// A body as a JSON object: attributes evaluated (null ones left out), nested blocks as
    /// objects or lists of objects, `dynamic` blocks expanded, tag and filter blocks folded
    /// into their maps. `path` is the dotted key of the body, for origins.
    fn body<'c>(
        &mut self,
        body: &'a Body,
        cx: &Ctx<'c>,
        path: &str,
        builder: Option<&str>,
        skip: &[&str],
        what: &str,
    ) -> Map<String, J> {
        let mut out = Map::new();
        let child = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        let mut set: BTreeSet<String> = BTreeSet::new();
        for a in body.attributes() {
            let key = a.key.value().as_str();
            if skip.contains(&key) {
                continue;
            }
            if !set.insert(key.to_string()) {
                let at = self.at(cx.file, a.key.span());
                self.problems.push(problem_at(
                    at,
                    what,
                    format!("`{}` is set twice", child(key)),
                ));
                continue;
            }
            self.origin(builder, child(key), cx.file, a.key.span());
            match self.ev.eval(&a.value, cx) {
                Ok(Value::Null) => {}
                Ok(v) => {
                    out.insert(key.to_string(), v.to_json());
                }
                Err(d) => self.diag(d, what),
            }
        }
        // Blocks in order of first appearance, `dynamic` ones expanded.
        let mut groups: Vec<(String, Vec<Expanded<'a, 'c>>)> = Vec::new();
        for b in body.blocks() {
            let ident = b.ident.value().as_str();
            if skip.contains(&ident) {
                continue;
            }
            let expanded = if ident == "dynamic" {
                self.dynamic(b, cx, what)
            } else {
                if !b.labels.is_empty() {
                    let at = self.at(cx.file, b.ident.span());
                    self.problems.push(problem_at(
                        at,
                        what,
                        format!("a `{ident}` block takes no label here"),
                    ));
                }
                vec![(ident.to_string(), (&b.body, cx.clone(), b.ident.span()))]
            };
            for (name, (body, bcx, span)) in expanded {
                match groups.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, items)) => items.push((body, bcx, span)),
                    None => groups.push((name, vec![(body, bcx, span)])),
                }
            }
        }
        for (ident, items) in groups {
            if let Some((_, target)) = FOLDED_BLOCKS.iter().find(|(b, _)| *b == ident) {
                let mut map = match out.remove(*target) {
                    Some(J::Object(m)) => m,
                    _ => Map::new(),
                };
                for (body, bcx, span) in &items {
                    self.origin(builder, child(target), bcx.file, span.clone());
                    if let Some((k, v)) = self.pair(body, bcx, &ident, what) {
                        map.insert(k, J::String(v));
                    }
                }
                out.insert(target.to_string(), J::Object(map));
                continue;
            }
            if set.contains(&ident) {
                let at = self.at(items[0].1.file, items[0].2.clone());
                self.problems.push(problem_at(
                    at,
                    what,
                    format!(
                        "`{}` is set both as an attribute and as a block; keep one",
                        child(&ident)
                    ),
                ));
                continue;
            }
            self.origin(builder, child(&ident), items[0].1.file, items[0].2.clone());
            if items.len() > 1 || LIST_BLOCKS.contains(&ident.as_str()) {
                let mut list = Vec::new();
                for (i, (body, bcx, _)) in items.iter().enumerate() {
                    let p = format!("{}[{i}]", child(&ident));
                    list.push(J::Object(self.body(body, bcx, &p, builder, &[], what)));
                }
                out.insert(ident, J::Array(list));
            } else {
                let (body, bcx, _) = &items[0];
                let obj = self.body(body, bcx, &child(&ident), builder, &[], what);
                out.insert(ident, J::Object(obj));
            }
        }
        out
    }

    /// `dynamic "NAME" { for_each = ..., iterator = it, content { ... } }`: one body per element.
    fn dynamic<'c>(
        &mut self,
        b: &'a Block,
        cx: &Ctx<'c>,
        what: &str,
    ) -> Vec<(String, Expanded<'a, 'c>)> {
        let at = self.at(cx.file, b.span());
        let Some(name) = b.labels.first().map(|l| l.as_str().to_string()) else {
            self.problems.push(problem_at(at, what, "a dynamic block names the block it makes: dynamic \"launch_block_device_mappings\" { ... }"));
            return Vec::new();
        };
        let mut iterator = name.clone();
        let mut for_each = None;
        let mut content = None;
        for item in b.body.iter() {
            match item {
                Structure::Attribute(a) => match a.key.value().as_str() {
                    "for_each" => for_each = Some(&a.value),
                    "iterator" => match &a.value {
                        Expression::Variable(v) => iterator = v.value().as_str().to_string(),
                        _ => self.problems.push(problem_at(self.at(cx.file, a.value.span()), what, "`iterator` takes a plain name, e.g. iterator = disk")),
                    },
                    "labels" => {}
                    other => self.problems.push(problem_at(
                        self.at(cx.file, a.key.span()),
                        what,
                        format!("unknown `{other}` in a dynamic block{}", did_you_mean_or_list(other, &["content", "for_each", "iterator", "labels"])),
                    )),
                },
                Structure::Block(c) if c.ident.value().as_str() == "content" => content = Some(&c.body),
                Structure::Block(c) => self.problems.push(problem_at(
                    self.at(cx.file, c.ident.span()),
                    what,
                    format!("unknown block `{}` in a dynamic block; the blocks it makes go in `content {{ ... }}`", c.ident.value().as_str()),
                )),
            }
        }
        let (Some(for_each), Some(content)) = (for_each, content) else {
            self.problems.push(problem_at(
                at,
                what,
                format!(
                    "dynamic \"{name}\" needs `for_each = ...` and a `content {{ ... }}` block"
                ),
            ));
            return Vec::new();
        };
        let coll = match self.ev.eval(for_each, cx) {
            Ok(v) => v,
            Err(d) => {
                self.diag(d, what);
                return Vec::new();
            }
        };
        let pairs = match self.ev.iterate(coll, for_each, cx) {
            Ok(p) => p,
            Err(d) => {
                self.diag(d, what);
                return Vec::new();
            }
        };
        pairs
            .into_iter()
            .map(|(k, v)| {
                let it = Value::Map([("key".to_string(), k), ("value".to_string(), v)].into());
                (name.clone(), (content, cx.bind(&iterator, it), b.span()))
            })
            .collect()
    }

    /// A tag or filter block's (key, value): `key`/`name` and `value` (a filter's `values`
    /// list becomes the comma-separated text the filters map holds).
    fn pair(
        &mut self,
        body: &'a Body,
        cx: &Ctx,
        ident: &str,
        what: &str,
    ) -> Option<(String, String)> {
        let mut key = None;
        let mut value = None;
        for a in body.attributes() {
            let k = a.key.value().as_str();
            let v = match self.ev.eval(&a.value, cx) {
                Ok(v) => v,
                Err(d) => {
                    self.diag(d, what);
                    return None;
                }
            };
            let text = match (&v, k) {
                (Value::List(items), "values") => Some(
                    items
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                (other, _) => other.as_text().map(|t| t.s),
            };
            match (k, text) {
                ("key" | "name", Some(t)) => key = Some(t),
                ("value" | "values", Some(t)) => value = Some(t),
                (_, None) => {
                    let at = self.at(cx.file, a.value.span());
                    self.problems.push(problem_at(
                        at,
                        what,
                        format!(
                            "`{k}` of a {ident} block must be a string, found a {}",
                            v.type_name()
                        ),
                    ));
                    return None;
                }
                (other, _) => {
                    let at = self.at(cx.file, a.key.span());
                    self.problems.push(problem_at(
                        at,
                        what,
                        format!(
                            "unknown `{other}` in a {ident} block{}",
                            did_you_mean_or_list(other, &["key", "name", "value"])
                        ),
                    ));
                }
            }
        }
        match (key, value) {
            (Some(k), Some(v)) => Some((k, v)),
            _ => {
                let at = self.at(cx.file, body.span());
                self.problems.push(problem_at(
                    at,
                    what,
                    format!("a {ident} block needs `key` (or `name`) and `value`"),
                ));
                None
            }
        }
    }

    fn string_list(&mut self, e: &Expression, cx: &Ctx, what: &str) -> Vec<String> {
        match self.ev.eval(e, cx) {
            Ok(Value::List(items)) => items
                .iter()
                .filter_map(|i| match i.as_text() {
                    Some(t) => Some(t.s),
                    None => {
                        let at = self.at(cx.file, e.span());
                        self.problems.push(problem_at(
                            at,
                            what,
                            format!("expected a list of names, found a {} in it", i.type_name()),
                        ));
                        None
                    }
                })
                .collect(),
            Ok(other) => {
                let at = self.at(cx.file, e.span());
                self.problems.push(problem_at(
                    at,
                    what,
                    format!(
                        "expected a list of names, e.g. [\"amazon-ebs.first\"], found a {}",
                        other.type_name()
                    ),
                ));
                Vec::new()
            }
            Err(d) => {
                self.diag(d, what);
                Vec::new()
            }
        }
    }

    /// The builds of a `build` block.
    fn build_block(
        &mut self,
        file: usize,
        block: &'a Block,
        sources: &BTreeMap<(String, String), (usize, &'a Block)>,
    ) -> BuildBlock<'a> {
        let cx = Ctx::new(file, Place::Build);
        let what = "build";
        let mut name = None;
        let mut description = None;
        let mut refs: Vec<SourceRef<'a>> = Vec::new();
        for item in block.body.iter() {
            match item {
                Structure::Attribute(a) => {
                    let key = a.key.value().as_str();
                    match key {
                        "name" | "description" => match self.ev.eval(&a.value, &cx) {
                            Ok(v) => {
                                if key == "name" {
                                    name = Some(v.to_string());
                                } else {
                                    description = Some(v.to_string());
                                }
                            }
                            Err(d) => self.diag(d, what),
                        },
                        "sources" => {
                            for s in self.string_list(&a.value, &cx, what) {
                                refs.push(SourceRef {
                                    reference: s,
                                    extra: None,
                                    rename: None,
                                    span: a.value.span(),
                                });
                            }
                        }
                        other => {
                            let at = self.at(file, a.key.span());
                            self.problems.push(problem_at(
                                at,
                                what,
                                format!(
                                    "unknown attribute `{other}`{}",
                                    did_you_mean_or_list(other, &BUILD_KEYS)
                                ),
                            ));
                        }
                    }
                }
                Structure::Block(b) => match b.ident.value().as_str() {
                    "source" => {
                        let at = |span| self.ev.files[file].at(span);
                        let mut local = Vec::new();
                        let Some(labels) =
                            block_label(b, 1, "source \"source.amazon-ebs.name\"", &at, &mut local)
                        else {
                            self.problems.extend(local);
                            continue;
                        };
                        let rename = match b.body.get_attribute("name") {
                            Some(a) => match self.ev.eval(&a.value, &cx) {
                                Ok(v) => Some(v.to_string()),
                                Err(d) => {
                                    self.diag(d, what);
                                    None
                                }
                            },
                            None => None,
                        };
                        refs.push(SourceRef {
                            reference: labels[0].clone(),
                            extra: Some((file, &b.body)),
                            rename,
                            span: b.labels[0].span(),
                        });
                    }
                    "hcp_packer_registry" => {
                        let at = self.at(file, b.ident.span());
                        self.problems.push(problem_at(
                            at,
                            what,
                            "hcp_packer_registry is not supported: amiflow does not publish to HCP Packer; remove the block (the AMI ids are in the execution output and the manifest post-processor's file)",
                        ));
                    }
                    "provisioner"
                    | "post-processor"
                    | "post-processors"
                    | "error-cleanup-provisioner" => {}
                    other => {
                        let at = self.at(file, b.ident.span());
                        self.problems.push(problem_at(
                            at,
                            what,
                            format!(
                                "unknown block `{other}`{}",
                                did_you_mean_or_list(other, &BUILD_KEYS)
                            ),
                        ));
                    }
                },
            }
        }
        let known: Vec<String> = sources
            .keys()
            .map(|(t, n)| format!("source.{t}.{n}"))
            .collect();
        let mut instances = Vec::new();
        for SourceRef {
            reference,
            extra,
            rename,
            span,
        } in refs
        {
            let at = self.at(file, span);
            let parts: Vec<&str> = reference
                .strip_prefix("source.")
                .unwrap_or(&reference)
                .splitn(2, '.')
                .collect();
            let found = match parts.as_slice() {
                [t, n] => sources
                    .get(&(t.to_string(), n.to_string()))
                    .map(|b| (t.to_string(), n.to_string(), *b)),
                _ => None,
            };
            let Some((ty, base_name, base)) = found else {
                self.problems.push(problem_at(
                    at,
                    what,
                    format!(
                        "`{reference}` names no source{} (sources: {})",
                        did_you_mean(&reference, known.iter().map(String::as_str)),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
                continue;
            };
            let src_name = rename.unwrap_or(base_name);
            let full = match &name {
                Some(b) => format!("{b}.{ty}.{src_name}"),
                None => format!("{ty}.{src_name}"),
            };
            instances.push(Instance {
                ty,
                name: src_name,
                full,
                base,
                extra,
                at,
            });
        }
        if instances.is_empty() && refs_empty_problem(block) {
            let at = self.at(file, block.ident.span());
            self.problems.push(problem_at(at, what, "the build has no sources: add sources = [\"source.amazon-ebs.NAME\"] or a source block"));
        }
        BuildBlock {
            file,
            block,
            description,
            instances,
        }
    }

    /// The builder JSON of one source in one build.
    fn builder(&mut self, inst: &Instance<'a>) -> J {
        let (bf, base) = inst.base;
        let what = format!("source \"{}\" \"{}\"", inst.ty, inst.name);
        let mut cx = Ctx::new(bf, Place::Source);
        cx.source = Some((inst.ty.as_str(), inst.name.as_str()));
        for reserved in ["name", "type"] {
            if let Some(a) = base.body.get_attribute(reserved) {
                let at = self.at(bf, a.key.span());
                self.problems.push(problem_at(
                    at,
                    &what,
                    format!("`{reserved}` is given by the block's labels; rename the source in a build-level source block instead"),
                ));
            }
        }
        self.origin(Some(&inst.full), String::new(), bf, base.span());
        let mut cfg = self.body(
            &base.body,
            &cx,
            "",
            Some(&inst.full),
            &["name", "type"],
            &what,
        );
        if let Some((ef, extra)) = inst.extra {
            let mut ecx = Ctx::new(ef, Place::Source);
            ecx.source = cx.source;
            let origins_before = self.origins.len();
            let added = self.body(extra, &ecx, "", Some(&inst.full), &["name"], &what);
            for (k, v) in added {
                if cfg.contains_key(&k) {
                    let first = self.origins[..origins_before]
                        .iter()
                        .rev()
                        .find(|o| o.builder.as_deref() == Some(&inst.full) && o.key == k)
                        .map(|o| o.at.clone())
                        .unwrap_or_default();
                    let at = self.origins[origins_before..]
                        .iter()
                        .find(|o| o.key == k)
                        .map(|o| o.at.clone())
                        .unwrap_or_else(|| inst.at.clone());
                    self.problems.push(problem_at(
                        at,
                        &what,
                        format!("`{k}` is already set in the source block (at {first}): a build-level source block may only add fields"),
                    ));
                } else {
                    cfg.insert(k, v);
                }
            }
        }
        let mut out = Map::new();
        out.insert("type".into(), J::String(inst.ty.clone()));
        out.insert("name".into(), J::String(inst.full.clone()));
        out.extend(cfg);
        J::Object(out)
    }

    /// A provisioner or post-processor block for one build: `None` when its only/except
    /// leave this build out. `override` (provisioners) is merged in.
    fn step(
        &mut self,
        file: usize,
        b: &'a Block,
        inst: &Instance,
        all: &[Instance],
        kind: &str,
    ) -> Option<J> {
        let ty = b
            .labels
            .first()
            .map(|l| l.as_str().to_string())
            .unwrap_or_default();
        let what = format!("{kind} \"{ty}\"");
        let mut cx = Ctx::new(file, Place::Build);
        cx.source = Some((inst.ty.as_str(), inst.name.as_str()));
        let names: Vec<String> = all.iter().map(|i| format!("{}.{}", i.ty, i.name)).collect();
        for key in ["only", "except"] {
            let Some(a) = b.body.get_attribute(key) else {
                continue;
            };
            let list = self.string_list(&a.value, &cx, &what);
            for n in &list {
                if !all.iter().any(|i| i.named(n)) {
                    let at = self.at(file, a.value.span());
                    let problem = problem_at(
                        at,
                        &what,
                        format!(
                            "{key} names `{n}`, which is no source of this build{} (sources: {})",
                            did_you_mean(n, names.iter().map(String::as_str)),
                            names.join(", ")
                        ),
                    );
                    if !self.problems.contains(&problem) {
                        self.problems.push(problem);
                    }
                }
            }
            let hit = list.iter().any(|n| inst.named(n));
            if (key == "only" && !hit) || (key == "except" && hit) {
                return None;
            }
        }
        let mut cfg = self.body(
            &b.body,
            &cx,
            "",
            None,
            &["only", "except", "override"],
            &what,
        );
        if let Some(a) = b.body.get_attribute("override") {
            match self.ev.eval(&a.value, &cx) {
                Ok(Value::Map(m)) => {
                    for (k, v) in &m {
                        let matches = *k == inst.name || inst.named(k);
                        if !all.iter().any(|i| *k == i.name || i.named(k)) {
                            let at = self.at(file, a.value.span());
                            let problem = problem_at(at, &what, format!("override names `{k}`, which is no source of this build (sources: {})", names.join(", ")));
                            if !self.problems.contains(&problem) {
                                self.problems.push(problem);
                            }
                        }
                        if matches {
                            match v.to_json() {
                                J::Object(o) => {
                                    cfg.extend(o.into_iter().filter(|(_, v)| !v.is_null()))
                                }
                                _ => {
                                    let at = self.at(file, a.value.span());
                                    self.problems.push(problem_at(
                                        at,
                                        &what,
                                        format!("override `{k}` must be an object of settings"),
                                    ));
                                }
                            }
                        }
                    }
                }
                Ok(other) => {
                    let at = self.at(file, a.value.span());
                    self.problems.push(problem_at(
                        at,
                        &what,
                        format!(
                            "override must be a map of source name to settings, found a {}",
                            other.type_name()
                        ),
                    ));
                }
                Err(d) => self.diag(d, &what),
            }
        }
        let mut out = Map::new();
        out.insert("type".into(), J::String(ty));
        out.extend(cfg);
        Some(J::Object(out))
    }
}

fn refs_empty_problem(block: &Block) -> bool {
    block.body.get_attribute("sources").is_none()
        && !block
            .body
            .blocks()
            .any(|b| b.ident.value().as_str() == "source")
}

/// Per-build values grouped: builds that give the same value share one entry.
fn group(values: Vec<(String, J)>) -> Vec<(J, Vec<String>)> {
    let mut groups: Vec<(J, Vec<String>)> = Vec::new();
    for (name, v) in values {
        match groups.iter_mut().find(|(g, _)| *g == v) {
            Some((_, names)) => names.push(name),
            None => groups.push((v, vec![name])),
        }
    }
    groups
}

fn with_only(mut v: J, names: &[String], every: usize) -> J {
    if names.len() != every {
        if let J::Object(m) = &mut v {
            m.insert("only".into(), json!(names));
        }
    }
    v
}

/// Everything up to evaluation: files, top-level blocks, variables, locals.
struct Loaded {
    files: Vec<SourceFile>,
    bodies: Vec<(usize, Body)>,
    var_files: Vec<usize>,
    root: PathBuf,
}

fn load(
    path: &Path,
    var_files: &[PathBuf],
    problems: &mut Vec<Problem>,
) -> Result<Loaded, Vec<Problem>> {
    let (inputs, found) = files::read(path)?;
    problems.extend(found);
    let mut files = inputs.files;
    let mut order = inputs.auto_var_files;
    for p in var_files {
        let name = p.display().to_string();
        match std::fs::read_to_string(p) {
            Ok(text) => {
                order.push(files.len());
                files.push(SourceFile::new(
                    name.clone(),
                    text,
                    !name.ends_with(".json"),
                ));
            }
            Err(e) => problems.push(Problem::new(format!(
                "-var-file {name}: cannot read it: {e}"
            ))),
        }
    }
    Ok(Loaded {
        files,
        bodies: inputs.bodies,
        var_files: order,
        root: inputs.root,
    })
}

fn cwd() -> String {
    std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| ".".into())
}

pub(crate) fn lower(path: &Path, opts: &PrepareOptions) -> Result<Hcl2Template, Vec<Problem>> {
    let mut problems = Vec::new();
    let loaded = load(path, &opts.var_files, &mut problems)?;
    let scan = scan(&loaded.files, &loaded.bodies, &mut problems);
    let root = loaded.root.display().to_string();
    let mut ev = Evaluator::new(
        &loaded.files,
        BTreeMap::new(),
        Vec::new(),
        BTreeMap::new(),
        opts.build_time,
        &opts.env,
        root,
        cwd(),
    );

    check_packer(&ev, &scan.packer, &mut problems);
    let decls = declare_all(&scan, &ev, &mut problems);
    let inputs = VarInputs {
        env: &opts.env,
        var_files: loaded.var_files.clone(),
        vars: &opts.vars,
    };
    ev.vars = variables::resolve(&decls, &inputs, &ev, &mut problems);
    ev.declared = decls.iter().map(|d| d.name.clone()).collect();
    ev.data = scan.data.clone();
    ev.data_sources = opts.data_sources.clone();
    for l in &scan.locals {
        if ev.locals.contains_key(&l.name) {
            problems.push(problem_at(
                loaded.files[l.file].at(l.span.clone()),
                &format!("local \"{}\"", l.name),
                "is defined twice",
            ));
            continue;
        }
        ev.locals.insert(
            l.name.clone(),
            LocalDef {
                file: l.file,
                expr: l.expr,
                sensitive: l.sensitive,
            },
        );
    }
    variables::validate(&decls, &ev, &mut problems);

    let mut lw = Lowering {
        ev: &ev,
        problems: Vec::new(),
        origins: Vec::new(),
    };
    let mut builds: Vec<BuildBlock> = scan
        .builds
        .iter()
        .map(|(f, b)| lw.build_block(*f, b, &scan.sources))
        .collect();
    if scan.builds.is_empty() {
        lw.problems.push(Problem::new(format!(
            "{} has no build block: add build {{ sources = [\"source.amazon-ebs.NAME\"] }}",
            path.display()
        )));
    }
    // Unique names, then -only/-except.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for b in &builds {
        for i in &b.instances {
            if let Some(first) = seen.get(&i.full).cloned() {
                lw.problems.push(problem_at(
                    i.at.clone(),
                    "build",
                    format!("the build `{}` is defined twice (first at {first}); name the build blocks (name = \"...\") or rename the source", i.full),
                ));
            } else {
                seen.insert(i.full.clone(), i.at.clone());
            }
        }
    }
    let all_names: Vec<String> = seen.keys().cloned().collect();
    for (flag, patterns) in [("-only", &opts.only), ("-except", &opts.except)] {
        for p in patterns {
            if !builds
                .iter()
                .flat_map(|b| &b.instances)
                .any(|i| glob(p, &i.full) || glob(p, &format!("{}.{}", i.ty, i.name)))
            {
                lw.problems.push(Problem::new(format!(
                    "{flag} {p} matches no build (builds: {})",
                    all_names.join(", ")
                )));
            }
        }
    }
    let selected = |i: &Instance| {
        let m = |p: &String| glob(p, &i.full) || glob(p, &format!("{}.{}", i.ty, i.name));
        (opts.only.is_empty() || opts.only.iter().any(m)) && !opts.except.iter().any(m)
    };
    let every = builds
        .iter()
        .flat_map(|b| &b.instances)
        .filter(|i| selected(i))
        .count();
    if every == 0 && !all_names.is_empty() {
        lw.problems
            .push(Problem::new("-only/-except leave no build to run"));
    }

    let mut builders = Vec::new();
    let mut provisioners = Vec::new();
    let mut post_processors = Vec::new();
    let mut cleanup: Option<(J, String)> = None;
    let mut description = None;
    for b in &mut builds {
        if description.is_none() {
            description = b.description.take();
        }
        let chosen: Vec<&Instance> = b.instances.iter().filter(|i| selected(i)).collect();
        for inst in &chosen {
            builders.push(lw.builder(inst));
        }
        for item in b.block.body.blocks() {
            let kind = item.ident.value().as_str();
            match kind {
                "provisioner" | "post-processor" | "error-cleanup-provisioner" => {
                    let at = |span| lw.ev.files[b.file].at(span);
                    let mut local = Vec::new();
                    if block_label(item, 1, &format!("{kind} \"TYPE\""), &at, &mut local).is_none()
                    {
                        lw.problems.extend(local);
                        continue;
                    }
                    let values: Vec<(String, J)> = chosen
                        .iter()
                        .filter_map(|inst| {
                            lw.step(b.file, item, inst, &b.instances, kind)
                                .map(|v| (inst.full.clone(), v))
                        })
                        .collect();
                    let at = lw.at(b.file, item.span());
                    for (v, names) in group(values) {
                        let v = with_only(v, &names, every);
                        match kind {
                            "provisioner" => {
                                lw.origins.push(Origin { builder: None, key: format!("provisioners[{}]", provisioners.len()), at: at.clone() });
                                provisioners.push(v);
                            }
                            "post-processor" => {
                                lw.origins.push(Origin { builder: None, key: format!("post-processors[{}]", post_processors.len()), at: at.clone() });
                                post_processors.push(v);
                            }
                            _ => match &cleanup {
                                Some((_, first)) => lw.problems.push(problem_at(
                                    at.clone(),
                                    "error-cleanup-provisioner",
                                    format!("a template has one error-cleanup-provisioner (first at {first}); keep one"),
                                )),
                                None => {
                                    lw.origins.push(Origin { builder: None, key: "error-cleanup-provisioner".into(), at: at.clone() });
                                    cleanup = Some((v, at.clone()));
                                }
                            },
                        }
                    }
                }
                "post-processors" => {
                    let inner: Vec<&Block> = item.body.blocks().collect();
                    for other in item.body.iter() {
                        let ok = matches!(other, Structure::Block(pb) if pb.ident.value().as_str() == "post-processor");
                        if !ok {
                            let at = lw.at(b.file, other.span());
                            lw.problems.push(problem_at(
                                at,
                                "post-processors",
                                "a post-processors block holds post-processor blocks only",
                            ));
                        }
                    }
                    let values: Vec<(String, J)> = chosen
                        .iter()
                        .filter_map(|inst| {
                            let seq: Vec<J> = inner
                                .iter()
                                .filter(|pb| pb.ident.value().as_str() == "post-processor")
                                .filter_map(|pb| {
                                    lw.step(b.file, pb, inst, &b.instances, "post-processor")
                                })
                                .collect();
                            (!seq.is_empty()).then(|| (inst.full.clone(), J::Array(seq)))
                        })
                        .collect();
                    for (v, names) in group(values) {
                        let i = post_processors.len();
                        for (j, pb) in inner.iter().enumerate() {
                            let at = lw.at(b.file, pb.span());
                            lw.origins.push(Origin {
                                builder: None,
                                key: format!("post-processors[{i}][{j}]"),
                                at,
                            });
                        }
                        let J::Array(seq) = v else {
                            unreachable!("a sequence is an array")
                        };
                        post_processors.push(J::Array(
                            seq.into_iter()
                                .map(|s| with_only(s, &names, every))
                                .collect(),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    let mut problems_all = problems;
    problems_all.extend(lw.problems);
    let origins = lw.origins;
    for d in ev.local_problems.borrow().iter() {
        if let Some(m) = &d.message {
            problems_all.push(problem_at(
                loaded.files[d.file].at(d.span.clone()),
                "",
                m.clone(),
            ));
        }
    }

    // Sensitive values: declared for the JSON path, passed as -var, masked in problems.
    let mut variables = Map::new();
    let mut sensitive_names = Vec::new();
    let mut vars = Vec::new();
    for (name, v) in &ev.vars {
        let Some(text) = v.value.as_text() else {
            if !v.sensitive && !matches!(v.value, Value::Null) {
                let shown = v.value.to_json().to_string();
                if !shown.contains("{{") {
                    variables.insert(name.clone(), J::String(shown));
                }
            }
            continue;
        };
        if v.sensitive {
            variables.insert(name.clone(), J::Null);
            sensitive_names.push(name.clone());
            vars.push((name.clone(), text.s));
        } else if !text.s.contains("{{") {
            variables.insert(name.clone(), J::String(text.s));
        }
    }
    for (name, value) in ev.sensitive_locals.borrow().iter() {
        variables.insert(name.clone(), J::Null);
        sensitive_names.push(name.clone());
        vars.push((name.clone(), value.clone()));
    }
    if !problems_all.is_empty() {
        let secrets = Secrets::from_pairs(
            vars.iter().cloned().chain(
                ev.vars
                    .iter()
                    .filter(|(_, v)| v.sensitive)
                    .filter_map(|(n, v)| v.value.as_text().map(|t| (n.clone(), t.s))),
            ),
        );
        let mut out: Vec<Problem> = Vec::new();
        for mut p in problems_all {
            p.message = secrets.mask(&p.message);
            if !out.contains(&p) {
                out.push(p);
            }
        }
        return Err(out);
    }
    let mut template = Map::new();
    if let Some(d) = description {
        template.insert("description".into(), J::String(d));
    }
    template.insert("variables".into(), J::Object(variables));
    if !sensitive_names.is_empty() {
        template.insert("sensitive-variables".into(), json!(sensitive_names));
    }
    template.insert("builders".into(), J::Array(builders));
    if !provisioners.is_empty() {
        template.insert("provisioners".into(), J::Array(provisioners));
    }
    if !post_processors.is_empty() {
        template.insert("post-processors".into(), J::Array(post_processors));
    }
    if let Some((c, _)) = cleanup {
        template.insert("error-cleanup-provisioner".into(), c);
    }
    Ok(Hcl2Template {
        template: J::Object(template),
        vars,
        root: loaded.root,
        origins,
    })
}

fn declare_all<'a>(
    scan: &Scan<'a>,
    ev: &Evaluator,
    problems: &mut Vec<Problem>,
) -> Vec<VarDecl<'a>> {
    let mut decls: Vec<VarDecl> = Vec::new();
    for (file, block) in &scan.variables {
        if let Some(d) = variables::declare(block, *file, ev, problems) {
            if let Some(first) = decls.iter().find(|x| x.name == d.name) {
                problems.push(problem_at(
                    ev.files[*file].at(block.span()),
                    &format!("variable \"{}\"", d.name),
                    format!(
                        "is declared twice (first at {})",
                        ev.files[first.file].at(first.span.clone())
                    ),
                ));
                continue;
            }
            decls.push(d);
        }
    }
    decls
}

/// `amiflow inspect` of an HCL2 template: declarations and the builds' structure, evaluated
/// only where that needs no variable value.
pub(crate) fn inspect(path: &Path) -> Result<TemplateSummary, Vec<Problem>> {
    let mut problems = Vec::new();
    let loaded = load(path, &[], &mut problems)?;
    let scan = scan(&loaded.files, &loaded.bodies, &mut problems);
    let env = BTreeMap::new();
    let mut ev = Evaluator::new(
        &loaded.files,
        BTreeMap::new(),
        Vec::new(),
        BTreeMap::new(),
        chrono::Utc::now(),
        &env,
        loaded.root.display().to_string(),
        cwd(),
    );
    let decls = declare_all(&scan, &ev, &mut problems);
    // Defaults stand for the values: enough for names and only/except lists.
    ev.vars = decls
        .iter()
        .filter_map(|d| {
            d.default.clone().map(|v| {
                (
                    d.name.clone(),
                    VarValue {
                        value: v,
                        sensitive: false,
                    },
                )
            })
        })
        .collect();
    ev.declared = decls.iter().map(|d| d.name.clone()).collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut lw = Lowering {
        ev: &ev,
        problems: Vec::new(),
        origins: Vec::new(),
    };
    let builds: Vec<BuildBlock> = scan
        .builds
        .iter()
        .map(|(f, b)| lw.build_block(*f, b, &scan.sources))
        .collect();
    let variables = decls
        .iter()
        .map(|d| VariableSummary {
            name: d.name.clone(),
            default: d.default.as_ref().map(|v| {
                if d.sensitive {
                    MASK.to_string()
                } else {
                    v.to_string()
                }
            }),
            required: d.default.is_none(),
            sensitive: d.sensitive,
        })
        .collect();
    let mut summary = TemplateSummary {
        description: builds.iter().find_map(|b| b.description.clone()),
        min_packer_version: None,
        builders: builds
            .iter()
            .flat_map(|b| &b.instances)
            .map(|i| BuilderSummary {
                name: i.full.clone(),
                builder_type: i.ty.clone(),
            })
            .collect(),
        variables,
        provisioners: Vec::new(),
        post_processors: Vec::new(),
    };
    for b in &builds {
        let cx = Ctx::new(b.file, Place::Build);
        let full_of = |n: &str| -> String {
            b.instances
                .iter()
                .find(|i| i.named(n) || i.name == n)
                .map_or_else(|| n.to_string(), |i| i.full.clone())
        };
        let list = |blk: &Block, key: &str| -> Vec<String> {
            match blk.body.get_attribute(key).map(|a| ev.eval(&a.value, &cx)) {
                Some(Ok(Value::List(items))) => {
                    items.iter().map(|i| full_of(&i.to_string())).collect()
                }
                _ => Vec::new(),
            }
        };
        let summarize = |blk: &Block| StepSummary {
            step_type: blk
                .labels
                .first()
                .map(|l| l.as_str().to_string())
                .unwrap_or_default(),
            only: list(blk, "only"),
            except: list(blk, "except"),
            overrides: match blk
                .body
                .get_attribute("override")
                .map(|a| ev.eval(&a.value, &cx))
            {
                Some(Ok(Value::Map(m))) => m.keys().map(|k| full_of(k)).collect(),
                _ => Vec::new(),
            },
        };
        for item in b.block.body.blocks() {
            match item.ident.value().as_str() {
                "provisioner" => summary.provisioners.push(summarize(item)),
                "post-processor" => summary.post_processors.push(summarize(item)),
                "post-processors" => summary
                    .post_processors
                    .extend(item.body.blocks().map(summarize)),
                _ => {}
            }
        }
    }
    if !lw.problems.is_empty() {
        return Err(lw.problems);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_globs() {
        assert!(version_allows(">= 1.7.0", "1.11.2").is_ok());
        assert!(version_allows(">= 1.7.0, < 2.0.0", "1.11.2").is_ok());
        assert!(version_allows("~> 1.9", "1.11.2").is_ok());
        assert!(version_allows("~> 1.9.0", "1.11.2").is_err());
        assert!(version_allows(">= 1.12.0", "1.11.2")
            .unwrap_err()
            .contains("requires Packer >= 1.12.0"));
        assert!(glob("*.amazon-ebs.*", "b.amazon-ebs.x"));
        assert!(glob("amazon-ebs.x", "amazon-ebs.x"));
        assert!(!glob("amazon-ebs.y", "amazon-ebs.x"));
    }

    #[test]
    fn origins_pick_the_most_specific() {
        let o = |b: Option<&str>, k: &str, at: &str| Origin {
            builder: b.map(String::from),
            key: k.into(),
            at: at.into(),
        };
        let origins = vec![
            o(Some("amazon-ebs.a"), "", "f:1:1"),
            o(
                Some("amazon-ebs.a"),
                "launch_block_device_mappings",
                "f:5:3",
            ),
            o(
                Some("amazon-ebs.a"),
                "launch_block_device_mappings[1].volume_size",
                "f:9:5",
            ),
            o(None, "provisioners[0]", "f:20:3"),
        ];
        assert_eq!(
            origin_of(
                &origins,
                Some("amazon-ebs.a"),
                Some("launch_block_device_mappings[1].volume_size")
            ),
            Some("f:9:5")
        );
        assert_eq!(
            origin_of(
                &origins,
                Some("amazon-ebs.a"),
                Some("launch_block_device_mappings[0].iops")
            ),
            Some("f:5:3")
        );
        assert_eq!(
            origin_of(&origins, Some("amazon-ebs.a"), Some("ami_nmae")),
            Some("f:1:1")
        );
        assert_eq!(
            origin_of(&origins, None, Some("provisioners[0] (shell)")),
            Some("f:20:3")
        );
        assert_eq!(
            origin_of(&origins, None, Some("provisioners[1].type")),
            None
        );
    }
}
