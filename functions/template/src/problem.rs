//! Problems found in a template: each names the builder, the key and what to do.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The build's name (`name`, or the builder type when unnamed), when the problem is in a builder.
    pub builder: Option<String>,
    /// The offending key, dotted for nested keys (`source_ami_filter.owners`).
    pub key: Option<String>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            builder: None,
            key: None,
            message: message.into(),
        }
    }

    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            builder: None,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    pub fn in_builder(mut self, builder: impl Into<String>) -> Problem {
        self.builder = Some(builder.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.builder {
            write!(f, "{b}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem of a template, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "* {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
