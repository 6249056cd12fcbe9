//! `amiflow build` of HCL2 templates against moto. A folder: two named builds from one base
//! source, values from an auto pkrvars file and from `PKR_VAR_`, a sensitive value revealed
//! only where it is used, and a manifest that lists both AMIs. Data sources: an image, a
//! parameter and a secret read from the emulator while the template loads.

use amiflow_tests::lambda_harness::workspace_binary;
use amiflow_tests::Moto;
use serde_json::Value;

const REGION: &str = "us-east-1";
const SECRET: &str = "tok-secret-4242";

const VARIABLES: &str = r#"
variable "suffix" {
  type = string
}

variable "token" {
  type      = string
  sensitive = true
}
"#;

const MAIN: &str = r#"
source "amazon-ebs" "base" {
  region        = "us-east-1"
  source_ami    = "ami-0f8848d57eb4fe2d2"
  instance_type = "t3.micro"
  communicator  = "none"
  tags          = { Suffix = var.suffix }
}

build {
  name = "hcl"

  source "source.amazon-ebs.base" {
    name     = "a"
    ami_name = "hcl-a-${var.suffix}"
  }

  source "source.amazon-ebs.base" {
    name     = "b"
    ami_name = "hcl-b-${var.suffix}"
  }

  provisioner "shell-local" {
    inline = ["echo ${source.name} ${var.token} > ${path.root}/used-${source.name}.txt"]
  }

  post-processor "manifest" {
    output = "${path.root}/manifest.json"
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hcl2_folder_builds_two_images_with_the_local_engine() {
    let Some(moto) = Moto::start_or_skip("hcl2_folder_builds_two_images_with_the_local_engine")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("variables.pkr.hcl"), VARIABLES).unwrap();
    std::fs::write(root.join("main.pkr.hcl"), MAIN).unwrap();
    std::fs::write(root.join("run.auto.pkrvars.hcl"), "suffix = \"auto\"\n").unwrap();

    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(root)
        .envs(moto.env(REGION))
        .env("PKR_VAR_token", SECRET)
        .current_dir(root)
        .output()
        .await
        .expect("run amiflow build");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "amiflow build failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the sensitive value was printed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("hcl.amazon-ebs.a") && stderr.contains("hcl.amazon-ebs.b"),
        "{stderr}"
    );

    // Revealed where it is used, per build.
    for name in ["a", "b"] {
        let used = std::fs::read_to_string(root.join(format!("used-{name}.txt"))).unwrap();
        assert_eq!(used.trim(), format!("{name} {SECRET}"));
    }

    // One manifest entry per build, and the images in the emulator.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json")).unwrap())
            .unwrap();
    let mut names: Vec<&str> = manifest["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["hcl.amazon-ebs.a", "hcl.amazon-ebs.b"],
        "{manifest:#}"
    );
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(REGION).await);
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let mut made: Vec<(String, String)> = images
        .images()
        .iter()
        .filter(|i| i.name().is_some_and(|n| n.starts_with("hcl-")))
        .map(|i| {
            let suffix = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("Suffix"))
                .and_then(|t| t.value())
                .unwrap_or_default()
                .to_string();
            (i.name().unwrap_or_default().to_string(), suffix)
        })
        .collect();
    made.sort();
    assert_eq!(
        made,
        [
            ("hcl-a-auto".to_string(), "auto".to_string()),
            ("hcl-b-auto".to_string(), "auto".to_string())
        ]
    );
}

const DATA_SECRET: &str = "db-pass-9731";

const DATA_MAIN: &str = r#"
data "amazon-ami" "base" {
  filters = {
    name               = "amzn2-ami-hvm-*-x86_64-gp2"
    "root-device-type" = "ebs"
  }
  owners      = ["amazon"]
  most_recent = true
}

data "amazon-parameterstore" "suffix" {
  name = "/amiflow-test/suffix"
}

data "amazon-secretsmanager" "db" {
  name = "amiflow-test-db"
  key  = "password"
}

source "amazon-ebs" "x" {
  region        = "us-east-1"
  source_ami    = data.amazon-ami.base.id
  instance_type = "t3.micro"
  communicator  = "none"
  ami_name      = "hcl-data-${data.amazon-parameterstore.suffix.value}"
  tags          = { Base = data.amazon-ami.base.name }
}

build {
  sources = ["source.amazon-ebs.x"]

  provisioner "shell-local" {
    inline = ["echo ${data.amazon-secretsmanager.db.value} > ${path.root}/secret.txt"]
  }
}
"#;

/// Packer's three amazon data sources, read while the template loads with the caller's
/// credentials: the image found by filters, a parameter's value, one key of a JSON secret,
/// which stays sensitive (revealed where used, never printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hcl2_data_sources_are_read_from_aws_and_the_secret_stays_sensitive() {
    let Some(moto) =
        Moto::start_or_skip("hcl2_data_sources_are_read_from_aws_and_the_secret_stays_sensitive")
    else {
        return;
    };
    let sdk = moto.sdk_config(REGION).await;
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name("/amiflow-test/suffix")
        .value("fromssm")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name("amiflow-test-db")
        .secret_string(format!(
            "{{\"user\": \"app\", \"password\": \"{DATA_SECRET}\"}}"
        ))
        .send()
        .await
        .unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let newest = ec2
        .describe_images()
        .owners("amazon")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("name")
                .values("amzn2-ami-hvm-*-x86_64-gp2")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .max_by_key(|i| i.creation_date().unwrap_or_default().to_string())
        .map(|i| i.name().unwrap_or_default().to_string())
        .expect("moto has Amazon Linux 2 images");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("main.pkr.hcl"), DATA_MAIN).unwrap();
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(root)
        .envs(moto.env(REGION))
        .current_dir(root)
        .output()
        .await
        .expect("run amiflow build");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "amiflow build failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(DATA_SECRET) && !stderr.contains(DATA_SECRET),
        "the secret was printed:\n{stdout}\n{stderr}"
    );
    let used = std::fs::read_to_string(root.join("secret.txt")).unwrap();
    assert_eq!(used.trim(), DATA_SECRET);
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let image = images
        .images()
        .iter()
        .find(|i| i.name() == Some("hcl-data-fromssm"))
        .unwrap_or_else(|| panic!("the AMI is named from the parameter: {images:?}"));
    let base = image
        .tags()
        .iter()
        .find(|t| t.key() == Some("Base"))
        .and_then(|t| t.value());
    assert_eq!(base, Some(newest.as_str()), "the newest matching image");

    // Refused at validation, naming what is supported: another kind of data source, an
    // attribute the kind does not give.
    let bad = root.join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("main.pkr.hcl"),
        DATA_MAIN
            .replace("data.amazon-ami.base.name", "data.amazon-ami.base.nmae")
            .replace("data \"amazon-parameterstore\"", "data \"amazon-vpc\""),
    )
    .unwrap();
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("validate")
        .arg(&bad)
        .envs(moto.env(REGION))
        .output()
        .await
        .expect("run amiflow validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{stderr}");
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("`amazon-vpc` is not supported")
            && text.contains("amazon-parameterstore")
            && text.contains("no attribute `nmae`; did you mean name?"),
        "{text}"
    );
}
