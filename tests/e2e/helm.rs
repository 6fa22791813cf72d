//! The Helm chart, validated with the real tools: `helm lint` and `helm
//! template` for the default values and for a values file that turns every
//! option on (values.schema.json included), `kubeconform -strict` on the
//! rendered manifests, and `gantry check-config` on the gantry.toml the chart
//! renders. .ci/run installs helm and kubeconform (go install) and writes the
//! Kubernetes schemas offline (.ci/k8s-schemas.py).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(name: &str) -> Option<PathBuf> {
    let local = Path::new(ROOT).join(".ci/bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join("go/bin").join(name));
    if let Some(home) = home.filter(|p| p.is_file()) {
        return Some(home);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

struct Tools {
    helm: PathBuf,
    kubeconform: PathBuf,
    schemas: PathBuf,
}

fn tools() -> Option<Tools> {
    let schemas = std::env::var_os("GANTRY_K8S_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(".ci/k8s-schemas"));
    let found = match (tool("helm"), tool("kubeconform")) {
        (Some(helm), Some(kubeconform)) if schemas.is_dir() => Some(Tools {
            helm,
            kubeconform,
            schemas: schemas.clone(),
        }),
        _ => None,
    };
    if found.is_none() {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_HELM").is_none(),
            "GANTRY_REQUIRE_HELM is set but helm, kubeconform or the schemas in {} are missing",
            schemas.display()
        );
        eprintln!("SKIPPED: helm, kubeconform or Kubernetes schemas missing (run .ci/run)");
    }
    found
}

fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/gantry");
const ALL_OPTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/gantry/ci/all-options-values.yaml"
);

fn render(t: &Tools, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "gantry",
        CHART,
        "--namespace",
        "platform",
        "--kube-version",
        "1.31.0",
    ];
    args.extend_from_slice(extra);
    let (ok, text) = run(&t.helm, &args);
    assert!(ok, "helm template {extra:?} failed:\n{text}");
    text
}

/// The gantry.toml inside the rendered ConfigMap.
fn rendered_config(manifests: &str) -> String {
    let start = manifests
        .find("gantry.toml: |\n")
        .expect("a gantry.toml in the ConfigMap")
        + 15;
    manifests[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `helm template` with `--set set`, which must fail: what helm said.
fn refused(t: &Tools, set: &str) -> String {
    let (ok, text) = run(
        &t.helm,
        &[
            "template",
            "gantry",
            CHART,
            "--kube-version",
            "1.31.0",
            "--set",
            set,
        ],
    );
    assert!(!ok, "--set {set} was accepted");
    text
}

fn kubeconform(t: &Tools, manifests: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let location = format!(
        "{}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        t.schemas.display()
    );
    let version = std::fs::read_dir(&t.schemas)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix('v')?
                .split('-')
                .next()
                .map(str::to_string)
        })
        .expect("a schema version directory");
    let (ok, text) = run(
        &t.kubeconform,
        &[
            "-strict",
            "-summary",
            "-kubernetes-version",
            &version,
            "-schema-location",
            &location,
            // The Prometheus Operator's and cert-manager's CRDs have no
            // schema among Kubernetes' own.
            "-skip",
            "ServiceMonitor,PrometheusRule,Certificate",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "kubeconform refused the manifests:\n{text}");
    text
}

fn check_config(manifests: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gantry.toml");
    std::fs::write(&file, rendered_config(manifests)).unwrap();
    let (ok, text) = run(
        Path::new(env!("CARGO_BIN_EXE_gantry")),
        &["check-config", file.to_str().unwrap()],
    );
    assert!(
        ok,
        "gantry refuses the chart's configuration:\n{text}\n{}",
        rendered_config(manifests)
    );
}

#[test]
fn the_chart_lints_renders_validates_and_configures_gantry() {
    let Some(t) = tools() else {
        return;
    };
    for extra in [&[][..], &["-f", ALL_OPTIONS][..]] {
        let mut args = vec!["lint", CHART, "--strict", "--kube-version", "1.31.0"];
        args.extend_from_slice(extra);
        let (ok, text) = run(&t.helm, &args);
        assert!(
            ok && text.contains("0 chart(s) failed"),
            "helm lint {extra:?}:\n{text}"
        );
    }

    let default = render(&t, &[]);
    let summary = kubeconform(&t, &default);
    assert!(
        summary.contains("Valid: 6, Invalid: 0, Errors: 0"),
        "{summary}"
    );
    check_config(&default);
    for expected in [
        "kind: StatefulSet",
        "replicas: 1",
        "grpc:\n              port: 7070",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "app.kubernetes.io/name: gantry",
        "app.kubernetes.io/instance: gantry",
        "app.kubernetes.io/managed-by: Helm",
        "kind: PodDisruptionBudget",
        "volumeClaimTemplates:",
        "name: GANTRY_DATA_DIR\n              value: /data",
        "name: GANTRY_OTLP_HTTP_LISTEN\n              value: \"0.0.0.0:4318\"",
        "name: otlp-http\n              containerPort: 4318",
        "targetPort: otlp-http",
    ] {
        assert!(
            default.contains(expected),
            "{expected:?} missing from the default render"
        );
    }
    assert!(!default.contains("kind: ServiceMonitor"));
    assert!(!default.contains("kind: PrometheusRule") && !default.contains("grafana_dashboard"));

    let all = render(&t, &["-f", ALL_OPTIONS]);
    let summary = kubeconform(&t, &all);
    assert!(
        summary.contains("Valid: 7, Invalid: 0, Errors: 0, Skipped: 3"),
        "{summary}"
    );
    check_monitoring(&all);
    check_config(&all);
    let config = rendered_config(&all);
    // Integers stay integers through Helm's float-only YAML.
    assert!(config.contains("max_buckets = 2000000"), "{config}");
    assert!(config.contains("[[ratelimit.limits]]"), "{config}");
    // [server] and [storage] keys the chart does not own are passed through.
    for expected in [
        "max_inflight = 4096",
        "request_timeout = \"20s\"",
        "on_corruption = \"quarantine\"",
    ] {
        assert!(config.contains(expected), "{expected} missing:\n{config}");
    }
    for expected in [
        "kind: ServiceMonitor",
        "minAvailable: 1",
        "storageClassName: fast-ssd",
        "image: \"registry.example.com/platform/gantry:0.1.0-rc1\"",
        "terminationGracePeriodSeconds: 40",
    ] {
        assert!(
            all.contains(expected),
            "{expected:?} missing from the all-options render"
        );
    }
}

/// The alerts and the dashboard (helm/gantry/monitoring) as rendered: the
/// rules narrowed to this release's job and volume claims, the dashboard in
/// a ConfigMap the Grafana sidecar finds by its label.
fn check_monitoring(all: &str) {
    let rules = std::fs::read_to_string(format!("{CHART}/monitoring/alerts.yaml")).unwrap();
    let alerts = rules.matches("- alert:").count();
    let rendered = all
        .split("\n---")
        .find(|doc| doc.contains("kind: PrometheusRule"))
        .expect("a PrometheusRule");
    assert_eq!(rendered.matches("- alert:").count(), alerts);
    assert!(rendered.contains("release: prometheus"), "{rendered}");
    assert!(
        rendered.contains("up{job=\"gantry-prod\"} == 0"),
        "{rendered}"
    );
    assert!(
        rendered.contains("persistentvolumeclaim=~\"data-gantry-prod-[0-9]+\""),
        "{rendered}"
    );
    assert!(
        !rendered.contains(".*gantry.*"),
        "a selector was not narrowed:\n{rendered}"
    );
    let dashboard = all
        .split("\n---")
        .find(|doc| doc.contains("gantry.json:"))
        .expect("the dashboard ConfigMap");
    for expected in [
        "name: gantry-prod-dashboard",
        "namespace: monitoring",
        "grafana_dashboard: \"1\"",
        "grafana_folder: \"Platform\"",
        "\"uid\": \"gantry-overview\"",
    ] {
        assert!(
            dashboard.contains(expected),
            "{expected} missing:\n{dashboard}"
        );
    }
}

/// TLS, mutual TLS, tokens and the metrics token: Secrets mounted as
/// directories (so renewals reach the pod), exec probes that speak TLS, a
/// cert-manager Certificate, and a ServiceMonitor that scrapes over TLS with
/// the token (rendered from the all-options values, validated above).
#[test]
fn tls_and_auth_mount_secrets_probe_over_tls_and_ask_cert_manager() {
    let Some(t) = tools() else {
        return;
    };
    let all = render(&t, &["-f", ALL_OPTIONS]);
    for expected in [
        "name: GANTRY_SERVER_TLS_CERT_FILE\n              value: /etc/gantry-tls/tls.crt",
        "name: GANTRY_SERVER_TLS_CLIENT_CA_FILE\n              value: /etc/gantry-tls/ca.crt",
        "name: GANTRY_TELEMETRY_METRICS_TLS_CERT_FILE",
        "name: GANTRY_AUTH_POLICY_FILE\n              value: /etc/gantry-auth/policy.toml",
        "name: GANTRY_TELEMETRY_METRICS_TOKEN_FILE\n              value: /etc/gantry-metrics-auth/token",
        "secretName: gantry-prod-tls",
        "secretName: gantry-prod-auth",
        "- --ca-file\n                - /etc/gantry-tls/ca.crt\n                - --server-name\n                - gantry.platform.example\n                - --cert-file",
        "kind: Certificate",
        "- gantry-prod.platform.svc",
        "- client auth",
        "kind: ClusterIssuer",
        "scheme: https",
        "type: Bearer",
        "name: gantry-prod-metrics-token",
    ] {
        assert!(
            all.contains(expected),
            "{expected:?} missing from the TLS render:\n{all}"
        );
    }
    assert!(
        !all.contains("grpc:\n              port:"),
        "a gRPC probe on a TLS port"
    );

    for (set, words) in [
        ("tls.enabled=true", "tls.enabled needs tls.secretName"),
        (
            "auth.enabled=true",
            "auth.enabled needs auth.existingSecret",
        ),
    ] {
        let text = refused(&t, set);
        assert!(text.contains(words), "{set}: {text}");
    }
}

/// Redis mode: a Deployment of replicas sharing state through Redis, with
/// its address and password from values and a Secret, spread over nodes,
/// disruption-bounded and optionally autoscaled; validated like the default.
#[test]
fn redis_mode_renders_replicas_over_a_shared_store() {
    let Some(t) = tools() else {
        return;
    };
    let redis = [
        "--set",
        "mode=redis",
        "--set",
        "redis.url=redis://redis-master.redis:6379",
        "--set",
        "redis.existingSecret=gantry-redis",
        "--set",
        "autoscaling.enabled=true",
    ];
    let mut lint = vec!["lint", CHART, "--strict", "--kube-version", "1.31.0"];
    lint.extend_from_slice(&redis);
    let (ok, text) = run(&t.helm, &lint);
    assert!(
        ok && text.contains("0 chart(s) failed"),
        "helm lint:\n{text}"
    );
    let manifests = render(&t, &redis);
    let summary = kubeconform(&t, &manifests);
    assert!(
        summary.contains("Valid: 7, Invalid: 0, Errors: 0"),
        "{summary}"
    );
    check_config(&manifests);
    for expected in [
        "kind: Deployment",
        "kind: HorizontalPodAutoscaler",
        "kind: PodDisruptionBudget",
        "maxUnavailable: 0",
        "topologySpreadConstraints:",
        "topologyKey: kubernetes.io/hostname",
        "app.kubernetes.io/instance: 'gantry'",
        "name: GANTRY_STORAGE_BACKEND\n              value: redis",
        "name: GANTRY_STORAGE_REDIS_URL\n              value: \"redis://redis-master.redis:6379\"",
        "name: GANTRY_STORAGE_REDIS_PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: gantry-redis\n                  key: password",
        "publishNotReadyAddresses: false",
        "minReplicas: 3",
    ] {
        assert!(
            manifests.contains(expected),
            "{expected:?} missing from the redis-mode render:\n{manifests}"
        );
    }
    for absent in ["kind: StatefulSet", "volumeClaimTemplates:", "replicas: 3"] {
        assert!(
            !manifests.contains(absent),
            "{absent:?} in the redis-mode render"
        );
    }
    // Without the autoscaler, the replica count is the Deployment's.
    let fixed = render(&t, &redis[..6]);
    assert!(fixed.contains("replicas: 3"), "{fixed}");
    assert!(!fixed.contains("kind: HorizontalPodAutoscaler"));

    // Redis mode without an address fails with a message that says so.
    let text = refused(&t, "mode=redis");
    assert!(text.contains("needs redis.url or redis.cluster"), "{text}");
}

#[test]
fn values_the_schema_refuses_fail_before_anything_renders() {
    let Some(t) = tools() else {
        return;
    };
    for (set, words) in [
        ("persistence.size=lots", "/persistence/size"),
        ("config.server=oops", "/config/server"),
        ("service.grpcPort=70000", "/service/grpcPort"),
        ("replicas=3", "replicas"),
        ("mode=cluster", "/mode"),
        ("redis.keyPrefix=a{b}", "/redis/keyPrefix"),
    ] {
        let text = refused(&t, set);
        assert!(
            text.contains("values don't meet the specifications of the schema"),
            "{set}: {text}"
        );
        assert!(text.contains(words), "{set}: {words:?} not in {text}");
    }
    // What the chart sets itself is refused by name, with what to use instead.
    for (set, words) in [
        (
            "config.server.listen=0.0.0.0:1",
            "config.server.listen is set by the chart; use service.grpcPort instead",
        ),
        (
            "config.storage.data_dir=/tmp/x",
            "config.storage.data_dir is set by the chart; use persistence.*",
        ),
        (
            "config.storage.redis.url=redis://r:6379",
            "config.storage.redis is set by the chart; use redis.* instead",
        ),
        (
            "config.traces.otlp_http_listen=0.0.0.0:1",
            "config.traces.otlp_http_listen is set by the chart; use service.otlpHttpPort instead",
        ),
        (
            "config.server.tls.cert_file=/x",
            "config.server.tls is set by the chart; use tls.* instead",
        ),
    ] {
        let text = refused(&t, set);
        assert!(text.contains(words), "{set}: {words:?} not in {text}");
    }
}
