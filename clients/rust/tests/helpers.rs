//! The client helpers against a real gantry: the server binary the workspace
//! builds (GANTRY_BIN, or target/debug/gantry), on 127.0.0.1 with its own data.

use std::time::{Duration, Instant};

use gantry_client::proto::gantry::v1 as pb;
use gantry_client::{Error, Gantry, QueryOrder, TopQueries};

mod common;
use common::{Server, start, start_with};

async fn client(server: &Server) -> Gantry {
    Gantry::connect(&server.addr, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test]
async fn limiter_takes_waits_and_refuses() {
    let Some(server) = start() else { return };
    let gantry = client(&server).await;
    let tight = gantry.limiter("tight", "customer-1");
    assert!(tight.acquire(1, Duration::ZERO).await.unwrap().allowed);
    assert!(tight.acquire(1, Duration::ZERO).await.unwrap().allowed);
    let refused = tight.acquire(1, Duration::ZERO).await.unwrap();
    assert!(!refused.allowed && refused.retry_after > Duration::ZERO);
    let not_granted = tight.wait(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(
        not_granted,
        Error::NotGranted {
            retry_after: Some(d),
            reason: None,
        } if d > Duration::ZERO
    ));
    assert!(
        not_granted.to_string().contains("retry after"),
        "{not_granted}"
    );
    let steady = gantry.limiter("steady", "k").client("worker-1");
    assert_eq!(
        steady
            .run(Duration::from_secs(3), || async { 7 })
            .await
            .unwrap(),
        7
    );
    let waited = steady.wait(Duration::from_secs(3)).await.unwrap();
    assert!(waited.waited >= Duration::from_millis(100), "{waited:?}");
    let unknown = gantry
        .limiter("nope", "k")
        .acquire(1, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "gantry answered NotFound: limit \"nope\" not found"
    );
    assert!(matches!(unknown, Error::Status(s) if s.code() == tonic::Code::NotFound));
}

#[tokio::test]
async fn lease_renews_itself_and_releases() {
    let Some(server) = start() else { return };
    let gantry = client(&server).await;
    let lease = gantry
        .lease("db", "pod-a", 2, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap();
    let first = lease.expires_at();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = gantry
        .leases
        .clone()
        .pool_status(pb::PoolStatusRequest { pool: "db".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.in_use, 2, "the lease outlived its TTL by renewing");
    assert!(lease.expires_at() > first && !lease.lost());
    let busy = gantry
        .lease("db", "pod-b", 1, Duration::ZERO, Duration::from_millis(300))
        .await;
    let busy = busy.unwrap_err();
    assert!(matches!(
        busy,
        Error::NotGranted {
            retry_after: None,
            reason: Some(_)
        }
    ));
    assert_eq!(
        busy.to_string(),
        "not granted within the wait (the pool is full)"
    );
    assert!(lease.release().await.unwrap());
    let again = gantry
        .lease("db", "pod-b", 2, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert!(again.release().await.unwrap());
}

#[tokio::test]
async fn near_cache_follows_other_writers() {
    let Some(server) = start() else { return };
    let gantry = client(&server).await;
    let other = client(&server).await;
    let carts = gantry.namespace("carts");
    carts
        .put("cart:1", b"v1".to_vec(), Duration::ZERO)
        .await
        .unwrap();
    let near = carts.near_cache("cart:", 100);
    async fn eventually<F: std::future::Future<Output = bool>>(
        what: &str,
        mut cond: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond().await {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eventually("a local copy", || async {
        near.get("cart:1").await.unwrap().as_deref() == Some(&b"v1"[..]) && near.len() == 1
    })
    .await;
    other
        .namespace("carts")
        .put("cart:1", b"v2".to_vec(), Duration::ZERO)
        .await
        .unwrap();
    eventually("the other instance's put", || async {
        near.get("cart:1").await.unwrap().as_deref() == Some(&b"v2"[..])
    })
    .await;
    assert!(other.namespace("carts").delete("cart:1").await.unwrap());
    eventually("the delete", || async {
        near.get("cart:1").await.unwrap().is_none() && near.is_empty()
    })
    .await;
}

#[tokio::test]
async fn recorder_batches_in_the_background() {
    let Some(server) = start() else { return };
    let gantry = client(&server).await;
    let recorder = gantry.recorder("shop", "postgres");
    for i in 0..6 {
        assert!(recorder.record(
            &format!("SELECT * FROM items WHERE id = {i}"),
            Duration::from_millis(3),
            1,
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ));
    }
    assert_eq!(recorder.dropped(), 0);
    assert_eq!(recorder.close().await, 0);
    let slow = gantry.recorder("shop", "postgres");
    assert!(slow.record(
        "SELECT count(*) FROM items",
        Duration::from_millis(1500),
        1,
        ""
    ));
    assert_eq!(slow.close().await, 0);

    let top = gantry
        .top_queries(TopQueries {
            service: "shop".into(),
            order_by: QueryOrder::Calls,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(top.iter().map(|q| q.calls).collect::<Vec<_>>(), [6, 1]);
    assert_eq!(top[0].total, Duration::from_millis(18));
    assert_eq!(top[0].batching.as_ref().map(|b| b.max_per_trace), Some(6));
    assert!(top[0].sample.contains("WHERE id = $1"), "{}", top[0].sample);
    assert!(top[0].last_seen > std::time::UNIX_EPOCH);
    let heaviest = gantry
        .top_queries(TopQueries {
            service: "shop".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        heaviest[0].total,
        Duration::from_millis(1500),
        "total time by default"
    );
    let logged = gantry
        .slow_queries(
            Some(std::time::SystemTime::now() - Duration::from_secs(60)),
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        logged
            .iter()
            .map(|q| (q.service.as_str(), q.duration))
            .collect::<Vec<_>>(),
        [("shop", Duration::from_millis(1500))]
    );
}

#[tokio::test]
async fn errors_carry_the_code() {
    let Some(server) = start() else { return };
    let gantry = client(&server).await;
    let err = gantry
        .limiter("no-such-limit", "k")
        .acquire(1, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    assert!(
        err.to_string().starts_with("gantry answered NotFound: ")
            && err.to_string().contains("no-such-limit"),
        "{err}"
    );
}

/// The helpers over mutual TLS with a token, against a gantry requiring
/// both; certificates made here (rcgen), none committed.
#[tokio::test]
async fn mutual_tls_with_a_token() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let sign = |params: CertificateParams| {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = sign(
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap(),
    );
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .subject_alt_names
        .push(SanType::URI("spiffe://test/rust-suite".try_into().unwrap()));
    let client = sign(client_params);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let token = "rust-suite-token-a9b3";
    let digest: String = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let env = [
        (
            "GANTRY_SERVER_TLS_CERT_FILE",
            write("server.crt", &server.0),
        ),
        ("GANTRY_SERVER_TLS_KEY_FILE", write("server.key", &server.1)),
        (
            "GANTRY_SERVER_TLS_CLIENT_CA_FILE",
            write("ca.crt", &ca.pem()),
        ),
        (
            "GANTRY_AUTH_TOKENS_FILE",
            write(
                "tokens.toml",
                &format!("[[token]]\nidentity = \"rust-suite\"\nsha256 = \"{digest}\"\n"),
            ),
        ),
        (
            "GANTRY_AUTH_POLICY_FILE",
            write(
                "policy.toml",
                "[[grant]]\nidentities = [\"rust-suite\"]\nratelimit = [\"tight\"]\ncache = [\"rs\"]\n",
            ),
        ),
    ];
    let Some(server) = start_with(&env) else {
        return;
    };
    let tls = gantry_client::Tls {
        ca_pem: Some(ca.pem().into_bytes()),
        client_pem: Some((client.0.clone().into_bytes(), client.1.clone().into_bytes())),
        server_name: Some("localhost".into()),
    };
    let gantry = Gantry::connect_tls(&server.addr, Duration::from_secs(10), &tls)
        .await
        .unwrap()
        .with_token(token)
        .unwrap()
        .with_retries(0);
    assert!(
        gantry
            .limiter("tight", "k")
            .acquire(1, Duration::ZERO)
            .await
            .unwrap()
            .allowed
    );
    gantry
        .namespace("rs")
        .put("k", b"v".to_vec(), Duration::ZERO)
        .await
        .unwrap();
    let denied = gantry.namespace("other").get("k").await.unwrap_err();
    assert!(
        matches!(&denied, Error::Status(s) if s.code() == tonic::Code::PermissionDenied && s.message().contains("\"other\"")),
        "{denied}"
    );
    // The generated clients carry the token through `authorized`.
    let mut raw = gantry.cache.clone();
    let got = raw
        .get(gantry.authorized(pb::GetRequest {
            namespace: "rs".into(),
            key: "k".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"v");
    let unauthenticated = raw
        .get(pb::GetRequest {
            namespace: "rs".into(),
            key: "k".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        unauthenticated.code(),
        tonic::Code::PermissionDenied,
        "the certificate alone has no grant"
    );

    // Without a client certificate, no call gets through.
    let no_cert = gantry_client::Tls {
        client_pem: None,
        ..tls.clone()
    };
    let refused =
        match Gantry::connect_tls(&server.addr, Duration::from_millis(500), &no_cert).await {
            Err(_) => true,
            Ok(g) => g.with_retries(0).namespace("rs").get("k").await.is_err(),
        };
    assert!(refused, "a client without a certificate got in");
}
