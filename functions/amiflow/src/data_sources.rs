//! The AWS reads behind an HCL2 template's data sources (`amiflow_template::hcl2::data`):
//! `amazon-ami` (DescribeImages), `amazon-parameterstore` (GetParameter) and
//! `amazon-secretsmanager` (GetSecretValue), with the caller's credential chain, as Packer
//! reads them while it loads a template. The CLI hands [`AwsDataLookup`] to the template
//! crate, which stays free of AWS.

use std::sync::Arc;

use amiflow_template::hcl2::data::{DataLookup, DataSources};
use aws_smithy_types::error::display::DisplayErrorContext;
use serde_json::{json, Value};

use crate::Ctx;

/// Reads data sources with the process's credential chain (and `AWS_ENDPOINT_URL`).
pub struct AwsDataLookup;

impl AwsDataLookup {
    pub fn sources() -> DataSources {
        DataSources(Arc::new(AwsDataLookup))
    }
}

impl DataLookup for AwsDataLookup {
    fn lookup(&self, kind: &str, config: &Value) -> Result<Value, String> {
        // The template crate is synchronous and may be called from inside the CLI's
        // runtime: the read runs on a thread of its own with its own small runtime.
        let (kind, config) = (kind.to_string(), config.clone());
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("cannot start a runtime for the data source: {e}"))?;
                    runtime.block_on(async move {
                        let ctx = Ctx::from_env().await;
                        read(&ctx, &kind, &config).await
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the data source's read panicked".into()))
        })
    }
}

/// One data source's attributes.
pub async fn read(ctx: &Ctx, kind: &str, config: &Value) -> Result<Value, String> {
    let region = config["region"]
        .as_str()
        .map(String::from)
        .or_else(|| ctx.sdk.region().map(|r| r.to_string()))
        .ok_or("no region: set `region` in the data block, or AWS_REGION")?;
    match kind {
        "amazon-ami" => ami(ctx, &region, config).await,
        "amazon-parameterstore" => parameter(ctx, &region, config).await,
        "amazon-secretsmanager" => secret(ctx, &region, config).await,
        other => Err(format!("amiflow does not read data source `{other}`")),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Packer's amazon-ami: the image the filters and owners find; more than one only with
/// `most_recent` (the newest).
async fn ami(ctx: &Ctx, region: &str, config: &Value) -> Result<Value, String> {
    let mut req = ctx.ec2(region).describe_images();
    for (name, values) in config["filters"].as_object().into_iter().flatten() {
        let values: Vec<String> = match values {
            Value::Array(a) => a.iter().map(text_of).collect(),
            other => vec![text_of(other)],
        };
        req = req.filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(name)
                .set_values(Some(values))
                .build(),
        );
    }
    for owner in config["owners"].as_array().into_iter().flatten() {
        req = req.owners(text_of(owner));
    }
    if let Some(d) = config["include_deprecated"].as_bool() {
        req = req.include_deprecated(d);
    }
    if config["filters"].as_object().is_none_or(|f| f.is_empty()) && config["owners"].is_null() {
        return Err("set `filters` or `owners`: without them every public image matches".into());
    }
    let out = req
        .send()
        .await
        .map_err(|e| format!("DescribeImages: {}", DisplayErrorContext(&e)))?;
    let mut images: Vec<_> = out.images().to_vec();
    if images.is_empty() {
        return Err(format!(
            "no AMI was found matching filters {} and owners {} in {region}",
            config["filters"], config["owners"]
        ));
    }
    if images.len() > 1 && config["most_recent"].as_bool() != Some(true) {
        return Err(format!(
            "{} AMIs match: make the filters more specific, or set most_recent = true",
            images.len()
        ));
    }
    images.sort_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    let image = images.pop().expect("one at least");
    let tags: serde_json::Map<String, Value> = image
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), json!(t.value().unwrap_or_default()))))
        .collect();
    Ok(json!({
        "id": image.image_id().unwrap_or_default(),
        "name": image.name().unwrap_or_default(),
        "creation_date": image.creation_date().unwrap_or_default(),
        "owner": image.owner_id().unwrap_or_default(),
        "owner_name": image.image_owner_alias().unwrap_or_default(),
        "root_device_type": image.root_device_type().map(|t| t.as_str()).unwrap_or_default(),
        "tags": tags,
    }))
}

/// Packer's amazon-parameterstore: one parameter's value (decrypted with
/// `with_decryption`), version and ARN.
async fn parameter(ctx: &Ctx, region: &str, config: &Value) -> Result<Value, String> {
    let name = config["name"]
        .as_str()
        .ok_or("set `name`: the parameter to read")?;
    let out = ctx
        .ssm(region)
        .get_parameter()
        .name(name)
        .with_decryption(config["with_decryption"].as_bool().unwrap_or(false))
        .send()
        .await
        .map_err(|e| format!("GetParameter {name}: {}", DisplayErrorContext(&e)))?;
    let p = out
        .parameter()
        .ok_or("GetParameter answered no parameter")?;
    Ok(json!({
        "value": p.value().unwrap_or_default(),
        "version": p.version().to_string(),
        "arn": p.arn().unwrap_or_default(),
    }))
}

/// Packer's amazon-secretsmanager: a secret's string (or one `key` of its JSON), its
/// binary form base64-encoded, its version and ARN.
async fn secret(ctx: &Ctx, region: &str, config: &Value) -> Result<Value, String> {
    let name = config["name"]
        .as_str()
        .ok_or("set `name`: the secret to read")?;
    let out = ctx
        .secrets_manager(region)
        .get_secret_value()
        .secret_id(name)
        .set_version_id(config["version_id"].as_str().map(String::from))
        .set_version_stage(config["version_stage"].as_str().map(String::from))
        .send()
        .await
        .map_err(|e| format!("GetSecretValue {name}: {}", DisplayErrorContext(&e)))?;
    let string = out.secret_string().unwrap_or_default().to_string();
    let value = match config["key"].as_str() {
        None => string.clone(),
        Some(key) => {
            let parsed: Value = serde_json::from_str(&string)
                .map_err(|_| format!("secret {name} is not JSON, so it has no key `{key}`"))?;
            match parsed.get(key) {
                Some(v) => text_of(v),
                None => return Err(format!("secret {name} has no key `{key}`")),
            }
        }
    };
    use base64::Engine as _;
    let binary = out
        .secret_binary()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
        .unwrap_or_default();
    Ok(json!({
        "value": value,
        "secret_string": string,
        "secret_binary": binary,
        "version_id": out.version_id().unwrap_or_default(),
        "arn": out.arn().unwrap_or_default(),
    }))
}
