//! Property test over the whole path a template takes: text → parse → variables →
//! interpolation → typed configs → `render_later` of the deferred fields. Whatever the
//! input, `prepare` answers (a build or problems) and never panics, overflows the stack or
//! exhausts memory.
//!
//! proptest rather than cargo-fuzz: cargo-fuzz needs a nightly toolchain (this project builds
//! with stable), and structured generators reach past JSON parsing and the template syntax
//! into the evaluator and the builder rules far more often than mutated bytes do.
//! `PROPTEST_CASES` sets the number of cases (proptest's default, 256, for the test suite);
//! scripts/fuzz.sh runs many more.

use std::cell::Cell;
use std::collections::BTreeMap;

use amiflow_template::{inspect, prepare, render_later, PrepareOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

const FUNCTIONS: &[&str] = &[
    "build",
    "build_name",
    "build_type",
    "clean_resource_name",
    "env",
    "isotime",
    "lower",
    "packer_version",
    "replace",
    "replace_all",
    "split",
    "strftime",
    "template_dir",
    "timestamp",
    "upper",
    "user",
    "uuid",
    "nope",
    "if",
    "clean_ami_name",
    "vault",
];

const VARIABLES: &[&str] = &["v0", "v1", "v2", "v3", "v4", "v5"];

/// A literal an action may hold: strings (raw and quoted, with escapes and braces),
/// numbers at the edges of i64 and past them, bools, build data.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z{}|()\\-. ]{0,12}".prop_map(|s| format!("`{s}`")),
        "([a-z \"{}]|\\\\[ntx\"u]|\\\\x[0-9a-f]{2}){0,8}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("99999999999999999999".to_string()),
        Just("-1".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(VARIABLES).prop_map(|v| format!("`{v}`")),
        prop::sample::select(vec![
            ".SourceAMI",
            ".SourceAMIName",
            ".BuildRegion",
            ".A.B",
            "."
        ])
        .prop_map(String::from),
        Just("`2006-01-02T15:04:05Z07:00`".to_string()),
        Just("`%Y%m%d%c`".to_string()),
    ]
}

/// An action's inside: function calls, pipelines and parenthesised sub-pipelines.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        literal(),
        prop::sample::select(FUNCTIONS).prop_map(String::from),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("({e})")),
            (
                prop::sample::select(FUNCTIONS),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(f, args)| format!("{f} {}", args.join(" "))),
            (inner.clone(), prop::sample::select(FUNCTIONS))
                .prop_map(|(e, f)| format!("{e} | {f}")),
            (inner, prop::sample::select(FUNCTIONS), literal())
                .prop_map(|(e, f, a)| format!("{e} | {f} {a}")),
        ]
    })
}

/// Parentheses nested around a call: around the limit, and now and then far past it.
fn nested() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => 0usize..=300,
        1 => Just(100_000usize),
    ]
    .prop_map(|n| format!("{}timestamp{}", "(".repeat(n), ")".repeat(n)))
}

/// A block device mapping with numbers at the edges of what EBS and an i64 take.
fn block_device() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(0i64),
        Just(8i64),
        Just(3000i64),
        any::<i64>(),
    ];
    (
        prop::sample::select(vec![None, Some("io1"), Some("io2"), Some("gp3"), Some("gp2")]),
        prop::option::of(number.clone()),
        prop::option::of(number.clone()),
        prop::option::of(number),
    )
        .prop_map(|(volume_type, volume_size, iops, throughput)| {
            json!({"device_name": "/dev/sdb", "volume_type": volume_type, "volume_size": volume_size,
                   "iops": iops, "throughput": throughput})
        })
}

/// A string value: text and actions, whole or broken.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 :/.-]{0,8}",
        expr().prop_map(|e| format!("{{{{ {e} }}}}")),
        expr().prop_map(|e| format!("{{{{- {e} -}}}}")),
        nested().prop_map(|e| format!("{{{{{e}}}}}")),
        prop::sample::select(VARIABLES).prop_map(|v| format!("{{{{user `{v}`}}}}")),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{{/* note */}}".to_string()),
        Just("{{ env `HOME` }}".to_string()),
        "\\PC{0,4}",
    ];
    prop::collection::vec(piece, 0..5).prop_map(|p| p.concat())
}

/// Any JSON value a key might be given: texts, numbers at the edges, lists, objects.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(i64::MAX)),
        prop::sample::select(vec![
            "io1",
            "io2",
            "gp3",
            "dedicated",
            "scp",
            "ssh",
            "ssm",
            "5m",
            "99999h"
        ])
        .prop_map(Value::from),
        Just(json!(4294967295u64)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "device_name",
                    "volume_size",
                    "volume_type",
                    "iops",
                    "throughput",
                    "tenancy",
                    "enabled",
                    "filters",
                    "owners",
                    "role_arn",
                    "http_put_response_hop_limit",
                    "max_attempts",
                    "delay_seconds",
                ]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Keys of every builder, numeric and refused ones among them.
const KEYS: &[&str] = &[
    "ami_name",
    "ami_description",
    "tags",
    "run_tags",
    "region",
    "source_ami",
    "instance_type",
    "max_retries",
    "aws_polling",
    "ssh_timeout",
    "ssh_port",
    "ssh_username",
    "communicator",
    "launch_block_device_mappings",
    "ami_block_device_mappings",
    "ami_root_device",
    "ebs_volumes",
    "metadata_options",
    "placement",
    "spot_price",
    "root_volume_size",
    "ssm_execution_timeout",
    "assume_role",
    "user_data",
    "snapshot_copy_duration_minutes",
    "block_duration_minutes",
];

fn builder() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "amazon-ebs",
            "amazon-chroot",
            "amazon-instance",
            "amazon-ebssurrogate",
            "amazon-ebsvolume",
        ]),
        prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..6),
        prop::collection::vec(block_device(), 0..3),
    )
        .prop_map(|(t, keys, devices)| {
            let mut b = json!({"type": t, "region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2",
                "instance_type": "t3.micro", "ami_name": "fuzz-{{timestamp}}", "communicator": "none"});
            for (k, v) in keys {
                b[k] = v;
            }
            if !devices.is_empty() {
                b["launch_block_device_mappings"] = Value::from(devices);
            }
            b
        })
}

fn template() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    let variables = prop::collection::btree_map(
        prop::sample::select(VARIABLES),
        prop_oneof![text().prop_map(Value::from), Just(Value::Null)],
        0..6,
    );
    let provisioner = (text(), value(), value()).prop_map(|(line, retries, pause)| {
        json!({"type": "shell", "inline": [line], "max_retries": retries, "pause_before": pause})
    });
    (
        variables,
        prop::collection::vec(prop::sample::select(VARIABLES), 0..3),
        prop::collection::vec(builder(), 1..3),
        prop::collection::vec(provisioner, 0..3),
        prop::collection::vec(
            (prop::sample::select(vec!["v0", "v1", "undeclared"]), text()),
            0..3,
        ),
    )
        .prop_map(|(vars, sensitive, builders, provisioners, cli)| {
            let builders: Vec<Value> = builders
                .into_iter()
                .enumerate()
                .map(|(i, mut b)| {
                    b["name"] = json!(format!("b{i}"));
                    b
                })
                .collect();
            let vars: Map<String, Value> =
                vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let tpl = json!({"variables": vars, "sensitive-variables": sensitive,
                "builders": builders, "provisioners": provisioners});
            let cli = cli.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            (tpl.to_string(), cli)
        })
}

/// Every string of a prepared value that still holds `{{`, rendered as a step would.
fn render_deferred(v: &Value, data: &BTreeMap<String, String>) {
    match v {
        Value::String(s) if s.contains("{{") => {
            let _ = render_later(s, data);
        }
        Value::Array(items) => items.iter().for_each(|i| render_deferred(i, data)),
        Value::Object(m) => m.values().for_each(|i| render_deferred(i, data)),
        _ => {}
    }
}

#[test]
fn prepare_never_crashes() {
    // No regression file: the smallest failing input is printed instead.
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let cases = Cell::new(0u64);
    let data: BTreeMap<String, String> = [
        ("SourceAMI", "ami-1"),
        ("SourceAMIName", "base"),
        ("BuildRegion", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let result = runner.run(&template(), |(text, vars)| {
        cases.set(cases.get() + 1);
        let mut opts =
            PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        opts.vars = vars;
        let _ = inspect(&text);
        match prepare(&text, &opts) {
            Ok(p) => {
                for b in &p.builds {
                    render_deferred(&serde_json::to_value(&b.config).unwrap(), &data);
                    b.provisioners
                        .iter()
                        .for_each(|v| render_deferred(v, &data));
                }
            }
            Err(problems) => {
                prop_assert!(!problems.0.is_empty(), "an error without problems");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz: crash after {} cases: {e}", cases.get());
    }
    println!(
        "fuzz: {} cases of template text → parse → prepare → render_later, 0 crashes",
        cases.get()
    );
}

/// HCL2's functions (and a name that is none), for the HCL2 generator.
const HCL2_FUNCTIONS: &[&str] = &[
    "format",
    "join",
    "split",
    "replace",
    "regex_replace",
    "regex",
    "lower",
    "upper",
    "substr",
    "concat",
    "element",
    "flatten",
    "keys",
    "length",
    "lookup",
    "merge",
    "coalesce",
    "index",
    "slice",
    "range",
    "zipmap",
    "max",
    "pow",
    "parseint",
    "tonumber",
    "tolist",
    "jsonencode",
    "jsondecode",
    "base64decode",
    "formatdate",
    "timeadd",
    "legacy_isotime",
    "uuidv5",
    "yamldecode",
    "csvdecode",
    "cidrsubnet",
    "sha256",
    "try",
    "can",
    "nope",
];

/// An HCL2 literal: strings with escapes and stray template characters, numbers at and
/// past the edges, bools, null (what a variable's default may be).
fn hcl2_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9 ]{0,10}".prop_map(|s| format!("\"{s}\"")),
        1 => "[a-z{}$%\\\\\" ]{0,10}".prop_map(|s| format!("\"{s}\"")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => Just("1e400".to_string()),
        1 => Just("99999999999999999999".to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("null".to_string()),
    ]
}

/// An HCL2 expression: literals, `var.` and `local.` references, calls (strings with
/// `${}` templates among them), operators, conditionals, `for` expressions, lists, objects,
/// indexing.
fn hcl2_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        hcl2_literal(),
        prop::sample::select(VARIABLES).prop_map(|v| format!("var.{v}")),
        prop::sample::select(VARIABLES).prop_map(|v| format!("local.{v}")),
        Just("source.name".to_string()),
        Just("build.ID".to_string()),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("({e})")),
            inner
                .clone()
                .prop_map(|e| format!("\"x-${{{e}}}-%{{ if true }}y%{{ endif }}\"")),
            (
                prop::sample::select(HCL2_FUNCTIONS),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%", "==", "&&", "||", ">"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("{c} ? {a} : {b}")),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| {
                let fields: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("k{i} = {e}"))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }),
            (inner.clone(), inner.clone()).prop_map(|(l, e)| format!("[for s in {l} : {e}]")),
            (inner.clone(), inner).prop_map(|(e, i)| format!("{e}[{i}]")),
        ]
    })
}

/// An HCL2 template: variables and locals that refer to each other, a source and a build
/// using them, and now and then deep nesting or a stray token.
fn hcl2_template() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(hcl2_literal(), VARIABLES.len()),
        // A third of the cases keep to literals where references may fail, so that many
        // get through lowering to the JSON path.
        prop_oneof![
            2 => prop::collection::vec(hcl2_expr(), 0..4),
            1 => prop::collection::vec(hcl2_literal(), 0..4),
        ],
        prop_oneof![
            2 => prop::collection::vec(hcl2_expr(), 0..3),
            1 => prop::collection::vec(
                hcl2_literal().prop_map(|l| format!("\"${{upper(\"x\")}}\" == {l} ? \"a\" : \"b\"")),
                0..3
            ),
        ],
        prop_oneof![
            20 => 0usize..=120,
            1 => Just(50_000usize),
        ],
        prop_oneof![
            12 => Just(""),
            1 => prop::sample::select(vec!["}", "{", "\"", "${", "<<EOF\n", "= =", "source"]),
        ],
    )
        .prop_map(|(defaults, locals, inline, depth, junk)| {
            let mut text = String::new();
            for (name, default) in VARIABLES.iter().zip(&defaults) {
                text.push_str(&format!("variable \"{name}\" {{\n  default = {default}\n}}\n"));
            }
            text.push_str("locals {\n");
            for (i, e) in locals.iter().enumerate() {
                text.push_str(&format!("  {} = {e}\n", VARIABLES[i]));
            }
            text.push_str("}\n");
            let nested = format!("{}\"x\"{}", "(".repeat(depth), ")".repeat(depth));
            text.push_str(&format!(
                "source \"amazon-ebs\" \"fuzz\" {{\n  region = \"us-east-1\"\n  source_ami = \"ami-1\"\n  instance_type = \"t3.micro\"\n  communicator = \"none\"\n  ami_name = {}\n  tags = {{ Name = {nested} }}\n}}\n",
                inline.first().cloned().unwrap_or_else(|| "\"fuzz\"".into()),
            ));
            text.push_str("build {\n  sources = [\"source.amazon-ebs.fuzz\"]\n");
            for e in &inline {
                text.push_str(&format!("  provisioner \"shell-local\" {{\n    inline = [{e}]\n  }}\n"));
            }
            text.push_str("}\n");
            text.push_str(junk);
            text
        })
}

#[test]
fn hcl2_lowering_never_crashes() {
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.pkr.hcl");
    let cases = Cell::new(0u64);
    // How far the cases got: a generator whose every case fails to parse fuzzes nothing.
    let (lowered_n, prepared_n) = (Cell::new(0u64), Cell::new(0u64));
    let result = runner.run(&hcl2_template(), |text| {
        cases.set(cases.get() + 1);
        std::fs::write(&path, &text).unwrap();
        let opts = PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        match amiflow_template::hcl2::lower(&path, &opts) {
            // A lowered template takes the JSON path, which must answer too.
            Ok(lowered) => {
                lowered_n.set(lowered_n.get() + 1);
                if prepare(&lowered.json(), &lowered.prepare_options(&opts)).is_ok() {
                    prepared_n.set(prepared_n.get() + 1);
                }
            }
            Err(problems) => {
                prop_assert!(!problems.0.is_empty(), "an error without problems");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz: hcl2: crash after {} cases: {e}", cases.get());
    }
    println!(
        "fuzz: hcl2: {} cases of HCL2 text → lower → prepare, 0 crashes ({} lowered, {} prepared)",
        cases.get(),
        lowered_n.get(),
        prepared_n.get()
    );
    assert!(
        lowered_n.get() > 0,
        "no case got past HCL2's parser: the generator fuzzes nothing"
    );
}
