//! gantry's fingerprints beside pg_query's (libpg_query: PostgreSQL's own
//! parser) on the same corpus: the speed of each, and the share of queries
//! that both put in the same groups.
//!
//! The corpus is `benches/corpus/queries.sql` (OLTP statements and TPC-H
//! queries) with variants of each statement: other literal values, other
//! whitespace and line breaks, other keyword and identifier case, and
//! comments — changes that must not change a fingerprint. A query agrees when
//! the set of corpus queries sharing its gantry fingerprint is the set
//! sharing its pg_query fingerprint.
//!
//! Run (needs libclang-dev to build pg_query):
//!   cargo run --release --features pg_query --example fingerprint_agreement -- [variants]
//! It prints one JSON line for scripts/bench, then a readable summary.

use std::collections::HashMap;
use std::time::Instant;

#[path = "../benches/corpus/mod.rs"]
mod corpus;

use gantry::query::dialect::Dialect;
use gantry::query::fingerprint::fingerprint;
use gantry::query::lexer::{Kind, Lexer};

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One variant of `sql`: literals get other values, whitespace other
/// shapes, unquoted words another case, and sometimes a comment.
fn variant(sql: &str, rng: &mut Rng) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    if rng.below(3) == 0 {
        out.push_str("/* request ");
        out.push_str(&rng.below(100_000).to_string());
        out.push_str(" */ ");
    }
    for token in Lexer::new(sql, Dialect::Postgres) {
        match token.kind {
            Kind::Space if token.text.starts_with("--") || token.text.starts_with("/*") => {
                out.push_str(token.text)
            }
            Kind::Space => out.push_str(["  ", "\n    ", " ", "\t"][rng.below(4) as usize]),
            Kind::Literal if token.text.starts_with('\'') => {
                let inner = &token.text[1..token.text.len().saturating_sub(1)];
                // Dates and intervals keep a valid shape; other strings change.
                if inner.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    out.push_str(token.text);
                } else {
                    out.push_str(&format!("'v{}'", rng.below(1_000_000)));
                }
            }
            Kind::Literal if token.text.contains('.') => {
                out.push_str(&format!("{}.{:02}", rng.below(1000), rng.below(100)))
            }
            Kind::Literal if token.text.bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str(&rng.below(100_000).to_string())
            }
            Kind::Word => match rng.below(3) {
                0 => out.push_str(&token.text.to_ascii_uppercase()),
                1 => out.push_str(&token.text.to_ascii_lowercase()),
                _ => out.push_str(token.text),
            },
            _ => out.push_str(token.text),
        }
    }
    out
}

/// For each query, the indices of the queries with the same key.
fn groups(keys: &[String]) -> Vec<Vec<usize>> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        by_key.entry(k).or_default().push(i);
    }
    keys.iter().map(|k| by_key[k.as_str()].clone()).collect()
}

fn main() {
    // `-- probe SQL...`: both fingerprints of each statement given.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        for sql in &args[1..] {
            let theirs =
                pg_query::fingerprint(sql, 0, 0).map_or_else(|e| format!("error: {e}"), |f| f.hex);
            println!(
                "gantry {} pg_query {theirs}  {sql}",
                fingerprint(sql, Dialect::Postgres).fingerprint
            );
        }
        return;
    }
    let variants: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let base = corpus::queries();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut queries = Vec::new();
    for q in &base {
        queries.push(q.clone());
        for _ in 0..variants {
            queries.push(variant(q, &mut rng));
        }
    }

    // Speed: several passes over the corpus each.
    let passes = 20;
    let started = Instant::now();
    let mut gantry_keys = Vec::new();
    for _ in 0..passes {
        gantry_keys = queries
            .iter()
            .map(|q| fingerprint(q, Dialect::Postgres).fingerprint)
            .collect();
    }
    let gantry_per_sec = (queries.len() * passes) as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut pg_keys = Vec::new();
    for _ in 0..passes {
        pg_keys = queries
            .iter()
            .map(|q| match pg_query::fingerprint(q, 0, 0) {
                Ok(f) => f.hex,
                Err(e) => format!("error: {e}"),
            })
            .collect();
    }
    let pg_per_sec = (queries.len() * passes) as f64 / started.elapsed().as_secs_f64();
    let pg_errors = pg_keys.iter().filter(|k| k.starts_with("error")).count();

    let (ours, theirs) = (groups(&gantry_keys), groups(&pg_keys));
    let disagreeing: Vec<usize> = (0..queries.len())
        .filter(|&i| ours[i] != theirs[i])
        .collect();
    let agreement = 1.0 - disagreeing.len() as f64 / queries.len() as f64;
    let distinct = |keys: &[String]| keys.iter().collect::<std::collections::HashSet<_>>().len();

    println!(
        "{{\"queries\":{},\"gantry_per_sec\":{:.0},\"pg_query_per_sec\":{:.0},\"agreement\":{:.4},\"gantry_groups\":{},\"pg_query_groups\":{},\"pg_query_errors\":{}}}",
        queries.len(),
        gantry_per_sec,
        pg_per_sec,
        agreement,
        distinct(&gantry_keys),
        distinct(&pg_keys),
        pg_errors
    );
    eprintln!(
        "{} queries ({} statements x {} variants + originals), one thread:",
        queries.len(),
        base.len(),
        variants
    );
    eprintln!(
        "  gantry   {gantry_per_sec:>10.0} fingerprints/s, {} groups",
        distinct(&gantry_keys)
    );
    eprintln!(
        "  pg_query {pg_per_sec:>10.0} fingerprints/s, {} groups ({pg_errors} errors)",
        distinct(&pg_keys)
    );
    eprintln!(
        "  agreement {:.2}% of queries in the same groups",
        agreement * 100.0
    );
    for &i in disagreeing.iter().take(5) {
        eprintln!(
            "  differs: {}",
            queries[i].chars().take(160).collect::<String>()
        );
    }
}
