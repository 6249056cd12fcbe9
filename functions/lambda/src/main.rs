//! The one `bootstrap` binary: every amiflow step as a Lambda function.
//!
//! Each deployed function runs this same binary; the handler name Lambda gives a custom
//! runtime in `_HANDLER` (the SAM `Handler` property) picks the step. Without `_HANDLER`
//! the function's name is tried (`amiflow-CreateImage`, `stack-CreateImageFunction-X1Y2`).
//!
//! A step's [`StepError`] is reported with `errorType` = its name (`NotReady`, `Transient`,
//! `BuildFailed`, `InvalidTemplate`): Step Functions' Retry and Catch match on that string.
//! lambda_runtime would otherwise derive `errorType` from the Rust type name
//! (`From<E> for Diagnostic` uses `std::any::type_name`), so the handler returns a
//! [`Diagnostic`] built from the step error itself.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use amiflow::flows;
use amiflow::lambda_api::{handler_name, known_handlers};
use amiflow::resources::sensitive_var;
use amiflow::steps::StepSpec;
use amiflow::{Ctx, StepError};
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let step = match resolve_step(
        std::env::var("_HANDLER").ok(),
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
    ) {
        Ok(step) => step,
        Err(message) => {
            tracing::error!(error_type = "UnknownHandler", "{message}");
            report_init_error("UnknownHandler", &message).await;
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(handler = step.name, "starting");
    // One Ctx per cold start: the SDK config (credentials, endpoints, HTTP pool) and the
    // clients are reused by every invocation this sandbox serves.
    let mut cold_start = Ctx::from_env().await;
    cold_start.in_lambda = true;
    let handler = step.handler;
    let name = step.name;
    let result = lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        // Provision stops its commands before Lambda's limit kills the sandbox mid-command.
        let mut ctx = invocation_ctx(&cold_start, event.context.deadline);
        async move {
            // A deployed build's sensitive variables, read for the steps that reveal them
            // and dropped with this invocation's Ctx.
            let revealed = sensitive_var::for_invocation(&ctx, name, &event.payload).await;
            let result = match revealed {
                Ok(Some(secrets)) => {
                    ctx.secrets = secrets.clone();
                    // What the step read back from AWS goes on concealed again.
                    handler(Arc::new(ctx), event.payload)
                        .await
                        .map(|out| secrets.conceal_value(out))
                }
                Ok(None) => handler(Arc::new(ctx), event.payload).await,
                Err(e) => Err(e),
            };
            result.map_err(|e| {
                log_step_error(name, &event.context.request_id, &e);
                Diagnostic {
                    error_type: e.name().to_string(),
                    error_message: e.message().to_string(),
                }
            })
        }
    }))
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "runtime loop ended");
            ExitCode::FAILURE
        }
    }
}

/// The cold-start `Ctx` (sharing its clients) with one invocation's deadline, which the
/// Runtime API gives as epoch milliseconds (`Lambda-Runtime-Deadline-Ms`). A deadline
/// already past is now.
fn invocation_ctx(cold_start: &Ctx, deadline_epoch_ms: u64) -> Ctx {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let left = u128::from(deadline_epoch_ms).saturating_sub(now_ms);
    let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
    let mut ctx = cold_start.clone();
    ctx.deadline = Some(tokio::time::Instant::now() + left);
    ctx
}

/// JSON lines on stdout (CloudWatch keeps one event per line). Level from
/// `AWS_LAMBDA_LOG_LEVEL` (Lambda's advanced logging control) or `RUST_LOG`; info by default.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|l| EnvFilter::try_new(l.to_lowercase()).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .init();
}

fn log_step_error(step: &str, request_id: &str, e: &StepError) {
    match e {
        // A wait that is not ready yet is the normal course of things, not an error.
        StepError::NotReady(m) => tracing::info!(step, request_id, error_type = e.name(), "{m}"),
        _ => tracing::error!(step, request_id, error_type = e.name(), "{}", e.message()),
    }
}

/// The step this sandbox serves: `_HANDLER` when set (and then it must name a step), else
/// the part of the function name that names one.
fn resolve_step(
    handler: Option<String>,
    function_name: Option<String>,
) -> Result<StepSpec, String> {
    if let Some(h) = handler.filter(|h| !h.trim().is_empty()) {
        return flows::find(&handler_name(h.trim())).ok_or_else(|| {
            format!(
                "_HANDLER={h:?} names no amiflow step; set the function's Handler to one of: {}",
                known_handlers()
            )
        });
    }
    let Some(function) = function_name else {
        return Err(format!(
            "neither _HANDLER nor AWS_LAMBDA_FUNCTION_NAME is set; set the Handler to one of: {}",
            known_handlers()
        ));
    };
    std::iter::once(function.as_str())
        .chain(function.split('-'))
        .find_map(|candidate| flows::find(&handler_name(candidate)))
        .ok_or_else(|| {
            format!(
                "_HANDLER is not set and the function name {function:?} contains no amiflow step name; \
                 set the function's Handler to one of: {}",
                known_handlers()
            )
        })
}

/// Tells Lambda why init failed (`/runtime/init/error`), so the invoke that started this
/// sandbox fails with our message instead of a bare exit status.
async fn report_init_error(error_type: &str, message: &str) {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        return;
    }
    let body = serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string();
    let request = lambda_runtime_api_client::build_request()
        .method("POST")
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", "Runtime.InitError")
        .body(lambda_runtime_api_client::body::Body::from(body));
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    match request {
        Ok(request) => {
            if let Err(e) = client.call(request).await {
                tracing::error!(error = %e, "could not report the init error to the Runtime API");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not build the init error report"),
    }
}

#[cfg(test)]
mod tests {
    use super::{invocation_ctx, resolve_step};
    use amiflow::Ctx;
    use std::time::Duration;
    use tokio::time::Instant;

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[tokio::test]
    async fn the_invocation_deadline_reaches_the_step_and_only_its_invocation() {
        let mut cold_start = Ctx::from_sdk_config(aws_config::SdkConfig::builder().build());
        cold_start.in_lambda = true;
        let in_ten_minutes = now_ms() + 600_000;
        let invocation = invocation_ctx(&cold_start, in_ten_minutes);
        let seen = invocation.deadline.expect("a deadline");
        assert!(invocation.in_lambda);
        let left = seen.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(595) && left <= Duration::from_secs(600),
            "{left:?}"
        );
        let past = invocation_ctx(&cold_start, now_ms() - 5_000)
            .deadline
            .unwrap();
        assert!(
            past <= Instant::now(),
            "a deadline already passed is now, not later"
        );
        assert_eq!(
            cold_start.deadline, None,
            "outside an invocation there is none"
        );
    }

    #[test]
    fn unknown_handler_lists_the_known_ones() {
        let err = resolve_step(Some("NoSuchStep".into()), None).unwrap_err();
        assert!(
            err.contains("NoSuchStep") && err.contains("Finalize") && err.contains("Prepare"),
            "{err}"
        );
    }

    #[test]
    fn handler_wins_over_function_name_and_name_is_a_fallback() {
        assert_eq!(
            resolve_step(Some("Finalize".into()), Some("x-Prepare".into()))
                .unwrap()
                .name,
            "Finalize"
        );
        assert_eq!(
            resolve_step(None, Some("amiflow-PrepareFunction-AB12CD".into()))
                .unwrap()
                .name,
            "Prepare"
        );
        assert_eq!(
            resolve_step(
                Some("arn:aws:lambda:us-east-1:1:function:Prepare".into()),
                None
            )
            .unwrap()
            .name,
            "Prepare"
        );
        assert!(resolve_step(None, Some("unrelated".into())).is_err());
    }
}
