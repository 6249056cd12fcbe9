//! Unit tests of `from_builder` over raw JSON maps: every rule has a case here.

use serde_json::{json, Map, Value};

use super::*;

pub(super) fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn ok(t: BuilderType, v: Value) -> BuilderConfig {
    match from_builder_with_env("b", t, &obj(v), &no_env) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems: {p:#?}"),
    }
}

#[test]
fn shapes_deserialize_with_defaults() {
    let c = ok(
        BuilderType::Ebs,
        json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "ami_name": "demo", "communicator": "none"}),
    );
    let BuilderConfig::Ebs(e) = &c else { panic!() };
    assert_eq!(e.run.source_ami.as_deref(), Some("ami-0f8848d57eb4fe2d2"));
    assert_eq!(e.comm.ssh_port, 22);
    assert_eq!(e.comm.ssh_timeout.to_string(), "5m");
    assert_eq!(e.run.shutdown_behavior, "stop");
    assert_eq!(e.access.max_retries, 10);
    // IMDSv2 by default (issue 14), unlike Packer.
    assert_eq!(e.run.metadata_options.http_tokens, "required");
    let s = serde_json::to_value(&c).unwrap();
    let back: BuilderConfig = serde_json::from_value(s).unwrap();
    assert_eq!(back, c);
}

pub(super) fn base(t: BuilderType) -> Value {
    match t {
        BuilderType::Ebs => {
            json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "ami_name": "demo {{timestamp}}", "communicator": "none"})
        }
        BuilderType::Chroot => {
            json!({"source_ami": "ami-e81d5881", "ami_name": "packer-amazon-chroot {{timestamp}}"})
        }
        BuilderType::Instance => {
            json!({"region": "us-east-1", "source_ami": "ami-d9d6a6b0", "instance_type": "m1.small", "ssh_username": "ubuntu",
            "account_id": "0123-4567-0890", "s3_bucket": "packer-images", "x509_cert_path": "x509.cert", "x509_key_path": "x509.key", "ami_name": "packer-quick-start {{timestamp}}"})
        }
        BuilderType::EbsSurrogate => {
            json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "ami_name": "surrogate", "communicator": "none",
            "ami_virtualization_type": "hvm",
            "launch_block_device_mappings": [{"device_name": "/dev/xvdf", "volume_size": 8, "volume_type": "gp3", "delete_on_termination": true}],
            "ami_root_device": {"source_device_name": "/dev/xvdf", "device_name": "/dev/xvda", "volume_size": 8}})
        }
        BuilderType::EbsVolume => {
            json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "communicator": "none",
            "ebs_volumes": [{"device_name": "/dev/xvdf", "volume_size": 10, "volume_type": "gp3", "delete_on_termination": false, "tags": {"Name": "data"}}]})
        }
    }
}

/// `base(t)` with `extra` merged in (a null removes the key).
pub(super) fn with(t: BuilderType, extra: Value) -> Map<String, Value> {
    let mut m = obj(base(t));
    for (k, v) in obj(extra) {
        if v.is_null() {
            m.remove(&k);
        } else {
            m.insert(k, v);
        }
    }
    m
}

fn problems_of(t: BuilderType, extra: Value) -> String {
    match from_builder_with_env("b", t, &with(t, extra.clone()), &no_env) {
        Ok(_) => panic!("{} with {extra} should be refused", t.as_str()),
        Err(p) => p
            .iter()
            .map(|p| format!("* {p}"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[track_caller]
fn bad(t: BuilderType, extra: Value, expect: &[&str]) {
    let out = problems_of(t, extra.clone());
    for e in expect {
        assert!(
            out.contains(e),
            "{} with {extra}: expected {e:?} in\n{out}",
            t.as_str()
        );
    }
}

#[track_caller]
fn good(t: BuilderType, extra: Value) -> BuilderConfig {
    match from_builder_with_env("b", t, &with(t, extra.clone()), &no_env) {
        Ok(c) => c,
        Err(p) => panic!("{} with {extra}: unexpected problems {p:#?}", t.as_str()),
    }
}

use BuilderType::*;

#[test]
fn bases_are_valid_for_every_builder() {
    for t in BuilderType::ALL {
        good(t, json!({}));
    }
}

#[test]
fn unknown_keys_suggest_the_closest() {
    bad(
        Ebs,
        json!({"ami_nmae": "x"}),
        &["b: ami_nmae: unknown key for amazon-ebs; did you mean ami_name?"],
    );
    bad(
        Ebs,
        json!({"ssh_user": "ec2-user"}),
        &["did you mean ssh_username?"],
    );
    bad(
        Ebs,
        json!({"instnce_type": "t3.micro"}),
        &["did you mean instance_type?"],
    );
    bad(
        Ebs,
        json!({"zzzz_qqq": 1}),
        &["zzzz_qqq: unknown key for amazon-ebs; remove it"],
    );
    bad(
        Ebs,
        json!({"chroot_mounts": []}),
        &["chroot_mounts is an option of amazon-chroot"],
    );
    bad(
        Chroot,
        json!({"instance_type": "t3.micro"}),
        &[
            "instance_type is an option of",
            "amazon-chroot does not take it",
        ],
    );
    bad(
        EbsVolume,
        json!({"ami_name": "x"}),
        &["ami_name", "amazon-ebsvolume does not take it"],
    );
    bad(
        Ebs,
        json!({"shutdown_behaviour": "stop"}),
        &["it is spelled shutdown_behavior"],
    );
    bad(
        Chroot,
        json!({"mount_command": "mount"}),
        &["replaced by command_wrapper"],
    );
    bad(
        Ebs,
        json!({"winrm_username": "Administrator"}),
        &["winrm_username: not supported: amiflow runs WinRM templates over SSM"],
    );
    bad(
        Ebs,
        json!({"vault_aws_engine": {"name": "x"}}),
        &["Vault credentials are not supported"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_sise": 8}]}),
        &[
            "launch_block_device_mappings.volume_sise",
            "did you mean volume_size?",
        ],
    );
    bad(
        Ebs,
        json!({"source_ami_filter": {"filters": {}, "owners": ["amazon"], "most_recnt": true}}),
        &["source_ami_filter.most_recnt", "did you mean most_recent?"],
    );
    bad(
        EbsVolume,
        json!({"ebs_volumes": [{"device_name": "/dev/xvdf", "volume_size": 1, "snapshot_volumes": true}]}),
        &[
            "ebs_volumes[0].snapshot_volumes",
            "did you mean snapshot_volume?",
        ],
    );
}

#[test]
fn packer_internal_and_type_name_keys_are_ignored() {
    good(
        Ebs,
        json!({"packer_build_name": "x", "packer_debug": false, "type": "amazon-ebs", "name": "n"}),
    );
}

#[test]
fn wrong_types_name_the_expected_type() {
    bad(
        Ebs,
        json!({"ssh_port": "twenty-two"}),
        &["ssh_port: wrong type", "port number"],
    );
    bad(
        Ebs,
        json!({"ami_regions": {"a": 1}}),
        &["ami_regions: wrong type", "expected"],
    );
    bad(
        Ebs,
        json!({"ebs_optimized": "yes please"}),
        &["ebs_optimized: wrong type", "boolean"],
    );
    bad(Ebs, json!({"tags": ["a"]}), &["tags: wrong type", "object"]);
    bad(
        Ebs,
        json!({"source_ami_filter": "ubuntu"}),
        &["source_ami_filter: wrong type", "object"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_size": "big"}]}),
        &["launch_block_device_mappings: wrong type", "integer"],
    );
    bad(Ebs, json!({"ssh_port": 70000}), &["ssh_port: out of range"]);
    bad(
        Ebs,
        json!({"max_retries": -1}),
        &["max_retries: out of range"],
    );
}

#[test]
fn weak_typing_like_mapstructure() {
    let c = good(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_port": "2222", "ebs_optimized": "true", "spot_price": 0.05, "ami_users": "123456789012",
        "launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_size": "20", "delete_on_termination": "true", "encrypted": "false"}],
        "tags": {"Version": 3, "Released": true}}),
    );
    let BuilderConfig::Ebs(e) = c else { panic!() };
    assert_eq!(e.comm.ssh_port, 2222);
    assert!(e.run.ebs_optimized);
    assert_eq!(e.run.spot_price.as_deref(), Some("0.05"));
    assert_eq!(e.ami.ami_users, vec!["123456789012"]);
    assert_eq!(e.launch_block_device_mappings[0].volume_size, Some(20));
    assert!(e.launch_block_device_mappings[0].delete_on_termination);
    assert_eq!(e.launch_block_device_mappings[0].encrypted, Some(false));
    assert_eq!(e.ami.tags["Version"], "3");
    assert_eq!(e.ami.tags["Released"], "true");
}

#[test]
fn empty_and_null_values_mean_unset() {
    let BuilderConfig::Ebs(e) = good(
        Ebs,
        json!({"ssh_timeout": "", "subnet_id": null, "vpc_id": ""}),
    ) else {
        panic!()
    };
    assert_eq!(e.comm.ssh_timeout.to_string(), "5m");
    assert_eq!(e.run.subnet_id, None);
    assert_eq!(e.run.vpc_id, None);
}

#[test]
fn missing_required_per_builder() {
    bad(
        Ebs,
        json!({"ami_name": null, "source_ami": null, "instance_type": null, "region": null}),
        &[
            "ami_name: required",
            "source_ami: required: set source_ami (an AMI id) or source_ami_filter",
            "instance_type: required",
            "region: required",
        ],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh"}),
        &["ssh_username: required with communicator ssh"],
    );
    bad(
        Chroot,
        json!({"source_ami": null}),
        &["source_ami: required for amazon-chroot"],
    );
    bad(Chroot, json!({"ami_name": null}), &["ami_name: required"]);
    bad(
        Instance,
        json!({"account_id": null, "s3_bucket": null, "x509_cert_path": null, "x509_key_path": null}),
        &[
            "account_id: required for amazon-instance",
            "s3_bucket: required for amazon-instance",
            "x509_cert_path: required for amazon-instance",
            "x509_key_path: required for amazon-instance",
        ],
    );
    bad(
        EbsSurrogate,
        json!({"ami_virtualization_type": null, "ami_root_device": null, "launch_block_device_mappings": null}),
        &[
            "ami_virtualization_type: required for amazon-ebssurrogate",
            "ami_root_device: required for amazon-ebssurrogate",
            "launch_block_device_mappings: required for amazon-ebssurrogate",
        ],
    );
    bad(
        EbsSurrogate,
        json!({"ami_root_device": {"device_name": "/dev/xvda"}}),
        &["ami_root_device.source_device_name: required"],
    );
    bad(
        EbsSurrogate,
        json!({"ami_root_device": {"source_device_name": "/dev/xvdf"}}),
        &["ami_root_device.device_name: required"],
    );
    bad(
        EbsSurrogate,
        json!({"ami_root_device": {"source_device_name": "/dev/xvdz", "device_name": "/dev/xvda"}}),
        &["/dev/xvdz is not in launch_block_device_mappings"],
    );
    bad(
        EbsVolume,
        json!({"source_ami": null}),
        &["source_ami: required"],
    );
    bad(
        Ebs,
        json!({"source_ami": null, "source_ami_filter": {"filters": {"name": "amzn2-*"}}}),
        &["source_ami_filter.owners: required"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"volume_size": 8}]}),
        &["launch_block_device_mappings[0].device_name: required"],
    );
    bad(
        Ebs,
        json!({"assume_role": {"session_name": "x"}}),
        &["assume_role.role_arn: required"],
    );
}

#[test]
fn region_from_environment_or_chroot_host() {
    let env = |k: &str| (k == "AWS_DEFAULT_REGION").then(|| "us-west-2".to_string());
    assert!(from_builder_with_env("b", Ebs, &with(Ebs, json!({"region": null})), &env).is_ok());
    good(Chroot, json!({}));
}

#[test]
fn conflicts() {
    bad(
        Ebs,
        json!({"security_group_id": "sg-1", "security_group_ids": ["sg-2"]}),
        &["security_group_id: conflicts with security_group_ids"],
    );
    bad(
        Ebs,
        json!({"user_data": "x", "user_data_file": "f"}),
        &["user_data: conflicts with user_data_file"],
    );
    bad(
        Ebs,
        json!({"spot_price": "auto", "ena_support": true}),
        &["ena_support: conflicts with spot_price"],
    );
    bad(
        Ebs,
        json!({"spot_price": "auto", "sriov_support": true}),
        &["sriov_support: conflicts with spot_price"],
    );
    bad(
        Instance,
        json!({"spot_price": "0.1", "enhanced_networking": true}),
        &["sriov_support: conflicts with spot_price"],
    );
    bad(
        EbsVolume,
        json!({"spot_price": "auto", "ena_support": true}),
        &["ena_support: conflicts with spot_price"],
    );
    bad(
        Ebs,
        json!({"instance_type": "t3.micro", "spot_price": "auto", "spot_instance_types": ["t3.micro"]}),
        &["instance_type: conflicts with spot_instance_types"],
    );
    bad(
        Ebs,
        json!({"iam_instance_profile": "p", "temporary_iam_instance_profile_policy_document": {"Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}]}}),
        &["iam_instance_profile: conflicts with temporary_iam_instance_profile_policy_document"],
    );
    bad(
        Ebs,
        json!({"temporary_security_group_source_cidrs": ["10.0.0.0/8"], "temporary_security_group_source_public_ip": true}),
        &["conflicts with temporary_security_group_source_public_ip"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_keypair_name": "mykey"}),
        &["ssh_keypair_name: requires ssh_private_key_file"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_password": "p", "ssh_private_key_file": "k"}),
        &["ssh_password: conflicts with ssh_private_key_file"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssh_password": "p"}),
        &["ssh_password: conflicts with communicator ssm"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssh_private_key_file": "k"}),
        &["ssh_private_key_file: conflicts with communicator ssm"],
    );
    bad(
        Ebs,
        json!({"spot_tags": {"a": "b"}}),
        &["spot_tags: only applies to spot instances"],
    );
    bad(
        Ebs,
        json!({"spot_instance_types": ["t3.micro"], "instance_type": null}),
        &["spot_instance_types: only applies to spot instances"],
    );
    bad(
        Ebs,
        json!({"encrypt_boot": false, "kms_key_id": "alias/mine"}),
        &["kms_key_id: requires encrypt_boot: true"],
    );
    bad(
        Ebs,
        json!({"kms_key_id": "alias/mine"}),
        &["kms_key_id: requires encrypt_boot: true"],
    );
    bad(
        Ebs,
        json!({"region_kms_key_ids": {"us-west-2": "alias/a"}, "ami_regions": ["us-west-2"]}),
        &["region_kms_key_ids: requires encrypt_boot: true"],
    );
    bad(
        Ebs,
        json!({"encrypt_boot": true, "kms_key_id": "alias/a", "ami_regions": ["us-west-2", "eu-west-1"], "region_kms_key_ids": {"us-west-2": "alias/a"}}),
        &["region eu-west-1 is in ami_regions but has no key in region_kms_key_ids"],
    );
    bad(
        Ebs,
        json!({"encrypt_boot": true, "ami_users": ["123456789012"]}),
        &["cannot share an AMI encrypted with the default KMS key"],
    );
    bad(
        Ebs,
        json!({"encrypt_boot": true, "snapshot_users": ["123456789012"]}),
        &["snapshot_users: cannot share snapshots encrypted with the default KMS key"],
    );
    bad(
        Ebs,
        json!({"capacity_reservation_id": "cr-1", "capacity_reservation_group_arn": "arn:x"}),
        &["capacity_reservation_id: conflicts with capacity_reservation_group_arn"],
    );
    bad(
        Ebs,
        json!({"tenancy": "dedicated", "placement": {"tenancy": "host"}}),
        &["tenancy: conflicts with placement.tenancy"],
    );
    bad(
        Ebs,
        json!({"placement": {"host_id": "h-1", "tenancy": "dedicated"}}),
        &["placement.tenancy: must be \"host\""],
    );
    bad(
        Ebs,
        json!({"spot_price": "auto", "enable_nitro_enclave": true, "instance_type": "m5.xlarge"}),
        &["enable_nitro_enclave: conflicts with spot_price"],
    );
    bad(
        Ebs,
        json!({"enable_unlimited_credits": true, "instance_type": "m5.large"}),
        &["enable_unlimited_credits: only applies to burstable"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_interface": "public_ip", "ssh_private_ip": true}),
        &["ssh_private_ip: conflicts with ssh_interface"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_interface": "session_manager"}),
        &["session_manager requires iam_instance_profile"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_bastion_host": "b"}),
        &["ssh_bastion_host: requires ssh_bastion_private_key_file"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssm_output_s3_key_prefix": "x"}),
        &["ssm_output_s3_key_prefix: requires ssm_output_s3_bucket"],
    );
    bad(
        Ebs,
        json!({"deregistration_protection": {"with_cooldown": true}}),
        &["with_cooldown: requires deregistration_protection.enabled"],
    );
    // Options amiflow cannot honour yet are refused, never silently dropped.
    bad(
        Ebs,
        json!({"deregistration_protection": {"enabled": true}}),
        &["deregistration_protection.enabled: not supported by amiflow yet"],
    );
    bad(
        Ebs,
        json!({"fast_launch": {"enable_fast_launch": true}}),
        &["fast_launch: not supported by amiflow yet"],
    );
    good(Ebs, json!({"fast_launch": {"enable_fast_launch": false}}));
    bad(
        Ebs,
        json!({"temporary_security_group_source_public_ip": true}),
        &["temporary_security_group_source_public_ip: not supported"],
    );
    bad(
        Ebs,
        json!({"fast_launch": {"template_id": "lt-1", "template_name": "n"}}),
        &["fast_launch.template_id: conflicts with fast_launch.template_name"],
    );
}

#[test]
fn chroot_rules() {
    bad(
        Chroot,
        json!({"from_scratch": true, "source_ami": null}),
        &[
            "root_volume_size: required with from_scratch",
            "pre_mount_commands: required with from_scratch",
            "ami_virtualization_type: required with from_scratch",
            "root_device_name: required with from_scratch",
            "ami_block_device_mappings: required with from_scratch",
        ],
    );
    good(
        Chroot,
        json!({"from_scratch": true, "source_ami": null, "root_volume_size": 8, "pre_mount_commands": ["parted {{.Device}} mklabel msdos"], "ami_virtualization_type": "hvm",
        "root_device_name": "/dev/xvda", "ami_block_device_mappings": [{"device_name": "/dev/xvda", "delete_on_termination": true, "volume_type": "gp2"}]}),
    );
    bad(
        Chroot,
        json!({"root_device_name": "/dev/xvda"}),
        &["root_device_name: requires ami_block_device_mappings"],
    );
    bad(
        Chroot,
        json!({"ami_block_device_mappings": [{"device_name": "/dev/xvda"}]}),
        &[
            "ami_block_device_mappings: requires root_device_name",
            "root_volume_size: required with ami_block_device_mappings",
        ],
    );
    bad(
        Chroot,
        json!({"chroot_mounts": [["proc", "/proc"]]}),
        &["chroot_mounts[0]: each mount is [fstype, source, destination]"],
    );
    bad(
        Chroot,
        json!({"mount_partition": "one"}),
        &["mount_partition: invalid value"],
    );
    bad(
        Chroot,
        json!({"command_wrapper": "sudo"}),
        &["command_wrapper: must contain {{.Command}}"],
    );
    bad(
        Chroot,
        json!({"root_volume_kms_key_id": "alias/x"}),
        &["root_volume_kms_key_id: requires root_volume_encrypt_boot: true"],
    );
    bad(
        Chroot,
        json!({"nvme_device_path": "/dev/nvme1n1p"}),
        &["nvme_device_path: requires device_path"],
    );
    bad(
        Chroot,
        json!({"chroot_host_instance_id": "i-0123", "chroot_host_filter": {"filters": {"tag:Role": "builder"}}}),
        &["chroot_host_instance_id: conflicts with chroot_host_filter"],
    );
    bad(
        Chroot,
        json!({"chroot_host_instance_id": "host-1"}),
        &["chroot_host_instance_id: \"host-1\" is not an instance id"],
    );
    bad(
        Chroot,
        json!({"ami_architecture": "sparc", "boot_mode": "bios", "tpm_support": "v1"}),
        &[
            "ami_architecture: invalid value",
            "boot_mode: invalid value",
            "tpm_support: invalid value",
        ],
    );
    bad(
        Chroot,
        json!({"root_volume_size": 0, "root_volume_type": "fast"}),
        &[
            "root_volume_size: out of range",
            "root_volume_type: invalid value",
        ],
    );
}

#[test]
fn chroot_defaults() {
    let BuilderConfig::Chroot(c) = good(Chroot, json!({})) else {
        panic!()
    };
    assert_eq!(c.chroot_mounts, chroot::default_chroot_mounts());
    assert_eq!(c.chroot_mounts.len(), 5);
    assert_eq!(c.copy_files, vec!["/etc/resolv.conf"]);
    assert_eq!(
        c.mount_path,
        "/mnt/packer-amazon-chroot-volumes/{{.Device}}"
    );
    assert_eq!(c.command_wrapper, "{{.Command}}");
    assert_eq!(c.mount_partition, "1");
    assert_eq!(c.ami_architecture, "x86_64");
    let BuilderConfig::Chroot(c) = good(Chroot, json!({"copy_files": [], "chroot_mounts": []}))
    else {
        panic!()
    };
    assert!(c.copy_files.is_empty(), "an explicit [] copies nothing");
    assert_eq!(
        c.chroot_mounts.len(),
        5,
        "an empty chroot_mounts means the defaults"
    );
    let BuilderConfig::Chroot(c) = good(Chroot, json!({"mount_partition": 0})) else {
        panic!()
    };
    assert_eq!(c.mount_partition, "0");
}

#[test]
fn instance_defaults_and_rules() {
    let BuilderConfig::Instance(i) = good(Instance, json!({})) else {
        panic!()
    };
    assert_eq!(i.account_id, "012345670890");
    assert_eq!(i.x509_upload_path, "/tmp");
    assert_eq!(i.bundle_destination, "/tmp");
    assert_eq!(i.bundle_prefix, "image-{{timestamp}}");
    assert_eq!(i.bundle_vol_command, instance::DEFAULT_BUNDLE_VOL_COMMAND);
    assert_eq!(
        i.bundle_upload_command,
        instance::DEFAULT_BUNDLE_UPLOAD_COMMAND
    );
    assert!(!i.delete_bundle_after_register);
    let BuilderConfig::Instance(i) = good(Instance, json!({"iam_instance_profile": "bundler"}))
    else {
        panic!()
    };
    assert_eq!(
        i.bundle_upload_command,
        instance::DEFAULT_BUNDLE_UPLOAD_COMMAND_WITH_PROFILE
    );
    bad(
        Instance,
        json!({"account_id": "12345"}),
        &["account_id: \"12345\" is not a 12-digit AWS account id"],
    );
    bad(
        Instance,
        json!({"s3_bucket": "My_Bucket"}),
        &["s3_bucket: \"My_Bucket\" is not a valid S3 bucket name"],
    );
}

#[test]
fn durations() {
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_timeout": "5 minutes"}),
        &[
            "ssh_timeout: bad duration",
            "\"5 minutes\" is not a duration",
        ],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_timeout": 300}),
        &["ssh_timeout: bad duration"],
    );
    bad(
        Ebs,
        json!({"windows_password_timeout": "-1m"}),
        &["windows_password_timeout: bad duration", "negative"],
    );
    bad(
        Ebs,
        json!({"pause_before_connecting": "10"}),
        &["pause_before_connecting: bad duration"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssm_execution_timeout": "3d"}),
        &["ssm_execution_timeout: bad duration"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssm_execution_timeout": "72h"}),
        &["ssm_execution_timeout: out of range"],
    );
    let BuilderConfig::Ebs(e) = good(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_wait_timeout": "50m"}),
    ) else {
        panic!()
    };
    assert_eq!(e.comm.ssh_timeout.as_std().as_secs(), 3000);
    // Read as a duration, then refused: Connect does not pause.
    bad(
        Ebs,
        json!({"pause_before_connecting": "10s"}),
        &["pause_before_connecting: not supported by amiflow: Connect does not pause"],
    );
    bad(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_wait_timeout": "1h30m"}),
        &["ssh_timeout: out of range: 1h30m; at most 55m"],
    );
}

#[test]
fn regions() {
    for r in [
        "us-east-1",
        "eu-west-3",
        "ap-southeast-2",
        "us-gov-west-1",
        "cn-north-1",
        "us-isob-east-1",
        "il-central-1",
        "ca-west-1",
    ] {
        assert!(check::is_region(r), "{r}");
    }
    for r in [
        "us-east",
        "useast1",
        "US-EAST-1",
        "us-middle-1",
        "mars-north-1",
        "us-east-1a",
        "eu-west-",
    ] {
        assert!(!check::is_region(r), "{r}");
    }
    bad(
        Ebs,
        json!({"region": "us-east"}),
        &["region: bad region \"us-east\"", "skip_region_validation"],
    );
    bad(
        Ebs,
        json!({"ami_regions": ["eu-west-1", "moon-1"]}),
        &["ami_regions: bad region \"moon-1\""],
    );
    good(
        Ebs,
        json!({"region": "local-test", "skip_region_validation": true, "ami_regions": ["nowhere"]}),
    );
    let BuilderConfig::Ebs(e) = good(
        Ebs,
        json!({"ami_regions": ["us-west-2", "us-east-1", "us-west-2"]}),
    ) else {
        panic!()
    };
    assert_eq!(
        e.ami.ami_regions,
        vec!["us-west-2"],
        "deduplicated, build region removed"
    );
}

#[test]
fn out_of_range_and_bad_values() {
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_size": 0}]}),
        &["launch_block_device_mappings[0].volume_size: out of range: 0 GiB"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "io1", "volume_size": 10, "iops": 1000}]}),
        &["exceeds 50 IOPS per GiB"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "io2", "volume_size": 10, "iops": 50}]}),
        &["iops: out of range: 50"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "gp3", "iops": 20000}]}),
        &["gp3 takes 3000 to 16000 IOPS"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "gp2", "iops": 3000}]}),
        &["iops only applies to io1, io2 and gp3"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "io1", "volume_size": 100}]}),
        &["required: io1 volumes need iops"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "gp2", "throughput": 200}]}),
        &["throughput only applies to gp3"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "gp3", "throughput": 2000}]}),
        &["gp3 takes 125 to 1000 MiB/s"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "ssd"}]}),
        &["volume_type: invalid value \"ssd\""],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "kms_key_id": "alias/k"}]}),
        &["kms_key_id: requires encrypted: true"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "omit_from_artifact": true}]}),
        &["omit_from_artifact: only applies to amazon-ebssurrogate"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb"}, {"device_name": "/dev/sdb"}]}),
        &["/dev/sdb is mapped twice"],
    );
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "virtual_name": "scratch"}]}),
        &["virtual_name: \"scratch\": only instance store names"],
    );
    bad(
        Ebs,
        json!({"metadata_options": {"http_tokens": "always", "http_put_response_hop_limit": 65}}),
        &[
            "metadata_options.http_tokens: invalid value",
            "metadata_options.http_put_response_hop_limit: out of range: 65",
        ],
    );
    bad(
        Ebs,
        json!({"shutdown_behavior": "hibernate"}),
        &["shutdown_behavior: invalid value \"hibernate\""],
    );
    bad(
        Ebs,
        json!({"communicator": "winrm", "winrm_username": "Administrator", "winrm_host": "10.0.0.5"}),
        &["winrm_host: not supported: amiflow runs WinRM templates over SSM, where this key has no meaning"],
    );
    bad(
        Ebs,
        json!({"communicator": "telnet"}),
        &["communicator: invalid value \"telnet\""],
    );
    bad(
        Ebs,
        json!({"ami_virtualization_type": "pv"}),
        &["ami_virtualization_type: invalid value \"pv\""],
    );
    bad(
        Ebs,
        json!({"ami_groups": ["everyone"]}),
        &["ami_groups: invalid value \"everyone\""],
    );
    bad(
        Ebs,
        json!({"ami_users": ["me"]}),
        &["ami_users: invalid value \"me\": must be a 12-digit AWS account id"],
    );
    bad(
        Ebs,
        json!({"imds_support": "v1"}),
        &["imds_support: invalid value"],
    );
    bad(
        Ebs,
        json!({"deprecate_at": "next year"}),
        &["deprecate_at: \"next year\" is not an RFC 3339 time"],
    );
    bad(
        Ebs,
        json!({"encrypt_boot": true, "kms_key_id": "my-key"}),
        &["kms_key_id: \"my-key\" is not a KMS key"],
    );
    bad(
        Ebs,
        json!({"spot_price": "cheap"}),
        &["spot_price: invalid value \"cheap\""],
    );
    bad(
        Ebs,
        json!({"temporary_security_group_source_cidrs": ["10.0.0.0/33", "home"]}),
        &[
            "\"10.0.0.0/33\" is not a CIDR block",
            "\"home\" is not a CIDR block",
        ],
    );
    bad(
        Ebs,
        json!({"source_ami": "ubuntu-20.04"}),
        &["source_ami: \"ubuntu-20.04\" is not an AMI id"],
    );
    bad(
        Ebs,
        json!({"temporary_key_pair_type": "dsa"}),
        &["temporary_key_pair_type: invalid value \"dsa\""],
    );
    bad(
        Ebs,
        json!({"block_duration_minutes": 90}),
        &["block_duration_minutes: out of range"],
    );
    bad(
        Ebs,
        json!({"snapshot_copy_duration_minutes": 10}),
        &["snapshot_copy_duration_minutes: out of range"],
    );
    bad(
        Ebs,
        json!({"assume_role": {"role_arn": "packer-role", "duration_seconds": 60}}),
        &[
            "assume_role.role_arn: \"packer-role\" is not an IAM role ARN",
            "assume_role.duration_seconds: out of range",
        ],
    );
    bad(
        Ebs,
        json!({"access_key": "AKIA"}),
        &["access_key: required together"],
    );
    bad(
        Ebs,
        json!({"fast_launch": {"max_parallel_launches": 2}}),
        &["fast_launch.max_parallel_launches: out of range"],
    );
    bad(
        EbsVolume,
        json!({"ebs_volumes": [{"device_name": "/dev/xvdf", "snapshot_description": "d"}]}),
        &["ebs_volumes[0].snapshot_description: requires snapshot_volume: true"],
    );
}

/// Numbers the steps use in arithmetic, conversions (`as i32`) or waits: a value that would
/// overflow, truncate or never be reached is refused at validation, naming the key and range.
#[test]
fn numbers_are_refused_outside_what_the_steps_can_use() {
    bad(
        Ebs,
        json!({"max_retries": 4294967295u64}),
        &["max_retries: out of range: 4294967295; must be from 0 to 100 (0 means 10)"],
    );
    good(Ebs, json!({"max_retries": 100}));
    // size × IOPS-per-GiB no longer overflows; the size itself is out of range.
    bad(
        Ebs,
        json!({"launch_block_device_mappings": [{"device_name": "/dev/sdb", "volume_type": "io1", "volume_size": i64::MAX, "iops": 1000}]}),
        &["launch_block_device_mappings[0].volume_size: out of range: 9223372036854775807 GiB; must be from 1 to 65536"],
    );
    // Without a volume type (the snapshot's), iops still fits what EBS takes (and an i32).
    bad(
        Ebs,
        json!({"ami_block_device_mappings": [{"device_name": "/dev/sdb", "iops": 10_000_000_000i64}]}),
        &["ami_block_device_mappings[0].iops: out of range: 10000000000; must be from 100 to 256000 IOPS"],
    );
    bad(
        EbsSurrogate,
        json!({"ami_root_device": {"source_device_name": "/dev/xvdf", "device_name": "/dev/xvda", "volume_size": i64::MAX, "iops": -5, "volume_type": "fast"}}),
        &[
            "ami_root_device.volume_size: out of range: 9223372036854775807 GiB",
            "ami_root_device.iops: out of range: -5; must be from 100 to 256000 IOPS",
            "ami_root_device.volume_type: invalid value \"fast\"",
        ],
    );
    bad(
        Ebs,
        json!({"aws_polling": {"delay_seconds": 86400, "max_attempts": 4294967295u64}}),
        &[
            "aws_polling.delay_seconds: out of range: 86400; must be from 0 to 3600 seconds between two polls",
            "aws_polling.max_attempts: out of range: 4294967295 polls 86400 s apart",
            "at most 604800 s (7 days)",
        ],
    );
    good(
        Ebs,
        json!({"aws_polling": {"delay_seconds": 15, "max_attempts": 240}}),
    );
    bad(
        Ebs,
        json!({"communicator": "ssm", "ssm_timeout": "2h", "ssm_execution_timeout": "8h"}),
        &[
            "ssm_timeout: out of range: 2h; at most 55m",
            "ssm_execution_timeout: out of range: 8h; from 30s to 7h",
        ],
    );
    // Packer: a zero bastion port means 22.
    let BuilderConfig::Ebs(e) = good(
        Ebs,
        json!({"communicator": "ssh", "ssh_username": "u", "ssh_bastion_host": "b", "ssh_bastion_private_key_file": "k", "ssh_bastion_port": 0}),
    ) else {
        panic!()
    };
    assert_eq!(e.comm.ssh_bastion_port, 22);
}

#[test]
fn ami_names() {
    bad(
        Ebs,
        json!({"ami_name": "ab"}),
        &["ami_name: bad AMI name: 2 characters"],
    );
    bad(
        Ebs,
        json!({"ami_name": "x".repeat(129)}),
        &["bad AMI name: 129 characters"],
    );
    bad(
        Ebs,
        json!({"ami_name": "my image: v1?"}),
        &[
            "bad AMI name: characters \":?\" are not allowed",
            "clean_resource_name",
        ],
    );
    good(Ebs, json!({"ami_name": "my-image (v1) [x] ./-'@_"}));
    good(Ebs, json!({"ami_name": "{{ .Name }}"}));
}

#[test]
fn every_problem_at_once() {
    let out = problems_of(
        Ebs,
        json!({"ami_name": null, "region": "nowhere", "ssh_port": "x", "foo": 1, "user_data": "a", "user_data_file": "b"}),
    );
    assert_eq!(out.lines().count(), 5, "{out}");
}

#[test]
fn legacy_keys_fold_into_their_successors() {
    let BuilderConfig::Instance(i) = good(
        Instance,
        json!({"enhanced_networking": true, "ssh_private_ip": true, "security_group_id": "sg-1"}),
    ) else {
        panic!()
    };
    assert!(i.ami.sriov_support);
    assert_eq!(i.ami.ena_support, Some(true));
    assert_eq!(i.comm.ssh_interface.as_deref(), Some("private_ip"));
    assert_eq!(i.run.security_group_ids, vec!["sg-1"]);
    assert_eq!(i.run.security_group_id, None);
}

#[test]
fn packer_defaults() {
    let BuilderConfig::Ebs(e) = good(Ebs, json!({})) else {
        panic!()
    };
    assert_eq!(
        e.run.temporary_security_group_source_cidrs,
        vec!["0.0.0.0/0"]
    );
    assert_eq!(e.run.windows_password_timeout.to_string(), "20m");
    assert_eq!(e.comm.communicator, "none");
    assert_eq!(e.comm.ssh_handshake_attempts, 10);
    assert_eq!(e.comm.temporary_key_pair_type, "rsa");
    assert_eq!(e.comm.ssm_timeout.to_string(), "5m");
    let BuilderConfig::Ebs(e) = good(
        Ebs,
        json!({"communicator": null, "ssh_username": "u", "ssh_interface": "ipv6", "max_retries": 0}),
    ) else {
        panic!()
    };
    assert_eq!(
        e.comm.communicator, "ssh",
        "ssh is Packer's default communicator"
    );
    assert_eq!(e.run.temporary_security_group_source_cidrs, vec!["::/0"]);
    assert_eq!(e.access.max_retries, 10);
}

#[test]
fn secrets_never_serialized() {
    // Decoded without the rules: mfa_code and the bastion and proxy passwords are refused at
    // validation, yet no secret may reach the serialized config whatever the path.
    let c = BuilderConfig::Ebs(
        serde_json::from_value(json!({"access_key": "AKIAIOSFODNN7EXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "token": "TOKENSECRET",
        "mfa_code": "123456", "communicator": "ssh", "ssh_username": "u", "ssh_password": "hunter2", "ssh_bastion_host": "b", "ssh_bastion_password": "bastionpw",
        "ssh_proxy_host": "p", "ssh_proxy_password": "proxypw"}))
        .unwrap(),
    );
    assert_eq!(
        c.access().access_key.as_deref(),
        Some("AKIAIOSFODNN7EXAMPLE")
    );
    assert_eq!(c.access().credential_source(), CredentialSource::Static);
    let text = serde_json::to_string(&c).unwrap();
    for secret in [
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI",
        "TOKENSECRET",
        "123456",
        "hunter2",
        "bastionpw",
        "proxypw",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
}

#[test]
fn credential_sources() {
    let src = |extra| good(Ebs, extra).access().credential_source();
    assert_eq!(
        src(json!({"profile": "customprofile"})),
        CredentialSource::SharedFile {
            profile: Some("customprofile".into()),
            file: None
        }
    );
    assert_eq!(
        src(json!({"shared_credentials_file": "/c"})),
        CredentialSource::SharedFile {
            profile: None,
            file: Some("/c".into())
        }
    );
    assert_eq!(
        src(json!({})),
        CredentialSource::DefaultChain {
            skip_metadata_api_check: false
        }
    );
}

#[test]
fn accessors() {
    let c = good(Chroot, json!({}));
    assert!(c.run().is_none() && c.comm().is_none() && c.ami().is_some());
    assert_eq!(c.source_ami(), Some("ami-e81d5881"));
    assert_eq!(c.region(), None);
    let v = good(EbsVolume, json!({}));
    assert!(v.ami().is_none() && v.run().is_some());
    assert_eq!(v.region(), Some("us-east-1"));
    for t in BuilderType::ALL {
        let c = good(t, json!({}));
        assert_eq!(c.builder_type(), t);
        let back: BuilderConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}

#[test]
fn known_keys_cover_the_seed_documents() {
    let ebs = known_keys(Ebs);
    for k in [
        "access_key",
        "secret_key",
        "region",
        "profile",
        "token",
        "ami_name",
        "instance_type",
        "source_ami",
        "ssh_username",
        "ssh_port",
        "ssh_timeout",
        "ami_block_device_mappings",
        "launch_block_device_mappings",
        "ami_description",
        "ami_groups",
        "ami_product_codes",
        "ami_regions",
        "ami_users",
        "iam_instance_profile",
        "run_tags",
        "security_group_id",
        "security_group_ids",
        "subnet_id",
        "associate_public_ip_address",
        "tags",
        "user_data",
        "user_data_file",
        "vpc_id",
        "availability_zone",
        "ssh_private_key_file",
        "temporary_key_pair_name",
        "spot_price",
        "ssh_private_ip",
        "enhanced_networking",
    ] {
        assert!(ebs.contains(k), "amazon-ebs lacks {k}");
    }
    let inst = known_keys(Instance);
    for k in [
        "account_id",
        "s3_bucket",
        "x509_cert_path",
        "x509_key_path",
        "x509_upload_path",
        "bundle_destination",
        "bundle_prefix",
        "bundle_upload_command",
        "bundle_vol_command",
    ] {
        assert!(inst.contains(k), "amazon-instance lacks {k}");
    }
    let chroot = known_keys(Chroot);
    for k in [
        "chroot_mounts",
        "copy_files",
        "device_path",
        "command_wrapper",
        "mount_path",
        "tags",
        "ami_users",
        "ami_regions",
    ] {
        assert!(chroot.contains(k), "amazon-chroot lacks {k}");
    }
    assert!(!chroot.contains("ssh_password") && !chroot.contains("instance_type"));
}

/// The builder half of the bad-template corpus (tests/templates/bad, files not named
/// `template-*` or `provisioner-*`), run through `from_builder` alone: each file's builders must be refused
/// with every line of its `.expect` in the problems. The full runner (through `prepare`)
/// lives with the template module.
#[test]
fn bad_corpus_via_from_builder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/templates/bad");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if stem.starts_with("template-") || stem.starts_with("provisioner-") {
            continue;
        }
        let tpl: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        let mut out = Vec::new();
        for b in tpl["builders"].as_array().expect("builders") {
            let t = BuilderType::parse(b["type"].as_str().unwrap()).unwrap();
            let name = b.get("name").and_then(Value::as_str).unwrap_or(t.as_str());
            if let Err(ps) = from_builder_with_env(name, t, b.as_object().unwrap(), &no_env) {
                out.extend(ps.iter().map(|p| format!("* {p}")));
            }
        }
        let out = out.join("\n");
        let expect = std::fs::read_to_string(path.with_extension("expect"))
            .unwrap_or_else(|_| panic!("{stem}.expect missing"));
        if out.is_empty() {
            failures.push(format!("{stem}: accepted"));
        }
        for line in expect.lines().filter(|l| !l.trim().is_empty()) {
            if !out.contains(line) {
                failures.push(format!("{stem}: expected {line:?} in\n{out}"));
            }
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 60, "only {checked} corpus files");
}

#[test]
fn a_winrm_template_runs_over_ssm_with_its_timeout_and_without_its_credentials() {
    let c = good(
        Ebs,
        json!({"communicator": "winrm", "winrm_username": "Administrator",
               "winrm_password": "s3cret", "winrm_use_ssl": true, "winrm_insecure": true,
               "windows_password_timeout": "20m",
               "winrm_timeout": "25m", "iam_instance_profile": "ssm-core"}),
    );
    let comm = c.comm().unwrap();
    assert!(comm.is_ssm(), "{comm:?}");
    assert_eq!(
        comm.ssm_timeout.as_std().as_secs(),
        25 * 60,
        "winrm_timeout is the agent wait"
    );
    // An explicit ssm_timeout wins over the WinRM one.
    let c = good(
        Ebs,
        json!({"communicator": "winrm", "winrm_timeout": "25m", "ssm_timeout": "7m",
               "iam_instance_profile": "ssm-core"}),
    );
    assert_eq!(c.comm().unwrap().ssm_timeout.as_std().as_secs(), 7 * 60);
}
