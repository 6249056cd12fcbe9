//! The SSH communicator (russh + russh-sftp): connect and authenticate, run commands with
//! streamed output, upload over SFTP; as a [`Session`], run each provisioner's plan action
//! by action within the invocation.
//!
//! Host keys are accepted on first use, as Packer does for the fresh instance it launched
//! (it cannot know the key in advance). Files go over SFTP; commands are `exec` requests,
//! with a PTY when `ssh_pty` is set (stderr then arrives merged into stdout, as in Packer).

use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;

use super::config::Provisioner;
use super::plan::{plan, Action, ExitCheck};
use super::render::Secrets;
use super::session::{failed, Progress, RunOptions, Session};
use super::transport::{shell_quote, tail_text, ExecStatus, OutputSink, Transport, TransportError};
use crate::StepError;

/// How to log in. Never serialised: it holds key material or a password.
#[derive(Clone)]
pub enum SshAuth {
    Key(Arc<PrivateKey>),
    Password(String),
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshAuth::Key(_) => f.write_str("SshAuth::Key(..)"),
            SshAuth::Password(_) => f.write_str("SshAuth::Password(..)"),
        }
    }
}

impl SshAuth {
    /// Parses an OpenSSH or PKCS#8 PEM private key (unencrypted: Packer has no passphrase key either).
    pub fn from_pem(pem: &str) -> Result<SshAuth, TransportError> {
        russh::keys::decode_secret_key(pem, None)
            .map(|k| SshAuth::Key(Arc::new(k)))
            .map_err(|e| TransportError(format!("the private key cannot be read ({e}); it must be an unencrypted OpenSSH or PEM key")))
    }
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: SshAuth,
    pub pty: bool,
    /// Bound on TCP connect + handshake + auth for one attempt.
    pub connect_timeout: Duration,
    /// `ssh_bastion_*`: reach the target through this host (a `direct-tcpip` channel).
    pub bastion: Option<Box<SshTarget>>,
    /// The host key's SHA256 fingerprint Connect saw first (trust on first use): a later
    /// connection presenting another key is refused. None: accept and record any key.
    pub host_key: Option<String>,
}

impl SshTarget {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Trust on first use: records the server's host key and, once one is pinned, accepts
/// that key only.
struct TrustOnFirstUse {
    pinned: Option<String>,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

/// The SHA256 fingerprint (`SHA256:...`) of a host key or of a host certificate's key.
fn host_key_fingerprint(key: &PublicKeyOrCertificate) -> String {
    use russh::keys::HashAlg;
    match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => {
            key.fingerprint(HashAlg::Sha256).to_string()
        }
        PublicKeyOrCertificate::Certificate(cert) => {
            cert.public_key().fingerprint(HashAlg::Sha256).to_string()
        }
    }
}

impl client::Handler for TrustOnFirstUse {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fingerprint = host_key_fingerprint(key);
        let accepted = self.pinned.as_ref().is_none_or(|p| *p == fingerprint);
        *self.seen.lock().expect("host key slot") = Some(fingerprint);
        Ok(accepted)
    }
}

pub struct SshTransport {
    handle: client::Handle<TrustOnFirstUse>,
    /// Kept open while the target is reached through it.
    bastion: Option<client::Handle<TrustOnFirstUse>>,
    /// The target's host key fingerprint, as this connection saw it.
    host_key: String,
    sftp: Option<SftpSession>,
    target: SshTarget,
    address: String,
}

/// How long to keep trying after an expected disconnect (Packer's `start_retry_timeout` default).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);

impl SshTransport {
    /// One attempt: TCP connect, handshake, authentication, each within `connect_timeout`.
    pub async fn connect(target: &SshTarget) -> Result<SshTransport, TransportError> {
        let address = target.address();
        let attempt = async {
            let bastion = match &target.bastion {
                None => None,
                Some(b) => Some(
                    open(b, None)
                        .await
                        .map_err(|e| {
                            TransportError(format!("via bastion {}: {}", b.address(), e.0))
                        })?
                        .0,
                ),
            };
            let (handle, host_key) = open(target, bastion.as_ref()).await?;
            Ok::<_, TransportError>((handle, host_key, bastion))
        };
        let (handle, host_key, bastion) = tokio::time::timeout(target.connect_timeout, attempt)
            .await
            .map_err(|_| {
                TransportError(format!(
                    "no SSH answer from {address} within {:?}",
                    target.connect_timeout
                ))
            })??;
        Ok(SshTransport {
            handle,
            bastion,
            host_key,
            sftp: None,
            target: target.clone(),
            address,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The host key's SHA256 fingerprint (Connect pins it for the build's later sessions).
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    pub async fn close(mut self) {
        if let Some(sftp) = self.sftp.take() {
            let _ = sftp.close().await;
        }
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        if let Some(b) = self.bastion.take() {
            let _ = b.disconnect(Disconnect::ByApplication, "", "en").await;
        }
    }

    async fn sftp(&mut self) -> Result<&SftpSession, TransportError> {
        if self.sftp.is_none() {
            let err = |e: String| TransportError(format!("SFTP to {} failed: {e}", self.address));
            let channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| err(e.to_string()))?;
            channel
                .request_subsystem(true, "sftp")
                .await
                .map_err(|e| err(e.to_string()))?;
            let session = SftpSession::new(channel.into_stream())
                .await
                .map_err(|e| err(e.to_string()))?;
            self.sftp = Some(session);
        }
        Ok(self.sftp.as_ref().unwrap())
    }

    async fn exec_capture(
        &mut self,
        command: &str,
    ) -> Result<(ExecStatus, Vec<u8>), TransportError> {
        let mut stdout = Vec::new();
        let status = self
            .run_command(command, false, |is_stderr, data| {
                if !is_stderr {
                    stdout.extend_from_slice(data)
                }
            })
            .await?;
        Ok((status, stdout))
    }

    /// Runs one command on a new session channel (with a PTY when asked), handing every
    /// piece of output to `on_output(is_stderr, bytes)`; reads until the channel closes,
    /// as the exit status may arrive before the last output.
    async fn run_command(
        &mut self,
        command: &str,
        pty: bool,
        mut on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExecStatus, TransportError> {
        let mut channel = self.handle.channel_open_session().await.map_err(|e| {
            TransportError(format!("cannot open a session on {}: {e}", self.address))
        })?;
        if pty {
            channel
                .request_pty(true, "xterm", 80, 40, 0, 0, &[])
                .await
                .map_err(|e| {
                    TransportError(format!("PTY request on {} failed: {e}", self.address))
                })?;
        }
        channel
            .exec(true, command)
            .await
            .map_err(|e| TransportError(format!("exec on {} failed: {e}", self.address)))?;
        let mut status = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => on_output(false, &data),
                ChannelMsg::ExtendedData { data, .. } => on_output(true, &data),
                ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(ExecStatus::Exited(exit_status as i64))
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    status = Some(ExecStatus::Signal(format!("{signal_name:?}")))
                }
                _ => {}
            }
        }
        Ok(status.unwrap_or(ExecStatus::Disconnected))
    }
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 6,
        ..Default::default()
    })
}

/// Handshake and authentication, over TCP or through a bastion's `direct-tcpip` channel.
async fn open(
    target: &SshTarget,
    via: Option<&client::Handle<TrustOnFirstUse>>,
) -> Result<(client::Handle<TrustOnFirstUse>, String), TransportError> {
    let address = target.address();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let checker = TrustOnFirstUse {
        pinned: target.host_key.clone(),
        seen: seen.clone(),
    };
    let refused = |e: russh::Error| {
        let seen = seen.lock().expect("host key slot").clone();
        match (&target.host_key, seen) {
            (Some(pinned), Some(seen)) if *pinned != seen => TransportError(format!(
                "{address} presented host key {seen}, not {pinned} which it presented at Connect: \
                 refusing the connection (another machine answers at that address?)"
            )),
            _ => TransportError(format!("cannot connect to {address}: {e}")),
        }
    };
    let mut handle = match via {
        None => client::connect(
            client_config(),
            (target.host.as_str(), target.port),
            checker,
        )
        .await
        .map_err(refused)?,
        Some(bastion) => {
            let channel = bastion
                .channel_open_direct_tcpip(target.host.as_str(), target.port as u32, "127.0.0.1", 0)
                .await
                .map_err(|e| TransportError(format!("the bastion cannot reach {address}: {e}")))?;
            client::connect_stream(client_config(), channel.into_stream(), checker)
                .await
                .map_err(|e| {
                    let e = refused(e);
                    TransportError(format!("through the bastion: {}", e.0))
                })?
        }
    };
    let host_key = seen
        .lock()
        .expect("host key slot")
        .clone()
        .unwrap_or_default();
    let result = match &target.auth {
        SshAuth::Key(key) => {
            let hash = if key.algorithm().is_rsa() {
                handle
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten()
            } else {
                None
            };
            handle
                .authenticate_publickey(
                    &target.username,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
        }
        SshAuth::Password(p) => handle.authenticate_password(&target.username, p).await,
    }
    .map_err(|e| TransportError(format!("authentication to {address} failed: {e}")))?;
    if !result.success() {
        let how = match target.auth {
            SshAuth::Key(_) => "the private key",
            SshAuth::Password(_) => "the password",
        };
        return Err(TransportError(format!(
            "{address} refused user {:?} with {how}: check the username and that the key is authorized there",
            target.username
        )));
    }
    Ok((handle, host_key))
}

impl Transport for SshTransport {
    async fn exec(
        &mut self,
        command: &str,
        out: &mut OutputSink,
    ) -> Result<ExecStatus, TransportError> {
        let pty = self.target.pty;
        let status = self
            .run_command(command, pty, |is_stderr, data| out.push(is_stderr, data))
            .await?;
        out.finish();
        Ok(status)
    }

    async fn upload(
        &mut self,
        data: &[u8],
        remote_path: &str,
        mode: u32,
    ) -> Result<(), TransportError> {
        let address = self.address.clone();
        let err =
            |e: String| TransportError(format!("upload of {remote_path} to {address} failed: {e}"));
        let sftp = self.sftp().await?;
        let mut file = sftp
            .create(remote_path)
            .await
            .map_err(|e| err(e.to_string()))?;
        file.write_all(data).await.map_err(|e| err(e.to_string()))?;
        file.shutdown().await.map_err(|e| err(e.to_string()))?;
        let attrs = russh_sftp::protocol::FileAttributes {
            permissions: Some(mode),
            ..Default::default()
        };
        sftp.set_metadata(remote_path, attrs)
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    async fn mkdir_all(&mut self, remote_path: &str) -> Result<(), TransportError> {
        let (status, _) = self
            .exec_capture(&format!("mkdir -p {}", shell_quote(remote_path)))
            .await?;
        match status {
            ExecStatus::Exited(0) => Ok(()),
            other => Err(TransportError(format!(
                "mkdir -p {remote_path} on {} failed: {other}",
                self.address
            ))),
        }
    }

    async fn download(&mut self, remote_path: &str) -> Result<Vec<u8>, TransportError> {
        let address = self.address.clone();
        let sftp = self.sftp().await?;
        sftp.read(remote_path).await.map_err(|e| {
            TransportError(format!(
                "download of {remote_path} from {address} failed: {e}"
            ))
        })
    }

    async fn list_files(&mut self, remote_dir: &str) -> Result<Vec<String>, TransportError> {
        // NUL-separated: a name may hold a newline, which must not split it in two.
        let (status, stdout) = self
            .exec_capture(&format!(
                "cd {} && find . -type f -print0",
                shell_quote(remote_dir)
            ))
            .await?;
        if status != ExecStatus::Exited(0) {
            return Err(TransportError(format!(
                "cannot list {remote_dir} on {}: {status}",
                self.address
            )));
        }
        Ok(stdout
            .split(|b| *b == 0)
            .map(|name| String::from_utf8_lossy(name))
            .map(|name| name.strip_prefix("./").unwrap_or(&name).to_string())
            .filter(|name| !name.is_empty())
            .collect())
    }

    async fn reconnect(&mut self) -> Result<(), TransportError> {
        self.sftp = None;
        let start = tokio::time::Instant::now();
        loop {
            match SshTransport::connect(&self.target).await {
                Ok(fresh) => {
                    *self = fresh;
                    return Ok(());
                }
                Err(e) if start.elapsed() >= RECONNECT_TIMEOUT => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
}

impl Session for SshTransport {
    const WITHIN_INVOCATION: bool = true;

    async fn advance(
        &mut self,
        _: usize,
        p: &Provisioner,
        opts: &RunOptions,
    ) -> Result<Progress, StepError> {
        let label = p.label();
        let actions = plan(p, &opts.env).map_err(|e| failed(&label, e))?;
        self.run_actions(&label, actions, &opts.secrets).await?;
        Ok(Progress::Done)
    }
}

impl SshTransport {
    /// Runs a provisioner's actions in order: the first failure stops it. A command that
    /// disconnects as `expect_disconnect` allows is followed by a reconnect.
    async fn run_actions(
        &mut self,
        label: &str,
        actions: Vec<Action>,
        secrets: &Secrets,
    ) -> Result<(), StepError> {
        let mut reconnect = false;
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            if reconnect {
                tracing::info!(provisioner = %label, "reconnecting after the expected disconnect");
                self.reconnect().await.map_err(|e| {
                    failed(
                        label,
                        format!("could not reconnect after the expected disconnect: {e}"),
                    )
                })?;
                reconnect = false;
            }
            match action {
                Action::Mkdir { path } => {
                    self.mkdir_all(&path).await.map_err(|e| failed(label, e))?
                }
                Action::Upload {
                    data,
                    remote,
                    mode,
                    from,
                } => {
                    tracing::info!(provisioner = %label, "uploading {from} to {remote}");
                    self.upload(&secrets.reveal_bytes(&data), &remote, mode)
                        .await
                        .map_err(|e| failed(label, e))?
                }
                Action::Download {
                    remote,
                    local,
                    directory,
                } => self
                    .download_to(&remote, &local, directory)
                    .await
                    .map_err(|e| failed(label, e))?,
                Action::Exec { command, check } => {
                    let cleanup = match actions.peek() {
                        Some(Action::Exec {
                            command,
                            check: ExitCheck::Housekeeping,
                        }) => Some(command.as_str()),
                        _ => None,
                    };
                    reconnect = self
                        .exec_checked(label, &command, &check, cleanup, secrets)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Runs a plan's command and checks how it ended. Ok(true): it disconnected, as
    /// `expect_disconnect` allows, and the next action needs a reconnect. `cleanup` is the
    /// housekeeping command that follows it (removing the uploaded script).
    async fn exec_checked(
        &mut self,
        label: &str,
        command: &str,
        check: &ExitCheck,
        cleanup: Option<&str>,
        secrets: &Secrets,
    ) -> Result<bool, StepError> {
        let shown = secrets.mask(command);
        let mut sink = OutputSink::new(label, secrets);
        let status = self
            .exec(&secrets.reveal(command), &mut sink)
            .await
            .map_err(|e| failed(label, format!("running `{shown}`: {e}")))?;
        match (check, &status) {
            (
                ExitCheck::Main {
                    expect_disconnect: true,
                    ..
                },
                ExecStatus::Disconnected,
            ) => {
                tracing::info!(provisioner = %label, "the command disconnected, as expect_disconnect allows");
                Ok(true)
            }
            (ExitCheck::Main { valid, .. }, ExecStatus::Exited(code)) if valid.contains(code) => {
                Ok(false)
            }
            (ExitCheck::Housekeeping, ExecStatus::Exited(0)) => Ok(false),
            (ExitCheck::Main { valid, .. }, _) => {
                // The connection is still up after a plain non-zero exit: remove the
                // uploaded script anyway, so a failed build on a long-lived host (or a
                // retry) leaves no stale copy behind. Its own failure is secondary.
                if let (ExecStatus::Exited(_), Some(cleanup)) = (&status, cleanup) {
                    let mut quiet = OutputSink::new(label, secrets);
                    if let Err(e) = self.exec(cleanup, &mut quiet).await {
                        tracing::warn!(provisioner = %label, "could not remove the script after its failure: {e}");
                    }
                }
                Err(failed(
                    label,
                    format!(
                        "`{shown}` failed: {status} (valid exit codes: {valid:?}){}",
                        tail_text(&sink.tail())
                    ),
                ))
            }
            (ExitCheck::Housekeeping, _) => Err(failed(
                label,
                format!(
                    "cleaning up with `{shown}` failed: {status}{}",
                    tail_text(&sink.tail())
                ),
            )),
        }
    }

    /// The file `download` provisioner: a remote file, or every file below a remote directory
    /// (each written below `local`, see [`contained_path`]).
    async fn download_to(
        &mut self,
        remote: &str,
        local: &std::path::Path,
        directory: bool,
    ) -> Result<(), String> {
        let write = |path: &std::path::Path, data: &[u8]| -> Result<(), String> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        if directory {
            // Every name is checked before anything is written: the remote side chooses
            // them, and none may lead outside `local`.
            let files = self.list_files(remote).await.map_err(|e| e.0)?;
            let targets = files
                .iter()
                .map(|rel| contained_path(local, rel).map(|path| (rel, path)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| format!("refusing to download {remote}: {why}"))?;
            for (rel, path) in targets {
                let data = self
                    .download(&format!("{}/{rel}", remote.trim_end_matches('/')))
                    .await
                    .map_err(|e| e.0)?;
                write(&path, &data)?;
            }
            Ok(())
        } else {
            let data = self.download(remote).await.map_err(|e| e.0)?;
            write(local, &data)
        }
    }
}

/// Where the remote file `rel` (relative to the downloaded directory, as the instance
/// names it) goes below `dest`; refused when the name could write elsewhere or be
/// misread: an absolute path, a `..` or `.` component, an empty component, or a control
/// character such as a newline.
pub fn contained_path(dest: &std::path::Path, rel: &str) -> Result<std::path::PathBuf, String> {
    if let Some(c) = rel.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the remote file name {rel:?} contains the control character {c:?}"
        ));
    }
    if rel.starts_with('/') {
        return Err(format!("the remote file name {rel:?} is absolute"));
    }
    let mut path = dest.to_path_buf();
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "the remote file name {rel:?} has a {part:?} component, which could lead outside {}",
                dest.display()
            ));
        }
        path.push(part);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::contained_path;
    use std::path::Path;

    #[test]
    fn downloaded_names_stay_below_the_destination() {
        let dest = Path::new("/tmp/dest");
        assert_eq!(
            contained_path(dest, "a/b.txt").unwrap(),
            Path::new("/tmp/dest/a/b.txt")
        );
        for bad in [
            "../escaped",
            "a/../../escaped",
            "/etc/passwd",
            "a\n../escaped",
            "a//b",
            "./a",
            "a/..",
            "",
        ] {
            let refused = contained_path(dest, bad);
            assert!(refused.is_err(), "{bad:?} -> {refused:?}");
        }
    }
}
