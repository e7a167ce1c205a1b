//! The epoch check: the global epoch never goes backwards for a client session, and once a bump
//! to `n` was acknowledged, every read that starts afterwards sees at least `n`.

use serde::Serialize;

/// One completed operation on the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochOp {
    pub process: u64,
    /// `true`: a successful bump to `value`; `false`: a read that returned `value`.
    pub bump: bool,
    pub value: u64,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub kind: &'static str,
    /// Event index of the offending read.
    pub read: u64,
    pub read_value: u64,
    /// Event index of the operation it contradicts.
    pub earlier: u64,
    pub earlier_value: u64,
}

/// All anomalies (empty: valid). `ops` in any order.
pub fn check(ops: &[EpochOp]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    // Per session, in invocation order: what a session has seen or set, it never loses.
    let mut by_process: std::collections::BTreeMap<u64, Vec<&EpochOp>> = Default::default();
    for o in ops {
        by_process.entry(o.process).or_default().push(o);
    }
    for list in by_process.values_mut() {
        list.sort_by_key(|o| o.invoke_ns);
        let mut best: Option<&EpochOp> = None;
        for o in list.iter() {
            if let Some(b) = best {
                if !o.bump && o.value < b.value {
                    out.push(Anomaly {
                        kind: "went-backwards-in-session",
                        read: o.id,
                        read_value: o.value,
                        earlier: b.id,
                        earlier_value: b.value,
                    });
                }
            }
            if best.is_none_or(|b| o.value > b.value) {
                best = Some(o);
            }
        }
    }
    // Across sessions, in real time: an acknowledged bump is visible to every later read.
    let mut bumps: Vec<&EpochOp> = ops.iter().filter(|o| o.bump).collect();
    bumps.sort_by_key(|o| o.complete_ns);
    let mut reads: Vec<&EpochOp> = ops.iter().filter(|o| !o.bump).collect();
    reads.sort_by_key(|o| o.invoke_ns);
    let mut i = 0;
    let mut max_done: Option<&EpochOp> = None;
    for r in reads {
        while i < bumps.len() && bumps[i].complete_ns < r.invoke_ns {
            if max_done.is_none_or(|m| bumps[i].value > m.value) {
                max_done = Some(bumps[i]);
            }
            i += 1;
        }
        if let Some(m) = max_done {
            if r.value < m.value {
                out.push(Anomaly {
                    kind: "acknowledged-bump-not-visible",
                    read: r.id,
                    read_value: r.value,
                    earlier: m.id,
                    earlier_value: m.value,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, bump: bool, value: u64, from: u64, to: u64) -> EpochOp {
        EpochOp { process, bump, value, invoke_ns: from, complete_ns: to, id: from }
    }

    #[test]
    fn monotonic_histories_pass() {
        let h = [op(1, false, 3, 0, 1), op(1, true, 5, 2, 3), op(2, false, 4, 2, 4), op(2, false, 5, 5, 6)];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_session_that_goes_backwards_is_caught() {
        let h = [op(1, false, 7, 0, 1), op(1, false, 6, 2, 3)];
        let a = check(&h);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "went-backwards-in-session");
    }

    #[test]
    fn an_acknowledged_bump_must_be_visible_afterwards() {
        // Process 1 bumped to 9 (done at 3); process 2's read starting at 4 saw 8.
        let h = [op(1, true, 9, 2, 3), op(2, false, 8, 4, 5)];
        let a = check(&h);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "acknowledged-bump-not-visible");
        // Overlapping the bump, the old value is fine.
        assert!(check(&[op(1, true, 9, 2, 6), op(2, false, 8, 4, 5)]).is_empty());
    }
}
