//! Packer's template functions that depend only on their arguments.

/// Packer's `clean_resource_name` (amazon plugin `template_funcs.go`): every byte that is
/// not ASCII alphanumeric or one of `( ) [ ] space . / - ' @ _` becomes `-`. Byte-wise, as
/// Packer does, so a multibyte character becomes several dashes; the result is always ASCII.
pub fn clean_resource_name(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"()[] ./-'@_".contains(&b) {
                b as char
            } else {
                '-'
            }
        })
        .collect()
}

/// Go's `strings.Replace(src, old, new, n)`; `n < 0` replaces every match.
pub(crate) fn replace(old: &str, new: &str, n: i64, src: &str) -> String {
    if n < 0 {
        src.replace(old, new)
    } else {
        src.replacen(old, new, usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// The length of [`replace`]'s result, computed without building it (a replacement can
/// multiply the text's length).
pub(crate) fn replaced_len(old: &str, new: &str, n: i64, src: &str) -> usize {
    let matches = if old.is_empty() {
        src.chars().count() + 1
    } else {
        src.matches(old).count()
    };
    let replaced = usize::try_from(n).map_or(matches, |n| n.min(matches));
    (src.len() - replaced * old.len()).saturating_add(replaced.saturating_mul(new.len()))
}

/// Packer's `split(s, sep, i)`: part `i` of `strings.Split(s, sep)`.
pub(crate) fn split(s: &str, sep: &str, i: i64) -> Result<String, String> {
    let parts: Vec<String> = if sep.is_empty() {
        // Go splits into UTF-8 sequences when the separator is empty.
        s.chars().map(String::from).collect()
    } else {
        s.split(sep).map(String::from).collect()
    };
    usize::try_from(i)
        .ok()
        .and_then(|i| parts.get(i).cloned())
        .ok_or_else(|| format!("split: index {i} out of range: {s:?} split at {sep:?} has {} part(s), numbered from 0", parts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_resource_name_follows_packer() {
        assert_eq!(
            clean_resource_name("my ami: 1.2 (test) [x] a/b-c'd@e_f"),
            "my ami- 1.2 (test) [x] a/b-c'd@e_f"
        );
        assert_eq!(clean_resource_name("a,b;c*d!e{f}"), "a-b-c-d-e-f-");
        // Byte-wise: é is two bytes in UTF-8.
        assert_eq!(clean_resource_name("café"), "caf--");
        assert_eq!(clean_resource_name(""), "");
    }

    #[test]
    fn replace_like_go() {
        assert_eq!(replace("a", "b", 1, "aaa"), "baa");
        assert_eq!(replace("a", "b", -1, "aaa"), "bbb");
        assert_eq!(replace("a", "b", 0, "aaa"), "aaa");
        assert_eq!(replace("", "-", -1, "ab"), "-a-b-");
        for (old, new, n, src) in [
            ("a", "bc", -1, "aaa"),
            ("a", "", 2, "aaa"),
            ("", "-", -1, "ab"),
            ("", "xy", 1, "ab"),
            ("z", "q", -1, "ab"),
        ] {
            assert_eq!(
                replaced_len(old, new, n, src),
                replace(old, new, n, src).len(),
                "{old:?} {new:?} {n} {src:?}"
            );
        }
    }

    #[test]
    fn split_like_packer() {
        assert_eq!(split("a-b-c", "-", 1).unwrap(), "b");
        assert_eq!(split("a-b-c", "-", 0).unwrap(), "a");
        assert_eq!(split("abc", "", 2).unwrap(), "c");
        assert!(split("a-b", "-", 2).unwrap_err().contains("has 2 part(s)"));
        assert!(split("a-b", "-", -1).is_err());
    }
}
