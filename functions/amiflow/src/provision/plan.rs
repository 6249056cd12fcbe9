//! A remote provisioner as a list of plain actions (make a directory, upload bytes, run a
//! command, download a file), so SSH runs them one by one and SSM turns them into one
//! script with its uploads staged in S3 — both with Packer's semantics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{FileConfig, Kind, Provisioner, ShellConfig};
use super::render::{render, RenderContext};
use super::transport::shell_quote;
use amiflow_template::provisioner::{AnsibleLocalConfig, DEFAULT_ANSIBLE_STAGING};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Mkdir {
        path: String,
    },
    Upload {
        data: Vec<u8>,
        remote: String,
        mode: u32,
        from: String,
    },
    /// `command` may still hold secret placeholders: reveal at the moment of use.
    Exec {
        command: String,
        check: ExitCheck,
    },
    Download {
        remote: String,
        local: PathBuf,
        directory: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExitCheck {
    /// The provisioner's own command: exit codes outside `valid` fail the build.
    Main {
        valid: Vec<i64>,
        expect_disconnect: bool,
    },
    /// Housekeeping (removing the uploaded script): must succeed, Packer fails the build too.
    Housekeeping,
}

/// What a plan is rendered with.
#[derive(Debug, Clone, Default)]
pub struct PlanEnv {
    pub build_name: String,
    pub builder_type: String,
    /// `{{build `Key`}}` data.
    pub build: BTreeMap<String, String>,
    /// Makes `script_<random>.sh` names unique per build yet stable across retries.
    pub random: String,
    /// Where relative local paths (scripts, file sources) are resolved: the template's
    /// directory, or in a deployed build its bundle (empty: none).
    pub base_dir: PathBuf,
    /// A deployed build: files only from the bundle (`crate::template_files`).
    pub deployed: bool,
}

impl PlanEnv {
    pub(super) fn ctx(&self) -> RenderContext {
        RenderContext::with_build(&self.build)
    }

    /// Where the local file `p` (of the setting `key`) is read, through the one gate for
    /// template files.
    pub fn local_path(&self, key: &str, p: &str) -> Result<PathBuf, String> {
        crate::template_files::TemplateFiles {
            base_dir: self.base_dir.clone(),
            deployed: self.deployed,
        }
        .resolve(key, p)
    }
}

/// The actions of a `shell` or `file` provisioner. `shell-local` has none (it runs locally).
pub fn plan(p: &Provisioner, env: &PlanEnv) -> Result<Vec<Action>, String> {
    match &p.kind {
        Kind::Shell(c) => plan_shell(p.index, c, env),
        Kind::File(c) => plan_file(c, env),
        Kind::ShellLocal(_) => Ok(Vec::new()),
        Kind::AnsibleLocal(c) => plan_ansible(p.index, c, env),
        // Prepare refuses them on any other communicator.
        Kind::PowerShell(_) | Kind::WindowsShell(_) | Kind::WindowsRestart(_) => Err(format!(
            "{} runs on Windows through the SSM agent: set \"communicator\": \"ssm\"",
            p.kind.type_name()
        )),
    }
}

/// Packer's `{{.Vars}}`: PACKER_BUILD_NAME, PACKER_BUILDER_TYPE, `environment_vars`, then
/// the `env` map (each may override what comes before), sorted by name, each formatted with
/// `env_var_format`, single quotes in values escaped for the shell.
pub fn flatten_env_vars(
    vars: &[String],
    env_map: &BTreeMap<String, String>,
    format: &str,
    env: &PlanEnv,
) -> Result<String, String> {
    let mut map = BTreeMap::new();
    map.insert("PACKER_BUILD_NAME".to_string(), env.build_name.clone());
    map.insert("PACKER_BUILDER_TYPE".to_string(), env.builder_type.clone());
    for v in vars {
        let v = render(v, &env.ctx()).map_err(|e| format!("environment_vars: {e}"))?;
        let (k, val) = v
            .split_once('=')
            .ok_or_else(|| format!("environment_vars: {v:?} must be KEY=VALUE"))?;
        map.insert(k.to_string(), val.to_string());
    }
    for (k, v) in env_map {
        let v = render(v, &env.ctx()).map_err(|e| format!("env.{k}: {e}"))?;
        map.insert(k.clone(), v);
    }
    let mut out = String::new();
    for (k, v) in map {
        let escaped = v.replace('\'', "'\"'\"'");
        out.push_str(&format.replacen("%s", &k, 1).replacen("%s", &escaped, 1));
    }
    Ok(out)
}

/// The script Packer writes for `inline` lines: the shebang line, then each line rendered.
/// Secret placeholders stay in: reveal the text at the moment of use.
pub fn inline_script<'a>(
    shebang: &str,
    lines: impl IntoIterator<Item = &'a String>,
    env: &PlanEnv,
) -> Result<String, String> {
    let mut text = format!("#!{shebang}\n");
    for line in lines {
        text.push_str(&render(line, &env.ctx()).map_err(|e| format!("inline: {e}"))?);
        text.push('\n');
    }
    Ok(text)
}

fn plan_shell(index: usize, c: &ShellConfig, env: &PlanEnv) -> Result<Vec<Action>, String> {
    let mut scripts: Vec<(String, Vec<u8>)> = Vec::new();
    if !c.inline.is_empty() {
        let text = inline_script(c.inline_shebang(), &c.inline, env)?;
        scripts.push(("inline script".into(), text.into_bytes()));
    }
    for s in c.script.iter().chain(c.scripts.iter()) {
        let path = env.local_path("script", s)?;
        let data = std::fs::read(&path)
            .map_err(|e| format!("script {s:?}: cannot read {} ({e})", path.display()))?;
        scripts.push((s.clone(), data));
    }
    let vars = flatten_env_vars(&c.environment_vars, &c.env, c.env_var_format(), env)?;
    let mut actions = Vec::new();
    // Packer's use_env_var_file: the variables in a file the command sources, uploaded once
    // before the scripts and removed after them.
    let env_var_file = c.use_env_var_file.then(|| {
        let remote = c.env_var_file(&format!("{}_{index}", env.random));
        actions.push(Action::Upload {
            data: vars.clone().into_bytes(),
            remote: remote.clone(),
            mode: 0o644,
            from: "env var file".into(),
        });
        remote
    });
    for (n, (from, data)) in scripts.into_iter().enumerate() {
        let random = if n == 0 {
            format!("{}_{index}", env.random)
        } else {
            format!("{}_{index}_{n}", env.random)
        };
        let remote = c.remote_path(&random);
        let command = render(
            c.execute_command(),
            &env.ctx()
                .set("Vars", vars.clone())
                .set("EnvVarFile", env_var_file.clone().unwrap_or_default())
                .set("Path", remote.clone()),
        )
        .map_err(|e| format!("execute_command: {e}"))?;
        actions.push(Action::Upload {
            data,
            remote: remote.clone(),
            mode: 0o755,
            from,
        });
        actions.push(Action::Exec {
            command,
            check: ExitCheck::Main {
                valid: c.valid_exit_codes(),
                expect_disconnect: c.expect_disconnect,
            },
        });
        if !c.skip_clean {
            actions.push(Action::Exec {
                command: format!("rm -f {}", shell_quote(&remote)),
                check: ExitCheck::Housekeeping,
            });
        }
    }
    if let (Some(file), false) = (env_var_file, c.skip_clean) {
        actions.push(Action::Exec {
            command: format!("rm -f {}", shell_quote(&file)),
            check: ExitCheck::Housekeeping,
        });
    }
    Ok(actions)
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), name)
}

fn parent_remote(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| if i == 0 { "/" } else { &p[..i] })
}

fn plan_file(c: &FileConfig, env: &PlanEnv) -> Result<Vec<Action>, String> {
    let destination = render(c.destination.as_deref().unwrap_or(""), &env.ctx())
        .map_err(|e| format!("destination: {e}"))?;
    let mut actions = Vec::new();
    if let Some(content) = &c.content {
        let content = render(content, &env.ctx()).map_err(|e| format!("content: {e}"))?;
        actions.push(Action::Upload {
            data: content.into_bytes(),
            remote: destination,
            mode: 0o644,
            from: "content".into(),
        });
        return Ok(actions);
    }
    for source in c.sources() {
        let source = render(&source, &env.ctx()).map_err(|e| format!("source: {e}"))?;
        if c.is_download() {
            let directory = source.ends_with('/');
            let local = if !directory && destination.ends_with('/') {
                PathBuf::from(&destination).join(base_name(&source))
            } else {
                PathBuf::from(&destination)
            };
            actions.push(Action::Download {
                remote: source.clone(),
                local,
                directory,
            });
            continue;
        }
        let local = env.local_path("source", &source)?;
        let meta = std::fs::metadata(&local)
            .map_err(|e| format!("source {source:?}: cannot read {} ({e})", local.display()))?;
        if meta.is_dir() {
            // Packer: "dir/" uploads the contents into destination, "dir" the directory itself.
            let target = if source.ends_with('/') {
                destination.clone()
            } else {
                join_remote(&destination, base_name(&source))
            };
            actions.push(Action::Mkdir {
                path: target.clone(),
            });
            upload_tree(&local, &source, &target, &mut actions)?;
        } else {
            let remote = if destination.ends_with('/') {
                join_remote(&destination, base_name(&source))
            } else {
                destination.clone()
            };
            actions.push(upload_local_file(&local, remote)?);
        }
    }
    Ok(actions)
}

/// Uploads every file under the local directory `local` (the setting's value `source`)
/// into the remote directory `target`, which exists, making its subdirectories.
fn upload_tree(
    local: &Path,
    source: &str,
    target: &str,
    actions: &mut Vec<Action>,
) -> Result<(), String> {
    let mut files = Vec::new();
    walk(local, Path::new(""), &mut files).map_err(|e| format!("source {source:?}: {e}"))?;
    files.sort();
    let mut made = std::collections::BTreeSet::new();
    for rel in files {
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let remote = join_remote(target, &rel_str);
        if let Some(parent) = parent_remote(&remote) {
            if parent != target && made.insert(parent.to_string()) {
                actions.push(Action::Mkdir {
                    path: parent.to_string(),
                });
            }
        }
        actions.push(upload_local_file(&local.join(&rel), remote)?);
    }
    Ok(())
}

/// Packer's `ansible-local`: the playbooks, roles, variables and inventory uploaded to the
/// staging directory, then `ansible-playbook` run there in local mode (`-c local`) with
/// Packer's extra variables; Ansible itself must be on the instance, as with Packer.
fn plan_ansible(
    index: usize,
    c: &AnsibleLocalConfig,
    env: &PlanEnv,
) -> Result<Vec<Action>, String> {
    let staging = c
        .staging_directory
        .clone()
        .unwrap_or_else(|| format!("{DEFAULT_ANSIBLE_STAGING}/{}_{index}", env.random));
    let mut actions = vec![Action::Mkdir {
        path: staging.clone(),
    }];
    let dir = |key: &str, value: &str, target: String, actions: &mut Vec<Action>| {
        let local = env.local_path(key, value)?;
        actions.push(Action::Mkdir {
            path: target.clone(),
        });
        upload_tree(&local, value, &target, actions)
    };
    if let Some(d) = &c.playbook_dir {
        dir("playbook_dir", d, staging.clone(), &mut actions)?;
    }
    for (key, value, sub) in [
        ("group_vars", &c.group_vars, "group_vars"),
        ("host_vars", &c.host_vars, "host_vars"),
    ] {
        if let Some(v) = value {
            dir(key, v, join_remote(&staging, sub), &mut actions)?;
        }
    }
    for r in &c.role_paths {
        dir(
            "role_paths",
            r,
            join_remote(&staging, &format!("roles/{}", base_name(r))),
            &mut actions,
        )?;
    }
    for pp in &c.playbook_paths {
        dir(
            "playbook_paths",
            pp,
            join_remote(&staging, &format!("playbooks/{}", base_name(pp))),
            &mut actions,
        )?;
    }
    // The playbooks: already in playbook_dir, or uploaded beside it.
    let mut playbooks = Vec::new();
    for pb in c.playbooks() {
        let in_dir = c
            .playbook_dir
            .as_deref()
            .and_then(|d| Path::new(pb).strip_prefix(d).ok())
            .map(|rel| rel.to_string_lossy().replace('\\', "/"));
        let remote = match in_dir {
            Some(rel) => join_remote(&staging, &rel),
            None => {
                let remote = join_remote(&staging, base_name(pb));
                actions.push(upload_local_file(
                    &env.local_path("playbook_file", pb)?,
                    remote.clone(),
                )?);
                remote
            }
        };
        playbooks.push(remote);
    }
    let inventory = match &c.inventory_file {
        Some(f) => {
            let remote = join_remote(&staging, base_name(f));
            actions.push(upload_local_file(
                &env.local_path("inventory_file", f)?,
                remote.clone(),
            )?);
            remote
        }
        None => {
            let remote = join_remote(
                &staging,
                &format!("packer-provisioner-ansible-local{index}.inventory"),
            );
            let mut text = String::new();
            for g in &c.inventory_groups {
                text.push_str(&format!("[{g}]\n127.0.0.1\n"));
            }
            if text.is_empty() {
                text.push_str("127.0.0.1\n");
            }
            actions.push(Action::Upload {
                data: text.into_bytes(),
                remote: remote.clone(),
                mode: 0o644,
                from: "the generated inventory".into(),
            });
            remote
        }
    };
    let cd = format!("cd {}", shell_quote(&staging));
    if let Some(g) = &c.galaxy_file {
        let remote = join_remote(&staging, base_name(g));
        actions.push(upload_local_file(
            &env.local_path("galaxy_file", g)?,
            remote.clone(),
        )?);
        actions.push(Action::Exec {
            command: format!(
                "{cd} && {} install -r {} -p {}",
                c.galaxy_command(),
                shell_quote(&remote),
                shell_quote(&join_remote(&staging, "roles"))
            ),
            check: ExitCheck::Main {
                valid: vec![0],
                expect_disconnect: false,
            },
        });
    }
    let extra_vars = format!(
        "--extra-vars \"packer_build_name={} packer_builder_type={} packer_http_addr=\"",
        env.build_name, env.builder_type
    );
    let extra: Vec<String> = c
        .extra_arguments
        .iter()
        .map(|a| render(a, &env.ctx()).map_err(|e| format!("extra_arguments: {e}")))
        .collect::<Result<_, _>>()?;
    for pb in playbooks {
        actions.push(Action::Exec {
            command: format!(
                "{cd} && {} {} {extra_vars} {} -c local -i {}",
                c.command(),
                shell_quote(&pb),
                extra.join(" "),
                shell_quote(&inventory)
            ),
            check: ExitCheck::Main {
                valid: vec![0],
                expect_disconnect: false,
            },
        });
    }
    if c.clean_staging_directory {
        actions.push(Action::Exec {
            command: format!("rm -rf {}", shell_quote(&staging)),
            check: ExitCheck::Housekeeping,
        });
    }
    Ok(actions)
}

/// Uploads a local file to `remote` with the file's own mode.
fn upload_local_file(path: &Path, remote: String) -> Result<Action, String> {
    let data = std::fs::read(path).map_err(|e| format!("source {}: {e}", path.display()))?;
    Ok(Action::Upload {
        data,
        remote,
        mode: file_mode(path),
        from: path.display().to_string(),
    })
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_child = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk(root, &rel_child, out)?;
        } else {
            out.push(rel_child);
        }
    }
    Ok(())
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> PlanEnv {
        PlanEnv {
            build_name: "web".into(),
            builder_type: "amazon-ebs".into(),
            random: "r".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ansible_local_uploads_playbook_roles_and_inventory_then_runs_in_local_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("site.yml"), "- hosts: all\n").unwrap();
        std::fs::create_dir_all(d.join("roles/web/tasks")).unwrap();
        std::fs::write(d.join("roles/web/tasks/main.yml"), "- debug: msg=hi\n").unwrap();
        std::fs::create_dir_all(d.join("gv")).unwrap();
        std::fs::write(d.join("gv/all.yml"), "port: 80\n").unwrap();
        let p = Provisioner::parse(
            4,
            &json!({"type": "ansible-local", "playbook_file": "site.yml", "role_paths": ["roles/web"],
                    "group_vars": "gv", "inventory_groups": ["web", "db"],
                    "extra_arguments": ["--tags", "install"], "clean_staging_directory": true}),
        )
        .unwrap();
        let env = PlanEnv {
            base_dir: d.to_path_buf(),
            ..env()
        };
        let actions = plan(&p, &env).unwrap();
        let staging = "/tmp/packer-provisioner-ansible-local/r_4";
        let uploads: Vec<(&str, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Upload { remote, data, .. } => {
                    Some((remote.as_str(), String::from_utf8_lossy(data).to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            uploads,
            [
                (
                    &*format!("{staging}/group_vars/all.yml"),
                    "port: 80\n".to_string()
                ),
                (
                    &*format!("{staging}/roles/web/tasks/main.yml"),
                    "- debug: msg=hi\n".to_string()
                ),
                (
                    &*format!("{staging}/site.yml"),
                    "- hosts: all\n".to_string()
                ),
                (
                    &*format!("{staging}/packer-provisioner-ansible-local4.inventory"),
                    "[web]\n127.0.0.1\n[db]\n127.0.0.1\n".to_string()
                ),
            ]
        );
        let commands: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Exec { command, .. } => Some(command.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            commands,
            [
                format!("cd {staging} && ANSIBLE_FORCE_COLOR=1 PYTHONUNBUFFERED=1 ansible-playbook {staging}/site.yml \
                 --extra-vars \"packer_build_name=web packer_builder_type=amazon-ebs packer_http_addr=\" --tags install \
                 -c local -i {staging}/packer-provisioner-ansible-local4.inventory")
                .as_str(),
                &format!("rm -rf {staging}"),
            ]
        );
        assert!(matches!(&actions[0], Action::Mkdir { path } if path == staging));
    }

    #[test]
    fn inline_shell_uploads_runs_and_cleans() {
        let p = Provisioner::parse(
            0,
            &json!({"type": "shell", "inline": ["echo a"], "environment_vars": ["X=it's"]}),
        )
        .unwrap();
        let actions = plan(&p, &env()).unwrap();
        let Action::Upload { data, remote, .. } = &actions[0] else {
            panic!()
        };
        assert_eq!(String::from_utf8_lossy(data), "#!/bin/sh -e\necho a\n");
        assert_eq!(remote, "/tmp/script_r_0.sh");
        let Action::Exec { command, .. } = &actions[1] else {
            panic!()
        };
        assert_eq!(
            command,
            "chmod +x /tmp/script_r_0.sh; PACKER_BUILDER_TYPE='amazon-ebs' PACKER_BUILD_NAME='web' X='it'\"'\"'s'  /tmp/script_r_0.sh"
        );
        assert_eq!(
            actions[2],
            Action::Exec {
                command: "rm -f /tmp/script_r_0.sh".into(),
                check: ExitCheck::Housekeeping
            }
        );
    }

    #[test]
    fn env_wins_over_environment_vars_and_use_env_var_file_sources_a_file() {
        let p = Provisioner::parse(
            3,
            &json!({"type": "shell", "inline": ["echo a"], "environment_vars": ["A=1", "B=1"],
                "env": {"B": "2", "C": "{{ build `ID` }}"}, "use_env_var_file": true}),
        )
        .unwrap();
        let env = PlanEnv {
            build: BTreeMap::from([("ID".to_string(), "i-1".to_string())]),
            ..env()
        };
        let actions = plan(&p, &env).unwrap();
        let Action::Upload { data, remote, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(remote, "/tmp/varfile_r_3.sh");
        assert_eq!(
            String::from_utf8_lossy(data),
            "export A='1'\nexport B='2'\nexport C='i-1'\nexport PACKER_BUILDER_TYPE='amazon-ebs'\nexport PACKER_BUILD_NAME='web'\n"
        );
        let Action::Exec { command, .. } = &actions[2] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            command,
            "chmod +x /tmp/script_r_3.sh; . /tmp/varfile_r_3.sh && /tmp/script_r_3.sh"
        );
        assert_eq!(
            actions.last(),
            Some(&Action::Exec {
                command: "rm -f /tmp/varfile_r_3.sh".into(),
                check: ExitCheck::Housekeeping
            })
        );
    }

    #[test]
    fn directory_trailing_slash_semantics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf/sub")).unwrap();
        std::fs::write(dir.path().join("conf/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("conf/sub/b.txt"), "b").unwrap();
        let env = PlanEnv {
            base_dir: dir.path().to_path_buf(),
            ..env()
        };
        let remotes = |src: &str| -> Vec<String> {
            let p = Provisioner::parse(
                0,
                &json!({"type": "file", "source": src, "destination": "/opt/x"}),
            )
            .unwrap();
            plan(&p, &env)
                .unwrap()
                .into_iter()
                .filter_map(|a| {
                    if let Action::Upload { remote, .. } = a {
                        Some(remote)
                    } else {
                        None
                    }
                })
                .collect()
        };
        assert_eq!(
            remotes("conf"),
            vec!["/opt/x/conf/a.txt", "/opt/x/conf/sub/b.txt"]
        );
        assert_eq!(remotes("conf/"), vec!["/opt/x/a.txt", "/opt/x/sub/b.txt"]);
    }
}
