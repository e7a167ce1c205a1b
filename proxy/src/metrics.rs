//! The proxy's Prometheus metrics (`GET /metrics` on `metrics_address`, served by the binary).
//!
//! Counted on the hot path with plain relaxed atomic adds into fixed arrays — one slot per
//! command of the command table, one per result kind, one per latency bucket — so a command
//! costs no lock, no hashing of label sets and no allocation; the label sets and the text are
//! made only when someone scrapes. `prometheus-client` does the encoding (a `Collector` that
//! reads the arrays), so the output follows the OpenMetrics text format that Prometheus reads.

use crate::command::{self, CommandSpec};
use crate::latency::LatencyHistogram;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How a command ended, from the first bytes of its reply.
pub const RESULTS: [&str; 6] = ["ok", "error", "moved", "ask", "tryagain", "crossslot"];

/// Commands between proxies, besides `command::LOCAL_COMMANDS` (answered by the proxy itself).
const PEER_COMMANDS: &[&str] = &["umforward", "umpublish", "umread", "umsync"];

/// The names counted besides the data commands, in counter order (then `other`).
fn control_commands() -> impl Iterator<Item = &'static str> {
    command::LOCAL_COMMANDS.iter().chain(PEER_COMMANDS).copied()
}

/// Counters of one command name.
#[derive(Default)]
struct CommandCounters {
    results: [AtomicU64; RESULTS.len()],
    latency: LatencyHistogram,
}

/// Which command a reply belongs to and when the proxy read it.
#[derive(Clone, Copy)]
pub struct Meter {
    command: u16,
    /// `None` when metrics are off (nothing is timed).
    start: Option<Instant>,
}

pub struct ProxyMetrics {
    /// Off when no `metrics_address` is set: commands are then neither timed nor counted.
    enabled: bool,
    /// Data commands in table order, then `control_commands()`, then one for everything else.
    commands: Box<[CommandCounters]>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub migration_keys: AtomicU64,
    pub migration_bytes: AtomicU64,
    pub migration_pulls: AtomicU64,
    pub migration_copy_errors: AtomicU64,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics::new(true)
    }
}

impl ProxyMetrics {
    pub fn new(enabled: bool) -> Self {
        let n = command::DATA_COMMANDS.len() + control_commands().count() + 1;
        ProxyMetrics {
            enabled,
            commands: (0..n).map(|_| CommandCounters::default()).collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            migration_keys: AtomicU64::new(0),
            migration_bytes: AtomicU64::new(0),
            migration_pulls: AtomicU64::new(0),
            migration_copy_errors: AtomicU64::new(0),
        }
    }
}

fn command_name(index: usize) -> &'static str {
    let data = command::DATA_COMMANDS.len();
    if index < data {
        command::DATA_COMMANDS[index].name
    } else {
        control_commands().nth(index - data).unwrap_or("other")
    }
}

/// The position of a table entry in `DATA_COMMANDS` (entries are `'static` items of that slice).
fn data_index(spec: &CommandSpec) -> Option<usize> {
    let base = command::DATA_COMMANDS.as_ptr() as usize;
    let offset = (spec as *const CommandSpec as usize).checked_sub(base)?;
    let index = offset / std::mem::size_of::<CommandSpec>();
    (index < command::DATA_COMMANDS.len()).then_some(index)
}

fn classify(reply: &[u8]) -> usize {
    if reply.first() != Some(&b'-') {
        return 0;
    }
    let rest = &reply[1..];
    if rest.starts_with(b"MOVED ") {
        2
    } else if rest.starts_with(b"ASK ") {
        3
    } else if rest.starts_with(b"TRYAGAIN") {
        4
    } else if rest.starts_with(b"CROSSSLOT") {
        5
    } else {
        1
    }
}

impl ProxyMetrics {
    /// Starts timing a command named `name` (as the client sent it); `spec` is its entry in the
    /// command table when it has one (looked up once by the session for routing and metering).
    pub fn meter(&self, spec: Option<&'static CommandSpec>, name: &[u8], now: Instant) -> Meter {
        if !self.enabled {
            return Meter { command: u16::MAX, start: None };
        }
        let index = match spec.and_then(data_index) {
            Some(i) => i,
            None => {
                let data = command::DATA_COMMANDS.len();
                let control = control_commands().position(|c| c.as_bytes().eq_ignore_ascii_case(name));
                data + control.unwrap_or_else(|| control_commands().count())
            }
        };
        Meter { command: index as u16, start: Some(now) }
    }

    /// `meter` at the current time; the clock is read only when metrics are on (the hot path
    /// pays nothing otherwise).
    pub fn start(&self, spec: Option<&'static CommandSpec>, name: &[u8]) -> Meter {
        if !self.enabled {
            return Meter { command: u16::MAX, start: None };
        }
        self.meter(spec, name, Instant::now())
    }

    /// `record` at the current time, reading the clock only for a metered command.
    pub fn finish(&self, meter: Meter, reply: &[u8]) {
        if meter.start.is_some() {
            self.record(meter, reply, Instant::now());
        }
    }

    /// Counts a command's reply: its result kind and how long the proxy took to answer it.
    pub fn record(&self, meter: Meter, reply: &[u8], now: Instant) {
        if meter.command == u16::MAX {
            return;
        }
        let Some(c) = self.commands.get(usize::from(meter.command)) else { return };
        c.results[classify(reply)].fetch_add(1, Ordering::Relaxed);
        if let Some(start) = meter.start {
            c.latency.observe(now.saturating_duration_since(start));
        }
    }

    /// Commands answered so far, whatever their result (for tests and INFO).
    pub fn commands_total(&self) -> u64 {
        self.commands.iter().flat_map(|c| c.results.iter()).map(|r| r.load(Ordering::Relaxed)).sum()
    }
}

impl ProxyMetrics {
    /// The per-command families: results and latency histograms.
    pub fn encode_commands(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let m = self;
        {
            let mut family = encoder.encode_descriptor(
                "moonraft_proxy_commands",
                "Commands answered, by command and result (ok, error, moved, ask, tryagain, crossslot).",
                None,
                MetricType::Counter,
            )?;
            for (i, c) in m.commands.iter().enumerate() {
                for (r, result) in RESULTS.iter().enumerate() {
                    let v = c.results[r].load(Ordering::Relaxed);
                    if v > 0 {
                        let labels = [("command", command_name(i)), ("result", *result)];
                        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "moonraft_proxy_command_duration_seconds",
                "Time from reading a command to having its reply ready to write, by command.",
                None,
                MetricType::Histogram,
            )?;
            for (i, c) in m.commands.iter().enumerate() {
                if c.latency.count() > 0 {
                    c.latency.encode(family.encode_family(&[("command", command_name(i))])?)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes one unlabelled counter (for the other roles' collectors too).
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one unlabelled gauge.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The text for `GET /metrics`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classifies_redirections_and_errors() {
        assert_eq!(classify(b"+OK\r\n"), 0);
        assert_eq!(classify(b"$1\r\na\r\n"), 0);
        assert_eq!(classify(b"-MOVED 1 127.0.0.1:1\r\n"), 2);
        assert_eq!(classify(b"-ASK 1 127.0.0.1:1\r\n"), 3);
        assert_eq!(classify(b"-TRYAGAIN x\r\n"), 4);
        assert_eq!(classify(b"-CROSSSLOT x\r\n"), 5);
        assert_eq!(classify(b"-ERR x\r\n"), 1);
    }

    #[test]
    fn every_data_command_has_its_own_counter() {
        for (i, spec) in command::DATA_COMMANDS.iter().enumerate() {
            assert_eq!(data_index(spec), Some(i));
        }
        let m = ProxyMetrics::default();
        let now = Instant::now();
        assert_eq!(command_name(m.meter(command::lookup(b"SET"), b"SET", now).command.into()), "set");
        assert_eq!(command_name(m.meter(command::lookup(b"Ping"), b"Ping", now).command.into()), "ping");
        assert_eq!(
            command_name(m.meter(command::lookup(b"nosuchcommand"), b"nosuchcommand", now).command.into()),
            "other"
        );
        m.record(m.meter(command::lookup(b"get"), b"get", now), b"$-1\r\n", now + Duration::from_micros(300));
        m.record(m.meter(command::lookup(b"get"), b"get", now), b"-MOVED 1 a:1\r\n", now + Duration::from_secs(2));
        assert_eq!(m.commands_total(), 2);
        let get = &m.commands[data_index(command::lookup(b"get").unwrap()).unwrap()];
        let buckets = get.latency.bucket_counts();
        assert_eq!(buckets[2], 1, "300 µs falls in the ≤ 500 µs bucket");
        assert_eq!(buckets[buckets.len() - 1], 1, "2 s is past the last bound");
        assert_eq!(get.results[2].load(Ordering::Relaxed), 1);
    }
}
