//! The HCL2 front end end to end: files → lowered JSON template → prepared builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{lower, Hcl2Template};
use crate::{prepare, PrepareOptions, Prepared, PreparedBuild};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn options() -> PrepareOptions {
    PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"))
}

/// Lowers and prepares; problems as one string, each located in the HCL2 source.
fn run(path: &Path, opts: &PrepareOptions) -> Result<(Hcl2Template, Prepared), String> {
    let h = lower(path, opts).map_err(|p| p.to_string())?;
    let prepared =
        prepare(&h.json(), &h.prepare_options(opts)).map_err(|p| h.locate(p).to_string())?;
    Ok((h, prepared))
}

/// A folder with the given files, kept alive by the returned guard.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    dir
}

fn one(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = folder(&[("t.pkr.hcl", text)]);
    let path = dir.path().join("t.pkr.hcl");
    (dir, path)
}

fn err(text: &str, opts: &PrepareOptions) -> String {
    let (_d, path) = one(text);
    match run(&path, opts) {
        Ok((h, _)) => panic!("expected problems, got:\n{}", h.json()),
        Err(e) => e,
    }
}

fn ok(text: &str, opts: &PrepareOptions) -> (Hcl2Template, Prepared) {
    let (_d, path) = one(text);
    run(&path, opts).unwrap_or_else(|e| panic!("{e}"))
}

const SOURCE: &str = r#"
source "amazon-ebs" "x" {
  region        = "us-east-1"
  source_ami    = "ami-12345678"
  instance_type = "t3.micro"
  ssh_username  = "ec2-user"
  ami_name      = "x-{{timestamp}}"
}
"#;

fn with_source(rest: &str) -> String {
    format!("{SOURCE}\n{rest}")
}

/// Builds compared without their names (JSON names a build after its type, HCL2 after
/// TYPE.NAME): same type, typed config, provisioners and post-processors, in order.
fn same_builds(json: &[PreparedBuild], hcl: &[PreparedBuild]) -> Result<(), String> {
    if json.len() != hcl.len() {
        return Err(format!(
            "{} builds from JSON, {} from HCL2",
            json.len(),
            hcl.len()
        ));
    }
    for (j, h) in json.iter().zip(hcl) {
        let name = |b: &PreparedBuild| b.name.clone();
        for (what, a, b) in [
            (
                "type",
                serde_json::to_value(j.builder_type).unwrap(),
                serde_json::to_value(h.builder_type).unwrap(),
            ),
            (
                "config",
                serde_json::to_value(&j.config).unwrap(),
                serde_json::to_value(&h.config).unwrap(),
            ),
            (
                "provisioners",
                serde_json::to_value(&j.provisioners).unwrap(),
                serde_json::to_value(&h.provisioners).unwrap(),
            ),
            (
                "post-processors",
                serde_json::to_value(&j.post_processors).unwrap(),
                serde_json::to_value(&h.post_processors).unwrap(),
            ),
        ] {
            if a != b {
                return Err(format!(
                    "{what} of {} (JSON) and {} (HCL2) differ:\nJSON: {a:#}\nHCL2: {b:#}",
                    name(j),
                    name(h)
                ));
            }
        }
    }
    Ok(())
}

/// Required variables get a value, as `every_example_prepares` gives them.
fn example_options(json_text: &str) -> PrepareOptions {
    let mut opts = options();
    if let Ok(summary) = crate::inspect(json_text) {
        opts.vars = summary
            .variables
            .iter()
            .filter(|v| v.required)
            .map(|v| (v.name.clone(), format!("example-{}", v.name)))
            .collect();
    }
    opts.env = [("DB_PASSWORD".to_string(), "s3cret-db".to_string())].into();
    opts
}

fn json_examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_json_example_has_an_hcl2_twin_that_prepares_the_same() {
    let mut failures = Vec::new();
    let examples = json_examples();
    for json_path in &examples {
        let stem = json_path.file_stem().unwrap().to_string_lossy().to_string();
        let twin = repo().join("examples/hcl2").join(format!("{stem}.pkr.hcl"));
        if !twin.exists() {
            failures.push(format!(
                "{}: no twin {}",
                json_path.display(),
                twin.display()
            ));
            continue;
        }
        let text = std::fs::read_to_string(json_path).unwrap();
        let opts = example_options(&text);
        let json = match prepare(&text, &opts) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: {e}", json_path.display()));
                continue;
            }
        };
        match run(&twin, &opts) {
            Ok((_, hcl)) => {
                if let Err(e) = same_builds(&json.builds, &hcl.builds) {
                    failures.push(format!("{}: {e}", twin.display()));
                }
                if json.secrets != hcl.secrets {
                    failures.push(format!(
                        "{}: the secrets differ: {:?} vs {:?}",
                        twin.display(),
                        json.secrets,
                        hcl.secrets
                    ));
                }
            }
            Err(e) => failures.push(format!("{}:\n{e}", twin.display())),
        }
    }
    println!("HCL2 twins: {} checked", examples.len());
    assert!(!examples.is_empty());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn hcl2_upgrade_of_every_example_prepares_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for json_path in json_examples() {
        let text = std::fs::read_to_string(&json_path).unwrap();
        let hcl = match super::upgrade::upgrade(&text) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!("{}: upgrade failed: {e}", json_path.display()));
                continue;
            }
        };
        let out = dir.path().join(format!(
            "{}.pkr.hcl",
            json_path.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::write(&out, &hcl).unwrap();
        let opts = example_options(&text);
        let json = prepare(&text, &opts).expect("examples prepare");
        match run(&out, &opts) {
            Ok((_, prepared)) => {
                if let Err(e) = same_builds(&json.builds, &prepared.builds) {
                    failures.push(format!("{}: {e}\n{hcl}", json_path.display()));
                }
            }
            Err(e) => failures.push(format!("{}:\n{e}\n{hcl}", json_path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_folder_example_prepares_two_builds_from_one_source() {
    let path = repo().join("examples/hcl2/ebs-two-sources");
    let mut opts = options();
    opts.env = [("DB_PASSWORD".to_string(), "hunter2-db".to_string())].into();
    let (h, p) = run(&path, &opts).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = p.builds.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["app.amazon-ebs.web", "app.amazon-ebs.worker"]);
    let json = serde_json::to_value(&p.builds).unwrap();
    let (web, worker) = (
        &json[0]["config"]["amazon-ebs"],
        &json[1]["config"]["amazon-ebs"],
    );
    // The auto pkrvars file sets app_version; the local stamp formats the run's time.
    assert_eq!(web["ami_name"], "web-2.3.1-20231114-221320", "{web:#}");
    assert_eq!(worker["ami_name"], "worker-2.3.1-20231114-221320");
    assert_eq!(
        web["ami_description"],
        "app 2.3.1 from {{ .SourceAMIName }}"
    );
    assert_eq!(web["tags"]["Version"], "2.3.1");
    assert_eq!(web["run_tags"]["Role"], "web");
    assert_eq!(worker["run_tags"]["Role"], "worker");
    assert_eq!(worker["ebs_optimized"], true);
    assert_eq!(web["ebs_optimized"], false);
    assert_eq!(
        worker["ami_block_device_mappings"][1]["device_name"],
        "/dev/sdg"
    );
    assert_eq!(worker["ami_block_device_mappings"][1]["volume_size"], 100);
    assert_eq!(
        web["ami_block_device_mappings"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    // Provisioners per build: source.name resolved, build.ID deferred, only applied.
    let web_prov = &json[0]["provisioners"];
    let worker_prov = &json[1]["provisioners"];
    assert_eq!(web_prov.as_array().unwrap().len(), 1);
    assert_eq!(worker_prov.as_array().unwrap().len(), 2);
    assert_eq!(web_prov[0]["environment_vars"][1], "ROLE=web");
    assert_eq!(
        worker_prov[1]["inline"][0],
        "echo the worker queue on {{ build \"ID\" }}"
    );
    assert_eq!(web_prov[0]["max_retries"], 2);
    assert_eq!(json[0]["post_processors"][0]["type"], "manifest");
    assert_eq!(
        json[1]["post_processors"][0]["custom_data"]["version"],
        "2.3.1"
    );
    // The sensitive value stays out of everything that is serialized or shown.
    let everything = format!("{json}\n{}\n{:?}\n{:?}", h.template, p.variables, p.secrets);
    assert!(!everything.contains("hunter2-db"), "{everything}");
    assert!(
        everything.contains("DB_PASSWORD=<sensitive:db_password>"),
        "{everything}"
    );
    assert_eq!(p.secrets.reveal("<sensitive:db_password>"), "hunter2-db");
    assert_eq!(p.variables["db_password"], "<sensitive>");

    // A -var that breaks the validation block: the message, at the block, never the secret.
    opts.vars = vec![
        ("app_version".into(), "two".into()),
        ("db_password".into(), "hunter2-db".into()),
    ];
    let e = run(&path, &opts).unwrap_err();
    assert!(e.contains("variables.pkr.hcl:13:3: variable \"app_version\": invalid value: The app_version must be a semantic version such as 1.4.2."), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // -only takes globs of build names.
    opts.vars = Vec::new();
    opts.only = vec!["*.worker".into()];
    let (_, p) = run(&path, &opts).unwrap();
    assert_eq!(p.builds.len(), 1);
    assert_eq!(p.builds[0].name, "app.amazon-ebs.worker");
}

#[test]
fn variable_precedence_follows_packer() {
    let dir = folder(&[
        (
            "t.pkr.hcl",
            &with_source(
                r#"
variable "a" { default = "default" }
variable "b" { default = "default" }
variable "c" { default = "default" }
variable "d" { default = "default" }
variable "e" { default = "default" }
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" { inline = ["${var.a} ${var.b} ${var.c} ${var.d} ${var.e}"] }
}
"#,
            ),
        ),
        (
            "x.auto.pkrvars.hcl",
            "c = \"auto\"\nd = \"auto\"\ne = \"auto\"\n",
        ),
        ("f1.pkrvars.hcl", "d = \"file1\"\ne = \"file1\"\n"),
        ("f2.json", "{\"e\": \"file2\"}"),
    ]);
    let mut opts = options();
    opts.env = [
        ("PKR_VAR_b".to_string(), "env".to_string()),
        ("PKR_VAR_c".to_string(), "env".to_string()),
    ]
    .into();
    opts.var_files = vec![
        dir.path().join("f1.pkrvars.hcl"),
        dir.path().join("f2.json"),
    ];
    opts.vars = vec![("e".into(), "cli1".into()), ("e".into(), "cli2".into())];
    let (_, p) = run(&dir.path().join("t.pkr.hcl"), &opts).unwrap();
    assert_eq!(
        p.builds[0].provisioners[0]["inline"][0],
        "default env auto file1 cli2"
    );
}

#[test]
fn types_convert_values_from_every_input() {
    let text = with_source(
        r#"
variable "count" { type = number }
variable "flags" { type = map(bool) }
variable "zones" { type = list(string) }
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" { inline = [format("%d %v %s", var.count + 1, var.flags.fast, join(",", var.zones))] }
}
"#,
    );
    let mut opts = options();
    opts.vars = vec![
        ("count".into(), "41".into()),
        ("flags".into(), "{ fast = true }".into()),
        ("zones".into(), "[\"a\", \"b\"]".into()),
    ];
    let (_, p) = ok(&text, &opts);
    assert_eq!(p.builds[0].provisioners[0]["inline"][0], "42 true a,b");
    opts.vars[0].1 = "many".into();
    let e = err(&text, &opts);
    assert!(e.contains("variable \"count\": -var count: the value does not match type number: a number is required, found \"many\""), "{e}");
    let e = err(&text, &options());
    assert!(e.contains("variable \"zones\": a value is required (the variable has no default): pass -var 'zones=VALUE'"), "{e}");
}

#[test]
fn problems_have_positions_and_suggestions() {
    let cases: &[(&str, &str)] = &[
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisoner \"shell\" {}\n}", "t.pkr.hcl:12:3: build: unknown block `provisoner`; did you mean provisioner?"),
        ("build {\n  sources = [\"source.amazon-ebs.y\"]\n}", "`source.amazon-ebs.y` names no source; did you mean source.amazon-ebs.x?"),
        ("variable \"region\" { default = \"r\" }\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [var.regoin] }\n}", "t.pkr.hcl:13:39: provisioner \"shell\": no variable named `regoin` is declared; did you mean region?"),
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [uper(\"a\")] }\n}", "there is no function named `uper`; did you mean upper?"),
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [setproduct([\"a\"], [\"b\"])] }\n}", "function `setproduct` is not supported"),
        ("biuld {}", "t.pkr.hcl:10:1: unknown block `biuld`; did you mean build?"),
        ("data \"amazon-vpc\" \"x\" {}\nbuild { sources = [\"source.amazon-ebs.x\"] }", "t.pkr.hcl:10:6: data \"amazon-vpc\" \"x\": data source `amazon-vpc` is not supported"),
        ("data \"amazon-ami\" \"x\" { owners = [\"self\"] }\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [data.amazon-ami.x.id] }\n}", "data \"amazon-ami\" \"x\" is read from AWS, and this command reads none"),
        ("data \"amazon-ami\" \"x\" { ownres = [\"self\"] }\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [data.amazon-ami.x.id] }\n}", "`ownres` is not a key amiflow reads; did you mean owners?"),
        ("data \"amazon-ami\" \"x\" { owners = [\"self\"] }\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [data.amazon-ami.y.id] }\n}", "no data source data \"amazon-ami\" \"y\" is declared; did you mean amazon-ami.x?"),
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  hcp_packer_registry { bucket_name = \"x\" }\n}", "hcp_packer_registry is not supported: amiflow does not publish to HCP Packer"),
        ("packer {\n  required_plugins {\n    ansible = { source = \"github.com/hashicorp/ansible\", version = \">= 1\" }\n  }\n}\nbuild { sources = [\"source.amazon-ebs.x\"] }", "plugin `ansible` (github.com/hashicorp/ansible) is not supported"),
        ("packer { required_version = \">= 9.0.0\" }\nbuild { sources = [\"source.amazon-ebs.x\"] }", "the template requires Packer >= 9.0.0"),
        ("variable \"v\" {\n  typ = string\n}\nbuild { sources = [\"source.amazon-ebs.x\"] }", "variable \"v\": unknown attribute `typ`; did you mean type?"),
        ("locals {\n  a = local.b\n  b = local.a\n}\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [local.a] }\n}", "locals refer to each other in a loop"),
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [\"${build.SourceAMIname}\"] }\n}", "there is no build data named `SourceAMIname`; did you mean SourceAMIName?"),
        ("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" {\n    only = [\"amazon-ebs.y\"]\n    inline = [\"a\"]\n  }\n}", "only names `amazon-ebs.y`, which is no source of this build; did you mean amazon-ebs.x?"),
    ];
    for (rest, want) in cases {
        let e = err(&with_source(rest), &options());
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
    // A syntax error: line and column from the parser.
    let e = err(
        "source \"amazon-ebs\" \"x\" {\n  region = \n}\n",
        &options(),
    );
    assert!(
        e.contains("t.pkr.hcl:2:12: invalid HCL: invalid expression"),
        "{e}"
    );
    // A key the JSON path's typed config refuses, placed back where it was written.
    let e = err(
        "source \"amazon-ebs\" \"x\" {\n  region = \"us-east-1\"\n  source_ami = \"ami-12345678\"\n  instance_type = \"t3.micro\"\n  ssh_username = \"ec2-user\"\n  ami_nmae = \"x\"\n}\nbuild { sources = [\"source.amazon-ebs.x\"] }\n",
        &options(),
    );
    assert!(
        e.contains("amazon-ebs.x: ami_nmae: unknown key for amazon-ebs; did you mean ami_name?")
            && e.contains("(at "),
        "{e}"
    );
    assert!(e.contains("t.pkr.hcl:6:3"), "{e}");
}

#[test]
fn blocks_fold_and_repeat_as_packer_takes_them() {
    let text = r#"
variable "extra_tags" {
  default = { Owner = "team-a", CostCenter = "42" }
}
source "amazon-ebs" "x" {
  region        = "us-east-1"
  instance_type = "t3.micro"
  ssh_username  = "ec2-user"
  ami_name      = "xyz-ami"
  source_ami_filter {
    filter {
      name  = "name"
      value = "al2023-*"
    }
    filter {
      key    = "architecture"
      values = ["x86_64", "arm64"]
    }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = { Name = "x" }
  tag {
    key   = "Team"
    value = "core"
  }
  dynamic "tag" {
    for_each = var.extra_tags
    content {
      key   = tag.key
      value = tag.value
    }
  }
  run_tag {
    key   = "Purpose"
    value = "build"
  }
  launch_block_device_mappings {
    device_name = "/dev/xvda"
    volume_size = 10
  }
}
build { sources = ["source.amazon-ebs.x"] }
"#;
    let (h, _) = ok(text, &options());
    let b = &h.template["builders"][0];
    assert_eq!(
        b["source_ami_filter"]["filters"],
        serde_json::json!({"name": "al2023-*", "architecture": "x86_64,arm64"})
    );
    assert_eq!(
        b["tags"],
        serde_json::json!({"Name": "x", "Team": "core", "Owner": "team-a", "CostCenter": "42"})
    );
    assert_eq!(b["run_tags"], serde_json::json!({"Purpose": "build"}));
    assert_eq!(b["launch_block_device_mappings"][0]["volume_size"], 10);
}

#[test]
fn build_level_sources_provisioner_overrides_and_post_processor_sequences() {
    let text = with_source(
        r#"
build {
  name = "b"
  sources = ["source.amazon-ebs.x"]
  source "source.amazon-ebs.x" {
    name       = "y"
    ami_name   = "never"
  }
}
"#,
    );
    let e = err(&text, &options());
    assert!(
        e.contains("`ami_name` is already set in the source block"),
        "{e}"
    );

    let text = with_source(
        r#"
build {
  sources = ["source.amazon-ebs.x"]
  source "source.amazon-ebs.x" {
    name = "second"
  }
  provisioner "shell" {
    inline       = ["echo ${source.name}"]
    pause_before = "5s"
    timeout      = "10m"
    override = {
      second = { inline = ["echo overridden"] }
    }
  }
  provisioner "shell-local" {
    except = ["amazon-ebs.second"]
    inline = ["echo ${path.root} ${packer.version}"]
  }
  error-cleanup-provisioner "shell-local" {
    inline = ["echo cleanup"]
  }
  post-processors {
    post-processor "manifest" {
      output = "first.json"
    }
    post-processor "manifest" {
      only   = ["amazon-ebs.x"]
      output = "${source.name}.json"
    }
  }
}
"#,
    );
    let (h, p) = ok(&text, &options());
    assert_eq!(p.builds.len(), 2);
    let (x, second) = (&p.builds[0], &p.builds[1]);
    assert_eq!(x.name, "amazon-ebs.x");
    assert_eq!(second.name, "amazon-ebs.second");
    assert_eq!(x.provisioners[0]["inline"][0], "echo x");
    assert_eq!(x.provisioners[0]["pause_before"], "5s");
    assert_eq!(second.provisioners[0]["inline"][0], "echo overridden");
    assert_eq!(x.provisioners.len(), 2);
    assert_eq!(second.provisioners.len(), 1);
    assert!(x.provisioners[1]["inline"][0]
        .as_str()
        .unwrap()
        .ends_with(&format!(" {}", crate::template::PACKER_COMPAT_VERSION)));
    assert_eq!(x.post_processors.len(), 2);
    assert_eq!(second.post_processors.len(), 1);
    assert_eq!(x.post_processors[1]["output"], "x.json");
    assert_eq!(
        h.template["error-cleanup-provisioner"]["type"],
        "shell-local"
    );
}

#[test]
fn expressions_templates_and_functions() {
    let text = with_source(
        r#"
variable "names" { default = ["a", "b", "c"] }
variable "opt" {
  type    = string
  default = null
}
locals {
  upper_names = [for n in var.names : upper(n) if n != "b"]
  by_name     = { for i, n in var.names : n => i }
  script      = <<-EOT
    #!/bin/sh
    %{ for n in var.names ~}
    echo ${n}
    %{ endfor ~}
  EOT
  safe        = try(var.names[10], "none")
  has_opt     = var.opt == null ? "no" : "yes"
  word_count  = length(split(" ", "one two three"))
  splat       = [{ v = 1 }, { v = 2 }][*].v
  legacy      = var.names.0
  rendered    = templatefile("${path.root}/motd.tpl", { who = "ops", items = var.names })
}
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" {
    inline = concat(
      local.upper_names,
      [tostring(local.by_name["c"]), local.safe, local.has_opt, tostring(local.word_count), jsonencode(local.splat), local.legacy],
      [local.script, "literal $${not} %%{not}", "{{ .Keep }}", local.rendered],
    )
  }
}
"#,
    );
    let dir = folder(&[
        ("t.pkr.hcl", &text),
        (
            "motd.tpl",
            "hello ${who}: %{ for i in items }${i}%{ endfor }",
        ),
    ]);
    let (h, _) = run(&dir.path().join("t.pkr.hcl"), &options()).unwrap_or_else(|e| panic!("{e}"));
    let inline = &h.template["provisioners"][0]["inline"];
    assert_eq!(
        inline,
        &serde_json::json!([
            "A",
            "C",
            "2",
            "none",
            "no",
            "3",
            "[1,2]",
            "a",
            "#!/bin/sh\necho a\necho b\necho c\n",
            "literal ${not} %{not}",
            "{{ .Keep }}",
            "hello ops: abc"
        ])
    );
}

#[test]
fn sensitive_values_pass_through_and_refuse_transformation() {
    let base = with_source(
        r#"
variable "token" {
  sensitive = true
}
local "token_b64" {
  expression = base64encode(var.token)
  sensitive  = true
}
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" {
    environment_vars = ["TOKEN=${var.token}", "B64=${local.token_b64}", join("=", ["U", var.token])]
    inline           = ["echo ok"]
  }
}
"#,
    );
    let mut opts = options();
    opts.vars = vec![("token".into(), "tok-123".into())];
    let (h, p) = ok(&base, &opts);
    let env = &p.builds[0].provisioners[0]["environment_vars"];
    assert_eq!(env[0], "TOKEN=<sensitive:token>");
    assert_eq!(env[1], "B64=<sensitive:local.token_b64>");
    assert_eq!(env[2], "U=<sensitive:token>");
    assert_eq!(
        p.secrets.reveal(env[1].as_str().unwrap()),
        "B64=dG9rLTEyMw=="
    );
    let shown = format!("{}{:?}", h.template, p.builds);
    assert!(
        !shown.contains("tok-123") && !shown.contains("dG9rLTEyMw"),
        "{shown}"
    );

    let bad = base.replace("join(\"=\", [\"U\", var.token])", "upper(var.token)");
    let e = err(&bad, &opts);
    assert!(
        e.contains("`upper` cannot take var.token: it is sensitive"),
        "{e}"
    );
    assert!(!e.contains("tok-123"), "{e}");
}

#[test]
fn build_data_is_deferred_where_the_steps_render_it() {
    let text = r#"
source "amazon-ebs" "x" {
  region          = "us-east-1"
  source_ami      = "ami-12345678"
  instance_type   = "t3.micro"
  ssh_username    = "ec2-user"
  ami_name        = "xyz-ami"
  ami_description = "from ${build.SourceAMIName}"
  tags            = { Base = build.SourceAMI, Team = build.SourceAMITags.Team }
}
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" {
    inline = ["echo ${build.SourceAMIName} ${build.ID} in ${build.BuildRegion}"]
  }
}
"#;
    let (_, p) = ok(text, &options());
    let b = serde_json::to_value(&p.builds[0]).unwrap();
    let c = &b["config"]["amazon-ebs"];
    assert_eq!(c["ami_description"], "from {{ .SourceAMIName }}");
    assert_eq!(c["tags"]["Base"], "{{ .SourceAMI }}");
    assert_eq!(c["tags"]["Team"], "{{ .SourceAMITags.Team }}");
    assert_eq!(
        b["provisioners"][0]["inline"][0],
        "echo {{ build \"SourceAMIName\" }} {{ build \"ID\" }} in {{ build \"BuildRegion\" }}"
    );
    // ami_name is rendered at prepare (as in Packer): build data there is a problem.
    let e = err(
        &text.replace(
            "ami_name        = \"xyz-ami\"",
            "ami_name        = \"x-${build.SourceAMIName}\"",
        ),
        &options(),
    );
    assert!(e.contains("ami_name") && e.contains("build data"), "{e}");
    let e = err(
        &text.replace(
            "\"echo ${build.SourceAMIName}",
            "upper(build.SourceAMIName), \"echo",
        ),
        &options(),
    );
    assert!(
        e.contains(
            "`upper` cannot take build.SourceAMIName: build data is known only when the build runs"
        ),
        "{e}"
    );
}

#[test]
fn inspect_lists_declarations_without_values() {
    let path = repo().join("examples/hcl2/ebs-two-sources");
    let s = super::inspect(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = s.builders.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["app.amazon-ebs.web", "app.amazon-ebs.worker"]);
    let vars: BTreeMap<&str, (Option<&str>, bool, bool)> = s
        .variables
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                (v.default.as_deref(), v.required, v.sensitive),
            )
        })
        .collect();
    assert_eq!(vars["app_version"], (None, true, false));
    assert_eq!(vars["db_password"], (Some("<sensitive>"), false, true));
    assert_eq!(vars["region"], (Some("us-east-1"), false, false));
    assert_eq!(s.provisioners.len(), 2);
    assert_eq!(s.provisioners[1].only, ["app.amazon-ebs.worker"]);
    assert_eq!(s.post_processors[0].step_type, "manifest");
}

#[test]
fn a_folder_without_templates_and_a_directory_error_are_explained() {
    let dir = folder(&[("x.json", "{}")]);
    let e = lower(dir.path(), &options()).unwrap_err().to_string();
    assert!(
        e.contains(
            "holds no *.pkr.hcl or *.pkr.json file; for a JSON template pass the file itself"
        ),
        "{e}"
    );
}

#[test]
fn a_folder_mixes_native_and_json_syntax() {
    let json_vars = r#"{
      "variable": {
        "sizes": {"type": "map(number)", "default": {"root": 12}},
        "team": {"type": "string", "default": "core"}
      },
      "locals": {"name": "team-${var.team}"},
      "build": {
        "sources": ["source.amazon-ebs.x"],
        "provisioner": [
          {"shell": {"inline": ["echo ${local.name} ${source.name}"], "max_retries": 2}},
          {"shell-local": {"only": ["amazon-ebs.x"], "inline": ["echo done"]}}
        ],
        "post-processor": {"manifest": {"output": "m.json"}}
      }
    }"#;
    let src = r#"
source "amazon-ebs" "x" {
  region        = "us-east-1"
  source_ami    = "ami-12345678"
  instance_type = "t3.micro"
  ssh_username  = "ec2-user"
  ami_name      = "x-${var.team}"
  dynamic "launch_block_device_mappings" {
    for_each = var.sizes
    content {
      device_name = "/dev/xvda"
      volume_size = launch_block_device_mappings.value
    }
  }
}
"#;
    let dir = folder(&[("main.pkr.hcl", src), ("build.pkr.json", json_vars)]);
    let (h, p) = run(dir.path(), &options()).unwrap_or_else(|e| panic!("{e}"));
    let b = &p.builds[0];
    assert_eq!(b.provisioners[0]["inline"][0], "echo team-core x");
    assert_eq!(b.provisioners[0]["max_retries"], 2);
    assert_eq!(b.provisioners[1]["type"], "shell-local");
    assert_eq!(b.post_processors[0]["output"], "m.json");
    assert_eq!(h.template["builders"][0]["ami_name"], "x-core");
    assert_eq!(
        h.template["builders"][0]["launch_block_device_mappings"][0]["volume_size"],
        12
    );
    // A problem in the JSON file names the file.
    let dir = folder(&[
        ("main.pkr.hcl", src),
        (
            "build.pkr.json",
            &json_vars.replace("local.name", "local.nmae"),
        ),
    ]);
    let e = run(dir.path(), &options()).unwrap_err();
    assert!(e.contains("build.pkr.json: provisioner \"shell\": no local named `nmae` is defined; did you mean name?"), "{e}");
}

#[test]
fn limits_are_problems_not_crashes() {
    // Locals chained past the limit, a template file that includes itself, a value too long.
    let mut chain = String::from("locals {\n  l0 = \"x\"\n");
    for i in 1..=150 {
        chain.push_str(&format!("  l{i} = local.l{}\n", i - 1));
    }
    chain.push_str("}\n");
    let text = with_source(&format!(
        "{chain}build {{\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" {{ inline = [local.l150] }}\n}}"
    ));
    let e = err(&text, &options());
    assert!(
        e.contains("locals refer to each other more than 100 deep"),
        "{e}"
    );

    let dir = folder(&[
        ("t.pkr.hcl", &with_source("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [templatefile(\"${path.root}/self.tpl\", { root = path.root })] }\n}")),
        ("self.tpl", "${templatefile(\"${root}/self.tpl\", { root = root })}"),
    ]);
    let e = run(&dir.path().join("t.pkr.hcl"), &options()).unwrap_err();
    assert!(e.contains("templatefile nests more than 10 deep"), "{e}");

    let text = with_source("build {\n  sources = [\"source.amazon-ebs.x\"]\n  provisioner \"shell\" { inline = [format(\"%2000000s\", \"x\")] }\n}");
    let e = err(&text, &options());
    assert!(e.contains("longer than 1 MiB"), "{e}");
}

/// Answers each kind with fixed attributes and counts the reads.
struct FixedLookup(std::sync::Mutex<Vec<(String, serde_json::Value)>>);

impl super::data::DataLookup for FixedLookup {
    fn lookup(&self, kind: &str, config: &serde_json::Value) -> Result<serde_json::Value, String> {
        self.0
            .lock()
            .unwrap()
            .push((kind.to_string(), config.clone()));
        Ok(match kind {
            "amazon-ami" => {
                serde_json::json!({"id": "ami-0abc", "name": "base-1", "creation_date": "", "owner": "1", "owner_name": "", "root_device_type": "ebs", "tags": {"Team": "core"}})
            }
            "amazon-parameterstore" => {
                serde_json::json!({"value": "from-ssm", "version": "3", "arn": "arn:p"})
            }
            _ => {
                serde_json::json!({"value": "s3cr3t-v4lue", "secret_string": "{}", "secret_binary": "", "version_id": "v1", "arn": "arn:s"})
            }
        })
    }
}

#[test]
fn data_sources_are_read_once_and_secrets_stay_sensitive() {
    let lookup = std::sync::Arc::new(FixedLookup(Default::default()));
    let mut opts = options();
    opts.data_sources = Some(super::data::DataSources(lookup.clone()));
    let text = r#"
variable "secret_name" {
  type      = string
  default   = "db/prod"
  sensitive = true
}
data "amazon-ami" "base" {
  owners      = ["self"]
  filters     = { name = "base-*" }
  most_recent = true
}
data "amazon-parameterstore" "p" {
  name = "/images/suffix"
}
data "amazon-secretsmanager" "db" {
  name = var.secret_name
  key  = "password"
}
source "amazon-ebs" "x" {
  region        = "us-east-1"
  source_ami    = data.amazon-ami.base.id
  instance_type = "t3.micro"
  ssh_username  = "ec2-user"
  ami_name      = "x-${data.amazon-parameterstore.p.value}-${data.amazon-ami.base.tags.Team}"
}
build {
  sources = ["source.amazon-ebs.x"]
  provisioner "shell" { inline = ["echo ${data.amazon-secretsmanager.db.value} ${data.amazon-ami.base.name}"] }
}
"#;
    let (h, prepared) = ok(text, &opts);
    let reads = lookup.0.lock().unwrap().clone();
    assert_eq!(reads.len(), 3, "each source read once: {reads:?}");
    // The block is evaluated with real values: the secret's name is a sensitive variable.
    assert_eq!(reads[2].1["name"], "db/prod");
    let json = h.json();
    assert!(!json.contains("s3cr3t-v4lue"), "{json}");
    assert!(json.contains("\"source_ami\": \"ami-0abc\""), "{json}");
    assert!(json.contains("x-from-ssm-core"), "{json}");
    let name = "data.amazon-secretsmanager.db.value";
    assert!(
        h.template["sensitive-variables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == name),
        "{json}"
    );
    assert!(h.vars.iter().any(|(n, v)| n == name && v == "s3cr3t-v4lue"));
    let script = prepared.builds[0].provisioners[0]["inline"][0]
        .as_str()
        .unwrap();
    assert_eq!(script, format!("echo <sensitive:{name}> base-1"));
    // A value read decrypted is a secret too.
    let decrypted = text.replace(
        "name = \"/images/suffix\"",
        "name = \"/images/suffix\"\n  with_decryption = true",
    );
    let (h, _) = ok(&decrypted, &opts);
    let json = h.json();
    assert!(
        json.contains("{{user `data.amazon-parameterstore.p.value`}}")
            && !json.contains("from-ssm"),
        "{json}"
    );
}
