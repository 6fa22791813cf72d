//! Analyses of texts seen before. Services send the same statements over
//! and over (with bind parameters, the very same text), and an analysis —
//! a parse and the rules — costs many times a fingerprint. Keyed by the
//! exact text and dialect: findings can depend on literals (`LIMIT 5000
//! OFFSET 100000`), so two texts never share an entry, however alike. The
//! rules' settings are fixed for the life of the process (`[query]` is read
//! at start). Bounded by bytes; least recently used first out.

use std::hash::Hash;
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use super::analyze::Analysis;
use super::dialect::Dialect;

/// Bytes of texts and analyses kept.
const CAPACITY_BYTES: u64 = 16 * 1024 * 1024;
/// Roughly what one entry costs besides its texts.
const ENTRY_OVERHEAD: u64 = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    dialect: Dialect,
    sql: Box<str>,
}

/// A lookup without allocating the key; hashes as [`Key`] does.
#[derive(Hash)]
struct KeyRef<'a> {
    dialect: Dialect,
    sql: &'a str,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.dialect == key.dialect && self.sql == &*key.sql
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Arc<Analysis>> for ByBytes {
    fn weight(&self, key: &Key, analysis: &Arc<Analysis>) -> u64 {
        let texts = key.sql.len()
            + analysis.fingerprinted.normalized.len()
            + analysis.tables.iter().map(String::len).sum::<usize>()
            + analysis
                .findings
                .iter()
                .map(|f| f.message.len() + f.snippet.len())
                .sum::<usize>();
        texts as u64 + ENTRY_OVERHEAD
    }
}

pub struct AnalysisMemo {
    cache: Cache<Key, Arc<Analysis>, ByBytes>,
}

impl Default for AnalysisMemo {
    fn default() -> Self {
        Self {
            cache: Cache::with_weighter(16_384, CAPACITY_BYTES, ByBytes),
        }
    }
}

impl AnalysisMemo {
    /// The analysis of `sql` in `dialect`: remembered, or made by `analyze`
    /// and remembered.
    pub fn get_or_analyze(
        &self,
        sql: &str,
        dialect: Dialect,
        analyze: impl FnOnce() -> Analysis,
    ) -> Arc<Analysis> {
        if let Some(hit) = self.cache.get(&KeyRef { dialect, sql }) {
            return hit;
        }
        let analysis = Arc::new(analyze());
        self.cache.insert(
            Key {
                dialect,
                sql: sql.into(),
            },
            analysis.clone(),
        );
        analysis
    }

    /// The analysis of `sql` in `dialect` if it was made before.
    pub fn get(&self, sql: &str, dialect: Dialect) -> Option<Arc<Analysis>> {
        self.cache.get(&KeyRef { dialect, sql })
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::analyze::analyze;
    use crate::query::rules::RuleSettings;

    #[test]
    fn the_same_text_is_analyzed_once_and_a_different_one_never_shares() {
        let memo = AnalysisMemo::default();
        let settings = RuleSettings::default();
        let mut runs = 0;
        let mut get = |sql: &str, d: Dialect| {
            memo.get_or_analyze(sql, d, || {
                runs += 1;
                analyze(sql, d, &settings)
            })
        };
        let a = get("SELECT id FROM t LIMIT 10 OFFSET 5", Dialect::Postgres);
        let again = get("SELECT id FROM t LIMIT 10 OFFSET 5", Dialect::Postgres);
        assert!(Arc::ptr_eq(&a, &again));
        // Same fingerprint, different findings (a large offset): its own entry.
        let large = get("SELECT id FROM t LIMIT 10 OFFSET 500000", Dialect::Postgres);
        assert_eq!(a.fingerprinted.fingerprint, large.fingerprinted.fingerprint);
        assert_ne!(a.findings, large.findings);
        // The dialect is part of the key.
        let _ = get("SELECT id FROM t LIMIT 10 OFFSET 5", Dialect::Mysql);
        assert_eq!(runs, 3);
        assert_eq!(memo.len(), 3);
    }
}
