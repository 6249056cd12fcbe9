//! SSH provisioning against a throwaway OpenSSH server: the provisioners run on the
//! "instance" (the sshd's own filesystem, reached through `ssh_host`/`ssh_port`), and the
//! markers they leave are checked afterwards.

use std::io::Write;
use std::sync::{Arc, Mutex};

use amiflow::provision::Secrets;
use amiflow::steps::connect::connect;
use amiflow::steps::provision::provision;
use amiflow::waits::CONNECT;
use amiflow::{BuildState, Ctx, StepError};
use amiflow_template::BuilderType;
use amiflow_tests::sshd::{free_port, Sshd};
use serde_json::{json, Value};

macro_rules! sshd_or_skip {
    () => {
        match Sshd::start() {
            Ok(s) => s,
            Err(why) => {
                eprintln!("SKIPPED: no local sshd: {why}");
                return;
            }
        }
    };
}

fn state(
    host: &str,
    port: u16,
    user: &str,
    key: &std::path::Path,
    provisioners: Value,
    extra: Value,
) -> BuildState {
    let mut raw = json!({
        "region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro", "ami_name": "amiflow-test",
        "ssh_username": user, "ssh_host": host, "ssh_port": port, "ssh_private_key_file": key,
    });
    for (k, v) in extra.as_object().unwrap() {
        raw[k] = v.clone();
    }
    let config =
        amiflow_template::config::from_builder("test", BuilderType::Ebs, raw.as_object().unwrap())
            .expect("valid builder");
    serde_json::from_value(json!({
        "execution": format!("e2e-{}", uuid_like()),
        "build": {"name": "test", "builder_type": "amazon-ebs", "config": config, "provisioners": provisioners},
        "data": {"instance_id": "i-0123456789abcdef0", "source_ami_name": "amzn2-test"}
    }))
    .unwrap()
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn for_sshd(sshd: &Sshd, provisioners: Value) -> BuildState {
    state(
        "127.0.0.1",
        sshd.port,
        &sshd.user,
        &sshd.client_key,
        provisioners,
        json!({}),
    )
}

async fn ctx() -> Ctx {
    Ctx::from_env().await
}

/// A local run's context whose template directory is `base`.
async fn ctx_at(base: &std::path::Path) -> Ctx {
    let mut ctx = ctx().await;
    ctx.base_dir = Some(base.to_path_buf());
    ctx
}

#[tokio::test]
async fn shell_script_env_and_file_uploads_leave_markers() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(
        local.path().join("setup.sh"),
        "#!/bin/sh\necho \"greeting=$GREETING build=$PACKER_BUILD_NAME\" > \"$OUT\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(local.path().join("conf/sub")).unwrap();
    std::fs::write(local.path().join("conf/a.txt"), "A").unwrap();
    std::fs::write(local.path().join("conf/sub/b.txt"), "B").unwrap();
    std::fs::write(local.path().join("single.txt"), "single").unwrap();
    let m = |rel: &str| sshd.path(rel).display().to_string();
    std::fs::create_dir_all(sshd.path("files")).unwrap();
    let provisioners = json!([
        {"type": "shell", "inline": [format!("echo inline-ran {{{{build `SourceAMIName`}}}} > {}", m("inline.marker"))]},
        {"type": "shell", "script": "setup.sh", "environment_vars": ["GREETING=it's me", format!("OUT={}", m("script.marker"))]},
        {"type": "file", "source": "single.txt", "destination": format!("{}/", m("files"))},
        {"type": "file", "source": "conf", "destination": m("withdir")},
        {"type": "file", "source": "conf/", "destination": m("contents")},
        {"type": "file", "content": "from content", "destination": m("content.txt")},
        {"type": "shell", "inline": ["exit 3"], "valid_exit_codes": [0, 3]},
        {"type": "file", "direction": "download", "source": m("inline.marker"), "destination": local.path().join("got.marker")}
    ]);
    let st = for_sshd(&sshd, provisioners);
    provision(&ctx_at(local.path()).await, st)
        .await
        .expect("provisioning succeeds");
    let read = |rel: &str| {
        std::fs::read_to_string(sshd.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(read("inline.marker"), "inline-ran amzn2-test\n");
    assert_eq!(read("script.marker"), "greeting=it's me build=test\n");
    assert_eq!(read("files/single.txt"), "single");
    assert_eq!(read("withdir/conf/a.txt"), "A");
    assert_eq!(read("withdir/conf/sub/b.txt"), "B");
    assert_eq!(read("contents/a.txt"), "A");
    assert_eq!(read("contents/sub/b.txt"), "B");
    assert_eq!(read("content.txt"), "from content");
    assert_eq!(
        std::fs::read_to_string(local.path().join("got.marker")).unwrap(),
        "inline-ran amzn2-test\n"
    );
    // skip_clean is false: the uploaded scripts are gone from /tmp.
    let leftovers: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("script_")
                && e.file_name().to_string_lossy().ends_with(".sh")
        })
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(&m("inline.marker"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "uploaded scripts left behind: {leftovers:?}"
    );
}

#[tokio::test]
async fn env_map_env_var_file_and_the_ssh_key_as_build_data() {
    let sshd = sshd_or_skip!();
    let m = |rel: &str| sshd.path(rel).display().to_string();
    let remote_folder = sshd.path("vars");
    std::fs::create_dir_all(&remote_folder).unwrap();
    let provisioners = json!([
        {"type": "shell", "use_env_var_file": true, "remote_folder": remote_folder,
         "environment_vars": ["A=from-list", "B=from-list"], "env": {"B": "from-map", "KEY": "{{ build `SSHPublicKey` }}"},
         "inline": [format!("echo \"$A $B $PACKER_BUILD_NAME\" > {}; echo \"$KEY\" > {}", m("env.marker"), m("key.marker"))]},
        {"type": "shell", "inline": [format!("echo '{{{{ build `SSHPrivateKey` }}}}' | head -1 > {}", m("private.marker"))]}
    ]);
    let st = for_sshd(&sshd, provisioners);
    provision(&ctx().await, st)
        .await
        .expect("provisioning succeeds");
    let read = |rel: &str| {
        std::fs::read_to_string(sshd.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(
        read("env.marker"),
        "from-list from-map test\n",
        "env wins over environment_vars"
    );
    // The public key of the key the session logged in with, as authorized_keys has it.
    let public = std::fs::read_to_string(sshd.client_key.with_extension("pub")).unwrap();
    let type_and_key = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(type_and_key(&read("key.marker")), type_and_key(&public));
    assert_eq!(
        read("private.marker").trim(),
        "-----BEGIN OPENSSH PRIVATE KEY-----"
    );
    // The sourced file is removed after the script (skip_clean is false).
    let left: Vec<_> = std::fs::read_dir(&remote_folder).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn failing_command_fails_the_build_with_exit_code_and_output() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    let st = for_sshd(
        &sshd,
        json!([
            {"type": "shell", "inline": ["true"]},
            {"type": "shell", "inline": ["echo about to fail", "echo on stderr >&2", "exit 7"],
             "remote_folder": sshd.path("").display().to_string()},
            {"type": "shell", "inline": [format!("touch {}", sshd.path("never.marker").display())]}
        ]),
    );
    let err = provision(&ctx_at(local.path()).await, st)
        .await
        .unwrap_err();
    let StepError::BuildFailed(msg) = &err else {
        panic!("expected BuildFailed, got {err:?}")
    };
    assert!(msg.contains("provisioner 1 (shell)"), "{msg}");
    assert!(msg.contains("exit code 7"), "{msg}");
    assert!(
        msg.contains("about to fail") && msg.contains("on stderr"),
        "{msg}"
    );
    assert!(msg.contains("chmod +x"), "names the command: {msg}");
    assert!(
        !sshd.path("never.marker").exists(),
        "later provisioners must not run"
    );
    let left: Vec<_> = std::fs::read_dir(sshd.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("script_"))
        .collect();
    assert!(
        left.is_empty(),
        "the failed script is removed from the host: {left:?}"
    );
}

#[tokio::test]
async fn expect_disconnect_reconnects_and_continues() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    // Kill this connection's sshd process (the ancestor whose parent is the listening sshd):
    // the command never reports an exit status.
    let kill = format!(
        "l=$(cat {}); p=$$; while :; do pp=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2); [ \"$pp\" = \"$l\" ] && break; p=$pp; done; kill -9 $p",
        sshd.path("sshd.pid").display()
    );
    let after = format!("touch {}", sshd.path("after.marker").display());
    // The connection dies with the script still on disk: keep it in the sshd's own dir.
    let folder = sshd.path("").display().to_string();
    let st = for_sshd(
        &sshd,
        json!([
            {"type": "shell", "inline": [kill], "expect_disconnect": true, "remote_folder": folder},
            {"type": "shell", "inline": [after]}
        ]),
    );
    provision(&ctx_at(local.path()).await, st)
        .await
        .expect("disconnect expected");
    assert!(sshd.path("after.marker").exists());

    let st = for_sshd(
        &sshd,
        json!([{"type": "shell", "inline": [kill], "remote_folder": folder}]),
    );
    let err = provision(&ctx_at(local.path()).await, st)
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("connection closed before the command reported an exit status"),
        "{err:?}"
    );
}

#[tokio::test]
async fn connect_answers_for_sshd_and_waits_then_fails_for_an_unreachable_host() {
    let sshd = sshd_or_skip!();
    let c = ctx().await;
    connect(&c, for_sshd(&sshd, json!([])))
        .await
        .expect("sshd answers");

    let port = free_port();
    let mut st = state(
        "127.0.0.1",
        port,
        "root",
        &sshd.client_key,
        json!([]),
        json!({"ssh_timeout": "2m"}),
    );
    st.waits.insert(CONNECT.name.into(), chrono::Utc::now());
    match connect(&c, st.clone()).await {
        Err(StepError::NotReady(m)) => assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}"),
        other => panic!("expected NotReady, got {other:?}"),
    }
    // The wait began longer ago than ssh_timeout: the build fails with the cause.
    st.waits.insert(
        CONNECT.name.into(),
        chrono::Utc::now() - chrono::Duration::minutes(3),
    );
    match connect(&c, st).await {
        Err(StepError::BuildFailed(m)) => {
            assert!(
                m.contains(&format!("127.0.0.1:{port}"))
                    && m.contains("ssh_timeout")
                    && m.contains("last error"),
                "{m}"
            )
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn lambda_deadline_fails_clearly_instead_of_being_killed() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    let folder = sshd.path("").display().to_string();
    let st = for_sshd(
        &sshd,
        json!([{"type": "shell", "inline": ["sleep 20"], "remote_folder": folder}]),
    );
    let mut o = ctx_at(local.path()).await;
    // 10 s margin is kept back: 12 s leaves 2 s for the command.
    o.deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(12));
    let started = std::time::Instant::now();
    let err = provision(&o, st).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("15 minutes") && m.contains("ssm")),
        "{err:?}"
    );
}

#[tokio::test]
async fn shell_local_runs_here_but_is_refused_in_lambda() {
    let local = tempfile::tempdir().unwrap();
    let marker = local.path().join("local.marker");
    let provisioners = json!([{"type": "shell-local", "inline": [format!("echo $WHO > {}", marker.display())], "environment_vars": ["WHO=local"]}]);
    let st = state(
        "127.0.0.1",
        1,
        "root",
        &local.path().join("none"),
        provisioners,
        json!({"communicator": "none"}),
    );
    provision(&ctx_at(local.path()).await, st.clone())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "local\n");
    let mut o = ctx_at(local.path()).await;
    o.in_lambda = true;
    let err = provision(&o, st).await.unwrap_err();
    assert!(
        err.message().contains("cannot run inside Lambda"),
        "{err:?}"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn sensitive_variable_reaches_the_instance_but_not_the_state_or_the_logs() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    let secret = "Hunter2-S3cr3t-value";
    let placeholder = "<sensitive:db_password>";
    let secrets = Secrets::from_pairs([("db_password".to_string(), secret.to_string())]);
    assert_eq!(
        amiflow::provision::render::placeholder("db_password"),
        placeholder
    );
    let marker = sshd.path("secret.marker");
    let st = for_sshd(
        &sshd,
        json!([
            {"type": "shell", "inline": [format!("echo \"password is {placeholder}\""), format!("printf %s {placeholder} > {}", marker.display())],
             "environment_vars": [format!("DB_PASSWORD={placeholder}")]},
            {"type": "shell", "inline": ["echo \"env has $DB_PASSWORD\"", "echo failing with $DB_PASSWORD >&2", "exit 1"],
             "environment_vars": [format!("DB_PASSWORD={placeholder}")]}
        ]),
    );
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let before = serde_json::to_string(&st).unwrap();
    let mut o = ctx_at(local.path()).await;
    o.secrets = secrets;
    let err = provision(&o, st.clone()).await.unwrap_err();
    drop(_guard);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // Used on the instance...
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), secret);
    // ...the output lines were logged, masked...
    assert!(logs.contains("password is <sensitive>"), "{logs}");
    assert!(logs.contains("env has <sensitive>"), "{logs}");
    // ...and the secret is nowhere: not in the logs, the error or the state.
    assert!(!logs.contains(secret), "secret in logs:\n{logs}");
    assert!(!err.message().contains(secret), "secret in error: {err:?}");
    assert!(err.message().contains("<sensitive>"), "{err:?}");
    assert!(!before.contains(secret));
    // A successful run returns the state: it must not carry the secret either.
    let ok = for_sshd(
        &sshd,
        json!([{"type": "shell", "inline": [format!("echo {placeholder}")]}]),
    );
    let after = provision(&o, ok).await.unwrap();
    assert!(!serde_json::to_string(&after).unwrap().contains(secret));
}

#[tokio::test]
async fn bastion_carries_the_connection() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    let marker = sshd.path("via-bastion.marker");
    let provisioners =
        json!([{"type": "shell", "inline": [format!("touch {}", marker.display())]}]);
    let bastion = |port: u16| json!({"ssh_bastion_host": "127.0.0.1", "ssh_bastion_port": port, "ssh_bastion_private_key_file": sshd.client_key});
    // A closed bastion port: the build cannot reach the target, and says it was the bastion.
    let closed = free_port();
    let st = state(
        "127.0.0.1",
        sshd.port,
        &sshd.user,
        &sshd.client_key,
        provisioners.clone(),
        bastion(closed),
    );
    let err = provision(&ctx_at(local.path()).await, st)
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains(&format!("via bastion 127.0.0.1:{closed}")),
        "{err:?}"
    );
    assert!(!marker.exists());
    // The sshd as its own bastion: target reached through a direct-tcpip channel.
    let st = state(
        "127.0.0.1",
        sshd.port,
        &sshd.user,
        &sshd.client_key,
        provisioners,
        bastion(sshd.port),
    );
    provision(&ctx_at(local.path()).await, st)
        .await
        .expect("provisioning through the bastion");
    assert!(marker.exists());
}

#[tokio::test]
async fn a_directory_download_never_writes_outside_its_destination() {
    let sshd = sshd_or_skip!();
    // On the "instance": src/a, src/"a\n.."/payload and, beside src, payload. Listed one
    // name per line, src/"a\n.."/payload reads as `a` and `../payload`: the file beside
    // src, written beside the destination.
    let src = sshd.path("dl/src");
    std::fs::create_dir_all(src.join("a\n..")).unwrap();
    std::fs::write(src.join("a"), "a").unwrap();
    std::fs::write(src.join("a\n..").join("payload"), "inner").unwrap();
    std::fs::write(sshd.path("dl/payload"), "planted by the instance").unwrap();
    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("dest");
    let st = for_sshd(
        &sshd,
        json!([{"type": "file", "direction": "download",
                "source": format!("{}/", src.display()), "destination": dest}]),
    );
    let err = provision(&ctx_at(local.path()).await, st)
        .await
        .expect_err("a remote name with a newline is refused");
    let message = err.message();
    assert!(
        message.contains("refusing to download") && message.contains("\\n"),
        "{message}"
    );
    assert!(
        !local.path().join("payload").exists(),
        "a file was written outside the destination"
    );
    assert!(
        !dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none(),
        "nothing is written once a name is refused"
    );

    // The same directory without the crafted name downloads as before.
    std::fs::remove_dir_all(src.join("a\n..")).unwrap();
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/b"), "b").unwrap();
    let st = for_sshd(
        &sshd,
        json!([{"type": "file", "direction": "download",
                "source": format!("{}/", src.display()), "destination": dest}]),
    );
    provision(&ctx_at(local.path()).await, st)
        .await
        .expect("a plain directory downloads");
    assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(dest.join("sub/b")).unwrap(), "b");
}

#[tokio::test]
async fn the_host_key_connect_saw_is_the_only_one_accepted_later() {
    let first = sshd_or_skip!();
    let other = sshd_or_skip!();
    let ctx = ctx().await;
    let connected = connect(&ctx, for_sshd(&first, json!([])))
        .await
        .expect("Connect reaches the sshd");
    let pinned = connected.data.extra.get("ssh_host_key").cloned();
    assert!(
        pinned
            .as_ref()
            .and_then(|v| v.as_str())
            .is_some_and(|k| k.starts_with("SHA256:")),
        "Connect pins the host key: {pinned:?}"
    );

    // The machine Connect reached: provisioning proceeds.
    let marker = first.path("pinned.marker");
    let mut same = for_sshd(
        &first,
        json!([{"type": "shell", "inline": [format!("touch {}", marker.display())]}]),
    );
    same.data.extra = connected.data.extra.clone();
    provision(&ctx, same)
        .await
        .expect("the same host key is accepted");
    assert!(marker.exists());

    // Another machine (another host key) answering for the instance: refused before login.
    let marker = other.path("impostor.marker");
    let mut impostor = for_sshd(
        &other,
        json!([{"type": "shell", "inline": [format!("touch {}", marker.display())]}]),
    );
    impostor.data.extra = connected.data.extra.clone();
    let err = provision(&ctx, impostor)
        .await
        .expect_err("a different host key is refused");
    assert!(err.message().contains("host key"), "{}", err.message());
    assert!(!marker.exists(), "nothing ran on the other machine");
}

/// `ansible-local` over SSH: the playbook, a role and the group variables are uploaded to
/// the staging directory and the command runs there in local mode with Packer's arguments.
/// The "instance" has no Ansible: `command` names a stand-in that records what it was
/// given and what it found, which is what this test checks; the staging directory is
/// removed after (`clean_staging_directory`).
#[tokio::test]
async fn ansible_local_runs_the_playbook_in_its_staging_directory() {
    let sshd = sshd_or_skip!();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("site.yml"), "- hosts: all\n  roles: [web]\n").unwrap();
    std::fs::create_dir_all(l.join("roles/web/tasks")).unwrap();
    std::fs::write(l.join("roles/web/tasks/main.yml"), "- debug: msg=hi\n").unwrap();
    std::fs::create_dir_all(l.join("group_vars")).unwrap();
    std::fs::write(l.join("group_vars/all.yml"), "port: 80\n").unwrap();
    let record = sshd.path("ansible.record");
    let fake = sshd.path("fake-ansible-playbook");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n{{ pwd; printf 'arg %s\\n' \"$@\"; cat \"$1\"; find . -type f | sort; }} > {}\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let staging = sshd.path("staging").display().to_string();
    let provisioners = json!([{
        "type": "ansible-local", "playbook_file": "site.yml", "role_paths": ["roles/web"],
        "group_vars": "group_vars", "command": fake, "extra_arguments": ["--tags", "web"],
        "staging_directory": staging, "clean_staging_directory": true
    }]);
    provision(&ctx_at(l).await, for_sshd(&sshd, provisioners))
        .await
        .expect("ansible-local runs");
    let got = std::fs::read_to_string(&record).expect("the command ran");
    let want = format!(
        "{staging}\narg {staging}/site.yml\narg --extra-vars\narg packer_build_name=test packer_builder_type=amazon-ebs packer_http_addr=\n\
         arg --tags\narg web\narg -c\narg local\narg -i\narg {staging}/packer-provisioner-ansible-local0.inventory\n\
         - hosts: all\n  roles: [web]\n\
         ./group_vars/all.yml\n./packer-provisioner-ansible-local0.inventory\n./roles/web/tasks/main.yml\n./site.yml\n"
    );
    assert_eq!(got, want);
    assert!(
        !std::path::Path::new(&staging).exists(),
        "clean_staging_directory removes it"
    );
}
