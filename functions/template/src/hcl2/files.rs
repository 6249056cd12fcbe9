//! The files of an HCL2 template: one `*.pkr.hcl` file or a folder of them, the
//! `*.auto.pkrvars.hcl` beside them, and positions (`file:line:column`) for every problem.

use std::ops::Range;
use std::path::{Path, PathBuf};

use hcl_edit::structure::Body;

use super::json_syntax;
use crate::problem::Problem;

/// One file read and parsed.
pub(crate) struct SourceFile {
    /// As the user named it (the folder joined with the file name), for messages.
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
    /// False for `*.pkr.json` (HCL's JSON syntax): the body is built from the JSON, so
    /// spans do not point into `text` and only the file is named.
    spans: bool,
}

impl SourceFile {
    pub fn new(name: String, text: String, spans: bool) -> SourceFile {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.char_indices()
                .filter(|(_, c)| *c == '\n')
                .map(|(i, _)| i + 1),
        );
        SourceFile {
            name,
            text,
            line_starts,
            spans,
        }
    }

    /// Line and column (both from 1; the column counts characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }

    /// `file:line:column` of a span, or the file alone when the span is unknown.
    pub fn at(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(r) if self.spans => {
                let (line, col) = self.line_col(r.start);
                format!("{}:{line}:{col}", self.name)
            }
            _ => self.name.clone(),
        }
    }
}

/// What `lower` reads: the template's files (parsed) and the automatic variable files.
pub(crate) struct Inputs {
    pub files: Vec<SourceFile>,
    /// The template files' bodies, each with its index in `files`.
    pub bodies: Vec<(usize, Body)>,
    /// Indexes into `files` of `*.auto.pkrvars.hcl` / `*.auto.pkrvars.json`, in name order.
    pub auto_var_files: Vec<usize>,
    /// The folder of the template, as `path.root` gives it.
    pub root: PathBuf,
}

/// Whether a path names an HCL2 template: a folder, `*.pkr.hcl`, `*.pkr.json` or `*.hcl`.
pub fn is_hcl2_path(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.is_dir()
        || name.ends_with(".pkr.hcl")
        || name.ends_with(".pkr.json")
        || name.ends_with(".hcl")
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a template file or folder. Parse errors are problems with their position; a
/// file that does not parse is left out so that the others can still be checked.
pub(crate) fn read(path: &Path) -> Result<(Inputs, Vec<Problem>), Vec<Problem>> {
    let mut problems = Vec::new();
    let (template_files, var_files, root) = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| {
            vec![Problem::new(format!(
                "cannot read the template folder {}: {e}",
                display(path)
            ))]
        })?;
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        };
        let templates: Vec<PathBuf> = names
            .iter()
            .filter(|p| {
                let n = name_of(p);
                n.ends_with(".pkr.hcl") || n.ends_with(".pkr.json")
            })
            .cloned()
            .collect();
        if templates.is_empty() {
            let legacy: Vec<String> = names
                .iter()
                .map(|p| name_of(p))
                .filter(|n| n.ends_with(".json"))
                .collect();
            let hint = if legacy.is_empty() {
                String::new()
            } else {
                format!(
                    "; for a JSON template pass the file itself, e.g. {}",
                    display(&path.join(&legacy[0]))
                )
            };
            return Err(vec![Problem::new(format!(
                "the folder {} holds no *.pkr.hcl or *.pkr.json file{hint}",
                display(path)
            ))]);
        }
        (templates, auto_var_files(&names), path.to_path_buf())
    } else {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let siblings: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                let mut v: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        (vec![path.to_path_buf()], auto_var_files(&siblings), dir)
    };

    let mut files = Vec::new();
    let mut bodies = Vec::new();
    for p in &template_files {
        let name = display(p);
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::new(format!("cannot read template {name}: {e}")));
                continue;
            }
        };
        let parsed = if name.ends_with(".json") {
            json_syntax::body(&text)
                .map(|b| (b, false))
                .map_err(|e| Problem::key(name.clone(), e))
        } else {
            hcl_edit::parser::parse_body(&text)
                .map(|b| (b, true))
                .map_err(|e| syntax_problem(&name, &e))
        };
        match parsed {
            Ok((body, spans)) => {
                bodies.push((files.len(), body));
                files.push(SourceFile::new(name, text, spans));
            }
            Err(p) => problems.push(p),
        }
    }
    if bodies.is_empty() && !problems.is_empty() {
        return Err(problems);
    }
    let mut auto_var_files = Vec::new();
    for p in var_files {
        let name = display(&p);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                auto_var_files.push(files.len());
                let spans = !name.ends_with(".json");
                files.push(SourceFile::new(name, text, spans));
            }
            Err(e) => problems.push(Problem::new(format!("cannot read {name}: {e}"))),
        }
    }
    Ok((
        Inputs {
            files,
            bodies,
            auto_var_files,
            root,
        },
        problems,
    ))
}

fn auto_var_files(names: &[PathBuf]) -> Vec<PathBuf> {
    names
        .iter()
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            n.ends_with(".auto.pkrvars.hcl") || n.ends_with(".auto.pkrvars.json")
        })
        .cloned()
        .collect()
}

/// A syntax error as a problem: `file:line:column: message`.
pub(crate) fn syntax_problem(name: &str, e: &hcl_edit::parser::Error) -> Problem {
    let loc = e.location();
    Problem::key(
        format!("{name}:{}:{}", loc.line(), loc.column()),
        format!("invalid HCL: {}", e.message()),
    )
}
