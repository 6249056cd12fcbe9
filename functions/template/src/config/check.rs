//! The machinery every config's rules share: [`Check`], which collects problems and knows
//! the keys as the template wrote them, and the tests of values (not yet known, region,
//! account id, role ARN, KMS key, CIDR). The rules themselves live beside their structs
//! (`RunConfig::check` in run.rs, …); this file knows none of the configs.

use serde_json::{Map, Value};

use crate::problem::Problem;

/// Collects the problems of one builder while its configs check themselves.
pub(super) struct Check<'a> {
    /// The builder's keys as written (nulls and empty strings dropped), for rules on what
    /// the template gave rather than on what the defaults filled in.
    raw: &'a Map<String, Value>,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Check<'a> {
    pub(super) fn new(raw: &'a Map<String, Value>, problems: &'a mut Vec<Problem>) -> Self {
        Check { raw, problems }
    }

    /// The template gave `key` itself.
    pub(super) fn given(&self, key: &str) -> bool {
        self.raw.contains_key(key)
    }

    /// `key` as the template wrote it.
    pub(super) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.raw.get(key)
    }

    pub(super) fn err(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem::key(key, msg));
    }

    /// A value known now must be one of `allowed`.
    pub(super) fn one_of(&mut self, key: &str, value: Option<&str>, allowed: &[&str]) {
        if let Some(v) = value.filter(|v| !templated(v)) {
            if !allowed.contains(&v) {
                self.err(
                    key,
                    format!("invalid value {v:?}: must be one of {}", allowed.join(", ")),
                );
            }
        }
    }

    /// `key` is given a value that only a step amiflow does not have would apply: refused,
    /// never silently dropped. `way_round` says why and what to do instead.
    pub(super) fn unsupported(&mut self, key: &str, set: bool, way_round: &str) {
        if set {
            self.err(key, format!("not supported by amiflow: {way_round}"));
        }
    }

    /// A number given for `key` lies in `range`; `what` names the unit and why the bounds.
    pub(super) fn range(
        &mut self,
        key: &str,
        value: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
    ) {
        if let Some(v) = value.filter(|v| !range.contains(v)) {
            self.err(
                key,
                format!(
                    "out of range: {v}; must be from {} to {}{what}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    /// `a` and `b` cannot both be set; `what` says what to do instead.
    pub(super) fn conflict(&mut self, a: &str, a_set: bool, b: &str, b_set: bool, what: &str) {
        if a_set && b_set {
            self.err(a, format!("conflicts with {b}: {what}"));
        }
    }

    /// `region`, when known now, is an AWS region name.
    pub(super) fn region(&mut self, key: &str, region: &str) {
        if !templated(region) && !is_region(region) {
            self.err(key, format!("bad region {region:?}: not an AWS region name (like us-east-1, eu-west-3, ap-southeast-2, us-gov-west-1); set skip_region_validation: true to use it anyway"));
        }
    }

    /// Each of `accounts` known now is a 12-digit account id.
    pub(super) fn accounts(&mut self, key: &str, accounts: &[String]) {
        for u in accounts.iter().filter(|u| !templated(u) && !is_account(u)) {
            self.err(
                key,
                format!("invalid value {u:?}: must be a 12-digit AWS account id"),
            );
        }
    }

    /// `kms_key`, when known now, has the form of a KMS key.
    pub(super) fn kms_key(&mut self, key: &str, kms_key: &str) {
        if !templated(kms_key) && !is_kms_key(kms_key) {
            self.err(
                key,
                format!("{kms_key:?} is not a KMS key id, alias/<name>, mrk-<id> or key ARN"),
            );
        }
    }
}

/// True when a value is not known yet: a template expression rendered later with build
/// data, or a sensitive variable's placeholder (`<sensitive:NAME>`, revealed at use).
pub(super) fn templated(s: &str) -> bool {
    s.contains("{{") || s.contains("<sensitive:")
}

pub(crate) fn is_region(r: &str) -> bool {
    const DIRECTIONS: [&str; 9] = [
        "north",
        "south",
        "east",
        "west",
        "central",
        "northeast",
        "northwest",
        "southeast",
        "southwest",
    ];
    const PARTITIONS: [&str; 5] = ["gov", "iso", "isob", "isoe", "isof"];
    let parts: Vec<&str> = r.split('-').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    let mid = &parts[1..parts.len().saturating_sub(1).max(1)];
    parts.len() >= 3
        && first.len() == 2
        && first.chars().all(|c| c.is_ascii_lowercase())
        && !last.is_empty()
        && last.len() <= 2
        && last.chars().all(|c| c.is_ascii_digit())
        && match mid {
            [d] => DIRECTIONS.contains(d),
            [p, d] => PARTITIONS.contains(p) && DIRECTIONS.contains(d),
            _ => false,
        }
}

pub(super) fn is_role_arn(s: &str) -> bool {
    let p: Vec<&str> = s.splitn(6, ':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "iam"
        && is_account(p[4])
        && p[5].starts_with("role/")
        && p[5].len() > 5
}

pub(crate) fn is_account(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_digit())
}

/// Packer's KMS key pattern: key id, multi-region key, alias, or key/alias ARN.
pub(super) fn is_kms_key(s: &str) -> bool {
    let uuid = |k: &str| {
        let groups: Vec<&str> = k.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let mrk = |k: &str| {
        k.strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let alias = |k: &str| k.strip_prefix("alias/").is_some_and(|a| !a.is_empty());
    if let Some(rest) = s.strip_prefix("arn:") {
        let p: Vec<&str> = rest.splitn(5, ':').collect();
        return p.len() == 5
            && p[0].starts_with("aws")
            && p[1] == "kms"
            && !p[2].is_empty()
            && is_account(p[3])
            && (p[4].strip_prefix("key/").is_some_and(|k| uuid(k) || mrk(k)) || alias(p[4]));
    }
    uuid(s) || mrk(s) || alias(s)
}

pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

/// The known key a typo most likely meant.
pub(crate) fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let key_l = key.to_ascii_lowercase();
    known
        .filter_map(|k| {
            let d = strsim::damerau_levenshtein(&key_l, k);
            let close = d <= (key.len() / 3).max(2);
            let prefix = key.len() >= 5
                && (k.starts_with(&key_l) || key_l.starts_with(k))
                && k.len().abs_diff(key.len()) <= 6;
            (close || prefix).then_some((d, k))
        })
        .min()
        .map(|(_, k)| k)
}
