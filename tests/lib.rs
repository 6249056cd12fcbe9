//! Shared harness for the end-to-end tests: local servers (moto, sshd), started on free
//! 127.0.0.1 ports and stopped by their own PID.

pub mod sshd;
