//! The recorded history: every operation as an invocation and a completion (`ok`, `fail`, or
//! `info` when the outcome is unknown: a timeout, a lost connection, a `RETRY` on a write),
//! written as JSON lines while the test runs, and the pairing of the two into operations for the
//! checkers.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The process id of nemesis events.
pub const NEMESIS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    /// The worker (a client session), or `NEMESIS`.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `read`, `write`, `cas`, `add`, `bump`, `final-read`, or a fault.
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Invoke: what is written / compared; ok: what was read (or written).
    #[serde(default)]
    pub value: Value,
    /// Monotonic nanoseconds since the test started.
    pub time_ns: u64,
    /// Wall clock, Unix milliseconds.
    pub wall_ms: u64,
    /// The member or proxy the request went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// `http`, `grpc` or `resp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Appends events (in memory and to `history.jsonl`), stamping index and times.
pub struct Recorder {
    start: Instant,
    inner: Mutex<RecorderInner>,
}

struct RecorderInner {
    events: Vec<Event>,
    /// Each process's latest completion.
    last: std::collections::HashMap<u64, Kind>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

/// What a caller fills in; the recorder adds index and times.
#[derive(Debug, Clone, Default)]
pub struct Note {
    pub process: u64,
    pub f: String,
    pub key: Option<String>,
    pub value: Value,
    pub via: Option<String>,
    pub proto: Option<String>,
    pub error: Option<String>,
}

impl Recorder {
    pub fn new(path: Option<&std::path::Path>) -> anyhow::Result<Recorder> {
        let file = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Mutex::new(RecorderInner { events: Vec::new(), last: Default::default(), file }),
        })
    }

    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, kind: Kind, note: Note) -> Event {
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let e = Event {
            index: inner.events.len() as u64,
            process: note.process,
            kind,
            f: note.f,
            key: note.key,
            value: note.value,
            time_ns: self.elapsed_ns(),
            wall_ms,
            via: note.via,
            proto: note.proto,
            error: note.error,
        };
        if let Some(f) = inner.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(f, "{line}");
            }
        }
        if kind != Kind::Invoke {
            inner.last.insert(e.process, kind);
        }
        inner.events.push(e.clone());
        e
    }

    /// The latest completion of `process`.
    pub fn last_kind(&self, process: u64) -> Option<Kind> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).last.get(&process).copied()
    }

    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inner.file.as_mut() {
            let _ = f.flush();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).events.clone()
    }

    /// Counts of completions so far: (invocations, ok, fail, info).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = (0, 0, 0, 0);
        for e in inner.events.iter().filter(|e| e.process != NEMESIS) {
            match e.kind {
                Kind::Invoke => c.0 += 1,
                Kind::Ok => c.1 += 1,
                Kind::Fail => c.2 += 1,
                Kind::Info => c.3 += 1,
            }
        }
        c
    }
}

/// Reads a `history.jsonl`.
pub fn load(path: &std::path::Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}: {e}: {l}", path.display())))
        .collect()
}

/// An invocation paired with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub process: u64,
    pub f: String,
    pub key: Option<String>,
    /// The invocation's value.
    pub value: Value,
    /// The completion's value (what a read returned).
    pub result: Value,
    /// `Ok`, `Fail` or `Info` (no completion recorded counts as `Info`).
    pub outcome: Kind,
    pub invoke_ns: u64,
    /// `None` for `Info`: it may take effect at any time after the invocation, or never.
    pub complete_ns: Option<u64>,
    /// Index of the invocation event (to point at it in reports).
    pub index: u64,
    pub via: Option<String>,
}

/// Pairs each invocation with the next completion of the same process. Nemesis events are left
/// out.
pub fn pair(events: &[Event]) -> Vec<Op> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut ops: Vec<Op> = Vec::new();
    for e in events.iter().filter(|e| e.process != NEMESIS) {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, ops.len());
                ops.push(Op {
                    process: e.process,
                    f: e.f.clone(),
                    key: e.key.clone(),
                    value: e.value.clone(),
                    result: Value::Null,
                    outcome: Kind::Info,
                    invoke_ns: e.time_ns,
                    complete_ns: None,
                    index: e.index,
                    via: e.via.clone(),
                });
            }
            done => {
                if let Some(i) = open.remove(&e.process) {
                    let op = &mut ops[i];
                    op.outcome = done;
                    op.result = e.value.clone();
                    op.complete_ns = (done != Kind::Info).then_some(e.time_ns);
                }
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_invocations_with_their_completions() {
        let r = Recorder::new(None).unwrap();
        let note = |p: u64, f: &str, v: Value| Note { process: p, f: f.into(), value: v, ..Note::default() };
        r.record(Kind::Invoke, note(1, "write", 3.into()));
        r.record(Kind::Invoke, note(2, "read", Value::Null));
        r.record(Kind::Ok, note(2, "read", 0.into()));
        r.record(Kind::Info, note(1, "write", 3.into()));
        r.record(Kind::Invoke, note(NEMESIS, "kill", Value::Null));
        r.record(Kind::Invoke, note(2, "read", Value::Null));
        let ops = pair(&r.events());
        assert_eq!(ops.len(), 3);
        assert_eq!((ops[0].outcome, ops[0].complete_ns), (Kind::Info, None));
        assert_eq!((ops[1].outcome, ops[1].result.clone()), (Kind::Ok, Value::from(0)));
        assert!(ops[1].complete_ns.is_some());
        assert_eq!(ops[2].outcome, Kind::Info, "never completed");
        let line = serde_json::to_string(&r.events()[0]).unwrap();
        assert!(line.contains("\"type\":\"invoke\""), "{line}");
    }
}
