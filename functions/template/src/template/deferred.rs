//! Fields that Packer renders later, with build data: each builder's
//! `Prepare` excludes them from interpolation and a step renders them with
//! `.SourceAMIName`, `.BuildRegion`, `.Device`, `.Command` …. At prepare, user variables
//! and functions in them are resolved; actions that use build data are kept.
//!
//! `ami_name` is not among them: Packer renders it at prepare, so `{{ .SourceAMIName }}`
//! there is an error in Packer and here (`build_data_where_packer_renders_at_prepare_is_a_problem`
//! in prepare_tests.rs).

use crate::config::BuilderType;

const TAGS: [&str; 12] = [
    "fleet_tags",
    "fleet_tag",
    "run_tags",
    "run_tag",
    "run_volume_tags",
    "run_volume_tag",
    "spot_tags",
    "spot_tag",
    "snapshot_tags",
    "snapshot_tag",
    "tags",
    "tag",
];

/// Top-level keys of the builder that are rendered later.
pub fn deferred_keys(t: BuilderType) -> Vec<&'static str> {
    match t {
        BuilderType::Ebs | BuilderType::EbsSurrogate => {
            let mut k = vec!["ami_description"];
            k.extend(TAGS);
            k
        }
        BuilderType::EbsVolume => TAGS
            .iter()
            .copied()
            .filter(|k| !k.starts_with("snapshot_tag"))
            .collect(),
        BuilderType::Chroot => vec![
            "ami_description",
            "snapshot_tags",
            "snapshot_tag",
            "tags",
            "tag",
            "root_volume_tags",
            "root_volume_tag",
            "command_wrapper",
            "post_mount_commands",
            "pre_mount_commands",
            "mount_path",
        ],
        BuilderType::Instance => {
            let mut k = vec![
                "ami_description",
                "bundle_upload_command",
                "bundle_vol_command",
            ];
            k.extend(TAGS);
            k
        }
    }
}

/// Whether a value at `path` (keys from the builder's top, array indexes dropped, e.g.
/// `["ebs_volumes", "tags"]`) is rendered later.
pub fn is_deferred(t: BuilderType, path: &[&str]) -> bool {
    match path {
        [top] => deferred_keys(t).contains(top),
        // ebsvolume tags each volume and its snapshot in `stepTagEBSVolumes`.
        ["ebs_volumes", inner] => {
            t == BuilderType::EbsVolume
                && matches!(*inner, "tags" | "tag" | "snapshot_tags" | "snapshot_tag")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_the_reference() {
        assert!(is_deferred(BuilderType::Ebs, &["ami_description"]));
        assert!(is_deferred(BuilderType::Ebs, &["run_tags"]));
        assert!(!is_deferred(BuilderType::Ebs, &["ami_name"]));
        assert!(!is_deferred(BuilderType::Ebs, &["command_wrapper"]));
        assert!(is_deferred(BuilderType::Chroot, &["command_wrapper"]));
        assert!(is_deferred(BuilderType::Chroot, &["mount_path"]));
        assert!(!is_deferred(BuilderType::Chroot, &["run_tags"]));
        assert!(is_deferred(BuilderType::Instance, &["bundle_vol_command"]));
        assert!(!is_deferred(BuilderType::EbsVolume, &["ami_description"]));
        assert!(is_deferred(
            BuilderType::EbsVolume,
            &["ebs_volumes", "tags"]
        ));
        assert!(!is_deferred(BuilderType::Ebs, &["ebs_volumes", "tags"]));
    }
}
