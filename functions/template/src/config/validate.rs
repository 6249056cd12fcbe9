//! `from_builder`: raw builder object → typed config, with Packer's defaults and validation.
//!
//! Passes, all of them run so that every problem is reported at once:
//! 1. keys: unknown keys (with the closest known key), keys of another builder, keys Packer
//!    renamed or amiflow does not support;
//! 2. types: each key is decoded on its own, with mapstructure's weak typing (`"22"` is a
//!    fine port, `"true"` a fine bool) — a key that still does not fit names the type it needs;
//! 3. defaults that depend on other keys, legacy keys folded into their successors: each
//!    config's `normalize`, beside its struct (`AmiConfig::normalize` in ami.rs, …);
//! 4. rules: required keys, conflicts, ranges, formats: each config's `check`, beside its
//!    struct, with the shared machinery of check.rs.
//!
//! This file runs the passes and hands each group of a builder's config (access, AMI, run,
//! communicator) and then the builder's own keys to their `normalize` and `check`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::builder::{BuilderConfig, BuilderType};
use super::check::{closest, Check};
use super::weak;
use crate::problem::Problem;

/// Keys never serialized (secrets) — known, but absent from a serialized default config.
const SECRET_KEYS: [&str; 7] = [
    "access_key",
    "secret_key",
    "token",
    "mfa_code",
    "ssh_password",
    "ssh_bastion_password",
    "ssh_proxy_password",
];
/// Old names serde accepts as aliases.
const ALIAS_KEYS: [&str; 1] = ["ssh_wait_timeout"];

/// Keys Packer renamed or removed, and what to write instead.
const RENAMED: [(&str, &str); 7] = [
    ("shutdown_behaviour", "it is spelled shutdown_behavior"),
    (
        "temporary_security_group_source_cidr",
        "renamed to temporary_security_group_source_cidrs (a list)",
    ),
    (
        "mount_command",
        "replaced by command_wrapper (\"{{.Command}}\" by default)",
    ),
    (
        "unmount_command",
        "replaced by command_wrapper (\"{{.Command}}\" by default)",
    ),
    ("avail_zone", "renamed to availability_zone"),
    ("ssh_key_path", "renamed to ssh_private_key_file"),
    (
        "clean_ami_name",
        "clean_ami_name is a template function, now clean_resource_name",
    ),
];

/// Packer keys amiflow does not implement, and the alternative.
fn unsupported(key: &str) -> Option<&'static str> {
    if key.starts_with("winrm_") {
        return Some("amiflow runs WinRM templates over SSM, where this key has no meaning; remove it (SSM needs no host, proxy or transport settings)");
    }
    match key {
        "vault_aws_engine" => Some("Vault credentials are not supported by amiflow; use profile, assume_role or the environment"),
        _ => None,
    }
}

/// Parse and validate one builder (`name` = the build's name, used in every problem).
/// A missing `region` is accepted when `AWS_REGION` or `AWS_DEFAULT_REGION` is set.
pub fn from_builder(
    name: &str,
    builder_type: BuilderType,
    raw: &Map<String, Value>,
) -> Result<BuilderConfig, Vec<Problem>> {
    from_builder_with_env(name, builder_type, raw, &|k| std::env::var(k).ok())
}

/// [`from_builder`] with the environment given, so tests stay pure.
pub fn from_builder_with_env(
    name: &str,
    builder_type: BuilderType,
    raw: &Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BuilderConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let known = known_keys(builder_type);

    // Packer's zero values mean "unset": drop nulls and empty strings so defaults apply.
    let mut map: Map<String, Value> = raw
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "type" | "name") && !k.starts_with("packer_"))
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    if builder_type != BuilderType::Chroot {
        super::communicator::from_winrm(&mut map);
    }
    check_keys(builder_type, &known, &mut map, &mut problems);
    coerce_types(builder_type, &mut map, &mut problems);

    let mut config = match decode(builder_type, Value::Object(map.clone())) {
        Ok(c) => c,
        Err(e) => {
            if problems.is_empty() {
                problems.push(Problem::new(format!("cannot read the builder: {e}")));
            }
            return Err(finish(name, problems));
        }
    };
    normalize(&mut config, &map);
    check(&config, &map, env, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(finish(name, problems))
    }
}

/// Pass 3: the defaults of each group, then of the builder's own keys (`raw`: the keys as
/// written).
fn normalize(config: &mut BuilderConfig, raw: &Map<String, Value>) {
    let region = config.region().map(str::to_string);
    let (access, ami, launch) = match config {
        BuilderConfig::Ebs(c) => (
            &mut c.access,
            Some(&mut c.ami),
            Some((&mut c.run, &mut c.comm)),
        ),
        BuilderConfig::EbsSurrogate(c) => (
            &mut c.access,
            Some(&mut c.ami),
            Some((&mut c.run, &mut c.comm)),
        ),
        BuilderConfig::Instance(c) => (
            &mut c.access,
            Some(&mut c.ami),
            Some((&mut c.run, &mut c.comm)),
        ),
        BuilderConfig::EbsVolume(c) => (&mut c.access, None, Some((&mut c.run, &mut c.comm))),
        BuilderConfig::Chroot(c) => (&mut c.access, Some(&mut c.ami), None),
    };
    access.normalize();
    if let Some(ami) = ami {
        ami.normalize(region.as_deref());
    }
    if let Some((run, comm)) = launch {
        comm.normalize();
        run.normalize(comm.ssh_interface.as_deref());
    }
    match config {
        BuilderConfig::Instance(c) => c.normalize(),
        BuilderConfig::Chroot(c) => c.normalize(raw),
        BuilderConfig::Ebs(_) | BuilderConfig::EbsSurrogate(_) | BuilderConfig::EbsVolume(_) => {}
    }
}

/// Pass 4: the rules of each group, then those across groups, then the builder's own.
fn check(
    config: &BuilderConfig,
    raw: &Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let mut c = Check::new(raw, problems);
    let access = config.access();
    access.check(&mut c, config.builder_type() == BuilderType::Chroot, env);
    if let Some(ami) = config.ami() {
        ami.check(&mut c, access.skip_region_validation);
    }
    if let (Some(run), Some(comm)) = (config.run(), config.comm()) {
        run.check(&mut c);
        comm.check(&mut c, run.gets_instance_profile());
    }
    check_spot_networking(&mut c, config);
    match config {
        BuilderConfig::Ebs(e) => e.check(&mut c),
        BuilderConfig::EbsSurrogate(s) => s.check(&mut c),
        BuilderConfig::EbsVolume(v) => v.check(&mut c),
        BuilderConfig::Instance(i) => i.check(&mut c),
        BuilderConfig::Chroot(ch) => ch.check(&mut c),
    }
}

/// Packer (ebs, ebssurrogate, ebsvolume, instance): spot instances cannot be modified, and
/// turning on ENA / SR-IOV needs ModifyInstanceAttribute.
fn check_spot_networking(c: &mut Check, config: &BuilderConfig) {
    if !config.is_spot() {
        return;
    }
    for (key, set) in [
        ("ena_support", config.ena_support() == Some(true)),
        ("sriov_support", config.sriov_support()),
    ] {
        if set {
            c.err(key, format!("conflicts with spot_price: spot instances cannot be modified to enable {key}; use a source AMI that already has it, or drop spot_price"));
        }
    }
}

fn finish(name: &str, problems: Vec<Problem>) -> Vec<Problem> {
    problems.into_iter().map(|p| p.in_builder(name)).collect()
}

pub(super) fn decode(
    builder_type: BuilderType,
    value: Value,
) -> Result<BuilderConfig, serde_json::Error> {
    Ok(match builder_type {
        BuilderType::Ebs => BuilderConfig::Ebs(serde_json::from_value(value)?),
        BuilderType::Chroot => BuilderConfig::Chroot(serde_json::from_value(value)?),
        BuilderType::Instance => BuilderConfig::Instance(serde_json::from_value(value)?),
        BuilderType::EbsSurrogate => BuilderConfig::EbsSurrogate(serde_json::from_value(value)?),
        BuilderType::EbsVolume => BuilderConfig::EbsVolume(serde_json::from_value(value)?),
    })
}

/// Every key a builder takes: the keys of its serialized default config (every field is
/// serialized, so the struct itself is the list), plus secrets and aliases.
pub fn known_keys(builder_type: BuilderType) -> BTreeSet<String> {
    let default = decode(builder_type, Value::Object(Map::new())).expect("every key has a default");
    let Value::Object(tagged) = serde_json::to_value(&default).expect("config serializes") else {
        unreachable!()
    };
    let Some(Value::Object(fields)) = tagged.into_iter().next().map(|(_, v)| v) else {
        unreachable!()
    };
    let mut keys: BTreeSet<String> = fields.keys().cloned().collect();
    let secrets = SECRET_KEYS.iter().filter(|k| {
        // ssh_* secrets only where there is a communicator.
        builder_type != BuilderType::Chroot || !k.starts_with("ssh_")
    });
    keys.extend(
        secrets
            .chain(
                ALIAS_KEYS
                    .iter()
                    .filter(|_| builder_type != BuilderType::Chroot),
            )
            .map(|k| k.to_string()),
    );
    keys
}

fn check_keys(
    builder_type: BuilderType,
    known: &BTreeSet<String>,
    map: &mut Map<String, Value>,
    problems: &mut Vec<Problem>,
) {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(*k))
        .cloned()
        .collect();
    for key in unknown {
        map.remove(&key);
        if let Some((_, what)) = RENAMED.iter().find(|(old, _)| *old == key) {
            problems.push(Problem::key(&key, format!("unknown key: {what}")));
        } else if let Some(why) = unsupported(&key) {
            problems.push(Problem::key(&key, format!("not supported: {why}")));
        } else if let Some(owner) = BuilderType::ALL
            .into_iter()
            .find(|t| *t != builder_type && known_keys(*t).contains(&key))
        {
            problems.push(Problem::key(
                &key,
                format!(
                    "unknown key: {key} is an option of {} and {} does not take it; remove it",
                    owner.as_str(),
                    builder_type.as_str()
                ),
            ));
        } else {
            let hint = match closest(&key, known.iter().map(String::as_str)) {
                Some(k) => format!("; did you mean {k}?"),
                None => "; remove it".to_string(),
            };
            problems.push(Problem::key(
                &key,
                format!("unknown key for {}{hint}", builder_type.as_str()),
            ));
        }
    }
}

/// Decode each key alone; on failure try mapstructure's weak coercions; report what remains.
fn coerce_types(
    builder_type: BuilderType,
    map: &mut Map<String, Value>,
    problems: &mut Vec<Problem>,
) {
    if decode(builder_type, Value::Object(map.clone())).is_ok() {
        return;
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let value = map[&key].clone();
        let try_one = |v: &Value| {
            let mut one = Map::new();
            one.insert(key.clone(), v.clone());
            decode(builder_type, Value::Object(one))
        };
        let Err(err) = try_one(&value) else { continue };
        match weak::coerce_candidates(&value)
            .into_iter()
            .find(|c| try_one(c).is_ok())
        {
            Some(fixed) => {
                map.insert(key, fixed);
            }
            None => {
                map.remove(&key);
                problems.push(type_problem(&key, &value, &err.to_string()));
            }
        }
    }
}

fn type_problem(key: &str, value: &Value, serde_msg: &str) -> Problem {
    // Nested blocks refuse unknown keys: name the key and the likely one.
    if let Some(rest) = serde_msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split("expected one of ")
            .nth(1)
            .unwrap_or(rest)
            .split('`')
            .filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.is_empty())
            .collect();
        let hint = match closest(field, expected.iter().copied()) {
            Some(k) => format!("did you mean {k}?"),
            None => format!("it takes {}", expected.join(", ")),
        };
        return Problem::key(
            format!("{key}.{field}"),
            format!("unknown key in {key}; {hint}"),
        );
    }
    if let Some(rest) = serde_msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return Problem::key(
            format!("{key}.{field}"),
            format!("required: {key} needs {field}"),
        );
    }
    let msg = serde_msg
        .replace(
            "expected u16",
            "expected a port number, an integer from 1 to 65535",
        )
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected a list")
        .replace("expected a map", "expected an object");
    let msg = match msg.find("expected struct ") {
        Some(i) => format!("{}expected an object", &msg[..i]),
        None => msg,
    };
    if msg.starts_with("invalid value: integer") {
        return Problem::key(
            key,
            format!(
                "out of range: {value} is not allowed; {}",
                msg.split(", ").last().unwrap_or(&msg)
            ),
        );
    }
    if msg.contains("duration") {
        return Problem::key(key, format!("bad duration: {msg}"));
    }
    Problem::key(key, format!("wrong type: {msg}"))
}
