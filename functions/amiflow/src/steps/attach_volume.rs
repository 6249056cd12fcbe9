//! AttachVolume: attaches the build volume to the host under a free device name, chosen
//! from the host's current block device mappings and the volumes attached to it,
//! `/dev/sdf` … `/dev/sdp` (Packer's letters; xvd names count as their sd twins). A name
//! another build took in the meantime (EC2 answers InvalidParameterValue / in use) makes it
//! try the next, so parallel builds on one host work. `device_path` pins the name.

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "AttachVolume",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ec2:DescribeVolumes",
        "ec2:AttachVolume",
    ],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeVolumes (a retried step's own attachment) and
/// AttachVolume always; DescribeInstances (the host's devices in use) only without
/// `device_path` ([`pinned_device`]).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let pinned = match &build.config {
        amiflow_template::BuilderConfig::Chroot(c) => pinned_device(c).is_some(),
        _ => false,
    };
    let mut calls = vec!["ec2:DescribeVolumes"];
    if !pinned {
        calls.push("ec2:DescribeInstances");
    }
    calls.push("ec2:AttachVolume");
    calls
}

/// `device_path`, when it pins the device name (else a free one is looked for).
pub(crate) fn pinned_device(cfg: &amiflow_template::config::chroot::ChrootConfig) -> Option<&str> {
    cfg.device_path.as_deref().filter(|d| !d.is_empty())
}

/// `/dev/xvdf` and `xvdf` are `/dev/sdf` to EC2.
pub fn ec2_name(device: &str) -> String {
    let base = device.trim_start_matches("/dev/");
    let base = base
        .strip_prefix("xvd")
        .map(|r| format!("sd{r}"))
        .unwrap_or_else(|| base.to_string());
    format!("/dev/{base}")
}

/// Free names in Packer's order, given the names in use.
pub fn free_names(used: &[String]) -> Vec<String> {
    let used: Vec<String> = used.iter().map(|u| ec2_name(u)).collect();
    ('f'..='p')
        .map(|c| format!("/dev/sd{c}"))
        .filter(|n| {
            !used.iter().any(|u| {
                u == n
                    || u.starts_with(n.as_str()) && u[n.len()..].chars().all(|c| c.is_ascii_digit())
            })
        })
        .collect()
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = chroot::config(&state)?.clone();
    let region = state.build.config.build_region().to_string();
    let host = chroot::host(&state, "AttachVolume")?;
    let mut vol = chroot::volume(&state, "AttachVolume")?;
    let ec2 = ctx.ec2(&region);

    // A retried step finds its own attachment.
    if let Some(v) = crate::resources::volume::describe(ctx, &region, &vol.volume_id).await? {
        if let Some((device, _)) = crate::resources::volume::attachment_to(&v, &host.instance_id) {
            vol.device = Some(device);
            chroot::set_volume(&mut state, &vol);
            waits::VOLUME_ATTACHED.begin(&mut state);
            return Ok(state);
        }
    }

    let candidates = match pinned_device(&cfg) {
        Some(d) => vec![ec2_name(d)],
        None => {
            let mut used: Vec<String> = Vec::new();
            let inst = ec2
                .describe_instances()
                .instance_ids(&host.instance_id)
                .send()
                .await
                .map_err(|e| classify("DescribeInstances", &host.instance_id, e))?;
            for i in inst.reservations().iter().flat_map(|r| r.instances()) {
                used.extend(
                    i.block_device_mappings()
                        .iter()
                        .filter_map(|m| m.device_name().map(String::from)),
                );
                used.extend(i.root_device_name().map(String::from));
            }
            let vols = ec2
                .describe_volumes()
                .filters(filter("attachment.instance-id", [host.instance_id.clone()]))
                .send()
                .await
                .map_err(|e| classify("DescribeVolumes", &host.instance_id, e))?;
            for v in vols.volumes() {
                used.extend(
                    v.attachments()
                        .iter()
                        .filter_map(|a| a.device().map(String::from)),
                );
            }
            let free = free_names(&used);
            if free.is_empty() {
                return Err(StepError::Transient(format!(
                    "available device could not be found: /dev/sdf../dev/sdp are all in use on {}",
                    host.instance_id
                )));
            }
            free
        }
    };
    let mut last = String::new();
    for device in &candidates {
        match ec2
            .attach_volume()
            .volume_id(&vol.volume_id)
            .instance_id(&host.instance_id)
            .device(device)
            .send()
            .await
        {
            Ok(_) => {
                vol.device = Some(device.clone());
                chroot::set_volume(&mut state, &vol);
                waits::VOLUME_ATTACHED.begin(&mut state);
                return Ok(state);
            }
            Err(e) if candidates.len() > 1 && is_name_clash(&e) => {
                last = format!("{e:?}");
                continue;
            }
            Err(e) => {
                return Err(classify(
                    "AttachVolume",
                    &format!("{} as {device} on {}", vol.volume_id, host.instance_id),
                    e,
                ))
            }
        }
    }
    // Every name was taken between the look and the attach: look again.
    Err(StepError::Transient(format!(
        "AttachVolume {}: every free device name was taken meanwhile ({last})",
        vol.volume_id
    )))
}

fn is_name_clash<E: aws_sdk_ec2::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_ec2::error::SdkError<E, R>,
) -> bool {
    let msg = match e {
        aws_sdk_ec2::error::SdkError::ServiceError(s) => {
            s.err().message().unwrap_or("").to_ascii_lowercase()
        }
        _ => String::new(),
    };
    error_code(e) == Some("InvalidParameterValue")
        || msg.contains("already in use")
        || msg.contains("is already being used")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_skip_used_letters_in_either_spelling() {
        let used = vec![
            "/dev/xvda".to_string(),
            "/dev/sdf".to_string(),
            "xvdg".to_string(),
            "/dev/sdh1".to_string(),
        ];
        let free = free_names(&used);
        assert_eq!(free.first().map(String::as_str), Some("/dev/sdi"));
        assert_eq!(free.len(), 8);
        assert_eq!(ec2_name("/dev/xvdf"), "/dev/sdf");
    }

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn a_pinned_device_path_looks_at_no_host_devices() {
        let free = local_calls(&build(
            "amazon-chroot",
            serde_json::json!({"device_path": ""}),
        ));
        assert!(free.contains(&"ec2:DescribeInstances"), "{free:?}");
        let pinned = local_calls(&build(
            "amazon-chroot",
            serde_json::json!({"device_path": "/dev/sdg"}),
        ));
        assert_eq!(pinned, vec!["ec2:DescribeVolumes", "ec2:AttachVolume"]);
    }
}
