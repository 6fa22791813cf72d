//! Who may touch what: the tokens file (token hashes → identities) and the
//! policy file (identities → grants), parsed and answered without I/O.
//!
//! ```toml
//! # tokens_file: only SHA-256 hashes of the tokens (`printf %s "$TOKEN" | sha256sum`)
//! [[token]]
//! identity = "checkout"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! # policy_file: what each identity (a token's, or an mTLS certificate's) may use
//! [[grant]]
//! identities = ["checkout", "spiffe://fleet/ns/shop/sa/checkout"]
//! ratelimit = ["checkout.*", "global_api"]  # limit names (Envoy: domains); "prefix*"; "*" for all
//! cache = ["checkout"]                      # cache namespaces
//! leases = ["orders-db"]                    # lease pools
//! traces = ["ingest"]                       # "ingest" spans, "read" them back
//! query = ["ingest", "read"]                # "ingest" statements, "read" the statistics
//! ```
//!
//! An identity's grant is the union of every `[[grant]]` that lists it or
//! `"*"` (any authenticated caller).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

/// What a call touches, as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    RateLimit,
    Cache,
    Leases,
    Traces,
    Query,
}

impl Area {
    pub fn key(self) -> &'static str {
        match self {
            Area::RateLimit => "ratelimit",
            Area::Cache => "cache",
            Area::Leases => "leases",
            Area::Traces => "traces",
            Area::Query => "query",
        }
    }

    /// What one named thing of this area is called in an error.
    pub fn thing(self) -> &'static str {
        match self {
            Area::RateLimit => "rate limit",
            Area::Cache => "cache namespace",
            Area::Leases => "lease pool",
            Area::Traces | Area::Query => "data",
        }
    }
}

/// Reading back versus writing in, for spans and statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Ingest,
    Read,
}

impl Access {
    pub fn key(self) -> &'static str {
        match self {
            Access::Ingest => "ingest",
            Access::Read => "read",
        }
    }
}

/// Names granted: exact ones, prefixes (`"orders.*"` → `orders.`), or all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    all: bool,
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl Names {
    fn add(&mut self, pattern: &str) {
        match pattern.strip_suffix('*') {
            Some("") => self.all = true,
            Some(prefix) => self.prefixes.push(prefix.to_string()),
            None => {
                self.exact.insert(pattern.to_string());
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.all || self.exact.contains(name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }

    fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// Everything one identity may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    ratelimit: Names,
    cache: Names,
    leases: Names,
    traces: HashSet<&'static str>,
    query: HashSet<&'static str>,
}

impl Grant {
    /// May it call the area's service at all?
    pub fn uses(&self, area: Area) -> bool {
        match area {
            Area::RateLimit => !self.ratelimit.is_empty(),
            Area::Cache => !self.cache.is_empty(),
            Area::Leases => !self.leases.is_empty(),
            Area::Traces => !self.traces.is_empty(),
            Area::Query => !self.query.is_empty(),
        }
    }

    /// May it touch this limit, namespace or pool?
    pub fn names(&self, area: Area, name: &str) -> bool {
        match area {
            Area::RateLimit => self.ratelimit.contains(name),
            Area::Cache => self.cache.contains(name),
            Area::Leases => self.leases.contains(name),
            Area::Traces | Area::Query => false,
        }
    }

    /// May it touch every name of the area (a Stats of all namespaces)?
    pub fn all(&self, area: Area) -> bool {
        match area {
            Area::RateLimit => self.ratelimit.all,
            Area::Cache => self.cache.all,
            Area::Leases => self.leases.all,
            Area::Traces | Area::Query => false,
        }
    }

    pub fn access(&self, area: Area, access: Access) -> bool {
        match area {
            Area::Traces => self.traces.contains(access.key()),
            Area::Query => self.query.contains(access.key()),
            _ => false,
        }
    }

    fn merge(&mut self, rule: &GrantRule) {
        for (names, patterns) in [
            (&mut self.ratelimit, &rule.ratelimit),
            (&mut self.cache, &rule.cache),
            (&mut self.leases, &rule.leases),
        ] {
            for pattern in patterns {
                names.add(pattern);
            }
        }
        for access in &rule.traces {
            self.traces.insert(access.key());
        }
        for access in &rule.query {
            self.query.insert(access.key());
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    grant: Vec<GrantRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRule {
    identities: Vec<String>,
    #[serde(default)]
    ratelimit: Vec<String>,
    #[serde(default)]
    cache: Vec<String>,
    #[serde(default)]
    leases: Vec<String>,
    #[serde(default)]
    traces: Vec<AccessKey>,
    #[serde(default)]
    query: Vec<AccessKey>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AccessKey {
    Ingest,
    Read,
}

impl AccessKey {
    fn key(self) -> &'static str {
        match self {
            AccessKey::Ingest => Access::Ingest.key(),
            AccessKey::Read => Access::Read.key(),
        }
    }
}

/// Identities and their grants.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    by_identity: HashMap<String, Arc<Grant>>,
    /// What `"*"` grants: to any authenticated identity not listed, and
    /// merged into those listed.
    anyone: Option<Arc<Grant>>,
}

impl Policy {
    /// Parses a policy file's text; the error names the place in it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut anyone = Grant::default();
        let mut listed: HashMap<String, Grant> = HashMap::new();
        for (i, rule) in file.grant.iter().enumerate() {
            if rule.identities.is_empty() {
                return Err(format!("grant[{i}].identities is empty"));
            }
            for identity in &rule.identities {
                if identity == "*" {
                    anyone.merge(rule);
                } else {
                    listed.entry(identity.clone()).or_default().merge(rule);
                }
            }
        }
        let by_identity = listed
            .into_iter()
            .map(|(identity, mut grant)| {
                grant.merge_grant(&anyone);
                (identity, Arc::new(grant))
            })
            .collect();
        let anyone = (anyone != Grant::default()).then(|| Arc::new(anyone));
        Ok(Self {
            by_identity,
            anyone,
        })
    }

    /// The identity's grant; `None` when the policy gives it nothing.
    pub fn grant(&self, identity: &str) -> Option<Arc<Grant>> {
        self.by_identity
            .get(identity)
            .cloned()
            .or_else(|| self.anyone.clone())
    }
}

impl Grant {
    fn merge_grant(&mut self, other: &Grant) {
        for (mine, theirs) in [
            (&mut self.ratelimit, &other.ratelimit),
            (&mut self.cache, &other.cache),
            (&mut self.leases, &other.leases),
        ] {
            mine.all |= theirs.all;
            mine.exact.extend(theirs.exact.iter().cloned());
            mine.prefixes.extend(theirs.prefixes.iter().cloned());
        }
        self.traces.extend(other.traces.iter().copied());
        self.query.extend(other.query.iter().copied());
    }
}

/// Token hashes and whom each identifies.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    identity: String,
    sha256: String,
}

impl Tokens {
    /// Parses a tokens file's text; the error names the entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let hash = parse_sha256(&entry.sha256)
                .ok_or_else(|| format!("token[{i}].sha256 is not 64 hexadecimal digits"))?;
            if entry.identity.is_empty() {
                return Err(format!("token[{i}].identity is empty"));
            }
            by_hash.insert(hash, Arc::from(entry.identity));
        }
        Ok(Self { by_hash })
    }

    /// Whom the token identifies: one SHA-256 and one hash-map lookup.
    pub fn identify(&self, token: &[u8]) -> Option<Arc<str>> {
        self.by_hash.get(&sha256(token)).cloned()
    }

    /// Every token's hash and identity.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8; 32], &Arc<str>)> {
        self.by_hash.iter()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [[grant]]
        identities = ["checkout"]
        ratelimit = ["checkout.*", "global_api"]
        cache = ["checkout"]
        traces = ["ingest"]

        [[grant]]
        identities = ["*"]
        query = ["ingest"]

        [[grant]]
        identities = ["ops"]
        cache = ["*"]
        traces = ["read"]
        query = ["read"]
    "#;

    #[test]
    fn grants_name_exact_names_prefixes_and_all() {
        let policy = Policy::parse(POLICY).unwrap();
        let checkout = policy.grant("checkout").unwrap();
        assert!(checkout.names(Area::RateLimit, "checkout.pay"));
        assert!(checkout.names(Area::RateLimit, "global_api"));
        assert!(!checkout.names(Area::RateLimit, "global_api_v2"));
        assert!(!checkout.names(Area::RateLimit, "orders.pay"));
        assert!(checkout.names(Area::Cache, "checkout"));
        assert!(!checkout.names(Area::Cache, "orders"));
        assert!(!checkout.all(Area::Cache));
        assert!(!checkout.uses(Area::Leases));
        assert!(checkout.access(Area::Traces, Access::Ingest));
        assert!(!checkout.access(Area::Traces, Access::Read));
        // "*" adds to every listed identity…
        assert!(checkout.access(Area::Query, Access::Ingest));

        let ops = policy.grant("ops").unwrap();
        assert!(ops.all(Area::Cache) && ops.names(Area::Cache, "anything"));
        assert!(ops.access(Area::Query, Access::Read) && ops.access(Area::Query, Access::Ingest));
        assert!(!ops.uses(Area::RateLimit));

        // …and is what an identity the policy does not list gets.
        let stranger = policy.grant("stranger").unwrap();
        assert!(stranger.uses(Area::Query) && !stranger.uses(Area::Cache));
    }

    #[test]
    fn without_a_wildcard_an_unlisted_identity_gets_nothing() {
        let policy = Policy::parse(
            r#"[[grant]]
               identities = ["a"]
               leases = ["db"]"#,
        )
        .unwrap();
        assert!(policy.grant("b").is_none());
        assert!(policy.grant("a").unwrap().names(Area::Leases, "db"));
    }

    #[test]
    fn bad_policy_files_name_what_is_wrong() {
        let unknown =
            Policy::parse("[[grant]]\nidentities = [\"a\"]\ncaches = [\"x\"]").unwrap_err();
        assert!(unknown.contains("caches"), "{unknown}");
        let access =
            Policy::parse("[[grant]]\nidentities = [\"a\"]\ntraces = [\"write\"]").unwrap_err();
        assert!(access.contains("write"), "{access}");
        let empty = Policy::parse("[[grant]]\nidentities = []").unwrap_err();
        assert_eq!(empty, "grant[0].identities is empty");
    }

    #[test]
    fn tokens_are_matched_by_their_sha256() {
        // printf %s test | sha256sum
        let tokens = Tokens::parse(
            r#"[[token]]
               identity = "checkout"
               sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08""#,
        )
        .unwrap();
        assert_eq!(tokens.identify(b"test").as_deref(), Some("checkout"));
        assert_eq!(tokens.identify(b"tesT"), None);
        let bad = Tokens::parse("[[token]]\nidentity = \"a\"\nsha256 = \"abc\"").unwrap_err();
        assert_eq!(bad, "token[0].sha256 is not 64 hexadecimal digits");
    }
}
