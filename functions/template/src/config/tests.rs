//! Unit tests of `from_builder` over raw JSON maps: every rule has a case here.

use serde_json::{json, Map, Value};

use super::*;

pub(super) fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn ok(t: BuilderType, v: Value) -> BuilderConfig {
    match from_builder_with_env("b", t, &obj(v), &no_env) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems: {p:#?}"),
    }
}

#[test]
fn shapes_deserialize_with_defaults() {
    let c = ok(BuilderType::Ebs, json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "ami_name": "demo", "communicator": "none"}));
    let BuilderConfig::Ebs(e) = &c else { panic!() };
    assert_eq!(e.run.source_ami.as_deref(), Some("ami-0f8848d57eb4fe2d2"));
    assert_eq!(e.comm.ssh_port, 22);
    assert_eq!(e.comm.ssh_timeout.to_string(), "5m");
    assert_eq!(e.run.shutdown_behavior, "stop");
    assert_eq!(e.access.max_retries, 10);
    assert_eq!(e.run.metadata_options.http_tokens, "optional");
    let s = serde_json::to_value(&c).unwrap();
    let back: BuilderConfig = serde_json::from_value(s).unwrap();
    assert_eq!(back, c);
}
