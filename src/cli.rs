//! The command line: `serve`, `check-config` and `health`. Kept out of
//! main.rs so the exit-code rules are unit-testable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError, FlagOverrides};
use crate::server::Gantry;

/// Exit codes, documented in docs/operations.md.
pub mod exit {
    /// Clean stop, or a healthy server.
    pub const OK: i32 = 0;
    /// Start-up or runtime failure (data directory locked, port taken, …).
    pub const FAILURE: i32 = 1;
    /// Invalid configuration or command line; also `health` could not connect.
    pub const CONFIG: i32 = 2;
    /// `health`: the Check RPC itself failed (e.g. unknown service name).
    pub const HEALTH_RPC_FAILED: i32 = 3;
    /// `health`: the server answered, but not SERVING.
    pub const NOT_SERVING: i32 = 4;
    /// A second SIGTERM/SIGINT during shutdown: exit at once.
    pub const FORCED: i32 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "One gRPC control plane that a fleet of services shares"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (defaults: gRPC on 127.0.0.1:7070, metrics on 127.0.0.1:9464, sled in ./data).
    Serve(ServeArgs),
    /// Validate a configuration file without starting; exit 0 when valid, 2 when not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Ask a running gantry whether it is SERVING (exit 0) or not (non-zero).
    Health(HealthArgs),
    /// Show a rate-limit bucket (`gantry bucket api customer-1`) or the
    /// hottest keys of a limit (`gantry bucket api --hot 10`).
    Bucket(BucketArgs),
    /// The status page in the terminal, refreshed like `top`, read from the
    /// metrics port's /status.json (`gantry top`, `gantry top -n 1` for one frame).
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The metrics port [default: http://<GANTRY_METRICS_LISTEN> if set, else http://127.0.0.1:9464].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Time between frames.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The endpoints' window.
    #[arg(long, default_value = "1m", value_parser = ["1m", "5m", "1h"])]
    pub window: String,
    /// Frames to show before exiting (like top's -n); without it, until interrupted.
    #[arg(long = "iterations", short = 'n', value_name = "N")]
    pub iterations: Option<u64>,
    /// How long to wait for each snapshot.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// With https://: trust these CA certificates (PEM) instead of the public roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// With https://: the name the port's certificate must carry [default: the URL's host].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The port's bearer token (telemetry.metrics_token_file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file [env: GANTRY_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC address, e.g. 0.0.0.0:7070 [env: GANTRY_LISTEN; key: server.listen].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Prometheus /metrics address [env: GANTRY_METRICS_LISTEN; key: server.metrics_listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// sled data directory [env: GANTRY_DATA_DIR; key: storage.data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// OTLP/HTTP address (POST /v1/traces), e.g. 0.0.0.0:4318; "" turns it off
    /// [env: GANTRY_OTLP_HTTP_LISTEN; key: traces.otlp_http_listen].
    #[arg(long, value_name = "ADDR")]
    pub otlp_http_listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Service to ask about; empty means the whole server.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
}

/// How a command reaches a running gantry.
#[derive(Debug, Args, Clone)]
pub struct ConnectArgs {
    /// Server address [default: GANTRY_LISTEN if set, else 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Connect over TLS, trusting these CA certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// With mutual TLS: the client certificate (PEM) to present…
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// …and its key.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --addr].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// A file holding a bearer token to send (when health is not in auth.open_services).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BucketArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The limit.
    pub limit: String,
    /// The key whose bucket to show.
    #[arg(required_unless_present = "hot")]
    pub key: Option<String>,
    /// Instead: the N most spent buckets of the limit.
    #[arg(long, value_name = "N", conflicts_with = "key")]
    pub hot: Option<u32>,
}

/// The TLS settings of `gantry health`, read from the files it names.
fn health_tls(
    args: &ConnectArgs,
    target: &str,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(ca_file) = &args.ca_file else {
        return Ok(None);
    };
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read --{flag} {}: {e}", path.display()))
    };
    let host = target
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(target, |(host, _)| host)
        .trim_matches(['[', ']']);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca-file", ca_file)?))
        .domain_name(args.server_name.clone().unwrap_or_else(|| host.to_string()));
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        tls = tls.identity(Identity::from_pem(
            read("cert-file", cert)?,
            read("key-file", key)?,
        ));
    }
    Ok(Some(tls))
}

/// Loads the configuration for `serve` from the file named by the flag or
/// `GANTRY_CONFIG`, the given environment, and the flags.
pub fn load_config(
    args: &ServeArgs,
    env: &BTreeMap<String, String>,
) -> Result<config::Loaded, ConfigError> {
    let path = args
        .config
        .clone()
        .or_else(|| env.get(config::CONFIG_FILE_ENV).map(PathBuf::from));
    let text = match &path {
        Some(path) => Some(config::read_file(path)?),
        None => None,
    };
    let flags = FlagOverrides {
        listen: args.listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        data_dir: args.data_dir.clone(),
        otlp_http_listen: args.otlp_http_listen.clone(),
    };
    let file = path.as_deref().zip(text.as_deref());
    Config::load(file, env, &flags)
}

/// `gantry check-config FILE`.
pub fn check_config(file: &std::path::Path) -> i32 {
    match Config::check_file(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("gantry: invalid configuration: {e}");
            exit::CONFIG
        }
    }
}

/// Where `gantry health` connects when `--addr` is not given: the address the
/// server was told to listen on (unspecified IPs become loopback), else the default.
pub fn health_target(addr: Option<&str>, env: &BTreeMap<String, String>) -> String {
    let raw = addr
        .map(str::to_string)
        .or_else(|| env.get("GANTRY_LISTEN").cloned())
        .unwrap_or_else(|| "127.0.0.1:7070".to_string());
    reachable_url(&raw)
}

/// Where `gantry top` reads when `--url` is not given: the metrics address
/// the server was told to listen on (unspecified IPs become loopback), else
/// the default. Plain HTTP: a TLS port needs `--url https://…`.
pub fn top_target(url: Option<&str>, env: &BTreeMap<String, String>) -> String {
    match url {
        Some(url) => url.to_string(),
        None => reachable_url(
            env.get("GANTRY_METRICS_LISTEN")
                .map_or("127.0.0.1:9464", String::as_str),
        ),
    }
}

/// `http://` and the address, with an unspecified IP (what a server listens
/// on in a container) replaced by loopback, which a client can connect to.
fn reachable_url(raw: &str) -> String {
    let raw = raw
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    match raw.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() => {
            let loopback: std::net::IpAddr = if sa.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            format!("http://{}", std::net::SocketAddr::new(loopback, sa.port()))
        }
        _ => format!("http://{raw}"),
    }
}

/// `gantry health`: exit 0 only for SERVING.
/// A channel to a running gantry and the token to send, or the exit code
/// after saying what is wrong.
async fn connect(
    args: &ConnectArgs,
    env: &BTreeMap<String, String>,
) -> Result<
    (
        tonic::transport::Channel,
        Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ),
    i32,
> {
    let mut target = health_target(args.addr.as_deref(), env);
    let tls = health_tls(args, &target.replacen("http://", "https://", 1)).map_err(|e| {
        eprintln!("gantry: {e}");
        exit::CONFIG
    })?;
    if tls.is_some() {
        target = target.replacen("http://", "https://", 1);
    }
    let endpoint = tonic::transport::Endpoint::from_shared(target.clone())
        .map_err(|e| {
            eprintln!("gantry: invalid --addr {target:?}: {e}");
            exit::CONFIG
        })?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let endpoint = match tls {
        None => endpoint,
        Some(tls) => endpoint.tls_config(tls).map_err(|e| {
            eprintln!("gantry: unusable TLS settings: {e}");
            exit::CONFIG
        })?,
    };
    let token = match &args.token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                eprintln!("gantry: cannot read --token-file {}: {e}", path.display());
                exit::CONFIG
            })?;
            Some(format!("Bearer {}", token.trim()).parse().map_err(|_| {
                eprintln!("gantry: the --token-file token is not valid metadata");
                exit::CONFIG
            })?)
        }
    };
    let channel = endpoint.connect().await.map_err(|e| {
        eprintln!("gantry: cannot connect to {target}: {e}");
        exit::CONFIG
    })?;
    Ok((channel, token))
}

/// A request with the token, when there is one.
fn with_token<T>(
    message: T,
    token: &Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

pub async fn health(args: &HealthArgs, env: &BTreeMap<String, String>) -> i32 {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (channel, token) = match connect(&args.connect, env).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let request = with_token(
        HealthCheckRequest {
            service: args.service.clone(),
        },
        &token,
    );
    match HealthClient::new(channel).check(request).await {
        Ok(resp) => {
            let status = resp.into_inner().status();
            println!("{}", status.as_str_name());
            if status == ServingStatus::Serving {
                exit::OK
            } else {
                exit::NOT_SERVING
            }
        }
        Err(status) => {
            eprintln!(
                "gantry: health check failed: {:?}: {}",
                status.code(),
                status.message()
            );
            exit::HEALTH_RPC_FAILED
        }
    }
}

/// `gantry top`: frames until interrupted or `-n` frames were shown. Exit 0,
/// or FAILURE when the last snapshot could not be read.
pub async fn top(args: &TopArgs, env: &BTreeMap<String, String>) -> i32 {
    use std::io::{IsTerminal, Write};
    let url = top_target(args.url.as_deref(), env);
    let url: http::Uri = match url.parse() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("gantry: --url {url:?} is not a URL: {e}");
            return exit::CONFIG;
        }
    };
    let target = crate::top::fetch::Target {
        url,
        ca_file: args.ca_file.clone(),
        server_name: args.server_name.clone(),
        token_file: args.token_file.clone(),
        timeout: args.timeout,
    };
    let width = env
        .get("COLUMNS")
        .and_then(|c| c.parse().ok())
        .unwrap_or(120);
    let terminal = std::io::stdout().is_terminal();
    let mut before: Option<serde_json::Value> = None;
    let mut shown = 0u64;
    loop {
        let (frame, code) = match target.fetch(&args.window).await {
            Ok(now) => {
                let frame = crate::top::render(&now, before.as_ref(), width);
                before = Some(now);
                (frame, exit::OK)
            }
            Err(e) => (format!("gantry top: {e}\n"), exit::FAILURE),
        };
        let mut out = std::io::stdout().lock();
        // Clear and redraw on a terminal; frames one after another otherwise.
        let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
        if write!(out, "{clear}{frame}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return code; // stdout closed (a pipe to head): done
        }
        drop(out);
        shown += 1;
        if args.iterations.is_some_and(|n| shown >= n) {
            return code;
        }
        if !terminal {
            println!();
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// The sources `serve` assembled its configuration from, for hot reload.
pub fn config_source(
    args: &ServeArgs,
    env: &BTreeMap<String, String>,
) -> crate::reload::ConfigSource {
    crate::reload::ConfigSource {
        path: args
            .config
            .clone()
            .or_else(|| env.get(config::CONFIG_FILE_ENV).map(PathBuf::from)),
        env: env.clone(),
        flags: FlagOverrides {
            listen: args.listen.clone(),
            metrics_listen: args.metrics_listen.clone(),
            data_dir: args.data_dir.clone(),
            otlp_http_listen: args.otlp_http_listen.clone(),
        },
    }
}

/// `gantry serve` after the configuration is loaded: telemetry, build, serve, drain.
pub async fn serve(loaded: config::Loaded, source: crate::reload::ConfigSource) -> i32 {
    let config = loaded.config;
    let telemetry = match crate::telemetry::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("gantry: {e}");
            return exit::CONFIG;
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }

    // Register signal handlers before anything slow, so an early SIGTERM or
    // SIGHUP is neither lost nor fatal.
    let shutdown = CancellationToken::new();
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Err(e) = spawn_signal_handler(shutdown.clone(), reload.clone()) {
        tracing::error!(error = %e, "cannot install signal handlers");
        return exit::FAILURE;
    }

    let gantry = match Gantry::build(config, telemetry.exporting()).await {
        Ok(gantry) => {
            let gantry = gantry.with_config_source(source);
            forward_reloads(reload, gantry.reload_trigger());
            gantry
        }
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("gantry: cannot start: {e}");
            return exit::FAILURE;
        }
    };
    let code = match gantry.serve(shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("{e}");
            exit::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// Passes SIGHUP notifications on to the server's reloader.
fn forward_reloads(
    from: std::sync::Arc<tokio::sync::Notify>,
    to: std::sync::Arc<tokio::sync::Notify>,
) {
    tokio::spawn(async move {
        loop {
            from.notified().await;
            to.notify_one();
        }
    });
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once. SIGHUP: reload.
fn spawn_signal_handler(
    shutdown: CancellationToken,
    reload: std::sync::Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload.notify_one();
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        shutdown.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting at once");
        eprintln!("gantry: second {name}: exiting at once");
        std::process::exit(exit::FORCED);
    });
    Ok(())
}

/// Seconds with millisecond precision, as an operator reads them.
fn secs(d: Option<&prost_types::Duration>) -> String {
    d.map_or_else(
        || "-".to_string(),
        |d| format!("{:.3}s", d.seconds as f64 + f64::from(d.nanos) / 1e9),
    )
}

fn bucket_line(b: &crate::proto::gantry::v1::BucketState) -> String {
    format!(
        "{}/{}: {} of {} tokens, next token in {}, full in {}, {} waiting",
        b.limit,
        b.key,
        b.tokens,
        b.burst,
        secs(b.next_token.as_ref()),
        secs(b.full_in.as_ref()),
        b.waiters
    )
}

/// `gantry bucket LIMIT KEY` / `gantry bucket LIMIT --hot N`.
pub async fn bucket(args: &BucketArgs, env: &BTreeMap<String, String>) -> i32 {
    use crate::proto::gantry::v1 as pb;
    let (channel, token) = match connect(&args.connect, env).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
    let answer = match (&args.key, args.hot) {
        (_, Some(count)) => client
            .hot_keys(with_token(
                pb::HotKeysRequest {
                    limit: args.limit.clone(),
                    count,
                },
                &token,
            ))
            .await
            .map(|r| {
                let r = r.into_inner();
                for b in &r.buckets {
                    println!("{}", bucket_line(b));
                }
                println!(
                    "({} of {} buckets that owe tokens)",
                    r.buckets.len(),
                    r.scanned
                );
            }),
        (key, None) => client
            .inspect_bucket(with_token(
                pb::InspectBucketRequest {
                    limit: args.limit.clone(),
                    key: key.clone().unwrap_or_default(),
                },
                &token,
            ))
            .await
            .map(|r| println!("{}", bucket_line(&r.into_inner()))),
    };
    match answer {
        Ok(()) => exit::OK,
        Err(status) => {
            eprintln!("gantry: {:?}: {}", status.code(), status.message());
            exit::HEALTH_RPC_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_reads_the_metrics_address_the_server_listens_on() {
        let empty = BTreeMap::new();
        assert_eq!(top_target(None, &empty), "http://127.0.0.1:9464");
        let env: BTreeMap<String, String> = [(
            "GANTRY_METRICS_LISTEN".to_string(),
            "0.0.0.0:9100".to_string(),
        )]
        .into();
        assert_eq!(top_target(None, &env), "http://127.0.0.1:9100");
        assert_eq!(
            top_target(Some("https://gantry-0:9464"), &env),
            "https://gantry-0:9464"
        );
    }

    #[test]
    fn health_target_defaults_and_rewrites_unspecified_addresses() {
        let empty = BTreeMap::new();
        assert_eq!(health_target(None, &empty), "http://127.0.0.1:7070");
        assert_eq!(
            health_target(Some("10.1.2.3:9"), &empty),
            "http://10.1.2.3:9"
        );
        let env: BTreeMap<String, String> =
            [("GANTRY_LISTEN".to_string(), "0.0.0.0:8080".to_string())].into();
        assert_eq!(health_target(None, &env), "http://127.0.0.1:8080");
        assert_eq!(
            health_target(Some("[::]:7070"), &empty),
            "http://[::1]:7070"
        );
        assert_eq!(health_target(Some("http://h:1"), &empty), "http://h:1");
    }

    #[test]
    fn config_file_comes_from_flag_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1234\"\n").unwrap();
        let args = ServeArgs {
            config: None,
            listen: None,
            metrics_listen: None,
            data_dir: None,
            otlp_http_listen: None,
        };
        let env: BTreeMap<String, String> = [(
            config::CONFIG_FILE_ENV.to_string(),
            file.display().to_string(),
        )]
        .into();
        let loaded = load_config(&args, &env).unwrap();
        assert_eq!(loaded.config.server.listen.port(), 1234);

        let missing = ServeArgs {
            config: Some(dir.path().join("absent.toml")),
            ..args
        };
        let err = load_config(&missing, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }
}
