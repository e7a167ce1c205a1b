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

fn now_ms() -> u64 {
    // +1 so that a lease granted at the origin is not mistaken for "never leased".
    origin().elapsed().as_millis() as u64 + 1
}

impl Lease {
    /// Extends the lease to `duration` from now (never shortens a running one).
    pub fn renew(&self, duration: Duration) {
        let until = now_ms() + duration.as_millis() as u64;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// The current time as a stamp to hand to a coordinator (positive, fits in an `i64`).
    pub fn stamp(&self) -> i64 {
        ((process_id() << STAMP_CLOCK_BITS) | now_ms()) as i64
    }

    /// Extends the lease to `duration` after the moment `stamp` was issued (never shortens a
    /// running one). False, and nothing renewed, for a stamp this process did not issue.
    pub fn renew_from(&self, stamp: i64, duration: Duration) -> bool {
        let Ok(stamp) = u64::try_from(stamp) else { return false };
        let at = stamp & ((1 << STAMP_CLOCK_BITS) - 1);
        if stamp >> STAMP_CLOCK_BITS != process_id() || at == 0 || at > now_ms() {
            return false;
        }
        self.until_ms.fetch_max(at + duration.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// True when a lease was granted and has run out.
    pub fn expired(&self) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() > until
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
