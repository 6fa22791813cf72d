//! Shared helpers: an in-process server on 127.0.0.1:0 with a temporary data
//! directory, a spawned `gantry` binary, and a tiny HTTP GET for /metrics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gantry::config::Config;
use gantry::server::{Gantry, ServeError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct TestServer {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// OTLP/HTTP (`traces.otlp_http_listen`), when on.
    pub otlp_http: Option<SocketAddr>,
    pub channel: Channel,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), ServeError>>,
    pub health: tonic_health::server::HealthReporter,
    pub dir: tempfile::TempDir,
}

/// A configuration on ephemeral ports with its data in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.traces.otlp_http_listen = "127.0.0.1:0".into();
    config.server.shutdown_grace = gantry::config::HumanDuration::from_secs(5);
    config.storage.data_dir = dir.join("data");
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::launch(config, dir).await
    }

    /// A server on `backend` (its Redis connected before this returns).
    pub async fn start_on(
        backend: &crate::backends::Backend,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        backend.configure(&mut config);
        adjust(&mut config);
        let server = Self::launch(config, dir).await;
        if backend.is_redis() {
            server.wait_serving("gantry.v1.RateLimiter").await;
        }
        server
    }

    /// [`Self::start_in`] on `backend`.
    pub async fn start_in_on(
        dir: &Path,
        backend: &crate::backends::Backend,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let server = Self::start_in(dir, |c| {
            backend.configure(c);
            adjust(c);
        })
        .await;
        if backend.is_redis() {
            server.wait_serving("gantry.v1.RateLimiter").await;
        }
        server
    }

    /// Waits (up to 10 s) until health reports `service` SERVING.
    pub async fn wait_serving(&self, service: &str) {
        wait_serving(&self.channel, service).await
    }

    async fn launch(config: Config, dir: tempfile::TempDir) -> Self {
        let tls = config.server.tls.enabled();
        let gantry = Gantry::build(config, false).await.unwrap();
        let grpc = gantry.grpc_addr();
        let metrics = gantry.metrics_addr();
        let otlp_http = gantry.otlp_http_addr();
        let health = gantry.health();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(gantry.serve(shutdown.clone()));
        // With TLS on, the test makes its own channels; this one stays unused.
        let channel = if tls {
            tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect_lazy()
        } else {
            connect(grpc).await
        };
        Self {
            grpc,
            metrics,
            otlp_http,
            channel,
            shutdown,
            handle,
            health,
            dir,
        }
    }

    /// Cancels and waits for the server to finish draining.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.handle.await.unwrap()
    }

    /// A server on a data directory the test keeps, for restarts on the same data.
    pub async fn start_in(dir: &Path, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(dir);
        adjust(&mut config);
        // The data lives in `dir`, which outlives this server; its own
        // temporary directory stays empty.
        Self::launch(config, tempfile::tempdir().unwrap()).await
    }
}

/// Waits (up to 10 s) until health on `channel` reports `service` SERVING.
pub async fn wait_serving(channel: &Channel, service: &str) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok()
            == Some(&(tonic_health::pb::health_check_response::ServingStatus::Serving as i32))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never became SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a call failed with `code` and a message containing every one of `words`.
pub fn assert_status(status: tonic::Status, code: tonic::Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(
            status.message().contains(w),
            "{w:?} in {}",
            status.message()
        );
    }
}

pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// GET over HTTP/1.1 without a client library: returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with_headers(addr, path).await;
    (status, body)
}

/// Status, header block (lowercase names) and body of an HTTP/1.1 GET.
pub async fn http_get_with_headers(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The value of one exact series line in Prometheus text, e.g. `name{labels}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A `gantry` binary run as a child process, its stderr collected line by line.
pub struct GantryProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// Every port gantry opens, on an ephemeral port (tests run side by side).
const EPHEMERAL: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--otlp-http-listen",
    "127.0.0.1:0",
];

/// `gantry serve` on ephemeral ports, then `extra` (other flags than these).
pub fn serve_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve"];
    args.extend_from_slice(&EPHEMERAL);
    args.extend_from_slice(extra);
    args
}

pub fn gantry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gantry")
}

impl GantryProcess {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> Self {
        let mut command = Command::new(gantry_bin());
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A clean environment of GANTRY_* variables: only what the test sets.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("GANTRY_")) {
            command.env_remove(key);
        }
        command.env("GANTRY_TELEMETRY_LOG_FORMAT", "json");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `gantry serve --config gantry.toml` in `cwd`, on ephemeral ports.
    pub fn serve_config(cwd: &Path, envs: &[(&str, &str)]) -> Self {
        Self::spawn(&serve_args(&["--config", "gantry.toml"]), envs, cwd)
    }

    /// Waits for a stderr line containing `needle`; panics with what was seen on timeout.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for "gantry listening" and returns the gRPC and metrics addresses.
    pub fn wait_until_listening(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_line("gantry listening", Duration::from_secs(30));
        (
            json_field(&line, "grpc").parse().unwrap(),
            json_field(&line, "metrics").parse().unwrap(),
        )
    }

    pub fn signal(&self, name: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let signal = match name {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "KILL" => Signal::KILL,
            "HUP" => Signal::HUP,
            other => panic!("unsupported signal {other}"),
        };
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        kill_process(pid, signal).unwrap();
    }

    /// Waits for the exit code, killing the child if it overstays.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "gantry did not exit within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for GantryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A string field of a flat JSON log line (enough for our own logs).
pub fn json_field(line: &str, field: &str) -> String {
    let key = format!("\"{field}\":\"");
    let start = line
        .find(&key)
        .map(|i| i + key.len())
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    let rest = &line[start..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_gantry(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> (i32, String, String) {
    let mut command = Command::new(gantry_bin());
    command.args(args).current_dir(cwd).stdin(Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("GANTRY_")) {
        command.env_remove(key);
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
