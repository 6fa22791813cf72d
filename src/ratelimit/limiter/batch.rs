//! All-or-nothing batches: every bucket of the batch is locked (in shard
//! order, so two batches never deadlock), every decision made, and either
//! all are applied or none.

use super::*;

impl Inner {
    pub(super) fn batch_atomic(
        &self,
        prepared: &[Prepared<'_>],
        dry_run: bool,
    ) -> Result<Vec<Outcome>, RateLimitError> {
        // Sum the tokens per distinct bucket: a bucket named twice must hold both.
        let mut distinct: Vec<(KeyRef<'_>, Params, u64, usize)> =
            Vec::with_capacity(prepared.len());
        // Positions in `distinct`, found by the keys' precomputed hashes.
        let mut index_of: hashbrown::HashTable<usize> =
            hashbrown::HashTable::with_capacity(prepared.len());
        let mut item_bucket: Vec<usize> = Vec::with_capacity(prepared.len());
        for p in prepared {
            let found = index_of
                .find(p.key.hash, |&i| distinct[i].0 == p.key)
                .copied();
            let index = match found {
                Some(index) => index,
                None => {
                    distinct.push((p.key, p.params, 0, self.shard_of(p.key)));
                    let index = distinct.len() - 1;
                    index_of.insert_unique(p.key.hash, index, |&i| distinct[i].0.hash);
                    index
                }
            };
            distinct[index].2 = distinct[index].2.saturating_add(p.tokens);
            item_bucket.push(index);
        }
        // Lock every shard involved, in index order, so batches cannot deadlock.
        let mut involved = [false; SHARDS];
        for d in &distinct {
            involved[d.3] = true;
        }
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = involved
            .iter()
            .enumerate()
            .filter(|(_, used)| **used)
            .map(|(i, _)| (i, self.shards[i].lock()))
            .collect();
        let mut slot = [usize::MAX; SHARDS];
        for (position, (shard, _)) in guards.iter().enumerate() {
            slot[*shard] = position;
        }
        let now = self.clock.now_ns();

        // Phase 1: would every bucket grant its sum?
        let mut all_allowed = true;
        let mut new_buckets = 0usize;
        for (key, params, tokens, shard) in &distinct {
            let Some(shard) = guards.get_mut(slot[*shard]).map(|(_, g)| &mut **g) else {
                return Err(RateLimitError::Internal("batch shard not locked".into()));
            };
            let allowed = match shard.map.get(key) {
                Some(b) if b.queue.is_some() => false,
                Some(b) => b.state.clone().decide(params, now, *tokens, false).allowed,
                None => {
                    new_buckets += 1;
                    self.fresh_state(params)
                        .decide(params, now, *tokens, false)
                        .allowed
                }
            };
            all_allowed &= allowed;
        }
        let consume = all_allowed && !dry_run;
        if consume
            && self
                .buckets
                .load(Ordering::Relaxed)
                .saturating_add(new_buckets)
                > self.max_buckets
            && let Some(p) = prepared.first()
        {
            p.limit.counters.table_full.inc();
            return Err(RateLimitError::TableFull {
                limit: p.limit.name.clone(),
                max: self.max_buckets,
            });
        }

        // Phase 2: consume (or not) and report each bucket's state.
        let mut per_bucket: Vec<Decision> = Vec::with_capacity(distinct.len());
        for (key, params, tokens, shard) in &distinct {
            let Some(shard) = guards.get_mut(slot[*shard]).map(|(_, g)| &mut **g) else {
                return Err(RateLimitError::Internal("batch shard not locked".into()));
            };
            let decision = match shard.map.get_mut(key) {
                Some(bucket) => {
                    let mut d = bucket.state.decide(params, now, *tokens, consume);
                    if bucket.queue.is_some() {
                        d.allowed = false;
                    }
                    d
                }
                None => {
                    let mut state = self.fresh_state(params);
                    let d = state.decide(params, now, *tokens, consume);
                    if consume {
                        self.buckets.fetch_add(1, Ordering::Relaxed);
                        shard.map.insert(*key, Bucket { state, queue: None });
                    }
                    d
                }
            };
            per_bucket.push(decision);
        }
        drop(guards);

        Ok(prepared
            .iter()
            .zip(item_bucket)
            .map(|(p, index)| {
                let mut outcome =
                    Outcome::from(per_bucket.get(index).copied().unwrap_or(Decision {
                        allowed: false,
                        remaining: 0,
                        retry_after_ns: 0,
                        reset_after_ns: 0,
                        limit: p.params.burst,
                    }));
                outcome.allowed = all_allowed;
                if all_allowed {
                    outcome.retry_after = Duration::ZERO;
                }
                outcome
            })
            .collect())
    }
}
