//! Shared harness for the end-to-end tests: local servers (moto, sshd), started on free
//! 127.0.0.1 ports and stopped by their own PID.

pub mod fault_proxy;
pub mod lambda_harness;
pub mod sshd;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The project's tool cache: `$AMIFLOW_CACHE`, else /work/main/.cache, else ./.cache.
pub fn cache_dir() -> PathBuf {
    if let Ok(c) = std::env::var("AMIFLOW_CACHE") {
        return PathBuf::from(c);
    }
    let main = PathBuf::from("/work/main/.cache");
    if main.exists() {
        return main;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache")
}

/// A moto server on a free 127.0.0.1 port, killed by PID when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

/// One API call moto's recorder saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// Signing name: `ec2`, `ssm`, `iam`, `sts`, `s3`, ...
    pub service: String,
    pub region: String,
    /// `DescribeImages`, `PutParameter`, ... (empty for REST calls such as S3).
    pub action: String,
}

pub const FAKE_ACCESS_KEY: &str = "AKIAMOTOTESTING00000";
pub const FAKE_SECRET_KEY: &str = "moto-testing-secret";

impl Moto {
    /// The moto_server binary installed by scripts/setup.sh.
    pub fn binary() -> PathBuf {
        cache_dir().join("venv/bin/moto_server")
    }

    /// Starts moto, or returns None after printing why the caller should skip.
    pub fn start_or_skip(test: &str) -> Option<Moto> {
        match Moto::start() {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("SKIP {test}: moto is not available ({e:#}); run scripts/setup.sh");
                None
            }
        }
    }

    pub fn start() -> Result<Moto> {
        Moto::start_with_env(&[])
    }

    /// A moto with extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT` (IAM enforcement).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Moto> {
        let bin = Moto::binary();
        if !bin.exists() {
            bail!("{} does not exist", bin.display());
        }
        let port = free_port()?;
        // The recorder writes its file into the working directory: keep it out of the tree.
        let rec = Moto::recording_file(port);
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", &rec)
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = moto.http("GET", "/moto-api/data.json", "") {
                return Ok(moto);
            }
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where this moto's recorder writes (removed when the moto is dropped).
    fn recording_file(port: u16) -> PathBuf {
        std::env::temp_dir().join(format!("amiflow-moto-recording-{port}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a child process (the amiflow CLI, Packer, ...) to use this moto.
    pub fn env(&self, region: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY.to_string()),
            ("AWS_REGION", region.to_string()),
            ("AWS_DEFAULT_REGION", region.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// An SDK config pointing at this moto with fake static credentials and fast retries.
    pub async fn sdk_config(&self, region: &str) -> aws_config::SdkConfig {
        sdk_config_at(&self.url(), region).await
    }

    /// amiflow's step context against this moto.
    pub async fn ctx(&self, region: &str) -> amiflow::Ctx {
        amiflow::Ctx::from_sdk_config(self.sdk_config(region).await)
    }

    /// Forgets every resource (POST /moto-api/reset).
    pub fn reset(&self) -> Result<()> {
        self.expect_ok("POST", "/moto-api/reset")
    }

    pub fn start_recording(&self) -> Result<()> {
        self.expect_ok("POST", "/moto-api/recorder/reset-recording")?;
        self.expect_ok("POST", "/moto-api/recorder/start-recording")
    }

    pub fn stop_recording(&self) -> Result<()> {
        self.expect_ok("POST", "/moto-api/recorder/stop-recording")
    }

    /// Every call recorded since `start_recording`.
    pub fn recorded_calls(&self) -> Result<Vec<RecordedCall>> {
        let (status, body) = self.http("GET", "/moto-api/recorder/download-recording", "")?;
        if status != 200 {
            bail!("download-recording answered {status}");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).context("a recorder line is not JSON")?;
            let auth = v["headers"]["Authorization"].as_str().unwrap_or("");
            // Credential=KEY/DATE/REGION/SERVICE/aws4_request
            let scope: Vec<&str> = auth
                .split("Credential=")
                .nth(1)
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("")
                .split('/')
                .collect();
            let region = scope.get(2).unwrap_or(&"").to_string();
            let service = scope.get(3).unwrap_or(&"").to_string();
            let raw = v["body"].as_str().unwrap_or("");
            let body = if v["body_encoded"].as_bool() == Some(true) {
                String::from_utf8_lossy(&b64.decode(raw).unwrap_or_default()).to_string()
            } else {
                raw.to_string()
            };
            let action = match v["headers"]["X-Amz-Target"].as_str() {
                Some(t) => t.rsplit('.').next().unwrap_or(t).to_string(),
                None => body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .unwrap_or("")
                    .to_string(),
            };
            out.push(RecordedCall {
                service,
                region,
                action,
            });
        }
        Ok(out)
    }

    /// The EC2 calls recorded since `start_recording`.
    pub fn ec2_calls(&self) -> Result<Vec<RecordedCall>> {
        Ok(self
            .recorded_calls()?
            .into_iter()
            .filter(|c| c.service == "ec2")
            .collect())
    }

    fn expect_ok(&self, method: &str, path: &str) -> Result<()> {
        let (status, body) = self.http(method, path, "")?;
        if status != 200 {
            bail!("{method} {path} answered {status}: {body}");
        }
        Ok(())
    }

    /// A minimal HTTP/1.1 request to moto (no client library needed for the control API).
    pub fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        http_request(self.port, method, path, body)
    }
}

/// A minimal HTTP/1.1 request to a local server on 127.0.0.1:`port`: (status, body).
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from 127.0.0.1:{port}"))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(Moto::recording_file(self.port));
    }
}

/// An SDK config for an emulator (or a proxy in front of one) at `endpoint`: fake static
/// credentials, and retries quick enough that a test's injected throttling costs nothing.
pub async fn sdk_config_at(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            FAKE_ACCESS_KEY,
            FAKE_SECRET_KEY,
            None,
            None,
            "moto",
        ))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(5)),
        )
        .load()
        .await
}
