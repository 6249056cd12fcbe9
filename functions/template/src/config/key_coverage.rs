//! Every key a builder takes is applied or refused: none is accepted and silently dropped
//! (README, Limits). Each key of [`known_keys`] is either in [`applied`] — and then the steps
//! (functions/amiflow, the CLI, the Lambda) read it, or validation folds it into a key they
//! read, or acts on it — or in [`refused`], with a value a template could give, which
//! validation must then refuse naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tests::with;
use super::*;

/// How an applied key reaches the build.
enum How {
    /// The steps read it as `.field` (the field, or the accessor that answers it).
    Steps(&'static str),
    /// Validation folds it into this key, which the steps read.
    Folded(&'static str),
    /// Validation itself acts on it (it changes which values are accepted).
    Validation,
    /// What it asks for is what the steps always do; the steps' sources never contain
    /// `absent` (the call that would do otherwise).
    Always { absent: &'static str },
}

use How::*;

fn applied() -> BTreeMap<&'static str, How> {
    BTreeMap::from([
        ("access_key", Steps("access_key")),
        ("secret_key", Steps("secret_key")),
        ("token", Steps("token")),
        ("region", Steps("region")),
        ("profile", Steps("profile")),
        ("shared_credentials_file", Steps("shared_credentials_file")),
        ("custom_endpoint_ec2", Steps("custom_endpoint_ec2")),
        ("max_retries", Steps("max_retries")),
        ("assume_role", Steps("assume_role")),
        ("aws_polling", Steps("aws_polling")),
        ("skip_region_validation", Validation),
        (
            "skip_credential_validation",
            Always {
                absent: "get_caller_identity",
            },
        ),
        ("ami_name", Steps("ami_name")),
        ("ami_description", Steps("ami_description")),
        ("ami_virtualization_type", Steps("ami_virtualization_type")),
        ("ami_users", Steps("ami_users")),
        ("ami_groups", Steps("ami_groups")),
        ("ami_org_arns", Steps("ami_org_arns")),
        ("ami_ou_arns", Steps("ami_ou_arns")),
        ("ami_product_codes", Steps("ami_product_codes")),
        ("ami_regions", Steps("target_regions")),
        ("tags", Steps("tags")),
        ("ena_support", Steps("ena_support")),
        ("sriov_support", Steps("sriov_support")),
        ("enhanced_networking", Folded("sriov_support")),
        ("force_deregister", Steps("force_deregister")),
        ("force_delete_snapshot", Steps("force_delete_snapshot")),
        ("encrypt_boot", Steps("encrypt_boot")),
        ("kms_key_id", Steps("kms_key_id")),
        ("region_kms_key_ids", Steps("region_kms_key_ids")),
        ("skip_save_build_region", Steps("skip_save_build_region")),
        ("imds_support", Steps("imds_support")),
        ("deprecate_at", Steps("deprecate_at")),
        ("snapshot_tags", Steps("snapshot_tags")),
        ("snapshot_users", Steps("snapshot_users")),
        ("snapshot_groups", Steps("snapshot_groups")),
        ("source_ami", Steps("source_ami")),
        ("source_ami_filter", Steps("source_ami_filter")),
        ("instance_type", Steps("instance_types")),
        ("spot_instance_types", Steps("instance_types")),
        ("availability_zone", Steps("availability_zone")),
        ("subnet_id", Steps("subnet_id")),
        ("subnet_filter", Steps("subnet_filter")),
        ("vpc_id", Steps("vpc_id")),
        ("vpc_filter", Steps("vpc_filter")),
        (
            "associate_public_ip_address",
            Steps("associate_public_ip_address"),
        ),
        ("security_group_ids", Steps("security_group_ids")),
        ("security_group_id", Folded("security_group_ids")),
        ("security_group_filter", Steps("security_group_filter")),
        (
            "temporary_security_group_source_cidrs",
            Steps("temporary_security_group_source_cidrs"),
        ),
        ("iam_instance_profile", Steps("iam_instance_profile")),
        ("skip_profile_validation", Steps("skip_profile_validation")),
        (
            "temporary_iam_instance_profile_policy_document",
            Steps("temporary_iam_instance_profile_policy_document"),
        ),
        ("user_data", Steps("user_data")),
        ("user_data_file", Steps("user_data_file")),
        ("run_tags", Steps("run_tags")),
        ("ebs_optimized", Steps("ebs_optimized")),
        ("shutdown_behavior", Steps("shutdown_behavior")),
        ("disable_stop_instance", Steps("disable_stop_instance")),
        ("spot_price", Steps("spot_price")),
        ("spot_tags", Steps("spot_tags")),
        ("metadata_options", Steps("metadata_options")),
        ("communicator", Steps("communicator")),
        ("ssh_host", Steps("ssh_host")),
        ("ssh_port", Steps("ssh_port")),
        ("ssh_username", Steps("ssh_username")),
        ("ssh_password", Steps("ssh_password")),
        ("ssh_keypair_name", Steps("ssh_keypair_name")),
        ("ssh_private_key_file", Steps("ssh_private_key_file")),
        ("temporary_key_pair_name", Steps("temporary_key_pair_name")),
        ("temporary_key_pair_type", Steps("temporary_key_pair_type")),
        ("ssh_timeout", Steps("ssh_timeout")),
        ("ssh_wait_timeout", Folded("ssh_timeout")),
        ("ssh_pty", Steps("ssh_pty")),
        (
            "ssh_clear_authorized_keys",
            Steps("ssh_clear_authorized_keys"),
        ),
        ("ssh_interface", Steps("ssh_interface")),
        ("ssh_private_ip", Folded("ssh_interface")),
        (
            "ssh_disable_agent_forwarding",
            Always {
                absent: "agent_forward",
            },
        ),
        ("ssh_bastion_host", Steps("ssh_bastion_host")),
        ("ssh_bastion_port", Steps("ssh_bastion_port")),
        ("ssh_bastion_username", Steps("ssh_bastion_username")),
        (
            "ssh_bastion_private_key_file",
            Steps("ssh_bastion_private_key_file"),
        ),
        ("ssm_timeout", Steps("ssm_timeout")),
        ("ssm_execution_timeout", Steps("ssm_execution_timeout")),
        ("ssm_output_s3_bucket", Steps("ssm_output_s3_bucket")),
        // The builders' own keys.
        (
            "ami_block_device_mappings",
            Steps("ami_block_device_mappings"),
        ),
        (
            "launch_block_device_mappings",
            Steps("launch_block_device_mappings"),
        ),
        ("run_volume_tags", Steps("run_volume_tags")),
        ("skip_create_ami", Steps("skip_create_ami")),
        ("skip_ami_run_tags", Steps("skip_ami_run_tags")),
        ("no_ephemeral", Steps("no_ephemeral")),
        ("ami_root_device", Steps("ami_root_device")),
        ("snapshot_description", Steps("snapshot_description")),
        ("ami_architecture", Steps("ami_architecture")),
        ("boot_mode", Steps("boot_mode")),
        ("uefi_data", Steps("uefi_data")),
        ("tpm_support", Steps("tpm_support")),
        ("use_create_image", Steps("use_create_image")),
        ("ebs_volumes", Steps("ebs_volumes")),
        ("account_id", Steps("account_id")),
        ("s3_bucket", Steps("s3_bucket")),
        ("s3_key_prefix", Steps("s3_key_prefix")),
        ("x509_cert_path", Steps("x509_cert_path")),
        ("x509_key_path", Steps("x509_key_path")),
        ("x509_upload_path", Steps("x509_upload_path")),
        ("bundle_destination", Steps("bundle_destination")),
        ("bundle_prefix", Steps("bundle_prefix")),
        ("bundle_vol_command", Steps("bundle_vol_command")),
        ("bundle_upload_command", Steps("bundle_upload_command")),
        (
            "delete_bundle_after_register",
            Steps("delete_bundle_after_register"),
        ),
        ("chroot_host_instance_id", Steps("chroot_host_instance_id")),
        ("chroot_host_filter", Steps("chroot_host_filter")),
        ("chroot_mounts", Steps("chroot_mounts")),
        ("copy_files", Steps("copy_files")),
        ("device_path", Steps("device_path")),
        ("nvme_device_path", Steps("nvme_device_path")),
        ("mount_path", Steps("mount_path")),
        ("mount_partition", Steps("mount_partition")),
        ("mount_options", Steps("mount_options")),
        ("command_wrapper", Steps("command_wrapper")),
        ("pre_mount_commands", Steps("pre_mount_commands")),
        ("post_mount_commands", Steps("post_mount_commands")),
        ("from_scratch", Steps("from_scratch")),
        ("root_volume_size", Steps("root_volume_size")),
        ("root_volume_type", Steps("root_volume_type")),
        ("root_volume_tags", Steps("root_volume_tags")),
        (
            "root_volume_encrypt_boot",
            Steps("root_volume_encrypt_boot"),
        ),
        ("root_volume_kms_key_id", Steps("root_volume_kms_key_id")),
        ("root_device_name", Steps("root_device_name")),
    ])
}

/// Each refused key with a value a template could give; `at` is the key the problem names
/// when it is a nested one.
fn refused() -> BTreeMap<&'static str, (Value, Option<&'static str>)> {
    let plain = |v: Value| (v, None);
    BTreeMap::from([
        ("mfa_code", plain(json!("123456"))),
        ("insecure_skip_tls_verify", plain(json!(true))),
        ("decode_authorization_messages", plain(json!(true))),
        ("skip_metadata_api_check", plain(json!(true))),
        ("snapshot_copy_duration_minutes", plain(json!(30))),
        (
            "deregistration_protection",
            (
                json!({"enabled": true}),
                Some("deregistration_protection.enabled"),
            ),
        ),
        (
            "temporary_security_group_source_public_ip",
            plain(json!(true)),
        ),
        ("windows_password_timeout", plain(json!("30m"))),
        ("spot_price_auto_product", plain(json!("Linux/UNIX"))),
        ("spot_allocation_strategy", plain(json!("lowest-price"))),
        ("fleet_tags", plain(json!({"Team": "platform"}))),
        ("block_duration_minutes", plain(json!(60))),
        ("enable_t2_unlimited", plain(json!(true))),
        ("enable_unlimited_credits", plain(json!(true))),
        ("enable_nitro_enclave", plain(json!(true))),
        ("capacity_reservation_preference", plain(json!("open"))),
        (
            "capacity_reservation_id",
            plain(json!("cr-0123456789abcdef0")),
        ),
        (
            "capacity_reservation_group_arn",
            plain(json!(
                "arn:aws:resource-groups:us-east-1:123456789012:group/g"
            )),
        ),
        (
            "license_specifications",
            plain(
                json!([{"license_configuration_request": {"license_configuration_arn": "arn:aws:license-manager:us-east-1:123456789012:license-configuration:lic-1"}}]),
            ),
        ),
        (
            "placement",
            (json!({"tenancy": "dedicated"}), Some("placement.tenancy")),
        ),
        ("tenancy", plain(json!("dedicated"))),
        ("pause_before_connecting", plain(json!("10s"))),
        ("ssh_certificate_file", plain(json!("id_rsa-cert.pub"))),
        ("ssh_agent_auth", plain(json!(true))),
        ("temporary_key_pair_bits", plain(json!(4096))),
        ("ssh_handshake_attempts", plain(json!(20))),
        ("ssh_keep_alive_interval", plain(json!("30s"))),
        ("ssh_read_write_timeout", plain(json!("1m"))),
        ("ssh_ciphers", plain(json!(["aes128-ctr"]))),
        (
            "ssh_key_exchange_algorithms",
            plain(json!(["diffie-hellman-group14-sha1"])),
        ),
        ("ssh_file_transfer_method", plain(json!("scp"))),
        ("pause_before_ssm", plain(json!("10s"))),
        ("session_manager_port", plain(json!(8022))),
        ("ssh_bastion_password", plain(json!("secret"))),
        ("ssh_bastion_certificate_file", plain(json!("cert.pub"))),
        ("ssh_bastion_agent_auth", plain(json!(true))),
        ("ssh_bastion_interactive", plain(json!(true))),
        ("ssh_proxy_host", plain(json!("proxy.example.com"))),
        ("ssh_proxy_port", plain(json!(1081))),
        ("ssh_proxy_username", plain(json!("me"))),
        ("ssh_proxy_password", plain(json!("secret"))),
        ("ssh_local_tunnels", plain(json!(["8080:localhost:80"]))),
        ("ssh_remote_tunnels", plain(json!(["8080:localhost:80"]))),
        ("ssm_output_s3_key_prefix", plain(json!("ssm/"))),
        ("fast_launch", plain(json!({"enable_fast_launch": true}))),
    ])
}

/// The Rust sources of a crate directory, relative to the workspace.
fn sources(dir: &str) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&p).expect("readable source"));
                out.push('\n');
            }
        }
    }
    let mut out = String::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir),
        &mut out,
    );
    out
}

/// `text` reads `.field` (not the start of a longer name).
fn reads(text: &str, field: &str) -> bool {
    let needle = format!(".{field}");
    text.match_indices(&needle).any(|(i, _)| {
        !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether `from_builder` refuses `key` (set to `value` on the builder's base) with a
/// problem naming `at` as not supported.
fn refuses(t: BuilderType, key: &str, value: &Value, at: &str) -> Result<(), String> {
    let mut extra = serde_json::Map::new();
    extra.insert(key.to_string(), value.clone());
    match from_builder_with_env("b", t, &with(t, Value::Object(extra)), &|_| None) {
        Ok(_) => Err(format!("{}: {key} = {value} accepted", t.as_str())),
        Err(ps) => ps
            .iter()
            .any(|p| p.key.as_deref() == Some(at) && p.message.contains("not supported"))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "{}: {key} = {value}: no \"not supported\" problem for {at} in {ps:?}",
                    t.as_str()
                )
            }),
    }
}

#[test]
fn every_key_is_applied_or_refused() {
    let steps = [
        sources("amiflow/src"),
        sources("cli/src"),
        sources("lambda/src"),
    ]
    .concat();
    let config: String =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config"))
            .expect("config dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| !p.ends_with("tests.rs") && !p.ends_with("key_coverage.rs"))
            .map(|p| std::fs::read_to_string(p).expect("readable source"))
            .collect();
    let applied = applied();
    let refused = refused();
    let mut failures = Vec::new();
    for (key, how) in &applied {
        if refused.contains_key(key) {
            failures.push(format!("{key} is both applied and refused"));
        }
        match how {
            Steps(field) if !reads(&steps, field) => {
                failures.push(format!("{key}: the steps never read .{field}"))
            }
            Folded(into) => {
                if !matches!(applied.get(into), Some(Steps(_))) {
                    failures.push(format!(
                        "{key}: folded into {into}, which the steps do not read"
                    ));
                }
                if !reads(&config, key) && !config.contains(&format!("\"{key}\"")) {
                    failures.push(format!("{key}: the config never folds it"));
                }
            }
            Validation if !reads(&config, key) => {
                failures.push(format!("{key}: no rule reads .{key}"))
            }
            Always { absent } if steps.contains(absent) => failures.push(format!(
                "{key}: the steps now call {absent}: apply the key or refuse it"
            )),
            _ => {}
        }
    }
    for t in BuilderType::ALL {
        let keys = known_keys(t);
        let (mut steps_n, mut folded_n, mut validation_n, mut always_n, mut refused_n) =
            (0, 0, 0, 0, 0);
        let mut ignored = Vec::new();
        for key in &keys {
            match (applied.get(key.as_str()), refused.get(key.as_str())) {
                (Some(Steps(_)), _) => steps_n += 1,
                (Some(Folded(_)), _) => folded_n += 1,
                (Some(Validation), _) => validation_n += 1,
                (Some(Always { .. }), _) => always_n += 1,
                (None, Some((value, at))) => {
                    refused_n += 1;
                    if let Err(e) = refuses(t, key, value, at.unwrap_or(key)) {
                        failures.push(e);
                    }
                }
                (None, None) => ignored.push(key.clone()),
            }
        }
        let applied_n = steps_n + folded_n + validation_n + always_n;
        println!(
            "{}: {} keys: applied {applied_n} (read by the steps {steps_n}, folded {folded_n}, \
             validation {validation_n}, what the steps always do {always_n}), refused {refused_n}, \
             ignored {}",
            t.as_str(),
            keys.len(),
            ignored.len()
        );
        assert_eq!(applied_n + refused_n + ignored.len(), keys.len());
        if !ignored.is_empty() {
            failures.push(format!(
                "{}: neither applied nor refused: {}",
                t.as_str(),
                ignored.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Values of applied keys that the steps cannot give, and a nested key, refused; the value
/// the steps do give accepted.
#[test]
fn refused_values_of_applied_keys() {
    let t = BuilderType::Ebs;
    let ssh = json!({"communicator": "ssh", "ssh_username": "u", "iam_instance_profile": "p"});
    let mut session = ssh.clone();
    session["ssh_interface"] = json!("session_manager");
    let out = match from_builder_with_env("b", t, &with(t, session), &|_| None) {
        Ok(_) => panic!("session_manager accepted"),
        Err(ps) => ps.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert!(
        out.iter().any(
            |p| p.starts_with("b: ssh_interface: not supported by amiflow")
                && p.contains("\"communicator\": \"ssm\"")
        ),
        "{out:?}"
    );
    let mut sftp = ssh.clone();
    sftp["ssh_file_transfer_method"] = json!("sftp");
    from_builder_with_env("b", t, &with(t, sftp), &|_| None).expect("sftp is what is used");
    let nested = json!({"assume_role": {"role_arn": "arn:aws:iam::123456789012:role/r", "transitive_tag_keys": ["Team"]}});
    refuses(
        t,
        "assume_role",
        &nested["assume_role"],
        "assume_role.transitive_tag_keys",
    )
    .unwrap();
    for key in ["host_id", "host_resource_group_arn"] {
        refuses(
            t,
            "placement",
            &json!({key: "h-1"}),
            &format!("placement.{key}"),
        )
        .unwrap();
    }
    // amazon-ebs takes no boot keys (Packer refuses them there); the builders that register
    // the image do.
    for key in ["boot_mode", "uefi_data", "tpm_support"] {
        assert!(!known_keys(t).contains(key), "{key}");
        let out = match from_builder_with_env("b", t, &with(t, json!({key: "uefi"})), &|_| None) {
            Ok(_) => panic!("{key} accepted"),
            Err(ps) => ps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert!(
            out.contains(&format!("{key}: unknown key: {key} is an option of")),
            "{out}"
        );
        assert!(out.contains("amazon-ebs does not take it"), "{out}");
    }
}
