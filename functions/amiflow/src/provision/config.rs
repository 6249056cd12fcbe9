//! The typed provisioner configs live in the template crate, so that Prepare validates them
//! before anything exists; re-exported here for the code that runs them.

pub use amiflow_template::provisioner::*;
