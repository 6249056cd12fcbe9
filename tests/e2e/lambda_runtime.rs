//! The real `bootstrap` binary driven through the Lambda Runtime API by a local emulator:
//! it answers an invoke, reports step errors with their name as errorType, refuses an
//! unknown handler at init, and logs JSON. Prints cold start and peak RSS of the binary it ran
//! (the debug build; `AMIFLOW_BIN_DIR=<target>/release` measures the release one).

use std::io::Read;
use std::time::Duration;

use amiflow_tests::lambda_harness::{RuntimeApi, RuntimeReport};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// An amazon-ebs builder that passes validation (typed configs need these keys).
fn ebs_builder(name: &str) -> Value {
    json!({"type": "amazon-ebs", "name": name, "region": "us-east-1", "source_ami": "ami-12345678",
        "instance_type": "t3.micro", "ami_name": format!("lambda-runtime-{name}"), "communicator": "none"})
}

/// A build state around a really prepared build (Prepare's own output), with the AMIs and
/// error Finalize reads.
fn build_state(name: &str, amis: Value, error: Option<Value>) -> Value {
    let template = json!({"builders": [ebs_builder(name)]}).to_string();
    let prepared = amiflow_template::prepare(
        &template,
        &amiflow_template::PrepareOptions::new(chrono::Utc::now()),
    )
    .expect("the fixture template prepares");
    let mut s = json!({
        "execution": "exec-1",
        "build": prepared.builds[0],
        "data": {"amis": amis},
    });
    if let Some(e) = error {
        s["error"] = e;
    }
    s
}

fn json_log_lines(child: &mut std::process::Child) -> Vec<Value> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn finalize_answers_an_invoke_and_names_its_errors() {
    let mut api = RuntimeApi::start().await;
    let id = api.invoke(json!([
        build_state("web", json!({"us-west-2": "ami-2", "us-east-1": "ami-1"}), None),
        build_state("db", json!({}), Some(json!({"Error": "BuildFailed", "Cause": "{\"errorType\":\"BuildFailed\",\"errorMessage\":\"instance i-1 terminated\"}"}))),
    ]));
    let (mut child, started) = api.spawn_bootstrap("Finalize");
    let RuntimeReport::Response {
        request_id,
        body,
        at,
    } = api.report(WAIT).await
    else {
        panic!("expected a response")
    };
    let cold_start = at - started;
    assert_eq!(request_id, id);
    assert_eq!(body["failed"], 1);
    assert_eq!(
        body["builds"][0]["artifact_id"],
        "us-east-1:ami-1,us-west-2:ami-2"
    );
    assert_eq!(
        body["builds"][1]["error"],
        "BuildFailed: instance i-1 terminated"
    );

    // Input that is not a list of build states: the step's own error name, not a Rust type name.
    let bad = api.invoke(json!({"not": "a build state"}));
    match api.report(WAIT).await {
        RuntimeReport::Error {
            request_id, body, ..
        } => {
            assert_eq!(request_id, bad);
            assert_eq!(body["errorType"], "BuildFailed", "{body}");
            assert!(
                body["errorMessage"]
                    .as_str()
                    .unwrap()
                    .contains("build state"),
                "{body}"
            );
        }
        other => panic!("expected an error report, got {other:?}"),
    }
    let rss = child
        .peak_rss_kib()
        .expect("VmHWM of the running bootstrap");
    println!(
        "{} Finalize: cold start {:.1} ms (exec → first response), peak RSS {rss} KiB",
        amiflow_tests::lambda_harness::workspace_binary("bootstrap").display(),
        cold_start.as_secs_f64() * 1e3
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let logs = json_log_lines(&mut child.0);
    assert!(
        logs.iter()
            .any(|l| l["fields"]["error_type"] == "BuildFailed"),
        "the failure is logged as JSON: {logs:?}"
    );
}

#[tokio::test]
async fn prepare_reports_invalid_template_with_every_problem() {
    let mut api = RuntimeApi::start().await;
    let good = api.invoke(json!({
        "input": {"template": {"builders": [
            ebs_builder("web"),
            {"type": "amazon-chroot", "region": "us-east-1", "source_ami": "ami-12345678", "ami_name": "lambda-runtime-chroot"},
        ]}, "on_error": "abort"},
        "execution": "exec-42",
    }));
    let bad = api.invoke(json!({
        "input": {"template": {"builders": [{"type": "docker"}, {"type": "googlecompute", "name": "g"}]}},
        "execution": "exec-43",
    }));
    let (mut child, _) = api.spawn_bootstrap("Prepare");
    match api.report(WAIT).await {
        RuntimeReport::Response {
            request_id, body, ..
        } => {
            assert_eq!(request_id, good);
            let builds = body["builds"].as_array().expect("builds");
            assert_eq!(builds.len(), 2);
            assert_eq!(builds[0]["execution"], "exec-42");
            assert_eq!(builds[0]["on_error"], "abort");
            assert_eq!(builds[1]["build"]["name"], "amazon-chroot");
        }
        other => panic!("expected a response, got {other:?}"),
    }
    match api.report(WAIT).await {
        RuntimeReport::Error {
            request_id,
            body,
            error_type_header,
            ..
        } => {
            assert_eq!(request_id, bad);
            assert_eq!(body["errorType"], "InvalidTemplate", "{body}");
            let message = body["errorMessage"].as_str().unwrap();
            assert!(
                message.contains("docker") && message.contains("googlecompute"),
                "every problem listed: {message}"
            );
            assert!(
                error_type_header.is_some(),
                "the runtime marks the error with Lambda-Runtime-Function-Error-Type"
            );
        }
        other => panic!("expected an error report, got {other:?}"),
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

#[tokio::test]
async fn prepare_in_lambda_refuses_static_credentials() {
    let mut api = RuntimeApi::start().await;
    api.invoke(json!({
        "input": {"template": {"builders": [{
            "access_key": "AKIAEXAMPLE", "secret_key": "s3cr3t",
            "type": "amazon-ebs", "name": "web", "region": "us-east-1", "source_ami": "ami-12345678",
            "instance_type": "t3.micro", "ami_name": "lambda-runtime-web", "communicator": "none",
        }]}},
        "execution": "exec-1",
    }));
    let (mut child, _) = api.spawn_bootstrap("Prepare");
    match api.report(WAIT).await {
        RuntimeReport::Error { body, .. } => {
            assert_eq!(body["errorType"], "InvalidTemplate");
            let message = body["errorMessage"].as_str().unwrap();
            assert!(
                message.contains("web: access_key") && message.contains("web: secret_key"),
                "{message}"
            );
            assert!(message.contains("history"), "says why: {message}");
        }
        other => panic!("expected an error report, got {other:?}"),
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let logs = json_log_lines(&mut child.0);
    let all = serde_json::to_string(&logs).unwrap();
    assert!(
        !all.contains("s3cr3t"),
        "the secret never reaches the logs: {all}"
    );
}

#[tokio::test]
async fn unknown_handler_fails_init_and_lists_the_known_ones() {
    let mut api = RuntimeApi::start().await;
    let (mut child, _) = api.spawn_bootstrap("CreateImagee");
    match api.report(WAIT).await {
        RuntimeReport::InitError { body, .. } => {
            assert_eq!(body["errorType"], "UnknownHandler");
            let message = body["errorMessage"].as_str().unwrap();
            assert!(
                message.contains("CreateImagee")
                    && message.contains("Prepare")
                    && message.contains("Finalize"),
                "{message}"
            );
        }
        other => panic!("expected an init error, got {other:?}"),
    }
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the runtime exits after an init error");
}

/// One JSON POST with `Connection: close`; returns status, headers (lower-case) and body.
fn http_post(addr: &str, path: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    http_post_with(addr, path, &[("Content-Type", "application/json")], body)
}

/// One POST with `headers` (and Host: `addr`).
fn http_post_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to serve-lambdas");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        write!(stream, "POST {path} HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
    } else {
        write!(stream, "POST {path} HTTP/1.1\r\n").unwrap();
    }
    write!(
        stream,
        "{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// `amiflow serve-lambdas --port 0` with fake credentials: the server (killed by its PID
/// on drop), its address and the path prefix (the token) of its endpoint.
fn start_serve_lambdas() -> (amiflow_tests::lambda_harness::ChildGuard, String, String) {
    use std::io::BufRead;
    let mut cmd =
        std::process::Command::new(amiflow_tests::lambda_harness::workspace_binary("amiflow"));
    cmd.args(["serve-lambdas", "--port", "0"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_LAMBDA_FUNCTION_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut server = amiflow_tests::lambda_harness::ChildGuard(
        cmd.spawn().expect("spawn amiflow serve-lambdas"),
    );
    let mut first_line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let endpoint = first_line
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("endpoint on the first line: {first_line:?}"));
    let (addr, token) = endpoint
        .split_once('/')
        .unwrap_or_else(|| panic!("the endpoint carries a token path: {first_line:?}"));
    (server, addr.to_string(), format!("/{token}"))
}

#[test]
fn serve_lambdas_serves_the_real_handlers_with_lambda_error_semantics() {
    let (_server, addr, prefix) = start_serve_lambdas();
    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3APrepare";
    let (status, headers, body) = http_post(
        &addr,
        &format!("{prefix}/2015-03-31/functions/{arn}/invocations"),
        r#"{"input": {"template": "{ not json"}, "execution": "e-1"}"#,
    );
    assert_eq!(status, 200, "a function error is still HTTP 200");
    assert!(
        headers.contains(&("x-amz-function-error".into(), "Unhandled".into())),
        "{headers:?}"
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["errorType"], "InvalidTemplate", "{error}");

    let (status, headers, body) = http_post(
        &addr,
        &format!("{prefix}/2015-03-31/functions/FinalizeFunctionArn/invocations"),
        "[]",
    );
    assert_eq!(status, 200);
    assert!(
        !headers.iter().any(|(k, _)| k == "x-amz-function-error"),
        "{headers:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"builds": [], "failed": 0})
    );

    let (status, headers, body) = http_post(
        &addr,
        &format!("{prefix}/2015-03-31/functions/NoSuchStep/invocations"),
        "{}",
    );
    assert_eq!(status, 404);
    assert!(
        headers.contains(&(
            "x-amzn-errortype".into(),
            "ResourceNotFoundException".into()
        )),
        "{headers:?}"
    );
    assert!(
        body.contains("Finalize"),
        "lists the known handlers: {body}"
    );
}

#[test]
fn serve_lambdas_answers_only_its_token_holder_outside_a_browser() {
    let (_server, addr, prefix) = start_serve_lambdas();
    let finalize = "/2015-03-31/functions/Finalize/invocations";
    let json = ("Content-Type", "application/json");
    let refused = |path: &str, headers: &[(&str, &str)], body: &str, why: &str| {
        let (status, headers, body) = http_post_with(&addr, path, headers, body);
        assert_eq!(status, 403, "{why}: {body}");
        assert!(
            headers.contains(&("x-amzn-errortype".into(), "AccessDeniedException".into())),
            "{why}: {headers:?}"
        );
    };
    refused(finalize, &[json], "[]", "no token");
    refused(
        &format!("/not-the-token{finalize}"),
        &[json],
        "[]",
        "a wrong token",
    );
    refused(
        &format!("{prefix}{finalize}"),
        &[json, ("Origin", "https://attacker.example")],
        "[]",
        "a browser origin",
    );
    refused(
        &format!("{prefix}{finalize}"),
        &[json, ("Host", "attacker.example:80")],
        "[]",
        "a rebound DNS name",
    );
    for form in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        refused(
            &format!("{prefix}{finalize}"),
            &[("Content-Type", form)],
            "[]",
            form,
        );
    }
    let (status, _, body) =
        http_post_with(&addr, &format!("{prefix}{finalize}"), &[json], "not json");
    assert_eq!(status, 400, "a body that is not JSON: {body}");
    // The token holder, as an AWS SDK calls it, gets the handler.
    let (status, _, body) = http_post_with(
        &addr,
        &format!("{prefix}{finalize}"),
        &[("Content-Type", "application/octet-stream")],
        "[]",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"builds": [], "failed": 0})
    );
}
