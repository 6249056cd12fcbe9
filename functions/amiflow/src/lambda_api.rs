//! A local Lambda Invoke API: `POST /2015-03-31/functions/{name-or-arn}/invocations`.
//!
//! `amiflow serve-lambdas` serves every registered step through it, so a third-party ASL
//! engine (aws-local-stepfunctions, Step Functions Local) can run the committed definition
//! against our real handlers; the tests serve scripted handlers through the same code.
//! Error semantics are Lambda's: a handler error is still HTTP 200, with the header
//! `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage"}` as the body, so the
//! caller's Retry/Catch match on `errorType` exactly as in AWS.
//!
//! The handlers run with the server's credentials and a `shell-local` provisioner runs
//! commands on this machine, so the server only answers its caller (see [`Guard`]):
//! every path starts with a random per-run token (the endpoint it prints is
//! `http://127.0.0.1:PORT/TOKEN`, which AWS SDKs keep as the path prefix of every call),
//! requests a browser makes (an `Origin` header, a Host other than the loopback one,
//! a form or text content type) are refused, and the body must be JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::error::ErrorPayload;
use crate::{flows, Ctx};

/// What an invocation can end in, besides a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeError {
    /// The function ran and failed: reported as `X-Amz-Function-Error: Unhandled`.
    Function(ErrorPayload),
    /// No function of that name: Lambda's 404 `ResourceNotFoundException`.
    UnknownFunction(String),
}

/// Runs one invocation of the handler named `handler` (already mapped from the ARN).
pub trait Invoker: Send + Sync + 'static {
    fn invoke(
        &self,
        handler: &str,
        payload: Value,
    ) -> BoxFuture<'static, Result<Value, InvokeError>>;
}

/// Serves the steps of [`flows::registry`] with one shared [`Ctx`].
pub struct RegistryInvoker {
    pub ctx: Arc<Ctx>,
}

impl Invoker for RegistryInvoker {
    fn invoke(
        &self,
        handler: &str,
        payload: Value,
    ) -> BoxFuture<'static, Result<Value, InvokeError>> {
        let Some(step) = flows::find(handler) else {
            return Box::pin(std::future::ready(Err(InvokeError::UnknownFunction(
                format!(
                    "Function not found: {handler}. Known handlers: {}",
                    known_handlers()
                ),
            ))));
        };
        let ctx = self.ctx.clone();
        let name = step.name;
        Box::pin(async move {
            // A panicking handler must not take the server down: Lambda reports it as an
            // error of that invocation, and so do we.
            match tokio::spawn((step.handler)(ctx, payload)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(InvokeError::Function(e.payload())),
                Err(join) => Err(InvokeError::Function(ErrorPayload {
                    error_type: "Runtime.Panic".into(),
                    error_message: format!("handler {name} panicked: {join}"),
                })),
            }
        })
    }
}

/// Every registered handler name, comma-separated, for error messages.
pub fn known_handlers() -> String {
    flows::registry()
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maps what a caller puts in `FunctionName` to a handler name.
///
/// Accepts a plain name (`CreateImage`), an ARN with or without qualifier
/// (`arn:aws:lambda:us-east-1:123456789012:function:CreateImage:live`), URL-encoded as
/// SDKs send it in the path, and the definition's substitution names
/// (`CreateImageFunctionArn`, `CreateImageFunction`).
pub fn handler_name(function: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(function).decode_utf8_lossy();
    let mut name: &str = &decoded;
    if let Some((_, after)) = name.split_once(":function:") {
        name = after.split(':').next().unwrap_or(after);
    }
    for suffix in ["FunctionArn", "Function"] {
        if let Some(stripped) = name.strip_suffix(suffix) {
            if !stripped.is_empty() {
                name = stripped;
                break;
            }
        }
    }
    name.to_string()
}

/// A running invoke server.
pub struct Server {
    pub addr: SocketAddr,
    /// The per-run token every request path starts with.
    pub token: String,
    pub task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// What a client sets `AWS_ENDPOINT_URL_LAMBDA` to: the address and the token.
    pub fn endpoint(&self) -> String {
        format!("http://{}/{}", self.addr, self.token)
    }
}

/// Binds 127.0.0.1:`port` (0 picks a free port) with a fresh token and serves until the
/// task is dropped or aborted.
pub async fn serve<I: Invoker>(port: u16, invoker: Arc<I>) -> std::io::Result<Server> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    // 122 random bits from the OS generator: not guessable by a page probing the port.
    let token = uuid::Uuid::new_v4().simple().to_string();
    let guard = Arc::new(Guard {
        token: token.clone(),
        port: addr.port(),
    });
    let task = tokio::spawn(accept_loop(listener, invoker, guard));
    Ok(Server { addr, token, task })
}

/// Who may call the server: whoever knows the token, from outside a browser.
struct Guard {
    token: String,
    port: u16,
}

/// Content types a browser sends cross-origin without asking first (a CORS "simple
/// request"): an HTML form or `fetch(..., {mode: "no-cors"})` can POST these.
const BROWSER_SIMPLE_CONTENT_TYPES: [&str; 3] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
];

impl Guard {
    /// The invoke path without the token, or why the request is refused.
    fn check<'p>(
        &self,
        headers: &hyper::HeaderMap,
        path: &'p str,
    ) -> Result<&'p str, &'static str> {
        if headers.contains_key(hyper::header::ORIGIN) {
            return Err("requests from a browser (with an Origin header) are refused");
        }
        let host = headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let loopback = [
            format!("127.0.0.1:{}", self.port),
            format!("localhost:{}", self.port),
        ];
        if !loopback.iter().any(|l| l.eq_ignore_ascii_case(host)) {
            return Err("the Host header must name 127.0.0.1 and this port");
        }
        let content_type = headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if BROWSER_SIMPLE_CONTENT_TYPES
            .iter()
            .any(|t| content_type.starts_with(t))
        {
            return Err("the body must be JSON (Content-Type application/json or application/octet-stream, as AWS SDKs send it)");
        }
        let rest = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.token.as_str()))
            .filter(|rest| rest.starts_with('/'));
        rest.ok_or("the path must start with the token printed by `amiflow serve-lambdas` (use its endpoint line as AWS_ENDPOINT_URL_LAMBDA)")
    }
}

async fn accept_loop<I: Invoker>(listener: TcpListener, invoker: Arc<I>, guard: Arc<Guard>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let invoker = invoker.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(invoker.clone(), guard.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "invoke connection closed with an error");
            }
        });
    }
}

const INVOKE_PREFIX: &str = "/2015-03-31/functions/";
const INVOKE_SUFFIX: &str = "/invocations";

async fn handle<I: Invoker>(
    invoker: Arc<I>,
    guard: Arc<Guard>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let full_path = req.uri().path().to_string();
    let path = match guard.check(req.headers(), &full_path) {
        Ok(path) => path,
        Err(why) => {
            tracing::warn!(why, "refused an invoke request");
            return Ok(service_error(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                why,
            ));
        }
    };
    let function = path
        .strip_prefix(INVOKE_PREFIX)
        .and_then(|p| p.strip_suffix(INVOKE_SUFFIX));
    let (Some(function), true) = (function, req.method() == hyper::Method::POST) else {
        return Ok(service_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!(
                "only POST /TOKEN{INVOKE_PREFIX}{{function}}{INVOKE_SUFFIX} is served, not {} /TOKEN{path}",
                req.method()
            ),
        ));
    };
    let handler = handler_name(function);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(service_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &e.to_string(),
            ))
        }
    };
    // An invoke without payload reaches the handler as null, as in Lambda; anything else
    // must parse as JSON.
    let payload: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Ok(service_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("Could not parse request body into json: {e}"),
                ))
            }
        }
    };
    tracing::info!(handler, "invoke");
    let response = match invoker.invoke(&handler, payload).await {
        Ok(v) => json_response(StatusCode::OK, &v, None),
        Err(InvokeError::Function(p)) => {
            tracing::info!(handler, error_type = %p.error_type, "invoke failed");
            json_response(
                StatusCode::OK,
                &serde_json::to_value(&p).unwrap_or(Value::Null),
                Some("Unhandled"),
            )
        }
        Err(InvokeError::UnknownFunction(m)) => {
            service_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", &m)
        }
    };
    Ok(response)
}

fn json_response(
    status: StatusCode,
    body: &Value,
    function_error: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amz-executed-version", "$LATEST");
    if let Some(kind) = function_error {
        builder = builder.header("x-amz-function-error", kind);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// A service-level error (the invoke itself failed), in the shape AWS SDKs parse.
fn service_error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"Type": "User", "message": message});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", kind)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::handler_name;

    #[test]
    fn function_names_map_to_handlers() {
        assert_eq!(handler_name("CreateImage"), "CreateImage");
        assert_eq!(
            handler_name("arn:aws:lambda:us-east-1:123456789012:function:CreateImage"),
            "CreateImage"
        );
        assert_eq!(
            handler_name(
                "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3APrepare%3Alive"
            ),
            "Prepare"
        );
        assert_eq!(handler_name("FinalizeFunctionArn"), "Finalize");
        assert_eq!(handler_name("CleanupFunction"), "Cleanup");
        assert_eq!(handler_name("Function"), "Function");
    }
}
