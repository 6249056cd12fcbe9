//! Go reference-time layouts (`2006-01-02T15:04:05Z07:00`) for `{{isotime "layout"}}`.
//!
//! Packer formats its fixed build time with Go's `time.Format`; users copy Go layouts into
//! AMI names, so the same layout must give the same text. The build time is UTC, so zone
//! elements print `UTC`, `Z` or `+00:00`-style offsets exactly as Go does for UTC.

use chrono::{DateTime, Datelike, Timelike, Utc};

pub(crate) const LONG_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
pub(crate) const LONG_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Formats `t` with a Go layout.
pub(crate) fn format(t: &DateTime<Utc>, layout: &str) -> String {
    let mut out = String::new();
    let b = layout.as_bytes();
    let mut i = 0;
    let hour12 = || {
        let h = t.hour() % 12;
        if h == 0 {
            12
        } else {
            h
        }
    };
    while i < b.len() {
        let rest = &layout[i..];
        // Longest match first, in the order Go's nextStdChunk tries them.
        let (piece, len): (String, usize) = if rest.starts_with("January") {
            (LONG_MONTHS[t.month0() as usize].into(), 7)
        } else if rest.starts_with("Jan") {
            (LONG_MONTHS[t.month0() as usize][..3].into(), 3)
        } else if rest.starts_with("Monday") {
            (
                LONG_DAYS[t.weekday().num_days_from_sunday() as usize].into(),
                6,
            )
        } else if rest.starts_with("Mon") {
            (
                LONG_DAYS[t.weekday().num_days_from_sunday() as usize][..3].into(),
                3,
            )
        } else if rest.starts_with("MST") {
            ("UTC".into(), 3)
        } else if rest.starts_with("01") {
            (format!("{:02}", t.month()), 2)
        } else if rest.starts_with("02") {
            (format!("{:02}", t.day()), 2)
        } else if rest.starts_with("03") {
            (format!("{:02}", hour12()), 2)
        } else if rest.starts_with("04") {
            (format!("{:02}", t.minute()), 2)
        } else if rest.starts_with("05") {
            (format!("{:02}", t.second()), 2)
        } else if rest.starts_with("06") {
            (format!("{:02}", t.year().rem_euclid(100)), 2)
        } else if rest.starts_with("002") {
            (format!("{:03}", t.ordinal()), 3)
        } else if rest.starts_with("15") {
            (format!("{:02}", t.hour()), 2)
        } else if rest.starts_with('1') {
            (t.month().to_string(), 1)
        } else if rest.starts_with("2006") {
            (format!("{:04}", t.year()), 4)
        } else if rest.starts_with('2') {
            (t.day().to_string(), 1)
        } else if rest.starts_with("__2") {
            (format!("{:>3}", t.ordinal()), 3)
        } else if rest.starts_with("_2") && !rest.starts_with("_2006") {
            (format!("{:>2}", t.day()), 2)
        } else if rest.starts_with('3') {
            (hour12().to_string(), 1)
        } else if rest.starts_with('4') {
            (t.minute().to_string(), 1)
        } else if rest.starts_with('5') {
            (t.second().to_string(), 1)
        } else if rest.starts_with("PM") {
            ((if t.hour() >= 12 { "PM" } else { "AM" }).into(), 2)
        } else if rest.starts_with("pm") {
            ((if t.hour() >= 12 { "pm" } else { "am" }).into(), 2)
        } else if let Some((text, n)) = zone(rest) {
            (text.into(), n)
        } else if let Some((text, n)) = fraction(rest, t.nanosecond()) {
            (text, n)
        } else {
            let c = rest.chars().next().expect("non-empty");
            (c.to_string(), c.len_utf8())
        };
        out.push_str(&piece);
        i += len;
    }
    out
}

/// Zone offsets for UTC: `Z…` forms print `Z`, numeric forms print zeros.
fn zone(rest: &str) -> Option<(&'static str, usize)> {
    const FORMS: [(&str, &str); 10] = [
        ("Z07:00:00", "Z"),
        ("Z070000", "Z"),
        ("Z07:00", "Z"),
        ("Z0700", "Z"),
        ("Z07", "Z"),
        ("-07:00:00", "+00:00:00"),
        ("-070000", "+000000"),
        ("-07:00", "+00:00"),
        ("-0700", "+0000"),
        ("-07", "+00"),
    ];
    FORMS
        .iter()
        .find(|(f, _)| rest.starts_with(f))
        .map(|(f, text)| (*text, f.len()))
}

/// `.000` (fixed digits) or `.999` (trailing zeros dropped), also with `,`; only when the
/// run of digits is not followed by another digit (Go's rule).
fn fraction(rest: &str, nanos: u32) -> Option<(String, usize)> {
    let b = rest.as_bytes();
    if b.len() < 2 || !(b[0] == b'.' || b[0] == b',') || !(b[1] == b'0' || b[1] == b'9') {
        return None;
    }
    let digit = b[1];
    let mut n = 1;
    while n < b.len() && b[n] == digit {
        n += 1;
    }
    if n < b.len() && b[n].is_ascii_digit() {
        return None;
    }
    let digits = (n - 1).min(9);
    let all = format!("{:09}", nanos.min(999_999_999));
    let mut frac = all[..digits].to_string();
    if digit == b'9' {
        let trimmed = frac.trim_end_matches('0').len();
        frac.truncate(trimmed);
        if frac.is_empty() {
            return Some((String::new(), n));
        }
    }
    Some((format!("{}{}", b[0] as char, frac), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 5, 14, 7, 9).unwrap() + chrono::Duration::milliseconds(120)
    }

    #[test]
    fn common_layouts() {
        assert_eq!(
            format(&t(), "2006-01-02T15:04:05Z07:00"),
            "2024-03-05T14:07:09Z"
        );
        assert_eq!(format(&t(), "20060102"), "20240305");
        assert_eq!(format(&t(), "2006-01-02"), "2024-03-05");
        assert_eq!(format(&t(), "200601021504"), "202403051407");
        assert_eq!(format(&t(), "Jan _2 15:04:05"), "Mar  5 14:07:09");
        assert_eq!(
            format(&t(), "Monday, 02-Jan-06 15:04:05 MST"),
            "Tuesday, 05-Mar-24 14:07:09 UTC"
        );
        assert_eq!(
            format(&t(), "Mon Jan 2 3:4:5 PM -0700"),
            "Tue Mar 5 2:7:9 PM +0000"
        );
        assert_eq!(format(&t(), "January 1 pm"), "March 3 pm");
        assert_eq!(format(&t(), "15:04:05.000"), "14:07:09.120");
        assert_eq!(format(&t(), "15:04:05.999"), "14:07:09.12");
        assert_eq!(format(&t(), "002 __2"), "065  65");
        assert_eq!(format(&t(), "-07:00 Z0700"), "+00:00 Z");
    }

    #[test]
    fn literal_text_passes_through() {
        assert_eq!(format(&t(), "build at 2006"), "build at 2024");
        assert_eq!(format(&t(), "ünïcode_x"), "ünïcode_x");
        assert_eq!(format(&t(), ""), "");
    }
}
