//! RunSourceInstance: launches the source instance (on-demand, or spot through
//! RunInstances' spot market options) with a ClientToken, tagged at creation.
//!
//! Spot: RunInstances with `InstanceMarketOptions` rather than Packer's launch template +
//! instant fleet: one call, one resource, the same ClientToken idempotency and tagging as
//! on-demand; the one-time spot request ends with the instance. With `spot_instance_types`
//! the types are tried in order while EC2 answers that it has no capacity for one (Packer's
//! fleet request picks among them the same way, by capacity).

use aws_sdk_ec2::types::{
    HttpTokensState, IamInstanceProfileSpecification, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceNetworkInterfaceSpecification, MarketType, Placement, ShutdownBehavior,
    SpotInstanceType, SpotMarketOptions,
};
use base64::Engine;

use crate::builders::block_devices::mappings;
use crate::prelude::*;
use crate::steps::iam_instance_profile::gets_profile;

pub const SPEC: StepSpec = StepSpec {
    name: "RunSourceInstance",
    iam_actions: &IAM_ACTIONS,
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// Its own, and what EC2 needs of it to encrypt a launch volume (`resources/kms.rs`).
const IAM_ACTIONS: [&str; 10] = crate::steps::actions(
    &[
        "ec2:RunInstances",
        "ec2:DescribeInstances",
        "ec2:CreateTags",
        "iam:PassRole",
        // A deployed build's sensitive variables, revealed in the user data
        // (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    &crate::resources::kms::EBS_ENCRYPTION_ACTIONS,
);

/// What a local build calls here: DescribeInstances (a retry's own instance), RunInstances
/// tagged at creation (CreateTags), PassRole when the instance gets a profile
/// ([`gets_profile`]: `iam_instance_profile` or a temporary one), and the KMS actions EC2
/// uses on the caller's behalf when a launch volume is encrypted.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let mut calls = vec![
        "ec2:DescribeInstances",
        "ec2:RunInstances",
        "ec2:CreateTags",
    ];
    if gets_profile(&build.config) {
        calls.push("iam:PassRole");
    }
    if build
        .config
        .launch_block_device_mappings()
        .into_iter()
        .any(crate::resources::kms::encrypts)
    {
        calls.extend(crate::resources::kms::EBS_ENCRYPTION_ACTIONS);
    }
    calls
}

/// EC2's answers that another instance type may not get: no capacity for it here, or the
/// spot price too low for it.
fn no_capacity(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InsufficientInstanceCapacity"
                | "InsufficientCapacity"
                | "SpotMaxPriceTooLow"
                | "InsufficientCapacityOnHost"
                | "Unsupported"
        )
    )
}

/// User data, base64-encoded unless it already is (Packer's rule), with the sensitive
/// variables it uses revealed (the instance gets the value, as in Packer).
pub fn user_data(
    cfg: &RunConfig,
    files: &crate::template_files::TemplateFiles,
    secrets: &crate::provision::Secrets,
) -> Result<Option<String>, StepError> {
    let raw = match (&cfg.user_data, &cfg.user_data_file) {
        (Some(d), _) if !d.is_empty() => d.clone(),
        (_, Some(f)) if !f.is_empty() => files
            .read_to_string("user_data_file", f)
            .map_err(StepError::BuildFailed)?,
        _ => return Ok(None),
    };
    let raw = secrets.reveal(&raw);
    let b64 = base64::engine::general_purpose::STANDARD;
    if b64.decode(raw.trim()).is_ok() {
        Ok(Some(raw.trim().to_string()))
    } else {
        Ok(Some(b64.encode(raw.as_bytes())))
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let build = state.build.config.clone();
    let cfg = run_config(&state, SPEC.name)?.clone();
    let region = build.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let ami = state.data.source_ami.clone().ok_or_else(|| {
        StepError::BuildFailed(
            "RunSourceInstance: no source AMI in the state (SourceAmiInfo must run first)".into(),
        )
    })?;
    // amazon-instance launches any root type and sends no shutdown behaviour (Packer's
    // StepRunSourceInstance without ExpectedRootDevice); the EBS builders need an EBS root.
    let ebs_backed = state.build.builder_type != amiflow_template::BuilderType::Instance;
    if let Some(t) = state
        .data
        .extra
        .get("source_root_device_type")
        .and_then(|v| v.as_str())
    {
        if ebs_backed && t != "ebs" {
            return Err(StepError::BuildFailed(format!(
                "source AMI {ami}: root device type {t}, {} needs ebs",
                state.build.builder_type.as_str()
            )));
        }
    }
    // A retried step (or a lost response) finds the instance it launched: by the build's
    // tags (one source instance per build), and EC2 itself dedupes by the ClientToken.
    let token = client_token(&state, SPEC.name);
    let mut lookup = own_filters(&state);
    lookup.push(filter(
        "instance-state-name",
        ["pending", "running", "stopping", "stopped"],
    ));
    let found = ec2
        .describe_instances()
        .set_filters(Some(lookup))
        .send()
        .await
        .map_err(|e| classify("DescribeInstances", &token, e))?;
    let existing = found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .cloned();

    let instance = match existing {
        Some(i) => i,
        None => {
            // instance_type, or each of spot_instance_types in turn while EC2 has no capacity.
            let instance_types = cfg.instance_types();
            let run_tags = render_tags(
                &ctx.secrets,
                "run_tags",
                &cfg.run_tags,
                &state.data,
                &region,
            )?;
            let volume_tags = render_tags(
                &ctx.secrets,
                "run_volume_tags",
                build.run_volume_tags(),
                &state.data,
                &region,
            )?;
            let mut req = ec2
                .run_instances()
                .image_id(&ami)
                .min_count(1)
                .max_count(1)
                .set_user_data(user_data(
                    &cfg,
                    &crate::template_files::TemplateFiles::of(ctx),
                    &ctx.secrets,
                )?)
                .set_key_name(state.data.key_pair_name.clone())
                .set_block_device_mappings(
                    Some(mappings(
                        build.launch_block_device_mappings(),
                        build.no_ephemeral(),
                    ))
                    .filter(|m| !m.is_empty()),
                )
                .tag_specifications(tag_spec(ResourceType::Instance, &state, &run_tags))
                .tag_specifications(tag_spec(ResourceType::NetworkInterface, &state, &run_tags))
                .tag_specifications(tag_spec(ResourceType::Volume, &state, &volume_tags));
            if cfg.ebs_optimized {
                req = req.ebs_optimized(true);
            }
            if let Some(p) = &state.data.instance_profile {
                req = req.iam_instance_profile(
                    IamInstanceProfileSpecification::builder().name(p).build(),
                );
            }
            if let Some(az) = &state.data.availability_zone {
                req = req.placement(Placement::builder().availability_zone(az).build());
            }
            let m = &cfg.metadata_options;
            if m.http_endpoint == "enabled" {
                req = req.metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .http_tokens(HttpTokensState::from(m.http_tokens.as_str()))
                        .http_put_response_hop_limit(m.http_put_response_hop_limit as i32)
                        .instance_metadata_tags(InstanceMetadataTagsState::from(
                            m.instance_metadata_tags.as_str(),
                        ))
                        .build(),
                );
            } else {
                req = req.metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_endpoint(InstanceMetadataEndpointState::Disabled)
                        .build(),
                );
            }
            if cfg.is_spot() {
                let spot_tags = render_tags(
                    &ctx.secrets,
                    "spot_tags",
                    &cfg.spot_tags,
                    &state.data,
                    &region,
                )?;
                req = req.tag_specifications(tag_spec(
                    ResourceType::SpotInstancesRequest,
                    &state,
                    &spot_tags,
                ));
                let mut spot =
                    SpotMarketOptions::builder().spot_instance_type(SpotInstanceType::OneTime);
                if let Some(p) = cfg.spot_price.as_deref().filter(|p| *p != "auto") {
                    spot = spot.max_price(p);
                }
                req = req.instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .spot_options(spot.build())
                        .build(),
                );
            } else if ebs_backed {
                req = req.instance_initiated_shutdown_behavior(ShutdownBehavior::from(
                    cfg.shutdown_behavior.as_str(),
                ));
            }
            match (&state.data.subnet_id, cfg.associate_public_ip_address) {
                (Some(subnet), Some(public)) => {
                    req = req.network_interfaces(
                        InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .associate_public_ip_address(public)
                            .subnet_id(subnet)
                            .set_groups(Some(state.data.security_group_ids.clone()))
                            .delete_on_termination(true)
                            .build(),
                    );
                }
                (subnet, _) => {
                    req = req.set_subnet_id(subnet.clone()).set_security_group_ids(
                        Some(state.data.security_group_ids.clone()).filter(|v| !v.is_empty()),
                    );
                }
            }
            let mut launched = None;
            for (i, instance_type) in instance_types.iter().enumerate() {
                // One ClientToken per type: EC2 dedupes each attempt, not the fallback.
                let attempt_token = if i == 0 {
                    token.clone()
                } else {
                    format!("{token}-{i}")
                };
                let attempt = req
                    .clone()
                    .client_token(&attempt_token)
                    .instance_type(instance_type.as_str().into());
                // EC2 answers "no capacity" as a 500, which the SDK would retry ten times
                // with backoff before the next type gets its chance: with a next type to try,
                // one attempt here; throttling then comes back as Transient and the state's
                // Retry runs the step again (the tag lookup above keeps that idempotent).
                let result = if i + 1 < instance_types.len() {
                    attempt
                        .customize()
                        .config_override(
                            aws_sdk_ec2::config::Config::builder()
                                .retry_config(aws_config::retry::RetryConfig::disabled()),
                        )
                        .send()
                        .await
                } else {
                    attempt.send().await
                };
                match result {
                    Err(e) if i + 1 < instance_types.len() && no_capacity(error_code(&e)) => {
                        tracing::warn!(
                            "RunInstances {instance_type}: {}; trying {} (spot_instance_types)",
                            error_code(&e).unwrap_or_default(),
                            instance_types[i + 1]
                        );
                    }
                    other => {
                        launched = Some(other);
                        break;
                    }
                }
            }
            let launched = launched.ok_or_else(|| {
                StepError::BuildFailed("RunInstances: no instance type to launch".into())
            })?;
            let out = launched.map_err(|e| match error_code(&e) {
                Some("InvalidParameterValue") if format!("{e:?}").contains("iamInstanceProfile") => {
                    StepError::Transient(format!("RunInstances: instance profile not usable yet: {e:?}"))
                }
                Some("VPCIdNotSpecified") => StepError::BuildFailed(
                    "RunInstances: a valid Subnet Id was not specified: set subnet_id or subnet_filter (the account has no default VPC)".into(),
                ),
                _ => classify("RunInstances", &ami, e),
            })?;
            out.instances()
                .first()
                .cloned()
                .ok_or_else(|| StepError::BuildFailed("RunInstances returned no instance".into()))?
        }
    };
    let id = instance.instance_id().unwrap_or_default().to_string();
    state
        .ledger
        .record(ResourceKind::Instance, &region, &id, false);
    if let Some(spot) = instance.spot_instance_request_id() {
        state
            .ledger
            .record(ResourceKind::SpotRequest, &region, spot, false);
    }
    state.data.instance_id = Some(id);
    waits::INSTANCE_RUNNING.begin(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;
    use crate::steps::prepare::fixture::build;

    #[test]
    fn the_profile_is_passed_only_when_the_instance_gets_one() {
        assert!(!local_calls(&build(json!({}))).contains(&"iam:PassRole"));
        assert!(
            local_calls(&build(json!({"iam_instance_profile": "builder"})))
                .contains(&"iam:PassRole")
        );
    }

    #[test]
    fn an_encrypted_launch_volume_needs_what_ebs_encryption_asks_of_the_caller() {
        let encrypted = local_calls(&build(json!({"launch_block_device_mappings": [
            {"device_name": "/dev/sdf", "volume_size": 10, "encrypted": true, "kms_key_id": "alias/k"}
        ]})));
        for action in crate::resources::kms::EBS_ENCRYPTION_ACTIONS {
            assert!(encrypted.contains(&action), "{action}: {encrypted:?}");
            assert!(SPEC.iam_actions.contains(&action), "{action}");
        }
        assert!(local_calls(&build(json!({})))
            .iter()
            .all(|a| !a.starts_with("kms:")));
    }

    #[tokio::test]
    async fn user_data_carries_the_sensitive_value_not_its_placeholder() {
        let ctx = Ctx::from_sdk_config(aws_config::SdkConfig::builder().build());
        let mut cfg: RunConfig =
            serde_json::from_value(serde_json::json!({ "instance_type": "t3.micro" })).unwrap();
        cfg.user_data = Some("#!/bin/sh\necho <sensitive:pw> > /etc/pw\n".into());
        let secrets =
            crate::provision::Secrets::from_pairs([("pw".to_string(), "hunter2".to_string())]);
        let encoded = user_data(
            &cfg,
            &crate::template_files::TemplateFiles::of(&ctx),
            &secrets,
        )
        .unwrap()
        .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "#!/bin/sh\necho hunter2 > /etc/pw\n"
        );
    }
}
