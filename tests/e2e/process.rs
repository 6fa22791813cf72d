//! The `gantry` binary as an operator runs it: defaults, configuration
//! precedence and errors, exit codes, signals, the locked data directory.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{GantryProcess, connect, http_get, run_gantry, serve_args};

#[test]
fn serve_uses_data_in_the_working_directory_and_stops_cleanly_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gantry = GantryProcess::spawn(&serve_args(&[]), &[], cwd.path());
    let (grpc, metrics) = gantry.wait_until_listening();
    assert!(
        cwd.path().join("data").is_dir(),
        "sled data was not created in ./data"
    );

    let (code, stdout, _) = run_gantry(&["health", "--addr", &grpc.to_string()], &[], cwd.path());
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "SERVING");
    let (status, text) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(http_get(metrics, "/metrics"));
    assert_eq!(status, 200);
    assert!(text.contains("grpc_server_handled_total"), "{text}");

    gantry.signal("TERM");
    assert_eq!(
        gantry.wait_exit(Duration::from_secs(15)),
        0,
        "{}",
        gantry.stderr_text()
    );
    let log = gantry.stderr_text();
    assert!(log.contains("store flushed"), "{log}");
}

#[test]
fn sigint_also_stops_cleanly() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gantry = GantryProcess::spawn(&serve_args(&[]), &[], cwd.path());
    gantry.wait_until_listening();
    gantry.signal("INT");
    assert_eq!(
        gantry.wait_exit(Duration::from_secs(15)),
        0,
        "{}",
        gantry.stderr_text()
    );
}

#[test]
fn flags_beat_environment_which_beats_the_file() {
    let cwd = tempfile::tempdir().unwrap();
    let file = cwd.path().join("gantry.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\nmetrics_listen = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"from-file\"\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    // The file's listen port 1 is privileged; env and flag must win over it.
    let mut gantry = GantryProcess::spawn(
        &[
            "serve",
            "--config",
            &file_arg,
            "--listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("GANTRY_LISTEN", "127.0.0.1:2"),
            ("GANTRY_DATA_DIR", "from-env"),
        ],
        cwd.path(),
    );
    let (grpc, _) = gantry.wait_until_listening();
    assert_ne!(grpc.port(), 1);
    assert_ne!(grpc.port(), 2);
    assert!(
        cwd.path().join("from-env").is_dir(),
        "environment should beat the file"
    );
    assert!(!cwd.path().join("from-file").exists());
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn the_config_file_can_come_from_gantry_config() {
    let cwd = tempfile::tempdir().unwrap();
    let file = cwd.path().join("g.toml");
    std::fs::write(&file, "[storage]\ndata_dir = \"via-env-file\"\n").unwrap();
    let file_env = file.display().to_string();
    let mut gantry = GantryProcess::spawn(
        &serve_args(&[]),
        &[("GANTRY_CONFIG", &file_env)],
        cwd.path(),
    );
    gantry.wait_until_listening();
    assert!(cwd.path().join("via-env-file").is_dir());
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

/// Arguments, environment, and the texts the error must contain.
type ConfigCase<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn invalid_configuration_exits_2_naming_key_and_value() {
    let cwd = tempfile::tempdir().unwrap();
    let bad_file = cwd.path().join("bad.toml");
    std::fs::write(&bad_file, "[server]\nmax_message_bytes = 12\n").unwrap();
    let unknown_file = cwd.path().join("unknown.toml");
    std::fs::write(&unknown_file, "[cache]\nmax_entries = 5\n").unwrap();
    let bad = bad_file.display().to_string();
    let unknown = unknown_file.display().to_string();

    let cases: Vec<ConfigCase> = vec![
        (
            vec!["serve", "--config", &bad],
            vec![],
            vec!["server.max_message_bytes", "12", "bad.toml"],
        ),
        (
            vec!["serve", "--config", &unknown],
            vec![],
            vec!["max_entries", "unknown.toml"],
        ),
        (
            vec!["serve", "--listen", "localhost"],
            vec![],
            vec!["server.listen", "localhost", "--listen"],
        ),
        (
            vec!["serve"],
            vec![("GANTRY_SERVER_MAX_INFLIGHT", "lots")],
            vec!["server.max_inflight", "lots", "GANTRY_SERVER_MAX_INFLIGHT"],
        ),
        (
            vec!["serve"],
            vec![("GANTRY_TELEMETRY_LOG_FORMAT", "xml")],
            vec!["telemetry.log_format", "xml"],
        ),
        (
            vec!["serve", "--config", "/nonexistent/g.toml"],
            vec![],
            vec!["/nonexistent/g.toml"],
        ),
    ];
    for (args, envs, needles) in cases {
        let (code, _, stderr) = run_gantry(&args, &envs, cwd.path());
        assert_eq!(code, 2, "{args:?} {envs:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
    }
    assert!(
        !cwd.path().join("data").exists(),
        "a refused start must not create the data directory"
    );
}

#[test]
fn check_config_validates_without_starting() {
    let cwd = tempfile::tempdir().unwrap();
    let good = cwd.path().join("good.toml");
    std::fs::write(
        &good,
        "[server]\nlisten = \"0.0.0.0:7070\"\nshutdown_grace = \"20s\"\n[telemetry]\nlog_format = \"json\"\n",
    )
    .unwrap();
    let empty = cwd.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let bad = cwd.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nshutdown_grace = \"soon\"\n").unwrap();

    let (code, stdout, _) = run_gantry(
        &["check-config", &good.display().to_string()],
        &[],
        cwd.path(),
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("ok"));
    let (code, _, _) = run_gantry(
        &["check-config", &empty.display().to_string()],
        &[],
        cwd.path(),
    );
    assert_eq!(code, 0, "an empty file is a valid configuration");
    let (code, _, stderr) = run_gantry(
        &["check-config", &bad.display().to_string()],
        &[],
        cwd.path(),
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("server.shutdown_grace") && stderr.contains("soon"),
        "{stderr}"
    );
    let (code, _, _) = run_gantry(&["check-config", "/nonexistent.toml"], &[], cwd.path());
    assert_eq!(code, 2);
    assert!(
        !cwd.path().join("data").exists(),
        "check-config must not open the store"
    );
}

#[test]
fn a_locked_data_directory_is_a_clear_error_not_a_panic() {
    let cwd = tempfile::tempdir().unwrap();
    let mut first = GantryProcess::spawn(&serve_args(&[]), &[], cwd.path());
    first.wait_until_listening();

    let (code, _, stderr) = run_gantry(&serve_args(&[]), &[], cwd.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run_gantry(
        &[
            "serve",
            "--listen",
            &addr,
            "--metrics-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
        ],
        &[],
        cwd.path(),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("server.listen"),
        "{stderr}"
    );
}

#[test]
fn gantry_health_fails_without_a_server() {
    let cwd = tempfile::tempdir().unwrap();
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, stderr) = run_gantry(
        &[
            "health",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1s",
        ],
        &[],
        cwd.path(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

type Watch = tonic::codec::Streaming<tonic_health::pb::HealthCheckResponse>;

/// Starts gantry (grace 60 s), opens a health watch — a call that never ends
/// by itself and so holds the drain open — sends SIGTERM, and checks that the
/// watcher sees NOT_SERVING while the process keeps draining.
async fn draining_gantry(
    cwd: &std::path::Path,
) -> (GantryProcess, tonic::transport::Channel, Watch) {
    let mut gantry = GantryProcess::spawn(
        &serve_args(&[]),
        &[("GANTRY_SERVER_SHUTDOWN_GRACE", "60s")],
        cwd,
    );
    let (grpc, _) = gantry.wait_until_listening();
    let channel = connect(grpc).await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    gantry.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gantry.child.try_wait().unwrap().is_none(),
        "exited before the open call ended"
    );
    (gantry, channel, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_call_finish_and_a_second_signal_exits_at_once() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut gantry, _channel, _watch) = draining_gantry(cwd.path()).await;
    gantry.signal("TERM");
    let code = gantry.wait_exit(Duration::from_secs(5));
    assert_eq!(code, 130, "{}", gantry.stderr_text());
    assert!(
        gantry.stderr_text().contains("second"),
        "{}",
        gantry.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_the_open_call_then_exits_zero() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut gantry, channel, watch) = draining_gantry(cwd.path()).await;
    // The caller finishes its call: the server exits well before the 60 s grace.
    drop(watch);
    drop(channel);
    assert_eq!(
        gantry.wait_exit(Duration::from_secs(10)),
        0,
        "{}",
        gantry.stderr_text()
    );
}

/// A minimal OTLP trace receiver that hands every export to the test.
struct FakeCollector {
    tx: tokio::sync::mpsc::UnboundedSender<
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    >,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for FakeCollector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let _ = self.tx.send(request.into_inner());
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_spans_are_exported_over_otlp_continuing_the_callers_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FakeCollector { tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let cwd = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_addr}");
    let mut gantry = GantryProcess::spawn(
        &serve_args(&[]),
        &[
            ("GANTRY_TELEMETRY_OTLP_ENDPOINT", &endpoint),
            ("GANTRY_TELEMETRY_SERVICE_NAME", "gantry-under-test"),
        ],
        cwd.path(),
    );
    let (grpc, _) = gantry.wait_until_listening();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    HealthClient::new(connect(grpc).await)
        .check(request)
        .await
        .unwrap();

    gantry.signal("TERM");
    assert_eq!(
        gantry.wait_exit(Duration::from_secs(15)),
        0,
        "{}",
        gantry.stderr_text()
    );

    let mut found = None;
    while found.is_none() {
        let export = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no span export reached the collector")
            .unwrap();
        for resource_spans in export.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value);
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    if span.name == "grpc.health.v1.Health/Check" {
                        found = Some((service.clone(), span));
                    }
                }
            }
        }
    }
    let (service, span) = found.unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&span.trace_id),
        trace_id,
        "the caller's trace is continued"
    );
    assert_eq!(hex(&span.parent_span_id), parent_id);
    assert_eq!(
        service,
        Some(
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                "gantry-under-test".into()
            )
        )
    );
    assert!(
        span.attributes
            .iter()
            .any(|kv| kv.key == "rpc.grpc.status_code"),
        "{:?}",
        span.attributes
    );
}
