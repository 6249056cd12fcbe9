//! Go duration strings (`"5m"`, `"1h30m"`, `"300s"`, `"1.5h"`), as Packer's templates use them.
//! The one duration parser of amiflow: builder keys, and provisioner keys both in the
//! template's structural check and in the typed provisioner configs.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A non-negative duration written the Go way; serializes back to a Go duration string
/// (`"1h30m"`), so the build state stays readable and re-parsable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const UNITS: [(&str, f64); 8] = [
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("μs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

impl FromStr for Duration {
    type Err = DurationError;

    /// Go's `time.ParseDuration`: a sequence of decimal numbers, each with an optional
    /// fraction and a unit (ns, us/µs, ms, s, m, h); `"0"` alone is allowed. Negative
    /// durations are refused: no Packer duration means anything below zero.
    fn from_str(text: &str) -> Result<Duration, DurationError> {
        let bad = || {
            DurationError(format!(
                "{text:?} is not a duration; write it like \"30s\", \"5m\" or \"1h30m\" (units: ns, us, ms, s, m, h)"
            ))
        };
        let s = text.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        if s.starts_with('-') {
            return Err(DurationError(format!(
                "{text:?} is negative; durations must be zero or more"
            )));
        }
        if s == "0" {
            return Ok(Duration::default());
        }
        if s.is_empty() {
            return Err(bad());
        }
        let mut rest = s;
        let mut nanos = 0f64;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let num = &rest[..num_len];
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(bad());
            }
            let value: f64 = num.parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let scale = UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, s)| *s)
                .ok_or_else(bad)?;
            nanos += value * scale;
            rest = &rest[unit_len..];
        }
        if !nanos.is_finite() || nanos > u64::MAX as f64 {
            return Err(DurationError(format!("{text:?} is too long a duration")));
        }
        Ok(Duration(std::time::Duration::from_nanos(
            nanos.round() as u64
        )))
    }
}

impl fmt::Display for Duration {
    /// Shortest Go form: `1h30m`, `5m`, `90s` stays `1m30s`, `1.5s`, `300ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < 1_000_000_000 {
            return if total.is_multiple_of(1_000_000) {
                write!(f, "{}ms", total / 1_000_000)
            } else if total.is_multiple_of(1_000) {
                write!(f, "{}us", total / 1_000)
            } else {
                write!(f, "{total}ns")
            };
        }
        let secs = self.0.as_secs();
        let sub = self.0.subsec_nanos();
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sub > 0 {
            let frac = format!("{:09}", sub);
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
        } else if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            // mapstructure's weak decoding turns a bare 0 into a zero duration; any other
            // number is ambiguous (Go would read nanoseconds), so ask for a unit.
            serde_json::Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Duration::default()),
            other => Err(serde::de::Error::custom(format!(
                "expected a duration string such as \"5m\", found {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        s.parse().unwrap()
    }

    #[test]
    fn parses_go_forms() {
        assert_eq!(d("5m").0.as_secs(), 300);
        assert_eq!(d("1h30m").0.as_secs(), 5400);
        assert_eq!(d("300s").0.as_secs(), 300);
        assert_eq!(d("1.5h").0.as_secs(), 5400);
        assert_eq!(d("250ms").0.as_millis(), 250);
        assert_eq!(d("0").0.as_secs(), 0);
        assert_eq!(d("2h45m30s").0.as_secs(), 9930);
        assert_eq!(d("10µs").0.as_micros(), 10);
        assert_eq!(d("30s").0.as_secs(), 30);
        assert_eq!(d("1.5m").0.as_secs(), 90);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "5",
            "30",
            "5x",
            "1x",
            "m",
            "1h-30m",
            "-5m",
            "-1s",
            "5 m",
            "1..5s",
            "1..2s",
            "1.s.s",
            "five minutes",
            "1d",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_and_round_trips() {
        for (input, shown) in [
            ("5m", "5m"),
            ("1h30m", "1h30m"),
            ("300s", "5m"),
            ("90s", "1m30s"),
            ("250ms", "250ms"),
            ("1.5s", "1.5s"),
            ("0", "0s"),
            ("2h", "2h"),
        ] {
            let parsed = d(input);
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(d(shown), parsed);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(serde_json::from_str::<Duration>(&json).unwrap(), parsed);
        }
    }
}
