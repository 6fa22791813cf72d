//! Value types that several sections share (durations written the human
//! way, durability), and the checks every section uses, so "must be at least
//! 1" is written once.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FieldError;

/// A duration written the human way in TOML and environment variables: `"500ms"`, `"10s"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. \"500ms\", \"10s\" or \"1m\""
                ))
            })
    }
}

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Flushed to disk before the answer.
    #[default]
    Sync,
    /// In the store before the answer, on disk within `storage.flush_interval`.
    Periodic,
}

/// What a section's validation returns: the first key that is wrong, and why.
pub type Checked = Result<(), FieldError>;

/// Every `(key, value)` is at least 1.
pub fn at_least_one<'a>(
    section: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Checked {
    for (key, value) in values {
        if value == 0 {
            return Err(FieldError::new(
                format!("{section}.{key}"),
                "must be at least 1, got 0",
            ));
        }
    }
    Ok(())
}

/// Every `(key, duration)` is above zero.
pub fn positive<'a>(
    section: &str,
    values: impl IntoIterator<Item = (&'a str, HumanDuration)>,
) -> Checked {
    for (key, value) in values {
        if value.get().is_zero() {
            return Err(FieldError::new(
                format!("{section}.{key}"),
                "must be positive, got 0s",
            ));
        }
    }
    Ok(())
}

/// A message limit between 1 KiB and 1 GiB.
pub fn message_size(key: &str, value: u64) -> Checked {
    const KIB: u64 = 1024;
    if !(KIB..=1024 * 1024 * KIB).contains(&value) {
        return Err(FieldError::new(
            key,
            format!("{value} is out of range; use 1024 (1 KiB) to 1073741824 (1 GiB)"),
        ));
    }
    Ok(())
}

/// A configured name (of a limit, a pool): not blank, no control
/// characters, not seen before in its list.
pub fn unique_name<'a>(
    key: &str,
    name: &'a str,
    seen: &mut std::collections::BTreeSet<&'a str>,
) -> Checked {
    if name.trim().is_empty() {
        return Err(FieldError::empty(key));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(
            key,
            format!("{name:?} contains a control character"),
        ));
    }
    if !seen.insert(name) {
        return Err(FieldError::new(key, format!("{name:?} is defined twice")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_checks_name_the_key() {
        assert_eq!(
            at_least_one("cache", [("max_batch", 1), ("hot_entries", 0)])
                .unwrap_err()
                .to_string(),
            "cache.hot_entries: must be at least 1, got 0"
        );
        assert_eq!(
            positive("query", [("persist_interval", HumanDuration::from_secs(0))])
                .unwrap_err()
                .to_string(),
            "query.persist_interval: must be positive, got 0s"
        );
        assert!(message_size("server.max_message_bytes", 1024).is_ok());
        assert!(message_size("server.max_message_bytes", 1023).is_err());
        let mut seen = std::collections::BTreeSet::new();
        assert!(unique_name("l[0].name", "api", &mut seen).is_ok());
        assert_eq!(
            unique_name("l[1].name", "api", &mut seen)
                .unwrap_err()
                .to_string(),
            "l[1].name: \"api\" is defined twice"
        );
        assert!(unique_name("l[2].name", " ", &mut seen).is_err());
    }
}
