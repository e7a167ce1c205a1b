//! Telling a dead proxy from a slow start or a blip: the decision part of the probe loop, with
//! no clock and no network (times are durations since the agent started, given by the caller).
//!
//! A proxy is reported only when all of these hold:
//!
//! - the latest probe failed for a reason that says something about the proxy (refused, reset,
//!   timed out, a Redis node behind it down), not about this coordinator (its own name lookup,
//!   its own sockets running out): those count neither way, until they have lasted
//!   `local_error_grace` without a healthy answer (a name that has not resolved for that long
//!   is as good as gone: a container that was killed before this coordinator ever resolved
//!   it must still be failed over);
//! - `failure_probes` probes in a row failed;
//! - no healthy answer for at least `window` (from the last healthy answer, so a proxy whose
//!   lease — always shorter than the window — was renewed by that answer has stopped serving
//!   by the time it is reported);
//! - the proxy has answered healthily at least once since this agent started, or the start-up
//!   grace has passed (a proxy registered before it was started, or whose Redis is still
//!   loading, is not dead);
//! - this coordinator can reach at least one other proxy (if it reaches none, the problem is
//!   more likely on this side);
//! - the proxy is not in the failed set, or it is but is still in a cluster (the failover found
//!   no replacement and must be retried).
//!
//! While those hold, the report is refreshed every `report_every`; the first healthy answer
//! after a report withdraws it. A proxy in the failed set that answers healthily for
//! `recovery` is recovered (back to the free pool).

use std::time::Duration;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The proxy and every Redis node it was asked about answered.
    Healthy,
    /// Evidence against the proxy.
    Down(String),
    /// Evidence about this coordinator, not the proxy: counted neither way.
    Local(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    pub window: Duration,
    pub failure_probes: u32,
    pub startup_grace: Duration,
    pub recovery: Duration,
    pub report_every: Duration,
    pub local_error_grace: Duration,
}

/// What the agent knows besides the probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// In the brokers' failed set.
    pub failed: bool,
    /// In a cluster (for a failed proxy: the failover found no replacement yet).
    pub in_cluster: bool,
    /// This coordinator reaches none of the other proxies it probes.
    pub cut_off: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// Report (or refresh the report of) a failure.
    Report(String),
    /// A failure that would be reported, held back: why.
    Hold(&'static str),
    /// Healthy again after a report: withdraw it.
    Withdraw,
    /// A failed proxy has been healthy for `recovery`: return it to the pool.
    Recover,
}

#[derive(Debug, Clone, Default)]
pub struct Detector {
    last_healthy: Option<Duration>,
    failures: u32,
    /// A report of ours may be on record at the brokers.
    reported: bool,
    last_report: Option<Duration>,
    healthy_since: Option<Duration>,
}

impl Detector {
    /// Failed probes in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the proxy has gone without a healthy answer at `now` (since the agent
    /// started if it never answered).
    pub fn unreachable_for(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_healthy.unwrap_or_default())
    }

    pub fn on_probe(&mut self, c: &DetectorConfig, now: Duration, probe: &Probe, ctx: Context) -> Verdict {
        let lasting;
        let probe = match probe {
            Probe::Local(reason) if self.unreachable_for(now) >= c.local_error_grace => {
                lasting = Probe::Down(format!("{reason}, for {} s", self.unreachable_for(now).as_secs()));
                &lasting
            }
            other => other,
        };
        match probe {
            Probe::Healthy => {
                self.failures = 0;
                self.last_healthy = Some(now);
                let since = *self.healthy_since.get_or_insert(now);
                if ctx.failed {
                    if now.saturating_sub(since) >= c.recovery {
                        return Verdict::Recover;
                    }
                    return Verdict::Nothing;
                }
                if self.reported {
                    return Verdict::Withdraw;
                }
                Verdict::Nothing
            }
            Probe::Local(_) => Verdict::Nothing,
            Probe::Down(reason) => {
                self.healthy_since = None;
                self.failures = self.failures.saturating_add(1);
                if ctx.failed && !ctx.in_cluster {
                    return Verdict::Nothing;
                }
                if self.failures < c.failure_probes || self.unreachable_for(now) < c.window {
                    return Verdict::Nothing;
                }
                if self.last_healthy.is_none() && now < c.startup_grace {
                    return Verdict::Hold("it has not answered since it was registered (start-up grace)");
                }
                if ctx.cut_off {
                    return Verdict::Hold("this coordinator reaches no other proxy either");
                }
                if self.last_report.is_some_and(|t| now.saturating_sub(t) < c.report_every) {
                    return Verdict::Nothing;
                }
                Verdict::Report(reason.clone())
            }
        }
    }

    /// The brokers have our report (sent at `now`).
    pub fn reported(&mut self, now: Duration) {
        self.reported = true;
        self.last_report = Some(now);
    }

    /// Our report is gone (withdrawn, or the proxy was recovered, which drops every report).
    pub fn withdrawn(&mut self) {
        self.reported = false;
        self.last_report = None;
    }

    /// Recovery done: start counting healthy time afresh should it fail again.
    pub fn recovered(&mut self) {
        self.withdrawn();
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: DetectorConfig = DetectorConfig {
        window: Duration::from_millis(1000),
        failure_probes: 2,
        startup_grace: Duration::from_secs(30),
        recovery: Duration::from_secs(2),
        report_every: Duration::from_secs(1),
        local_error_grace: Duration::from_secs(30),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn down() -> Probe {
        Probe::Down("connect: refused".into())
    }

    #[test]
    fn a_crash_is_reported_once_the_window_has_passed() {
        let mut d = Detector::default();
        let live = Context::default();
        assert_eq!(d.on_probe(&CFG, ms(0), &Probe::Healthy, live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(200), &Probe::Healthy, live), Verdict::Nothing);
        // Killed right after: refused every 50 ms.
        let mut t = 400;
        while t < 1200 {
            assert_eq!(d.on_probe(&CFG, ms(t), &down(), live), Verdict::Nothing, "at {t} ms");
            t += 50;
        }
        assert_eq!(d.on_probe(&CFG, ms(1200), &down(), live), Verdict::Report("connect: refused".into()));
        d.reported(ms(1200));
        // Refreshed at most every second while it stays down.
        assert_eq!(d.on_probe(&CFG, ms(1250), &down(), live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(2200), &down(), live), Verdict::Report("connect: refused".into()));
        d.reported(ms(2200));
        // It answers again: the report is withdrawn.
        assert_eq!(d.on_probe(&CFG, ms(2400), &Probe::Healthy, live), Verdict::Withdraw);
        d.withdrawn();
        assert_eq!(d.on_probe(&CFG, ms(2600), &Probe::Healthy, live), Verdict::Nothing);
    }

    #[test]
    fn a_blip_shorter_than_the_window_is_not_reported() {
        let mut d = Detector::default();
        let live = Context::default();
        d.on_probe(&CFG, ms(0), &Probe::Healthy, live);
        for t in [200, 400, 600, 800] {
            assert_eq!(d.on_probe(&CFG, ms(t), &Probe::Down("timeout".into()), live), Verdict::Nothing);
        }
        assert_eq!(d.on_probe(&CFG, ms(1000), &Probe::Healthy, live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(1900), &Probe::Down("timeout".into()), live), Verdict::Nothing);
        assert_eq!(d.failures(), 1);
    }

    #[test]
    fn one_failed_probe_is_not_enough_even_after_a_long_silence() {
        // The coordinator itself was paused for 5 s: one late probe failure is not a verdict.
        let mut d = Detector::default();
        let live = Context::default();
        d.on_probe(&CFG, ms(0), &Probe::Healthy, live);
        assert_eq!(d.on_probe(&CFG, ms(5000), &Probe::Down("timeout".into()), live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(5100), &Probe::Healthy, live), Verdict::Nothing);
    }

    #[test]
    fn local_errors_count_neither_way() {
        let mut d = Detector::default();
        let live = Context::default();
        d.on_probe(&CFG, ms(0), &Probe::Healthy, live);
        for t in (200..5000).step_by(200) {
            let dns = Probe::Local("lookup: Name or service not known".into());
            assert_eq!(d.on_probe(&CFG, ms(t), &dns, live), Verdict::Nothing);
        }
        assert_eq!(d.failures(), 0);
        // ... and do not count as healthy either: the silence still adds up.
        assert_eq!(d.on_probe(&CFG, ms(5000), &down(), live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(5050), &down(), live), Verdict::Report("connect: refused".into()));
    }

    #[test]
    fn a_name_that_never_resolves_counts_after_the_local_error_grace() {
        // Killed before this coordinator ever resolved its name, which is gone now.
        let mut d = Detector::default();
        let live = Context::default();
        let dns = Probe::Local("lookup: Name or service not known".into());
        assert_eq!(d.on_probe(&CFG, ms(29_900), &dns, live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(30_000), &dns, live), Verdict::Nothing, "one failure");
        assert_eq!(
            d.on_probe(&CFG, ms(30_200), &dns, live),
            Verdict::Report("lookup: Name or service not known, for 30 s".into())
        );
    }

    #[test]
    fn a_proxy_that_never_answered_gets_the_start_up_grace() {
        let mut d = Detector::default();
        let live = Context::default();
        let held = Verdict::Hold("it has not answered since it was registered (start-up grace)");
        assert_eq!(d.on_probe(&CFG, ms(1500), &down(), live), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(1550), &down(), live), held);
        assert_eq!(d.on_probe(&CFG, ms(29_000), &down(), live), held);
        assert!(matches!(d.on_probe(&CFG, ms(30_000), &down(), live), Verdict::Report(_)));
        // Once it has answered, the grace is over for good.
        let mut d = Detector::default();
        d.on_probe(&CFG, ms(3000), &Probe::Healthy, live);
        d.on_probe(&CFG, ms(4000), &down(), live);
        assert!(matches!(d.on_probe(&CFG, ms(4100), &down(), live), Verdict::Report(_)));
    }

    #[test]
    fn a_coordinator_that_reaches_nobody_holds_its_reports() {
        let mut d = Detector::default();
        d.on_probe(&CFG, ms(0), &Probe::Healthy, Context::default());
        let cut = Context { cut_off: true, ..Context::default() };
        d.on_probe(&CFG, ms(1000), &down(), cut);
        assert_eq!(
            d.on_probe(&CFG, ms(1100), &down(), cut),
            Verdict::Hold("this coordinator reaches no other proxy either")
        );
    }

    #[test]
    fn failed_proxies_are_recovered_after_answering_for_a_while() {
        let mut d = Detector::default();
        let failed = Context { failed: true, ..Context::default() };
        // Down and replaced: nothing to report any more.
        d.on_probe(&CFG, ms(0), &down(), failed);
        assert_eq!(d.on_probe(&CFG, ms(40_000), &down(), failed), Verdict::Nothing);
        // Still in its cluster (no replacement yet): keep reporting so the failover is retried.
        let stuck = Context { failed: true, in_cluster: true, ..Context::default() };
        assert!(matches!(d.on_probe(&CFG, ms(40_050), &down(), stuck), Verdict::Report(_)));
        // Back: healthy for `recovery` without a break.
        assert_eq!(d.on_probe(&CFG, ms(41_000), &Probe::Healthy, failed), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(42_000), &Probe::Healthy, failed), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(42_500), &down(), failed), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(43_000), &Probe::Healthy, failed), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(44_000), &Probe::Healthy, failed), Verdict::Nothing);
        assert_eq!(d.on_probe(&CFG, ms(45_000), &Probe::Healthy, failed), Verdict::Recover);
        d.recovered();
        assert_eq!(d.on_probe(&CFG, ms(45_200), &Probe::Healthy, Context::default()), Verdict::Nothing);
    }
}
