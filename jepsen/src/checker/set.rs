//! The set check: after every fault was healed, a final read must contain every element whose
//! add was acknowledged, and nothing that was never attempted. Adds with an unknown outcome may
//! be there or not.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetResult {
    pub valid: bool,
    pub attempted: usize,
    pub acknowledged: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: Vec<String>,
    /// Elements in the final read that no add ever attempted.
    pub unexpected: Vec<String>,
    /// Adds with an unknown outcome that did happen.
    pub recovered: usize,
}

/// `acked`: adds that answered ok; `unknown`: adds without a definite answer; `failed`: adds
/// that definitely did not happen; `final_read`: what the final read returned.
pub fn check(
    acked: &BTreeSet<String>,
    unknown: &BTreeSet<String>,
    failed: &BTreeSet<String>,
    final_read: &BTreeSet<String>,
) -> SetResult {
    let lost: Vec<String> = acked.difference(final_read).cloned().collect();
    let unexpected: Vec<String> = final_read
        .iter()
        .filter(|e| !acked.contains(*e) && !unknown.contains(*e) && !failed.contains(*e))
        .cloned()
        .collect();
    // An add that was refused must not be there either.
    let resurrected: Vec<String> = failed.intersection(final_read).cloned().collect();
    let recovered = unknown.intersection(final_read).count();
    let mut unexpected = unexpected;
    unexpected.extend(resurrected);
    SetResult {
        valid: lost.is_empty() && unexpected.is_empty(),
        attempted: acked.len() + unknown.len() + failed.len(),
        acknowledged: acked.len(),
        lost,
        unexpected,
        recovered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn every_acknowledged_add_must_be_read() {
        let r = check(&s(&["a", "b"]), &s(&["c"]), &s(&[]), &s(&["a", "b"]));
        assert!(r.valid && r.recovered == 0);
        let r = check(&s(&["a", "b"]), &s(&["c"]), &s(&[]), &s(&["a", "b", "c"]));
        assert!(r.valid && r.recovered == 1);
        let r = check(&s(&["a", "b"]), &s(&[]), &s(&[]), &s(&["a"]));
        assert_eq!((r.valid, r.lost.clone()), (false, vec!["b".to_owned()]));
    }

    #[test]
    fn nothing_never_attempted_or_refused_may_appear() {
        let r = check(&s(&["a"]), &s(&[]), &s(&["x"]), &s(&["a", "zzz", "x"]));
        assert!(!r.valid);
        assert_eq!(r.unexpected, vec!["zzz".to_owned(), "x".to_owned()]);
    }
}
