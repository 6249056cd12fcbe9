//! `amiflow approve EXECUTION_ARN` and `amiflow reject EXECUTION_ARN`: the answers to a
//! deployed pipeline run waiting in its Approve state (`steps/approve.rs`).
//!
//! The waiting state's task token is a SecureString parameter under the execution's path
//! (`resources/approval_token.rs`); the answer is SendTaskSuccess (`{"approved_by": WHO}`)
//! or SendTaskFailure (error `Rejected`, the reason as cause), then the token is removed.
//! Who may answer is whoever may read and delete that parameter and call those two actions
//! (README, "approval"): grant them to the approvers, not to the starters.

use amiflow::resources::approval_token;
use anyhow::Context as _;

use crate::clean::execution_name;
use crate::redrive::sfn_for;

#[derive(clap::Args)]
pub struct Args {
    /// The execution's ARN (printed by `amiflow start`).
    pub execution: String,
    /// Why (rejecting): the failure's cause, in the execution and its notification.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who answers, as the record shows it (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
}

pub async fn run(args: Args, approve: bool) -> anyhow::Result<u8> {
    let (ctx, sfn) = sfn_for(&args.execution).await?;
    let name = execution_name(&args.execution);
    // The token lives under the path of the execution's state machine (its stack's).
    let id = amiflow::identity::parameter_owner(
        amiflow::identity::state_machine_of(&args.execution).unwrap_or_default(),
        &amiflow::state::build_id(&name),
    );
    let region = ctx.own_region();
    let ssm = ctx.ssm(&region);
    let token = approval_token::read(&ssm, &id)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .with_context(|| {
            format!(
                "{name} is not waiting for approval ({} does not exist in {region}): it was answered already, \
                 timed out, or has not reached its Approve state yet (`amiflow watch` shows where it is)",
                approval_token::parameter_name(&id)
            )
        })?;
    let who = approver(args.by.as_deref());
    let sent = if approve {
        let output = serde_json::json!({ "approved_by": who }).to_string();
        sfn.send_task_success()
            .task_token(&token)
            .output(output)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("{}", aws_sdk_sfn::error::DisplayErrorContext(e)))
    } else {
        let reason = args.reason.as_deref().unwrap_or("no reason given");
        sfn.send_task_failure()
            .task_token(&token)
            .error(amiflow::error::REJECTED)
            .cause(format!("rejected by {who}: {reason}"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("{}", aws_sdk_sfn::error::DisplayErrorContext(e)))
    };
    if let Err(e) = sent {
        anyhow::bail!(
            "{} {name}: {e}",
            if approve {
                "SendTaskSuccess"
            } else {
                "SendTaskFailure"
            }
        );
    }
    approval_token::remove(&ssm, &id)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    eprintln!(
        "{name}: {} by {who}",
        if approve {
            "approved; it publishes and retires next"
        } else {
            "rejected; its images are withdrawn"
        }
    );
    Ok(0)
}

/// Who answers, for the record: `--by`, else the local user.
fn approver(by: Option<&str>) -> String {
    by.map(String::from)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "an unnamed approver".into())
}
