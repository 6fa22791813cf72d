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
    /// None when `query.analysis_memo_bytes` is 0: every call analyzes.
    cache: Option<Cache<Key, Arc<Analysis>, ByBytes>>,
}

impl AnalysisMemo {
    /// Keeps at most `capacity_bytes` of texts and analyses (0: none).
    pub fn new(capacity_bytes: u64) -> Self {
        // quick_cache sizes its tables from an estimate of the entries;
        // a short statement with its analysis weighs about 1 KiB.
        let estimated_items = usize::try_from(capacity_bytes / 1024).unwrap_or(usize::MAX);
        Self {
            cache: (capacity_bytes > 0).then(|| {
                Cache::with_weighter(estimated_items.clamp(16, 1 << 20), capacity_bytes, ByBytes)
            }),
        }
    }

    /// Keeps the analysis of `sql` in `dialect` (nothing when the memo
    /// has no bytes).
    pub fn remember(&self, sql: &str, dialect: Dialect, analysis: Arc<Analysis>) {
        if let Some(cache) = &self.cache {
            cache.insert(
                Key {
                    dialect,
                    sql: sql.into(),
                },
                analysis,
            );
        }
    }

    /// The analysis of `sql` in `dialect` if it was made before.
    pub fn get(&self, sql: &str, dialect: Dialect) -> Option<Arc<Analysis>> {
        self.cache.as_ref()?.get(&KeyRef { dialect, sql })
    }

    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::analyze::analyze;
    use crate::query::rules::RuleSettings;

    #[test]
    fn the_same_text_is_analyzed_once_and_a_different_one_never_shares() {
        let memo = AnalysisMemo::new(1024 * 1024);
        let settings = RuleSettings::default();
        let mut runs = 0;
        let mut get = |sql: &str, d: Dialect| {
            memo.get(sql, d).unwrap_or_else(|| {
                runs += 1;
                let analysis = Arc::new(analyze(sql, d, &settings));
                memo.remember(sql, d, analysis.clone());
                analysis
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

    #[test]
    fn a_memo_of_no_bytes_keeps_nothing() {
        let memo = AnalysisMemo::new(0);
        let settings = RuleSettings::default();
        let analysis = Arc::new(analyze("SELECT 1", Dialect::Postgres, &settings));
        memo.remember("SELECT 1", Dialect::Postgres, analysis);
        assert!(memo.get("SELECT 1", Dialect::Postgres).is_none());
        assert!(memo.is_empty());
    }
}
