//! The subcommands that talk to a deployed amiflow, as a library so the end-to-end tests can
//! drive them against the emulator: `start`, `watch`, `clean`, `redrive`/`abandon`,
//! `approve`/`reject` and `policy`.

pub mod approve;
pub mod clean;
pub mod pipeline_file;
pub mod policy;
pub mod redrive;
pub mod start;
pub mod template_file;
pub mod watch;
