//! `amiflow build` of an HCL2 folder against moto: two named builds from one base source,
//! values from an auto pkrvars file and from `PKR_VAR_`, a sensitive value revealed only
//! where it is used, and a manifest that lists both AMIs.

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
