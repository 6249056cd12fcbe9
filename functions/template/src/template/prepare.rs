//! From template text to prepared builds: structure, variables, interpolation, typed
//! configs, secrets — every problem of the template collected before anything runs.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::deferred;
use super::eval::{self, Data, Scope};
use super::limits::{Budget, NODE_COST};
use super::raw::{self, RawProvisioner, RawTemplate};
use super::secrets::{placeholder, Secrets, MASK};
use super::syntax::user_refs;
use super::variables::{self, VarInputs};
use crate::config::{self, BuilderType};
use crate::problem::{Problem, Problems};
use crate::provisioner;
use crate::PreparedBuild;

/// What `packer build`/`validate` take besides the template.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// `-var name=value`, in command-line order (a later one wins).
    pub vars: Vec<(String, String)>,
    /// `-var-file` paths (JSON objects), in command-line order; -var wins over them.
    pub var_files: Vec<PathBuf>,
    /// `-only`/`-except`: build names.
    pub only: Vec<String>,
    pub except: Vec<String>,
    /// The run's fixed time: every `{{timestamp}}`/`{{isotime}}` of every build agrees.
    pub build_time: DateTime<Utc>,
    /// What `{{env `X`}}` in variables sees. Empty by default: in Lambda the process
    /// environment holds the function's credentials, which must not reach a template.
    pub env: BTreeMap<String, String>,
    /// The template file's directory, for `{{template_dir}}`.
    pub template_dir: Option<PathBuf>,
    /// Packer's `-force`: every build replaces an existing AMI of the same name, as if it
    /// set `force_deregister` (Packer sets only that key; `force_delete_snapshot` stays the
    /// template's).
    pub force: bool,
    /// What an HCL2 template's data sources are read with (`hcl2/data.rs`); none: a
    /// template that uses one is refused, naming the commands that read them.
    pub data_sources: Option<crate::hcl2::data::DataSources>,
}

impl PrepareOptions {
    pub fn new(build_time: DateTime<Utc>) -> PrepareOptions {
        PrepareOptions {
            vars: Vec::new(),
            var_files: Vec::new(),
            only: Vec::new(),
            except: Vec::new(),
            build_time,
            env: BTreeMap::new(),
            template_dir: None,
            force: false,
            data_sources: None,
        }
    }

    /// Lets `{{env `X`}}` read this process's environment (the CLI's behaviour, as Packer).
    pub fn with_process_env(mut self) -> PrepareOptions {
        self.env = std::env::vars().collect();
        self
    }
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions::new(Utc::now())
    }
}

/// A template ready to build. Not `Serialize` as a whole: `secrets` must stay out of the
/// build state; `builds` are what the state carries.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub builds: Vec<PreparedBuild>,
    pub description: Option<String>,
    /// Every variable's value, sensitive ones shown as `<sensitive>`.
    pub variables: BTreeMap<String, String>,
    pub secrets: Secrets,
    /// What the user should know but does not stop the build (a -var the template does not
    /// declare, …): one line each, naming what it is about.
    pub warnings: Vec<String>,
}

/// Parses `-var name=value` (the value may contain `=`).
pub fn parse_var_flag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "-var {s:?} must have the form name=value, e.g. -var 'region=us-east-1'"
        )),
    }
}

pub fn prepare(template_text: &str, opts: &PrepareOptions) -> Result<Prepared, Problems> {
    let (tpl, mut problems) = raw::parse_template(template_text).map_err(Problems)?;

    let mut files = Vec::new();
    for path in &opts.var_files {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => match raw::parse_json(&text, &format!("-var-file {origin}")) {
                Ok(v) => files.push((origin, v)),
                Err(p) => problems.push(p),
            },
            Err(e) => problems.push(Problem::new(format!(
                "-var-file {origin}: cannot read it: {e}"
            ))),
        }
    }
    let template_dir = opts.template_dir.as_ref().map(|d| d.display().to_string());
    let budget = Budget::default();
    let resolved = variables::resolve(&VarInputs {
        decls: &tpl.variables,
        files,
        vars: &opts.vars,
        env: &opts.env,
        time: opts.build_time,
        template_dir: template_dir.as_deref(),
        budget: &budget,
    });
    let values = resolved.values;
    problems.extend(resolved.problems);
    let secrets = Secrets::from_pairs(
        tpl.sensitive
            .iter()
            .filter_map(|n| values.get(n).map(|v| (n.clone(), v.clone()))),
    );

    let names: Vec<&str> = tpl.builders.iter().map(|b| b.name.as_str()).collect();
    for (flag, list) in [("-only", &opts.only), ("-except", &opts.except)] {
        for n in list {
            if !names.contains(&n.as_str()) {
                problems.push(Problem::new(format!(
                    "{flag} names build `{n}`, which is not in the template (builds: {})",
                    names.join(", ")
                )));
            }
        }
    }
    let selected = tpl
        .builders
        .iter()
        .filter(|b| {
            (opts.only.is_empty() || opts.only.contains(&b.name)) && !opts.except.contains(&b.name)
        })
        .collect::<Vec<_>>();
    if selected.is_empty() && !tpl.builders.is_empty() {
        problems.push(Problem::new("-only/-except leave no build to run"));
    }

    // What builds see: a sensitive variable is its placeholder, a variable built from one
    // holds placeholders where the secret was.
    let tainted = tainted_variables(&tpl, &opts.vars);
    let visible: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| {
            let shown = if tpl.sensitive.contains(k) {
                placeholder(k)
            } else if tainted.contains(k) {
                secrets.conceal(v)
            } else {
                v.clone()
            };
            (k.clone(), shown)
        })
        .collect();
    let ctx = Ctx {
        tpl: &tpl,
        values: &visible,
        opts,
        template_dir: template_dir.as_deref(),
        budget: &budget,
    };
    let before_builds = problems.len();
    let mut builds = Vec::new();
    let mut warnings = resolved.warnings;
    for b in selected {
        let Some(bt) = b.builder_type else { continue };
        if budget.exhausted() {
            break;
        }
        let mut found = Vec::new();
        let mut keys = b.config.clone();
        if bt == BuilderType::Instance {
            // Packer's default prefix holds `{{timestamp}}`: rendered as if written.
            keys.entry("bundle_prefix")
                .or_insert(config::instance::DEFAULT_BUNDLE_PREFIX.into());
        }
        let rendered = ctx.render_builder(&b.name, bt, &keys, &mut found);
        let Value::Object(rendered) = rendered else {
            // Only an exhausted budget stops an object rendering to an object: reported below.
            break;
        };
        problems.extend(found.into_iter().map(|p| p.in_builder(&b.name)));
        if bt != BuilderType::Chroot {
            // What `from_builder` does to a WinRM template, said once at validation.
            let translated = config::communicator::from_winrm(&mut rendered.clone());
            if !translated.is_empty() {
                warnings.push(format!("{}: {}", b.name, translated.join("; ")));
            }
        }
        let env = |k: &str| opts.env.get(k).cloned();
        let config = match config::from_builder_with_env(&b.name, bt, &rendered, &env) {
            Ok(mut c) => {
                if opts.force {
                    if let Some(ami) = c.ami_mut() {
                        ami.force_deregister = true;
                    }
                }
                Some(c)
            }
            Err(ps) => {
                problems.extend(ps.into_iter().map(|p| {
                    if p.builder.is_some() {
                        p
                    } else {
                        p.in_builder(&b.name)
                    }
                }));
                None
            }
        };

        let mut provisioners = Vec::new();
        for p in tpl.provisioners.iter().filter(|p| p.applies_to(&b.name)) {
            let mut merged = p.config.clone();
            if let Some(o) = p.overrides.get(&b.name) {
                merged.extend(o.clone());
            }
            let rendered =
                ctx.render_deferred(&b.name, bt, &Value::Object(merged), &p.path, &mut problems);
            let found = provisioner_problems(p, &rendered, &problems);
            if let Some(comm) = config.as_ref().and_then(|c| c.comm()) {
                problems.extend(
                    reachability_problem(p, &rendered, comm).map(|q| q.in_builder(&b.name)),
                );
            }
            if bt == BuilderType::Chroot {
                problems.extend(chroot_problem(p, &rendered).map(|q| q.in_builder(&b.name)));
            }
            // An override can make a provisioner bad for one build only: then say which.
            let overridden = p.overrides.contains_key(&b.name);
            problems.extend(found.into_iter().map(|q| {
                if overridden {
                    q.in_builder(&b.name)
                } else {
                    q
                }
            }));
            provisioners.push(rendered);
        }
        // Run by the ErrorCleanupProvision step when the build fails (Packer runs it on
        // error, before the other cleanups), so it is prepared with the build's data like
        // the provisioners.
        let error_cleanup_provisioner = tpl
            .error_cleanup_provisioner
            .as_ref()
            .filter(|p| p.applies_to(&b.name))
            .map(|p| {
                let mut merged = p.config.clone();
                if let Some(o) = p.overrides.get(&b.name) {
                    merged.extend(o.clone());
                }
                let rendered = ctx.render_deferred(
                    &b.name,
                    bt,
                    &Value::Object(merged),
                    &p.path,
                    &mut problems,
                );
                let found = provisioner_problems(p, &rendered, &problems);
                if let Some(comm) = config.as_ref().and_then(|c| c.comm()) {
                    problems.extend(
                        reachability_problem(p, &rendered, comm).map(|q| q.in_builder(&b.name)),
                    );
                }
                problems.extend(found);
                if bt == BuilderType::Chroot {
                    problems.push(Problem::key(
                        format!("{} ({})", p.path, p.type_name),
                        "amazon-chroot runs its provisioners in the build host's script and has no \
                         error-cleanup step: limit it to the other builds with \"except\", or clean up \
                         in the host script",
                    ).in_builder(&b.name));
                }
                rendered
            });
        let mut post_processors = Vec::new();
        for pp in tpl
            .post_processors
            .iter()
            .filter(|pp| pp.applies_to(&b.name))
        {
            post_processors.push(ctx.render_deferred(
                &b.name,
                bt,
                &Value::Object(pp.config.clone()),
                &pp.path,
                &mut problems,
            ));
        }
        if let Some(config) = config {
            builds.push(PreparedBuild {
                name: b.name.clone(),
                builder_type: bt,
                config,
                provisioners,
                error_cleanup_provisioner,
                post_processors,
            });
        }
    }

    if let Some(p) = budget.problem() {
        // What the builds reported past the limit is noise: they were cut short.
        problems.truncate(before_builds);
        problems.push(p);
    }
    if !problems.is_empty() {
        let mut out: Vec<Problem> = Vec::new();
        for mut p in problems {
            p.message = secrets.mask(&p.message);
            if !out.contains(&p) {
                out.push(p);
            }
        }
        return Err(Problems(out));
    }
    let variables = values
        .into_iter()
        .map(|(k, v)| {
            let shown = if tpl.sensitive.contains(&k) {
                MASK.to_string()
            } else if tainted.contains(&k) {
                secrets.mask(&v)
            } else {
                v
            };
            (k, shown)
        })
        .collect();
    Ok(Prepared {
        builds,
        description: tpl.description.clone(),
        variables,
        secrets,
        warnings,
    })
}

/// The typed check of one provisioner as the Provision step will parse it (rendered,
/// override merged), placed in the template: `provisioners[2] (shell): inline: ...`.
/// A key the structural check (`raw`) already reported is not reported twice.
fn provisioner_problems(p: &RawProvisioner, rendered: &Value, so_far: &[Problem]) -> Vec<Problem> {
    let reported = |key: &str| {
        so_far
            .iter()
            .any(|q| q.key.as_deref() == Some(&format!("{}.{key}", p.path)))
    };
    let mut unknown = Vec::new();
    strings_of(rendered, &mut |s| {
        unknown.extend(eval::unknown_build_data(s))
    });
    unknown.dedup();
    unknown
        .into_iter()
        .map(|key| {
            Problem::key(
                format!("{} ({})", p.path, p.type_name),
                format!(
                    "`{{{{ build `{key}` }}}}`: no build data is named `{key}`; amiflow provides {}",
                    super::BUILD_DATA.join(", ")
                ),
            )
        })
        .chain(
            provisioner::check(rendered)
                .into_iter()
                .filter(|q| !q.key.as_deref().is_some_and(reported))
                .map(|q| Problem::key(format!("{} ({})", p.path, p.type_name), q.to_string())),
        )
        .collect()
}

/// A provisioner amazon-chroot's host script cannot run (it runs `shell` provisioners and
/// `file` provisioners with `content`), found before any volume exists.
fn chroot_problem(p: &RawProvisioner, rendered: &Value) -> Option<Problem> {
    let key = format!("{} ({})", p.path, p.type_name);
    let why = match p.type_name.as_str() {
        "shell" => return None,
        "file" if rendered.get("content").is_some() => return None,
        "file" => "amazon-chroot's host script writes files from \"content\" only: inline the file as content",
        t if provisioner::WINDOWS_PROVISIONERS.contains(&t) => {
            "amazon-chroot builds Linux images in its host's script; Windows provisioners run on a \
             Windows instance: use amazon-ebs with \"communicator\": \"ssm\""
        }
        _ => "amazon-chroot runs shell provisioners and file provisioners with content in its host's \
              script: use those, or amazon-ebs for this provisioner",
    };
    Some(Problem::key(key, why))
}

/// A provisioner the build's communicator cannot carry, found before anything is launched.
fn reachability_problem(
    p: &RawProvisioner,
    rendered: &Value,
    comm: &config::CommunicatorConfig,
) -> Option<Problem> {
    let key = |k: &str| format!("{} ({}){k}", p.path, p.type_name);
    let windows = provisioner::WINDOWS_PROVISIONERS.contains(&p.type_name.as_str());
    if windows && !comm.is_ssm() {
        return Some(Problem::key(
            key(""),
            "runs on Windows through the SSM agent: set \"communicator\" to \"ssm\" (a template's \
             \"winrm\" runs over SSM too); SSH to Windows is not supported",
        ));
    }
    if comm.is_none() && p.type_name != "shell-local" {
        return Some(Problem::key(
            key(""),
            "cannot run with \"communicator\": \"none\" (nothing connects to the instance): \
             set \"communicator\" to \"ssh\" or \"ssm\", or use a shell-local provisioner",
        ));
    }
    let download = rendered.get("direction").and_then(Value::as_str) == Some("download");
    if comm.is_ssm() && p.type_name == "file" && download {
        return Some(Problem::key(
            key(".direction"),
            "\"download\" is not supported over SSM (RunCommand returns no files): use \
             \"communicator\": \"ssh\" for this build",
        ));
    }
    None
}

/// Calls `f` with every string in `v`.
fn strings_of(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings_of(x, f)),
        _ => {}
    }
}

/// Sensitive variables and every variable whose value uses one, directly or not.
fn tainted_variables(tpl: &RawTemplate, vars: &[(String, String)]) -> BTreeSet<String> {
    // The text each variable is rendered from: the last -var, else its default.
    let mut texts: BTreeMap<&str, Option<&str>> = tpl
        .variables
        .iter()
        .map(|d| (d.name.as_str(), d.default.as_deref()))
        .collect();
    for (k, v) in vars {
        if let Some(text) = texts.get_mut(k.as_str()) {
            *text = Some(v);
        }
    }
    // Who uses each variable; the taint spreads from the sensitive ones along it.
    let mut users: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, text) in &texts {
        for used in text.map(user_refs).unwrap_or_default() {
            users.entry(used).or_default().push(name);
        }
    }
    let mut tainted: BTreeSet<String> = tpl.sensitive.clone();
    let mut todo: Vec<String> = tainted.iter().cloned().collect();
    while let Some(name) = todo.pop() {
        for user in users.get(&name).into_iter().flatten() {
            if tainted.insert(user.to_string()) {
                todo.push(user.to_string());
            }
        }
    }
    tainted
}

struct Ctx<'a> {
    tpl: &'a RawTemplate,
    values: &'a BTreeMap<String, String>,
    opts: &'a PrepareOptions,
    template_dir: Option<&'a str>,
    /// Every value the builds render counts against it (a provisioner is copied into each
    /// build it applies to).
    budget: &'a Budget,
}

impl Ctx<'_> {
    /// Renders one string; `None` (with a problem pushed, unless the cause is a variable
    /// whose own problem is reported) when it fails.
    fn render_str(
        &self,
        s: &str,
        key: &str,
        build: (&str, BuilderType),
        data: Data,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        if !s.contains("{{") {
            return Some(s.to_string());
        }
        let failed_variable = Cell::new(false);
        let user = |name: &str| -> Result<String, String> {
            if let Some(v) = self.values.get(name) {
                return Ok(v.clone());
            }
            if self.tpl.variables.iter().any(|d| d.name == name) {
                failed_variable.set(true);
                return Err(format!("variable `{name}` has no value"));
            }
            let declared: Vec<&str> = self.tpl.variables.iter().map(|d| d.name.as_str()).collect();
            Err(format!(
                "variable `{name}` is not declared: add it to \"variables\" (declared: {})",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ))
        };
        let scope = Scope {
            time: Some(self.opts.build_time),
            user: Some(&user),
            env: None,
            build_name: Some(build.0),
            build_type: Some(build.1.as_str()),
            template_dir: self.template_dir,
            data,
        };
        match eval::render(s, &scope) {
            Ok(v) => Some(v),
            Err(e) => {
                if !failed_variable.get() {
                    problems.push(Problem::key(key, e.describe(s)));
                }
                None
            }
        }
    }

    fn render_builder(
        &self,
        name: &str,
        bt: BuilderType,
        config: &Map<String, Value>,
        problems: &mut Vec<Problem>,
    ) -> Value {
        let hint = format!(
            "{} renders build data only in {}; use variables, {{{{timestamp}}}} or {{{{isotime}}}} here",
            bt.as_str(),
            deferred::deferred_keys(bt).into_iter().filter(|k| !k.ends_with("_tag") && *k != "tag").collect::<Vec<_>>().join(", ")
        );
        let mut w = Walker {
            ctx: self,
            build: (name, bt),
            hint: &hint,
            builder_paths: true,
            problems,
        };
        w.walk(&Value::Object(config.clone()), "", &mut Vec::new(), false)
    }

    /// Provisioners and post-processors: build data (`{{ build `X` }}`, `{{.Path}}`) is
    /// rendered when they run.
    fn render_deferred(
        &self,
        name: &str,
        bt: BuilderType,
        v: &Value,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Value {
        let mut w = Walker {
            ctx: self,
            build: (name, bt),
            hint: "",
            builder_paths: false,
            problems,
        };
        w.walk(v, path, &mut Vec::new(), true)
    }
}

struct Walker<'a, 'b> {
    ctx: &'a Ctx<'a>,
    build: (&'a str, BuilderType),
    hint: &'a str,
    /// Whether deferred fields are looked up by builder path.
    builder_paths: bool,
    problems: &'b mut Vec<Problem>,
}

impl Walker<'_, '_> {
    fn walk(&mut self, v: &Value, path: &str, keys: &mut Vec<String>, deferred: bool) -> Value {
        if !self.ctx.budget.charge(NODE_COST) {
            return Value::Null;
        }
        let data = if deferred {
            Data::Defer
        } else {
            Data::Unavailable(self.hint)
        };
        match v {
            Value::String(s) => {
                let r = self
                    .ctx
                    .render_str(s, path, self.build, data, self.problems);
                let r = r.unwrap_or_else(|| s.clone());
                if !self.ctx.budget.charge(r.len()) {
                    return Value::Null;
                }
                Value::String(r)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.walk(item, &format!("{path}[{i}]"), keys, deferred))
                    .collect(),
            ),
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, item) in map {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    keys.push(k.clone());
                    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let child_deferred = deferred
                        || (self.builder_paths && deferred::is_deferred(self.build.1, &key_refs));
                    let key_data = if child_deferred {
                        Data::Defer
                    } else {
                        Data::Unavailable(self.hint)
                    };
                    let new_key = self
                        .ctx
                        .render_str(k, &child, self.build, key_data, self.problems)
                        .unwrap_or_else(|| k.clone());
                    if !self.ctx.budget.charge(new_key.len()) {
                        keys.pop();
                        return Value::Null;
                    }
                    let new_val = self.walk(item, &child, keys, child_deferred);
                    keys.pop();
                    out.insert(new_key, new_val);
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}
