//! SSM commands: RunHostScript's host script (amazon-chroot) and the SSM communicator's
//! provisioner commands. They are not tagged; a build finds its own by the build-unique
//! comment it sent them with (`provision/ssm.rs`). A command ends by itself (its execution
//! timeout), so no sweep removes one; what a build removes is what it staged for it.

use super::Reach;
use crate::error::error_code;

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
