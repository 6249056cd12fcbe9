//! The structure of a Packer JSON template, checked as Packer checks it, before any value
//! is interpolated.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::eval::PACKER_COMPAT_VERSION;
use super::version::Version;
use crate::config::{BuilderType, Duration};
use crate::problem::Problem;

/// Provisioner types amiflow runs (issue 5: shell and file over SSH/SSM, shell-local locally).
pub const SUPPORTED_PROVISIONERS: [&str; 7] = [
    "shell",
    "file",
    "shell-local",
    "ansible-local",
    "powershell",
    "windows-shell",
    "windows-restart",
];
/// Post-processor types amiflow runs (by `amiflow build`, in their order, after a build
/// succeeded).
pub const SUPPORTED_POST_PROCESSORS: [&str; 3] = ["manifest", "shell-local", "checksum"];

/// The hashes Packer's checksum post-processor knows.
pub const CHECKSUM_TYPES: [&str; 6] = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

/// Keys every post-processor takes besides its own.
const POST_PROCESSOR_COMMON_KEYS: [&str; 5] =
    ["type", "name", "only", "except", "keep_input_artifact"];

const ROOT_KEYS: [&str; 8] = [
    "builders",
    "description",
    "error-cleanup-provisioner",
    "min_packer_version",
    "post-processors",
    "provisioners",
    "sensitive-variables",
    "variables",
];

#[derive(Debug, Clone)]
pub(crate) struct RawTemplate {
    pub description: Option<String>,
    pub min_packer_version: Option<String>,
    pub variables: Vec<VarDecl>,
    pub sensitive: BTreeSet<String>,
    pub builders: Vec<RawBuilder>,
    pub provisioners: Vec<RawProvisioner>,
    /// Checked like any provisioner; not carried into the prepared builds yet (no step runs it).
    #[allow(dead_code)]
    pub error_cleanup_provisioner: Option<RawProvisioner>,
    pub post_processors: Vec<RawPostProcessor>,
}

#[derive(Debug, Clone)]
pub(crate) struct VarDecl {
    pub name: String,
    /// `None`: declared `null`, so it must be given with -var or -var-file.
    pub default: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RawBuilder {
    /// `name`, or the type when unnamed (Packer's rule).
    pub name: String,
    pub type_name: String,
    /// `None` for builder types amiflow does not build (already reported).
    pub builder_type: Option<BuilderType>,
    /// The builder's keys without `name`, `type` and `_comments`.
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct RawProvisioner {
    /// Where it is in the template, for problems: `provisioners[2]`.
    pub path: String,
    pub type_name: String,
    pub only: Vec<String>,
    pub except: Vec<String>,
    /// Per build name: keys that replace the provisioner's own for that build.
    pub overrides: BTreeMap<String, Map<String, Value>>,
    /// The provisioner's keys (with `type`, `pause_before` …) without only/except/override.
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct RawPostProcessor {
    pub path: String,
    pub type_name: String,
    pub only: Vec<String>,
    pub except: Vec<String>,
    pub config: Map<String, Value>,
}

impl RawProvisioner {
    pub fn applies_to(&self, build: &str) -> bool {
        applies(&self.only, &self.except, build)
    }
}

impl RawPostProcessor {
    pub fn applies_to(&self, build: &str) -> bool {
        applies(&self.only, &self.except, build)
    }
}

fn applies(only: &[String], except: &[String], build: &str) -> bool {
    (only.is_empty() || only.iter().any(|n| n == build)) && !except.iter().any(|n| n == build)
}

/// Parses JSON text; a syntax error becomes a problem with its line and column.
pub(crate) fn parse_json(text: &str, what: &str) -> Result<Value, Problem> {
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde_json appends " at line L column C"; we give the position our own way.
        let bare = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Problem::new(format!(
            "{what} is not valid JSON: {bare} at line {}, column {}",
            e.line(),
            e.column()
        ))
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn strip_comments(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn string_list(v: Option<&Value>, key: &str, problems: &mut Vec<Problem>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                other => {
                    problems.push(Problem::key(
                        key,
                        format!(
                            "must list build names as strings, found {}",
                            type_name(other)
                        ),
                    ));
                    None
                }
            })
            .collect(),
        Some(other) => {
            problems.push(Problem::key(
                key,
                format!(
                    "must be an array of build names, e.g. [\"amazon-ebs\"], found {}",
                    type_name(other)
                ),
            ));
            Vec::new()
        }
    }
}

/// Checks the template's structure. Returns what could be read even when there are problems,
/// so that later checks can still report theirs.
pub(crate) fn parse_template(text: &str) -> Result<(RawTemplate, Vec<Problem>), Vec<Problem>> {
    let root = parse_json(text, "the template").map_err(|p| vec![p])?;
    let Value::Object(root) = root else {
        return Err(vec![Problem::new(format!(
            "the template must be a JSON object with \"builders\", found {}",
            type_name(&root)
        ))]);
    };
    let mut problems = Vec::new();
    for key in root.keys() {
        if key.starts_with('_') || ROOT_KEYS.contains(&key.as_str()) {
            continue;
        }
        let msg = match key.as_str() {
            "push" => "unknown root level key in template: \"push\" was removed in Packer 1.5 (Atlas is gone); delete it".to_string(),
            "post_processors" | "sensitive_variables" => {
                format!("unknown root level key in template; did you mean \"{}\"?", key.replace('_', "-"))
            }
            _ => format!("unknown root level key in template (known keys: {})", ROOT_KEYS.join(", ")),
        };
        problems.push(Problem::key(key.clone(), msg));
    }

    let description = match root.get("description") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(Problem::key(
                "description",
                format!("must be a string, found {}", type_name(other)),
            ));
            None
        }
    };

    let min_packer_version = match root.get("min_packer_version") {
        None => None,
        Some(Value::String(s)) => {
            match (Version::parse(s), Version::parse(PACKER_COMPAT_VERSION)) {
                (Ok(want), Ok(have)) if want > have => problems.push(Problem::key(
                    "min_packer_version",
                    format!("the template requires Packer {s} or newer; amiflow follows Packer {PACKER_COMPAT_VERSION}"),
                )),
                (Err(e), _) => problems.push(Problem::key("min_packer_version", e)),
                _ => {}
            }
            Some(s.clone())
        }
        Some(other) => {
            problems.push(Problem::key(
                "min_packer_version",
                format!(
                    "must be a version string like \"1.7.0\", found {}",
                    type_name(other)
                ),
            ));
            None
        }
    };

    let variables = parse_variables(root.get("variables"), &mut problems);
    let declared: BTreeSet<&str> = variables.iter().map(|v| v.name.as_str()).collect();
    let mut sensitive = BTreeSet::new();
    for name in string_list(
        root.get("sensitive-variables"),
        "sensitive-variables",
        &mut problems,
    ) {
        if !declared.contains(name.as_str()) {
            problems.push(Problem::key(
                "sensitive-variables",
                format!("variable `{name}` is listed as sensitive but not declared in \"variables\"; declare it there"),
            ));
        }
        sensitive.insert(name);
    }

    let builders = parse_builders(root.get("builders"), &mut problems);
    let build_names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();

    let mut provisioners = Vec::new();
    match root.get("provisioners") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(p) = parse_provisioner(
                    item,
                    format!("provisioners[{i}]"),
                    &build_names,
                    &mut problems,
                ) {
                    provisioners.push(p);
                }
            }
        }
        Some(other) => problems.push(Problem::key(
            "provisioners",
            format!(
                "must be an array of provisioner objects, found {}",
                type_name(other)
            ),
        )),
    }
    let error_cleanup_provisioner = root.get("error-cleanup-provisioner").and_then(|v| {
        parse_provisioner(
            v,
            "error-cleanup-provisioner".into(),
            &build_names,
            &mut problems,
        )
    });

    let post_processors =
        parse_post_processors(root.get("post-processors"), &build_names, &mut problems);

    Ok((
        RawTemplate {
            description,
            min_packer_version,
            variables,
            sensitive,
            builders,
            provisioners,
            error_cleanup_provisioner,
            post_processors,
        },
        problems,
    ))
}

fn parse_variables(v: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<VarDecl> {
    let Some(v) = v else { return Vec::new() };
    let Value::Object(map) = v else {
        problems.push(Problem::key(
            "variables",
            format!("must be an object of name: default, found {}", type_name(v)),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let default = match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            // Packer decodes defaults weakly: numbers and booleans become their text.
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                problems.push(Problem::key(
                    format!("variables.{name}"),
                    format!("a variable's default must be a string (or null for a required variable), found {}", type_name(other)),
                ));
                continue;
            }
        };
        out.push(VarDecl {
            name: name.clone(),
            default,
        });
    }
    out
}

fn parse_builders(v: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<RawBuilder> {
    let items = match v {
        Some(Value::Array(items)) if !items.is_empty() => items,
        None | Some(Value::Array(_)) => {
            problems.push(Problem::key("builders", "the template has no builders: add at least one, e.g. {\"type\": \"amazon-ebs\", ...}"));
            return Vec::new();
        }
        Some(other) => {
            problems.push(Problem::key(
                "builders",
                format!(
                    "must be an array of builder objects, found {}",
                    type_name(other)
                ),
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<RawBuilder> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("builders[{i}]");
        let Value::Object(map) = item else {
            problems.push(Problem::key(
                path,
                format!(
                    "a builder must be an object with a \"type\", found {}",
                    type_name(item)
                ),
            ));
            continue;
        };
        let type_name_ = match map.get("type") {
            Some(Value::String(t)) => t.clone(),
            None => {
                problems.push(Problem::key(format!("{path}.type"), "missing builder type: add \"type\": \"amazon-ebs\" (or amazon-chroot, amazon-instance, amazon-ebssurrogate, amazon-ebsvolume)"));
                continue;
            }
            Some(other) => {
                problems.push(Problem::key(
                    format!("{path}.type"),
                    format!("must be a string, found {}", type_name(other)),
                ));
                continue;
            }
        };
        let name = match map.get("name") {
            None => type_name_.clone(),
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(other) => {
                problems.push(Problem::key(
                    format!("{path}.name"),
                    format!("must be a non-empty string, found {}", type_name(other)),
                ));
                type_name_.clone()
            }
        };
        if out.iter().any(|b| b.name == name) {
            problems.push(
                Problem::key(
                    format!("{path}.name"),
                    format!("more than one builder is named `{name}` (an unnamed builder is named after its type); give each builder a unique \"name\""),
                )
                .in_builder(&name),
            );
            continue;
        }
        let builder_type = BuilderType::parse(&type_name_);
        if builder_type.is_none() {
            let known: Vec<&str> = BuilderType::ALL.iter().map(|t| t.as_str()).collect();
            problems.push(
                Problem::key(
                    format!("{path}.type"),
                    format!(
                        "unknown builder type `{type_name_}`; amiflow builds {}",
                        known.join(", ")
                    ),
                )
                .in_builder(&name),
            );
        }
        let mut config = strip_comments(map);
        config.remove("name");
        config.remove("type");
        out.push(RawBuilder {
            name,
            type_name: type_name_,
            builder_type,
            config,
        });
    }
    out
}

fn check_names(names: &[String], key: &str, build_names: &[String], problems: &mut Vec<Problem>) {
    for n in names {
        if !build_names.contains(n) {
            problems.push(Problem::key(
                key,
                format!(
                    "names build `{n}`, which is not in the template (builds: {})",
                    build_names.join(", ")
                ),
            ));
        }
    }
}

fn parse_provisioner(
    item: &Value,
    path: String,
    build_names: &[String],
    problems: &mut Vec<Problem>,
) -> Option<RawProvisioner> {
    let Value::Object(map) = item else {
        problems.push(Problem::key(
            path,
            format!(
                "a provisioner must be an object with a \"type\", found {}",
                type_name(item)
            ),
        ));
        return None;
    };
    let type_name_ = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            problems.push(Problem::key(
                format!("{path}.type"),
                "missing provisioner type: add \"type\": \"shell\" (or file, shell-local)",
            ));
            return None;
        }
    };
    if !SUPPORTED_PROVISIONERS.contains(&type_name_.as_str()) {
        problems.push(Problem::key(
            format!("{path}.type"),
            format!(
                "provisioner type `{type_name_}` is not supported; amiflow runs {}",
                SUPPORTED_PROVISIONERS.join(", ")
            ),
        ));
    }
    let only = string_list(map.get("only"), &format!("{path}.only"), problems);
    let except = string_list(map.get("except"), &format!("{path}.except"), problems);
    if !only.is_empty() && !except.is_empty() {
        problems.push(Problem::key(
            path.clone(),
            "only one of \"only\" or \"except\" may be given",
        ));
    }
    check_names(&only, &format!("{path}.only"), build_names, problems);
    check_names(&except, &format!("{path}.except"), build_names, problems);
    let mut overrides = BTreeMap::new();
    match map.get("override") {
        None => {}
        Some(Value::Object(o)) => {
            for (build, keys) in o {
                if !build_names.contains(build) {
                    problems.push(Problem::key(
                        format!("{path}.override.{build}"),
                        format!(
                            "overrides build `{build}`, which is not in the template (builds: {})",
                            build_names.join(", ")
                        ),
                    ));
                }
                match keys {
                    Value::Object(k) => {
                        overrides.insert(build.clone(), strip_comments(k));
                    }
                    other => problems.push(Problem::key(
                        format!("{path}.override.{build}"),
                        format!(
                            "must be an object of keys to replace, found {}",
                            type_name(other)
                        ),
                    )),
                }
            }
        }
        Some(other) => problems.push(Problem::key(
            format!("{path}.override"),
            format!(
                "must be an object keyed by build name, found {}",
                type_name(other)
            ),
        )),
    }
    for key in ["pause_before", "timeout"] {
        match map.get(key) {
            None => {}
            Some(Value::String(s)) if !s.contains("{{") => {
                if let Err(e) = s.parse::<Duration>() {
                    problems.push(Problem::key(format!("{path}.{key}"), e.to_string()));
                }
            }
            Some(Value::String(_)) => {}
            Some(other) => problems.push(Problem::key(
                format!("{path}.{key}"),
                format!(
                    "must be a duration string like \"30s\" or \"5m\", found {}",
                    type_name(other)
                ),
            )),
        }
    }
    match map.get("max_retries") {
        None | Some(Value::Number(_)) => {}
        Some(Value::String(s)) if s.parse::<u32>().is_ok() || s.contains("{{") => {}
        Some(other) => problems.push(Problem::key(
            format!("{path}.max_retries"),
            format!("must be a whole number, found {other}"),
        )),
    }
    let mut config = strip_comments(map);
    for k in ["only", "except", "override"] {
        config.remove(k);
    }
    Some(RawProvisioner {
        path,
        type_name: type_name_,
        only,
        except,
        overrides,
        config,
    })
}

fn parse_post_processors(
    v: Option<&Value>,
    build_names: &[String],
    problems: &mut Vec<Problem>,
) -> Vec<RawPostProcessor> {
    let items = match v {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            problems.push(Problem::key(
                "post-processors",
                format!("must be an array, found {}", type_name(other)),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        // An entry is a post-processor or a sequence of them (Packer's nested-array form).
        match item {
            Value::Array(seq) => {
                for (j, inner) in seq.iter().enumerate() {
                    out.extend(parse_post_processor(
                        inner,
                        format!("post-processors[{i}][{j}]"),
                        build_names,
                        problems,
                    ));
                }
            }
            other => out.extend(parse_post_processor(
                other,
                format!("post-processors[{i}]"),
                build_names,
                problems,
            )),
        }
    }
    out
}

const MANIFEST_KEYS: [&str; 8] = [
    "type",
    "name",
    "only",
    "except",
    "keep_input_artifact",
    "output",
    "strip_path",
    "strip_time",
];

fn parse_post_processor(
    item: &Value,
    path: String,
    build_names: &[String],
    problems: &mut Vec<Problem>,
) -> Option<RawPostProcessor> {
    let map = match item {
        // The short form: just the type.
        Value::String(t) => {
            let mut m = Map::new();
            m.insert("type".into(), Value::String(t.clone()));
            m
        }
        Value::Object(m) => strip_comments(m),
        other => {
            problems.push(Problem::key(
                path,
                format!(
                    "a post-processor must be an object or a type name, found {}",
                    type_name(other)
                ),
            ));
            return None;
        }
    };
    let Some(Value::String(type_name_)) = map.get("type").cloned() else {
        problems.push(Problem::key(
            format!("{path}.type"),
            "missing post-processor type: add \"type\": \"manifest\"",
        ));
        return None;
    };
    if !SUPPORTED_POST_PROCESSORS.contains(&type_name_.as_str()) {
        problems.push(Problem::key(
            format!("{path}.type"),
            format!(
                "post-processor type `{type_name_}` is not supported; amiflow runs {}",
                SUPPORTED_POST_PROCESSORS.join(", ")
            ),
        ));
    }
    if type_name_ == "manifest" {
        for (k, v) in &map {
            let ok = match k.as_str() {
                "custom_data" => v.is_object(),
                "strip_path" | "strip_time" | "keep_input_artifact" => v.is_boolean(),
                "output" | "name" | "type" => v.is_string(),
                "only" | "except" => true,
                _ => {
                    problems.push(Problem::key(
                        format!("{path}.{k}"),
                        format!(
                            "unknown key of the manifest post-processor (known: custom_data, {})",
                            MANIFEST_KEYS.join(", ")
                        ),
                    ));
                    continue;
                }
            };
            if !ok {
                problems.push(Problem::key(
                    format!("{path}.{k}"),
                    format!("has the wrong type: found {}", type_name(v)),
                ));
            }
        }
    }
    if type_name_ == "checksum" {
        for (k, v) in &map {
            match k.as_str() {
                "checksum_types" => {
                    let types = string_list(Some(v), &format!("{path}.checksum_types"), problems);
                    for t in types
                        .iter()
                        .filter(|t| !CHECKSUM_TYPES.contains(&t.as_str()))
                    {
                        problems.push(Problem::key(
                            format!("{path}.checksum_types"),
                            format!(
                                "`{t}` is not a checksum type (known: {})",
                                CHECKSUM_TYPES.join(", ")
                            ),
                        ));
                    }
                }
                "output" if !v.is_string() => problems.push(Problem::key(
                    format!("{path}.output"),
                    format!("has the wrong type: found {}", type_name(v)),
                )),
                k if k == "output" || POST_PROCESSOR_COMMON_KEYS.contains(&k) => {}
                other => problems.push(Problem::key(
                    format!("{path}.{other}"),
                    "unknown key of the checksum post-processor (known: checksum_types, output)",
                )),
            }
        }
    }
    if type_name_ == "shell-local" {
        // The shell-local provisioner's keys and rules (Packer's post-processor takes the
        // same), the post-processor's own keys apart.
        let mut own = map.clone();
        for k in POST_PROCESSOR_COMMON_KEYS {
            own.remove(k);
        }
        own.insert("type".into(), Value::String("shell-local".into()));
        for p in crate::provisioner::check(&Value::Object(own)) {
            let key = match &p.key {
                Some(k) => format!("{path}.{k}"),
                None => path.clone(),
            };
            problems.push(Problem::key(key, p.message));
        }
    }
    let only = string_list(map.get("only"), &format!("{path}.only"), problems);
    let except = string_list(map.get("except"), &format!("{path}.except"), problems);
    check_names(&only, &format!("{path}.only"), build_names, problems);
    check_names(&except, &format!("{path}.except"), build_names, problems);
    let mut config = map;
    config.remove("only");
    config.remove("except");
    Some(RawPostProcessor {
        path,
        type_name: type_name_,
        only,
        except,
        config,
    })
}
