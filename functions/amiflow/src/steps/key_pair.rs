//! KeyPair: a temporary EC2 key pair (rsa or ed25519) whose private key goes to SSM
//! Parameter Store as a SecureString for the build's lifetime, never into the state.

use aws_sdk_ec2::types::{KeyFormat, KeyType};
use aws_sdk_ssm::types::{ParameterType, Tag as SsmTag};

use crate::prelude::*;
use crate::resources::key_pair;

pub const SPEC: StepSpec = StepSpec {
    name: "KeyPair",
    iam_actions: &[
        "ec2:CreateKeyPair",
        "ec2:DescribeKeyPairs",
        "ec2:DeleteKeyPair",
        "ec2:CreateTags",
        "ssm:PutParameter",
        "ssm:GetParameter",
        "ssm:AddTagsToResource",
    ],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: for a temporary key pair ([`key_pair::made_for`]: SSH
/// without `ssh_keypair_name`, `ssh_private_key_file`, `ssh_agent_auth` or `ssh_password`)
/// DescribeKeyPairs and GetParameter (a retry's own pair and key), CreateKeyPair tagged at
/// creation (CreateTags) and PutParameter tagged (AddTagsToResource); else nothing.
/// DeleteKeyPair only replaces a retry's pair whose key was never stored.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if !key_pair::made_for(&build.config) {
        return Vec::new();
    }
    vec![
        "ec2:DescribeKeyPairs",
        "ssm:GetParameter",
        "ec2:CreateKeyPair",
        "ec2:CreateTags",
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
    ]
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let comm = comm_config(&state, SPEC.name)?.clone();
    if let Some(name) = comm.ssh_keypair_name.as_deref().filter(|s| !s.is_empty()) {
        state.data.key_pair_name = Some(name.to_string());
        return Ok(state);
    }
    // `ssh_password` never enters the build state (the config does not serialize it): a
    // local run hands it over in the secrets, and it logs in with it.
    if !key_pair::made_for(&cfg) || ctx.secrets.ssh_password().is_some() {
        return Ok(state);
    }
    let region = cfg.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let ssm = ctx.ssm(&region);
    let name = comm
        .temporary_key_pair_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| temp_name(&state, "amiflow", "KeyPair"));
    let param = key_pair::parameter_name(&ctx.parameter_owner(&state.execution), &state.build.name);

    // A retried step finds its key pair; reuse it only if its private key was stored.
    let existing = match key_pair::describe(ctx, &region, &name).await? {
        None => false,
        // Only ever replace our own: the name may be a user's `temporary_key_pair_name`.
        Some(k)
            if !k.tags().iter().any(|t| {
                t.key() == Some(BUILD_TAG) && t.value() == Some(state.execution.as_str())
            }) =>
        {
            return Err(StepError::BuildFailed(format!(
                "a key pair named {name} already exists in {region} and is not this build's: \
                 set temporary_key_pair_name to an unused name (or leave it out)"
            )))
        }
        Some(_) => true,
    };
    let stored = key_pair::parameter_exists(ctx, &region, &param).await?;
    if !(existing && stored) {
        if existing {
            key_pair::remove(ctx, &region, &name).await?;
        }
        let key_type = match comm.temporary_key_pair_type.as_str() {
            "ed25519" => KeyType::Ed25519,
            "rsa" => KeyType::Rsa,
            other => {
                return Err(StepError::BuildFailed(format!(
                    "temporary_key_pair_type {other:?}: use \"rsa\" or \"ed25519\""
                )));
            }
        };
        let run_tags = render_tags(
            &ctx.secrets,
            "run_tags",
            cfg.run_tags(),
            &state.data,
            &region,
        )?;
        let out = ec2
            .create_key_pair()
            .key_name(&name)
            .key_type(key_type)
            .key_format(KeyFormat::Pem)
            .tag_specifications(tag_spec(ResourceType::KeyPair, &state, &run_tags))
            .send()
            .await
            .map_err(|e| classify("CreateKeyPair", &name, e))?;
        state
            .ledger
            .record(ResourceKind::KeyPair, &region, &name, false);
        let material = out.key_material().ok_or_else(|| {
            StepError::BuildFailed(format!(
                "CreateKeyPair {name}: AWS returned no key material"
            ))
        })?;
        let tags: Vec<SsmTag> = build_tags(&state)
            .into_iter()
            .map(|(k, v)| SsmTag::builder().key(k).value(v).build().unwrap())
            .collect();
        let put = ssm
            .put_parameter()
            .name(&param)
            .description(format!("amiflow temporary SSH key {name}"))
            .r#type(ParameterType::SecureString)
            .value(material)
            .set_tags(Some(tags))
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("ParameterAlreadyExists") => {
                // A half-finished earlier attempt stored a key for a pair that is now gone.
                ssm.put_parameter()
                    .name(&param)
                    .r#type(ParameterType::SecureString)
                    .value(material)
                    .overwrite(true)
                    .send()
                    .await
                    .map_err(|e| classify("PutParameter", &param, e))?;
            }
            Err(e) => return Err(classify("PutParameter", &param, e)),
        }
    }
    state
        .ledger
        .record(ResourceKind::KeyPair, &region, &name, false);
    state
        .ledger
        .record(ResourceKind::Parameter, &region, &param, false);
    state.data.key_pair_name = Some(name);
    state.data.private_key_parameter = Some(param);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn only_a_temporary_key_pair_calls_anything() {
        let ssh = json!({"communicator": "ssh", "ssh_username": "ec2-user"});
        assert_eq!(local_calls(&build(ssh.clone())).len(), 6);
        assert!(
            local_calls(&build(json!({}))).is_empty(),
            "communicator none"
        );
        for own in [
            json!({"ssh_keypair_name": "mine", "ssh_private_key_file": "k"}),
            json!({"ssh_private_key_file": "k"}),
            json!({"ssh_password": "pw"}),
        ] {
            let mut keys = ssh.clone();
            keys.as_object_mut()
                .unwrap()
                .extend(own.as_object().unwrap().clone());
            assert!(local_calls(&build(keys.clone())).is_empty(), "{keys}");
        }
    }
}
