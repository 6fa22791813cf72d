//! The shared store of a gantry cluster: one Redis (or Valkey) server, or a
//! Redis Cluster, reached through the `redis` crate's self-healing
//! connections (a `ConnectionManager` for one server, the cluster client's
//! own connection for a cluster). Both multiplex: concurrent calls share one
//! connection per node and leave as a pipeline.
//!
//! Gantry starts even when Redis cannot be reached yet: the first connection
//! is made in the background, every `storage.recover_interval`, and until then
//! (and whenever Redis stops answering) the capabilities that keep their state
//! here answer UNAVAILABLE and report NOT_SERVING (src/server.rs).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo, RedisError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::config::{REDIS_PASSWORD_ENV, RedisConfig};

/// Why a call to Redis failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisStoreError {
    /// No connection, a dropped one, or no answer within
    /// `storage.redis.response_timeout`: the caller may retry.
    #[error("the Redis store is unreachable: {0}")]
    Unreachable(String),
    /// Redis answered with an error (a script failed, out of memory…).
    #[error("the Redis store refused the command: {0}")]
    Refused(String),
    /// A script called by its SHA is not loaded (a restarted or failed-over
    /// node): load it and call again.
    #[error("the Redis store does not know the script (NOSCRIPT)")]
    NoScript,
}

impl From<RedisError> for RedisStoreError {
    fn from(e: RedisError) -> Self {
        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            RedisStoreError::NoScript
        } else if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
        {
            RedisStoreError::Unreachable(e.to_string())
        } else {
            RedisStoreError::Refused(e.to_string())
        }
    }
}

/// A connection to one server or to a cluster; cheap to clone.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    connection: ArcSwapOption<Connection>,
    /// For connections of their own (pub/sub).
    config: RedisConfig,
    credentials: Credentials,
    /// Whether it has answered once (the first answer is "connected", later ones "again").
    answered: std::sync::atomic::AtomicBool,
    prefix: String,
    cluster: bool,
    up: watch::Sender<bool>,
    metrics: RedisMetrics,
}

/// The Redis store, shared by the capabilities that keep state there.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct RedisMetrics {
    up: Gauge,
    errors: Counter,
    reconnects: Counter,
}

impl RedisStore {
    /// Prepares the store and starts connecting in the background (see the
    /// module comment); `stop` ends the connecting and the health probe.
    pub fn start(
        config: &RedisConfig,
        probe_every: Duration,
        registry: &mut Registry,
        stop: CancellationToken,
    ) -> Result<Self, RedisStoreError> {
        let credentials = Credentials {
            password: read_password(config)?,
            tls: read_tls(config)?,
        };
        let metrics = RedisMetrics::default();
        registry.register(
            "gantry_store_redis_up",
            "1 while the Redis store answers, 0 while it does not",
            metrics.up.clone(),
        );
        registry.register(
            "gantry_store_redis_errors",
            "Calls to the Redis store that failed because it could not be reached",
            metrics.errors.clone(),
        );
        registry.register(
            "gantry_store_redis_reconnects",
            "Times the Redis store answered again after it had not",
            metrics.reconnects.clone(),
        );
        let store = Self {
            inner: Arc::new(Inner {
                connection: ArcSwapOption::empty(),
                config: config.clone(),
                credentials: credentials.clone(),
                answered: Default::default(),
                prefix: config.key_prefix.clone(),
                cluster: !config.cluster.is_empty(),
                up: watch::Sender::new(false),
                metrics,
            }),
        };
        let watcher = store.clone();
        let config = config.clone();
        tokio::spawn(async move {
            watcher
                .connect_and_probe(config, credentials, probe_every, stop)
                .await
        });
        Ok(store)
    }

    /// Whether keys of one call may live on different nodes (Redis Cluster).
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// `<prefix>:<domain>:<name>`: every key gantry writes.
    pub fn key(&self, domain: &str, name: &str) -> String {
        let mut key =
            String::with_capacity(self.inner.prefix.len() + domain.len() + name.len() + 2);
        key.push_str(&self.inner.prefix);
        key.push(':');
        key.push_str(domain);
        key.push(':');
        key.push_str(name);
        key
    }

    /// Follows whether Redis answers (true) or not.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.up.subscribe()
    }

    pub fn is_up(&self) -> bool {
        *self.inner.up.borrow()
    }

    /// Sends a pipeline (commands to several nodes of a cluster are split by
    /// node and sent concurrently) and returns its replies.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, RedisStoreError> {
        let Some(connection) = self.inner.connection.load_full() else {
            return Err(RedisStoreError::Unreachable(
                "not connected yet (gantry keeps trying every storage.recover_interval)".into(),
            ));
        };
        let result = match &*connection {
            Connection::Single(c) => pipeline.query_async(&mut c.clone()).await,
            Connection::Cluster(c) => pipeline.query_async(&mut c.clone()).await,
        };
        result.map_err(|e| self.failed(e))
    }

    /// Up to `max` keys that start with `prefix` (SCAN; glob characters in
    /// the prefix are escaped). On one server only: Redis Cluster spreads
    /// keys over nodes, which this client cannot scan as one.
    pub async fn scan_prefix(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, RedisStoreError> {
        if self.is_cluster() {
            return Err(RedisStoreError::Refused(
                "scanning keys is not available on Redis Cluster (ask for one key instead)".into(),
            ));
        }
        let mut pattern = String::with_capacity(prefix.len() + 8);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .command(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= max {
                keys.truncate(max);
                return Ok(keys);
            }
        }
    }

    /// Sends one command.
    pub async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisStoreError> {
        let Some(connection) = self.inner.connection.load_full() else {
            return Err(RedisStoreError::Unreachable(
                "not connected yet (gantry keeps trying every storage.recover_interval)".into(),
            ));
        };
        let result = match &*connection {
            Connection::Single(c) => cmd.query_async(&mut c.clone()).await,
            Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        };
        result.map_err(|e| self.failed(e))
    }

    /// A pipeline of EVALSHA calls of `script`, loading the script first
    /// where Redis does not know it (first use, a restarted or failed-over node).
    pub async fn eval_pipeline<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        pipeline: &redis::Pipeline,
    ) -> Result<T, RedisStoreError> {
        match self.pipeline(pipeline).await {
            Err(RedisStoreError::NoScript) => {
                self.load_script(script).await?;
                self.pipeline(pipeline).await
            }
            other => other,
        }
    }

    /// One EVALSHA call of `script`, loaded first where Redis does not know it.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisStoreError> {
        match self.command(cmd).await {
            Err(RedisStoreError::NoScript) => {
                self.load_script(script).await?;
                self.command(cmd).await
            }
            other => other,
        }
    }

    /// A connection of its own for classic pub/sub: to `node` (`host:port`
    /// of a cluster node), else to the server, or to the first seed node of
    /// a cluster (classic messages reach every node).
    pub async fn pubsub(&self, node: Option<&str>) -> Result<redis::aio::PubSub, RedisStoreError> {
        // Any seed node of a cluster will do: the first one that answers
        // (the first may be the primary that just died).
        let seeds: Vec<Option<&str>> = match node {
            None if self.inner.cluster => self
                .inner
                .config
                .cluster
                .iter()
                .map(|n| Some(n.as_str()))
                .collect(),
            _ => vec![node],
        };
        let mut last = RedisStoreError::Unreachable("no node to subscribe on".into());
        for seed in seeds {
            match self.pubsub_on(seed).await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn pubsub_on(&self, node: Option<&str>) -> Result<redis::aio::PubSub, RedisStoreError> {
        let config = &self.inner.config;
        let client = single_client(config, &self.node_url(node), &self.inner.credentials)?;
        Ok(
            tokio::time::timeout(config.connect_timeout.get(), client.get_async_pubsub())
                .await
                .map_err(|_| {
                    RedisStoreError::Unreachable("connecting for pub/sub timed out".into())
                })??,
        )
    }

    /// The URL of `node` (a cluster node's `host:port`), else of the server
    /// or the first seed node.
    fn node_url(&self, node: Option<&str>) -> String {
        let config = &self.inner.config;
        match node.or(config.cluster.first().map(String::as_str)) {
            None => config.url.clone(),
            Some(node) => {
                let scheme = if config.cluster_tls {
                    "rediss"
                } else {
                    "redis"
                };
                format!("{scheme}://{node}")
            }
        }
    }

    /// Runs `cmd` on one node of a cluster (`host:port`) over a connection
    /// of its own: for what is per node, as its keyspace notifications.
    async fn on_node<T: redis::FromRedisValue>(
        &self,
        node: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisStoreError> {
        let config = &self.inner.config;
        let client = single_client(config, &self.node_url(Some(node)), &self.inner.credentials)?;
        let answer = tokio::time::timeout(config.connect_timeout.get(), async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            cmd.query_async::<T>(&mut connection).await
        })
        .await
        .map_err(|_| RedisStoreError::Unreachable(format!("node {node} did not answer in time")))?;
        Ok(answer?)
    }

    /// The primaries of a cluster (`host:port`), from `CLUSTER NODES`: the
    /// nodes that announce expiries of the keys they hold. Empty on one server.
    pub async fn primaries(&self) -> Result<Vec<String>, RedisStoreError> {
        if !self.inner.cluster {
            return Ok(Vec::new());
        }
        let nodes: String = self.command(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(primaries_of(&nodes))
    }

    /// Hands every message published on `channel` to `on_message` until
    /// `stop`, subscribing again (every second) after a lost connection.
    /// `on_state(true)` runs when a subscription starts, `on_state(false)`
    /// when one is lost: messages may have been missed around either.
    pub async fn listen(
        &self,
        channel: &str,
        stop: CancellationToken,
        on_message: impl Fn(&[u8]),
        on_state: impl Fn(bool),
    ) {
        let channels = [channel.to_string()];
        self.listen_all(
            None,
            &channels,
            stop,
            || async { true },
            |_, payload| on_message(payload),
            on_state,
        )
        .await;
    }

    /// [`Self::listen`] to several channels on one connection (to `node`,
    /// a cluster node's `host:port`, when given), with the channel each
    /// message came on; `prepare` runs before each subscription (e.g. to
    /// switch Redis's keyspace notifications on again after Redis restarted)
    /// and says whether to subscribe now (false: try again in a second).
    pub async fn listen_all<P, Fut>(
        &self,
        node: Option<&str>,
        channels: &[String],
        stop: CancellationToken,
        prepare: P,
        on_message: impl Fn(&str, &[u8]),
        on_state: impl Fn(bool),
    ) where
        P: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        use futures_util::StreamExt;
        loop {
            let ready = prepare().await;
            let subscribed = if !ready {
                Err(RedisStoreError::Unreachable(
                    "not ready to subscribe yet".into(),
                ))
            } else {
                match self.pubsub(node).await {
                    Ok(mut pubsub) => match pubsub.subscribe(channels).await {
                        Ok(()) => Ok(pubsub),
                        Err(e) => Err(RedisStoreError::from(e)),
                    },
                    Err(e) => Err(e),
                }
            };
            match subscribed {
                Ok(mut pubsub) => {
                    on_state(true);
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            message = messages.next() => match message {
                                Some(message) => on_message(message.get_channel_name(), message.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    on_state(false);
                }
                Err(e) => tracing::debug!(error = %e, ?channels, "cannot subscribe yet"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                // Not ready is mostly "not connected yet" at start: ask
                // again soon; a lost subscription waits a second.
                () = tokio::time::sleep(if ready { Duration::from_secs(1) } else { Duration::from_millis(100) }) => {}
            }
        }
    }

    /// The channel Redis announces expired keys on (keyspace notifications).
    /// A cluster announces them on each node for its own keys only (and has
    /// only database 0): subscribe on every primary ([`Self::primaries`]).
    pub fn expired_channel(&self) -> String {
        if self.inner.cluster {
            return "__keyevent@0__:expired".into();
        }
        let db = self
            .inner
            .config
            .url
            .as_str()
            .into_connection_info()
            .map(|info| info.redis_settings().db())
            .unwrap_or(0);
        format!("__keyevent@{db}__:expired")
    }

    /// Makes sure Redis (on a cluster, `node`) announces expired keys
    /// (`notify-keyspace-events` with `E` and `x`, added to what is set).
    /// Err when Redis does not answer (try again); Ok(false) when it
    /// refuses (a managed Redis without CONFIG): go on without them.
    pub async fn enable_expiry_events(&self, node: Option<&str>) -> Result<bool, RedisStoreError> {
        let run = |cmd: redis::Cmd| async move {
            match node {
                Some(node) => self.on_node::<redis::Value>(node, &cmd).await,
                None => self.command::<redis::Value>(&cmd).await,
            }
        };
        let current = run(redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .clone())
        .await
        .and_then(|v| {
            redis::from_redis_value::<Vec<String>>(v)
                .map_err(|e| RedisStoreError::Refused(format!("CONFIG GET answered: {e}")))
        });
        let flags = match current {
            Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
            Err(RedisStoreError::Refused(e)) => {
                tracing::warn!(error = %e, "Redis refused CONFIG GET notify-keyspace-events: cache watchers get no EXPIRE events (docs/cluster.md)");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let has = |c: char| flags.contains(c);
        if has('E') && (has('x') || has('A')) {
            return Ok(true);
        }
        let mut wanted = flags.clone();
        for c in ['E', 'x'] {
            if !wanted.contains(c) {
                wanted.push(c);
            }
        }
        let set = run(redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .clone())
        .await;
        match set {
            Ok(_) => Ok(true),
            Err(RedisStoreError::Refused(e)) => {
                tracing::warn!(error = %e, "Redis refused CONFIG SET notify-keyspace-events Ex: cache watchers get no EXPIRE events (docs/cluster.md)");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads a script on every node (on a cluster, every primary), so that
    /// EVALSHA finds it; done again after NOSCRIPT (a restarted or failed-over node).
    pub async fn load_script(&self, script: &redis::Script) -> Result<(), RedisStoreError> {
        let Some(connection) = self.inner.connection.load_full() else {
            return Err(RedisStoreError::Unreachable("not connected yet".into()));
        };
        let result = match &*connection {
            Connection::Single(c) => script.load_async(&mut c.clone()).await,
            Connection::Cluster(c) => script.load_async(&mut c.clone()).await,
        };
        result.map(|_| ()).map_err(|e| self.failed(e))
    }

    fn failed(&self, e: RedisError) -> RedisStoreError {
        let e = RedisStoreError::from(e);
        if matches!(e, RedisStoreError::Unreachable(_)) {
            self.inner.metrics.errors.inc();
            self.mark(false);
        }
        e
    }

    fn mark(&self, up: bool) {
        let was = self.inner.up.send_replace(up);
        self.inner.metrics.up.set(i64::from(up));
        if was != up {
            let again = self
                .inner
                .answered
                .swap(true, std::sync::atomic::Ordering::Relaxed);
            if up && again {
                self.inner.metrics.reconnects.inc();
                tracing::info!("the Redis store answers again");
            } else if up {
                tracing::info!(cluster = self.inner.cluster, "connected to the Redis store");
            } else {
                tracing::warn!(
                    "the Redis store stopped answering; calls that need it are UNAVAILABLE until it answers"
                );
            }
        }
    }

    /// Connects (retrying until it works), then pings every `every` so a
    /// store that comes back is noticed even when no call goes to it.
    async fn connect_and_probe(
        self,
        config: RedisConfig,
        credentials: Credentials,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut logged = false;
        loop {
            match connect(&config, &credentials).await {
                Ok(connection) => {
                    self.inner.connection.store(Some(Arc::new(connection)));
                    break;
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(error = %e, "cannot connect to the Redis store yet; trying again every storage.recover_interval");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
        loop {
            let pong: Result<String, _> = self.command(&redis::cmd("PING")).await;
            match pong {
                Ok(_) => self.mark(true),
                Err(e) => tracing::debug!(error = %e, "Redis health probe failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// What proves gantry to Redis, and Redis to gantry: read once at start.
#[derive(Clone, Default)]
struct Credentials {
    password: Option<String>,
    /// `ca_file` and the client certificate, when any is set (else TLS,
    /// with `rediss://`, verifies against the webpki roots).
    tls: Option<redis::TlsCertificates>,
}

/// The certificates of `ca_file`, `cert_file` and `key_file`, when set.
fn read_tls(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, RedisStoreError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RedisStoreError::Refused(format!(
                "cannot read storage.redis.{key} {}: {e}",
                path.display()
            ))
        })
    };
    let set = crate::tls::is_set;
    let root_cert = if set(&config.ca_file) {
        Some(read("ca_file", &config.ca_file)?)
    } else {
        None
    };
    let client_tls = if set(&config.cert_file) {
        Some(redis::ClientTlsConfig {
            client_cert: read("cert_file", &config.cert_file)?,
            client_key: read("key_file", &config.key_file)?,
        })
    } else {
        None
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// A client for one server at `url`, with the user, password and certificates.
fn single_client(
    config: &RedisConfig,
    url: &str,
    credentials: &Credentials,
) -> Result<redis::Client, RedisError> {
    let info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if !config.username.is_empty() {
        settings = settings.set_username(&config.username);
    }
    if let Some(password) = &credentials.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    match &credentials.tls {
        Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
        None => redis::Client::open(info),
    }
}

/// The primaries in `CLUSTER NODES`' answer: lines of `<id> <ip:port@bus>
/// <flags> …`, primaries flagged `master` (and not `fail`).
fn primaries_of(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            let primary = flags.contains(&"master") && !flags.iter().any(|f| f.starts_with("fail"));
            let host_port = address.split(['@', ',']).next()?;
            (primary && !host_port.starts_with(':')).then(|| host_port.to_string())
        })
        .collect()
}

/// The password from `password_file`, else the environment, else none.
fn read_password(config: &RedisConfig) -> Result<Option<String>, RedisStoreError> {
    if !config.password_file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(&config.password_file).map_err(|e| {
            RedisStoreError::Refused(format!(
                "cannot read storage.redis.password_file {}: {e}",
                config.password_file.display()
            ))
        })?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(std::env::var(REDIS_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty()))
}

async fn connect(
    config: &RedisConfig,
    credentials: &Credentials,
) -> Result<Connection, RedisError> {
    if config.cluster.is_empty() {
        let client = single_client(config, &config.url, credentials)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout.get()))
            .set_response_timeout(Some(config.response_timeout.get()))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            config.connect_timeout.get() * 2,
            client.get_connection_manager_with_config(manager),
        )
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        Ok(Connection::Single(connection))
    } else {
        let scheme = if config.cluster_tls {
            "rediss"
        } else {
            "redis"
        };
        let nodes: Vec<String> = config
            .cluster
            .iter()
            .map(|node| format!("{scheme}://{node}"))
            .collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(config.connect_timeout.get())
            .response_timeout(config.response_timeout.get())
            .retries(2);
        if !config.username.is_empty() {
            builder = builder.username(&config.username);
        }
        if let Some(password) = &credentials.password {
            builder = builder.password(password.clone());
        }
        if let Some(certificates) = &credentials.tls {
            builder = builder.certs(certificates.clone());
        }
        let client = builder.build()?;
        let connection = tokio::time::timeout(
            config.connect_timeout.get() * 2,
            client.get_async_connection(),
        )
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        Ok(Connection::Cluster(connection))
    }
}

#[cfg(test)]
mod tests {
    use super::primaries_of;

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,redis-2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 1426238318243 1426238318243 3 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
6ec2 :0@0 master,noaddr - 1426238316232 1426238316232 5 disconnected
";
        assert_eq!(primaries_of(nodes), ["127.0.0.1:30002", "127.0.0.1:30001"]);
    }
}
