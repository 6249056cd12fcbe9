//! Render-time interpolation for provisioners, and the secrets they may carry.
//!
//! Packer renders provisioner fields twice: user variables at prepare time, and, when the
//! provisioner runs, the context variables (`{{.Vars}}`, `{{.Path}}`, `{{.Script}}`) and
//! build data (`{{build `SourceAMIName`}}`). Only the second pass happens here.
//!
//! Stand-in until the template helper's renderer is merged: it understands exactly
//! `{{.Key}}` and `{{build `Key`}}`/`{{build "Key"}}` (spaces allowed), which is all that
//! is left in a provisioner after prepare.

use std::collections::BTreeMap;

/// Values revealed only at the moment of use, and masked in everything that is logged.
///
/// `pairs` maps what the prepared build contains (a sensitive variable's placeholder) to the
/// real value. Values that never had a placeholder (a password read from Parameter Store,
/// a private key) are added with [`Secrets::add_value`] so they are masked too.
#[derive(Clone, Default)]
pub struct Secrets {
    pairs: Vec<(String, String)>,
    ssh_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.pairs.len())
    }
}

/// What a secret is replaced with in logs and errors (Packer's word).
pub const MASK: &str = "<sensitive>";

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// A placeholder in the prepared build and the value it stands for.
    pub fn add(&mut self, placeholder: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((placeholder.into(), value.into()));
    }

    /// A value to mask that has no placeholder.
    pub fn add_value(&mut self, value: impl Into<String>) {
        let value = value.into();
        self.pairs.push((String::new(), value));
    }

    /// The text with every placeholder replaced by its value: use only at the moment of use.
    pub fn reveal(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (placeholder, value) in &self.pairs {
            if !placeholder.is_empty() {
                out = out.replace(placeholder, value);
            }
        }
        out
    }

    /// [`Secrets::reveal`] for file contents (an inline script, `content`); binary data unchanged.
    pub fn reveal_bytes(&self, data: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(data) {
            Ok(text) if !self.pairs.is_empty() => self.reveal(text).into_bytes(),
            _ => data.to_vec(),
        }
    }

    /// The text with every secret value replaced by `<sensitive>`.
    pub fn mask(&self, text: &str) -> String {
        let mut values: Vec<&str> = self.pairs.iter().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()).collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in values {
            out = out.replace(v, MASK);
            // Multi-line secrets (private keys) are logged line by line: mask each line too.
            if v.contains('\n') {
                for line in v.lines().filter(|l| l.trim().len() >= 8) {
                    out = out.replace(line, MASK);
                }
            }
        }
        out
    }

    /// The builder's `ssh_password` (already revealed); the config never serialises it, so the
    /// local runner passes it here. Masked like every secret.
    pub fn set_ssh_password(&mut self, password: impl Into<String>) {
        let password = self.reveal(&password.into());
        self.add_value(password.clone());
        self.ssh_password = Some(password);
    }

    pub fn ssh_password(&self) -> Option<&str> {
        self.ssh_password.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The variables a provisioner field is rendered with at run time.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// `{{.Key}}` values, e.g. `Vars`, `Path`, `Script`.
    pub dot: BTreeMap<String, String>,
    /// `{{build `Key`}}` values: Packer's generated data.
    pub build: BTreeMap<String, String>,
}

impl RenderContext {
    pub fn with_build(build: &BTreeMap<String, String>) -> RenderContext {
        RenderContext { dot: BTreeMap::new(), build: build.clone() }
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> RenderContext {
        self.dot.insert(key.to_string(), value.into());
        self
    }
}

/// Renders `{{.Key}}` and `{{build `Key`}}`; anything else inside `{{ }}` is an error that
/// names it, since prepare has already rendered every other function.
pub fn render(text: &str, ctx: &RenderContext) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed '{{{{' in {text:?}"));
        };
        let inner = after[..end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        let value = if let Some(key) = inner.strip_prefix('.') {
            ctx.dot.get(key).cloned().ok_or_else(|| {
                let known: Vec<&str> = ctx.dot.keys().map(String::as_str).collect();
                format!("{{{{.{key}}}}} is not available here (known: {})", known.join(", "))
            })?
        } else if let Some(arg) = inner.strip_prefix("build") {
            let key = arg.trim().trim_matches(|c| c == '`' || c == '"');
            ctx.build.get(key).cloned().ok_or_else(|| {
                let known: Vec<&str> = ctx.build.keys().map(String::as_str).collect();
                format!("{{{{build `{key}`}}}}: no such build data (known: {})", known.join(", "))
            })?
        } else {
            return Err(format!("{{{{{inner}}}}} cannot be rendered when the provisioner runs; only {{{{.Name}}}} variables and {{{{build `Name`}}}} are"));
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dot_and_build() {
        let mut build = BTreeMap::new();
        build.insert("SourceAMIName".to_string(), "amzn2".to_string());
        let ctx = RenderContext::with_build(&build).set("Path", "/tmp/s.sh").set("Vars", "A='1' ");
        assert_eq!(
            render("chmod +x {{.Path}}; {{.Vars}} {{ .Path }} {{build `SourceAMIName`}} {{ build \"SourceAMIName\" }}", &ctx).unwrap(),
            "chmod +x /tmp/s.sh; A='1'  /tmp/s.sh amzn2 amzn2"
        );
        assert!(render("{{.Nope}}", &ctx).unwrap_err().contains("Nope"));
        assert!(render("{{build `Nope`}}", &ctx).unwrap_err().contains("Nope"));
        assert!(render("{{timestamp}}", &ctx).is_err());
    }

    #[test]
    fn secrets_reveal_and_mask() {
        let mut s = Secrets::new();
        s.add("<sensitive:db_password>", "hunter22");
        s.add_value("-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----");
        assert_eq!(s.reveal("pw=<sensitive:db_password>"), "pw=hunter22");
        assert_eq!(s.mask("pw=hunter22"), "pw=<sensitive>");
        assert_eq!(s.mask("line AAAABBBBCCCCDDDD"), "line <sensitive>");
        assert!(!format!("{s:?}").contains("hunter22"));
    }
}
