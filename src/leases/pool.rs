//! A pool's configured shape.

use std::time::Duration;

use crate::config::PoolConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub capacity: u32,
    /// Most units one holder may hold over all its leases.
    pub max_per_holder: u32,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl PoolSpec {
    pub fn from_config(config: &PoolConfig) -> Self {
        Self {
            name: config.name.clone(),
            capacity: config.capacity,
            max_per_holder: config.max_per_holder.unwrap_or(config.capacity),
            default_ttl: config.default_ttl.get(),
            max_ttl: config.max_ttl.get(),
        }
    }

    /// Refuses a count this pool could never grant (above its capacity or
    /// its per-holder maximum).
    pub fn check_count(&self, count: u32) -> Result<(), crate::leases::LeaseError> {
        use crate::error::FieldError;
        if count > self.capacity {
            return Err(FieldError::new(
                "count",
                format!(
                    "{count} exceeds the capacity of {} of pool {:?}; it could never be granted",
                    self.capacity, self.name
                ),
            )
            .into());
        }
        if count > self.max_per_holder {
            return Err(FieldError::new(
                "count",
                format!(
                    "{count} exceeds the per-holder maximum of {} of pool {:?}",
                    self.max_per_holder, self.name
                ),
            )
            .into());
        }
        Ok(())
    }

    /// The TTL a lease gets: the asked one capped at the maximum, or the
    /// default when none (or zero) is asked.
    pub fn ttl(&self, asked: Option<Duration>) -> Duration {
        match asked {
            Some(ttl) if !ttl.is_zero() => ttl.min(self.max_ttl),
            _ => self.default_ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    #[test]
    fn ttls_default_and_cap() {
        let spec = PoolSpec::from_config(&PoolConfig {
            name: "db".into(),
            capacity: 10,
            max_per_holder: None,
            default_ttl: HumanDuration::from_secs(30),
            max_ttl: HumanDuration::from_secs(60),
        });
        assert_eq!(spec.max_per_holder, 10, "defaults to the capacity");
        assert_eq!(spec.ttl(None), Duration::from_secs(30));
        assert_eq!(spec.ttl(Some(Duration::ZERO)), Duration::from_secs(30));
        assert_eq!(
            spec.ttl(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            spec.ttl(Some(Duration::from_secs(500))),
            Duration::from_secs(60)
        );
    }
}
