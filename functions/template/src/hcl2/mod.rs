//! HCL2 templates (`*.pkr.hcl`, or a folder of them) lowered to the JSON template value the
//! JSON path takes, so that everything downstream (typed configs, validation, the steps)
//! stays one path.
//!
//! * [`files`] reads a file or a folder (with its `*.auto.pkrvars.hcl`) and gives
//!   `file:line:column` positions;
//! * [`variables`] resolves `variable` blocks: types, precedence, `nullable`, `validation`;
//! * [`eval`] evaluates expressions, lowering what is only known later (build data,
//!   sensitive values) to the JSON path's `{{ ... }}` forms; [`functions`] holds Packer's
//!   HCL2 functions;
//! * [`data`] names the data sources (`amazon-ami`, `amazon-parameterstore`,
//!   `amazon-secretsmanager`) and the lookup the caller reads them with;
//! * [`lower`] turns `packer`, `locals`, `source` and `build` blocks into the JSON template;
//! * [`upgrade`] writes the HCL2 twin of a JSON template (`amiflow hcl2_upgrade`).
//!
//! Parsing is hcl-edit's (the parser under the hcl-rs crate, keeping byte spans of every
//! expression). hcl-rs itself is not used: its evaluator loses positions, knows neither
//! Packer's functions nor values that are rendered later, and it would add features to
//! serde and indexmap that make the whole AWS SDK rebuild.
//!
//! A problem found by the JSON path in the lowered template (an unknown builder key, a bad
//! provisioner) is placed back in the HCL2 source: see [`Hcl2Template::locate`].

pub mod data;
pub(crate) mod eval;
pub(crate) mod files;
pub(crate) mod functions;
pub(crate) mod json_syntax;
pub(crate) mod lower;
pub mod upgrade;
pub(crate) mod value;
pub(crate) mod variables;

use std::ops::Range;
use std::path::{Path, PathBuf};

use hcl_edit::structure::Block;

pub use files::is_hcl2_path;
pub use lower::Origin;

use crate::problem::{Problem, Problems};
use crate::template::inspect::TemplateSummary;
use crate::PrepareOptions;

/// An HCL2 template lowered to a JSON template.
#[derive(Debug, Clone)]
pub struct Hcl2Template {
    /// The JSON template: builders, provisioners and post-processors with every HCL value
    /// in place; sensitive variables (and sensitive locals) declared in `variables` and
    /// listed in `sensitive-variables`.
    pub template: serde_json::Value,
    /// Values of the template's sensitive variables, to pass as `-var` to the JSON path.
    pub vars: Vec<(String, String)>,
    /// The template's folder (`path.root`): relative script paths start there.
    pub root: PathBuf,
    /// Where each builder key, provisioner and post-processor of `template` was written.
    pub origins: Vec<Origin>,
}

impl Hcl2Template {
    /// The JSON template's text.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.template).expect("a JSON value serializes")
    }

    /// The options that prepare the lowered template as `opts` asked for the HCL2 one:
    /// variables, variable files and -only/-except were applied while lowering; the
    /// sensitive values go as `-var`.
    pub fn prepare_options(&self, opts: &PrepareOptions) -> PrepareOptions {
        let mut o = opts.clone();
        o.vars = self.vars.clone();
        o.var_files = Vec::new();
        o.only = Vec::new();
        o.except = Vec::new();
        o.template_dir = Some(self.root.clone());
        o
    }

    /// Adds `(at file:line:column)` to the problems the JSON path found in the lowered
    /// template, from the most specific origin of their builder and key.
    pub fn locate(&self, problems: Problems) -> Problems {
        Problems(
            problems
                .0
                .into_iter()
                .map(|mut p| {
                    if let Some(at) =
                        lower::origin_of(&self.origins, p.builder.as_deref(), p.key.as_deref())
                    {
                        p.message = format!("{} (at {at})", p.message);
                    }
                    p
                })
                .collect(),
        )
    }
}

/// Lowers the HCL2 template at `path` (a `*.pkr.hcl` file or a folder) with the variables,
/// variable files, environment (`PKR_VAR_*`, `env()` in defaults), -only/-except and build
/// time of `opts`. Every problem is reported with its position.
pub fn lower(path: &Path, opts: &PrepareOptions) -> Result<Hcl2Template, Problems> {
    lower::lower(path, opts).map_err(Problems)
}

/// What an HCL2 template declares, without needing variable values: `amiflow inspect`.
pub fn inspect(path: &Path) -> Result<TemplateSummary, Problems> {
    lower::inspect(path).map_err(Problems)
}

/// A template ready for the JSON path: a JSON template's text as read, or an HCL2
/// template lowered, with the options to prepare it with.
#[derive(Debug, Clone)]
pub struct LoadedTemplate {
    /// The JSON template text.
    pub text: String,
    /// What to prepare `text` with (for HCL2: only the sensitive values as `-var`).
    pub options: PrepareOptions,
    /// The HCL2 template `text` was lowered from, which places problems in its files.
    pub hcl2: Option<Hcl2Template>,
}

impl LoadedTemplate {
    /// A JSON template's text, prepared with `opts` as they are.
    pub fn json(text: String, opts: &PrepareOptions) -> LoadedTemplate {
        LoadedTemplate {
            text,
            options: opts.clone(),
            hcl2: None,
        }
    }

    /// Lowers an HCL2 template (file or folder) with `opts`.
    pub fn hcl2(path: &Path, opts: &PrepareOptions) -> Result<LoadedTemplate, Problems> {
        let h = lower(path, opts)?;
        Ok(LoadedTemplate {
            text: h.json(),
            options: h.prepare_options(opts),
            hcl2: Some(h),
        })
    }

    /// [`crate::prepare`], with problems placed in the HCL2 files when there are some.
    pub fn prepare(&self) -> Result<crate::Prepared, Problems> {
        crate::prepare(&self.text, &self.options).map_err(|p| match &self.hcl2 {
            Some(h) => h.locate(p),
            None => p,
        })
    }
}

/// `; did you mean X?` when a known name is close to `name`, or nothing.
pub(crate) fn did_you_mean<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    let best = known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(name.len() / 4) && *d < name.len().max(k.len()))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, k)) => format!("; did you mean {k}?"),
        None => String::new(),
    }
}

/// A problem at a position: `file:line:column: what: message`.
pub(crate) fn problem_at(at: String, what: &str, message: impl Into<String>) -> Problem {
    let message = message.into();
    if what.is_empty() {
        Problem::key(at, message)
    } else {
        Problem::key(at, format!("{what}: {message}"))
    }
}

/// A block's labels when it has `n` of them; a problem naming the expected form otherwise.
pub(crate) fn block_label(
    block: &Block,
    n: usize,
    form: &str,
    at: &dyn Fn(Option<Range<usize>>) -> String,
    problems: &mut Vec<Problem>,
) -> Option<Vec<String>> {
    use hcl_edit::Span;
    let labels: Vec<String> = block
        .labels
        .iter()
        .map(|l| l.as_str().to_string())
        .collect();
    if labels.len() == n {
        return Some(labels);
    }
    problems.push(problem_at(
        at(block.ident.span()),
        "",
        format!(
            "a `{}` block takes {n} label(s), found {}: write {form} {{ ... }}",
            block.ident.value().as_str(),
            labels.len()
        ),
    ));
    None
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
