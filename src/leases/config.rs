//! `[leases]`: the pools and the bounds of waiting and holders.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::values::{Checked, Durability, HumanDuration, at_least_one, unique_name};
use crate::error::FieldError;

/// `[leases]`: global budgets (pools) leased out to holders. Hot-reloadable:
/// every key (`pools`, `max_waiters`, `max_holder_bytes`, `durability`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// `sync`: a grant or renewal is answered only after it is flushed to disk,
    /// so a crash never over-grants. `periodic`: written to the store before
    /// the answer but flushed every `storage.flush_interval`.
    pub durability: Durability,
    /// Most callers waiting in one pool's queue; beyond it, RESOURCE_EXHAUSTED.
    pub max_waiters: u64,
    /// Longest `holder` accepted, in bytes.
    pub max_holder_bytes: u64,
    /// The pools, e.g. `[[leases.pools]] name = "orders-db" capacity = 200`.
    pub pools: Vec<PoolConfig>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            max_waiters: 1_000,
            max_holder_bytes: 256,
            pools: Vec::new(),
        }
    }
}

/// One pool: `[[leases.pools]] name = "orders-db" capacity = 200`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Units leased out at most at any moment, over every holder.
    pub capacity: u32,
    /// Most units one holder may hold over all its leases; default: the capacity.
    #[serde(default)]
    pub max_per_holder: Option<u32>,
    /// TTL of a lease that asks for none; default 30s.
    #[serde(default = "default_lease_ttl")]
    pub default_ttl: HumanDuration,
    /// Longest TTL granted (longer asks are capped); default 10m.
    #[serde(default = "max_lease_ttl")]
    pub max_ttl: HumanDuration,
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn max_lease_ttl() -> HumanDuration {
    HumanDuration::from_secs(600)
}

/// Longest pool name.
pub const MAX_POOL_NAME_BYTES: usize = 256;

/// Longest lease TTL a pool may allow, so expiry times stay far from overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl LeasesConfig {
    pub(crate) fn validate(&self) -> Checked {
        at_least_one("leases", [("max_holder_bytes", self.max_holder_bytes)])?;
        let mut names = BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = format!("leases.pools[{i}]");
            unique_name(&format!("{at}.name"), &pool.name, &mut names)?;
            if pool.name.len() > MAX_POOL_NAME_BYTES {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    format!(
                        "{} bytes is longer than the limit of {MAX_POOL_NAME_BYTES}",
                        pool.name.len()
                    ),
                ));
            }
            if pool.capacity == 0 {
                return Err(FieldError::new(
                    format!("{at}.capacity"),
                    "must be at least 1, got 0",
                ));
            }
            if let Some(max) = pool.max_per_holder
                && (max == 0 || max > pool.capacity)
            {
                return Err(FieldError::new(
                    format!("{at}.max_per_holder"),
                    format!(
                        "{max} is out of range; use 1 to the capacity ({})",
                        pool.capacity
                    ),
                ));
            }
            let (default_ttl, max_ttl) = (pool.default_ttl.get(), pool.max_ttl.get());
            if max_ttl < Duration::from_millis(1) || max_ttl > MAX_LEASE_TTL {
                return Err(FieldError::new(
                    format!("{at}.max_ttl"),
                    format!("{} is out of range; use 1ms to 366 days", pool.max_ttl),
                ));
            }
            if default_ttl < Duration::from_millis(1) || default_ttl > max_ttl {
                return Err(FieldError::new(
                    format!("{at}.default_ttl"),
                    format!(
                        "{} is out of range; use 1ms to max_ttl ({})",
                        pool.default_ttl, pool.max_ttl
                    ),
                ));
            }
        }
        Ok(())
    }
}
