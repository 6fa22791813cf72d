//! Per-namespace counters: what Stats answers and /metrics shows. Atomics
//! bumped on the request path; the Prometheus collector reads them at scrape
//! time, so a request pays no label lookup.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::CacheError;
use super::compress::Packing;

#[derive(Debug, Default)]
pub struct Counters {
    pub hot_hits: AtomicU64,
    pub hot_misses: AtomicU64,
    pub store_hits: AtomicU64,
    pub store_misses: AtomicU64,
    /// Signed: a decrement racing an increment never wraps.
    pub entries: AtomicI64,
    pub raw_bytes: AtomicI64,
    pub stored_bytes: AtomicI64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    /// Values written, by what compression made of them ([`Packing`] order).
    pub packed: [AtomicU64; 4],
}

/// A point-in-time copy of one namespace's counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub hot_hits: u64,
    pub hot_misses: u64,
    pub store_hits: u64,
    pub store_misses: u64,
    pub entries: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Values written by outcome: small, skipped, not smaller, gzip.
    pub packed: [u64; 4],
}

impl Snapshot {
    pub fn add(&mut self, o: &Snapshot) {
        self.hot_hits += o.hot_hits;
        self.hot_misses += o.hot_misses;
        self.store_hits += o.store_hits;
        self.store_misses += o.store_misses;
        self.entries += o.entries;
        self.raw_bytes += o.raw_bytes;
        self.stored_bytes += o.stored_bytes;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        for (mine, theirs) in self.packed.iter_mut().zip(o.packed) {
            *mine += theirs;
        }
    }
}

/// The label of each [`Packing`] outcome, in the order of `Counters::packed`.
const PACKING_OUTCOMES: [&str; 4] = ["small", "skipped", "not_smaller", "gzip"];

fn packing_index(packing: Packing) -> usize {
    match packing {
        Packing::Small => 0,
        Packing::Skipped => 1,
        Packing::NotSmaller => 2,
        Packing::Gzip => 3,
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn hot_hit(&self) {
        bump(&self.hot_hits);
    }
    pub fn hot_miss(&self) {
        bump(&self.hot_misses);
    }
    pub fn store_hit(&self) {
        bump(&self.store_hits);
    }
    pub fn store_miss(&self) {
        bump(&self.store_misses);
    }
    pub fn evicted(&self) {
        bump(&self.evictions);
    }
    pub fn packed(&self, packing: Packing) {
        bump(&self.packed[packing_index(packing)]);
    }

    /// An entry appeared (`+1`) or went away (`-1`), or was replaced (`0`),
    /// with the change in raw and stored bytes.
    pub fn resize(&self, entries: i64, raw: i64, stored: i64) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.raw_bytes.fetch_add(raw, Ordering::Relaxed);
        self.stored_bytes.fetch_add(stored, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gauge = |c: &AtomicI64| u64::try_from(c.load(Ordering::Relaxed)).unwrap_or(0);
        Snapshot {
            hot_hits: get(&self.hot_hits),
            hot_misses: get(&self.hot_misses),
            store_hits: get(&self.store_hits),
            store_misses: get(&self.store_misses),
            entries: gauge(&self.entries),
            raw_bytes: gauge(&self.raw_bytes),
            stored_bytes: gauge(&self.stored_bytes),
            evictions: get(&self.evictions),
            expirations: get(&self.expirations),
            packed: self.packed.each_ref().map(get),
        }
    }
}

/// Every namespace's counters, bounded by `cache.max_namespaces`.
#[derive(Debug)]
pub struct Namespaces {
    map: RwLock<HashMap<String, Arc<Counters>>>,
    max: usize,
}

impl Namespaces {
    pub fn new(max: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            max,
        }
    }

    /// The counters of a namespace that has (or had) entries.
    pub fn get(&self, namespace: &str) -> Option<Arc<Counters>> {
        self.map.read().get(namespace).cloned()
    }

    /// The counters of a namespace about to receive an entry; a new
    /// namespace beyond the limit is refused.
    pub fn get_or_create(&self, namespace: &str) -> Result<Arc<Counters>, CacheError> {
        if let Some(c) = self.get(namespace) {
            return Ok(c);
        }
        let mut map = self.map.write();
        if let Some(c) = map.get(namespace) {
            return Ok(c.clone());
        }
        if map.len() >= self.max {
            return Err(CacheError::TooManyNamespaces {
                namespace: namespace.to_string(),
                max: self.max,
            });
        }
        let c = Arc::new(Counters::default());
        map.insert(namespace.to_string(), c.clone());
        Ok(c)
    }

    /// At start: namespaces found in the store count even above the limit.
    pub fn load(&self, namespace: &str) -> Arc<Counters> {
        self.map
            .write()
            .entry(namespace.to_string())
            .or_default()
            .clone()
    }

    /// Sorted by namespace.
    pub fn snapshot(&self) -> Vec<(String, Snapshot)> {
        let mut all: Vec<(String, Snapshot)> = self
            .map
            .read()
            .iter()
            .map(|(n, c)| (n.clone(), c.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NsLabel {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    namespace: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    outcome: &'static str,
}

/// Per-namespace series on /metrics, read from the counters at scrape time.
#[derive(Debug)]
pub struct CacheCollector(pub Arc<Namespaces>);

/// A series' name, help, type, and how to read its value.
type SeriesOf<T> = (&'static str, &'static str, MetricType, fn(&T) -> u64);

/// One metric family of constant values read at scrape time.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(metric)?,
            _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(metric)?,
        }
    }
    Ok(())
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.snapshot();
        if all.is_empty() {
            return Ok(());
        }
        let ns = |n: &str| NsLabel {
            namespace: n.to_string(),
        };
        let tier = |n: &str, tier| TierLabels {
            namespace: n.to_string(),
            tier,
        };
        let hits: Vec<_> = all
            .iter()
            .flat_map(|(n, s)| {
                [
                    (tier(n, "hot"), s.hot_hits),
                    (tier(n, "store"), s.store_hits),
                ]
            })
            .collect();
        family(
            &mut encoder,
            "gantry_cache_hits",
            "Reads answered, by namespace and tier",
            MetricType::Counter,
            &hits,
        )?;
        let misses: Vec<_> = all
            .iter()
            .flat_map(|(n, s)| {
                [
                    (tier(n, "hot"), s.hot_misses),
                    (tier(n, "store"), s.store_misses),
                ]
            })
            .collect();
        family(
            &mut encoder,
            "gantry_cache_misses",
            "Reads a tier could not answer (store misses are misses of the whole cache)",
            MetricType::Counter,
            &misses,
        )?;
        let per_namespace: [SeriesOf<Snapshot>; 5] = [
            (
                "gantry_cache_evictions",
                "Entries evicted from the hot tier (they stay in the store)",
                MetricType::Counter,
                |s| s.evictions,
            ),
            (
                "gantry_cache_expirations",
                "Entries removed because their TTL ran out",
                MetricType::Counter,
                |s| s.expirations,
            ),
            (
                "gantry_cache_entries",
                "Live entries",
                MetricType::Gauge,
                |s| s.entries,
            ),
            (
                "gantry_cache_raw_bytes",
                "Bytes of the values as they were put",
                MetricType::Gauge,
                |s| s.raw_bytes,
            ),
            (
                "gantry_cache_stored_bytes",
                "Bytes of the values as stored (after compression)",
                MetricType::Gauge,
                |s| s.stored_bytes,
            ),
        ];
        for (name, help, kind, value) in per_namespace {
            let rows: Vec<(NsLabel, u64)> = all.iter().map(|(n, s)| (ns(n), value(s))).collect();
            family(&mut encoder, name, help, kind, &rows)?;
        }
        let packed: Vec<_> = all
            .iter()
            .flat_map(|(n, s)| {
                PACKING_OUTCOMES
                    .iter()
                    .zip(s.packed)
                    .map(|(outcome, count)| {
                        let labels = OutcomeLabels {
                            namespace: n.to_string(),
                            outcome,
                        };
                        (labels, count)
                    })
            })
            .collect();
        family(
            &mut encoder,
            "gantry_cache_packed",
            "Values written, by what compression made of them: small (under compress_min_bytes), \
             skipped (their sample looked incompressible, gzip not tried), not_smaller, gzip",
            MetricType::Counter,
            &packed,
        )?;
        Ok(())
    }
}

/// Watch and hot-tier series, read at scrape time.
pub struct WatchCollector(pub super::CacheEngine);

impl std::fmt::Debug for WatchCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchCollector")
    }
}

/// One series without labels, read at scrape time.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric),
    }
}

impl Collector for WatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache = &self.0;
        single(
            &mut encoder,
            "gantry_cache_watchers",
            "Watch streams open now",
            MetricType::Gauge,
            cache.watchers() as u64,
        )?;
        single(
            &mut encoder,
            "gantry_cache_watch_resyncs",
            "Resync events sent to watchers that fell behind",
            MetricType::Counter,
            cache.resyncs(),
        )?;
        single(
            &mut encoder,
            "gantry_cache_hot_entries",
            "Entries in the in-memory hot tier",
            MetricType::Gauge,
            cache.hot_entries() as u64,
        )?;
        let (keys, bytes) = cache.write_behind();
        single(
            &mut encoder,
            "gantry_cache_write_behind_keys",
            "Keys written by calls but not yet to the store (periodic durability)",
            MetricType::Gauge,
            keys as u64,
        )?;
        single(
            &mut encoder,
            "gantry_cache_write_behind_bytes",
            "Bytes of keys and values written by calls but not yet to the store (cache.write_behind_bytes bounds it)",
            MetricType::Gauge,
            bytes as u64,
        )?;
        let (written, failed) = cache.write_behind_totals();
        single(
            &mut encoder,
            "gantry_cache_write_behind_written",
            "Keys written to the store by write-behind drains (a key rewritten between two drains once)",
            MetricType::Counter,
            written,
        )?;
        single(
            &mut encoder,
            "gantry_cache_write_behind_failed_drains",
            "Write-behind drains the store refused (what they held stays staged and is retried)",
            MetricType::Counter,
            failed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_bounded_but_loading_is_not() {
        let ns = Namespaces::new(2);
        ns.get_or_create("a").unwrap();
        ns.get_or_create("b").unwrap();
        ns.get_or_create("a").unwrap();
        assert!(matches!(
            ns.get_or_create("c"),
            Err(CacheError::TooManyNamespaces { max: 2, .. })
        ));
        ns.load("c").resize(1, 10, 4);
        let all = ns.snapshot();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].1.entries, 1);
        assert_eq!(all[2].1.stored_bytes, 4);
    }
}
