//! The one gate for the files a template names and the build reads where it runs:
//! `user_data_file`, shell `script`/`scripts`, file provisioner `source`s, the chroot
//! builder's shell scripts.
//!
//! A local build reads them as Packer does: relative to the template's directory, absolute
//! paths as they are. A deployed build (`Ctx::in_lambda`) runs as the function, whose own
//! filesystem is not the template author's to read (`/proc/self/environ` holds the role's
//! keys): there a path resolves only inside the template's bundle directory (`base_dir`),
//! never outside it, and with no bundle every file is refused.

use std::path::{Component, Path, PathBuf};

/// Where the template's files are, and whether the build is deployed.
#[derive(Debug, Clone, Default)]
pub struct TemplateFiles {
    /// The template's directory (local) or its bundle (deployed; empty = no bundle).
    pub base_dir: PathBuf,
    pub deployed: bool,
}

impl TemplateFiles {
    /// The files of the build `ctx` runs: deployed in Lambda, where `Ctx::base_dir` is the
    /// bundle (none is uploaded with an execution yet); else the template's directory, or
    /// the working directory.
    pub fn of(ctx: &crate::Ctx) -> TemplateFiles {
        let base_dir = match (&ctx.base_dir, ctx.in_lambda) {
            (Some(dir), _) => dir.clone(),
            (None, true) => PathBuf::new(),
            (None, false) => std::env::current_dir().unwrap_or_default(),
        };
        TemplateFiles {
            base_dir,
            deployed: ctx.in_lambda,
        }
    }

    /// Where the file `path` of the setting `key` is read from; deployed, only a path inside
    /// the bundle (no absolute path, no `..`, no link leading out of it).
    pub fn resolve(&self, key: &str, path: &str) -> Result<PathBuf, String> {
        resolve(&self.base_dir, self.deployed, key, path)
    }

    pub fn read(&self, key: &str, path: &str) -> Result<Vec<u8>, String> {
        let resolved = self.resolve(key, path)?;
        std::fs::read(&resolved)
            .map_err(|e| format!("{key} {path:?}: cannot read {} ({e})", resolved.display()))
    }

    pub fn read_to_string(&self, key: &str, path: &str) -> Result<String, String> {
        let bytes = self.read(key, path)?;
        String::from_utf8(bytes).map_err(|_| format!("{key} {path:?}: not UTF-8 text"))
    }
}

fn resolve(base: &Path, deployed: bool, key: &str, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !deployed {
        return Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        });
    }
    let refused = |why: &str| {
        format!(
            "{key} {path:?}: refused in a deployed build ({why}): the function would read its own filesystem. \
             Put the content in the template instead (inline, content, user_data) or run the build locally with `amiflow build`"
        )
    };
    if base.as_os_str().is_empty() {
        return Err(refused("no template files are uploaded with the execution"));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refused(
            "only a relative path inside the template's files, without `..`, is read",
        ));
    }
    let joined = base.join(p);
    // A link inside the bundle must not lead out of it.
    let (root, real) = (base.canonicalize(), joined.canonicalize());
    match (root, real) {
        (Ok(root), Ok(real)) if real.starts_with(&root) => Ok(real),
        (Ok(_), Ok(_)) => Err(refused("it leads out of the template's files")),
        _ => Err(format!(
            "{key} {path:?}: not found among the template's files"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_build_reads_where_the_template_says() {
        let local = TemplateFiles {
            base_dir: "/tpl".into(),
            deployed: false,
        };
        assert_eq!(
            local.resolve("script", "a.sh").unwrap(),
            Path::new("/tpl/a.sh")
        );
        assert_eq!(
            local.resolve("script", "/etc/hosts").unwrap(),
            Path::new("/etc/hosts")
        );
    }

    #[test]
    fn a_deployed_build_never_reads_the_functions_own_files() {
        let no_bundle = TemplateFiles {
            base_dir: PathBuf::new(),
            deployed: true,
        };
        for path in ["/proc/self/environ", "script.sh", "../../proc/self/environ"] {
            let why = no_bundle.read("user_data_file", path).unwrap_err();
            assert!(why.contains("refused in a deployed build"), "{path}: {why}");
        }
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(bundle.path().join("setup.sh"), "echo hi\n").unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", bundle.path().join("env")).unwrap();
        let deployed = TemplateFiles {
            base_dir: bundle.path().to_path_buf(),
            deployed: true,
        };
        assert_eq!(
            deployed.read_to_string("script", "setup.sh").unwrap(),
            "echo hi\n"
        );
        for path in ["/proc/self/environ", "../../../../proc/self/environ", "env"] {
            let why = deployed.read("script", path).unwrap_err();
            assert!(why.contains("refused in a deployed build"), "{path}: {why}");
        }
    }
}
