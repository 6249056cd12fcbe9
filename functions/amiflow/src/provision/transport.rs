//! What a provisioner needs from a communicator: run a command with its output streamed,
//! put bytes at a path, make directories, read a file back.

use std::collections::VecDeque;
use std::future::Future;

use super::render::Secrets;

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i64),
    /// Killed by a signal (name as the server reports it).
    Signal(String),
    /// The connection went away before an exit status arrived (reboots, `expect_disconnect`).
    Disconnected,
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecStatus::Exited(c) => write!(f, "exit code {c}"),
            ExecStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExecStatus::Disconnected => {
                f.write_str("the connection closed before the command reported an exit status")
            }
        }
    }
}

/// A communicator failure (not a command's non-zero exit): connection, auth, transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Receives a command's output, splits it into lines, logs each line (masked) under the
/// provisioner's name, and keeps the last lines for the error message.
pub struct OutputSink {
    label: String,
    secrets: Secrets,
    keep: usize,
    tail: VecDeque<String>,
    partial: [Vec<u8>; 2],
}

impl OutputSink {
    pub fn new(label: impl Into<String>, secrets: &Secrets) -> OutputSink {
        OutputSink {
            label: label.into(),
            secrets: secrets.clone(),
            keep: 20,
            tail: VecDeque::new(),
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// A chunk of stdout (`stderr == false`) or stderr.
    pub fn push(&mut self, stderr: bool, bytes: &[u8]) {
        self.partial[stderr as usize].extend_from_slice(bytes);
        while let Some(pos) = self.partial[stderr as usize]
            .iter()
            .position(|b| *b == b'\n')
        {
            let line: Vec<u8> = self.partial[stderr as usize].drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_string();
            self.emit(stderr, text);
        }
    }

    /// Flushes unterminated last lines.
    pub fn finish(&mut self) {
        for stderr in [false, true] {
            let buf = std::mem::take(&mut self.partial[stderr as usize]);
            if !buf.is_empty() {
                self.emit(
                    stderr,
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches('\r')
                        .to_string(),
                );
            }
        }
    }

    fn emit(&mut self, stderr: bool, line: String) {
        let line = self.secrets.mask(&line);
        let stream = if stderr { "stderr" } else { "stdout" };
        tracing::info!(provisioner = %self.label, stream, "{line}");
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The last lines of output (already masked), oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The last lines of a command's output for an error message: `. Last output:\n  line…`,
/// or nothing when there was none.
pub fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(". Last output:\n  {}", tail.join("\n  "))
    }
}

/// A connection that runs commands and moves files one at a time, within the invocation
/// (SSH: the provisioners, and amazon-instance's bundle commands).
///
/// SSM is not one: its commands run detached from any invocation (see `ssm.rs`).
pub trait Transport: Send {
    /// Runs `command` (already revealed) and streams its output into `out`.
    fn exec(
        &mut self,
        command: &str,
        out: &mut OutputSink,
    ) -> impl Future<Output = Result<ExecStatus, TransportError>> + Send;
    /// Writes `data` to `remote_path` (parent directory must exist), with Unix `mode`.
    fn upload(
        &mut self,
        data: &[u8],
        remote_path: &str,
        mode: u32,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// `mkdir -p`.
    fn mkdir_all(
        &mut self,
        remote_path: &str,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Reads a remote file.
    fn download(
        &mut self,
        remote_path: &str,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
    /// Lists the regular files below a remote directory, relative to it (for directory downloads).
    fn list_files(
        &mut self,
        remote_dir: &str,
    ) -> impl Future<Output = Result<Vec<String>, TransportError>> + Send;
    /// Connects again after an expected disconnect (a reboot), retrying for a while.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_splits_lines_and_keeps_a_masked_tail() {
        let mut secrets = Secrets::new();
        secrets.add_value("s3cr3t");
        let mut sink = OutputSink::new("p", &secrets);
        sink.push(false, b"one\ntw");
        sink.push(true, b"err s3cr3t\n");
        sink.push(false, b"o\r\nthree");
        sink.finish();
        assert_eq!(sink.tail(), vec!["one", "err <sensitive>", "two", "three"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.sh"), "/tmp/a.sh");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote(""), "''");
    }
}
