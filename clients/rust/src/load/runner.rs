//! The two loops. Closed: `concurrency` tasks each call, wait, call again.
//! Open: calls start on a fixed schedule whatever the server's speed, and
//! each latency counts from the scheduled start (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::args::{LoadArgs, Wire};
use super::keys::KeyPicker;
use super::raw::{self, RawCaller, RawLink, Requests};
use super::report::{Latency, Report};
use super::scenario::{Caller, micros};

/// The connections of a run: tonic channels, or raw HTTP/2 ones with the
/// requests encoded for them.
pub enum Links {
    Tonic(Vec<Channel>),
    Raw(Vec<RawLink>, Arc<Requests>),
}

impl Links {
    /// `--connections` connections to `--target` on the chosen wire.
    pub async fn connect(args: &LoadArgs) -> Result<Self, String> {
        let count = args.connections.max(1);
        match args.wire {
            Wire::Tonic => {
                let mut channels = Vec::with_capacity(count);
                for _ in 0..count {
                    let channel = crate::connect(&args.target, Duration::from_secs(10))
                        .await
                        .map_err(|e| e.to_string())?;
                    channels.push(channel);
                }
                Ok(Self::Tonic(channels))
            }
            Wire::Raw => {
                let requests = Requests::for_scenario(args)?;
                let mut links = Vec::with_capacity(count);
                for _ in 0..count {
                    links.push(raw::connect(&args.target).await?);
                }
                Ok(Self::Raw(links, requests))
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Tonic(channels) => channels.len(),
            Self::Raw(links, _) => links.len(),
        }
    }

    /// A caller on the `i`th connection (round robin).
    fn caller(&self, i: usize, args: &Arc<LoadArgs>, keys: &KeyPicker) -> AnyCaller {
        match self {
            Self::Tonic(channels) => AnyCaller::Tonic(Box::new(Caller::new(
                args.scenario,
                args.clone(),
                keys.clone(),
                channels[i % channels.len()].clone(),
            ))),
            Self::Raw(links, requests) => AnyCaller::Raw(RawCaller::new(
                links[i % links.len()].clone(),
                requests.clone(),
                keys.clone(),
            )),
        }
    }
}

enum AnyCaller {
    /// Boxed: tonic's caller holds a client per service.
    Tonic(Box<Caller>),
    Raw(RawCaller),
}

impl AnyCaller {
    async fn call(&mut self, rng: &mut SmallRng) -> Result<u64, tonic::Status> {
        match self {
            Self::Tonic(caller) => caller.call(rng).await,
            Self::Raw(caller) => caller.call(rng).await,
        }
    }
}

/// Per-task results, merged at the end.
struct Tally {
    histogram: Histogram<u64>,
    ok: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Self, String> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?,
            ok: 0,
            items: 0,
            errors: BTreeMap::new(),
        })
    }

    fn record(&mut self, result: Result<u64, tonic::Status>, latency: Duration) {
        match result {
            Ok(items) => {
                self.ok += 1;
                self.items += items;
                // Values above the bound are clamped rather than lost.
                self.histogram.saturating_record(micros(latency));
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
    }

    fn merge(&mut self, other: Tally) -> Result<(), String> {
        self.histogram
            .add(&other.histogram)
            .map_err(|e| e.to_string())?;
        self.ok += other.ok;
        self.items += other.items;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        Ok(())
    }
}

pub async fn run(args: LoadArgs, links: Links) -> Result<Report, String> {
    if links.len() == 0 {
        return Err("no connections".into());
    }
    let keys = KeyPicker::new(args.keys, args.distribution, args.zipf_exponent)?;
    let args = Arc::new(args);
    // The raw wire runs no scenario that reads what it did not write.
    if let Links::Tonic(channels) = &links {
        Caller::new(
            args.scenario,
            args.clone(),
            keys.clone(),
            channels[0].clone(),
        )
        .prefill()
        .await
        .map_err(|e| format!("prefilling the keys failed: {e}"))?;
    }
    match args.rate {
        Some(rate) => open_loop(args, links, keys, rate).await,
        None => closed_loop(args, links, keys).await,
    }
}

async fn closed_loop(args: Arc<LoadArgs>, links: Links, keys: KeyPicker) -> Result<Report, String> {
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let mut caller = links.caller(i, &args, &keys);
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(i as u64);
            let mut tally = Tally::new()?;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = caller.call(&mut rng).await;
                if sent >= measure_from {
                    tally.record(result, sent.elapsed());
                }
            }
            Ok::<_, String>(tally)
        }));
    }
    let mut total = Tally::new()?;
    for task in tasks {
        total.merge(task.await.map_err(|e| e.to_string())??)?;
    }
    Ok(report(&args, total, 0, "closed"))
}

async fn open_loop(
    args: Arc<LoadArgs>,
    links: Links,
    keys: KeyPicker,
    rate: u64,
) -> Result<Report, String> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let end = measure_from + args.duration;
    let inflight = Arc::new(Semaphore::new(args.max_inflight.max(1)));
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Result<u64, tonic::Status>, Duration)>();
    let mut skipped = 0u64;
    let mut k: u64 = 0;
    let collector = tokio::spawn(async move {
        let mut tally = Tally::new()?;
        while let Some((result, latency)) = rx.recv().await {
            tally.record(result, latency);
        }
        Ok::<_, String>(tally)
    });
    loop {
        let intended = started + interval.mul_f64(k as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let measured = intended >= measure_from;
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            if measured {
                skipped += 1;
            }
            k += 1;
            continue;
        };
        // A caller is a handful of channel clones: cheap beside the call.
        let mut caller = links.caller(k as usize, &args, &keys);
        let tx = tx.clone();
        let seed = k;
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let result = caller.call(&mut rng).await;
            let latency = intended.elapsed();
            drop(permit);
            if measured {
                let _ = tx.send((result, latency));
            }
        });
        k += 1;
    }
    drop(tx);
    // Wait for the calls still running.
    let _ = inflight.acquire_many(args.max_inflight.max(1) as u32).await;
    let total = collector.await.map_err(|e| e.to_string())??;
    Ok(report(&args, total, skipped, "open"))
}

fn report(args: &LoadArgs, tally: Tally, skipped: u64, mode: &'static str) -> Report {
    let secs = args.duration.as_secs_f64();
    Report {
        scenario: clap::ValueEnum::to_possible_value(&args.scenario)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        mode,
        concurrency: (mode == "closed").then_some(args.concurrency),
        target_rate: args.rate,
        connections: args.connections,
        measured_secs: secs,
        ok: tally.ok,
        errors: tally.errors,
        skipped,
        requests_per_sec: tally.ok as f64 / secs,
        items_per_sec: tally.items as f64 / secs,
        latency: Latency::from(&tally.histogram),
    }
}
