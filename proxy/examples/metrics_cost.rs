//! What counting costs per command: the work metrics add to a command's path (look-up of the
//! counter, two clock reads, the result and latency adds, and a backend round-trip
//! observation), timed in a loop with metrics on and off. Not a test: it prints numbers, to set
//! beside the proxy's CPU time per request (README, "Monitoring").
//!
//!   cargo run --release -p moonraft-proxy --example metrics_cost

use moonraft_proxy::command;
use moonraft_proxy::latency::LatencyHistogram;
use moonraft_proxy::metrics::ProxyMetrics;
use std::hint::black_box;
use std::time::{Duration, Instant};

const N: u32 = 5_000_000;

/// Nanoseconds per command of what metrics add, median of 5 runs.
fn per_command(metrics: &ProxyMetrics, histogram: &LatencyHistogram, on: bool) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for i in 0..N {
                let name: &[u8] = if i % 2 == 0 { b"SET" } else { b"GET" };
                let spec = command::lookup(black_box(name));
                let meter = metrics.meter(spec, name, Instant::now());
                let reply: &[u8] = if i % 100 == 0 { b"-MOVED 1 a:1\r\n" } else { b"+OK\r\n" };
                metrics.record(meter, black_box(reply), Instant::now());
                if on {
                    histogram.observe(black_box(Duration::from_micros(u64::from(i % 700))));
                }
            }
            started.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn main() {
    let histogram = LatencyHistogram::default();
    let on = per_command(&ProxyMetrics::new(true), &histogram, true);
    let off = per_command(&ProxyMetrics::new(false), &histogram, false);
    println!("per command, median of 5 × {N}: metrics on {on:.1} ns, off {off:.1} ns (the command lookup and clock reads both do), added {:.1} ns", on - off);
}
