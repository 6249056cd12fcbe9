//! Steps invoked by hand the way the state machine runs them: each state's Retry on
//! NotReady/Transient, and its Catch (`$.error` set, then Cleanup).

use std::sync::Arc;

use amiflow::state::CaughtError;
use amiflow::{flows, BuildState, Ctx, StepError};

/// One handler call, through the registry the Lambda binary and the local engine use.
pub async fn invoke(
    ctx: &Arc<Ctx>,
    step: &str,
    state: &BuildState,
) -> Result<BuildState, StepError> {
    let spec = flows::find(step).unwrap_or_else(|| panic!("step {step} is not registered"));
    let out = (spec.handler)(ctx.clone(), serde_json::to_value(state).unwrap()).await?;
    Ok(serde_json::from_value(out).unwrap())
}

/// The state's Retry, quickly (moto is instant): up to `max` retries.
pub async fn retry_up_to(
    ctx: &Arc<Ctx>,
    step: &str,
    state: &BuildState,
    max: u32,
) -> Result<BuildState, StepError> {
    let mut attempts = 0;
    loop {
        match invoke(ctx, step, state).await {
            // CommandSent: as the callback state that awaits the command would, look again.
            Err(StepError::NotReady(m) | StepError::Transient(m) | StepError::CommandSent(m))
                if attempts < max =>
            {
                attempts += 1;
                eprintln!("  {step}: retry {attempts}: {m}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// [`retry_up_to`] with the budget every test step gets.
pub async fn invoke_with_retry(
    ctx: &Arc<Ctx>,
    step: &str,
    state: &BuildState,
) -> Result<BuildState, StepError> {
    retry_up_to(ctx, step, state, 30).await
}

/// Catch → Cleanup with `$.error` set, as the state machine does.
pub async fn fail_and_clean(ctx: &Arc<Ctx>, mut state: BuildState, err: &StepError) -> BuildState {
    state.error = Some(CaughtError {
        error: err.name().into(),
        cause: err.message().into(),
    });
    invoke_with_retry(ctx, "Cleanup", &state)
        .await
        .expect("Cleanup after a failure succeeds")
}
