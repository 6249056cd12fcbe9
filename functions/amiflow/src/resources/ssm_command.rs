//! SSM commands: RunHostScript's host script (amazon-chroot) and the SSM communicator's
//! provisioner commands. They are not tagged; a build finds its own by the build-unique
//! comment it sent them with (`provision/ssm.rs`, `steps/run_host_script.rs`). A command
//! ends by itself (its execution timeout); a stopped build's janitor cancels those still
//! running ([`cancel_running`]), so that the host script unmounts (its TERM trap) before
//! the sweep detaches its volume.

use aws_sdk_ssm::types::CommandStatus;

use super::Reach;
use crate::error::{classify, error_code};
use crate::Ctx;

/// Commands go only to the builds' own instances, with `AWS-RunShellScript` or
/// `AWS-RunPowerShellScript` (the SSM communicator); RunHostScript narrows this to the stack's build host and document.
pub const REACH: &[(&str, Reach)] = &[("ssm:SendCommand", Reach::BuildInstanceCommand)];

/// The document the SSM communicator runs its commands with.
pub const SHELL_DOCUMENT: &str = "AWS-RunShellScript";
/// The document it runs a Windows build's provisioners with (`provision/windows.rs`).
pub const POWERSHELL_DOCUMENT: &str = "AWS-RunPowerShellScript";
/// Every document the builds' commands may name: the deployed grant lists exactly these.
pub const BUILD_DOCUMENTS: [&str; 2] = [SHELL_DOCUMENT, POWERSHELL_DOCUMENT];

/// GetCommandInvocation's answer while the invocation is not visible yet.
pub const NOT_VISIBLE_YET: &str = "InvocationDoesNotExist";

/// Whether an error of GetCommandInvocation means "not visible yet" (poll again); any
/// other error is classified.
pub fn not_visible_yet<E, R>(err: &aws_sdk_ssm::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    error_code(err) == Some(NOT_VISIBLE_YET)
}

/// ListCommands' largest page.
const LIST_PAGE: i32 = 50;
/// How many pages of a region's newest commands are looked at when the execution's start
/// is unknown.
pub const NEWEST_PAGES: usize = 4;

/// What cancelling a stopped build's commands needs. Neither action authorizes on a
/// resource (IAM's reference lists none for either), so both are granted on `*`; only the
/// commands whose comment names the execution are cancelled.
pub const CANCEL_ACTIONS: [&str; 2] = ["ssm:ListCommands", "ssm:CancelCommand"];

/// Cancels the execution's SSM commands still pending or running in `region` (found by
/// comment: only those of this state machine's execution, `state_machine` empty for a local
/// build), returning what it cancelled. With the execution's start, every command sent since
/// then is looked at, however many other commands the region ran meanwhile; without it, the
/// region's [`NEWEST_PAGES`] newest pages. Best effort: what it cannot list or cancel is
/// logged, and the sweep goes on.
pub async fn cancel_running(
    ctx: &Ctx,
    region: &str,
    state_machine: &str,
    execution: &str,
    started: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<String> {
    let ssm = ctx.ssm(region);
    let mut cancelled = Vec::new();
    let mut next: Option<String> = None;
    // Key and value are both set: the filter always builds.
    let since = started.and_then(|t| {
        aws_sdk_ssm::types::CommandFilter::builder()
            .key(aws_sdk_ssm::types::CommandFilterKey::InvokedAfter)
            .value(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .build()
            .ok()
    });
    for page_number in 0.. {
        if since.is_none() && page_number == NEWEST_PAGES {
            break;
        }
        let page = match ssm
            .list_commands()
            .max_results(LIST_PAGE)
            .set_filters(since.clone().map(|f| vec![f]))
            .set_next_token(next.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(%region, error = %classify("ListCommands", region, e), "cannot list the region's commands");
                break;
            }
        };
        for c in page.commands() {
            let running = matches!(
                c.status(),
                Some(CommandStatus::Pending | CommandStatus::InProgress)
            );
            let ours = c.comment().is_some_and(|m| {
                crate::steps::run_host_script::is_host_script_of(m, state_machine, execution)
                    || crate::provision::ssm::is_provisioner_command_of(m, state_machine, execution)
            });
            let Some(id) = c.command_id().filter(|_| running && ours) else {
                continue;
            };
            // Best effort: a command that ended meanwhile, or a refusal, must not keep the
            // sweep from running (it says what it could not remove).
            match ssm.cancel_command().command_id(id).send().await {
                Ok(_) => cancelled.push(format!("SSM command {id} ({region}), cancelled")),
                Err(e) => {
                    tracing::warn!(command = id, %region, error = %classify("CancelCommand", id, e), "cannot cancel the command")
                }
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    cancelled
}
