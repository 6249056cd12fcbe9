//! Provisioning: Packer's `shell`, `file` and `shell-local` provisioners, run over SSH
//! (russh), over SSM RunCommand (`communicator: "ssm"`), or locally.
//!
//! - [`config`]: the typed provisioner configs (from `amiflow_template::provisioner`).
//! - [`plan`]: a remote provisioner as plain actions (upload, exec, mkdir, download).
//! - [`run`]: runs them in order over a [`transport::Transport`] (SSH), with retries,
//!   timeouts and the Lambda invocation deadline.
//! - [`ssh`], [`local`], [`ssm`]: the communicators.
//! - [`render`]: run-time interpolation (`{{.Path}}`, `{{build `X`}}`) and [`Secrets`].

pub mod communicator;
pub mod config;
pub mod local;
pub mod plan;
pub mod render;
pub mod run;
pub mod ssh;
pub mod ssm;
pub mod transport;

pub use config::{parse_all, validate_provisioner, Provisioner};
pub use render::Secrets;
