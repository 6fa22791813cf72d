//! TLS, mutual TLS, tokens and grants over real connections, on both
//! transports: who gets in, what each caller may touch, rotation without a
//! restart, and the metrics port behind TLS and a token. Certificates are
//! made in the test (tests/e2e/certs.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry::config::{Config, HumanDuration, LimitConfig, LimitScopeConfig, Transport};
use gantry::leases::config::PoolConfig;
use gantry::proto::gantry::v1 as pb;
use pb::cache_client::CacheClient;
use pb::leases_client::LeasesClient;
use pb::rate_limiter_client::RateLimiterClient;
use pb::traces_client::TracesClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;

use crate::certs::{Ca, Pair};
use crate::common::{GantryProcess, TestServer, assert_status, http_get, metric_value};

const CHECKOUT_TOKEN: &str = "checkout-token-6b1f";
const ORDERS_TOKEN: &str = "orders-token-93ac";

pub fn sha256_hex(token: &str) -> String {
    gantry::auth::sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn limit(name: &str) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        rate: 100,
        period: HumanDuration::from_secs(1),
        burst: Some(100),
        scope: LimitScopeConfig::PerKey,
        overrides: vec![],
    }
}

/// Tokens for `checkout` and `orders`; grants: checkout may use its own
/// limits, namespace and span ingestion; orders its own namespace and pool;
/// the certificate identity `spiffe://fleet/checkout` what checkout may.
fn write_auth(dir: &Path) -> (PathBuf, PathBuf) {
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nidentity = \"checkout\"\nsha256 = \"{}\"\n\n[[token]]\nidentity = \"orders\"\nsha256 = \"{}\"\n",
            sha256_hex(CHECKOUT_TOKEN),
            sha256_hex(ORDERS_TOKEN)
        ),
    )
    .unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[grant]]
identities = ["checkout", "spiffe://fleet/checkout"]
ratelimit = ["checkout.*"]
cache = ["checkout"]
traces = ["ingest"]

[[grant]]
identities = ["orders"]
ratelimit = ["orders.*"]
cache = ["orders"]
leases = ["orders-db"]
"#,
    )
    .unwrap();
    (tokens, policy)
}

/// TLS with `server` on `transport`, optionally mutual with `client_ca`,
/// tokens and grants from [`write_auth`].
fn secure(
    config: &mut Config,
    transport: Transport,
    server: &Pair,
    client_ca: Option<&Path>,
    dir: &Path,
) {
    config.server.transport = transport;
    config.server.tls.cert_file = server.cert_file.clone();
    config.server.tls.key_file = server.key_file.clone();
    config.server.tls.reload_interval = HumanDuration(Duration::from_millis(200));
    if let Some(ca) = client_ca {
        config.server.tls.client_ca_file = ca.to_path_buf();
    }
    let (tokens, policy) = write_auth(dir);
    config.auth.tokens_file = tokens;
    config.auth.policy_file = policy;
    config.auth.reload_interval = HumanDuration(Duration::from_millis(200));
    config.ratelimit.limits = vec![limit("checkout.pay"), limit("orders.pay")];
    config.leases.pools = vec![PoolConfig {
        name: "orders-db".into(),
        capacity: 4,
        max_per_holder: None,
        default_ttl: HumanDuration::from_secs(30),
        max_ttl: HumanDuration::from_secs(120),
    }];
}

/// A TLS channel trusting `ca`, presenting `client` when given.
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn get(namespace: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: namespace.into(),
        key: "k".into(),
    }
}

fn put(namespace: &str, value: &[u8]) -> pb::PutRequest {
    pb::PutRequest {
        namespace: namespace.into(),
        key: "k".into(),
        value: value.to_vec().into(),
        ..Default::default()
    }
}

fn acquire(limit: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        limit: limit.into(),
        key: "user-1".into(),
        tokens: 1,
        ..Default::default()
    }
}

/// Whether a call on this channel gets through at all (health is open to
/// anyone, so only the connection can refuse it).
async fn reaches(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn tls_and_tokens_decide_who_gets_in_and_what_they_touch_on_both_transports() {
    for transport in [Transport::H2, Transport::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("gantry test CA");
        let server_pair = ca.server(dir.path(), "server");
        let server =
            TestServer::start_with(|c| secure(c, transport, &server_pair, None, dir.path())).await;
        let ctx = format!("{transport:?}");

        // Plaintext to a TLS port, and TLS trusting another CA: no call gets through.
        let plain = Endpoint::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        assert!(reaches(plain).await.is_err(), "{ctx}: plaintext got in");
        let stranger = Ca::new("someone else");
        let wrong_ca = tls_channel(server.grpc, &stranger.pem(), None).await;
        if let Ok(channel) = wrong_ca {
            assert!(reaches(channel).await.is_err(), "{ctx}: wrong CA got in");
        }

        let channel = tls_channel(server.grpc, &ca.pem(), None).await.unwrap();
        reaches(channel.clone()).await.unwrap();
        let mut cache = CacheClient::new(channel.clone());

        let missing = cache.get(get("checkout")).await.unwrap_err();
        assert_status(missing, Code::Unauthenticated, &["missing credentials"]);
        let wrong = cache
            .get(with_token(get("checkout"), "not-a-token"))
            .await
            .unwrap_err();
        assert_status(wrong, Code::Unauthenticated, &["not valid"]);
        let mut malformed = tonic::Request::new(get("checkout"));
        malformed
            .metadata_mut()
            .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
        let malformed = cache.get(malformed).await.unwrap_err();
        assert_status(malformed, Code::Unauthenticated, &["Bearer"]);

        // Each identity reaches its own namespace; checkout cannot read orders'.
        cache
            .put(with_token(
                put("orders", b"orders-secret-value"),
                ORDERS_TOKEN,
            ))
            .await
            .unwrap();
        cache
            .put(with_token(put("checkout", b"mine"), CHECKOUT_TOKEN))
            .await
            .unwrap();
        let own = cache
            .get(with_token(get("checkout"), CHECKOUT_TOKEN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.value.as_ref(), b"mine", "{ctx}");
        let denied = cache
            .get(with_token(get("orders"), CHECKOUT_TOKEN))
            .await
            .unwrap_err();
        assert!(!denied.message().contains("orders-secret-value"));
        assert_status(
            denied,
            Code::PermissionDenied,
            &["\"checkout\"", "cache namespace \"orders\""],
        );
        let batch = cache
            .get_many(with_token(
                pb::GetManyRequest {
                    items: vec![get("checkout"), get("orders")],
                },
                CHECKOUT_TOKEN,
            ))
            .await
            .unwrap_err();
        assert_status(batch, Code::PermissionDenied, &["\"orders\""]);
        let watch = cache
            .watch(with_token(
                pb::WatchRequest {
                    namespace: "orders".into(),
                    ..Default::default()
                },
                CHECKOUT_TOKEN,
            ))
            .await
            .unwrap_err();
        assert_eq!(watch.code(), Code::PermissionDenied, "{ctx}");
        let stats = cache
            .stats(with_token(pb::CacheStatsRequest::default(), CHECKOUT_TOKEN))
            .await
            .unwrap()
            .into_inner();
        let seen: Vec<&str> = stats
            .namespaces
            .iter()
            .map(|n| n.namespace.as_str())
            .collect();
        assert_eq!(
            seen,
            ["checkout"],
            "{ctx}: Stats shows only granted namespaces"
        );

        // Rate limits: the direct path (immediate Acquire, AcquireBatch)
        // and the listing answer as the grant says.
        let mut limits = RateLimiterClient::new(channel.clone());
        let granted = limits
            .acquire(with_token(acquire("checkout.pay"), CHECKOUT_TOKEN))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.allowed, "{ctx}");
        let denied = limits
            .acquire(with_token(acquire("orders.pay"), CHECKOUT_TOKEN))
            .await
            .unwrap_err();
        assert_status(
            denied,
            Code::PermissionDenied,
            &["rate limit \"orders.pay\""],
        );
        // An unknown limit outside the grant is refused the same way: a
        // refusal says nothing about what exists.
        let unknown = limits
            .acquire(with_token(acquire("payroll.run"), CHECKOUT_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::PermissionDenied, "{ctx}");
        let batch = limits
            .acquire_batch(with_token(
                pb::AcquireBatchRequest {
                    requests: vec![acquire("checkout.pay"), acquire("orders.pay")],
                    all_or_nothing: true,
                },
                CHECKOUT_TOKEN,
            ))
            .await
            .unwrap_err();
        assert_eq!(batch.code(), Code::PermissionDenied, "{ctx}");
        let listed = limits
            .list_limits(with_token(pb::ListLimitsRequest {}, CHECKOUT_TOKEN))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = listed.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["checkout.pay"], "{ctx}");

        // Services outside a grant, and read access that was not granted.
        let mut leases = LeasesClient::new(channel.clone());
        let pool = || pb::AcquireLeaseRequest {
            pool: "orders-db".into(),
            holder: "h".into(),
            count: 1,
            ..Default::default()
        };
        let refused = leases
            .acquire(with_token(pool(), CHECKOUT_TOKEN))
            .await
            .unwrap_err();
        assert_status(refused, Code::PermissionDenied, &["gantry.v1.Leases"]);
        let lease = leases
            .acquire(with_token(pool(), ORDERS_TOKEN))
            .await
            .unwrap()
            .into_inner();
        assert!(lease.granted, "{ctx}");
        let read = TracesClient::new(channel.clone())
            .get_trace(with_token(
                pb::GetTraceRequest {
                    trace_id: vec![1; 16].into(),
                },
                CHECKOUT_TOKEN,
            ))
            .await
            .unwrap_err();
        assert_status(read, Code::PermissionDenied, &["traces:read"]);

        let (_, text) = http_get(server.metrics, "/metrics").await;
        assert!(
            metric_value(&text, "gantry_auth_refused_total{reason=\"denied\"}")
                .is_some_and(|v| v >= 8.0),
            "{ctx}: {text}"
        );
        assert!(
            metric_value(&text, "gantry_auth_refused_total{reason=\"missing\"}") == Some(1.0),
            "{ctx}"
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_valid_certificate_and_grants_by_certificate() {
    for transport in [Transport::H2, Transport::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("fleet CA");
        let server_pair = ca.server(dir.path(), "server");
        let ca_file = ca.write(dir.path(), "ca.crt");
        let server = TestServer::start_with(|c| {
            secure(c, transport, &server_pair, Some(&ca_file), dir.path())
        })
        .await;
        let ctx = format!("{transport:?}");

        let stranger = Ca::new("not the fleet");
        let refused: [(&str, Option<Pair>); 3] = [
            ("no client certificate", None),
            (
                "an expired certificate",
                Some(ca.expired_client(dir.path(), "expired", "spiffe://fleet/checkout")),
            ),
            (
                "a certificate from another CA",
                Some(stranger.client(dir.path(), "stranger", "spiffe://fleet/checkout")),
            ),
        ];
        for (what, client) in &refused {
            let got_in = match tls_channel(server.grpc, &ca.pem(), client.as_ref()).await {
                Ok(channel) => reaches(channel).await.is_ok(),
                Err(_) => false,
            };
            assert!(!got_in, "{ctx}: {what} got in");
        }

        let client = ca.client(dir.path(), "checkout", "spiffe://fleet/checkout");
        let channel = tls_channel(server.grpc, &ca.pem(), Some(&client))
            .await
            .unwrap();
        let mut cache = CacheClient::new(channel.clone());
        // The certificate is the credential: no token needed.
        cache.put(put("checkout", b"by certificate")).await.unwrap();
        let denied = cache.get(get("orders")).await.unwrap_err();
        assert_status(
            denied,
            Code::PermissionDenied,
            &["spiffe://fleet/checkout", "\"orders\""],
        );
        let mut limits = RateLimiterClient::new(channel);
        assert!(
            limits
                .acquire(acquire("checkout.pay"))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        let denied = limits.acquire(acquire("orders.pay")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{ctx}");

        let (_, text) = http_get(server.metrics, "/metrics").await;
        assert!(
            metric_value(&text, "gantry_tls_handshake_failures_total{port=\"grpc\"}")
                .is_some_and(|v| v >= 2.0),
            "{ctx}: {text}"
        );
        server.stop().await.unwrap();
    }
}

/// Writes `contents` to `path` the way a Secret update lands: a new file
/// renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn rotated_certificates_and_revoked_tokens_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let server_pair = old_ca.server(dir.path(), "server");
    let server =
        TestServer::start_with(|c| secure(c, Transport::H2, &server_pair, None, dir.path())).await;

    let old_channel = tls_channel(server.grpc, &old_ca.pem(), None).await.unwrap();
    reaches(old_channel.clone()).await.unwrap();
    if let Ok(channel) = tls_channel(server.grpc, &new_ca.pem(), None).await {
        assert!(reaches(channel).await.is_err(), "new CA trusted too early");
    }

    // cert-manager rotates the Secret: new certificate and key in place.
    let rotated = new_ca.server(dir.path(), "rotated");
    replace(&server_pair.key_file, &rotated.key_pem);
    replace(&server_pair.cert_file, &rotated.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match tls_channel(server.grpc, &new_ca.pem(), None).await {
            Ok(channel) => reaches(channel).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A connection made before the rotation goes on.
    reaches(old_channel).await.unwrap();

    // A half-written certificate is refused; the rotated one stays.
    std::fs::write(
        &server_pair.cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(server.metrics, "/metrics").await;
        if metric_value(
            &text,
            "gantry_tls_reloads_total{port=\"grpc\",result=\"failed\"}",
        )
        .is_some_and(|v| v >= 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was not noticed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = tls_channel(server.grpc, &new_ca.pem(), None).await.unwrap();
    reaches(channel.clone()).await.unwrap();

    // Revoking a token: its calls are UNAUTHENTICATED once the file reloads.
    let mut cache = CacheClient::new(channel);
    cache
        .put(with_token(put("checkout", b"v"), CHECKOUT_TOKEN))
        .await
        .unwrap();
    replace(
        &dir.path().join("tokens.toml"),
        &format!(
            "[[token]]\nidentity = \"orders\"\nsha256 = \"{}\"\n",
            sha256_hex(ORDERS_TOKEN)
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get(with_token(get("checkout"), CHECKOUT_TOKEN)).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the token was never revoked: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    server.stop().await.unwrap();
}

/// GET `path` over TLS trusting `ca`, with a bearer token when given:
/// (status code, body).
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    ca: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    https_get_as(addr, path, ca, token, None).await
}

/// [`https_get`] presenting `client`'s certificate (mutual TLS).
async fn https_get_as(
    addr: std::net::SocketAddr,
    path: &str,
    ca: &str,
    token: Option<&str>,
    client: Option<&Pair>,
) -> std::io::Result<(u16, String)> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some(pair) => config
            .with_client_auth_cert(
                rustls_pki_types::CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what was read counts.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, response))
}

#[tokio::test]
async fn the_metrics_port_can_require_tls_and_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("metrics CA");
    let pair = ca.server(dir.path(), "metrics");
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me\n").unwrap();
    let server = TestServer::start_with(|c| {
        c.telemetry.metrics_tls.cert_file = pair.cert_file.clone();
        c.telemetry.metrics_tls.key_file = pair.key_file.clone();
        c.telemetry.metrics_token_file = token_file.clone();
    })
    .await;

    let (status, _) = https_get(server.metrics, "/metrics", &ca.pem(), None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = https_get(server.metrics, "/metrics", &ca.pem(), Some("guess"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = https_get(server.metrics, "/metrics", &ca.pem(), Some("scrape-me"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gantry_tls_certificate_expiry_timestamp_seconds{port=\"metrics\"}"));

    // Plaintext HTTP to the TLS port gets no metrics.
    let plain =
        tokio::time::timeout(Duration::from_secs(5), http_get(server.metrics, "/metrics")).await;
    if let Ok((status, body)) = plain {
        assert_ne!(status, 200, "{body}");
    }

    // A rotated token counts at the next scrape.
    std::fs::write(&token_file, "rotated").unwrap();
    let (status, _) = https_get(server.metrics, "/metrics", &ca.pem(), Some("scrape-me"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = https_get(server.metrics, "/metrics", &ca.pem(), Some("rotated"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

/// Prometheus with a client certificate: `[telemetry.metrics_tls]
/// client_ca_file` admits a scraper whose certificate chains to it, and no other.
#[tokio::test]
async fn the_metrics_port_can_require_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("scrapers CA");
    let pair = ca.server(dir.path(), "metrics");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let prometheus = ca.client(dir.path(), "prometheus", "spiffe://fleet/prometheus");
    let stranger = Ca::new("other").client(dir.path(), "stranger", "spiffe://x/y");
    let server = TestServer::start_with(|c| {
        c.telemetry.metrics_tls.cert_file = pair.cert_file.clone();
        c.telemetry.metrics_tls.key_file = pair.key_file.clone();
        c.telemetry.metrics_tls.client_ca_file = ca_file.clone();
    })
    .await;
    let (status, body) = https_get_as(
        server.metrics,
        "/metrics",
        &ca.pem(),
        None,
        Some(&prometheus),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    for client in [None, Some(&stranger)] {
        let got = https_get_as(server.metrics, "/metrics", &ca.pem(), None, client).await;
        assert!(
            !matches!(got, Ok((200, _))),
            "a scraper without a trusted certificate got the metrics"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unusable_tls_or_auth_files_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.server.tls.cert_file = dir.path().join("missing.crt");
    config.server.tls.key_file = dir.path().join("missing.key");
    let error = gantry::server::Gantry::build(config, false)
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("server.tls.cert_file"),
        "{error}"
    );

    let ca = Ca::new("ca");
    let pair = ca.server(dir.path(), "server");
    let other = ca.server(dir.path(), "other");
    let mut config = crate::common::test_config(dir.path());
    config.server.tls.cert_file = pair.cert_file.clone();
    config.server.tls.key_file = other.key_file.clone();
    let error = gantry::server::Gantry::build(config, false)
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("cert_file and key_file"),
        "{error}"
    );

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nidentities = [\"a\"]\ncaches = [\"x\"]\n",
    )
    .unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, "").unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.auth.policy_file = policy;
    config.auth.tokens_file = tokens;
    let error = gantry::server::Gantry::build(config, false)
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("auth.policy_file") && error.to_string().contains("caches"),
        "{error}"
    );
}

#[test]
fn listening_beyond_loopback_without_tls_or_auth_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut gantry = GantryProcess::spawn(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
        ],
        &[],
        dir.path(),
    );
    let line = gantry.wait_for_line("listening beyond loopback", Duration::from_secs(20));
    assert!(
        line.contains("TLS") && line.contains("authorization"),
        "{line}"
    );
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(20)), 0);
}

/// The exec probe of a TLS deployment: `gantry health` with the CA, and
/// under mutual TLS a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gantry_health_checks_a_mutual_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("probe CA");
    let server_pair = ca.server(dir.path(), "server");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let client = ca.client(dir.path(), "probe", "spiffe://fleet/probe");
    let server = TestServer::start_with(|c| {
        secure(c, Transport::H2, &server_pair, Some(&ca_file), dir.path())
    })
    .await;
    let addr = server.grpc.to_string();
    let cwd = dir.path().to_path_buf();
    let run = move |extra: Vec<String>| {
        let (addr, cwd, ca) = (addr.clone(), cwd.clone(), ca_file.display().to_string());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut args = vec![
                    "health".to_string(),
                    "--addr".into(),
                    addr,
                    "--ca-file".into(),
                    ca,
                    "--server-name".into(),
                    "localhost".into(),
                ];
                args.extend(extra);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                crate::common::run_gantry(&args, &[], &cwd)
            })
            .await
            .unwrap()
        }
    };
    let (code, out, err) = run(vec![
        "--cert-file".into(),
        client.cert_file.display().to_string(),
        "--key-file".into(),
        client.key_file.display().to_string(),
    ])
    .await;
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");
    let (code, _, err) = run(vec![]).await;
    assert_ne!(
        code, 0,
        "without a client certificate the probe must fail: {err}"
    );
    server.stop().await.unwrap();
}
