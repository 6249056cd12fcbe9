//! A throwaway OpenSSH server on a free 127.0.0.1 port, for SSH provisioning tests.
//!
//! Fresh ed25519 host and client keys in a temp dir, its own sshd_config (key auth only,
//! internal-sftp), started in the foreground as a child and stopped by its PID on Drop.
//! The client key is authorized for the user running the tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Private key (OpenSSH format) authorized to log in.
    pub client_key: PathBuf,
    pub user: String,
    child: Child,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .context("running ssh-keygen (Debian package openssh-client; scripts/setup.sh sshd)")?;
    if !status.success() {
        bail!("ssh-keygen failed for {}", path.display());
    }
    Ok(())
}

impl Sshd {
    /// Starts the server, or says why it cannot (reason for a visible skip).
    pub fn start() -> std::result::Result<Sshd, String> {
        Self::try_start().map_err(|e| format!("{e:#}"))
    }

    fn try_start() -> Result<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context(
                "sshd not installed (Debian package openssh-server; run scripts/setup.sh sshd)",
            )?;
        let dir = tempfile::tempdir()?;
        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key, "amiflow-test-host")?;
        keygen(&client_key, "amiflow-test-client")?;
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )?;
        // Privilege separation directory Debian's sshd insists on.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n\
                 LogLevel ERROR\n",
                host = host_key.display(),
                dir = dir.path().display()
            ),
        )?;
        let check = Command::new(sshd)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()?;
        if !check.status.success() {
            bail!(
                "sshd -t rejected the config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                let out = Command::new("id")
                    .arg("-un")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
                out.unwrap_or_else(|_| "root".into())
            });
        let server = Sshd {
            port,
            dir,
            client_key,
            user,
            child,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("sshd did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// A directory on the "instance" (the sshd's filesystem) for markers.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
