//! Slot range arithmetic: compaction, counting, and the even split (`docs/allocation.md#slots-on-creation`).

/// Hash slots, as `u32` for the arithmetic here.
pub const SLOTS: u32 = moonraft_wire::SLOT_COUNT as u32;

/// Inclusive range, JSON `[start, end]` (shared with the proxies).
pub use moonraft_wire::Range;

/// Sorted, non-overlapping, adjacent ranges merged.
pub fn compact(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start as u32 <= last.end as u32 + 1 => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

pub fn count(ranges: &[Range]) -> u32 {
    ranges.iter().map(Range::len).sum()
}

/// Slots per master when `masters` share all slots: `avg` each, the first `rem` one more.
pub fn target(masters: u32, k: u32) -> u32 {
    let avg = SLOTS / masters;
    let rem = SLOTS - avg * masters;
    avg + u32::from(k < rem)
}

/// The contiguous range of every master on creation.
pub fn split_even(masters: u32) -> Vec<Range> {
    let mut out = Vec::with_capacity(masters as usize);
    let mut start = 0u32;
    for k in 0..masters {
        let n = target(masters, k);
        out.push(Range { start: start as u16, end: (start + n - 1) as u16 });
        start += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(a: u16, b: u16) -> Range {
        Range { start: a, end: b }
    }

    #[test]
    fn split_matches_the_spec_table() {
        assert_eq!(split_even(2), vec![r(0, 8191), r(8192, 16383)]);
        assert_eq!(split_even(4), vec![r(0, 4095), r(4096, 8191), r(8192, 12287), r(12288, 16383)]);
        assert_eq!(
            split_even(6),
            vec![r(0, 2730), r(2731, 5461), r(5462, 8192), r(8193, 10923), r(10924, 13653), r(13654, 16383)]
        );
        assert!(split_even(8).iter().all(|x| x.len() == 2048));
    }

    #[test]
    fn compaction() {
        assert_eq!(compact(vec![r(5, 9), r(0, 4), r(20, 30), r(25, 26)]), vec![r(0, 9), r(20, 30)]);
        assert_eq!(compact(vec![]), vec![]);
    }

    proptest! {
        #[test]
        fn split_covers_every_slot_once(masters in 1u32..=200) {
            let ranges = split_even(masters);
            prop_assert_eq!(ranges.len() as u32, masters);
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges.last().unwrap().end, 16383);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].end as u32 + 1, w[1].start as u32);
            }
            let min = ranges.iter().map(Range::len).min().unwrap();
            let max = ranges.iter().map(Range::len).max().unwrap();
            prop_assert!(max - min <= 1);
        }

        #[test]
        fn compact_preserves_slots(raw in proptest::collection::vec((0u16..16384, 0u16..200), 0..30)) {
            let ranges: Vec<Range> = raw.iter().map(|&(s, l)| r(s, s.saturating_add(l).min(16383))).collect();
            let mut want = std::collections::BTreeSet::new();
            for x in &ranges { for s in x.start..=x.end { want.insert(s); } }
            let c = compact(ranges);
            let mut got = std::collections::BTreeSet::new();
            for x in &c { for s in x.start..=x.end { got.insert(s); } }
            prop_assert_eq!(got, want);
            for w in c.windows(2) { prop_assert!(w[0].end as u32 + 1 < w[1].start as u32); }
        }
    }
}
