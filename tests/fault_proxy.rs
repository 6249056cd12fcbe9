//! A fault-injecting HTTP proxy in front of moto, on 127.0.0.1: forwards every request, reads
//! the AWS Query `Action` from the form body (EC2, IAM) or `X-Amz-Target` (SSM), names S3's
//! REST calls from method and path (CreateBucket, PutObject, DeleteObject, ...), and, as
//! configured, answers instead of moto with an AWS error, rewrites describe responses to
//! say `pending`, or throttles with `RequestLimitExceeded`.
//!
//! Faults are set through [`FaultProxy::set`]; what went through is in [`FaultProxy::log`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One call through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Signing name from the Authorization header: `ec2`, `iam`, `ssm`, `sts`, ...
    pub service: String,
    pub action: String,
    /// What the proxy did: `forwarded`, `failed:<code>`, `throttled`, `pending`.
    pub fate: String,
    /// Its place among the mutating calls (1-based, as `fail_mutating` counts); 0 for reads
    /// and for the repeats of an injected error.
    pub nth: usize,
    /// The request body (EC2's form-encoded query; JSON for the JSON protocols; empty for S3).
    pub body: String,
}

/// An error answered instead of moto's response.
#[derive(Debug, Clone)]
pub struct Injected {
    pub code: String,
    pub status: u16,
    /// How many calls in a row (the chosen one and its SDK retries) get it.
    pub times: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail the Nth mutating call (1-based, counted over every service) with this error.
    pub fail_mutating: Option<(usize, Injected)>,
    /// A second one, later: e.g. one of Cleanup's removals after the first failure.
    pub fail_mutating_too: Option<(usize, Injected)>,
    /// Rewrite the first N DescribeInstances responses after RunInstances (running →
    /// pending, stopped → stopping) and the first N DescribeImages after CreateImage
    /// (available → pending).
    pub pending_describes: usize,
    /// Once the first action has gone through, fail the next call of the second (a read,
    /// say): `("CreateImage", "DescribeImages", ..)` fails a build whose image exists.
    pub fail_after: Option<(String, String, Injected)>,
    /// Answer the first N calls of an action with RequestLimitExceeded (HTTP 503).
    pub throttle: HashMap<String, usize>,
}

#[derive(Default)]
struct ProxyState {
    faults: Faults,
    mutating_seen: usize,
    /// Remaining repeats of the injected error, and for which action.
    failing: Option<(String, Injected, usize)>,
    instances_pending: usize,
    images_pending: usize,
    saw_run: bool,
    saw_create_image: bool,
    /// `fail_after`'s first action went through; its second not failed yet.
    armed: bool,
    throttled: HashMap<String, usize>,
    log: Vec<Call>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Calls that change something. Reads are Describe*/Get*/List*/Head*; everything else counts.
pub fn is_mutating(action: &str) -> bool {
    !action.is_empty()
        && !["Describe", "Get", "List", "Head", "Search", "Lookup"]
            .iter()
            .any(|p| action.starts_with(p))
}

/// Cleanup's calls: removing what the build made.
pub fn is_removal(action: &str) -> bool {
    ["Delete", "Terminate", "Deregister", "Remove", "Cancel"]
        .iter()
        .any(|p| action.starts_with(p))
}

impl FaultProxy {
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<ProxyState>> = Default::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(state.clone(), upstream_port, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New faults; counters and the log start over.
    pub fn set(&self, faults: Faults) {
        *self.state.lock().unwrap() = ProxyState {
            faults,
            ..Default::default()
        };
    }

    pub fn log(&self) -> Vec<Call> {
        self.state.lock().unwrap().log.clone()
    }

    /// Mutating calls seen since the last `set`.
    pub fn mutating_seen(&self) -> usize {
        self.state.lock().unwrap().mutating_seen
    }
}

fn service_of(auth: &str) -> String {
    auth.split("Credential=")
        .nth(1)
        .unwrap_or("")
        .split(',')
        .next()
        .unwrap_or("")
        .split('/')
        .nth(3)
        .unwrap_or("")
        .to_string()
}

/// S3 is REST: the operation is the method on a bucket or an object, plus a sub-resource.
fn s3_action(method: &str, uri: &hyper::Uri) -> String {
    let on_object = uri
        .path()
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    let query = uri.query().unwrap_or("");
    let sub = [
        "tagging",
        "delete",
        "acl",
        "uploads",
        "uploadId",
        "policy",
        "versioning",
    ]
    .into_iter()
    .find(|q| query.split('&').any(|kv| kv.split('=').next() == Some(*q)));
    let op = match (method, on_object, sub) {
        ("HEAD", false, _) => "HeadBucket",
        ("HEAD", true, _) => "HeadObject",
        ("GET", false, Some("tagging")) => "GetBucketTagging",
        ("GET", false, _) => "ListObjects",
        ("GET", true, _) => "GetObject",
        ("PUT", false, Some("tagging")) => "PutBucketTagging",
        ("PUT", false, Some(_)) => "PutBucketSubresource",
        ("PUT", false, None) => "CreateBucket",
        ("PUT", true, _) => "PutObject",
        ("POST", false, Some("delete")) => "DeleteObjects",
        ("POST", _, _) => "PostObject",
        ("DELETE", false, Some("tagging")) => "DeleteBucketTagging",
        ("DELETE", false, _) => "DeleteBucket",
        ("DELETE", true, _) => "DeleteObject",
        _ => "",
    };
    op.to_string()
}

fn action_of(
    service: &str,
    method: &str,
    uri: &hyper::Uri,
    target: Option<&str>,
    body: &[u8],
) -> String {
    if service == "s3" {
        return s3_action(method, uri);
    }
    if let Some(t) = target {
        return t.rsplit('.').next().unwrap_or(t).to_string();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

/// The service's own error document: EC2's `<Response><Errors>`, the Query services'
/// `<ErrorResponse>`, or the JSON protocol's `__type`.
fn error_response(service: &str, code: &str, status: u16) -> Response<Full<Bytes>> {
    let message = format!("injected by the test fault proxy: {code}");
    let (content_type, body) = match service {
        "ec2" => (
            "text/xml;charset=UTF-8",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
            ),
        ),
        "s3" => (
            "application/xml",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"),
        ),
        "ssm" | "logs" => ("application/x-amz-json-1.1", format!(r#"{{"__type":"{code}","message":"{message}"}}"#)),
        _ => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>{}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>",
                if status >= 500 { "Receiver" } else { "Sender" }
            ),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-requestid", "fault-proxy")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

enum Decision {
    Forward,
    Fail(String, u16),
    Pending,
}

fn decide(state: &mut ProxyState, service: &str, action: &str) -> Decision {
    if let Some(n) = state.faults.throttle.get(action).copied() {
        let done = state.throttled.entry(action.to_string()).or_insert(0);
        if *done < n {
            *done += 1;
            return Decision::Fail("RequestLimitExceeded".into(), 503);
        }
    }
    if let Some((failing_action, injected, left)) = &mut state.failing {
        if failing_action == action && *left > 0 {
            *left -= 1;
            return Decision::Fail(injected.code.clone(), injected.status);
        }
    }
    if let Some((after, fail, injected)) = state.faults.fail_after.clone() {
        if state.armed && action == fail {
            state.armed = false;
            state.faults.fail_after = None;
            return Decision::Fail(injected.code, injected.status);
        }
        state.armed |= action == after;
    }
    if is_mutating(action) && service != "sts" {
        state.mutating_seen += 1;
        for (n, injected) in [
            state.faults.fail_mutating.clone(),
            state.faults.fail_mutating_too.clone(),
        ]
        .into_iter()
        .flatten()
        {
            if n == state.mutating_seen {
                state.failing = Some((
                    action.to_string(),
                    injected.clone(),
                    injected.times.saturating_sub(1),
                ));
                return Decision::Fail(injected.code, injected.status);
            }
        }
    }
    match action {
        "RunInstances" => state.saw_run = true,
        "CreateImage" => state.saw_create_image = true,
        "DescribeInstances"
            if state.saw_run && state.instances_pending < state.faults.pending_describes =>
        {
            state.instances_pending += 1;
            return Decision::Pending;
        }
        "DescribeImages"
            if state.saw_create_image && state.images_pending < state.faults.pending_describes =>
        {
            state.images_pending += 1;
            return Decision::Pending;
        }
        _ => {}
    }
    Decision::Forward
}

async fn handle(
    state: Arc<Mutex<ProxyState>>,
    upstream: u16,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let service = service_of(header("authorization").unwrap_or(""));
    let action = action_of(
        &service,
        parts.method.as_str(),
        &parts.uri,
        header("x-amz-target"),
        &body,
    );
    let (decision, nth) = {
        let mut st = state.lock().unwrap();
        let before = st.mutating_seen;
        let decision = decide(&mut st, &service, &action);
        (
            decision,
            if st.mutating_seen > before {
                st.mutating_seen
            } else {
                0
            },
        )
    };
    let fate = match &decision {
        Decision::Forward => "forwarded".to_string(),
        Decision::Fail(code, _) if code == "RequestLimitExceeded" => "throttled".to_string(),
        Decision::Fail(code, _) => format!("failed:{code}"),
        Decision::Pending => "pending".to_string(),
    };
    state.lock().unwrap().log.push(Call {
        service: service.clone(),
        action: action.clone(),
        fate,
        nth,
        body: if service == "s3" {
            String::new()
        } else {
            String::from_utf8_lossy(&body).into_owned()
        },
    });
    if let Decision::Fail(code, status) = &decision {
        return Ok(error_response(&service, code, *status));
    }
    let (status, headers, mut payload) = match forward(upstream, &parts, &body).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(format!(
                    "fault proxy: moto unreachable: {e}"
                ))))
                .unwrap())
        }
    };
    if matches!(decision, Decision::Pending) {
        let text = String::from_utf8_lossy(&payload)
            .replace("<name>running</name>", "<name>pending</name>")
            .replace("<name>stopped</name>", "<name>stopping</name>")
            .replace("<code>16</code>", "<code>0</code>")
            .replace("<code>80</code>", "<code>64</code>")
            .replace(
                "<imageState>available</imageState>",
                "<imageState>pending</imageState>",
            );
        payload = text.into_bytes();
    }
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        if !["content-length", "transfer-encoding", "connection"]
            .contains(&k.to_ascii_lowercase().as_str())
        {
            resp = resp.header(k, v);
        }
    }
    Ok(resp.body(Full::new(Bytes::from(payload))).unwrap())
}

/// The request to moto over a fresh connection (`Connection: close`), whole response back.
async fn forward(
    upstream: u16,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> std::io::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut head = format!("{} {path} HTTP/1.1\r\n", parts.method);
    for (k, v) in &parts.headers {
        let name = k.as_str();
        if ["connection", "content-length", "transfer-encoding"].contains(&name) {
            continue;
        }
        head.push_str(&format!("{name}: {}\r\n", v.to_str().unwrap_or("")));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head from moto"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        rest = dechunk(&rest);
    }
    Ok((status, headers, rest))
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = s.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&s[..pos]).trim(), 16).unwrap_or(0);
        let rest = &s[pos + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}
