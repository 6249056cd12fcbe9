//! Evaluation of `{{ ... }}` actions with Packer's template functions.
//!
//! Why our own evaluator and not the `gtmpl` crate (a port of Go's text/template,
//! evaluated for this and not taken):
//! * gtmpl's custom functions are plain `fn` pointers (`gtmpl_value::Func`), so `timestamp`,
//!   `user`, `build_name` … could only reach the run's build time, variables and build name
//!   through thread-local globals;
//! * fields whose build data is not known yet (`{{ .SourceAMIName }}` in `tags`) must stay
//!   in the text, with the already-known parts of the same action resolved; gtmpl renders
//!   missing data as `<no value>` or fails, and has no way to print an action back;
//! * its errors carry a line number only; ours carry the column of the action, and say
//!   which function or field is unknown and what to use instead;
//! * Packer JSON templates use function calls and pipelines, not `if`/`range`/`define`:
//!   the subset is ~600 lines here, with control structures refused clearly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::funcs;
use super::golayout;
use super::limits::{value_too_long, MAX_VALUE_BYTES};
use super::secrets::SECRET_MARK;
use super::syntax::{self, Arg, Cmd, Node, Pipe};

/// The Packer version amiflow answers to `min_packer_version` and `{{packer_version}}`:
/// the templates and plugin behaviour it follows are those of this release.
pub const PACKER_COMPAT_VERSION: &str = "1.11.2";

/// The functions a Packer template may call, for "did you mean" lists.
pub(crate) const FUNCTIONS: &[&str] = &[
    "build",
    "build_name",
    "build_type",
    "clean_resource_name",
    "env",
    "isotime",
    "lower",
    "packer_version",
    "pwd",
    "replace",
    "replace_all",
    "split",
    "strftime",
    "template_dir",
    "timestamp",
    "upper",
    "user",
    "uuid",
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    fn into_string(self) -> String {
        match self {
            Value::Str(s) => s,
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }

    fn into_arg(self) -> Arg {
        match self {
            Value::Str(s) => Arg::Str(s),
            Value::Int(n) => Arg::Int(n),
            Value::Bool(b) => Arg::Bool(b),
        }
    }
}

/// Build data (`.SourceAMI`, `{{build `Name`}}`) for the text being rendered.
#[derive(Clone, Copy)]
pub(crate) enum Data<'a> {
    /// Not available in this field: the reason and what to do, for the error.
    Unavailable(&'a str),
    /// Rendered later by a step: keep the actions that use it.
    Defer,
    Values(&'a BTreeMap<String, String>),
}

/// How `{{user `name`}}` finds a variable's value.
pub(crate) type UserLookup<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// What the text being rendered may use. `None` means "not available here".
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub time: Option<DateTime<Utc>>,
    pub user: Option<UserLookup<'a>>,
    pub env: Option<&'a dyn Fn(&str) -> String>,
    pub build_name: Option<&'a str>,
    pub build_type: Option<&'a str>,
    pub template_dir: Option<&'a str>,
    pub data: Data<'a>,
}

/// How much of a one-line value a message repeats.
const SHOWN_CHARS: usize = 80;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EvalError {
    /// Byte offset of the action (or syntax error) in the rendered text.
    pub offset: usize,
    pub message: String,
}

impl EvalError {
    /// The message with the position, for a problem about a value: `column N` of
    /// one-line values, `line L, column C` otherwise.
    pub fn describe(&self, src: &str) -> String {
        let before = &src[..self.offset.min(src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        if src.contains('\n') {
            format!("{} (line {line}, column {col} of the value)", self.message)
        } else if src.chars().count() > SHOWN_CHARS {
            // A long value is not repeated whole in the message: its start says which it is.
            let start: String = src.chars().take(SHOWN_CHARS).collect();
            format!(
                "{} (column {col} of the {}-character value {start:?}…)",
                self.message,
                src.chars().count()
            )
        } else {
            format!("{} (column {col} of {:?})", self.message, src)
        }
    }
}

/// Renders `src`. With [`Data::Defer`], actions that use build data are kept (printed back
/// with their known parts resolved) and everything else is rendered.
pub(crate) fn render(src: &str, scope: &Scope) -> Result<String, EvalError> {
    let nodes = syntax::parse(src).map_err(|e| EvalError {
        offset: e.offset,
        message: e.message,
    })?;
    let mut out = String::with_capacity(src.len());
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(&t),
            Node::Action(a) => {
                let err = |message: String| EvalError {
                    offset: a.offset,
                    message,
                };
                if matches!(scope.data, Data::Defer) && pipe_uses_data(&a.pipe) {
                    let kept = partial_pipe(&a.pipe, scope).map_err(err)?;
                    out.push_str("{{ ");
                    out.push_str(&kept.to_source());
                    out.push_str(" }}");
                } else {
                    let text = eval_pipe(&a.pipe, scope).map_err(err)?.into_string();
                    if matches!(scope.data, Data::Defer) && text.contains("{{") {
                        // The text will be rendered again: keep a literal `{{` literal.
                        out.push_str(&format!("{{{{ {} }}}}", syntax::quote(&text)));
                    } else {
                        out.push_str(&text);
                    }
                }
                if out.len() > MAX_VALUE_BYTES {
                    return Err(err(value_too_long()));
                }
            }
        }
    }
    Ok(out)
}

/// The `{{ build `X` }}` names in `src` that are not [`super::BUILD_DATA`] (provisioners
/// and post-processors have only those; a builder's deferred fields have their own).
pub(crate) fn unknown_build_data(src: &str) -> Vec<String> {
    fn walk(p: &Pipe, out: &mut Vec<String>) {
        for cmd in &p.cmds {
            if let [Arg::Ident(name), Arg::Str(key)] = cmd.args.as_slice() {
                if name == "build" && !super::BUILD_DATA.contains(&key.as_str()) {
                    out.push(key.clone());
                }
            }
            for arg in &cmd.args {
                if let Arg::Sub(sub) = arg {
                    walk(sub, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for node in syntax::parse(src).unwrap_or_default() {
        if let Node::Action(a) = node {
            walk(&a.pipe, &mut out);
        }
    }
    out
}

fn pipe_uses_data(p: &Pipe) -> bool {
    p.cmds.iter().any(cmd_uses_data)
}

fn cmd_uses_data(c: &Cmd) -> bool {
    c.args.iter().any(|a| match a {
        Arg::Field(_) | Arg::Dot => true,
        Arg::Ident(name) => name == "build",
        Arg::Sub(p) => pipe_uses_data(p),
        _ => false,
    })
}

/// The pipe with every part that does not need build data replaced by its value.
fn partial_pipe(p: &Pipe, scope: &Scope) -> Result<Pipe, String> {
    if !pipe_uses_data(p) {
        let v = eval_pipe(p, scope)?;
        return Ok(Pipe {
            cmds: vec![Cmd {
                args: vec![v.into_arg()],
            }],
        });
    }
    let mut cmds = Vec::with_capacity(p.cmds.len());
    for (i, cmd) in p.cmds.iter().enumerate() {
        if i == 0 && !cmd_uses_data(cmd) {
            cmds.push(Cmd {
                args: vec![eval_cmd(cmd, None, scope)?.into_arg()],
            });
            continue;
        }
        let mut args = Vec::with_capacity(cmd.args.len());
        for (j, arg) in cmd.args.iter().enumerate() {
            args.push(match arg {
                Arg::Ident(_) if j == 0 => arg.clone(),
                Arg::Ident(name) if name != "build" => call(name, Vec::new(), scope)?.into_arg(),
                Arg::Sub(sub) if !pipe_uses_data(sub) => eval_pipe(sub, scope)?.into_arg(),
                Arg::Sub(sub) => Arg::Sub(partial_pipe(sub, scope)?),
                other => other.clone(),
            });
        }
        cmds.push(Cmd { args });
    }
    Ok(Pipe { cmds })
}

fn eval_pipe(p: &Pipe, scope: &Scope) -> Result<Value, String> {
    let mut piped = None;
    for cmd in &p.cmds {
        piped = Some(eval_cmd(cmd, piped, scope)?);
    }
    Ok(piped.expect("the parser never yields an empty pipeline"))
}

fn eval_cmd(cmd: &Cmd, piped: Option<Value>, scope: &Scope) -> Result<Value, String> {
    match &cmd.args[0] {
        Arg::Ident(name) => {
            let mut args = cmd.args[1..]
                .iter()
                .map(|a| eval_arg(a, scope))
                .collect::<Result<Vec<_>, _>>()?;
            args.extend(piped);
            call(name, args, scope)
        }
        operand => {
            if piped.is_some() {
                return Err(format!(
                    "cannot pipe a value into `{}`: only functions take arguments",
                    operand.to_source()
                ));
            }
            eval_arg(operand, scope)
        }
    }
}

fn eval_arg(arg: &Arg, scope: &Scope) -> Result<Value, String> {
    match arg {
        Arg::Ident(name) => call(name, Vec::new(), scope),
        Arg::Field(path) => build_data(
            &path.join("."),
            &format!("{{{{ .{} }}}}", path.join(".")),
            scope,
        ),
        Arg::Dot => Err(
            "`{{ . }}` has no value in a Packer template; name a field, e.g. {{ .SourceAMIName }}"
                .into(),
        ),
        Arg::Str(s) => Ok(Value::Str(s.clone())),
        Arg::Int(n) => Ok(Value::Int(*n)),
        Arg::Bool(b) => Ok(Value::Bool(*b)),
        Arg::Sub(p) => eval_pipe(p, scope),
    }
}

fn build_data(key: &str, shown: &str, scope: &Scope) -> Result<Value, String> {
    match scope.data {
        Data::Unavailable(why) => Err(format!(
            "`{shown}` is build data, which is not available here: {why}"
        )),
        Data::Defer => Err(format!("`{shown}` is build data and is rendered later")),
        Data::Values(values) => match values.get(key) {
            Some(v) => Ok(Value::Str(v.clone())),
            None => {
                let known: Vec<&str> = values.keys().map(String::as_str).collect();
                Err(format!(
                    "no build data named `{key}` here (available: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            }
        },
    }
}

fn arity(name: &str, args: &[Value], want: usize) -> Result<(), String> {
    if args.len() == want {
        Ok(())
    } else {
        Err(format!(
            "wrong number of arguments for `{name}`: want {want}, got {}",
            args.len()
        ))
    }
}

fn int_arg(name: &str, pos: usize, v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(format!(
            "argument {pos} of `{name}` must be a whole number, got {:?}",
            other.clone().into_string()
        )),
    }
}

fn needs_time(name: &str, scope: &Scope) -> Result<DateTime<Utc>, String> {
    scope.time.ok_or_else(|| {
        format!("`{name}` must be rendered when the template is prepared, not with build data")
    })
}

fn call(name: &str, args: Vec<Value>, scope: &Scope) -> Result<Value, String> {
    if name != "user"
        && args
            .iter()
            .any(|a| matches!(a, Value::Str(s) if s.contains(SECRET_MARK)))
    {
        return Err(format!(
            "a sensitive variable cannot be passed to `{name}`: its value is only put in place when it is used; use {{{{user `name`}}}} on its own"
        ));
    }
    let s = |i: usize| args[i].clone().into_string();
    let v = match name {
        "timestamp" => {
            arity(name, &args, 0)?;
            needs_time(name, scope)?.timestamp().to_string()
        }
        "isotime" => {
            let t = needs_time(name, scope)?;
            match args.len() {
                0 => golayout::format(&t, "2006-01-02T15:04:05Z07:00"),
                1 => golayout::format(&t, &s(0)),
                n => return Err(format!("`isotime` takes at most one layout, got {n} arguments")),
            }
        }
        "strftime" => {
            arity(name, &args, 1)?;
            let t = needs_time(name, scope)?;
            strftime(&t, &s(0))?
        }
        "uuid" => {
            arity(name, &args, 0)?;
            let t = needs_time(name, scope)?;
            packer_uuid(&t)
        }
        "user" => {
            arity(name, &args, 1)?;
            let user = scope.user.ok_or("`user` must be rendered when the template is prepared, not with build data")?;
            user(&s(0))?
        }
        "env" => {
            arity(name, &args, 1)?;
            let env = scope.env.ok_or_else(|| {
                format!(
                    "`env` is only allowed in \"variables\": declare a variable whose default is {{{{env `{}`}}}} and use {{{{user `name`}}}} here",
                    s(0)
                )
            })?;
            env(&s(0))
        }
        "build_name" | "build_type" => {
            arity(name, &args, 0)?;
            let v = if name == "build_name" { scope.build_name } else { scope.build_type };
            v.ok_or_else(|| format!("`{name}` is only available in builders, provisioners and post-processors"))?.to_string()
        }
        "build" => {
            arity(name, &args, 1)?;
            return build_data(&s(0), &format!("{{{{ build `{}` }}}}", s(0)), scope);
        }
        "clean_resource_name" => {
            arity(name, &args, 1)?;
            funcs::clean_resource_name(&s(0))
        }
        "upper" => {
            arity(name, &args, 1)?;
            s(0).to_uppercase()
        }
        "lower" => {
            arity(name, &args, 1)?;
            s(0).to_lowercase()
        }
        "replace" => {
            arity(name, &args, 4)?;
            let n = int_arg(name, 3, &args[2])?;
            fits(funcs::replaced_len(&s(0), &s(1), n, &s(3)))?;
            funcs::replace(&s(0), &s(1), n, &s(3))
        }
        "replace_all" => {
            arity(name, &args, 3)?;
            fits(funcs::replaced_len(&s(0), &s(1), -1, &s(2)))?;
            s(2).replace(&s(0), &s(1))
        }
        "split" => {
            arity(name, &args, 3)?;
            funcs::split(&s(0), &s(1), int_arg(name, 3, &args[2])?)?
        }
        "pwd" => {
            arity(name, &args, 0)?;
            std::env::current_dir().map_err(|e| format!("`pwd`: {e}"))?.display().to_string()
        }
        "template_dir" => {
            arity(name, &args, 0)?;
            scope.template_dir.ok_or("`template_dir` is unknown: the template was not read from a file")?.to_string()
        }
        "packer_version" => {
            arity(name, &args, 0)?;
            PACKER_COMPAT_VERSION.to_string()
        }
        "clean_ami_name" => return Err("`clean_ami_name` was renamed `clean_resource_name` in Packer 1.4; use that".into()),
        "sed" => return Err("`sed` was removed from Packer; use `replace` or `replace_all`".into()),
        "consul_key" | "vault" | "aws_secretsmanager" | "aws_secretsmanager_raw" => {
            return Err(format!(
                "`{name}` is not supported: amiflow does not fetch secrets while reading a template; pass the value with -var and list the variable in \"sensitive-variables\""
            ))
        }
        other => {
            return Err(format!("function `{other}` is not defined (Packer template functions: {})", FUNCTIONS.join(", ")));
        }
    };
    fits(v.len())?;
    Ok(Value::Str(v))
}

/// A result of `len` bytes is within [`MAX_VALUE_BYTES`].
fn fits(len: usize) -> Result<(), String> {
    if len > MAX_VALUE_BYTES {
        Err(value_too_long())
    } else {
        Ok(())
    }
}

fn strftime(t: &DateTime<Utc>, fmt: &str) -> Result<String, String> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(fmt).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "`strftime`: {fmt:?} is not a valid strftime format"
        ));
    }
    Ok(t.format_with_items(items.into_iter()).to_string())
}

/// Packer's time-ordered UUID: the first 32 bits are the Unix time, the rest random.
fn packer_uuid(t: &DateTime<Utc>) -> String {
    let r = *uuid::Uuid::new_v4().as_bytes();
    let secs = t.timestamp() as u32;
    format!(
        "{secs:08x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 5, 14, 7, 9).unwrap()
    }

    fn user(name: &str) -> Result<String, String> {
        match name {
            "region" => Ok("eu-west-1".into()),
            "name" => Ok("My App: v1".into()),
            other => Err(format!("variable `{other}` is not declared")),
        }
    }

    fn env(name: &str) -> String {
        if name == "HOME" {
            "/home/me".into()
        } else {
            String::new()
        }
    }

    fn builder_scope() -> Scope<'static> {
        Scope {
            time: Some(time()),
            user: Some(&user),
            env: None,
            build_name: Some("web"),
            build_type: Some("amazon-ebs"),
            template_dir: Some("/t"),
            data: Data::Unavailable("only ami_description and tags have build data"),
        }
    }

    fn r(src: &str) -> Result<String, String> {
        render(src, &builder_scope()).map_err(|e| e.describe(src))
    }

    #[test]
    fn every_function() {
        assert_eq!(r("{{timestamp}}").unwrap(), "1709647629");
        assert_eq!(r("{{isotime}}").unwrap(), "2024-03-05T14:07:09Z");
        assert_eq!(r("{{isotime \"20060102\"}}").unwrap(), "20240305");
        assert_eq!(
            r("{{ isotime `2006-01-02T15:04:05Z07:00` }}").unwrap(),
            "2024-03-05T14:07:09Z"
        );
        assert_eq!(r("{{strftime \"%Y%m%d\"}}").unwrap(), "20240305");
        assert_eq!(r("{{user `region`}}").unwrap(), "eu-west-1");
        assert_eq!(
            r("{{build_name}}-{{build_type}}").unwrap(),
            "web-amazon-ebs"
        );
        assert_eq!(r("{{clean_resource_name `a:b`}}").unwrap(), "a-b");
        assert_eq!(r("{{upper `ab`}}{{lower `CD`}}").unwrap(), "ABcd");
        assert_eq!(r("{{replace `a` `b` 2 `aaa`}}").unwrap(), "bba");
        assert_eq!(r("{{replace_all `a` `b` `aaa`}}").unwrap(), "bbb");
        assert_eq!(r("{{split `a-b-c` `-` 2}}").unwrap(), "c");
        assert_eq!(r("{{template_dir}}").unwrap(), "/t");
        assert_eq!(r("{{packer_version}}").unwrap(), PACKER_COMPAT_VERSION);
        assert!(!r("{{pwd}}").unwrap().is_empty());
    }

    #[test]
    fn pipelines_and_sub_pipelines() {
        assert_eq!(
            r("{{timestamp | clean_resource_name}}").unwrap(),
            "1709647629"
        );
        assert_eq!(
            r("{{ user `name` | clean_resource_name | lower }}").unwrap(),
            "my app- v1"
        );
        assert_eq!(r("{{ `a.b.c` | replace_all `.` `-` }}").unwrap(), "a-b-c");
        assert_eq!(r("{{ upper (user `region`) }}").unwrap(), "EU-WEST-1");
        // The piped value is the last argument, as in Go: here the index, which is no number.
        assert!(r("{{ `a-b` | split `-` 0 }}")
            .unwrap_err()
            .contains("whole number"));
    }

    #[test]
    fn uuid_is_time_ordered_and_new_per_call() {
        let a = r("{{uuid}}").unwrap();
        let b = r("{{uuid}}").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.starts_with(&format!("{:08x}-", time().timestamp())));
        assert_eq!(
            a.split('-').map(str::len).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
    }

    #[test]
    fn clear_errors_with_columns() {
        let e = r("ami-{{ nope }}").unwrap_err();
        assert!(e.contains("function `nope` is not defined"), "{e}");
        assert!(e.contains("column 5"), "{e}");
        assert!(r("{{env `HOME`}}")
            .unwrap_err()
            .contains("only allowed in \"variables\""));
        assert!(r("{{user `missing`}}")
            .unwrap_err()
            .contains("not declared"));
        assert!(r("{{ .SourceAMIName }}")
            .unwrap_err()
            .contains("only ami_description"));
        assert!(r("{{clean_ami_name `x`}}")
            .unwrap_err()
            .contains("clean_resource_name"));
        assert!(r("{{upper}}").unwrap_err().contains("want 1, got 0"));
        assert!(r("{{ `a` | `b` }}").unwrap_err().contains("only functions"));
        assert!(r("{{vault `a` `b`}}")
            .unwrap_err()
            .contains("sensitive-variables"));
        assert!(r("{{strftime `%Q`}}").unwrap_err().contains("not a valid"));
        let multi = "line1\n  {{ nope }}";
        assert!(r(multi).unwrap_err().contains("line 2, column 3"));
    }

    #[test]
    fn env_in_variables_scope() {
        let scope = Scope {
            env: Some(&env),
            ..builder_scope()
        };
        assert_eq!(
            render("{{env `HOME`}}/x{{env `UNSET`}}", &scope).unwrap(),
            "/home/me/x"
        );
    }

    #[test]
    fn deferred_keeps_build_data_and_resolves_the_rest() {
        let scope = Scope {
            data: Data::Defer,
            ..builder_scope()
        };
        let out = render(
            "{{user `region`}} from {{ .SourceAMIName }} at {{timestamp}}",
            &scope,
        )
        .unwrap();
        assert_eq!(out, "eu-west-1 from {{ .SourceAMIName }} at 1709647629");
        let out = render(
            "{{ user `name` | replace_all .BuildRegion (upper `x`) }}",
            &scope,
        )
        .unwrap();
        assert_eq!(out, "{{ \"My App: v1\" | replace_all .BuildRegion \"X\" }}");
        let out = render("{{ build `SourceAMI` }}-{{ build_name }}", &scope).unwrap();
        assert_eq!(out, "{{ build \"SourceAMI\" }}-web");
        // A literal `{{` produced now must not become an action later.
        let out = render("{{ `{{x}}` }}", &scope).unwrap();
        assert_eq!(later(&out, &BTreeMap::new()).unwrap(), "{{x}}");
    }

    fn later(src: &str, data: &BTreeMap<String, String>) -> Result<String, String> {
        crate::template::render_later(src, data)
    }

    #[test]
    fn deferred_text_renders_later_with_build_data() {
        let scope = Scope {
            data: Data::Defer,
            ..builder_scope()
        };
        let kept = render("{{user `region`}}/{{ .SourceAMIName | clean_resource_name }}/{{ .SourceAMITags.Team }}/{{build `Device`}}", &scope).unwrap();
        let data: BTreeMap<String, String> = [
            ("SourceAMIName", "ubuntu: 22.04"),
            ("SourceAMITags.Team", "core"),
            ("Device", "/dev/xvdf"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            later(&kept, &data).unwrap(),
            "eu-west-1/ubuntu- 22.04/core//dev/xvdf"
        );
        let e = later("{{ .Nope }}", &data).unwrap_err();
        assert!(
            e.contains("no build data named `Nope`") && e.contains("SourceAMIName"),
            "{e}"
        );
        assert!(later("{{timestamp}}", &data)
            .unwrap_err()
            .contains("when the template is prepared"));
    }
}
