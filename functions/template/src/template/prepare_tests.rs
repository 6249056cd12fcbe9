//! `prepare`, `inspect` and `render_later` on whole templates.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use crate::{inspect, prepare, render_later, PrepareOptions, Prepared, Problems};

fn opts() -> PrepareOptions {
    PrepareOptions::new(Utc.with_ymd_and_hms(2024, 3, 5, 14, 7, 9).unwrap())
}

fn ok(tpl: &Value, o: &PrepareOptions) -> Prepared {
    match prepare(&tpl.to_string(), o) {
        Ok(p) => p,
        Err(e) => panic!("expected the template to prepare, got:\n{e}"),
    }
}

fn problems(tpl: &Value, o: &PrepareOptions) -> String {
    match prepare(&tpl.to_string(), o) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.to_string(),
    }
}

/// A key of a build's typed config, found wherever the config nests it.
fn cfg(p: &Prepared, build: &str, key: &str) -> Value {
    let b = p
        .builds
        .iter()
        .find(|b| b.name == build)
        .unwrap_or_else(|| panic!("no build {build}"));
    let v = serde_json::to_value(&b.config).unwrap();
    find(&v, key).unwrap_or_else(|| panic!("no key {key} in {build}: {v}"))
}

fn find(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .cloned()
            .or_else(|| m.values().find_map(|c| find(c, key))),
        Value::Array(a) => a.iter().find_map(|c| find(c, key)),
        _ => None,
    }
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A builder object with the keys its type requires, plus `extra`.
fn builder(t: &str, extra: Value) -> Value {
    let mut base = match t {
        "amazon-chroot" => {
            json!({"source_ami": "ami-0123456789abcdef0", "ami_name": "test-chroot", "region": "us-east-1"})
        }
        "amazon-instance" => {
            json!({"region": "us-east-1", "source_ami": "ami-0123456789abcdef0", "instance_type": "m5.large",
            "ssh_username": "ubuntu", "account_id": "0123-4567-0890", "s3_bucket": "amiflow-bundles", "x509_cert_path": "c", "x509_key_path": "k", "ami_name": "test-instance"})
        }
        "amazon-ebsvolume" => {
            json!({"region": "us-east-1", "source_ami": "ami-0123456789abcdef0", "instance_type": "t3.micro", "ssh_username": "ubuntu"})
        }
        _ => {
            json!({"region": "us-east-1", "source_ami": "ami-0123456789abcdef0", "instance_type": "t3.micro", "ssh_username": "ubuntu", "ami_name": "test-ami"})
        }
    };
    base["type"] = json!(t);
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    base
}

fn two_builds() -> Value {
    json!({
        "description": "two builds",
        "min_packer_version": "1.5.0",
        "variables": {"region": "us-east-1", "app": "web"},
        "builders": [
            builder("amazon-ebs", json!({"region": "{{user `region`}}", "ami_name": "{{user `app`}}-{{timestamp}}",
             "ami_description": "from {{ .SourceAMIName }} by {{build_name}}",
             "tags": {"Name": "{{user `app`}}", "Source": "{{ .SourceAMI }}", "{{user `app`}}-key": "v"}})),
            builder("amazon-ebs", json!({"name": "second", "region": "eu-west-1", "ami_name": "{{user `app`}}-{{timestamp}}-{{build_name}}"}))
        ],
        "provisioners": [
            {"type": "shell", "inline": ["echo {{build_name}} {{build_type}}"], "pause_before": "10s",
             "override": {"second": {"inline": ["echo overridden"]}}},
            {"type": "shell", "only": ["second"], "inline": ["echo only-second {{ build `SourceAMI` }}"]},
            {"type": "file", "except": ["second"], "source": "a", "destination": "/tmp/a"}
        ],
        "post-processors": ["manifest", [{"type": "manifest", "output": "m-{{build_name}}.json", "only": ["second"]}]]
    })
}

#[test]
fn builds_names_and_fixed_time() {
    let p = ok(&two_builds(), &opts());
    assert_eq!(
        p.builds.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        vec!["amazon-ebs", "second"]
    );
    assert_eq!(p.description.as_deref(), Some("two builds"));
    assert_eq!(cfg(&p, "amazon-ebs", "ami_name"), "web-1709647629");
    // One build time for every build of the run.
    assert_eq!(cfg(&p, "second", "ami_name"), "web-1709647629-second");
    assert_eq!(cfg(&p, "amazon-ebs", "region"), "us-east-1");
    assert!(cfg(&p, "amazon-ebs", "region").is_string());
}

#[test]
fn deferred_fields_keep_build_data_until_render_later() {
    let p = ok(&two_builds(), &opts());
    assert_eq!(
        cfg(&p, "amazon-ebs", "ami_description"),
        "from {{ .SourceAMIName }} by amazon-ebs"
    );
    let tags = cfg(&p, "amazon-ebs", "tags");
    assert_eq!(tags["Name"], "web");
    assert_eq!(tags["Source"], "{{ .SourceAMI }}");
    assert_eq!(tags["web-key"], "v", "tag keys are rendered too");
    let d = data(&[("SourceAMI", "ami-123"), ("SourceAMIName", "ubuntu")]);
    assert_eq!(
        render_later(tags["Source"].as_str().unwrap(), &d).unwrap(),
        "ami-123"
    );
    assert_eq!(
        render_later(
            cfg(&p, "amazon-ebs", "ami_description").as_str().unwrap(),
            &d
        )
        .unwrap(),
        "from ubuntu by amazon-ebs"
    );
}

#[test]
fn builder_specific_deferred_fields() {
    let tpl = json!({
        "variables": {"wrap": "sudo"},
        "builders": [
            builder("amazon-chroot", json!({
             "command_wrapper": "{{user `wrap`}} {{.Command}}", "mount_path": "/mnt/{{.Device}}",
             "pre_mount_commands": ["echo {{.Device}}"], "post_mount_commands": ["ls {{.MountPath}}"]})),
            builder("amazon-instance", json!({"bundle_vol_command": "bundle -k {{.KeyPath}} -p {{.Prefix}}"})),
            builder("amazon-ebsvolume", json!({"ebs_volumes": [{"device_name": "/dev/sdb", "tags": {"From": "{{ .SourceAMI }}"}}]}))
        ]
    });
    let p = ok(&tpl, &opts());
    assert_eq!(
        cfg(&p, "amazon-chroot", "command_wrapper"),
        "sudo {{ .Command }}"
    );
    assert_eq!(
        render_later("sudo {{ .Command }}", &data(&[("Command", "ls /")])).unwrap(),
        "sudo ls /"
    );
    assert_eq!(cfg(&p, "amazon-chroot", "mount_path"), "/mnt/{{ .Device }}");
    assert_eq!(
        cfg(&p, "amazon-chroot", "post_mount_commands")[0],
        "ls {{ .MountPath }}"
    );
    assert_eq!(
        cfg(&p, "amazon-instance", "bundle_vol_command"),
        "bundle -k {{ .KeyPath }} -p {{ .Prefix }}"
    );
    assert_eq!(
        cfg(&p, "amazon-ebsvolume", "ebs_volumes")[0]["tags"]["From"],
        "{{ .SourceAMI }}"
    );
}

#[test]
fn build_data_where_packer_renders_at_prepare_is_a_problem() {
    let tpl = json!({"builders": [
        builder("amazon-ebs", json!({"ami_name": "x-{{ .SourceAMIName }}"})),
        builder("amazon-chroot", json!({"run_tags": {"a": "{{ .BuildRegion }}"}}))
    ]});
    let all = problems(&tpl, &opts());
    assert!(
        all.contains("amazon-ebs: ami_name: `{{ .SourceAMIName }}` is build data"),
        "{all}"
    );
    assert!(
        all.contains("renders build data only in ami_description"),
        "{all}"
    );
    // chroot launches no instance: run_tags are not among its deferred fields.
    assert!(all.contains("amazon-chroot: run_tags.a:"), "{all}");
}

#[test]
fn env_only_in_variables() {
    let o = PrepareOptions {
        env: [("TEAM".to_string(), "core".to_string())].into(),
        ..opts()
    };
    let tpl = json!({"variables": {"team": "{{env `TEAM`}}"}, "builders": [builder("amazon-ebs", json!({"ami_name": "{{user `team`}}"}))]});
    assert_eq!(cfg(&ok(&tpl, &o), "amazon-ebs", "ami_name"), "core");
    let tpl = json!({"builders": [builder("amazon-ebs", json!({"ami_name": "{{env `TEAM`}}"}))]});
    let all = problems(&tpl, &o);
    assert!(
        all.contains("ami_name: `env` is only allowed in \"variables\""),
        "{all}"
    );
}

#[test]
fn required_and_undeclared_variables() {
    let tpl = json!({"variables": {"subnet": null}, "builders": [builder("amazon-ebs", json!({"ami_name": "{{user `subnet`}}", "region": "{{user `nope`}}"}))]});
    let all = problems(&tpl, &opts());
    assert!(
        all.contains("variable `subnet` is required") && all.contains("-var 'subnet=VALUE'"),
        "{all}"
    );
    assert!(all.contains("variable `nope` is not declared"), "{all}");
    let o = PrepareOptions {
        vars: vec![
            ("subnet".into(), "s-1".into()),
            ("other".into(), "x".into()),
        ],
        ..opts()
    };
    // As Packer: a -var the template does not declare is ignored, with a warning naming it.
    let p = ok(
        &json!({"variables": {"subnet": null}, "builders": [builder("amazon-ebs", json!({"ami_name": "{{user `subnet`}}"}))]}),
        &o,
    );
    let warned = p.warnings.join("\n");
    assert!(
        warned.contains("-var other=…: variable `other` is not declared"),
        "{warned}"
    );
    assert!(warned.contains("ignored"), "{warned}");
    assert_eq!(p.warnings.len(), 1, "{warned}");
    assert_eq!(cfg(&p, "amazon-ebs", "ami_name"), "s-1");
}

#[test]
fn var_files_shared_between_templates_and_null_values() {
    let dir = std::env::temp_dir().join(format!("amiflow-shared-vars-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shared = dir.join("shared.json");
    std::fs::write(
        &shared,
        r#"{"subnet": null, "region": "eu-west-1", "other_templates_key": "x", "another": 3}"#,
    )
    .unwrap();
    let tpl = json!({"variables": {"subnet": null, "region": "us-east-1"},
        "builders": [builder("amazon-ebs", json!({"region": "{{user `region`}}", "subnet_id": "{{user `subnet`}}"}))]});
    let o = PrepareOptions {
        var_files: vec![shared.clone()],
        ..opts()
    };
    // `null` in a var-file is the empty string (Packer): the required `subnet` has its value,
    // and an empty subnet_id means "unset".
    let p = ok(&tpl, &o);
    assert_eq!(p.variables["subnet"], "");
    assert_eq!(cfg(&p, "amazon-ebs", "region"), "eu-west-1");
    let origin = shared.display().to_string();
    assert_eq!(
        p.warnings,
        vec![
            format!("-var-file {origin}: variable `another` is not declared in the template's \"variables\" (declared: region, subnet): ignored"),
            format!("-var-file {origin}: variable `other_templates_key` is not declared in the template's \"variables\" (declared: region, subnet): ignored"),
        ]
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn var_file_and_var_precedence() {
    let dir = std::env::temp_dir().join(format!("amiflow-varfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f1 = dir.join("one.json");
    let f2 = dir.join("two.json");
    std::fs::write(&f1, r#"{"a": "file1", "b": "file1", "c": "file1"}"#).unwrap();
    std::fs::write(&f2, r#"{"b": "file2"}"#).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\n  \"a\": }").unwrap();
    let tpl = json!({"variables": {"a": "d", "b": "d", "c": "d", "e": "d"},
        "builders": [builder("amazon-ebs", json!({"ami_name": "{{user `a`}} {{user `b`}} {{user `c`}} {{user `e`}}"}))]});
    let o = PrepareOptions {
        var_files: vec![f1.clone(), f2.clone()],
        vars: vec![("c".into(), "cli".into())],
        ..opts()
    };
    assert_eq!(
        cfg(&ok(&tpl, &o), "amazon-ebs", "ami_name"),
        "file1 file2 cli d"
    );
    let o = PrepareOptions {
        var_files: vec![bad.clone(), dir.join("missing.json")],
        ..opts()
    };
    let all = problems(&tpl, &o);
    assert!(
        all.contains("bad.json is not valid JSON") && all.contains("line 2, column"),
        "{all}"
    );
    assert!(all.contains("missing.json: cannot read it"), "{all}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn provisioners_only_except_override_and_post_processors() {
    let p = ok(&two_builds(), &opts());
    let first = &p.builds[0];
    let second = &p.builds[1];
    assert_eq!(first.provisioners.len(), 2);
    assert_eq!(
        first.provisioners[0]["inline"][0],
        "echo amazon-ebs amazon-ebs"
    );
    assert_eq!(first.provisioners[0]["pause_before"], "10s");
    assert!(first.provisioners[0].get("override").is_none());
    assert_eq!(first.provisioners[1]["type"], "file");
    assert_eq!(second.provisioners.len(), 2);
    assert_eq!(second.provisioners[0]["inline"][0], "echo overridden");
    assert_eq!(
        second.provisioners[1]["inline"][0],
        "echo only-second {{ build \"SourceAMI\" }}"
    );
    assert!(second.provisioners[1].get("only").is_none());
    assert_eq!(first.post_processors, vec![json!({"type": "manifest"})]);
    assert_eq!(second.post_processors.len(), 2);
    assert_eq!(second.post_processors[1]["output"], "m-second.json");
}

#[test]
fn only_and_except_options() {
    let o = PrepareOptions {
        only: vec!["second".into()],
        ..opts()
    };
    assert_eq!(
        ok(&two_builds(), &o)
            .builds
            .iter()
            .map(|b| b.name.clone())
            .collect::<Vec<_>>(),
        vec!["second"]
    );
    let o = PrepareOptions {
        except: vec!["second".into()],
        ..opts()
    };
    assert_eq!(ok(&two_builds(), &o).builds.len(), 1);
    let o = PrepareOptions {
        only: vec!["third".into()],
        ..opts()
    };
    let all = problems(&two_builds(), &o);
    assert!(
        all.contains("-only names build `third`") && all.contains("builds: amazon-ebs, second"),
        "{all}"
    );
}

#[test]
fn sensitive_values_never_serialized_and_masked() {
    let tpl = json!({
        "variables": {"secret_key": "S3cr3tValue!", "password": null, "region": "us-east-1"},
        "sensitive-variables": ["secret_key", "password"],
        "builders": [builder("amazon-ebs", json!({"access_key": "AKIAEXAMPLE", "secret_key": "{{user `secret_key`}}",
                      "tags": {"pw": "{{user `password`}}", "src": "{{ .SourceAMI }}"}}))],
        "provisioners": [{"type": "shell", "environment_vars": ["PW={{user `password`}}"], "inline": ["echo {{user `secret_key`}}"]}]
    });
    let o = PrepareOptions {
        vars: vec![("password".into(), "hunter2hunter2".into())],
        ..opts()
    };
    let p = ok(&tpl, &o);
    let serialized = serde_json::to_string(&p.builds).unwrap();
    assert!(
        !serialized.contains("S3cr3tValue!") && !serialized.contains("hunter2hunter2"),
        "{serialized}"
    );
    assert!(
        serialized.contains("<sensitive:secret_key>")
            && serialized.contains("<sensitive:password>"),
        "{serialized}"
    );
    assert_eq!(p.variables["secret_key"], "<sensitive>");
    assert_eq!(p.variables["password"], "<sensitive>");
    assert_eq!(p.variables["region"], "us-east-1");
    assert!(!format!("{p:?}").contains("hunter2hunter2"));
    let cmd = p.builds[0].provisioners[0]["inline"][0].as_str().unwrap();
    assert_eq!(p.secrets.reveal(cmd), "echo S3cr3tValue!");
    assert_eq!(
        p.secrets.mask("failed: echo S3cr3tValue!"),
        "failed: echo <sensitive>"
    );
    // Deferred fields: the placeholder survives render_later, then reveal gives the value.
    let tags = cfg(&p, "amazon-ebs", "tags");
    let later = render_later(
        tags["pw"].as_str().unwrap(),
        &data(&[("SourceAMI", "ami-1")]),
    )
    .unwrap();
    assert_eq!(p.secrets.reveal(&later), "hunter2hunter2");
}

#[test]
fn sensitive_values_are_masked_in_problems() {
    let tpl = json!({
        "variables": {"pw": "hunter2hunter2"}, "sensitive-variables": ["pw"],
        "builders": [builder("amazon-ebs", json!({"ami_name": "{{ replace `a` `b` `hunter2hunter2` `c` }} {{user `pw`}}"}))]
    });
    let all = problems(&tpl, &opts());
    assert!(
        all.contains("whole number") && !all.contains("hunter2hunter2"),
        "{all}"
    );
}

#[test]
fn malformed_json_has_line_and_column() {
    let text = "{\n  \"builders\": [\n    {\"type\": \"amazon-ebs\",}\n  ]\n}";
    let e = prepare(text, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("the template is not valid JSON") && e.contains("line 3, column 27"),
        "{e}"
    );
}

#[test]
fn structural_problems_all_at_once() {
    let tpl = json!({
        "builderz": [],
        "_comment": "comments are fine",
        "variables": {"list": ["a"]},
        "sensitive-variables": ["ghost"],
        "builders": [
            {"type": "amazon-ebs", "ami_name": "a"},
            {"type": "amazon-ebs", "ami_name": "b"},
            {"type": "docker"},
            {"name": "x"}
        ],
        "provisioners": [
            {"type": "ansible"},
            {"type": "shell", "only": ["nope"], "except": ["amazon-ebs"], "pause_before": "10 seconds", "override": {"ghost": {}}}
        ],
        "post-processors": ["vagrant", {"type": "manifest", "outptu": "x"}],
        "min_packer_version": "99.0.0"
    });
    let all = problems(&tpl, &opts());
    for needle in [
        "builderz: unknown root level key in template",
        "variables.list: a variable's default must be a string",
        "variable `ghost` is listed as sensitive but not declared",
        "more than one builder is named `amazon-ebs`",
        "unknown builder type `docker`",
        "builders[3].type: missing builder type",
        "provisioner type `ansible` is not supported",
        "only one of \"only\" or \"except\"",
        "provisioners[1].only: names build `nope`",
        "provisioners[1].pause_before: \"10 seconds\" is not a duration",
        "provisioners[1].override.ghost: overrides build `ghost`",
        "post-processor type `vagrant` is not supported",
        "post-processors[1].outptu: unknown key of the manifest post-processor",
        "requires Packer 99.0.0 or newer",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("_comment"), "{all}");
}

#[test]
fn inspect_summarises_without_variables() {
    let tpl = json!({
        "description": "demo",
        "variables": {"region": "us-east-1", "token": "abc123", "subnet": null},
        "sensitive-variables": ["token"],
        "builders": [builder("amazon-ebs", json!({})), {"name": "c", "type": "amazon-chroot"}],
        "provisioners": [{"type": "shell", "only": ["c"]}, {"type": "file", "override": {"c": {}}}],
        "post-processors": ["manifest"]
    });
    let s = inspect(&tpl.to_string()).unwrap();
    assert_eq!(s.builders.len(), 2);
    assert_eq!(s.builders[1].builder_type, "amazon-chroot");
    let token = s.variables.iter().find(|v| v.name == "token").unwrap();
    assert_eq!(token.default.as_deref(), Some("<sensitive>"));
    assert!(
        s.variables
            .iter()
            .find(|v| v.name == "subnet")
            .unwrap()
            .required
    );
    let text = s.to_string();
    assert!(
        text.contains("subnet") && text.contains("region = us-east-1") && !text.contains("abc123"),
        "{text}"
    );
    assert!(
        text.contains("shell (only: c)")
            && text.contains("file (override: c)")
            && text.contains("c                        (amazon-chroot)"),
        "{text}"
    );
    assert!(matches!(inspect("[1]"), Err(Problems(_))));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_ish() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("{{".to_string()),
            Just("}}".to_string()),
            Just("{{user `a`}}".to_string()),
            Just("{{ .SourceAMI | upper }}".to_string()),
            Just("\"builders\"".to_string()),
            Just("[{\"type\":\"amazon-ebs\",".to_string()),
            Just("\"variables\":{\"a\":".to_string()),
            Just("\"sensitive-variables\":[\"a\"]".to_string()),
            Just("null".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just("]".to_string()),
            "[ -~]{0,8}".prop_map(|s| s),
            "\\PC{0,4}".prop_map(|s| s),
        ];
        prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
    }

    fn template_with(s: &str) -> String {
        json!({"variables": {"a": s}, "builders": [builder("amazon-ebs", json!({"ami_name": s, "tags": {s: s}}))],
               "provisioners": [{"type": "shell", "inline": [s]}]})
        .to_string()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn prepare_never_panics_on_random_text(s in json_ish()) {
            let _ = prepare(&s, &opts());
            let _ = inspect(&s);
        }

        #[test]
        fn interpolation_never_panics(s in "\\PC{0,40}", t in json_ish()) {
            for text in [&s, &t] {
                let _ = prepare(&template_with(text), &opts());
                let _ = render_later(text, &data(&[("SourceAMI", "ami-1")]));
            }
        }
    }
}

#[test]
fn short_secrets_touch_only_the_strings_that_use_them() {
    let tpl = json!({
        "variables": {"pw": "x", "dsn": "db://admin:{{user `pw`}}@host", "plain": "xlarge"},
        "sensitive-variables": ["pw"],
        "builders": [builder("amazon-ebs", json!({"instance_type": "t3.{{user `plain`}}", "max_retries": 3}))],
        "provisioners": [{"type": "shell", "inline": ["connect {{user `dsn`}}", "echo max"]}]
    });
    let p = ok(&tpl, &opts());
    assert_eq!(cfg(&p, "amazon-ebs", "instance_type"), "t3.xlarge");
    let inline = &p.builds[0].provisioners[0]["inline"];
    assert_eq!(inline[0], "connect db://admin:<sensitive:pw>@host");
    assert_eq!(inline[1], "echo max");
    assert_eq!(
        p.secrets.reveal(inline[0].as_str().unwrap()),
        "connect db://admin:x@host"
    );
    // A variable built from a secret is masked in the summary too.
    assert_eq!(p.variables["dsn"], "db://admin:<sensitive>@host");
    assert_eq!(p.variables["plain"], "xlarge");
}

#[test]
fn functions_on_sensitive_values_are_refused() {
    let tpl = json!({
        "variables": {"pw": "hunter2hunter2"}, "sensitive-variables": ["pw"],
        "builders": [builder("amazon-ebs", json!({}))],
        "provisioners": [{"type": "shell", "inline": ["echo {{user `pw` | upper}}"]}]
    });
    let all = problems(&tpl, &opts());
    assert!(
        all.contains("a sensitive variable cannot be passed to `upper`")
            && !all.contains("hunter2"),
        "{all}"
    );
}

#[test]
fn force_sets_force_deregister_on_every_build_that_makes_an_ami() {
    let tpl = json!({"builders": [
        builder("amazon-ebs", json!({"name": "a"})),
        builder("amazon-ebs", json!({"name": "b", "force_deregister": true})),
        builder("amazon-ebsvolume", json!({"name": "v"})),
    ]});
    let plain = ok(&tpl, &opts());
    assert_eq!(cfg(&plain, "a", "force_deregister"), json!(false));
    assert_eq!(cfg(&plain, "b", "force_deregister"), json!(true));
    let mut forced = opts();
    forced.force = true;
    let p = ok(&tpl, &forced);
    assert_eq!(cfg(&p, "a", "force_deregister"), json!(true));
    assert_eq!(cfg(&p, "b", "force_deregister"), json!(true));
    // Packer's -force sets force_deregister only.
    assert_eq!(cfg(&p, "a", "force_delete_snapshot"), json!(false));
    assert!(p.builds.iter().any(|b| b.name == "v"));
}

#[test]
fn the_error_cleanup_provisioner_is_prepared_per_build_with_only_and_checked() {
    let tpl = json!({
        "builders": [
            builder("amazon-ebs", json!({"name": "a"})),
            builder("amazon-ebs", json!({"name": "b"})),
        ],
        "error-cleanup-provisioner": {
            "type": "shell-local", "only": ["a"], "inline": ["echo {{user `who`}} {{build_name}}"]
        },
        "variables": {"who": "me"}
    });
    let p = ok(&tpl, &opts());
    let of = |n: &str| {
        p.builds
            .iter()
            .find(|b| b.name == n)
            .unwrap()
            .error_cleanup_provisioner
            .clone()
    };
    assert_eq!(of("a").unwrap()["inline"], json!(["echo me a"]));
    assert_eq!(of("b"), None, "only: [a] leaves b without one");

    let bad = json!({
        "builders": [builder("amazon-ebs", json!({}))],
        "error-cleanup-provisioner": {"type": "shell", "inline": ["x"], "scripts": ["y"]}
    });
    let text = problems(&bad, &opts());
    assert!(text.contains("error-cleanup-provisioner (shell)"), "{text}");

    let chroot = json!({
        "builders": [builder("amazon-chroot", json!({}))],
        "error-cleanup-provisioner": {"type": "shell-local", "inline": ["x"]}
    });
    let text = problems(&chroot, &opts());
    assert!(text.contains("error-cleanup step"), "{text}");
}

#[test]
fn an_unknown_build_data_name_is_refused_at_validation() {
    let with = |key: &str| {
        json!({
            "builders": [builder("amazon-ebs", json!({}))],
            "provisioners": [{"type": "shell", "inline": [format!("echo '{{{{ build `{key}` }}}}'")]}]
        })
    };
    for known in ["SSHPublicKey", "SSHPrivateKey", "SourceAMI", "ID"] {
        ok(&with(known), &opts());
    }
    let text = problems(&with("SSHPublicKeys"), &opts());
    assert!(
        text.contains("no build data is named `SSHPublicKeys`") && text.contains("SSHPublicKey,"),
        "{text}"
    );
}

/// amazon-instance's default `bundle_prefix` (`image-{{timestamp}}`) is rendered as a
/// written one is: left as it is, a bundle upload command's curl took the braces for a
/// glob (examples/instance-basic.json names no prefix).
#[test]
fn the_default_bundle_prefix_is_rendered() {
    let tpl = json!({"builders": [{
        "type": "amazon-instance", "region": "us-east-1", "source_ami": "ami-1",
        "instance_type": "m3.medium", "ssh_username": "u", "account_id": "0123-4567-0890",
        "s3_bucket": "bundles", "x509_cert_path": "c", "x509_key_path": "k", "ami_name": "image"
    }]});
    let p = ok(&tpl, &opts());
    let prefix = cfg(&p, "amazon-instance", "bundle_prefix");
    let expected = format!("image-{}", opts().build_time.timestamp());
    assert_eq!(prefix, json!(expected));
}
