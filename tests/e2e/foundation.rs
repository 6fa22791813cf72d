//! The foundation over real gRPC, in process: health, reflection,
//! limits, gzip, metrics and graceful shutdown.

use std::time::Duration;

use gantry::proto::gantry::v1 as pb;
use gantry::server::{ENVOY_RLS, GANTRY_SERVICES, OTLP_TRACES};
use gantry::store::Domain;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{TestServer, connect, http_get, metric_value};

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status())
}

#[tokio::test]
async fn health_answers_for_the_server_and_every_gantry_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel.clone());
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving
    );
    for name in GANTRY_SERVICES.into_iter().chain([ENVOY_RLS, OTLP_TRACES]) {
        assert_eq!(
            check(&mut health, name).await.unwrap(),
            ServingStatus::Serving,
            "{name}"
        );
    }
    let unknown = check(&mut health, "gantry.v1.Nope").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await.unwrap();
}

/// Lists the services through one version of the reflection protocol (the
/// two versions have the same shape in different packages).
macro_rules! reflection_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new($channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.next().await.unwrap().unwrap();
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection reply {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let server = TestServer::start().await;
    let mut expected: Vec<String> = GANTRY_SERVICES.iter().map(|s| s.to_string()).collect();
    expected.push("grpc.health.v1.Health".to_string());
    expected.push("grpc.reflection.v1.ServerReflection".to_string());
    expected.push("grpc.reflection.v1alpha.ServerReflection".to_string());
    expected.push(OTLP_TRACES.to_string());
    expected.push("envoy.service.ratelimit.v3.RateLimitService".to_string());
    for listed in [
        reflection_services!(v1, server.channel.clone()),
        reflection_services!(v1alpha, server.channel.clone()),
    ] {
        for name in &expected {
            assert!(listed.contains(name), "{name} missing from {listed:?}");
        }
        // Only what answers is listed: not OTLP's logs or metrics receivers.
        assert_eq!(listed.len(), expected.len(), "{listed:?}");
        assert!(
            !listed
                .iter()
                .any(|s| s.contains("LogsService") || s.contains("MetricsService")),
            "{listed:?}"
        );
    }
    server.stop().await.unwrap();
}

/// Envoy's service is described whole, so grpcurl and friends can call it.
#[tokio::test]
async fn reflection_describes_envoys_rate_limit_service() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let client = ServerReflectionClient::new(server.channel.clone());
    let files = |request: MessageRequest| {
        let mut client = client.clone();
        async move {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let reply = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner()
                .next()
                .await
                .unwrap()
                .unwrap();
            let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response
            else {
                panic!("unexpected reflection reply {reply:?}");
            };
            files
                .file_descriptor_proto
                .iter()
                .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let served = files(MessageRequest::FileContainingSymbol(
        "envoy.service.ratelimit.v3.RateLimitService".into(),
    ))
    .await;
    let rls = served
        .iter()
        .find(|f| f.name() == "envoy/service/ratelimit/v3/rls.proto")
        .expect("rls.proto is served");
    let method = &rls.service[0].method[0];
    assert_eq!(
        (method.name(), method.input_type()),
        (
            "ShouldRateLimit",
            ".envoy.service.ratelimit.v3.RateLimitRequest"
        )
    );
    // Its imports are served too, so a client can resolve every type.
    for import in &rls.dependency {
        let found = files(MessageRequest::FileByFilename(import.clone())).await;
        assert!(
            found.iter().any(|f| f.name() == import),
            "{import} not served"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_naming_the_limit() {
    let server = TestServer::start_with(|c| c.server.max_message_bytes = 2048).await;
    let mut cache = pb::cache_client::CacheClient::new(server.channel.clone());
    let request = pb::PutRequest {
        namespace: "ns".into(),
        key: "k".into(),
        value: vec![7u8; 8192].into(),
        ..Default::default()
    };
    let status = cache.put(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_message_bytes"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("2048"), "{}", status.message());

    // Under the limit the same call reaches the service and is stored.
    let small = pb::PutRequest {
        namespace: "ns".into(),
        key: "k".into(),
        value: vec![7u8; 512].into(),
        ..Default::default()
    };
    assert!(cache.put(small).await.unwrap().into_inner().stored);

    let (_, metrics) = http_get(server.metrics, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "grpc_server_handled_total{grpc_service=\"gantry.v1.Cache\",grpc_method=\"Put\",grpc_code=\"ResourceExhausted\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn gzip_is_accepted_and_offered() {
    let server = TestServer::start_with(|c| c.server.max_message_bytes = 4096).await;
    // A compressed request whose raw size is under the limit gets through the decoder.
    let mut health = HealthClient::new(server.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "the server answers gzip to a client that accepts it"
    );
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);

    // A highly compressible value far over the limit is still refused once decompressed.
    let mut cache = pb::cache_client::CacheClient::new(server.channel.clone())
        .send_compressed(CompressionEncoding::Gzip);
    let status = cache
        .put(pb::PutRequest {
            namespace: "ns".into(),
            key: "k".into(),
            value: vec![0u8; 64 * 1024].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel.clone());
    for _ in 0..3 {
        check(&mut health, "").await.unwrap();
    }
    check(&mut health, "nope").await.unwrap_err();
    let mut leases = pb::leases_client::LeasesClient::new(server.channel.clone());
    leases
        .pool_status(pb::PoolStatusRequest {
            pool: "no-such-pool".into(),
        })
        .await
        .unwrap_err();

    let (status, text) = http_get(server.metrics, "/metrics").await;
    assert_eq!(status, 200);
    let series = |method: &str, code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
        )
    };
    assert_eq!(
        metric_value(&text, &series("Check", "OK")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &series("Check", "NotFound")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "grpc_server_started_total{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "grpc_server_handled_total{grpc_service=\"gantry.v1.Leases\",grpc_method=\"PoolStatus\",grpc_code=\"NotFound\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "grpc_server_handling_seconds_count{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"}"
        ),
        Some(4.0)
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(text.contains("process_open_fds"));

    let (status, _) = http_get(server.metrics, "/nope").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_calls_and_flushes_the_store() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.server.shutdown_grace = gantry::config::HumanDuration::from_secs(10);
    let gantry = gantry::server::Gantry::build(config.clone(), false)
        .await
        .unwrap();
    let addr = gantry.grpc_addr();
    let store = gantry.store();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(gantry.serve(shutdown.clone()));
    let channel = connect(addr).await;

    // State written before the shutdown must be on disk afterwards.
    store
        .tree(Domain::Meta)
        .insert(b"written-before-shutdown", b"yes")
        .unwrap();

    // A health watcher sees the flip to NOT_SERVING.
    let mut watcher = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watcher.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    // An in-flight bidirectional call, opened before the signal.
    let (tx, rx) = tokio::sync::mpsc::channel::<ServerReflectionRequest>(4);
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let mut replies = reflection
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    tx.send(list.clone()).await.unwrap();
    assert!(replies.next().await.unwrap().is_ok());

    shutdown.cancel();
    let flipped = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!(
        flipped.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    drop(watcher);

    // New connections are refused while the old call is still being served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted after shutdown began"
    );

    tx.send(list).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap();
    assert!(reply.unwrap().is_ok(), "the in-flight call was cut off");
    drop(tx);
    assert!(replies.next().await.is_none());
    drop(replies);
    drop(reflection);
    drop(channel);

    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(8), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));

    drop(store);
    let reopened = gantry::store::open(&config.storage).unwrap();
    assert_eq!(
        reopened
            .tree(Domain::Meta)
            .get(b"written-before-shutdown")
            .unwrap(),
        Some(b"yes".to_vec())
    );
}

#[tokio::test]
async fn gantry_health_exits_zero_when_serving_and_four_when_not() {
    use gantry::cli::{HealthArgs, exit, health};
    let server = TestServer::start().await;
    let env = std::collections::BTreeMap::new();
    let args = |service: &str| HealthArgs {
        connect: gantry::cli::ConnectArgs {
            addr: Some(server.grpc.to_string()),
            timeout: Duration::from_secs(3),
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            token_file: None,
        },
        service: service.to_string(),
    };
    assert_eq!(health(&args(""), &env).await, exit::OK);
    assert_eq!(health(&args("gantry.v1.Cache"), &env).await, exit::OK);
    server
        .health
        .set_service_status("gantry.v1.Cache", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        health(&args("gantry.v1.Cache"), &env).await,
        exit::NOT_SERVING
    );
    assert_eq!(
        health(&args("gantry.v1.Unknown"), &env).await,
        exit::HEALTH_RPC_FAILED
    );
    server.stop().await.unwrap();
}
