//! The sensitive variables of a deployed build, whose values never enter the execution's
//! input, its history, a state or a log: `amiflow start` stores each as a SecureString
//! parameter under the execution's path ([`parameter_name`]) and passes only the names
//! (`"sensitive_vars": {"NAME": "/amiflow/<execution>/vars/NAME"}`); Prepare reads them to
//! validate the template and keeps the names in each build state; the Lambda binary reads
//! them again for the steps that use them ([`REVEALING_STEPS`], [`for_invocation`]), which
//! reveal the `<sensitive:NAME>` placeholders at the moment of use; Finalize removes them,
//! and the janitor with everything else under the execution's path (`key_pair::sweep`).
//!
//! Only parameters under the execution's own `vars/` path are read: a starter cannot name
//! another build's temporary key (also under `/amiflow/`) as a "variable" and have it
//! revealed onto an instance.

use std::collections::BTreeMap;

use aws_sdk_ssm::types::{ParameterType, Tag as SsmTag};
use serde_json::Value;

use super::key_pair::{parameter_path, PARAMETER_NOT_FOUND};
use crate::error::{classify, error_code, or_absent};
use crate::provision::Secrets;
use crate::state::BUILD_TAG;
use crate::{Ctx, StepError};

/// The steps that reveal sensitive values (commands, scripts, files and environment sent to
/// the instance, user data, tags): the Lambda binary reads the parameters for these only,
/// and each declares `ssm:GetParameter` (a test checks), reaching the sensitive variables
/// ([`Reach::SensitiveVars`](super::Reach::SensitiveVars)) when it needs nothing else under `/amiflow/`.
pub const REVEALING_STEPS: &[&str] = &[
    "RunSourceInstance",
    "Connect",
    "Provision",
    "ErrorCleanupProvision",
    // amazon-chroot's job: provisioners run on the build host (staged in S3 when revealed).
    "RunHostScript",
    // Masks the host script's output (what it printed of the revealed job).
    "WaitHostScript",
    // Tags (`render_tags`): run_tags, tags, snapshot_tags, volume tags, spot_tags.
    "CreateImage",
    "CreateSnapshot",
    "CreateTags",
    "CreateVolume",
    "IamInstanceProfile",
    "KeyPair",
    "RegisterImage",
    "SecurityGroup",
    "SnapshotVolumes",
    "TagVolumes",
    "WaitImageAvailable",
    // Reveals nothing, but reads the source image's tags back: the binary conceals in every
    // revealing step's output the values it read (a value the template wrote on the image).
    "SourceAmiInfo",
];

/// Where `amiflow start` keeps the value of `name` for `execution` (normalized, see
/// [`crate::state::build_id`]): `/amiflow/<execution>/vars/<name>`.
pub fn parameter_name(execution: &str, name: &str) -> String {
    format!(
        "{}vars/{}",
        parameter_path(execution, None),
        super::key_pair::parameter_part(name)
    )
}

/// Refuses a reference outside the execution's own `vars/` path.
pub fn check_reference(execution: &str, name: &str, path: &str) -> Result<(), String> {
    let expected = parameter_name(execution, name);
    if path == expected {
        return Ok(());
    }
    Err(format!(
        "sensitive_vars.{name}: {path:?} is not this execution's parameter; `amiflow start` stores the value at {expected}"
    ))
}

/// Stores each (name, value) as a SecureString under the execution's path, tagged with the
/// build tag; returns name → parameter name, what the execution input carries. On a failure
/// the parameters already stored are removed again.
pub async fn store(
    ssm: &aws_sdk_ssm::Client,
    execution: &str,
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, StepError> {
    let mut stored = BTreeMap::new();
    for (name, value) in values {
        let parameter = parameter_name(execution, name);
        let tag = SsmTag::builder()
            .key(BUILD_TAG)
            .value(execution)
            .build()
            .map_err(|e| StepError::BuildFailed(e.to_string()))?;
        let put = ssm
            .put_parameter()
            .name(&parameter)
            .description("amiflow: a sensitive variable of one execution")
            .r#type(ParameterType::SecureString)
            .value(value)
            .tags(tag)
            .send()
            .await;
        if let Err(e) = put {
            let err = if error_code(&e) == Some("ParameterAlreadyExists") {
                StepError::BuildFailed(format!(
                    "{parameter} exists already: an execution of this name was started before; choose another --name"
                ))
            } else {
                classify("PutParameter", &parameter, e)
            };
            remove(ssm, stored.values()).await;
            return Err(err);
        }
        stored.insert(name.clone(), parameter);
    }
    Ok(stored)
}

/// Removes the parameters, best effort (absent counts as removed); each failure is logged.
pub async fn remove<'a>(ssm: &aws_sdk_ssm::Client, parameters: impl Iterator<Item = &'a String>) {
    for p in parameters {
        let out = ssm.delete_parameter().name(p).send().await;
        if let Err(e) = or_absent(out, &[PARAMETER_NOT_FOUND], "DeleteParameter", p) {
            tracing::warn!("sensitive variable {p} was not removed: {}", e.message());
        }
    }
}

/// The values of `references` (name → parameter), decrypted, as the secrets that reveal
/// their placeholders. A missing parameter is named with what to do.
pub async fn read(
    ctx: &Ctx,
    execution: &str,
    references: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, StepError> {
    let region = ctx.own_region();
    let ssm = ctx.ssm(&region);
    let mut values = BTreeMap::new();
    for (name, parameter) in references {
        check_reference(&ctx.parameter_owner(execution), name, parameter)
            .map_err(StepError::InvalidTemplate)?;
        let out = ssm
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await;
        let value = match or_absent(out, &[PARAMETER_NOT_FOUND], "GetParameter", parameter)? {
            Some(out) => out
                .parameter()
                .and_then(|p| p.value())
                .unwrap_or_default()
                .to_string(),
            None => {
                return Err(StepError::BuildFailed(format!(
                    "the sensitive variable {name} is gone: {parameter} ({region}) does not exist (removed after the build ended, \
                     or never stored): start the build again with `amiflow start`"
                )))
            }
        };
        values.insert(name.clone(), value);
    }
    Ok(values)
}

/// The secrets an invocation of `step` reveals with: read from Parameter Store when the
/// step is one of [`REVEALING_STEPS`] and its input (a build state) names sensitive
/// variables; otherwise the Ctx's own (a local run's).
pub async fn for_invocation(
    ctx: &Ctx,
    step: &str,
    input: &Value,
) -> Result<Option<Secrets>, StepError> {
    if !REVEALING_STEPS.contains(&step) {
        return Ok(None);
    }
    let Some(references) = input
        .get("sensitive_vars")
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
    else {
        return Ok(None);
    };
    let references: BTreeMap<String, String> = serde_json::from_value(references.clone())
        .map_err(|e| StepError::BuildFailed(format!("sensitive_vars in the build state: {e}")))?;
    let execution = input["execution"].as_str().unwrap_or_default();
    let values = read(ctx, execution, &references).await?;
    Ok(Some(Secrets::from_pairs(values)))
}

/// [`remove_all`] where the run's outcome stands either way (Finalize, Notify): a failure
/// is logged, and the janitor sweeps what is left.
pub async fn remove_all_best_effort(ctx: &Ctx, execution: &str) {
    if let Err(e) = remove_all(ctx, execution).await {
        tracing::warn!(
            "the sensitive variables under /amiflow/{execution}/vars/ were not removed: {}",
            e.message()
        );
    }
}

/// Removes every sensitive variable of `execution` in the function's own region (where
/// `amiflow start` stored them): Finalize once the builds are done, the janitor after a sweep.
pub async fn remove_all(ctx: &Ctx, execution: &str) -> Result<Vec<String>, StepError> {
    let region = ctx.own_region();
    let path = format!(
        "{}vars/",
        parameter_path(&ctx.parameter_owner(execution), None)
    );
    let names = super::key_pair::parameters_under(ctx, &region, &path).await?;
    let ssm = ctx.ssm(&region);
    remove(&ssm, names.iter()).await;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_only_the_executions_own_vars() {
        assert_eq!(
            parameter_name("build-1", "db_password"),
            "/amiflow/build-1/vars/db_password"
        );
        assert!(check_reference("build-1", "pw", "/amiflow/build-1/vars/pw").is_ok());
        for other in [
            "/amiflow/build-2/vars/pw",
            "/amiflow/build-1/web/ssh-key",
            "/amiflow/build-1/vars/other",
            "/amiflow-x509/key",
            "/prod/db/password",
        ] {
            let err = check_reference("build-1", "pw", other).unwrap_err();
            assert!(err.contains("/amiflow/build-1/vars/pw"), "{err}");
        }
    }

    #[tokio::test]
    async fn only_revealing_steps_read_and_only_with_references() {
        // A closed port, no credentials: any call would fail, so Ok(None) means none was made.
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let ctx = Ctx::from_sdk_config(sdk);
        let named = serde_json::json!({"execution": "b-1", "sensitive_vars": {"pw": "/amiflow/b-1/vars/pw"}});
        for step in ["Cleanup", "Finalize", "StopInstance"] {
            assert!(
                for_invocation(&ctx, step, &named).await.unwrap().is_none(),
                "{step}"
            );
        }
        let none = serde_json::json!({"execution": "b-1"});
        assert!(for_invocation(&ctx, "Provision", &none)
            .await
            .unwrap()
            .is_none());
        // A revealing step with references reads them (and, here, fails to).
        assert!(for_invocation(&ctx, "Provision", &named).await.is_err());
    }

    #[test]
    fn each_revealing_step_may_read_the_parameters() {
        for name in REVEALING_STEPS {
            let spec = crate::flows::find(name).unwrap_or_else(|| panic!("{name} is a step"));
            assert!(
                spec.iam_actions.contains(&"ssm:GetParameter"),
                "{name} reveals sensitive variables but may not read them"
            );
        }
    }
}
