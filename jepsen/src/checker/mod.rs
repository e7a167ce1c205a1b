//! Checkers over a recorded history: registers (linearizability, per key), sets (nothing
//! acknowledged lost, nothing invented) and the epoch (monotonic, acknowledged bumps visible).

pub mod linear;
pub mod monotonic;
pub mod set;

use crate::history::{Event, Kind, Op};
use linear::{RegOp, Timed, Verdict};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// `true`, `false` or `"unknown"` in `results.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid,
    Unknown,
}

impl Validity {
    pub fn json(self) -> Value {
        match self {
            Validity::Valid => Value::Bool(true),
            Validity::Invalid => Value::Bool(false),
            Validity::Unknown => Value::String("unknown".into()),
        }
    }

    /// The worse of two.
    pub fn and(self, other: Validity) -> Validity {
        use Validity::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }
}

/// What a checker found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub valid: Validity,
    pub anomalies: Vec<Value>,
    /// Acknowledged writes found lost (allowed only where loss is expected: failover).
    pub lost: usize,
    /// Extra fields for `results.json`.
    pub details: Value,
}

fn reg_op(op: &Op) -> Option<RegOp> {
    let int = |v: &Value| v.as_i64();
    match (op.f.as_str(), op.outcome) {
        ("read", Kind::Ok) => Some(RegOp::Read(if op.result.is_null() { None } else { Some(int(&op.result)?) })),
        // A read with no definite answer says nothing.
        ("read", _) => None,
        ("write", Kind::Ok | Kind::Info) => Some(RegOp::Write(int(&op.value)?)),
        ("cas", Kind::Ok | Kind::Info) => {
            let pair = op.value.as_array()?;
            Some(RegOp::Cas(int(pair.first()?)?, int(pair.get(1)?)?))
        }
        _ => None,
    }
}

fn timed(op: &Op, r: RegOp) -> Timed {
    let complete_ns = if op.outcome == Kind::Ok { op.complete_ns } else { None };
    Timed { op: r, invoke_ns: op.invoke_ns, complete_ns, id: op.index }
}

fn describe(t: &Timed, ops: &BTreeMap<u64, &Op>) -> Value {
    let op = ops.get(&t.id);
    json!({
        "index": t.id,
        "op": format!("{:?}", t.op),
        "process": op.map(|o| o.process),
        "via": op.and_then(|o| o.via.clone()),
        "invoke_ms": t.invoke_ns as f64 / 1e6,
        "complete_ms": t.complete_ns.map(|c| c as f64 / 1e6),
        "outcome": op.map(|o| format!("{:?}", o.outcome).to_lowercase()),
    })
}

/// Leaves out writes with an unknown outcome whose value no read returned and no
/// compare-and-set expected: whether they happened cannot change any other operation's
/// legality, and each one left in multiplies the orders the search tries (a long run with a few
/// hundred timeouts went over the step budget without this).
fn prune_unobserved_unknown_writes(list: Vec<Timed>) -> Vec<Timed> {
    let mut observed: BTreeSet<i64> = BTreeSet::new();
    for t in &list {
        match t.op {
            RegOp::Read(Some(v)) => {
                observed.insert(v);
            }
            RegOp::Cas(from, _) => {
                observed.insert(from);
            }
            _ => {}
        }
    }
    list.into_iter()
        .filter(|t| !(t.complete_ns.is_none() && matches!(t.op, RegOp::Write(v) if !observed.contains(&v))))
        .collect()
}

/// Writes (unique values) that a later read proves were lost: a read that began after the
/// write completed returned the value of a write that completed before this one began.
fn provably_lost(key_ops: &[Timed]) -> BTreeSet<u64> {
    let mut writer: BTreeMap<i64, &Timed> = BTreeMap::new();
    for t in key_ops {
        if let RegOp::Write(v) = t.op {
            writer.insert(v, t);
        }
    }
    let mut lost = BTreeSet::new();
    for r in key_ops {
        let (RegOp::Read(Some(v)), Some(_)) = (r.op, r.complete_ns) else { continue };
        let Some(old) = writer.get(&v) else { continue };
        let Some(old_done) = old.complete_ns else { continue };
        for w in key_ops {
            if let (RegOp::Write(_), Some(done)) = (w.op, w.complete_ns) {
                if w.invoke_ns > old_done && done < r.invoke_ns {
                    lost.insert(w.id);
                }
            }
        }
    }
    lost
}

/// Linearizability of every key's register. `initial`: each key's value before the test
/// (absent: empty). `allow_loss`: failover happened, so acknowledged writes may be lost —
/// they are reported (count and time window) and left out of the check instead of failing it.
pub fn registers(
    events: &[Event],
    initial: &BTreeMap<String, Option<i64>>,
    max_steps: u64,
    allow_loss: bool,
) -> Outcome {
    let ops = crate::history::pair(events);
    let by_index: BTreeMap<u64, &Op> = ops.iter().map(|o| (o.index, o)).collect();
    let mut per_key: BTreeMap<String, Vec<Timed>> = BTreeMap::new();
    for op in &ops {
        if let (Some(key), Some(r)) = (&op.key, reg_op(op)) {
            per_key.entry(key.clone()).or_default().push(timed(op, r));
        }
    }
    let mut valid = Validity::Valid;
    let mut anomalies = Vec::new();
    let mut keys = serde_json::Map::new();
    let mut lost_total = 0usize;
    let mut lost_window: Option<(u64, u64)> = None;
    for (key, list) in per_key {
        let mut list = prune_unobserved_unknown_writes(list);
        let init = initial.get(&key).copied().flatten();
        let mut verdict = linear::check(init, &list, max_steps);
        let mut lost_here = 0;
        if allow_loss && matches!(verdict, Verdict::Invalid { .. }) {
            let lost = provably_lost(&list);
            if !lost.is_empty() {
                for t in list.iter_mut().filter(|t| lost.contains(&t.id)) {
                    // Lost: as if it never completed (it may or may not have happened).
                    if let Some(done) = t.complete_ns {
                        let w = lost_window.get_or_insert((t.invoke_ns, done));
                        w.0 = w.0.min(t.invoke_ns);
                        w.1 = w.1.max(done);
                    }
                    t.complete_ns = None;
                }
                lost_here = lost.len();
                verdict = linear::check(init, &list, max_steps);
            }
        }
        lost_total += lost_here;
        let v = match &verdict {
            Verdict::Valid => Validity::Valid,
            Verdict::Invalid { blocked, concurrent, states } => {
                anomalies.push(json!({
                    "type": "not-linearizable",
                    "key": key,
                    "op": describe(blocked, &by_index),
                    "register_values_possible_there": states,
                    "concurrent": concurrent.iter().take(20).map(|t| describe(t, &by_index)).collect::<Vec<_>>(),
                }));
                Validity::Invalid
            }
            Verdict::Unknown(why) => {
                anomalies.push(json!({"type": "unknown", "key": key, "why": why}));
                Validity::Unknown
            }
        };
        keys.insert(key, json!({"ops": list.len(), "valid": v.json(), "lost": lost_here}));
        valid = valid.and(v);
    }
    let window = lost_window.map(|(a, b)| json!({"from_ms": a as f64 / 1e6, "to_ms": b as f64 / 1e6}));
    Outcome { valid, anomalies, lost: lost_total, details: json!({"keys": keys, "lost_window": window}) }
}

/// The set check over `add` operations and the last ok `final-read`.
pub fn sets(events: &[Event]) -> Outcome {
    let ops = crate::history::pair(events);
    // key → (acknowledged, unknown, failed) adds
    type Adds = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);
    let mut per_key: BTreeMap<String, Adds> = BTreeMap::new();
    let mut finals: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let elem = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    for op in &ops {
        let key = op.key.clone().unwrap_or_default();
        match (op.f.as_str(), op.outcome) {
            ("add", Kind::Ok) => {
                per_key.entry(key).or_default().0.insert(elem(&op.value));
            }
            ("add", Kind::Info) => {
                per_key.entry(key).or_default().1.insert(elem(&op.value));
            }
            ("add", Kind::Fail) => {
                per_key.entry(key).or_default().2.insert(elem(&op.value));
            }
            ("final-read", Kind::Ok) => {
                let set = op.result.as_array().map(|a| a.iter().map(elem).collect()).unwrap_or_default();
                finals.insert(key, set);
            }
            _ => {}
        }
    }
    let mut valid = Validity::Valid;
    let mut anomalies = Vec::new();
    let mut lost = 0;
    let mut keys = serde_json::Map::new();
    for (key, (acked, unknown, failed)) in per_key {
        let Some(fin) = finals.get(&key) else {
            anomalies.push(json!({"type": "no-final-read", "key": key}));
            valid = valid.and(Validity::Unknown);
            continue;
        };
        let r = set::check(&acked, &unknown, &failed, fin);
        if !r.valid {
            valid = Validity::Invalid;
            anomalies.push(json!({"type": "set", "key": key, "lost": r.lost, "unexpected": r.unexpected}));
        }
        lost += r.lost.len();
        keys.insert(key, serde_json::to_value(&r).unwrap_or(Value::Null));
    }
    Outcome { valid, anomalies, lost, details: json!({"keys": keys}) }
}

/// The epoch check over `read` and `bump` operations.
pub fn epochs(events: &[Event]) -> Outcome {
    let ops = crate::history::pair(events);
    let list: Vec<monotonic::EpochOp> = ops
        .iter()
        .filter(|o| o.outcome == Kind::Ok)
        .filter_map(|o| {
            let (bump, value) = match o.f.as_str() {
                "read" => (false, o.result.as_u64()?),
                "bump" => (true, o.value.as_u64()?),
                _ => return None,
            };
            Some(monotonic::EpochOp {
                process: o.process,
                bump,
                value,
                invoke_ns: o.invoke_ns,
                complete_ns: o.complete_ns?,
                id: o.index,
            })
        })
        .collect();
    let found = monotonic::check(&list);
    let valid = if found.is_empty() { Validity::Valid } else { Validity::Invalid };
    let anomalies = found.iter().take(50).map(|a| serde_json::to_value(a).unwrap_or(Value::Null)).collect();
    Outcome { valid, anomalies, lost: 0, details: json!({"checked": list.len(), "anomalies_total": found.len()}) }
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

pub fn counts(events: &[Event]) -> Counts {
    let ops = crate::history::pair(events);
    Counts {
        ops: ops.len() as u64,
        ok: ops.iter().filter(|o| o.outcome == Kind::Ok).count() as u64,
        fail: ops.iter().filter(|o| o.outcome == Kind::Fail).count() as u64,
        info: ops.iter().filter(|o| o.outcome == Kind::Info).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Note, Recorder};

    fn run(r: &Recorder, p: u64, f: &str, key: &str, value: Value, done: Kind, result: Value) {
        let note = |v: Value| Note { process: p, f: f.into(), key: Some(key.into()), value: v, ..Note::default() };
        r.record(Kind::Invoke, note(value));
        r.record(done, note(result));
    }

    #[test]
    fn register_histories_from_events() {
        let r = Recorder::new(None).unwrap();
        run(&r, 1, "write", "k", 1.into(), Kind::Ok, 1.into());
        run(&r, 2, "read", "k", Value::Null, Kind::Ok, 1.into());
        run(&r, 1, "cas", "k", json!([1, 2]), Kind::Ok, Value::Null);
        run(&r, 2, "read", "k", Value::Null, Kind::Fail, Value::Null);
        run(&r, 2, "read", "k", Value::Null, Kind::Ok, 2.into());
        let init = BTreeMap::new();
        assert_eq!(registers(&r.events(), &init, 10_000, false).valid, Validity::Valid);
        // A stale read on another key is caught and named.
        run(&r, 1, "write", "j", 5.into(), Kind::Ok, Value::Null);
        run(&r, 2, "read", "j", Value::Null, Kind::Ok, 4.into());
        let out = registers(&r.events(), &init, 10_000, false);
        assert_eq!(out.valid, Validity::Invalid);
        assert_eq!(out.anomalies[0]["key"], "j");
    }

    #[test]
    fn unknown_writes_nobody_saw_are_left_out_but_seen_ones_count() {
        let t = |op, from, to: Option<u64>| Timed { op, invoke_ns: from, complete_ns: to, id: from };
        let list = vec![
            t(RegOp::Write(1), 0, None),
            t(RegOp::Write(2), 1, None),
            t(RegOp::Write(3), 2, None),
            t(RegOp::Read(Some(2)), 3, Some(4)),
            t(RegOp::Cas(3, 4), 5, Some(6)),
        ];
        let kept: Vec<RegOp> = prune_unobserved_unknown_writes(list).into_iter().map(|t| t.op).collect();
        assert_eq!(kept, vec![RegOp::Write(2), RegOp::Write(3), RegOp::Read(Some(2)), RegOp::Cas(3, 4)]);
    }

    #[test]
    fn lost_writes_are_counted_when_loss_is_allowed() {
        let r = Recorder::new(None).unwrap();
        run(&r, 1, "write", "k", 1.into(), Kind::Ok, Value::Null);
        run(&r, 1, "write", "k", 2.into(), Kind::Ok, Value::Null);
        run(&r, 1, "write", "k", 3.into(), Kind::Ok, Value::Null);
        // Failover to a replica that only had 1.
        run(&r, 2, "read", "k", Value::Null, Kind::Ok, 1.into());
        let init = BTreeMap::new();
        assert_eq!(registers(&r.events(), &init, 10_000, false).valid, Validity::Invalid);
        let out = registers(&r.events(), &init, 10_000, true);
        assert_eq!((out.valid, out.lost), (Validity::Valid, 2));
        assert!(out.details["lost_window"]["from_ms"].is_number());
    }

    #[test]
    fn set_and_epoch_histories_from_events() {
        let r = Recorder::new(None).unwrap();
        run(&r, 1, "add", "s", "a".into(), Kind::Ok, Value::Null);
        run(&r, 2, "add", "s", "b".into(), Kind::Info, Value::Null);
        run(&r, 3, "final-read", "s", Value::Null, Kind::Ok, json!(["a"]));
        assert_eq!(sets(&r.events()).valid, Validity::Valid);
        run(&r, 1, "add", "s", "c".into(), Kind::Ok, Value::Null);
        run(&r, 3, "final-read", "s", Value::Null, Kind::Ok, json!(["a"]));
        let out = sets(&r.events());
        assert_eq!((out.valid, out.lost), (Validity::Invalid, 1));

        let e = Recorder::new(None).unwrap();
        run(&e, 1, "bump", "epoch", 10.into(), Kind::Ok, Value::Null);
        run(&e, 2, "read", "epoch", Value::Null, Kind::Ok, 9.into());
        assert_eq!(epochs(&e.events()).valid, Validity::Invalid);
    }
}
