//! The proxy's slow log: one command in `slowlog_sample_rate` is timed, and those slower than
//! `slowlog_log_slower_than` µs are kept (newest `slowlog_len`). Read with `SLOWLOG GET` (Redis's
//! format) or `UMCTL SLOWLOG GET` (the per-stage timings).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct SlowRecord {
    /// Increasing, like Redis's slow log entry ids.
    pub id: u64,
    pub session_id: u64,
    /// The command's arguments, shortened as Redis does (`slowlog_args`).
    pub args: Vec<bytes::Bytes>,
    pub client_addr: String,
    pub client_name: String,
    pub created: SystemTime,
    pub sent_to_backend: Duration,
    pub received_from_backend: Duration,
    pub wait_done: Duration,
    pub command: String,
}

/// Timestamps of one sampled command.
#[derive(Debug, Clone)]
pub struct Sample {
    pub session_id: u64,
    pub client: Option<std::sync::Arc<crate::clients::ClientInfo>>,
    pub args: Vec<bytes::Bytes>,
    pub created_wall: SystemTime,
    pub created: Instant,
    pub sent_to_backend: Option<Instant>,
    pub command: String,
}

pub struct SlowLog {
    capacity: usize,
    pub log_slower_than_us: AtomicI64,
    pub sample_rate: AtomicU64,
    counter: AtomicU64,
    next_id: AtomicU64,
    records: Mutex<VecDeque<SlowRecord>>,
}

/// At most 32 arguments (the last saying how many more there were), each cut to 128 bytes
/// (saying how many more it had): what Redis keeps of a command in its slow log.
pub fn slowlog_args(args: &[bytes::Bytes]) -> Vec<bytes::Bytes> {
    const MAX_ARGS: usize = 32;
    const MAX_LEN: usize = 128;
    let kept = if args.len() > MAX_ARGS { MAX_ARGS - 1 } else { args.len() };
    let mut out: Vec<bytes::Bytes> = args[..kept]
        .iter()
        .map(|a| {
            if a.len() > MAX_LEN {
                let mut cut = a[..MAX_LEN].to_vec();
                cut.extend_from_slice(format!("... ({} more bytes)", a.len() - MAX_LEN).as_bytes());
                bytes::Bytes::from(cut)
            } else {
                a.clone()
            }
        })
        .collect();
    if kept < args.len() {
        out.push(bytes::Bytes::from(format!("... ({} more arguments)", args.len() - kept)));
    }
    out
}

/// First 5 elements, each cut to 100 characters plus `(<len>bytes)` when cut.
pub fn describe_command(args: &[bytes::Bytes]) -> String {
    let mut parts = Vec::new();
    for a in args.iter().take(5) {
        let s = String::from_utf8_lossy(a);
        if s.chars().count() > 100 {
            let cut: String = s.chars().take(100).collect();
            parts.push(format!("{cut}({}bytes)", a.len()));
        } else {
            parts.push(s.into_owned());
        }
    }
    parts.join(" ")
}

impl SlowLog {
    pub fn new(capacity: usize, log_slower_than_us: i64, sample_rate: u64) -> Self {
        SlowLog {
            capacity: capacity.max(1),
            log_slower_than_us: AtomicI64::new(log_slower_than_us),
            sample_rate: AtomicU64::new(sample_rate),
            counter: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            records: Mutex::new(VecDeque::new()),
        }
    }

    /// Counter-based sampling: 1 out of `sample_rate` commands (0 behaves as 1).
    pub fn should_sample(&self) -> bool {
        let rate = self.sample_rate.load(Ordering::Relaxed).max(1);
        self.counter.fetch_add(1, Ordering::Relaxed).is_multiple_of(rate)
    }

    pub fn finish(&self, sample: Sample, received: Instant) {
        let done = Instant::now();
        let total = done.duration_since(sample.created);
        let threshold = self.log_slower_than_us.load(Ordering::Relaxed);
        if threshold >= 0 && total.as_micros() < threshold as u128 {
            return;
        }
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(sample.created)).unwrap_or_default();
        let (client_addr, client_name) = match &sample.client {
            Some(c) => {
                let name = c.name().map(|n| String::from_utf8_lossy(&n).into_owned()).unwrap_or_default();
                (c.addr.clone(), name)
            }
            None => (String::new(), String::new()),
        };
        let rec = SlowRecord {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            session_id: sample.session_id,
            args: sample.args,
            client_addr,
            client_name,
            created: sample.created_wall,
            sent_to_backend: since(sample.sent_to_backend),
            received_from_backend: received.saturating_duration_since(sample.created),
            wait_done: total,
            command: sample.command,
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.capacity {
            records.pop_front();
        }
        records.push_back(rec);
    }

    /// Newest first, at most `n`.
    pub fn get(&self, n: Option<usize>) -> Vec<SlowRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().rev().take(n.unwrap_or(usize::MAX)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&self) {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// RFC 3339 UTC rendering of a wall-clock time, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn ring_keeps_newest() {
        let log = SlowLog::new(2, -1, 1);
        for i in 0..3 {
            let s = Sample {
                session_id: i,
                client: None,
                args: vec![],
                created_wall: SystemTime::now(),
                created: Instant::now(),
                sent_to_backend: None,
                command: format!("GET {i}"),
            };
            log.finish(s, Instant::now());
        }
        let got = log.get(None);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].command, "GET 2");
        assert_eq!(log.get(Some(1)).len(), 1);
        log.reset();
        assert!(log.get(None).is_empty());
    }

    #[test]
    fn slowlog_args_are_shortened_like_redis() {
        let args: Vec<bytes::Bytes> = (0..40).map(|i| bytes::Bytes::from(format!("a{i}"))).collect();
        let kept = slowlog_args(&args);
        assert_eq!(kept.len(), 32);
        assert_eq!(kept[30], "a30");
        assert_eq!(kept[31], "... (9 more arguments)");
        let long = slowlog_args(&[bytes::Bytes::from(vec![b'x'; 130])]);
        assert_eq!(long[0].len(), 128 + "... (2 more bytes)".len());
        assert!(long[0].ends_with(b"... (2 more bytes)"));
    }

    #[test]
    fn describe_cuts_long_args() {
        let long = bytes::Bytes::from(vec![b'x'; 150]);
        let d = describe_command(&[bytes::Bytes::from_static(b"SET"), bytes::Bytes::from_static(b"k"), long]);
        assert!(d.ends_with("(150bytes)"));
        assert!(d.starts_with("SET k xxx"));
    }
}
