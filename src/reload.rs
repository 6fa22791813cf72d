//! Hot reload: on SIGHUP, and whenever the configuration file's content
//! changes (polled, which also catches an atomic rename and a Kubernetes
//! ConfigMap symlink swap that file-watch APIs miss). A file that does not
//! load is refused with a log line and a metric; what is in force stays.
//! What reloads is what the capabilities' reload hooks apply: most of
//! `[ratelimit]` and all of `[leases]` (each section's struct says which
//! keys); a change anywhere else is logged as needing a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError, FlagOverrides};
use crate::runtime::ReloadHook;

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
    /// The file's text, or why it cannot be read (worded as at start).
    fn read(&self, path: &std::path::Path) -> Result<String, String> {
        config::read_file(path).map_err(|e| e.to_string())
    }

    /// Assembles the configuration as at start, from the file `text` read.
    fn assemble(&self, text: Option<&str>) -> Result<Config, ConfigError> {
        let file = self.path.as_deref().zip(text);
        Ok(Config::load(file, &self.env, &self.flags)?.config)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

/// `gantry_config_reloads_total{result}`.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    reloads: Family<ReloadLabel, Counter>,
}

impl ReloadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "gantry_config_reloads",
            "Configuration reloads by result (success, failure)",
            m.reloads.clone(),
        );
        m
    }

    fn count(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabel { result }).inc();
    }
}

pub struct Reloader {
    source: ConfigSource,
    /// One per capability whose section reloads.
    hooks: Vec<ReloadHook>,
    metrics: ReloadMetrics,
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
    pub fn new(
        source: ConfigSource,
        hooks: Vec<ReloadHook>,
        metrics: ReloadMetrics,
        current: Config,
    ) -> Self {
        let last_seen = source.path.as_ref().map(|p| source.read(p));
        Self {
            source,
            hooks,
            metrics,
            current,
            last_seen,
        }
    }

    /// Reloads if the file changed since the last look (`force`: regardless).
    pub fn check(&mut self, force: bool) -> ReloadOutcome {
        let Some(path) = &self.source.path else {
            return ReloadOutcome::Unchanged;
        };
        let seen = self.source.read(path);
        if !force && self.last_seen.as_ref() == Some(&seen) {
            return ReloadOutcome::Unchanged;
        }
        self.reload(seen)
    }

    /// Applies the file whose content was just `seen` (not read again: the
    /// text that was settled on is the text applied), or refuses it.
    fn reload(&mut self, seen: Result<String, String>) -> ReloadOutcome {
        let assembled = match &seen {
            Ok(text) => self.source.assemble(Some(text)).map_err(|e| e.to_string()),
            Err(unreadable) => Err(unreadable.clone()),
        };
        self.last_seen = Some(seen);
        match assembled {
            Ok(config) => {
                self.apply(config);
                self.metrics.count(true);
                ReloadOutcome::Applied
            }
            Err(e) => {
                self.metrics.count(false);
                tracing::error!(error = %e, "configuration reload refused; the configuration in force stays");
                ReloadOutcome::Refused(e)
            }
        }
    }

    fn apply(&mut self, config: Config) {
        for hook in &self.hooks {
            hook(&config);
        }
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
        let first = self.source.read(&path);
        if self.last_seen.as_ref() == Some(&first) {
            return ReloadOutcome::Unchanged;
        }
        tokio::time::sleep(SETTLE).await;
        let second = self.source.read(&path);
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
