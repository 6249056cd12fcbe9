//! `amiflow policy TEMPLATE` is exactly what a local build needs, in the simulated account
//! (tests/simacct: its front door decides every call of an IAM user on the user's policy,
//! resources and conditions included). Under the printed policy each example builds, and a
//! twin failing just before Cleanup cleans up, with no call refused; without any one
//! action the build fails on it, or the failing twin's Cleanup is refused it. A user allowed
//! nothing is refused at once, so the enforcement is real.
//!
//! Also here: each build of a template signs with its own (sensitive) credentials.

use std::collections::BTreeSet;

use amiflow_tests::fault_proxy::{FaultProxy, Faults, Injected};
use amiflow_tests::lambda_harness::{workspace_binary, Als};
use amiflow_tests::sshd::Sshd;
use amiflow_tests::Moto;
use serde_json::{json, Value};

use super::builders::{fake_x509_pair, FAKE_BUNDLE_VOL_COMMAND};
use super::chroot_host::{loop_devices_usable, mounts_under, LoopDisk};
use super::simacct::{port_of, Account};

const REGION: &str = "us-east-1";
const SOURCE_AMI: &str = "ami-0f8848d57eb4fe2d2";

/// A user of moto's account with `policy` as its only policy: (access key, secret key).
async fn user_with(iam: &aws_sdk_iam::Client, name: &str, policy: &Value) -> (String, String) {
    iam.create_user().user_name(name).send().await.unwrap();
    iam.put_user_policy()
        .user_name(name)
        .policy_name("amiflow")
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    )
}

/// IAM as an admin user of a moto that enforces IAM once its first calls (made here,
/// unauthenticated: the admin, its policy and key) are spent.
async fn admin_iam(moto: &Moto) -> aws_sdk_iam::Client {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(REGION).await);
    let all = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
    let admin = user_with(&iam, "admin", &all).await;
    let admin_sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto.url())
        .credentials_provider(aws_credential_types::Credentials::new(
            &admin.0, &admin.1, None, None, "admin",
        ))
        .load()
        .await;
    aws_sdk_iam::Client::new(&admin_sdk)
}

/// Actions a build calls on AWS that no build here calls, and why: the test grants them
/// and does not take them away.
const NOT_CALLED_HERE: &[(&str, &str)] = &[
    (
        "ec2:CancelSpotInstanceRequests",
        "moto's spot instances carry no spot request id, so Cleanup has none to cancel",
    ),
    (
        "s3:CreateBucket",
        "UploadBundle creates s3_bucket only when it does not exist; the account has it",
    ),
    (
        "s3:PutBucketTagging",
        "UploadBundle tags s3_bucket only when it creates it",
    ),
    (
        "s3:DeleteBucket",
        "Cleanup removes s3_bucket only when the build created it",
    ),
    (
        "s3:PutObjectAcl",
        "ec2-upload-bundle gives the bundle its ACL (aws-exec-read); the test's curl stand-in \
         for it does not",
    ),
];

/// Whether no build here calls `action`: [`NOT_CALLED_HERE`], and the KMS actions EC2 uses
/// a key with on the caller's behalf (`resources/kms.rs`), which moto's EC2 never does.
fn not_called_here(action: &str) -> bool {
    NOT_CALLED_HERE.iter().any(|(a, _)| *a == action)
        || amiflow::resources::kms::EBS_ENCRYPTION_ACTIONS.contains(&action)
}

/// Actions a build calls whose refusal it survives, and what it then loses.
const TOLERATED: &[(&str, &str)] = &[
    (
        "s3:GetObject",
        "Provision reads an SSM command's whole output from ssm_output_s3_bucket; refused, it \
         warns and shows the output SSM truncated to 24 000 characters",
    ),
    (
        "s3:GetBucketTagging",
        "Cleanup asks whether amazon-instance's s3_bucket is one the build made (by its tags) \
         when its ledger does not say; refused, it keeps the bucket, never removing another's",
    ),
    (
        "ssm:DescribeInstanceInformation",
        "Connect waits until the instance's SSM agent is online; refused, it warns and \
         Provision's SendCommand waits instead (InvalidInstanceId until the agent registers)",
    ),
];

/// One example build as it runs here: the template (`access_key`/`secret_key`, when the
/// template has them, become the run's user's), and whether each action is taken away in
/// turn (the examples that differ from a tested one only in where the keys come from run
/// once, under the policy).
struct Case {
    label: &'static str,
    template: Value,
    removals: bool,
}

fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The key pair the SSH examples log in with: imported into the account (moto's temporary
/// key pairs are not the throwaway sshd's), named by `ssh_keypair_name`.
const SSH_KEY_PAIR: &str = "amiflow-policy-test";

/// An example that provisions over SSH, as it runs here: against the throwaway sshd on
/// 127.0.0.1 with the imported key pair, in the account's region, its provisioners replaced
/// by a harmless one (they would run on this machine: ebssurrogate's formats a disk).
fn over_ssh(mut template: Value, sshd: &Sshd) -> Value {
    for b in template["builders"].as_array_mut().unwrap() {
        b["region"] = json!(REGION);
        b["ssh_host"] = json!("127.0.0.1");
        b["ssh_port"] = json!(sshd.port);
        b["ssh_username"] = json!(sshd.user);
        b["ssh_keypair_name"] = json!(SSH_KEY_PAIR);
        b["ssh_private_key_file"] = json!(sshd.client_key.to_string_lossy());
    }
    template["provisioners"] = json!([{"type": "shell", "inline": ["echo provisioned"]}]);
    template
}

/// The instance profile and bucket the SSM examples name, which the test makes in the
/// account (the profile's role has its name: `amiflow policy` passes the role so named).
const SSM_PROFILE: &str = "amiflow-ssm-instance";
const SSM_BUCKET: &str = "my-amiflow-logs";

/// An example that provisions over SSM, as it runs here: in the account's region and
/// subnet, from its one image (the front door's agent answers for the instance).
fn over_ssm(template: Value, subnet: &str) -> Value {
    let mut template = from_the_one_image(template);
    for b in template["builders"].as_array_mut().unwrap() {
        b["region"] = json!(REGION);
        if b.get("subnet_id").is_some() {
            b["subnet_id"] = json!(subnet);
        }
    }
    template
}

/// A template whose `source_ami_filter` looks for an image this account lacks (its
/// catalogue holds one): that image named instead.
fn from_the_one_image(mut template: Value) -> Value {
    for b in template["builders"].as_array_mut().unwrap() {
        if let Some(o) = b.as_object_mut() {
            if o.remove("source_ami_filter").is_some() {
                o.insert("source_ami".into(), json!(SOURCE_AMI));
            }
        }
    }
    template
}

/// The bucket examples/instance-basic.json names, which the account has.
const INSTANCE_BUCKET: &str = "packer-images";

/// The bucket, instance profile (its role has its name) and security group
/// examples/instance-full.json names, which the test makes in the account.
const INSTANCE_FULL_BUCKET: &str = "my-instance-store-images";
const INSTANCE_FULL_PROFILE: &str = "amiflow-bundler";

/// Where the account's builds may run: its VPC, subnet, and a security group of the VPC.
struct Network {
    vpc: String,
    subnet: String,
    group: String,
}

/// An amazon-instance example as it runs here: over SSH to the sshd from the account's one
/// image (for its own), its X.509 pair and bundle in the sshd's folder, the bundle made by a
/// stand-in for ec2-bundle-vol and uploaded by curl through `endpoint`, signed with the
/// keys the upload command is handed (the caller's, as in a local build); the network ids
/// it names are the account's.
fn instance_here(name: &str, sshd: &Sshd, endpoint: &str, network: &Network) -> Value {
    let mut template = from_the_one_image(over_ssh(example(name), sshd));
    for (key, value) in [
        ("vpc_id", json!(network.vpc)),
        ("subnet_id", json!(network.subnet)),
        ("security_group_ids", json!([network.group])),
    ] {
        if template["builders"][0].get(key).is_some() {
            template["builders"][0][key] = value;
        }
    }
    // moto refuses a launch mapping without `ebs` (AWS takes an instance store's virtual
    // name alone); the mapping changes no call.
    if let Some(b) = template["builders"][0].as_object_mut() {
        b.remove("launch_block_device_mappings");
    }
    let (cert, key) = fake_x509_pair(sshd, "policy");
    let b = &mut template["builders"][0];
    b["source_ami"] = json!(SOURCE_AMI);
    b["x509_cert_path"] = json!(cert.to_string_lossy());
    b["x509_key_path"] = json!(key.to_string_lossy());
    b["x509_upload_path"] = json!(sshd.path("x509").to_string_lossy());
    b["bundle_destination"] = json!(sshd.path("bundle").to_string_lossy());
    b["bundle_vol_command"] = json!(FAKE_BUNDLE_VOL_COMMAND);
    // Signed with the caller's own keys, which carry no session token; no `Expect:
    // 100-continue`.
    b["bundle_upload_command"] = json!(format!(
        "m={{{{.ManifestPath}}}}; for f in $m ${{m%.manifest.xml}}.part.00; do \
         curl -sSf --aws-sigv4 'aws:amz:{{{{.Region}}}}:s3' --user '{{{{.AccessKey}}}}:{{{{.SecretKey}}}}' \
         -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T $f {endpoint}/{{{{.BucketName}}}}/$(basename $f) >/dev/null || exit 3; done"
    ));
    template
}

/// The tags examples/ebs-full.json's network filters find the account's VPC, subnet and
/// security group by (`vpc_filter`, `subnet_filter`, `security_group_filter`).
const EBS_FULL_NETWORK_TAGS: [(&str, &str); 3] =
    [("Name", "build"), ("Tier", "private"), ("Role", "packer")];

/// examples/ebs-full.json as it runs here: over SSH to the sshd, from the account's one
/// image, with its user data file (a path beside the example). Its role, assumed with the
/// profile's keys, is made for each run's user ([`principal`]); its network is the
/// account's, tagged as its filters look; its KMS keys, copies to three regions, sharing
/// and `deprecate_at` are as written.
fn ebs_full_here(sshd: &Sshd) -> Value {
    let mut template = from_the_one_image(over_ssh(example("ebs-full"), sshd));
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let b = &mut template["builders"][0];
    b["user_data_file"] = json!(examples.join("cloud-init.yaml").to_string_lossy());
    // moto's RunInstances drops a mapping's Iops, and then refuses an io2 volume for
    // lacking them; gp3 takes them too, and changes no call.
    for mapping in b["launch_block_device_mappings"].as_array_mut().unwrap() {
        if mapping["volume_type"] == "io2" {
            mapping["volume_type"] = json!("gp3");
        }
    }
    template
}

/// The account moto makes, which examples/ebs-full.json's role ARN names.
const ACCOUNT_ID: &str = "123456789012";

/// The account's amazon-chroot build host, and where its builds mount (the host's agent
/// runs the host script on this machine, as root, the attached volume being a loop disk).
struct ChrootHost {
    instance: String,
    mounts: std::path::PathBuf,
}

/// The build host's tag examples/chroot-full.json finds it by.
const CHROOT_HOST_ROLE: &str = "amiflow-chroot-host";

/// An amazon-chroot example as it runs here: on the account's build host (by id, or by the
/// filter the example names), from the account's one image, mounting under the test's
/// folder; its commands and provisioners, which would run on this machine, made harmless
/// (the loop disk is partitioned and formatted already).
fn chroot_here(name: &str, host: &ChrootHost) -> Value {
    let mut template = from_the_one_image(example(name));
    let b = template["builders"][0].as_object_mut().unwrap();
    b.insert("region".into(), json!(REGION));
    if b.contains_key("source_ami") {
        b.insert("source_ami".into(), json!(SOURCE_AMI));
    }
    if !b.contains_key("chroot_host_filter") {
        b.insert("chroot_host_instance_id".into(), json!(host.instance));
    }
    b.insert(
        "mount_path".into(),
        json!(format!("{}/{{{{.Device}}}}", host.mounts.display())),
    );
    for key in ["pre_mount_commands", "post_mount_commands"] {
        if b.contains_key(key) {
            b.insert(key.into(), json!(["true"]));
        }
    }
    // This machine's binfmt_misc may not be mountable in a chroot; the other mounts are
    // the defaults.
    b.remove("chroot_mounts");
    b.remove("command_wrapper");
    // The loop disk stands in for the attached volume under its own name, not an NVMe
    // path; the device names change no call.
    b.remove("nvme_device_path");
    if template.get("provisioners").is_some() {
        template["provisioners"] = json!([{"type": "shell", "inline": ["echo provisioned"]}]);
    }
    template
}

/// The examples this account runs, and ebs-basic with the options that bring their own
/// calls (a copy, sharing, tags, a temporary instance profile). Those that provision over
/// SSH need `sshd`.
fn cases(
    sshd: Option<&Sshd>,
    network: &Network,
    endpoint: &str,
    chroot: Option<&ChrootHost>,
) -> Vec<Case> {
    let subnet = network.subnet.as_str();
    let mut options = example("ebs-basic");
    let b = &mut options["builders"][0];
    b["ami_regions"] = json!(["us-west-2"]);
    b["ami_users"] = json!(["210987654321"]);
    b["snapshot_users"] = json!(["210987654321"]);
    b["tags"] = json!({"Team": "images"});
    b["temporary_iam_instance_profile_policy_document"] = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]
    });
    let case = |label: &'static str, template: Value, removals: bool| Case {
        label,
        template,
        removals,
    };
    let mut cases = vec![
        case("ebs-basic", example("ebs-basic"), true),
        case("ebs-options", options, true),
        case("ebsvolume", example("ebsvolume"), true),
        case("credentials-static", example("credentials-static"), false),
        case("credentials-env", example("credentials-env"), false),
        case("credentials-profile", example("credentials-profile"), false),
        case(
            "ebs-al2023",
            from_the_one_image(example("ebs-al2023")),
            true,
        ),
        case("ebs-ssm", over_ssm(example("ebs-ssm"), subnet), true),
        case(
            "windows-ssm",
            over_ssm(example("windows-ssm"), subnet),
            true,
        ),
    ];
    match chroot {
        Some(host) => {
            for name in ["chroot-basic", "chroot-from-scratch", "chroot-full"] {
                cases.push(case(name, chroot_here(name, host), true));
            }
        }
        None => eprintln!("SKIP the amazon-chroot examples of policy::local_builds_need_exactly_the_printed_policy: no loop devices"),
    }
    let Some(sshd) = sshd else {
        eprintln!("SKIP the SSH examples of policy::local_builds_need_exactly_the_printed_policy: no sshd");
        return cases;
    };
    for name in [
        "ebs-ssh",
        "ebssurrogate",
        "ebssurrogate-create-image",
        "ebs-spot",
    ] {
        cases.push(case(name, over_ssh(example(name), sshd), true));
    }
    cases.push(case("ebs-full", ebs_full_here(sshd), true));
    for name in ["instance-basic", "instance-full"] {
        cases.push(case(
            name,
            instance_here(name, sshd, endpoint, network),
            true,
        ));
    }
    cases
}

/// `template` as one run takes it: its own AMI names, the user's keys where it names keys,
/// the role made for `user` where it assumes one ([`principal`]).
fn for_run(template: &Value, run: &str, user: &str, key: &(String, String)) -> Value {
    let mut template = template.clone();
    for (i, b) in template["builders"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        if b.get("ami_name").is_some() {
            b["ami_name"] = Value::from(format!("policy-{run}-{i}"));
        }
        if b.get("access_key").is_some() {
            b["access_key"] = Value::from(key.0.clone());
            b["secret_key"] = Value::from(key.1.clone());
        }
        if b.get("assume_role").is_some() {
            b["assume_role"]["role_arn"] = json!(format!("arn:aws:iam::{ACCOUNT_ID}:role/{user}"));
        }
    }
    template
}

/// Runs `amiflow build` of `template` locally with `key`'s credentials against `endpoint`,
/// in a fresh directory: (succeeded, output).
async fn build_at(endpoint: &str, template: &Value, key: &(String, String)) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.json");
    std::fs::write(&path, template.to_string()).unwrap();
    let region = template["builders"][0]["region"].as_str().unwrap_or(REGION);
    // examples/credentials-profile.json's and examples/ebs-full.json's profiles, with the
    // same keys.
    let credentials = dir.path().join("credentials");
    let profiles: String = ["customprofile", "build"]
        .iter()
        .map(|p| {
            format!(
                "[{p}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                key.0, key.1
            )
        })
        .collect();
    std::fs::write(&credentials, profiles).unwrap();
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(&path)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_REGION", region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        // chroot_build.rs runs host scripts here, by the process's environment: these
        // builds send theirs to the account's build host.
        .env_remove(amiflow::builders::chroot::RUN_MODE_ENV)
        .env_remove("AMIFLOW_CHROOT_TEST_DEVICES")
        .current_dir(dir.path())
        .output()
        .await
        .expect("run amiflow build");
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `amiflow policy` of `template`.
async fn printed_policy(label: &str, template: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{label}.json"));
    std::fs::write(&path, template.to_string()).unwrap();
    let printed = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("policy")
        .arg(&path)
        .output()
        .await
        .expect("run amiflow policy");
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    serde_json::from_slice(&printed.stdout).expect("a JSON policy")
}

/// Every action the policy grants, once.
fn granted(policy: &Value) -> BTreeSet<String> {
    amiflow::infra::policy_actions(policy).into_iter().collect()
}

/// The policy without `action`, in every statement that grants it (a statement left with
/// no action goes).
fn without(policy: &Value, action: &str) -> Value {
    let mut less = policy.clone();
    let statements = less["Statement"].as_array_mut().unwrap();
    for s in statements.iter_mut() {
        match &mut s["Action"] {
            Value::Array(a) => a.retain(|x| x != action),
            Value::String(a) if a == action => s["Action"] = json!([]),
            _ => {}
        }
    }
    statements.retain(|s| s["Action"] != json!([]));
    less
}

/// The actions the front door refused `user` since the last look (and the count of every
/// refusal, anyone's).
fn refused_to(account: &Account, user: &str) -> BTreeSet<String> {
    account.stats()["denied"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["function"] == format!("user {user}"))
        .map(|d| d["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A user of the account holding exactly `policy`: its keys.
fn user(account: &Account, name: &str, policy: &Value) -> (String, String) {
    let key = account.control("POST", "/users", &json!({"name": name, "policy": policy}));
    (
        key["access_key_id"].as_str().unwrap().to_string(),
        key["secret_access_key"].as_str().unwrap().to_string(),
    )
}

/// Who runs `template`'s builds holding `policy`, by the name `name`: its keys. A user
/// holding the policy; or, for a template that assumes a role, a user holding the policy's
/// `sts:AssumeRole` and a role of the user's name holding the rest, trusting that user with
/// the template's external id ([`for_run`] points the template at it). A part left with
/// no statement allows nothing.
async fn principal(
    account: &Account,
    name: &str,
    template: &Value,
    policy: &Value,
) -> (String, String) {
    let Some(assume) = template["builders"][0].get("assume_role") else {
        return user(account, name, policy);
    };
    let nothing = json!({"Effect": "Deny", "Action": "sts:AssumeRole", "Resource": "*"});
    let document = |mut statements: Vec<Value>| {
        if statements.is_empty() {
            statements.push(nothing.clone());
        }
        json!({"Version": "2012-10-17", "Statement": statements})
    };
    let role_arn = format!("arn:aws:iam::{ACCOUNT_ID}:role/{name}");
    let (assuming, rest): (Vec<Value>, Vec<Value>) = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .partition(|s| {
            s["Action"] == json!("sts:AssumeRole") || s["Action"] == json!(["sts:AssumeRole"])
        });
    let assuming = assuming
        .into_iter()
        .map(|mut s| {
            s["Resource"] = json!(role_arn);
            s
        })
        .collect();
    let key = user(account, name, &document(assuming));
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT_ID}:user/{name}")},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": assume["external_id"]}}}]});
    let iam = account.admin().await.iam();
    iam.create_role()
        .role_name(name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("the role the build assumes");
    iam.put_role_policy()
        .role_name(name)
        .policy_name("amiflow-policy")
        .policy_document(document(rest).to_string())
        .send()
        .await
        .unwrap();
    key
}

/// One case: under exactly the printed policy the build succeeds with no call refused, and
/// a twin failing just before Cleanup (everything made) fails cleanly (nothing left, nothing refused);
/// without any one action, the build fails on it, or its failed twin's Cleanup is refused it.
async fn needs_exactly_its_policy(account: &Account, proxy: &FaultProxy, case: &Case) -> usize {
    let policy = printed_policy(case.label, &case.template).await;
    let actions = granted(&policy);
    let all_name = format!("{}-all", case.label);
    let all = principal(account, &all_name, &case.template, &policy).await;
    refused_to(account, "");
    proxy.set(Faults::default());
    let began = std::time::Instant::now();
    let (ok, out) = build_at(
        &proxy.url(),
        &for_run(&case.template, &all_name, &all_name, &all),
        &all,
    )
    .await;
    let one_build = began.elapsed();
    if std::env::var_os("AMIFLOW_POLICY_CASE").is_some() {
        eprintln!("{}: the build under its policy:\n{out}", case.label);
    }
    let refused = refused_to(account, &format!("{}-all", case.label));
    assert!(ok && refused.is_empty(), "{}: the build needs more than the printed policy ({refused:?} refused):\n{out}\npolicy: {policy:#}", case.label);
    // The failing twin: the last change before Cleanup's first removal is refused, so
    // everything the build makes exists, and must go.
    let changes: Vec<(usize, String)> = proxy
        .log()
        .into_iter()
        .filter(|c| c.nth > 0)
        .map(|c| (c.nth, c.action))
        .collect();
    // Cleanup's first removal: terminating the instance (amazon-chroot's, which launches
    // none: deleting its volume, detached and snapshotted in its chain).
    let cleanup_starts = changes
        .iter()
        .position(|(_, a)| a == "TerminateInstances")
        .or_else(|| changes.iter().position(|(_, a)| a == "DeleteVolume"))
        .expect("a build that cleans up");
    let (last_change, last) = changes[cleanup_starts - 1].clone();
    let last = last.as_str();
    let fail_late = |run: String, user: String, key: (String, String)| async move {
        let refusal = Injected {
            code: "InvalidParameterValue".into(),
            status: 400,
            times: 1,
        };
        // A build that fails once its image exists: WaitImageAvailable's look is refused.
        proxy.set(match last {
            "CreateImage" | "RegisterImage" => Faults {
                fail_after: Some((last.to_string(), "DescribeImages".into(), refusal)),
                ..Faults::default()
            },
            _ => Faults {
                fail_mutating: Some((last_change, refusal)),
                ..Faults::default()
            },
        });
        let result = build_at(
            &proxy.url(),
            &for_run(&case.template, &run, &user, &key),
            &key,
        )
        .await;
        proxy.set(Faults::default());
        result
    };
    let before = account.inventory();
    let (ok, out) = fail_late(
        format!("{}-all-failing", case.label),
        all_name.clone(),
        all.clone(),
    )
    .await;
    let refused = refused_to(account, &format!("{}-all", case.label));
    let left: Vec<String> = account.inventory().difference(&before).cloned().collect();
    assert!(
        !ok && refused.is_empty() && left.is_empty(),
        "{}: a build failing at its change #{last_change} under the policy (refused {refused:?}, left {left:?}):\n{out}",
        case.label
    );
    if !case.removals {
        return actions.len();
    }
    let mut spare = Vec::new();
    for (i, action) in actions.iter().enumerate() {
        if not_called_here(action) {
            continue;
        }
        let name = format!("{}-without-{i}", case.label);
        let key = principal(account, &name, &case.template, &without(&policy, action)).await;
        let (ok, out) = build_at(
            &proxy.url(),
            &for_run(&case.template, &name, &name, &key),
            &key,
        )
        .await;
        let refused = refused_to(account, &name);
        if !ok {
            assert!(refused.contains(action), "{}: without {action} the build failed, but not on it (refused: {refused:?}):\n{out}", case.label);
            continue;
        }
        if refused.contains(action) {
            assert!(
                TOLERATED.iter().any(|(a, _)| a == action),
                "{}: refused {action}, the build went on as if nothing happened:\n{out}",
                case.label
            );
            continue;
        }
        // Needed only when the build fails: its failing twin's Cleanup must be refused it.
        let _ = fail_late(format!("{name}-failing"), name.clone(), key.clone()).await;
        let refused_failing = refused_to(account, &name);
        if !refused_failing.contains(action) {
            spare.push(action.clone());
        }
    }
    assert!(spare.is_empty(), "{}: granted and never called, on success nor after a failure: {spare:?}\npolicy: {policy:#}", case.label);
    let not_here: Vec<&String> = actions.iter().filter(|a| not_called_here(a)).collect();
    eprintln!(
        "policy of {}: {} actions, each needed (not called here, so not taken away: {not_here:?}); one build {:.1} s",
        case.label,
        actions.len(),
        one_build.as_secs_f64()
    );
    actions.len()
}

/// `amiflow policy` prints what a local build of each example needs and nothing more, in the
/// simulated account: its front door decides each call of an IAM user holding exactly the
/// printed policy, conditions and resources included, as it does the deployed roles'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_builds_need_exactly_the_printed_policy() {
    let test = "policy::local_builds_need_exactly_the_printed_policy";
    let als = match Als::find() {
        Ok(als) => als,
        Err(missing) => return eprintln!("SKIP {test}: {missing}"),
    };
    // The chroot host's "disk": a loop device the host script takes for the attached volume.
    let disk = loop_devices_usable(test).then(LoopDisk::new);
    let host_env = match &disk {
        Some(d) => json!({"AMIFLOW_CHROOT_TEST_DEVICES": d.device}),
        None => json!({}),
    };
    let account = match Account::start(host_env, &als) {
        Ok(a) => a,
        Err(why) => return eprintln!("SKIP {test}: {why}"),
    };
    // Resources change state at once and announce nothing: local builds poll.
    account.ec2_events(json!({"delay_ms": 0, "emit": false}));
    let proxy = FaultProxy::start(port_of(account.ready["aws_endpoint"].as_str().unwrap())).await;
    let sshd = Sshd::start()
        .map_err(|why| eprintln!("no sshd: {why}"))
        .ok();
    if let Some(sshd) = &sshd {
        let public = std::fs::read_to_string(format!("{}.pub", sshd.client_key.display()))
            .expect("the sshd client's public key");
        account
            .admin()
            .await
            .ec2(REGION)
            .import_key_pair()
            .key_name(SSH_KEY_PAIR)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
            .send()
            .await
            .expect("import the sshd's key pair");
    }
    // What the SSM and instance examples name: instance profiles whose roles have their
    // names, buckets.
    let admin = account.admin().await;
    let iam = admin.iam();
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    for profile in [SSM_PROFILE, INSTANCE_FULL_PROFILE] {
        iam.create_role()
            .role_name(profile)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .expect("an example's role");
        iam.create_instance_profile()
            .instance_profile_name(profile)
            .send()
            .await
            .expect("an example's instance profile");
        iam.add_role_to_instance_profile()
            .instance_profile_name(profile)
            .role_name(profile)
            .send()
            .await
            .unwrap();
    }
    for bucket in [SSM_BUCKET, INSTANCE_BUCKET, INSTANCE_FULL_BUCKET] {
        admin
            .s3(REGION)
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("an example's bucket");
    }
    let subnet = account.ready["setup"]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let vpc = account.ready["setup"]["vpc"].as_str().unwrap().to_string();
    let group = admin
        .ec2(REGION)
        .create_security_group()
        .group_name("instance-full")
        .description("instance-full")
        .vpc_id(&vpc)
        .send()
        .await
        .expect("instance-full's security group")
        .group_id()
        .unwrap()
        .to_string();
    let network = Network { vpc, subnet, group };
    let chroot = disk.as_ref().map(|d| ChrootHost {
        instance: account.ready["setup"]["host"].as_str().unwrap().to_string(),
        mounts: d.dir.path().join("mnt"),
    });
    // What examples find by tag: ebs-full's network (its filters), chroot-full's build host.
    let mut found_by_tag: Vec<(&str, (&str, &str))> =
        [&network.vpc, &network.subnet, &network.group]
            .into_iter()
            .map(String::as_str)
            .zip(EBS_FULL_NETWORK_TAGS)
            .collect();
    if let Some(host) = &chroot {
        found_by_tag.push((&host.instance, ("Role", CHROOT_HOST_ROLE)));
    }
    for (resource, (key, value)) in found_by_tag {
        admin
            .ec2(REGION)
            .create_tags()
            .resources(resource)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("tag {resource} {key}={value} as an example finds it: {e:?}")
            });
    }
    // `AMIFLOW_POLICY_CASE=<label>` runs one case (the whole set takes minutes).
    let only = std::env::var("AMIFLOW_POLICY_CASE").ok();
    let front = account.ready["aws_endpoint"].as_str().unwrap().to_string();
    for case in cases(sshd.as_ref(), &network, &front, chroot.as_ref()) {
        if only.as_deref().is_some_and(|o| o != case.label) {
            continue;
        }
        needs_exactly_its_policy(&account, &proxy, &case).await;
        if case.label == "ebs-full" {
            // Its images, copies too, deprecated when the template says (EC2's side of
            // EnableImageDeprecation is the front door's: moto lacks it).
            let deprecated = account.stats()["deprecations"].clone();
            for region in [REGION, "us-west-2", "eu-central-1"] {
                assert!(
                    deprecated
                        .as_object()
                        .unwrap()
                        .iter()
                        .any(|(image, at)| image.starts_with(&format!("{region}/"))
                            && at.as_str().unwrap().starts_with("2030-01-01T00:00:00")),
                    "ebs-full: no image deprecated in {region}: {deprecated}"
                );
            }
            // The role trusts its user with the example's external id only.
            let policy = printed_policy(case.label, &case.template).await;
            let key = principal(&account, "ebs-full-other-id", &case.template, &policy).await;
            let mut other_id = for_run(
                &case.template,
                "ebs-full-other-id",
                "ebs-full-other-id",
                &key,
            );
            other_id["builders"][0]["assume_role"]["external_id"] = json!("someone-else");
            let (ok, out) = build_at(&proxy.url(), &other_id, &key).await;
            if only.is_some() {
                eprintln!("ebs-full with another external id:\n{out}");
            }
            let refused = refused_to(&account, "ebs-full-other-id");
            // Refused credentials fail the step at once, saying what to check: no retry.
            assert!(
                !ok && refused.contains("sts:AssumeRole")
                    && out.contains("external_id")
                    && !out.contains("retry"),
                "ebs-full with another external id: refused {refused:?}:\n{out}"
            );
        }
        if let Some(host) = &chroot {
            assert_eq!(
                mounts_under(&host.mounts),
                Vec::<String>::new(),
                "{}: mounts left on the build host",
                case.label
            );
        }
    }
    // The enforcement is real: a user allowed nothing of EC2 is refused at the first call.
    let nothing = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]});
    let stranger = user(&account, "stranger", &nothing);
    let (ok, out) = build_at(
        &proxy.url(),
        &for_run(&example("ebs-basic"), "stranger", "stranger", &stranger),
        &stranger,
    )
    .await;
    assert!(!ok && !refused_to(&account, "stranger").is_empty(), "{out}");
}

/// Each build of a template signs with its own credentials, given as sensitive variables
/// (Packer's usual `"access_key": "{{user `aws_access_key`}}"`): revealed for the SDK, never
/// the placeholder, and never the first build's for the others. The environment's keys
/// are a user allowed nothing, build `alpha`'s user may not copy images, and only build
/// `beta` copies one: each succeeds only with its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_build_signs_with_its_own_sensitive_credentials() {
    let Ok(moto) = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]) else {
        return eprintln!(
            "SKIP policy::each_build_signs_with_its_own_sensitive_credentials: moto is not available"
        );
    };
    let iam = admin_iam(&moto).await;
    let all = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
    let no_copy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "ec2:CopyImage", "Resource": "*"}
    ]});
    let alpha = user_with(&iam, "alpha", &no_copy).await;
    let beta = user_with(&iam, "beta", &all).await;
    let nothing = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]});
    let env_user = user_with(&iam, "environment", &nothing).await;

    let builder = |name: &str, key: &str, extra: Value| {
        let mut b = serde_json::json!({
            "type": "amazon-ebs", "name": name, "region": REGION,
            "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro",
            "communicator": "none", "ami_name": format!("own-keys-{name}-{{{{timestamp}}}}"),
            "access_key": format!("{{{{user `{key}_key`}}}}"),
            "secret_key": format!("{{{{user `{key}_secret`}}}}"),
        });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let template = serde_json::json!({
        "variables": {"alpha_key": "", "alpha_secret": "", "beta_key": "", "beta_secret": ""},
        "sensitive-variables": ["alpha_key", "alpha_secret", "beta_key", "beta_secret"],
        "builders": [
            builder("alpha", "alpha", serde_json::json!({})),
            builder("beta", "beta", serde_json::json!({"ami_regions": ["us-west-2"]})),
        ]
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-accounts.json");
    std::fs::write(&path, template.to_string()).unwrap();
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(&path)
        .args(["-var", &format!("alpha_key={}", alpha.0)])
        .args(["-var", &format!("alpha_secret={}", alpha.1)])
        .args(["-var", &format!("beta_key={}", beta.0)])
        .args(["-var", &format!("beta_secret={}", beta.1)])
        .envs(moto.env(REGION))
        .env("AWS_ACCESS_KEY_ID", &env_user.0)
        .env("AWS_SECRET_ACCESS_KEY", &env_user.1)
        .current_dir(dir.path())
        .output()
        .await
        .expect("run amiflow build");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("us-west-2: ami-"), "beta's copy: {text}");
    for secret in [&alpha.1, &beta.1] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret key in the output: {text}"
        );
    }
}
