//! What the benches share: eda and a raw loop taking turns, and the reports
//! (rates, ratios, latencies, the CPU the host stole meanwhile).

#![allow(dead_code)] // Each bench uses its own part.

use std::future::Future;
use std::time::{Duration, Instant};

/// Runs `eda` and `raw` once per round, the raw loop first in even rounds; their
/// times.
pub async fn take_turns(
    rounds: usize,
    mut eda: impl AsyncFnMut(usize) -> Duration,
    mut raw: impl AsyncFnMut(usize) -> Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut eda_times, mut raw_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            raw_times.push(raw(round).await);
            eda_times.push(eda(round).await);
        } else {
            eda_times.push(eda(round).await);
            raw_times.push(raw(round).await);
        }
    }
    (eda_times, raw_times)
}

pub fn report(
    name: &str,
    count: u64,
    unit: &str,
    eda: &[Duration],
    raw: &[Duration],
    target: &str,
) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rate = |time: &Duration| count as f64 / time.as_secs_f64();
    let total = |times: &[Duration]| times.iter().sum::<Duration>().as_secs_f64();
    // The same work on both sides: a round's ratio of rates is raw / eda time.
    let mut ratios: Vec<f64> = eda
        .iter()
        .zip(raw)
        .map(|(eda, raw)| raw.as_secs_f64() / eda.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{name:<52} {:>9.0} {unit}/s  raw loop {:>9.0}/s  ratio {:.2} ({:.2}-{:.2}; \
         of the totals {:.2})  target {target}",
        median(eda.iter().map(rate).collect()),
        median(raw.iter().map(rate).collect()),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        total(raw) / total(eda),
    );
}

/// A variant's median rate, and its ratio to `raw`'s (the medians of the
/// rounds' ratios).
pub fn report_reference(
    name: &str,
    count: u64,
    unit: &str,
    variant: &[Duration],
    raw: &[Duration],
) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rate = |time: &Duration| count as f64 / time.as_secs_f64();
    let ratios = variant
        .iter()
        .zip(raw)
        .map(|(variant, raw)| raw.as_secs_f64() / variant.as_secs_f64());
    println!(
        "{name:<52} {:>9.0} {unit}/s  {:.2} x the raw loop",
        median(variant.iter().map(rate).collect()),
        median(ratios.collect()),
    );
}

pub fn report_latency(name: &str, mut latencies: Vec<Duration>, target: &str) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<52} median {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  target {target}",
        micros(at(0.5)),
        micros(at(0.99)),
        micros(at(1.0)),
    );
}

/// CPU time the hypervisor gave to other machines (`steal` in /proc/stat), in
/// clock ticks over all CPUs; `None` where there is no /proc/stat.
pub fn stolen_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}

/// Runs `scenario`, then prints the share of the CPUs stolen meanwhile: a run
/// with much steal is noise, not a measurement.
pub async fn watch_steal(scenario: impl Future<Output = ()>) {
    let (before, start) = (stolen_ticks(), Instant::now());
    scenario.await;
    if let (Some(before), Some(after)) = (before, stolen_ticks()) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // USER_HZ: 100 ticks per second.
        let stolen = (after - before) as f64 / 100.0 / cpus / start.elapsed().as_secs_f64();
        println!(
            "{:>52} (CPU stolen by the host: {:.0}%)",
            "",
            stolen * 100.0
        );
    }
}
