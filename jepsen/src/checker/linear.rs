//! Linearizability of a compare-and-set register, by the Wing–Gong search with Lowe's
//! memoisation (the algorithm of Knossos' `wgl` and of porcupine).
//!
//! Operations are intervals from invocation to completion. The search walks the calls and
//! returns in time order and tries to place ("linearize") each operation at some instant inside
//! its interval so that the sequence of placed operations is a legal run of the register. An
//! operation whose outcome is unknown (`info`) has no return: it may be placed anywhere after its
//! call, or nowhere. Failed operations did not happen and are left out by the caller. A cache of
//! (set of operations placed, register value) prunes states already explored, which keeps
//! realistic histories (a handful of concurrent clients) to roughly linear time; a search that
//! exceeds its step budget answers `Unknown`, never `Valid`.
//!
//! Written here rather than taken from a crate: stateright's tester explores a model checker's
//! state space and has no notion of a recorded history with timestamps and unknown outcomes.

use std::collections::HashSet;

/// A register operation with the value it saw or set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegOp {
    /// Read and got this value (`None`: the register was empty / the key absent).
    Read(Option<i64>),
    Write(i64),
    /// Compare-and-set: succeeded, so the register held `.0`, and now holds `.1`.
    Cas(i64, i64),
}

impl RegOp {
    /// The register after this operation from `state`, or `None` if it cannot happen there.
    pub fn step(self, state: Option<i64>) -> Option<Option<i64>> {
        match self {
            RegOp::Read(v) => (v == state).then_some(state),
            RegOp::Write(v) => Some(Some(v)),
            RegOp::Cas(from, to) => (state == Some(from)).then_some(Some(to)),
        }
    }
}

/// One operation of a single-key history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub op: RegOp,
    pub invoke_ns: u64,
    /// `None`: unknown outcome.
    pub complete_ns: Option<u64>,
    /// Where it came from in the recorded history (event index).
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// No order works. `blocked`: the operation that could not be placed before it returned, at
    /// the deepest point the search reached; `concurrent`: the operations overlapping it;
    /// `states`: the register values the search had reached there.
    Invalid {
        blocked: Timed,
        concurrent: Vec<Timed>,
        states: Vec<Option<i64>>,
    },
    Unknown(String),
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_return: bool,
    prev: usize,
    next: usize,
}

/// A linked list of call/return entries in time order with O(1) lift/unlift.
struct List {
    e: Vec<Entry>,
    /// For each op, its call entry and (if any) its return entry.
    call: Vec<usize>,
    ret: Vec<Option<usize>>,
}

const HEAD: usize = 0;

impl List {
    fn new(ops: &[Timed]) -> List {
        let mut events: Vec<(u64, u8, usize)> = Vec::new();
        for (i, t) in ops.iter().enumerate() {
            // At equal times a call sorts before a return: treated as concurrent, the
            // permissive reading.
            events.push((t.invoke_ns, 0, i));
            if let Some(c) = t.complete_ns {
                events.push((c.max(t.invoke_ns), 1, i));
            }
        }
        events.sort();
        let n = events.len();
        let mut e = Vec::with_capacity(n + 2);
        e.push(Entry { op: usize::MAX, is_return: false, prev: usize::MAX, next: 1 });
        let mut call = vec![0; ops.len()];
        let mut ret = vec![None; ops.len()];
        for (k, (_, is_ret, op)) in events.iter().enumerate() {
            let idx = k + 1;
            e.push(Entry { op: *op, is_return: *is_ret == 1, prev: idx - 1, next: idx + 1 });
            if *is_ret == 1 {
                ret[*op] = Some(idx);
            } else {
                call[*op] = idx;
            }
        }
        // Tail sentinel.
        e.push(Entry { op: usize::MAX, is_return: false, prev: n, next: usize::MAX });
        List { e, call, ret }
    }

    fn tail(&self) -> usize {
        self.e.len() - 1
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.e[i].prev, self.e[i].next);
        self.e[p].next = n;
        self.e[n].prev = p;
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.e[i].prev, self.e[i].next);
        self.e[p].next = i;
        self.e[n].prev = i;
    }

    /// Removes an op's call and return (return first: relinking goes in reverse).
    fn lift(&mut self, op: usize) {
        if let Some(r) = self.ret[op] {
            self.unlink(r);
        }
        self.unlink(self.call[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.call[op]);
        if let Some(r) = self.ret[op] {
            self.relink(r);
        }
    }
}

/// The set of placed operations as a 128-bit Zobrist hash: each operation has a random 128-bit
/// tag and the set's hash is the XOR of its members' tags, updated in O(1) when an operation is
/// placed or taken back. A full bitset per cache entry cost memory and copying in proportion to
/// the history (gigabytes for a minute of a fast workload); two different sets colliding on 128
/// bits is not a practical concern.
struct Zobrist(Vec<u128>);

impl Zobrist {
    fn new(n: usize) -> Zobrist {
        // splitmix64: fixed seed, so a check is reproducible.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Zobrist((0..n).map(|_| (u128::from(next()) << 64) | u128::from(next())).collect())
    }
}

/// Checks one key's history starting from `initial`, within `max_steps` search steps.
pub fn check(initial: Option<i64>, ops: &[Timed], max_steps: u64) -> Verdict {
    let mut list = List::new(ops);
    let mut returns_left = ops.iter().filter(|t| t.complete_ns.is_some()).count();
    let mut state = initial;
    let tags = Zobrist::new(ops.len());
    let mut placed: u128 = 0;
    let mut placed_count = 0usize;
    let mut cache: HashSet<(u128, Option<i64>)> = HashSet::new();
    // (op placed, state before it)
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut cursor = list.e[HEAD].next;
    let mut steps = 0u64;
    // Deepest point reached: (ops placed, the return that blocked, states seen there).
    let mut deepest: (usize, Option<usize>, Vec<Option<i64>>) = (0, None, Vec::new());
    while returns_left > 0 {
        steps += 1;
        if steps > max_steps {
            let at = deepest
                .1
                .map(|op| {
                    format!(
                        ", deepest point: {} placed, blocked by the operation invoked at {:.3} s",
                        deepest.0,
                        ops[op].invoke_ns as f64 / 1e9
                    )
                })
                .unwrap_or_default();
            return Verdict::Unknown(format!("search stopped after {max_steps} steps ({} operations{at})", ops.len()));
        }
        if cursor == list.tail() {
            // Only calls without returns were left after the cursor; cannot happen while
            // returns remain, but never loop on it.
            return Verdict::Unknown("search reached the end with returns left".into());
        }
        let entry = list.e[cursor];
        if !entry.is_return {
            let op = entry.op;
            if let Some(next_state) = ops[op].op.step(state) {
                let next_placed = placed ^ tags.0[op];
                if cache.insert((next_placed, next_state)) {
                    stack.push((op, state));
                    state = next_state;
                    placed = next_placed;
                    placed_count += 1;
                    if ops[op].complete_ns.is_some() {
                        returns_left -= 1;
                    }
                    list.lift(op);
                    cursor = list.e[HEAD].next;
                    continue;
                }
            }
            cursor = entry.next;
        } else {
            // This operation returned before we could place it: undo the last placement.
            if placed_count > deepest.0 || deepest.1.is_none() {
                deepest = (placed_count, Some(entry.op), vec![state]);
            } else if placed_count == deepest.0 && deepest.1 == Some(entry.op) && !deepest.2.contains(&state) {
                deepest.2.push(state);
            }
            let Some((op, before)) = stack.pop() else {
                let blocked = deepest.1.unwrap_or(entry.op);
                let t = &ops[blocked];
                let concurrent = ops
                    .iter()
                    .filter(|o| {
                        o.id != t.id
                            && o.invoke_ns <= t.complete_ns.unwrap_or(u64::MAX)
                            && o.complete_ns.is_none_or(|c| c >= t.invoke_ns)
                    })
                    .cloned()
                    .collect();
                return Verdict::Invalid { blocked: t.clone(), concurrent, states: deepest.2 };
            };
            state = before;
            placed ^= tags.0[op];
            placed_count -= 1;
            if ops[op].complete_ns.is_some() {
                returns_left += 1;
            }
            list.unlift(op);
            cursor = list.e[list.call[op]].next;
        }
    }
    Verdict::Valid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(op: RegOp, from: u64, to: Option<u64>) -> Timed {
        Timed { op, invoke_ns: from, complete_ns: to, id: from * 1000 + to.unwrap_or(999) }
    }

    use RegOp::*;

    #[test]
    fn sequential_histories() {
        let ok = [
            t(Write(1), 0, Some(1)),
            t(Read(Some(1)), 2, Some(3)),
            t(Cas(1, 2), 4, Some(5)),
            t(Read(Some(2)), 6, Some(7)),
        ];
        assert_eq!(check(None, &ok, 1000), Verdict::Valid);
        assert_eq!(check(None, &[t(Read(None), 0, Some(1))], 1000), Verdict::Valid);
        assert_eq!(check(Some(5), &[t(Read(Some(5)), 0, Some(1))], 1000), Verdict::Valid);
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // Write 2 completed before the read began, yet the read saw 1.
        let h = [t(Write(1), 0, Some(1)), t(Write(2), 2, Some(3)), t(Read(Some(1)), 4, Some(5))];
        match check(None, &h, 1000) {
            Verdict::Invalid { blocked, states, .. } => {
                assert_eq!(blocked.op, Read(Some(1)));
                assert_eq!(states, vec![Some(2)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_write_is_rejected() {
        // An acknowledged write that later reads never see, while nothing else wrote.
        let h = [
            t(Write(1), 0, Some(1)),
            t(Write(2), 2, Some(3)),
            t(Read(Some(1)), 4, Some(5)),
            t(Read(Some(1)), 6, Some(7)),
        ];
        assert!(matches!(check(None, &h, 1000), Verdict::Invalid { .. }));
    }

    #[test]
    fn a_write_visible_before_it_was_invoked_is_rejected() {
        // The read completed before the write was even invoked, yet saw its value.
        let h = [t(Read(Some(7)), 0, Some(1)), t(Write(7), 2, Some(3))];
        assert!(matches!(check(None, &h, 1000), Verdict::Invalid { .. }));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: old or new value are both fine.
        let h1 = [t(Write(1), 0, Some(1)), t(Write(2), 2, Some(6)), t(Read(Some(1)), 3, Some(4))];
        let h2 = [t(Write(1), 0, Some(1)), t(Write(2), 2, Some(6)), t(Read(Some(2)), 3, Some(4))];
        assert_eq!(check(None, &h1, 1000), Verdict::Valid);
        assert_eq!(check(None, &h2, 1000), Verdict::Valid);
        // But once a read saw the new value, a later read cannot see the old one.
        let h3 = [
            t(Write(1), 0, Some(1)),
            t(Write(2), 2, Some(10)),
            t(Read(Some(2)), 3, Some(4)),
            t(Read(Some(1)), 5, Some(6)),
        ];
        assert!(matches!(check(None, &h3, 1000), Verdict::Invalid { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A write that timed out and was applied later...
        let applied = [t(Write(1), 0, Some(1)), t(Write(2), 2, None), t(Read(Some(2)), 10, Some(11))];
        assert_eq!(check(None, &applied, 1000), Verdict::Valid);
        // ... or never.
        let never = [t(Write(1), 0, Some(1)), t(Write(2), 2, None), t(Read(Some(1)), 10, Some(11))];
        assert_eq!(check(None, &never, 1000), Verdict::Valid);
        // But not before it was invoked.
        let early = [t(Write(1), 0, Some(1)), t(Read(Some(2)), 2, Some(3)), t(Write(2), 4, None)];
        assert!(matches!(check(None, &early, 1000), Verdict::Invalid { .. }));
    }

    #[test]
    fn compare_and_set() {
        let ok = [t(Write(1), 0, Some(1)), t(Cas(1, 3), 2, Some(3)), t(Read(Some(3)), 4, Some(5))];
        assert_eq!(check(None, &ok, 1000), Verdict::Valid);
        // A CAS cannot succeed from a value the register did not hold.
        let bad = [t(Write(1), 0, Some(1)), t(Cas(2, 3), 2, Some(3))];
        assert!(matches!(check(None, &bad, 1000), Verdict::Invalid { .. }));
        // Two CAS from the same value cannot both succeed.
        let both = [t(Write(1), 0, Some(1)), t(Cas(1, 2), 2, Some(5)), t(Cas(1, 3), 2, Some(5))];
        assert!(matches!(check(None, &both, 1000), Verdict::Invalid { .. }));
    }

    #[test]
    fn a_search_over_its_budget_is_unknown_not_valid() {
        // Many concurrent writes followed by a read that matches none: lots of orders to try.
        let mut h: Vec<Timed> = (0..12).map(|i| t(Write(i), 0, Some(100))).collect();
        h.push(t(Read(Some(99)), 200, Some(201)));
        assert!(matches!(check(None, &h, 50), Verdict::Unknown(_)));
        assert!(matches!(check(None, &h, 10_000_000), Verdict::Invalid { .. }));
    }

    #[test]
    fn long_histories_need_about_one_step_per_event() {
        // 10 clients, 20 000 operations, each client's ops back to back, overlapping others.
        let mut h = Vec::new();
        let mut value = 0i64;
        for k in 0..20_000u64 {
            let start = k * 10;
            let op = if k % 3 == 0 {
                value += 1;
                Write(value)
            } else {
                Read(Some(value))
            };
            h.push(t(op, start, Some(start + 25)));
        }
        // The bound is in search steps, so this says "about linear" deterministically.
        assert_eq!(check(Some(0), &h, 200_000), Verdict::Valid);
    }
}
