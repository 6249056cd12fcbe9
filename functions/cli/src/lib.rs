//! The subcommands that talk to a deployed amiflow, as a library so the end-to-end tests can
//! drive them against the emulator: `start`, `watch`, `clean`, `redrive`/`abandon`,
//! `approve`/`reject`, `policy`, and `validate`'s template arguments (shared with `build`).

pub mod approve;
pub mod clean;
pub mod pipeline_file;
pub mod policy;
pub mod redrive;
pub mod start;
pub mod template_file;
pub mod validate;
pub mod watch;
