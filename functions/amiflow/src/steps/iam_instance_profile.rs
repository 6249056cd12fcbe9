//! IamInstanceProfile: an existing profile (validated), or a temporary role + inline
//! policy + profile from `temporary_iam_instance_profile_policy_document`; `NotReady`
//! until EC2 accepts the new profile (IAM is eventually consistent).

use aws_sdk_iam::types::Tag as IamTag;

use crate::prelude::*;
use crate::resources::iam::{self, ALREADY_EXISTS, IAM_PATH};

pub const SPEC: StepSpec = StepSpec {
    name: "IamInstanceProfile",
    iam_actions: &[
        "iam:GetInstanceProfile",
        "iam:CreateInstanceProfile",
        "iam:CreateRole",
        "iam:GetRole",
        "iam:PutRolePolicy",
        "iam:AddRoleToInstanceProfile",
        "iam:TagRole",
        "iam:TagInstanceProfile",
        "iam:PassRole",
        "ec2:RunInstances",
        // Tags may use sensitive variables (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: Some(waits::PROFILE_USABLE),
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: for a named `iam_instance_profile` GetInstanceProfile
/// (unless `skip_profile_validation`); for a temporary profile
/// (`temporary_iam_instance_profile_policy_document`) CreateRole and CreateInstanceProfile
/// tagged (TagRole, TagInstanceProfile), PutRolePolicy, GetInstanceProfile,
/// AddRoleToInstanceProfile and the RunInstances dry run; PassRole with either (the
/// instance gets the profile); nothing without a profile.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(run) = build.config.run() else {
        return Vec::new();
    };
    if named_profile(run).is_some() {
        return if run.skip_profile_validation {
            vec!["iam:PassRole"]
        } else {
            vec!["iam:GetInstanceProfile", "iam:PassRole"]
        };
    }
    if !iam::made_for(&build.config) {
        return Vec::new();
    }
    vec![
        "iam:CreateRole",
        "iam:TagRole",
        "iam:PutRolePolicy",
        "iam:CreateInstanceProfile",
        "iam:TagInstanceProfile",
        "iam:GetInstanceProfile",
        "iam:AddRoleToInstanceProfile",
        "iam:PassRole",
        "ec2:RunInstances",
    ]
}

/// The existing profile the template names (`iam_instance_profile`).
pub(crate) fn named_profile(run: &RunConfig) -> Option<&str> {
    run.iam_instance_profile
        .as_deref()
        .filter(|s| !s.is_empty())
}

/// Whether the source instance gets an instance profile (so launching it passes the
/// profile's role): a named one, or the temporary one.
pub(crate) fn gets_profile(config: &amiflow_template::BuilderConfig) -> bool {
    config.run().and_then(named_profile).is_some() || iam::made_for(config)
}

const ASSUME_EC2: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let cfg = run_config(&state, SPEC.name)?.clone();
    let iam = ctx.iam();
    if let Some(name) = named_profile(&cfg) {
        if !cfg.skip_profile_validation {
            iam.get_instance_profile()
                .instance_profile_name(name)
                .send()
                .await
                .map_err(|e| classify("GetInstanceProfile", name, e))?;
        }
        state.data.instance_profile = Some(name.to_string());
        return Ok(state);
    }
    let Some(doc) = &cfg.temporary_iam_instance_profile_policy_document else {
        return Ok(state);
    };
    let name = iam::temporary_name(&state);
    let tags: Vec<IamTag> = build_tags(&state)
        .into_iter()
        .chain(render_tags(
            &ctx.secrets,
            "run_tags",
            &cfg.run_tags,
            &state.data,
            &region,
        )?)
        .map(|(k, v)| IamTag::builder().key(k).value(v).build().unwrap())
        .collect();

    match iam
        .create_role()
        .role_name(&name)
        .path(IAM_PATH)
        .description("Temporary role for amiflow")
        .assume_role_policy_document(ASSUME_EC2)
        // Deployed, the stack's boundary caps what the template's policy document can
        // grant (and the function may create a role only with it).
        .set_permissions_boundary(ctx.stack.temporary_role_boundary.clone())
        .set_tags(Some(tags.clone()))
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if error_code(&e) == Some(ALREADY_EXISTS) => {}
        Err(e) => return Err(classify("CreateRole", &name, e)),
    }
    state
        .ledger
        .record(ResourceKind::Role, "global", &name, false);
    iam.put_role_policy()
        .role_name(&name)
        .policy_name(&name)
        .policy_document(serde_json::to_string(doc)?)
        .send()
        .await
        .map_err(|e| classify("PutRolePolicy", &name, e))?;
    match iam
        .create_instance_profile()
        .instance_profile_name(&name)
        .path(IAM_PATH)
        .set_tags(Some(tags))
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if error_code(&e) == Some(ALREADY_EXISTS) => {}
        Err(e) => return Err(classify("CreateInstanceProfile", &name, e)),
    }
    state
        .ledger
        .record(ResourceKind::InstanceProfile, "global", &name, false);
    let profile = iam
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await
        .map_err(|e| classify("GetInstanceProfile", &name, e))?;
    let has_role = profile
        .instance_profile()
        .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name));
    if !has_role {
        iam.add_role_to_instance_profile()
            .instance_profile_name(&name)
            .role_name(&name)
            .send()
            .await
            .map_err(|e| classify("AddRoleToInstanceProfile", &name, e))?;
    }
    state.data.instance_profile = Some(name.clone());

    // Propagation: EC2 must accept the profile. A dry run with the build's own source AMI,
    // instance type and subnet (Packer's t3.nano dry run broke arm64 builds, #675).
    if let Some(ami) = &state.data.source_ami {
        let mut dry = ctx
            .ec2(&region)
            .run_instances()
            .dry_run(true)
            .image_id(ami)
            .set_instance_type(cfg.instance_types().first().map(|t| t.as_str().into()))
            .min_count(1)
            .max_count(1)
            .iam_instance_profile(
                aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                    .name(&name)
                    .build(),
            );
        if let Some(s) = &state.data.subnet_id {
            dry = dry.subnet_id(s);
        }
        match dry.send().await {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("DryRunOperation") => {}
            Err(e) => {
                let msg = aws_sdk_ec2::error::ProvideErrorMetadata::message(&e)
                    .unwrap_or("")
                    .to_string();
                if msg.contains("Invalid IAM Instance Profile")
                    || msg.contains("iamInstanceProfile")
                {
                    return Err(StepError::NotReady(format!(
                        "instance profile {name} is not usable by EC2 yet: {msg}"
                    )));
                }
                return Err(classify("RunInstances (dry run)", &name, e));
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn a_named_profile_is_validated_and_a_temporary_one_made() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert!(!gets_profile(&build(json!({})).config));
        let named = build(json!({"iam_instance_profile": "builder"}));
        assert_eq!(
            local_calls(&named),
            ["iam:GetInstanceProfile", "iam:PassRole"]
        );
        assert!(gets_profile(&named.config));
        assert_eq!(
            local_calls(&build(
                json!({"iam_instance_profile": "builder", "skip_profile_validation": true})
            )),
            ["iam:PassRole"]
        );
        let temporary = build(json!({"temporary_iam_instance_profile_policy_document": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["*"]}]
        }}));
        let calls = local_calls(&temporary);
        assert!(calls.contains(&"iam:CreateRole") && calls.contains(&"iam:PassRole"));
        assert!(gets_profile(&temporary.config));
    }
}
