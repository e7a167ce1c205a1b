//! The coordinators' write lease: fencing for a proxy that was failed over while it was
//! unreachable (paused, partitioned) and comes back with its old slots.
//!
//! Coordinators probe every proxy with `UMCTL HEALTH <lease_ms> <epoch> [STAMP <s>] [node…]`.
//! When the proxy has at least the metadata epoch the coordinator expects and all the named
//! Redis nodes answer, it replies with a *stamp*: its own clock reading at that moment. The
//! coordinator's next probe hands the stamp back, and that renews the lease to `stamp +
//! lease_ms`. Once a proxy has been granted a lease, it serves data commands only while the
//! lease runs; when it expires (no coordinator reached it in time, or it fell behind on
//! metadata) commands get `CLUSTERDOWN`. The coordinators fail a proxy over only after going
//! without a healthy answer for longer than the lease, so by the time its slots move elsewhere
//! it has stopped serving them, even if it resumes before any coordinator can push it the new
//! metadata.
//!
//! Why a stamp handed back rather than "renew when a probe arrives": a probe can arrive late.
//! A proxy paused (SIGSTOP, a VM freeze) while probes queue up in its socket reads them when it
//! resumes, long after the coordinator gave up on it and failed it over; counting the lease
//! from their arrival would let it serve its old slots again. A stamp is the proxy's own time
//! of an answer the coordinator *received* (before the coordinator's failure window started),
//! so however late it comes back, the lease it grants ends no later than the coordinator
//! assumes. Stamps carry a per-process id, so one from an earlier run of the proxy is ignored.
//!
//! The trade-off: if every coordinator is down, or cut off from a proxy, for longer than the
//! lease, that proxy stops serving. Run two or more coordinators; an operator who prefers
//! availability over this fencing sets `coordinator_lease = false` on the proxies. A proxy
//! that no coordinator ever leased (a stand-alone proxy) is never fenced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since a process-wide origin; 0 means "never leased".
#[derive(Default)]
pub struct Lease {
    until_ms: AtomicU64,
    /// The stamp id of the process this one took over from (`handover.rs`; 0: none), whose
    /// stamps coordinators may still hand back, and the offset from its clock to this one's.
    predecessor: AtomicU64,
    predecessor_offset: std::sync::atomic::AtomicI64,
    /// The current expiry has been logged (once per lapse).
    lapse_logged: std::sync::atomic::AtomicBool,
}

/// Bits of a stamp holding the clock reading (2^40 ms is about 34 years).
const STAMP_CLOCK_BITS: u32 = 40;

/// This process's stamp id: 1..2^22, from the start time and pid (different across restarts
/// with overwhelming likelihood; it is not a secret — only admins may send `UMCTL`).
fn process_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mixed = (nanos ^ (u64::from(std::process::id()) << 17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 42).max(1)
    })
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

pub(crate) fn now_ms() -> u64 {
    // +1 so that a lease granted at the origin is not mistaken for "never leased".
    origin().elapsed().as_millis() as u64 + 1
}

impl Lease {
    /// Extends the lease to `duration` from now (never shortens a running one).
    pub fn renew(&self, duration: Duration) {
        let until = now_ms() + duration.as_millis() as u64;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
        self.lapse_logged.store(false, Ordering::Relaxed);
    }

    /// The current time as a stamp to hand to a coordinator (positive, fits in an `i64`).
    pub fn stamp(&self) -> i64 {
        ((process_id() << STAMP_CLOCK_BITS) | now_ms()) as i64
    }

    /// Extends the lease to `duration` after the moment `stamp` was issued (never shortens a
    /// running one). False, and nothing renewed, for a stamp this process did not issue.
    pub fn renew_from(&self, stamp: i64, duration: Duration) -> bool {
        let Ok(stamp) = u64::try_from(stamp) else { return false };
        let clock = (stamp & ((1 << STAMP_CLOCK_BITS) - 1)) as i64;
        let issuer = stamp >> STAMP_CLOCK_BITS;
        // On this process's clock; a predecessor's stamp may predate this process (negative).
        let at = if issuer == process_id() {
            clock
        } else if issuer != 0 && issuer == self.predecessor.load(Ordering::Relaxed) {
            clock + self.predecessor_offset.load(Ordering::Relaxed)
        } else {
            return false;
        };
        if clock == 0 || at > now_ms() as i64 {
            return false;
        }
        let until = at.saturating_add(duration.as_millis() as i64);
        if until >= 1 {
            self.until_ms.fetch_max(until as u64, Ordering::Relaxed);
            self.lapse_logged.store(false, Ordering::Relaxed);
        }
        true
    }

    /// Takes over what is left of another process's lease (`handover.rs`): `remaining` and
    /// `stamp` (its `stamp()`) as that process measured them at or after `asked_at` (this
    /// process's `now_ms()`). The lease here ends no later than it did there, and that
    /// process's stamps renew this lease (a coordinator's next probe hands one back): mapped
    /// onto this clock as if issued no later than they were.
    pub fn inherit(&self, remaining: Option<i64>, stamp: i64, asked_at: u64) {
        if let Some(left) = remaining {
            let until = (asked_at as i64).saturating_add(left).max(1) as u64;
            self.until_ms.store(until, Ordering::Relaxed);
        }
        if let Ok(stamp) = u64::try_from(stamp) {
            let clock = stamp & ((1 << STAMP_CLOCK_BITS) - 1);
            // Its clock read `clock` after this one read `asked_at`: adding the difference
            // places its times a little early here, never late.
            self.predecessor_offset.store(asked_at as i64 - clock as i64, Ordering::Relaxed);
            self.predecessor.store(stamp >> STAMP_CLOCK_BITS, Ordering::Relaxed);
        }
    }

    /// True when a lease was granted and has run out.
    pub fn expired(&self) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        let expired = until != 0 && now_ms() > until;
        if expired && !self.lapse_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                over_ms = now_ms().saturating_sub(until),
                "the coordinator lease ran out: data commands get CLUSTERDOWN until a coordinator renews it"
            );
        }
        expired
    }

    /// Milliseconds left (negative: expired); `None` if never leased.
    pub fn remaining_ms(&self) -> Option<i64> {
        let until = self.until_ms.load(Ordering::Relaxed);
        (until != 0).then(|| until as i64 - now_ms() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_and_is_renewed() {
        let l = Lease::default();
        assert!(!l.expired(), "never leased: never fenced");
        assert_eq!(l.remaining_ms(), None);
        l.renew(Duration::from_millis(30));
        assert!(!l.expired());
        std::thread::sleep(Duration::from_millis(50));
        assert!(l.expired());
        l.renew(Duration::from_millis(1000));
        assert!(!l.expired());
        // A shorter renewal does not cut a running lease.
        l.renew(Duration::from_millis(1));
        assert!(l.remaining_ms().unwrap() > 500);
    }

    #[test]
    fn a_late_stamp_grants_no_more_than_its_issue_time_allows() {
        let l = Lease::default();
        let stamp = l.stamp();
        std::thread::sleep(Duration::from_millis(60));
        // Handed back 60 ms late: a 50 ms lease from the issue time is already over.
        assert!(l.renew_from(stamp, Duration::from_millis(50)));
        assert!(l.expired(), "a late stamp must not start a fresh lease");
        assert!(l.renew_from(stamp, Duration::from_millis(5000)));
        assert!(!l.expired());
        let left = l.remaining_ms().unwrap();
        assert!(left <= 5000 - 60, "counted from the stamp, not from now: {left}");
    }

    #[test]
    fn a_predecessors_stamps_renew_no_further_than_they_would_have_there() {
        let before = Lease::default();
        before.renew(Duration::from_millis(750));
        let issued = before.stamp();
        std::thread::sleep(Duration::from_millis(40));
        // The successor asks, then the predecessor answers with its lease and clock.
        let after = Lease::default();
        let asked_at = now_ms();
        after.inherit(before.remaining_ms(), before.stamp(), asked_at);
        let (was, is) = (before.until_ms.load(Ordering::Relaxed), after.until_ms.load(Ordering::Relaxed));
        assert!(is <= was && is + 50 > was, "ends no later than there: {is} vs {was}");
        // Same process here (tests share one id): use a foreign id as the predecessor's.
        let foreign = |s: i64| s ^ (1 << STAMP_CLOCK_BITS);
        let other = Lease::default();
        other.inherit(None, foreign(before.stamp()), now_ms());
        assert_eq!(other.remaining_ms(), None, "no lease was running");
        assert!(other.renew_from(foreign(issued), Duration::from_millis(750)));
        let granted = other.remaining_ms().unwrap();
        assert!(granted <= 750 - 40, "counted from when the stamp was issued there: {granted}");
        assert!(!other.renew_from(issued ^ (3 << STAMP_CLOCK_BITS), Duration::from_secs(5)), "a third process");

        // A predecessor that ran long before this process started: its clock is far ahead.
        let id = 0x2a_u64;
        let old = |clock: u64| ((id << STAMP_CLOCK_BITS) | clock) as i64;
        let fresh = Lease::default();
        fresh.inherit(Some(700), old(1_000_000), now_ms());
        assert!(fresh.renew_from(old(999_990), Duration::from_millis(750)), "issued 10 ms before the handover");
        let left = fresh.remaining_ms().unwrap();
        assert!(left > 600 && left <= 740, "{left}");
        assert!(!fresh.renew_from(old(1_000_000 + 60_000), Duration::from_millis(750)), "a time not reached yet");
        assert!(fresh.renew_from(old(1), Duration::from_millis(750)), "its own, long over");
        assert!(fresh.remaining_ms().unwrap() > 600, "an old stamp shortens nothing");
    }

    #[test]
    fn foreign_or_future_stamps_are_refused() {
        let l = Lease::default();
        let stamp = l.stamp();
        let other_process = stamp ^ (1 << STAMP_CLOCK_BITS);
        assert!(!l.renew_from(other_process, Duration::from_secs(5)));
        assert!(!l.renew_from(stamp + 10_000_000, Duration::from_secs(5)), "a time this process has not reached");
        assert!(!l.renew_from(-1, Duration::from_secs(5)));
        assert!(!l.renew_from(0, Duration::from_secs(5)));
        assert_eq!(l.remaining_ms(), None, "nothing was granted");
    }
}
