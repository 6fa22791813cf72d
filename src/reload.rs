//! Hot reload: on SIGHUP, and whenever the configuration file's content
//! changes (polled, which also catches an atomic rename and a Kubernetes
//! ConfigMap symlink swap that file-watch APIs miss). A file that does not
//! load is refused with a log line and a metric; what is in force stays.
//! Hot-reloadable: `[ratelimit]` and `[leases]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError, FlagOverrides};
use crate::leases::LeaseManager;
use crate::ratelimit::RateLimiter;
use crate::ratelimit::metrics::RateLimitMetrics;

/// How long a changed file must stay the same before a poll applies it.
const SETTLE: Duration = Duration::from_millis(100);

/// Where the configuration came from, so it can be assembled again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub flags: FlagOverrides,
}

impl ConfigSource {
    /// Reads the file and assembles the configuration as at start. Returns the
    /// file's text too, to notice the next change.
    pub fn load(&self) -> Result<(Config, Option<String>), ConfigError> {
        let text = match &self.path {
            Some(path) => Some(config::read_file(path)?),
            None => None,
        };
        let file = self.path.as_deref().zip(text.as_deref());
        let loaded = Config::load(file, &self.env, &self.flags)?;
        Ok((loaded.config, text))
    }
}

/// What a reload can change.
#[derive(Clone)]
pub struct ReloadTargets {
    pub limiter: RateLimiter,
    pub metrics: RateLimitMetrics,
    pub leases: LeaseManager,
}

pub struct Reloader {
    source: ConfigSource,
    targets: ReloadTargets,
    current: Config,
    /// The file text (or read error) last acted on, so a change is acted on once.
    last_seen: Option<Result<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Refused(String),
}

impl Reloader {
    pub fn new(source: ConfigSource, targets: ReloadTargets, current: Config) -> Self {
        let last_seen = source
            .path
            .as_ref()
            .map(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()));
        Self {
            source,
            targets,
            current,
            last_seen,
        }
    }

    /// Reloads if the file changed since the last look (`force`: regardless).
    pub fn check(&mut self, force: bool) -> ReloadOutcome {
        let Some(path) = &self.source.path else {
            return ReloadOutcome::Unchanged;
        };
        let seen = std::fs::read_to_string(path).map_err(|e| e.to_string());
        if !force && self.last_seen.as_ref() == Some(&seen) {
            return ReloadOutcome::Unchanged;
        }
        self.reload(seen)
    }

    /// Applies the file whose content was just `seen`, or refuses it.
    fn reload(&mut self, seen: Result<String, String>) -> ReloadOutcome {
        self.last_seen = Some(seen);
        match self.source.load() {
            Ok((config, _)) => {
                self.apply(config);
                self.targets.metrics.reload(true);
                ReloadOutcome::Applied
            }
            Err(e) => {
                self.targets.metrics.reload(false);
                tracing::error!(error = %e, "configuration reload refused; the configuration in force stays");
                ReloadOutcome::Refused(e.to_string())
            }
        }
    }

    fn apply(&mut self, config: Config) {
        self.targets.limiter.reload(&config.ratelimit);
        self.targets.leases.reload(&config.leases);
        let restart_needed: Vec<&str> = [
            ("server", self.current.server != config.server),
            ("storage", self.current.storage != config.storage),
            ("telemetry", self.current.telemetry != config.telemetry),
            ("cache", self.current.cache != config.cache),
            ("query", self.current.query != config.query),
            ("traces", self.current.traces != config.traces),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !restart_needed.is_empty() {
            tracing::warn!(
                sections = ?restart_needed,
                "these sections changed but take effect only after a restart"
            );
        }
        tracing::info!(
            limits = config.ratelimit.limits.len(),
            envoy_domains = config.ratelimit.envoy.len(),
            lease_pools = config.leases.pools.len(),
            "configuration reloaded"
        );
        self.current = config;
    }

    /// A poll's reload: a file written in place (`echo > file`, a plain
    /// write) can be read half-written, and an empty or cut-short file is
    /// often valid TOML that would drop limits and pools. So a change counts
    /// only once two reads a moment apart agree; while the file is still
    /// changing, the next poll looks again. (Editors and the kubelet replace
    /// whole files by rename, which is seen complete at once.)
    async fn check_settled(&mut self) -> ReloadOutcome {
        let Some(path) = self.source.path.clone() else {
            return ReloadOutcome::Unchanged;
        };
        let first = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        if self.last_seen.as_ref() == Some(&first) {
            return ReloadOutcome::Unchanged;
        }
        tokio::time::sleep(SETTLE).await;
        let second = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        if first != second {
            tracing::debug!("configuration file still changing; looking again at the next poll");
            return ReloadOutcome::Unchanged;
        }
        self.reload(second)
    }

    /// Polls every `interval` (zero: never) and reloads whenever `trigger` is
    /// notified (the signal handler does so on SIGHUP), until `shutdown`.
    pub async fn run(
        mut self,
        interval: Duration,
        trigger: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let poll = !interval.is_zero();
        let period = if poll {
            interval
        } else {
            Duration::from_secs(3600)
        };
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick(), if poll => { self.check_settled().await; }
                _ = trigger.notified() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.check(true);
                }
            }
        }
    }
}
