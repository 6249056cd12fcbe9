//! Values of sensitive variables, kept out of everything that is serialized.
//!
//! In the prepared builds `{{user `NAME`}}` of a sensitive variable yields the placeholder
//! `<sensitive:NAME>` (and a variable built from one holds placeholders too), so only the
//! strings that use a secret carry it, and no other text is touched however short the
//! value is. The values travel separately in [`Secrets`], which is not
//! `Serialize` and whose `Debug` shows names only. A step calls [`Secrets::reveal`] at the
//! moment it uses a text (command, password), and [`Secrets::mask`] on anything it logs.
//!
//! The placeholder is not `{{...}}` syntax on purpose: it passes through
//! [`render_later`](crate::render_later) untouched, and a placeholder that reached a shell
//! unrevealed fails (`<` is a redirection) instead of running with a wrong value.
//! A template function applied to a sensitive variable is refused (it would transform
//! the placeholder, not the value).

use std::fmt;

/// What masked values look like in logs and errors (Packer prints `<sensitive>` too).
pub const MASK: &str = "<sensitive>";

/// How every placeholder starts.
pub(crate) const SECRET_MARK: &str = "<sensitive:";

pub fn placeholder(name: &str) -> String {
    format!("<sensitive:{name}>")
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// (variable name, value), longest value first so that a value containing another is
    /// replaced whole.
    entries: Vec<(String, String)>,
}

impl Secrets {
    /// Builds the set from sensitive variables' values; empty values protect nothing and are skipped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        let mut entries: Vec<(String, String)> =
            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        entries.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        Secrets { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Name and value of each secret, for handing them to a secret store (SSM Parameter
    /// Store SecureString): never into the build state or a log.
    pub fn expose_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Placeholders → values, at the moment of use.
    pub fn reveal(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.entries {
            out = out.replace(&placeholder(name), value);
        }
        out
    }

    /// Values (and placeholders) → `<sensitive>`, for logs and error messages.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.entries {
            out = out
                .replace(value.as_str(), MASK)
                .replace(&placeholder(name), MASK);
        }
        out
    }

    /// Values → placeholders in a string.
    pub fn conceal(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.entries {
            out = out.replace(value.as_str(), &placeholder(name));
        }
        out
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from_pairs([
            ("pw".to_string(), "hunter2".to_string()),
            ("long".to_string(), "hunter2-extra".to_string()),
            ("empty".to_string(), String::new()),
        ])
    }

    #[test]
    fn conceal_reveal_mask() {
        let s = secrets();
        let concealed = s.conceal("a hunter2-extra b hunter2");
        assert_eq!(concealed, "a <sensitive:long> b <sensitive:pw>");
        assert_eq!(s.reveal(&concealed), "a hunter2-extra b hunter2");
        assert_eq!(
            s.mask("x hunter2 y <sensitive:long>"),
            "x <sensitive> y <sensitive>"
        );
        assert_eq!(s.names().collect::<Vec<_>>(), vec!["long", "pw"]);
    }

    #[test]
    fn debug_shows_names_only() {
        let dbg = format!("{:?}", secrets());
        assert!(dbg.contains("pw") && !dbg.contains("hunter2"), "{dbg}");
    }
}
