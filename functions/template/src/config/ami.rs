//! AMI configuration (ebs, ebssurrogate, chroot, instance), with its defaults and rules.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::check::{templated, Check};
use super::common::Tags;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AmiConfig {
    /// Required; rendered at prepare time (3–128 chars of `[A-Za-z0-9()[] ./-'@_]`).
    #[serde(default)]
    pub ami_name: String,
    /// May hold `{{ .SourceAMI }}` etc.: rendered by the step that sets it.
    #[serde(default)]
    pub ami_description: Option<String>,
    /// `hvm` or `paravirtual`; unset = inherit from the source.
    #[serde(default)]
    pub ami_virtualization_type: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_users: Vec<String>,
    /// Only `all` is accepted by AWS.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_groups: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_org_arns: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_ou_arns: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_product_codes: Vec<String>,
    /// Regions to copy to; de-duplicated, and the build region removed, by `from_builder`.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_regions: Vec<String>,
    #[serde(default)]
    pub snapshot_copy_duration_minutes: Option<i64>,
    /// On the AMI and its snapshots; values may hold `{{...}}` rendered with build data.
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub tags: Tags,
    /// Trilean: unset keeps the source's setting.
    #[serde(default)]
    pub ena_support: Option<bool>,
    #[serde(default)]
    pub sriov_support: bool,
    /// Legacy (Packer ≤ 1.0): `true` means `sriov_support` and `ena_support`.
    /// `from_builder` folds it into those two; steps read only the new keys.
    #[serde(default)]
    pub enhanced_networking: Option<bool>,
    #[serde(default)]
    pub force_deregister: bool,
    #[serde(default)]
    pub force_delete_snapshot: bool,
    /// Trilean: unset keeps the source's encryption; true copies to an encrypted AMI.
    #[serde(default)]
    pub encrypt_boot: Option<bool>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Region → KMS key for the copies; must cover `ami_regions` (and the build region).
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub region_kms_key_ids: BTreeMap<String, String>,
    #[serde(default)]
    pub skip_save_build_region: bool,
    /// Only `v2.0`.
    #[serde(default)]
    pub imds_support: Option<String>,
    /// RFC 3339 time, e.g. `2030-01-01T00:00:00Z`.
    #[serde(default)]
    pub deprecate_at: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub snapshot_tags: Tags,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub snapshot_users: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub snapshot_groups: Vec<String>,
    #[serde(default)]
    pub deregistration_protection: Option<DeregistrationProtection>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeregistrationProtection {
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub with_cooldown: bool,
}

impl AmiConfig {
    /// Folds the legacy `enhanced_networking` into its successors; drops from `ami_regions`
    /// the duplicates and the region the build runs in.
    pub(super) fn normalize(&mut self, build_region: Option<&str>) {
        if self.enhanced_networking == Some(true) {
            self.sriov_support = true;
            self.ena_support.get_or_insert(true);
        }
        let mut seen = BTreeSet::new();
        self.ami_regions
            .retain(|r| Some(r.as_str()) != build_region && seen.insert(r.clone()));
    }

    /// Packer's rules; `skip_region_validation` is the access config's.
    pub(super) fn check(&self, c: &mut Check, skip_region_validation: bool) {
        let name = self.ami_name.as_str();
        if name.is_empty() {
            c.err("ami_name", "required: set ami_name, e.g. \"my-image {{timestamp}}\" (it must be unique in the region)");
        } else if !templated(name) {
            let len = name.chars().count();
            if !(3..=128).contains(&len) {
                c.err(
                    "ami_name",
                    format!(
                        "bad AMI name: {len} characters; AMI names are 3 to 128 characters long"
                    ),
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
            self.ami_virtualization_type.as_deref(),
            &["hvm", "paravirtual"],
        );
        for g in self
            .ami_groups
            .iter()
            .filter(|g| !templated(g) && g.as_str() != "all")
        {
            c.err("ami_groups", format!("invalid value {g:?}: AWS only accepts \"all\" (public); share with accounts through ami_users"));
        }
        c.accounts("ami_users", &self.ami_users);
        c.accounts("snapshot_users", &self.snapshot_users);
        for g in self
            .snapshot_groups
            .iter()
            .filter(|g| !templated(g) && g.as_str() != "all")
        {
            c.err(
                "snapshot_groups",
                format!("invalid value {g:?}: AWS only accepts \"all\""),
            );
        }
        c.one_of("imds_support", self.imds_support.as_deref(), &["v2.0"]);
        if let Some(at) = self.deprecate_at.as_deref().filter(|s| !templated(s)) {
            if chrono::DateTime::parse_from_rfc3339(at).is_err() {
                c.err(
                    "deprecate_at",
                    format!(
                        "{at:?} is not an RFC 3339 time; write it like \"2030-01-31T00:00:00Z\""
                    ),
                );
            }
        }
        if let Some(m) = self.snapshot_copy_duration_minutes {
            if m < 15 || m % 15 != 0 {
                c.err(
                    "snapshot_copy_duration_minutes",
                    format!("out of range: {m}; must be a multiple of 15, at least 15"),
                );
            }
        }
        c.unsupported(
            "snapshot_copy_duration_minutes",
            self.snapshot_copy_duration_minutes.is_some(),
            "CopyImage makes standard copies, without a completion time (time-based copies are \
             not requested): remove it",
        );
        if !skip_region_validation {
            for r in &self.ami_regions {
                c.region("ami_regions", r);
            }
            for r in self.region_kms_key_ids.keys() {
                c.region("region_kms_key_ids", r);
            }
        }
        self.check_encryption(c);
        if let Some(dp) = &self.deregistration_protection {
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

    /// The KMS keys, and sharing what they encrypt.
    fn check_encryption(&self, c: &mut Check) {
        let encrypt = self.encrypt_boot == Some(true);
        if let Some(k) = self.kms_key_id.as_deref() {
            if !encrypt {
                c.err("kms_key_id", "requires encrypt_boot: true (a KMS key only applies when the boot volume is encrypted)");
            }
            c.kms_key("kms_key_id", k);
        }
        if !self.region_kms_key_ids.is_empty() {
            if !encrypt {
                c.err("region_kms_key_ids", "requires encrypt_boot: true");
            }
            for r in self
                .ami_regions
                .iter()
                .filter(|r| !self.region_kms_key_ids.contains_key(*r))
            {
                c.err("region_kms_key_ids", format!("region {r} is in ami_regions but has no key in region_kms_key_ids; add it (\"\" for the region's default key)"));
            }
            for (r, k) in self
                .region_kms_key_ids
                .iter()
                .filter(|(_, k)| !k.is_empty())
            {
                c.kms_key(&format!("region_kms_key_ids.{r}"), k);
            }
        }
        let shares = !self.ami_users.is_empty()
            || !self.ami_org_arns.is_empty()
            || !self.ami_ou_arns.is_empty();
        let default_key = encrypt
            && self.kms_key_id.is_none()
            && self.region_kms_key_ids.values().all(|k| k.is_empty());
        if shares && default_key {
            c.err("encrypt_boot", "cannot share an AMI encrypted with the default KMS key (ami_users / ami_org_arns / ami_ou_arns): set kms_key_id to a customer managed key");
        }
        if !self.snapshot_users.is_empty() && default_key {
            c.err("snapshot_users", "cannot share snapshots encrypted with the default KMS key: set kms_key_id to a customer managed key");
        }
    }
}

/// The image's boot keys, which ebssurrogate and chroot keep among their own keys.
pub(super) fn check_boot(c: &mut Check, arch: &str, boot_mode: Option<&str>, tpm: Option<&str>) {
    c.one_of(
        "ami_architecture",
        Some(arch),
        &["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"],
    );
    c.one_of(
        "boot_mode",
        boot_mode,
        &["legacy-bios", "uefi", "uefi-preferred"],
    );
    c.one_of("tpm_support", tpm, &["v2.0"]);
}
