//! End-to-end tests. Each module needs a piece of the local stack; a test whose
//! prerequisite is missing says so and skips.
mod deploy;
mod ebs;
mod infra;
