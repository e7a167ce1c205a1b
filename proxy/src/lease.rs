//! The coordinators' write lease: fencing for a proxy that was failed over while it was
//! unreachable (paused, partitioned) and comes back with its old slots.
//!
//! Coordinators probe every proxy with `UMCTL HEALTH <lease_ms> <epoch> [node…]`. When the
//! proxy has at least the metadata epoch the coordinator expects and all the named Redis
//! nodes answer, the probe renews a lease of `lease_ms`. Once a proxy has been granted a
//! lease, it serves data commands only while the lease runs; when it expires (no coordinator
//! reached it in time, or it fell behind on metadata) commands get `CLUSTERDOWN`. The
//! coordinators fail a proxy over only after failing to probe it for longer than the lease, so
//! by the time its slots move elsewhere it has stopped serving them, even if it resumes
//! before any coordinator can push it the new metadata.
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
}
