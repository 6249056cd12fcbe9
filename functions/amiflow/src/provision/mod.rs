//! Provisioning: Packer's `shell`, `file` and `shell-local` provisioners, run over SSH
//! (russh), over SSM RunCommand (`communicator: "ssm"`), or locally; and its Windows ones
//! (`powershell`, `windows-shell`, `windows-restart`) over SSM ([`windows`]).
//!
//! - [`config`]: the typed provisioner configs (from `amiflow_template::provisioner`).
//! - [`plan`]: a remote provisioner as plain actions (upload, exec, mkdir, download).
//! - [`run`]: the driver: runs the provisioners in order over a [`session::Session`], with
//!   `pause_before`/`pause_after`, retries, timeouts and the Lambda invocation deadline,
//!   runs `shell-local` itself and masks every error.
//! - [`session`]: what the driver needs from a communicator, the options every provisioner
//!   runs with, and the session of `communicator: "none"`.
//! - The sessions: [`ssh`] runs a plan action by action within the invocation (over its
//!   [`transport::Transport`]); [`ssm`] sends one command per provisioner and answers
//!   "pending" until it has finished. [`local`] runs `shell-local` on this machine.
//! - [`communicator`]: the build's communicator settings and SSH credentials.
//! - [`transport`]: command output ([`transport::OutputSink`]) and the SSH-style transport.
//! - [`render`]: run-time interpolation (`{{.Path}}`, `{{build `X`}}`) and [`Secrets`].

pub mod communicator;
pub mod config;
pub mod local;
pub mod plan;
pub mod render;
pub mod run;
pub mod session;
pub mod ssh;
pub mod ssm;
pub mod transport;
pub mod windows;

pub use config::{parse_all, validate_provisioner, Provisioner};
pub use render::Secrets;
