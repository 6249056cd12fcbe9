//! Data sources: `data "amazon-ami" "name" { ... }`, `amazon-parameterstore` and
//! `amazon-secretsmanager`, read while the template is lowered and used as
//! `data.<kind>.<name>.<attribute>`.
//!
//! This crate makes no AWS call: the caller hands a [`DataLookup`] in
//! [`PrepareOptions::data_sources`](crate::PrepareOptions) (the CLI's reads with the user's
//! credentials, `functions/amiflow/src/data_sources.rs`). Here are the kinds, the keys each
//! takes, what each gives and which of its attributes are sensitive: a secret is lowered like a
//! sensitive local (`{{user `data.amazon-secretsmanager.name.value`}}` with its value among
//! the sensitive variables), so it is revealed only at the moment of use, deployed too.

use std::sync::Arc;

/// Reads one data source: `kind` (`amazon-ami`, ...) with the block's attributes as JSON
/// (`config`, checked against [`DataKind::keys`]); answers the attributes the kind gives
/// ([`DataKind::outputs`]) or a message naming what went wrong.
pub trait DataLookup: Send + Sync {
    fn lookup(&self, kind: &str, config: &serde_json::Value) -> Result<serde_json::Value, String>;
}

/// The lookup a template's data sources are read with.
#[derive(Clone)]
pub struct DataSources(pub Arc<dyn DataLookup>);

impl std::fmt::Debug for DataSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataSources(..)")
    }
}

/// One kind of data source Packer's amazon plugin has.
#[derive(Debug)]
pub struct DataKind {
    pub name: &'static str,
    /// The keys its block takes.
    pub keys: &'static [&'static str],
    /// The attributes it gives.
    pub outputs: &'static [&'static str],
    /// The attributes that are secrets.
    pub sensitive: &'static [&'static str],
}

pub const KINDS: &[DataKind] = &[
    DataKind {
        name: "amazon-ami",
        keys: &[
            "filters",
            "owners",
            "most_recent",
            "include_deprecated",
            "region",
        ],
        outputs: &[
            "id",
            "name",
            "creation_date",
            "owner",
            "owner_name",
            "root_device_type",
            "tags",
        ],
        sensitive: &[],
    },
    DataKind {
        name: "amazon-parameterstore",
        keys: &["name", "with_decryption", "region"],
        outputs: &["value", "version", "arn"],
        // A SecureString's value is read decrypted: as secret as a secret's.
        sensitive: &["value"],
    },
    DataKind {
        name: "amazon-secretsmanager",
        keys: &["name", "key", "version_id", "version_stage", "region"],
        outputs: &[
            "value",
            "secret_string",
            "secret_binary",
            "version_id",
            "arn",
        ],
        sensitive: &["value", "secret_string", "secret_binary"],
    },
];

pub fn kind(name: &str) -> Option<&'static DataKind> {
    KINDS.iter().find(|k| k.name == name)
}

impl DataKind {
    /// Whether `attribute` of a source with this `config` is a secret: a parameter's value
    /// only when read decrypted (`with_decryption = true`, a SecureString).
    pub fn is_sensitive(&self, attribute: &str, config: &serde_json::Value) -> bool {
        if self.name == "amazon-parameterstore" {
            return attribute == "value" && config["with_decryption"] == serde_json::json!(true);
        }
        self.sensitive.contains(&attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_sensitive_outputs_among_their_outputs() {
        for k in KINDS {
            for s in k.sensitive {
                assert!(k.outputs.contains(s), "{}: {s}", k.name);
            }
        }
        let store = kind("amazon-parameterstore").unwrap();
        assert!(!store.is_sensitive("value", &serde_json::json!({"name": "/a"})));
        assert!(store.is_sensitive(
            "value",
            &serde_json::json!({"name": "/a", "with_decryption": true})
        ));
        assert!(kind("amazon-secretsmanager")
            .unwrap()
            .is_sensitive("value", &serde_json::json!({})));
        assert!(kind("amazon-vpc").is_none());
    }
}
