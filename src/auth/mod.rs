//! Who is calling and what they may touch (`[auth]`).
//!
//! A caller is identified by a bearer token in the `authorization` metadata
//! (looked up by its SHA-256 in `tokens_file`) or by its verified mTLS client
//! certificate. The per-call layer (both transports, the direct calls too)
//! checks the service and, for spans and statements, ingest versus read;
//! the adapters check the limit, namespace or pool a message names with
//! [`Caller::may`]. Missing or unknown credentials → `UNAUTHENTICATED`; a
//! known identity outside its grant → `PERMISSION_DENIED` naming what was
//! refused. Without `policy_file` everyone may do everything (today's
//! behaviour). docs/security.md says what is protected and what is not.

mod config;
mod policy;

pub use config::AuthConfig;
pub use policy::{Access, Area, Grant, Policy, Tokens, sha256};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::filewatch::Polled;
use crate::tls::Peer;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing credentials: send `authorization: Bearer <token>` metadata or a client certificate"
    )]
    Missing,
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not valid (unknown, or revoked from auth.tokens_file)")]
    UnknownToken,
    #[error("{identity:?} may not {what}")]
    Denied { identity: String, what: String },
}

/// Who a call is from, as the adapters see it (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller(Option<Arc<Identity>>);

#[derive(Debug)]
struct Identity {
    name: Arc<str>,
    grant: Arc<Grant>,
    /// `gantry_auth_refused_total{reason="denied"}`, counted where the
    /// adapters refuse a name too.
    denied: Counter,
}

impl Identity {
    fn deny(&self, what: String) -> AuthError {
        self.denied.inc();
        AuthError::Denied {
            identity: self.name.to_string(),
            what,
        }
    }
}

impl Caller {
    /// A caller when authorization is off: may do everything.
    pub fn anyone() -> Self {
        Self(None)
    }

    /// The caller of a service-path call. A request that did not pass the
    /// per-call layer has none and may touch nothing.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, AuthError> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| AuthError::Denied {
                identity: String::new(),
                what: "call without the per-call layer".to_string(),
            })
    }

    pub fn identity(&self) -> Option<&str> {
        self.0.as_ref().map(|i| &*i.name)
    }

    /// May it touch the limit, namespace or pool `name`?
    pub fn may(&self, area: Area, name: &str) -> Result<(), AuthError> {
        match &self.0 {
            None => Ok(()),
            Some(id) if id.grant.names(area, name) => Ok(()),
            Some(id) => Err(id.deny(format!("use {} {name:?}", area.thing()))),
        }
    }

    /// May it touch every name of the area (e.g. the cache's Stats of all
    /// namespaces)?
    pub fn may_all(&self, area: Area) -> Result<(), AuthError> {
        match &self.0 {
            None => Ok(()),
            Some(id) if id.grant.all(area) => Ok(()),
            Some(id) => Err(id.deny(format!("use every {} (name one)", area.thing()))),
        }
    }

    /// Whether `name` is visible to it, for lists that are filtered rather
    /// than refused.
    pub fn sees(&self, area: Area, name: &str) -> bool {
        match &self.0 {
            None => true,
            Some(id) => id.grant.names(area, name),
        }
    }
}

/// What a method needs beyond being authenticated.
fn requirement(service: &str, method: &str) -> Option<(Area, Option<Access>)> {
    let area = match service {
        "gantry.v1.RateLimiter" | "envoy.service.ratelimit.v3.RateLimitService" => {
            return Some((Area::RateLimit, None));
        }
        "gantry.v1.Cache" => return Some((Area::Cache, None)),
        "gantry.v1.Leases" => return Some((Area::Leases, None)),
        "gantry.v1.Traces" | "opentelemetry.proto.collector.trace.v1.TraceService" => Area::Traces,
        "gantry.v1.QueryAnalyzer" => Area::Query,
        _ => return None,
    };
    let access = match method {
        "Ingest" | "Export" | "Analyze" | "Record" => Access::Ingest,
        _ => Access::Read,
    };
    Some((area, Some(access)))
}

struct Loaded {
    /// Each token's caller, made once per load: a call with a token costs
    /// one SHA-256 and this one lookup (`None`: the policy grants its
    /// identity nothing).
    by_token: HashMap<[u8; 32], (Arc<str>, Option<Caller>)>,
    policy: Policy,
    /// The files' bytes these were parsed from.
    bytes: (Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    reason: &'static str,
}

/// Tokens and policy in force, reloaded when their files change.
pub struct Auth {
    config: AuthConfig,
    open: HashSet<String>,
    loaded: ArcSwap<Loaded>,
    reloads: Family<ResultLabel, Counter>,
    refused: Family<RefusedLabel, Counter>,
    /// Its `denied` child, made once: callers carry it.
    denied: Counter,
}

impl Auth {
    /// `None` when `[auth]` is off; an error naming the file otherwise.
    pub fn load(config: &AuthConfig, registry: &mut Registry) -> Result<Option<Arc<Self>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let bytes = read_files(config)?;
        let refused = Family::<RefusedLabel, Counter>::default();
        let denied = refused
            .get_or_create(&RefusedLabel { reason: "denied" })
            .clone();
        let auth = Arc::new(Self {
            config: config.clone(),
            open: config.open_services.iter().cloned().collect(),
            loaded: ArcSwap::from_pointee(Loaded {
                by_token: HashMap::new(),
                policy: Policy::default(),
                bytes: Default::default(),
            }),
            reloads: Family::default(),
            refused,
            denied,
        });
        auth.loaded.store(Arc::new(auth.build(bytes)?));
        registry.register(
            "gantry_auth_reloads",
            "Reloads of auth.tokens_file and auth.policy_file after they changed, by result (failed: the previous ones stay)",
            auth.reloads.clone(),
        );
        registry.register(
            "gantry_auth_refused",
            "Calls refused by authentication or authorization, by reason (missing, malformed, unknown_token, denied)",
            auth.refused.clone(),
        );
        Ok(Some(auth))
    }

    /// Authenticates a call and checks its service and method; the caller
    /// for the adapters' checks of what it names.
    pub fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<Caller, AuthError> {
        let result = self.decide(path, headers, peer);
        if let Err(e) = &result {
            let reason = match e {
                AuthError::Missing => "missing",
                AuthError::Malformed => "malformed",
                AuthError::UnknownToken => "unknown_token",
                AuthError::Denied { .. } => {
                    self.denied.inc();
                    return result;
                }
            };
            self.refused.get_or_create(&RefusedLabel { reason }).inc();
        }
        result
    }

    fn decide(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<Caller, AuthError> {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or((path, ""));
        if self.open.contains(service) {
            return Ok(Caller::anyone());
        }
        let loaded = self.loaded.load();
        let (name, caller) = match headers.get(http::header::AUTHORIZATION) {
            Some(value) => {
                let token = bearer(value.as_bytes()).ok_or(AuthError::Malformed)?;
                let (name, caller) = loaded
                    .by_token
                    .get(&sha256(token))
                    .ok_or(AuthError::UnknownToken)?;
                (name.clone(), caller.clone())
            }
            None => {
                let name = peer
                    .and_then(|p| p.identity.clone())
                    .ok_or(AuthError::Missing)?;
                let caller = self.caller(&loaded.policy, &name);
                (name, caller)
            }
        };
        let denied = |what: String| AuthError::Denied {
            identity: name.to_string(),
            what,
        };
        let caller = caller
            .ok_or_else(|| denied("call gantry: auth.policy_file grants it nothing".to_string()))?;
        let Some(identity) = &caller.0 else {
            return Ok(caller);
        };
        let grant = &identity.grant;
        match requirement(service, method) {
            Some((area, None)) if !grant.uses(area) => {
                return Err(denied(format!("call {service}: no {} grant", area.key())));
            }
            Some((area, Some(access))) if !grant.access(area, access) => {
                return Err(denied(format!(
                    "call {service}/{method}: needs {}:{}",
                    area.key(),
                    access.key()
                )));
            }
            _ => {}
        }
        Ok(caller)
    }

    /// The caller `name` is under `policy`; `None` when it grants nothing.
    fn caller(&self, policy: &Policy, name: &Arc<str>) -> Option<Caller> {
        let grant = policy.grant(name)?;
        Some(Caller(Some(Arc::new(Identity {
            name: name.clone(),
            grant,
            denied: self.denied.clone(),
        }))))
    }

    /// Reads and parses both files into what calls are decided with.
    fn build(&self, bytes: (Vec<u8>, Vec<u8>)) -> Result<Loaded, String> {
        let (tokens, policy) = parse(&self.config, &bytes)?;
        let by_token = tokens
            .entries()
            .map(|(hash, name)| (*hash, (name.clone(), self.caller(&policy, name))))
            .collect();
        Ok(Loaded {
            by_token,
            policy,
            bytes,
        })
    }

    /// Reloads both files when either changed; `Ok(false)` when neither did.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let bytes = read_files(&self.config)?;
        if self.loaded.load().bytes == bytes {
            return Ok(false);
        }
        let loaded = self.build(bytes)?;
        self.loaded.store(Arc::new(loaded));
        Ok(true)
    }

    /// Checks the files every `auth.reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        let check = move || this.reload_if_changed();
        crate::filewatch::poll(self.config.reload_interval.get(), stop, check, |polled| {
            let result = match polled {
                Polled::Reloaded => {
                    tracing::info!("auth tokens and policy reloaded");
                    "ok"
                }
                Polled::Refused { reason, new_reason } => {
                    if new_reason {
                        tracing::warn!(error = %reason, "auth files changed but do not load; the previous tokens and policy stay");
                    }
                    "failed"
                }
            };
            self.reloads.get_or_create(&ResultLabel { result }).inc();
        })
        .await;
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

fn read_files(config: &AuthConfig) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |key: &str, path: &Path| {
        if !crate::tls::is_set(path) {
            return Ok(Vec::new());
        }
        std::fs::read(path).map_err(|e| format!("cannot read auth.{key} {}: {e}", path.display()))
    };
    Ok((
        read("tokens_file", &config.tokens_file)?,
        read("policy_file", &config.policy_file)?,
    ))
}

fn parse(config: &AuthConfig, bytes: &(Vec<u8>, Vec<u8>)) -> Result<(Tokens, Policy), String> {
    let text = |key: &str, bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("auth.{key} is not UTF-8"))
    };
    let where_ = |key: &str, path: &Path| format!("auth.{key} {}", path.display());
    let tokens = Tokens::parse(&text("tokens_file", &bytes.0)?)
        .map_err(|e| format!("{}: {e}", where_("tokens_file", &config.tokens_file)))?;
    let policy = Policy::parse(&text("policy_file", &bytes.1)?)
        .map_err(|e| format!("{}: {e}", where_("policy_file", &config.policy_file)))?;
    Ok((tokens, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &Path) -> Arc<Auth> {
        let tokens = dir.join("tokens.toml");
        let policy = dir.join("policy.toml");
        let hash = |t: &str| {
            sha256(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        std::fs::write(
            &tokens,
            format!(
                "[[token]]\nidentity = \"checkout\"\nsha256 = \"{}\"\n[[token]]\nidentity = \"nobody\"\nsha256 = \"{}\"\n",
                hash("s3cret"),
                hash("other")
            ),
        )
        .unwrap();
        std::fs::write(
            &policy,
            "[[grant]]\nidentities = [\"checkout\", \"spiffe://fleet/orders\"]\ncache = [\"checkout\"]\ntraces = [\"ingest\"]\n",
        )
        .unwrap();
        let config = AuthConfig {
            tokens_file: tokens,
            policy_file: policy,
            ..AuthConfig::default()
        };
        Auth::load(&config, &mut Registry::default())
            .unwrap()
            .unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_certificates_and_grants_decide_each_call() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let none = HeaderMap::new();
        let get = "/gantry.v1.Cache/Get";

        assert_eq!(
            auth.check(get, &none, None).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            auth.check(get, &headers("Basic abc"), None).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            auth.check(get, &headers("Bearer nope"), None).unwrap_err(),
            AuthError::UnknownToken
        );
        assert!(
            auth.check("/grpc.health.v1.Health/Check", &none, None)
                .is_ok()
        );

        let caller = auth.check(get, &headers("bearer s3cret"), None).unwrap();
        assert_eq!(caller.identity(), Some("checkout"));
        assert!(caller.may(Area::Cache, "checkout").is_ok());
        let denied = caller.may(Area::Cache, "orders").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "\"checkout\" may not use cache namespace \"orders\""
        );
        assert!(caller.may_all(Area::Cache).is_err());

        let leases = auth.check("/gantry.v1.Leases/Acquire", &headers("Bearer s3cret"), None);
        assert!(
            matches!(leases, Err(AuthError::Denied { .. })),
            "{leases:?}"
        );
        assert!(
            auth.check("/gantry.v1.Traces/Ingest", &headers("Bearer s3cret"), None)
                .is_ok()
        );
        let read = auth
            .check(
                "/gantry.v1.Traces/GetTrace",
                &headers("Bearer s3cret"),
                None,
            )
            .unwrap_err();
        assert!(read.to_string().contains("needs traces:read"), "{read}");
        let nobody = auth.check(get, &headers("Bearer other"), None).unwrap_err();
        assert!(nobody.to_string().contains("grants it nothing"), "{nobody}");

        let peer = Peer {
            identity: Some("spiffe://fleet/orders".into()),
            ..Peer::default()
        };
        let by_cert = auth.check(get, &none, Some(&peer)).unwrap();
        assert_eq!(by_cert.identity(), Some("spiffe://fleet/orders"));
        // A token, when sent, is what counts.
        assert!(
            auth.check(get, &headers("Bearer nope"), Some(&peer))
                .is_err()
        );
    }

    #[test]
    fn a_changed_file_reloads_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        assert_eq!(auth.reload_if_changed(), Ok(false));
        std::fs::write(
            dir.path().join("policy.toml"),
            "[[grant]]\nidentities = [\"checkout\"]\ncache = [\"orders\"]\n",
        )
        .unwrap();
        assert_eq!(auth.reload_if_changed(), Ok(true));
        let caller = auth
            .check("/gantry.v1.Cache/Get", &headers("Bearer s3cret"), None)
            .unwrap();
        assert!(caller.may(Area::Cache, "orders").is_ok());
        assert!(caller.may(Area::Cache, "checkout").is_err());

        std::fs::write(
            dir.path().join("policy.toml"),
            "[[grant]]\nidentities = 3\n",
        )
        .unwrap();
        let failed = auth.reload_if_changed().unwrap_err();
        assert!(failed.contains("auth.policy_file"), "{failed}");
        assert!(
            auth.check("/gantry.v1.Cache/Get", &headers("Bearer s3cret"), None)
                .is_ok()
        );
    }
}
