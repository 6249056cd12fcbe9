//! Version numbers for `min_packer_version` (`1.7`, `1.10.2`, `v1.9.0-beta`): numeric
//! segments compared as numbers, so 1.10 > 1.9; a pre-release suffix is ignored.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(Vec<u64>);

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let core = s.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or("");
        let parts: Result<Vec<u64>, _> = core.split('.').map(str::parse::<u64>).collect();
        match parts {
            Ok(mut p) if !p.is_empty() && p.len() <= 4 => {
                while p.len() < 3 {
                    p.push(0);
                }
                Ok(Version(p))
            }
            _ => Err(format!(
                "{s:?} is not a version: use numbers like \"1.7.0\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.10.0") > v("1.9.9"));
        assert_eq!(v("1.7"), v("1.7.0"));
        assert_eq!(v("v1.9.0-beta"), v("1.9.0"));
        assert!(Version::parse("one").is_err());
        assert!(Version::parse("").is_err());
    }
}
