//! Render-time interpolation for provisioners, and the secrets they may carry.
//!
//! Packer renders provisioner fields twice: user variables at prepare time, and, when the
//! provisioner runs, the context variables (`{{.Vars}}`, `{{.Path}}`, `{{.Script}}`) and
//! build data (`{{build `SourceAMIName`}}`). The second pass is the template crate's
//! [`render_later`]; secrets are the template's [`TemplateSecrets`] (sensitive variables,
//! `<sensitive:NAME>` placeholders) plus values that never had a placeholder (a key read
//! from Parameter Store, `ssh_password`).

use std::collections::BTreeMap;

use amiflow_template::template::render_later;
pub use amiflow_template::template::secrets::{placeholder, Secrets as TemplateSecrets, MASK};

/// Secrets revealed only at the moment of use, and masked in everything that is logged.
#[derive(Clone, Default)]
pub struct Secrets {
    template: TemplateSecrets,
    values: Vec<String>,
    ssh_password: Option<String>,
    bastion_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets({:?} + {} values)",
            self.template,
            self.values.len()
        )
    }
}

impl From<TemplateSecrets> for Secrets {
    fn from(template: TemplateSecrets) -> Secrets {
        Secrets {
            template,
            ..Default::default()
        }
    }
}

/// The shortest sensitive value [`Secrets::conceal_value`] looks for inside a longer string.
pub const CONCEAL_WITHIN: usize = 8;

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Sensitive variables by name and value (their placeholder is `<sensitive:NAME>`).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        TemplateSecrets::from_pairs(pairs).into()
    }

    /// A value to mask that has no placeholder (key material, a password).
    pub fn add_value(&mut self, value: impl Into<String>) {
        let value = value.into();
        if !value.is_empty() {
            self.values.push(value);
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// The text with every placeholder replaced by its value: use only at the moment of use.
    pub fn reveal(&self, text: &str) -> String {
        self.template.reveal(text)
    }

    /// [`Secrets::reveal`] for file contents (an inline script, `content`); binary data unchanged.
    pub fn reveal_bytes(&self, data: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(data) {
            Ok(text) if !self.template.is_empty() => self.reveal(text).into_bytes(),
            _ => data.to_vec(),
        }
    }

    /// A step's output with the sensitive values it read back from AWS (a tag of the source
    /// image, say) turned into their placeholders again, so that they enter no later state
    /// or the execution's history, and a later step can still reveal them. A string equal
    /// to a value is concealed whole; within a longer string only values of at least
    /// [`CONCEAL_WITHIN`] characters are (a short value would match ids and names).
    pub fn conceal_value(&self, value: serde_json::Value) -> serde_json::Value {
        let long = TemplateSecrets::from_pairs(
            self.template
                .expose_pairs()
                .filter(|(_, v)| v.chars().count() >= CONCEAL_WITHIN)
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
        self.conceal_in(value, &long)
    }

    /// [`Secrets::conceal_value`] with the values looked for inside longer strings.
    fn conceal_in(&self, value: serde_json::Value, long: &TemplateSecrets) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => {
                let whole = self
                    .template
                    .expose_pairs()
                    .find(|(_, v)| *v == s)
                    .map(|(name, _)| placeholder(name));
                Value::String(whole.unwrap_or_else(|| long.conceal(&s)))
            }
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.conceal_in(v, long))
                    .collect(),
            ),
            Value::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, self.conceal_in(v, long)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// The text with every secret value (and placeholder) replaced by `<sensitive>`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = self.template.mask(text);
        for v in &self.values {
            out = out.replace(v.as_str(), MASK);
            // Multi-line secrets (private keys) would be logged line by line: mask each line.
            if v.contains('\n') {
                for line in v.lines().filter(|l| l.trim().len() >= 8) {
                    out = out.replace(line, MASK);
                }
            }
        }
        out
    }

    /// The builder's `ssh_password` (revealed); the config never serialises it, so the local
    /// runner passes it here. Masked like every secret.
    pub fn set_ssh_password(&mut self, password: impl Into<String>) {
        self.ssh_password = Some(self.revealed_value(password.into()));
    }

    pub fn ssh_password(&self) -> Option<&str> {
        self.ssh_password.as_deref()
    }

    /// The builder's `ssh_bastion_password`, like [`Secrets::set_ssh_password`].
    pub fn set_bastion_password(&mut self, password: impl Into<String>) {
        self.bastion_password = Some(self.revealed_value(password.into()));
    }

    /// A password as given (it may be a placeholder), revealed and added to the masked values.
    fn revealed_value(&mut self, given: String) -> String {
        let value = self.reveal(&given);
        self.add_value(value.clone());
        value
    }

    pub fn bastion_password(&self) -> Option<&str> {
        self.bastion_password.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.template.is_empty() && self.values.is_empty()
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
        RenderContext {
            dot: BTreeMap::new(),
            build: build.clone(),
        }
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> RenderContext {
        self.dot.insert(key.to_string(), value.into());
        self
    }
}

/// Renders a provisioner field with the template crate's [`render_later`]: `{{.Key}}`
/// looks up the context variables, then build data; `{{build `Key`}}` the build data.
pub fn render(text: &str, ctx: &RenderContext) -> Result<String, String> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut data = ctx.build.clone();
    data.extend(ctx.dot.iter().map(|(k, v)| (k.clone(), v.clone())));
    render_later(text, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conceal_value_puts_placeholders_back_and_leaves_ids_alone() {
        let secrets = Secrets::from_pairs([
            ("canary".to_string(), "canary-0123456789".to_string()),
            ("pin".to_string(), "42".to_string()),
        ]);
        let out = secrets.conceal_value(serde_json::json!({
            "source_ami_tags": {"Canary": "canary-0123456789", "Pin": "42", "Note": "made with canary-0123456789 inside"},
            "instance_id": "i-0424242",
            "list": ["42", 42]
        }));
        assert_eq!(out["source_ami_tags"]["Canary"], "<sensitive:canary>");
        assert_eq!(
            out["source_ami_tags"]["Pin"], "<sensitive:pin>",
            "a whole string is concealed"
        );
        assert_eq!(
            out["source_ami_tags"]["Note"],
            "made with <sensitive:canary> inside"
        );
        assert_eq!(
            out["instance_id"], "i-0424242",
            "a short value is not looked for inside ids"
        );
        assert_eq!(out["list"], serde_json::json!(["<sensitive:pin>", 42]));
        assert_eq!(secrets.reveal("<sensitive:canary>"), "canary-0123456789");
    }

    #[test]
    fn renders_dot_and_build() {
        let mut build = BTreeMap::new();
        build.insert("SourceAMIName".to_string(), "amzn2".to_string());
        let ctx = RenderContext::with_build(&build)
            .set("Path", "/tmp/s.sh")
            .set("Vars", "A='1' ");
        assert_eq!(
            render("chmod +x {{.Path}}; {{.Vars}} {{ .Path }} {{build `SourceAMIName`}} {{ build \"SourceAMIName\" }}", &ctx).unwrap(),
            "chmod +x /tmp/s.sh; A='1'  /tmp/s.sh amzn2 amzn2"
        );
        assert!(render("{{.Nope}}", &ctx).is_err());
        assert!(render("{{build `Nope`}}", &ctx).is_err());
        assert!(render("{{timestamp}}", &ctx).is_err());
        assert_eq!(render("{{ .Path | upper }}", &ctx).unwrap(), "/TMP/S.SH");
    }

    #[test]
    fn secrets_reveal_and_mask() {
        let mut s = Secrets::from_pairs([("db_password".to_string(), "hunter22".to_string())]);
        s.add_value("-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----");
        assert_eq!(s.reveal("pw=<sensitive:db_password>"), "pw=hunter22");
        assert_eq!(s.mask("pw=hunter22"), "pw=<sensitive>");
        assert_eq!(s.mask("pw=<sensitive:db_password>"), "pw=<sensitive>");
        assert_eq!(s.mask("line AAAABBBBCCCCDDDD"), "line <sensitive>");
        assert!(!format!("{s:?}").contains("hunter22"));
    }
}
