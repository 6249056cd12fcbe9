//! Defaults that depend on other keys, and Packer's validation rules (reference §4).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::*;
use crate::problem::Problem;

/// True when a value is not known yet: a template expression rendered later with build
/// data, or a sensitive variable's placeholder (`<sensitive:NAME>`, revealed at use).
fn templated(s: &str) -> bool {
    s.contains("{{") || s.contains("<sensitive:")
}

fn given(map: &Map<String, Value>, key: &str) -> bool {
    map.contains_key(key)
}

// ---------------------------------------------------------------- defaults and legacy keys

pub(super) fn normalize(config: &mut BuilderConfig, map: &Map<String, Value>) {
    let region = config.region().map(str::to_string);
    match config {
        BuilderConfig::Ebs(c) => {
            normalize_ami(&mut c.ami, region.as_deref());
            normalize_run(&mut c.run, &mut c.comm);
        }
        BuilderConfig::EbsSurrogate(c) => {
            normalize_ami(&mut c.ami, region.as_deref());
            normalize_run(&mut c.run, &mut c.comm);
        }
        BuilderConfig::EbsVolume(c) => normalize_run(&mut c.run, &mut c.comm),
        BuilderConfig::Instance(c) => {
            normalize_ami(&mut c.ami, region.as_deref());
            normalize_run(&mut c.run, &mut c.comm);
            c.account_id = c.account_id.replace('-', "");
            if c.bundle_upload_command.is_empty() {
                c.bundle_upload_command = if c.run.iam_instance_profile.is_some() {
                    instance::DEFAULT_BUNDLE_UPLOAD_COMMAND_WITH_PROFILE.into()
                } else {
                    instance::DEFAULT_BUNDLE_UPLOAD_COMMAND.into()
                };
            }
        }
        BuilderConfig::Chroot(c) => {
            normalize_ami(&mut c.ami, region.as_deref());
            if c.chroot_mounts.is_empty() {
                c.chroot_mounts = chroot::default_chroot_mounts();
            }
            if !given(map, "copy_files") && !c.from_scratch {
                c.copy_files = chroot::DEFAULT_COPY_FILES
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            }
        }
    }
    if config.access().max_retries == 0 {
        match config {
            BuilderConfig::Ebs(c) => c.access.max_retries = 10,
            BuilderConfig::Chroot(c) => c.access.max_retries = 10,
            BuilderConfig::Instance(c) => c.access.max_retries = 10,
            BuilderConfig::EbsSurrogate(c) => c.access.max_retries = 10,
            BuilderConfig::EbsVolume(c) => c.access.max_retries = 10,
        }
    }
}

fn normalize_ami(ami: &mut AmiConfig, build_region: Option<&str>) {
    if ami.enhanced_networking == Some(true) {
        ami.sriov_support = true;
        ami.ena_support.get_or_insert(true);
    }
    let mut seen = BTreeSet::new();
    ami.ami_regions
        .retain(|r| Some(r.as_str()) != build_region && seen.insert(r.clone()));
}

fn normalize_run(run: &mut RunConfig, comm: &mut CommunicatorConfig) {
    if let Some(id) = run.security_group_id.take() {
        if !run.security_group_ids.contains(&id) {
            run.security_group_ids.insert(0, id);
        }
    }
    if comm.ssh_private_ip == Some(true) && comm.ssh_interface.is_none() {
        comm.ssh_interface = Some("private_ip".into());
    }
    if run.temporary_security_group_source_cidrs.is_empty()
        && !run.temporary_security_group_source_public_ip
    {
        let any = if comm.ssh_interface.as_deref() == Some("ipv6") {
            "::/0"
        } else {
            "0.0.0.0/0"
        };
        run.temporary_security_group_source_cidrs = vec![any.into()];
    }
    if run.enable_t2_unlimited {
        run.enable_unlimited_credits = true;
    }
    if comm.ssh_port == 0 {
        comm.ssh_port = 22;
    }
    if comm.ssh_handshake_attempts == 0 {
        comm.ssh_handshake_attempts = 10;
    }
}

// ---------------------------------------------------------------- rules

struct Check<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    fn err(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem::key(key, msg));
    }
    fn one_of(&mut self, key: &str, value: Option<&str>, allowed: &[&str]) {
        if let Some(v) = value.filter(|v| !templated(v)) {
            if !allowed.contains(&v) {
                self.err(
                    key,
                    format!("invalid value {v:?}: must be one of {}", allowed.join(", ")),
                );
            }
        }
    }
    fn conflict(&mut self, a: &str, a_set: bool, b: &str, b_set: bool, what: &str) {
        if a_set && b_set {
            self.err(a, format!("conflicts with {b}: {what}"));
        }
    }
}

pub(super) fn check(
    config: &BuilderConfig,
    map: &Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let mut c = Check { problems };
    let bt = config.builder_type();
    access(&mut c, config.access(), bt, env);
    let skip_regions = config.access().skip_region_validation;
    if let Some(ami) = config.ami() {
        ami_rules(&mut c, ami, skip_regions);
    }
    if let (Some(run), Some(comm)) = (config.run(), config.comm()) {
        run_rules(&mut c, run, comm, bt, map);
        comm_rules(&mut c, comm, run);
    }
    spot_vs_networking(&mut c, config);
    match config {
        BuilderConfig::Ebs(e) => {
            devices(
                &mut c,
                "ami_block_device_mappings",
                &e.ami_block_device_mappings,
                false,
            );
            devices(
                &mut c,
                "launch_block_device_mappings",
                &e.launch_block_device_mappings,
                false,
            );
            one_of_arch(
                &mut c,
                None,
                e.boot_mode.as_deref(),
                e.tpm_support.as_deref(),
            );
            if let Some(f) = &e.fast_launch {
                fast_launch(&mut c, f);
            }
        }
        BuilderConfig::EbsSurrogate(s) => surrogate(&mut c, s),
        BuilderConfig::EbsVolume(v) => ebsvolume(&mut c, v, map),
        BuilderConfig::Instance(i) => instance(&mut c, i),
        BuilderConfig::Chroot(ch) => chroot_rules(&mut c, ch, map),
    }
}

fn access(c: &mut Check, a: &AccessConfig, bt: BuilderType, env: &dyn Fn(&str) -> Option<String>) {
    match a.region.as_deref() {
        None => {
            let from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .any(|k| env(k).is_some_and(|v| !v.is_empty()));
            if bt != BuilderType::Chroot && !from_env {
                c.err("region", "required: set the AWS region to build in, e.g. \"us-east-1\" (or export AWS_REGION / AWS_DEFAULT_REGION)");
            }
        }
        Some(r) => {
            if !a.skip_region_validation && !templated(r) && !is_region(r) {
                c.err("region", bad_region(r));
            }
        }
    }
    let key_set = a.access_key.is_some();
    let secret_set = a.secret_key.is_some();
    if key_set != secret_set {
        let (has, lacks) = if key_set {
            ("access_key", "secret_key")
        } else {
            ("secret_key", "access_key")
        };
        c.err(has, format!("required together: {has} is set but {lacks} is not; give both, or neither to use the environment, profile or role"));
    }
    if let Some(ar) = &a.assume_role {
        if ar.role_arn.is_empty() {
            c.err("assume_role.role_arn", "required: assume_role needs role_arn, e.g. \"arn:aws:iam::123456789012:role/packer\"");
        } else if !templated(&ar.role_arn) && !is_role_arn(&ar.role_arn) {
            c.err(
                "assume_role.role_arn",
                format!(
                    "{:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
                    ar.role_arn
                ),
            );
        }
        if let Some(d) = ar.duration_seconds {
            if !(900..=43200).contains(&d) {
                c.err(
                    "assume_role.duration_seconds",
                    format!("out of range: {d}; must be from 900 to 43200 seconds"),
                );
            }
        }
    }
    if let Some(endpoint) = &a.custom_endpoint_ec2 {
        if endpoint.contains("://")
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            c.err(
                "custom_endpoint_ec2",
                format!("{endpoint:?} must be an http:// or https:// URL"),
            );
        }
    }
}

pub(super) fn is_region(r: &str) -> bool {
    const DIRECTIONS: [&str; 9] = [
        "north",
        "south",
        "east",
        "west",
        "central",
        "northeast",
        "northwest",
        "southeast",
        "southwest",
    ];
    const PARTITIONS: [&str; 5] = ["gov", "iso", "isob", "isoe", "isof"];
    let parts: Vec<&str> = r.split('-').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    let mid = &parts[1..parts.len().saturating_sub(1).max(1)];
    parts.len() >= 3
        && first.len() == 2
        && first.chars().all(|c| c.is_ascii_lowercase())
        && !last.is_empty()
        && last.len() <= 2
        && last.chars().all(|c| c.is_ascii_digit())
        && match mid {
            [d] => DIRECTIONS.contains(d),
            [p, d] => PARTITIONS.contains(p) && DIRECTIONS.contains(d),
            _ => false,
        }
}

fn bad_region(r: &str) -> String {
    format!("bad region {r:?}: not an AWS region name (like us-east-1, eu-west-3, ap-southeast-2, us-gov-west-1); set skip_region_validation: true to use it anyway")
}

fn is_role_arn(s: &str) -> bool {
    let p: Vec<&str> = s.splitn(6, ':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "iam"
        && is_account(p[4])
        && p[5].starts_with("role/")
        && p[5].len() > 5
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_digit())
}

/// Packer's KMS key pattern: key id, multi-region key, alias, or key/alias ARN.
pub(super) fn is_kms_key(s: &str) -> bool {
    let uuid = |k: &str| {
        let groups: Vec<&str> = k.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let mrk = |k: &str| {
        k.strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let alias = |k: &str| k.strip_prefix("alias/").is_some_and(|a| !a.is_empty());
    if let Some(rest) = s.strip_prefix("arn:") {
        let p: Vec<&str> = rest.splitn(5, ':').collect();
        return p.len() == 5
            && p[0].starts_with("aws")
            && p[1] == "kms"
            && !p[2].is_empty()
            && is_account(p[3])
            && (p[4].strip_prefix("key/").is_some_and(|k| uuid(k) || mrk(k)) || alias(p[4]));
    }
    uuid(s) || mrk(s) || alias(s)
}

fn ami_rules(c: &mut Check, a: &AmiConfig, skip_regions: bool) {
    let name = a.ami_name.as_str();
    if name.is_empty() {
        c.err("ami_name", "required: set ami_name, e.g. \"my-image {{timestamp}}\" (it must be unique in the region)");
    } else if !templated(name) {
        let len = name.chars().count();
        if !(3..=128).contains(&len) {
            c.err(
                "ami_name",
                format!("bad AMI name: {len} characters; AMI names are 3 to 128 characters long"),
            );
        }
        let bad: BTreeSet<char> = name
            .chars()
            .filter(|ch| !(ch.is_ascii_alphanumeric() || "()[] ./-'@_".contains(*ch)))
            .collect();
        if !bad.is_empty() {
            let shown: String = bad.into_iter().collect();
            c.err(
                "ami_name",
                format!("bad AMI name: characters {shown:?} are not allowed; use letters, digits, spaces and ( ) [ ] . / - ' @ _ — or wrap it in {{{{ clean_resource_name `...` }}}}"),
            );
        }
    }
    c.one_of(
        "ami_virtualization_type",
        a.ami_virtualization_type.as_deref(),
        &["hvm", "paravirtual"],
    );
    for g in a
        .ami_groups
        .iter()
        .filter(|g| !templated(g) && g.as_str() != "all")
    {
        c.err("ami_groups", format!("invalid value {g:?}: AWS only accepts \"all\" (public); share with accounts through ami_users"));
    }
    for (key, users) in [
        ("ami_users", &a.ami_users),
        ("snapshot_users", &a.snapshot_users),
    ] {
        for u in users.iter().filter(|u| !templated(u) && !is_account(u)) {
            c.err(
                key,
                format!("invalid value {u:?}: must be a 12-digit AWS account id"),
            );
        }
    }
    for g in a
        .snapshot_groups
        .iter()
        .filter(|g| !templated(g) && g.as_str() != "all")
    {
        c.err(
            "snapshot_groups",
            format!("invalid value {g:?}: AWS only accepts \"all\""),
        );
    }
    c.one_of("imds_support", a.imds_support.as_deref(), &["v2.0"]);
    if let Some(at) = a.deprecate_at.as_deref().filter(|s| !templated(s)) {
        if chrono::DateTime::parse_from_rfc3339(at).is_err() {
            c.err(
                "deprecate_at",
                format!("{at:?} is not an RFC 3339 time; write it like \"2030-01-31T00:00:00Z\""),
            );
        }
    }
    if let Some(m) = a.snapshot_copy_duration_minutes {
        if m < 15 || m % 15 != 0 {
            c.err(
                "snapshot_copy_duration_minutes",
                format!("out of range: {m}; must be a multiple of 15, at least 15"),
            );
        }
    }
    if !skip_regions {
        for r in a
            .ami_regions
            .iter()
            .filter(|r| !templated(r) && !is_region(r))
        {
            c.err("ami_regions", bad_region(r));
        }
        for r in a
            .region_kms_key_ids
            .keys()
            .filter(|r| !templated(r) && !is_region(r))
        {
            c.err("region_kms_key_ids", bad_region(r));
        }
    }
    let encrypt = a.encrypt_boot == Some(true);
    if let Some(k) = a.kms_key_id.as_deref() {
        if !encrypt {
            c.err("kms_key_id", "requires encrypt_boot: true (a KMS key only applies when the boot volume is encrypted)");
        }
        if !templated(k) && !is_kms_key(k) {
            c.err(
                "kms_key_id",
                format!("{k:?} is not a KMS key id, alias/<name>, mrk-<id> or key ARN"),
            );
        }
    }
    if !a.region_kms_key_ids.is_empty() {
        if !encrypt {
            c.err("region_kms_key_ids", "requires encrypt_boot: true");
        }
        for r in a
            .ami_regions
            .iter()
            .filter(|r| !a.region_kms_key_ids.contains_key(*r))
        {
            c.err("region_kms_key_ids", format!("region {r} is in ami_regions but has no key in region_kms_key_ids; add it (\"\" for the region's default key)"));
        }
        for (r, k) in &a.region_kms_key_ids {
            if !k.is_empty() && !templated(k) && !is_kms_key(k) {
                c.err(
                    format!("region_kms_key_ids.{r}"),
                    format!("{k:?} is not a KMS key id, alias/<name>, mrk-<id> or key ARN"),
                );
            }
        }
    }
    let shares = !a.ami_users.is_empty() || !a.ami_org_arns.is_empty() || !a.ami_ou_arns.is_empty();
    let default_key =
        encrypt && a.kms_key_id.is_none() && a.region_kms_key_ids.values().all(|k| k.is_empty());
    if shares && default_key {
        c.err("encrypt_boot", "cannot share an AMI encrypted with the default KMS key (ami_users / ami_org_arns / ami_ou_arns): set kms_key_id to a customer managed key");
    }
    if !a.snapshot_users.is_empty() && default_key {
        c.err("snapshot_users", "cannot share snapshots encrypted with the default KMS key: set kms_key_id to a customer managed key");
    }
    if let Some(dp) = &a.deregistration_protection {
        if dp.with_cooldown && !dp.enabled {
            c.err(
                "deregistration_protection.with_cooldown",
                "requires deregistration_protection.enabled: true",
            );
        } else if dp.enabled {
            // Refused rather than ignored: the AMI would come out unprotected.
            c.err(
                "deregistration_protection.enabled",
                "not supported by amiflow yet: remove it and protect the AMI after the build \
                 (aws ec2 enable-image-deregistration-protection --image-id AMI_ID)",
            );
        }
    }
}

fn run_rules(
    c: &mut Check,
    r: &RunConfig,
    comm: &CommunicatorConfig,
    bt: BuilderType,
    map: &Map<String, Value>,
) {
    if r.temporary_security_group_source_public_ip {
        c.err(
            "temporary_security_group_source_public_ip",
            "not supported: the steps run in Lambda, whose public address is not the one that \
             connects to the instance; set temporary_security_group_source_cidrs to the \
             addresses allowed to connect, or use \"communicator\": \"ssm\" (no inbound rule)",
        );
    }
    if r.source_ami.is_none() && r.source_ami_filter.is_none() {
        c.err(
            "source_ami",
            "required: set source_ami (an AMI id) or source_ami_filter",
        );
    }
    if let Some(id) = r.source_ami.as_deref().filter(|s| !templated(s)) {
        if !id.starts_with("ami-") {
            c.err("source_ami", format!("{id:?} is not an AMI id (ami-…); to find an image by name use source_ami_filter"));
        }
    }
    if let Some(f) = &r.source_ami_filter {
        if f.owners.is_empty() {
            c.err("source_ami_filter.owners", "required: for security, name who owns the source image (account ids, \"self\" or an alias such as \"amazon\")");
        }
    }
    match (&r.instance_type, r.spot_instance_types.is_empty()) {
        (None, true) => c.err(
            "instance_type",
            "required: set instance_type (e.g. \"t3.micro\") or spot_instance_types",
        ),
        (Some(_), false) => c.err(
            "instance_type",
            "conflicts with spot_instance_types: give one of them",
        ),
        _ => {}
    }
    c.conflict(
        "security_group_id",
        given(map, "security_group_id"),
        "security_group_ids",
        given(map, "security_group_ids"),
        "put every id in security_group_ids",
    );
    c.conflict(
        "user_data",
        r.user_data.is_some(),
        "user_data_file",
        r.user_data_file.is_some(),
        "give the user data inline or as a file, not both",
    );
    c.conflict(
        "iam_instance_profile",
        r.iam_instance_profile.is_some(),
        "temporary_iam_instance_profile_policy_document",
        r.temporary_iam_instance_profile_policy_document.is_some(),
        "use an existing profile or have a temporary one created, not both",
    );
    c.conflict(
        "temporary_security_group_source_cidrs",
        given(map, "temporary_security_group_source_cidrs"),
        "temporary_security_group_source_public_ip",
        r.temporary_security_group_source_public_ip,
        "give the CIDRs or let the public IP be detected, not both",
    );
    for cidr in r
        .temporary_security_group_source_cidrs
        .iter()
        .filter(|s| !templated(s))
    {
        if !is_cidr(cidr) {
            c.err(
                "temporary_security_group_source_cidrs",
                format!("{cidr:?} is not a CIDR block (like 10.0.0.0/8 or ::/0)"),
            );
        }
    }
    c.one_of(
        "shutdown_behavior",
        Some(&r.shutdown_behavior),
        &["stop", "terminate"],
    );

    let spot = r.is_spot();
    if let Some(p) = r
        .spot_price
        .as_deref()
        .filter(|p| !templated(p) && *p != "auto")
    {
        if p.parse::<f64>().map_or(true, |v| v < 0.0) {
            c.err(
                "spot_price",
                format!(
                    "invalid value {p:?}: a maximum hourly price such as \"0.05\", or \"auto\""
                ),
            );
        }
    }
    if !spot {
        for (key, set) in [
            ("spot_instance_types", !r.spot_instance_types.is_empty()),
            ("spot_tags", !r.spot_tags.is_empty()),
            ("fleet_tags", !r.fleet_tags.is_empty()),
            (
                "spot_allocation_strategy",
                r.spot_allocation_strategy.is_some(),
            ),
        ] {
            if set {
                c.err(
                    key,
                    "only applies to spot instances: set spot_price (e.g. \"auto\") or remove it",
                );
            }
        }
    }
    c.one_of(
        "spot_allocation_strategy",
        r.spot_allocation_strategy.as_deref(),
        &[
            "lowest-price",
            "diversified",
            "capacity-optimized",
            "capacity-optimized-prioritized",
            "price-capacity-optimized",
        ],
    );
    if let Some(m) = r.block_duration_minutes {
        if m < 0 || m % 60 != 0 {
            c.err(
                "block_duration_minutes",
                format!("out of range: {m}; must be a multiple of 60"),
            );
        }
    }
    if spot && r.enable_nitro_enclave {
        c.err(
            "enable_nitro_enclave",
            "conflicts with spot_price: Nitro Enclaves cannot run on spot instances",
        );
    }
    let itype = r.instance_type.as_deref().filter(|t| !templated(t));
    if r.enable_nitro_enclave && itype.is_some_and(|t| t.starts_with('t')) {
        c.err(
            "enable_nitro_enclave",
            "burstable (t*) instance types do not support Nitro Enclaves",
        );
    }
    if r.enable_unlimited_credits {
        if let Some(t) = itype {
            if !["t2.", "t3.", "t3a.", "t4g."]
                .iter()
                .any(|p| t.starts_with(p))
            {
                c.err(
                    "enable_unlimited_credits",
                    format!("only applies to burstable instance types (t2, t3, t3a, t4g), not {t}"),
                );
            }
            if spot && t.starts_with("t2.") {
                c.err(
                    "enable_unlimited_credits",
                    "t2 spot instances cannot use unlimited credits",
                );
            }
        }
    }
    c.one_of(
        "capacity_reservation_preference",
        r.capacity_reservation_preference.as_deref(),
        &["none", "open"],
    );
    let cap = [
        (
            "capacity_reservation_preference",
            r.capacity_reservation_preference.is_some(),
        ),
        (
            "capacity_reservation_id",
            r.capacity_reservation_id.is_some(),
        ),
        (
            "capacity_reservation_group_arn",
            r.capacity_reservation_group_arn.is_some(),
        ),
    ];
    for i in 0..cap.len() {
        for j in i + 1..cap.len() {
            c.conflict(
                cap[i].0,
                cap[i].1,
                cap[j].0,
                cap[j].1,
                "give only one way to choose a capacity reservation",
            );
        }
    }
    c.one_of(
        "tenancy",
        r.tenancy.as_deref(),
        &["default", "dedicated", "host"],
    );
    if let Some(p) = &r.placement {
        c.one_of(
            "placement.tenancy",
            p.tenancy.as_deref(),
            &["default", "dedicated", "host"],
        );
        c.conflict(
            "tenancy",
            r.tenancy.is_some(),
            "placement.tenancy",
            p.tenancy.is_some(),
            "tenancy is deprecated; keep placement.tenancy",
        );
        let host = p.host_id.is_some() || p.host_resource_group_arn.is_some();
        let tenancy = p.tenancy.as_deref().or(r.tenancy.as_deref());
        if host && tenancy.is_some_and(|t| t != "host") {
            c.err("placement.tenancy", "must be \"host\" when placement.host_id or placement.host_resource_group_arn is set");
        }
    }
    let m = &r.metadata_options;
    c.one_of(
        "metadata_options.http_endpoint",
        Some(&m.http_endpoint),
        &["enabled", "disabled"],
    );
    c.one_of(
        "metadata_options.http_tokens",
        Some(&m.http_tokens),
        &["optional", "required"],
    );
    c.one_of(
        "metadata_options.instance_metadata_tags",
        Some(&m.instance_metadata_tags),
        &["enabled", "disabled"],
    );
    if !(1..=64).contains(&m.http_put_response_hop_limit) {
        c.err(
            "metadata_options.http_put_response_hop_limit",
            format!(
                "out of range: {}; must be from 1 to 64",
                m.http_put_response_hop_limit
            ),
        );
    }
    if let Some(doc) = &r.temporary_iam_instance_profile_policy_document {
        if doc.statement.is_empty() {
            c.err(
                "temporary_iam_instance_profile_policy_document.Statement",
                "required: at least one statement",
            );
        }
        for s in &doc.statement {
            c.one_of(
                "temporary_iam_instance_profile_policy_document.Statement.Effect",
                Some(&s.effect),
                &["Allow", "Deny"],
            );
            if s.action.is_empty() {
                c.err(
                    "temporary_iam_instance_profile_policy_document.Statement.Action",
                    "required: list the actions the statement allows or denies",
                );
            }
        }
    }
    let _ = (comm, bt);
}

/// Packer (ebs, ebssurrogate, ebsvolume, instance): spot instances cannot be modified, and
/// turning on ENA / SR-IOV needs ModifyInstanceAttribute.
fn spot_vs_networking(c: &mut Check, config: &BuilderConfig) {
    let (Some(run), ena, sriov) = (match config {
        BuilderConfig::EbsVolume(v) => (Some(&v.run), v.ena_support == Some(true), v.sriov_support),
        other => (
            other.run(),
            other.ami().is_some_and(|a| a.ena_support == Some(true)),
            other.ami().is_some_and(|a| a.sriov_support),
        ),
    }) else {
        return;
    };
    if run.is_spot() {
        for (key, set) in [("ena_support", ena), ("sriov_support", sriov)] {
            if set {
                c.err(key, format!("conflicts with spot_price: spot instances cannot be modified to enable {key}; use a source AMI that already has it, or drop spot_price"));
            }
        }
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn comm_rules(c: &mut Check, m: &CommunicatorConfig, run: &RunConfig) {
    match m.communicator.as_str() {
        "ssh" | "none" | "ssm" => {}
        "winrm" => c.err("communicator", "not supported: WinRM is not supported by amiflow; use \"ssm\" (no inbound port) or \"ssh\""),
        other => c.err("communicator", format!("invalid value {other:?}: must be one of ssh, ssm, none")),
    }
    if m.is_ssh() {
        if m.ssh_username.is_none() {
            c.err("ssh_username", "required with communicator ssh: the user to log in as (e.g. \"ec2-user\", \"ubuntu\"); or use communicator \"ssm\"");
        }
        if m.ssh_keypair_name.is_some() && m.ssh_private_key_file.is_none() && !m.ssh_agent_auth {
            c.err("ssh_keypair_name", "requires ssh_private_key_file (or ssh_agent_auth: true): amiflow cannot log in with a key pair whose private key it does not have");
        }
        c.conflict(
            "ssh_password",
            m.ssh_password.is_some(),
            "ssh_private_key_file",
            m.ssh_private_key_file.is_some(),
            "choose password or key authentication",
        );
        if m.ssh_bastion_host.is_some()
            && !m.ssh_bastion_agent_auth
            && m.ssh_bastion_password.is_none()
            && m.ssh_bastion_private_key_file.is_none()
        {
            c.err("ssh_bastion_host", "requires ssh_bastion_password, ssh_bastion_private_key_file or ssh_bastion_agent_auth: true");
        }
    }
    if m.is_ssm() {
        for (key, set) in [
            ("ssh_password", m.ssh_password.is_some()),
            ("ssh_private_key_file", m.ssh_private_key_file.is_some()),
            ("ssh_keypair_name", m.ssh_keypair_name.is_some()),
        ] {
            if set {
                c.err(key, "conflicts with communicator ssm: SSM needs no SSH credentials; remove it or use communicator \"ssh\"");
            }
        }
        if m.ssm_output_s3_key_prefix.is_some() && m.ssm_output_s3_bucket.is_none() {
            c.err("ssm_output_s3_key_prefix", "requires ssm_output_s3_bucket");
        }
        let exec = m.ssm_execution_timeout.as_std().as_secs();
        if !(30..=172_800).contains(&exec) {
            c.err(
                "ssm_execution_timeout",
                format!(
                    "out of range: {}; SSM runs a command for 30s to 48h",
                    m.ssm_execution_timeout
                ),
            );
        }
    }
    if m.ssh_port == 0 {
        c.err("ssh_port", "out of range: must be from 1 to 65535");
    }
    c.one_of(
        "temporary_key_pair_type",
        Some(&m.temporary_key_pair_type),
        &["rsa", "ed25519"],
    );
    c.one_of(
        "ssh_file_transfer_method",
        m.ssh_file_transfer_method.as_deref(),
        &["scp", "sftp"],
    );
    c.one_of(
        "ssh_interface",
        m.ssh_interface.as_deref(),
        &[
            "public_ip",
            "private_ip",
            "public_dns",
            "private_dns",
            "ipv6",
            "session_manager",
        ],
    );
    if m.ssh_private_ip == Some(true)
        && m.ssh_interface
            .as_deref()
            .is_some_and(|i| i != "private_ip")
    {
        c.err("ssh_private_ip", "conflicts with ssh_interface: ssh_private_ip is the old spelling of ssh_interface \"private_ip\"; keep ssh_interface");
    }
    if m.ssh_interface.as_deref() == Some("session_manager") {
        if !m.is_ssh() {
            c.err("ssh_interface", "session_manager requires communicator ssh");
        }
        if run.iam_instance_profile.is_none()
            && run.temporary_iam_instance_profile_policy_document.is_none()
        {
            c.err("ssh_interface", "session_manager requires iam_instance_profile or temporary_iam_instance_profile_policy_document (the instance must reach SSM)");
        }
    }
}

/// Block device rules (reference §4.4).
fn devices(c: &mut Check, key: &str, list: &[BlockDevice], omit_allowed: bool) {
    let mut names = BTreeSet::new();
    for (i, d) in list.iter().enumerate() {
        device(c, &format!("{key}[{i}]"), d, omit_allowed);
        if !d.device_name.is_empty() && !names.insert(d.device_name.as_str()) {
            c.err(
                format!("{key}[{i}].device_name"),
                format!("{} is mapped twice in {key}", d.device_name),
            );
        }
    }
}

fn device(c: &mut Check, at: &str, d: &BlockDevice, omit_allowed: bool) {
    if d.device_name.is_empty() {
        c.err(
            format!("{at}.device_name"),
            "required: every block device mapping names its device, e.g. \"/dev/sdb\"",
        );
    }
    if d.omit_from_artifact && !omit_allowed {
        c.err(
            format!("{at}.omit_from_artifact"),
            "only applies to amazon-ebssurrogate launch_block_device_mappings",
        );
    }
    let vt = d.volume_type.as_deref().filter(|t| !templated(t));
    c.one_of(
        &format!("{at}.volume_type"),
        vt,
        &["standard", "io1", "io2", "gp2", "gp3", "sc1", "st1"],
    );
    if let Some(size) = d.volume_size {
        if !(1..=65536).contains(&size) {
            c.err(
                format!("{at}.volume_size"),
                format!("out of range: {size} GiB; must be from 1 to 65536"),
            );
        }
    }
    if let Some(iops) = d.iops {
        match vt {
            Some("io1") | Some("io2") => {
                if !(100..=64000).contains(&iops) {
                    c.err(
                        format!("{at}.iops"),
                        format!(
                            "out of range: {iops}; {} takes 100 to 64000 IOPS",
                            vt.unwrap()
                        ),
                    );
                }
                let ratio = if vt == Some("io1") { 50 } else { 500 };
                if let Some(size) = d.volume_size.filter(|s| *s > 0) {
                    if iops > size * ratio {
                        c.err(format!("{at}.iops"), format!("out of range: {iops} IOPS on {size} GiB exceeds {ratio} IOPS per GiB for {}", vt.unwrap()));
                    }
                }
            }
            Some("gp3") if !(3000..=16000).contains(&iops) => {
                c.err(
                    format!("{at}.iops"),
                    format!("out of range: {iops}; gp3 takes 3000 to 16000 IOPS"),
                );
            }
            Some("gp3") => {}
            Some(other) => c.err(
                format!("{at}.iops"),
                format!("iops only applies to io1, io2 and gp3 volumes, not {other}"),
            ),
            None => {}
        }
    } else if matches!(vt, Some("io1") | Some("io2")) && d.snapshot_id.is_none() {
        c.err(
            format!("{at}.iops"),
            format!("required: {} volumes need iops", vt.unwrap()),
        );
    }
    if let Some(t) = d.throughput {
        if vt != Some("gp3") {
            c.err(
                format!("{at}.throughput"),
                "throughput only applies to gp3 volumes (set volume_type: \"gp3\")",
            );
        } else if !(125..=1000).contains(&t) {
            c.err(
                format!("{at}.throughput"),
                format!("out of range: {t}; gp3 takes 125 to 1000 MiB/s"),
            );
        }
    }
    if let Some(k) = d.kms_key_id.as_deref() {
        if d.encrypted != Some(true) {
            c.err(
                format!("{at}.kms_key_id"),
                "requires encrypted: true on the same device",
            );
        }
        if !templated(k) && !is_kms_key(k) {
            c.err(
                format!("{at}.kms_key_id"),
                format!("{k:?} is not a KMS key id, alias/<name>, mrk-<id> or key ARN"),
            );
        }
    }
    if let Some(v) = d.virtual_name.as_deref().filter(|v| !templated(v)) {
        if !v.starts_with("ephemeral") {
            c.err(
                format!("{at}.virtual_name"),
                format!("{v:?}: only instance store names ephemeral0..ephemeral23 are honoured"),
            );
        }
    }
}

fn one_of_arch(c: &mut Check, arch: Option<&str>, boot_mode: Option<&str>, tpm: Option<&str>) {
    c.one_of(
        "ami_architecture",
        arch,
        &["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"],
    );
    c.one_of(
        "boot_mode",
        boot_mode,
        &["legacy-bios", "uefi", "uefi-preferred"],
    );
    c.one_of("tpm_support", tpm, &["v2.0"]);
}

fn fast_launch(c: &mut Check, f: &FastLaunch) {
    let enabled = match f.enable_fast_launch {
        Some(on) => on,
        None => *f != FastLaunch::default(),
    };
    if enabled {
        c.err(
            "fast_launch",
            "not supported by amiflow yet: remove it and enable Windows fast launch after the \
             build (aws ec2 enable-fast-launch --image-id AMI_ID)",
        );
    }
    if let Some(n) = f.max_parallel_launches.filter(|n| *n < 6) {
        c.err(
            "fast_launch.max_parallel_launches",
            format!("out of range: {n}; at least 6"),
        );
    }
    if let Some(n) = f.target_resource_count.filter(|n| *n < 1) {
        c.err(
            "fast_launch.target_resource_count",
            format!("out of range: {n}; at least 1"),
        );
    }
    c.conflict(
        "fast_launch.template_id",
        f.template_id.is_some(),
        "fast_launch.template_name",
        f.template_name.is_some(),
        "name the launch template one way",
    );
    for (i, t) in f.region_launch_templates.iter().enumerate() {
        let at = format!("fast_launch.region_launch_templates[{i}]");
        if t.region.is_empty() {
            c.err(format!("{at}.region"), "required");
        }
        c.conflict(
            &format!("{at}.template_id"),
            t.template_id.is_some(),
            "template_name",
            t.template_name.is_some(),
            "name the launch template one way",
        );
    }
}

fn surrogate(c: &mut Check, s: &EbsSurrogateConfig) {
    devices(
        c,
        "ami_block_device_mappings",
        &s.ami_block_device_mappings,
        false,
    );
    devices(
        c,
        "launch_block_device_mappings",
        &s.launch_block_device_mappings,
        true,
    );
    one_of_arch(
        c,
        Some(&s.ami_architecture),
        s.boot_mode.as_deref(),
        s.tpm_support.as_deref(),
    );
    if s.ami.ami_virtualization_type.is_none() {
        c.err(
            "ami_virtualization_type",
            "required for amazon-ebssurrogate: \"hvm\" or \"paravirtual\"",
        );
    }
    if s.launch_block_device_mappings.is_empty() {
        c.err(
            "launch_block_device_mappings",
            "required for amazon-ebssurrogate: map the volume that becomes the AMI's root",
        );
    }
    match &s.ami_root_device {
        None => c.err("ami_root_device", "required for amazon-ebssurrogate: { \"source_device_name\": <a launch mapping>, \"device_name\": <root device in the AMI> }"),
        Some(root) => {
            if root.source_device_name.is_empty() {
                c.err("ami_root_device.source_device_name", "required: the launch_block_device_mappings device to snapshot");
            } else if !s.launch_block_device_mappings.is_empty() && !s.launch_block_device_mappings.iter().any(|d| d.device_name == root.source_device_name) {
                c.err("ami_root_device.source_device_name", format!("{} is not in launch_block_device_mappings; map it there", root.source_device_name));
            }
            if root.device_name.is_empty() {
                c.err("ami_root_device.device_name", "required: the root device name in the AMI, e.g. \"/dev/xvda\"");
            }
        }
    }
    if s.use_create_image && s.ami.ami_virtualization_type.as_deref() == Some("paravirtual") {
        c.err(
            "use_create_image",
            "conflicts with ami_virtualization_type \"paravirtual\"",
        );
    }
}

fn ebsvolume(c: &mut Check, v: &EbsVolumeConfig, map: &Map<String, Value>) {
    let known: BTreeSet<String> = match serde_json::to_value(EbsVolumeMapping::default()) {
        Ok(Value::Object(o)) => o.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    if let Some(Value::Array(raw)) = map.get("ebs_volumes") {
        for (i, entry) in raw.iter().enumerate() {
            for k in entry.as_object().into_iter().flat_map(|o| o.keys()) {
                if !known.contains(k) {
                    let hint = super::validate::closest(k, known.iter().map(String::as_str))
                        .map_or("remove it".to_string(), |s| format!("did you mean {s}?"));
                    c.err(
                        format!("ebs_volumes[{i}].{k}"),
                        format!("unknown key in ebs_volumes; {hint}"),
                    );
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, vol) in v.ebs_volumes.iter().enumerate() {
        let at = format!("ebs_volumes[{i}]");
        device(c, &at, &vol.device, false);
        if !vol.device.device_name.is_empty() && !names.insert(vol.device.device_name.as_str()) {
            c.err(
                format!("{at}.device_name"),
                format!("{} is mapped twice in ebs_volumes", vol.device.device_name),
            );
        }
        if !vol.snapshot_volume {
            for (key, set) in [
                ("snapshot_description", vol.snapshot_description.is_some()),
                ("snapshot_tags", !vol.snapshot_tags.is_empty()),
                ("snapshot_users", !vol.snapshot_users.is_empty()),
                ("snapshot_groups", !vol.snapshot_groups.is_empty()),
            ] {
                if set {
                    c.err(
                        format!("{at}.{key}"),
                        "requires snapshot_volume: true on the same volume",
                    );
                }
            }
        }
        for u in vol
            .snapshot_users
            .iter()
            .filter(|u| !templated(u) && !is_account(u))
        {
            c.err(
                format!("{at}.snapshot_users"),
                format!("invalid value {u:?}: must be a 12-digit AWS account id"),
            );
        }
    }
}

fn instance(c: &mut Check, i: &InstanceConfig) {
    devices(
        c,
        "ami_block_device_mappings",
        &i.ami_block_device_mappings,
        false,
    );
    devices(
        c,
        "launch_block_device_mappings",
        &i.launch_block_device_mappings,
        false,
    );
    c.one_of("tpm_support", i.tpm_support.as_deref(), &["v2.0"]);
    for (key, value, what) in [
        (
            "account_id",
            &i.account_id,
            "your 12-digit AWS account id (dashes allowed), used by ec2-bundle-vol",
        ),
        (
            "s3_bucket",
            &i.s3_bucket,
            "the S3 bucket the bundle is uploaded to",
        ),
        (
            "x509_cert_path",
            &i.x509_cert_path,
            "the local path of the X.509 certificate registered with your account",
        ),
        (
            "x509_key_path",
            &i.x509_key_path,
            "the local path of that certificate's private key",
        ),
    ] {
        if value.is_empty() {
            c.err(key, format!("required for amazon-instance: {what}"));
        }
    }
    if !i.account_id.is_empty() && !templated(&i.account_id) && !is_account(&i.account_id) {
        c.err(
            "account_id",
            format!("{:?} is not a 12-digit AWS account id", i.account_id),
        );
    }
    let b = &i.s3_bucket;
    if !b.is_empty() && !templated(b) {
        let ok_chars = b
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '.' || ch == '-');
        if !(3..=63).contains(&b.len())
            || !ok_chars
            || b.starts_with(['.', '-'])
            || b.ends_with(['.', '-'])
        {
            c.err("s3_bucket", format!("{b:?} is not a valid S3 bucket name (3–63 lowercase letters, digits, dots and hyphens)"));
        }
    }
}

fn chroot_rules(c: &mut Check, ch: &ChrootConfig, _map: &Map<String, Value>) {
    devices(
        c,
        "ami_block_device_mappings",
        &ch.ami_block_device_mappings,
        false,
    );
    one_of_arch(
        c,
        Some(&ch.ami_architecture),
        ch.boot_mode.as_deref(),
        ch.tpm_support.as_deref(),
    );
    if ch.from_scratch {
        for (key, missing) in [
            ("root_volume_size", ch.root_volume_size.is_none()),
            ("pre_mount_commands", ch.pre_mount_commands.is_empty()),
            (
                "ami_virtualization_type",
                ch.ami.ami_virtualization_type.is_none(),
            ),
            ("root_device_name", ch.root_device_name.is_none()),
            (
                "ami_block_device_mappings",
                ch.ami_block_device_mappings.is_empty(),
            ),
        ] {
            if missing {
                c.err(key, "required with from_scratch: a volume built from nothing needs root_volume_size, pre_mount_commands (to partition and format it), ami_virtualization_type, root_device_name and ami_block_device_mappings");
            }
        }
    } else {
        if ch.source_ami.is_none() && ch.source_ami_filter.is_none() {
            c.err("source_ami", "required for amazon-chroot: set source_ami or source_ami_filter (or from_scratch: true)");
        }
        if ch.root_device_name.is_some() && ch.ami_block_device_mappings.is_empty() {
            c.err(
                "root_device_name",
                "requires ami_block_device_mappings (which must include the root device)",
            );
        }
        if !ch.ami_block_device_mappings.is_empty() && ch.root_device_name.is_none() {
            c.err("ami_block_device_mappings", "requires root_device_name: amazon-chroot replaces the source's mappings, so name the root device");
        }
        if !ch.ami_block_device_mappings.is_empty() && ch.root_volume_size.is_none() {
            c.err(
                "root_volume_size",
                "required with ami_block_device_mappings",
            );
        }
    }
    if let Some(id) = ch.source_ami.as_deref().filter(|s| !templated(s)) {
        if !id.starts_with("ami-") {
            c.err("source_ami", format!("{id:?} is not an AMI id (ami-…); to find an image by name use source_ami_filter"));
        }
    }
    if let Some(f) = &ch.source_ami_filter {
        if f.owners.is_empty() {
            c.err("source_ami_filter.owners", "required: for security, name who owns the source image (account ids, \"self\" or an alias such as \"amazon\")");
        }
    }
    for (i, m) in ch.chroot_mounts.iter().enumerate() {
        if m.len() != 3 {
            c.err(
                format!("chroot_mounts[{i}]"),
                format!(
                    "each mount is [fstype, source, destination]: 3 strings, found {}",
                    m.len()
                ),
            );
        }
    }
    if !ch.mount_partition.chars().all(|d| d.is_ascii_digit()) {
        c.err(
            "mount_partition",
            format!(
                "invalid value {:?}: a partition number (\"1\"), or \"0\" for the whole device",
                ch.mount_partition
            ),
        );
    }
    if !ch.command_wrapper.contains(".Command") {
        c.err(
            "command_wrapper",
            "must contain {{.Command}}, where each command goes",
        );
    }
    if let Some(size) = ch.root_volume_size {
        if !(1..=65536).contains(&size) {
            c.err(
                "root_volume_size",
                format!("out of range: {size} GiB; must be from 1 to 65536"),
            );
        }
    }
    c.one_of(
        "root_volume_type",
        ch.root_volume_type.as_deref(),
        &["standard", "io1", "io2", "gp2", "gp3", "sc1", "st1"],
    );
    if ch.root_volume_kms_key_id.is_some() && ch.root_volume_encrypt_boot != Some(true) {
        c.err(
            "root_volume_kms_key_id",
            "requires root_volume_encrypt_boot: true",
        );
    }
    if ch.nvme_device_path.is_some() && ch.device_path.is_none() {
        c.err("nvme_device_path", "requires device_path: the NVMe name replaces the device in the mount command, so fix the attach device too");
    }
    c.conflict(
        "chroot_host_instance_id",
        ch.chroot_host_instance_id.is_some(),
        "chroot_host_filter",
        ch.chroot_host_filter.is_some(),
        "name the build host one way",
    );
    if let Some(id) = ch
        .chroot_host_instance_id
        .as_deref()
        .filter(|s| !templated(s))
    {
        if !id.starts_with("i-") {
            c.err(
                "chroot_host_instance_id",
                format!("{id:?} is not an instance id (i-…)"),
            );
        }
    }
}
