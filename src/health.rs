//! Routing: which processor a payment goes to now, from what the engine knows of both.
//!
//! Owns the routing policy ([`route`], a pure function of a [`View`] of each processor) and
//! the health poller ([`poll_once`]). What the policy maximises is the contest's score:
//! - **Default while it is healthy and fast**: it charges 7 % against fallback's 10 %.
//! - **Never a processor slower than [`SLOW_MS`]**: the consistency check compares the books
//!   over `[now - 15 s, now - 2 s]`; a payment whose processor answers after ~2 s is stored
//!   by the processor inside that window and by us a moment later, so a check can catch it
//!   in one book only (a 35 % fine). 1.5 s leaves a margin for the check's own timing.
//! - **Fallback when default fails or is slow**, under the same two conditions.
//! - **Neither** when both fail or are slow: payments wait (in the consumer, then in the
//!   ring) and drain when one recovers. Waiting costs nothing in the score as long as they
//!   drain before the end; sending to a failing processor costs its delay for nothing.
//!
//! Evidence, freshest first: requests outstanding longer than expected (flagged by the
//! consumers the moment they pass [`View::slow_after_ms`], not when they end), failures seen in the
//! last second, the last health poll (failing, minResponseTime) when less than 10 s old, and
//! the moving average of response times when it holds observations newer than that poll.
//!
//! "Longer than expected" is the expected latency (the larger of the fresh poll's delay and
//! the moving average) plus [`SLOW_MARGIN_MS`], capped at [`SLOW_MS`]. A delay that jumps
//! (103 ms -> 2000 ms at 270 s) is noticed about 0.4 s after it starts, not 1.5 s: the payments
//! sent to default in that moment are the only ones that come back after the 2 s margin of the
//! consistency check, so the chance that one of the checks (every 10 s) falls where it could
//! catch one in a single book shrinks with that moment, from about 1.5/10 to about 0.4/10.
//! The price: a jump that stays under the limit (0 -> 1000 ms at 30 s) also sends about a
//! second of payments to fallback before the average catches up.
//!
//! The contest's final timeline (delay ms / failing), and what [`route`] picks:
//!
//! | from s | default | fallback | pick | why |
//! |---|---|---|---|---|
//! | 0 | 0 / no | 0 / no | default | cheapest |
//! | 30 | 1000 / no | 0 / no | default | 1 s is under the 1.5 s limit (fallback for ~1 s while the average learns it) |
//! | 60 | 500 / no | 0 / no | default | |
//! | 90 | 2000 / yes | 1000 / no | fallback | default fails (and is slow); ~1 s of waiting while fallback's new 1 s delay is learnt |
//! | 120 | 5000 / yes | 5 / no | fallback | default fails |
//! | 150 | 0 / no | 5 / yes | default | once a poll (<= 5.1 s) says default recovered; payments wait until then |
//! | 180 | 100 / no | 5 / no | default | |
//! | 210 | 50 / no | 0 / no | default | |
//! | 240 | 103 / no | 10 / no | default | |
//! | 270 | 2000 / no | 0 / no | fallback | default too slow for the consistency check: ~0.4 s of default, then fallback |
use std::sync::atomic::Ordering;

use crate::processor_client::ProcessorClient;
use crate::shm::{Processor, ProcessorHealth};

/// Slower than this, a processor is not used (see the module doc).
pub const SLOW_MS: i64 = 1500;
/// A failure seen by a consumer keeps a processor out for this long (then one is tried again).
pub const FAILURE_HOLD_MS: i64 = 1000;
/// A request outstanding this much longer than expected flags its processor as slow.
pub const SLOW_MARGIN_MS: i64 = 300;
/// Observations older than this no longer keep a processor out by their average (so a
/// processor whose health poll is missing is tried again now and then).
pub const AVERAGE_FRESH_MS: i64 = 5_000;
/// A slow request keeps its processor out for this long after it was last seen outstanding.
pub const SLOW_SEEN_HOLD_MS: i64 = 300;
/// A health poll older than this is ignored.
pub const POLL_FRESH_MS: i64 = 10_000;
/// The health endpoint allows one call per 5 s; we poll a little less often.
pub const POLL_EVERY_MS: i64 = 5_100;

/// A snapshot of what is known of one processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Last poll said failing.
    pub polled_failing: bool,
    /// Last poll's minResponseTime.
    pub polled_delay_ms: i64,
    /// When that poll answered (0 = never).
    pub polled_at_ms: i64,
    /// Consecutive failures seen by consumers.
    pub consecutive_failures: u32,
    /// Last failure seen by a consumer.
    pub last_failure_ms: i64,
    /// Last time a request was seen outstanding for longer than [`SLOW_MS`].
    pub slow_seen_ms: i64,
    /// Moving average of response times, ms.
    pub latency_ms: i64,
    /// Last success seen by a consumer.
    pub last_success_ms: i64,
}

impl View {
    /// Reads the board.
    pub fn of(h: &ProcessorHealth) -> View {
        View {
            polled_failing: h.failing.load(Ordering::Relaxed) != 0,
            polled_delay_ms: i64::from(h.min_response_ms.load(Ordering::Relaxed)),
            polled_at_ms: h.polled_at_ms.load(Ordering::Relaxed),
            consecutive_failures: h.consecutive_failures.load(Ordering::Relaxed),
            last_failure_ms: h.last_failure_ms.load(Ordering::Relaxed),
            slow_seen_ms: h.slow_seen_ms.load(Ordering::Relaxed),
            latency_ms: i64::from(h.latency_ewma_us.load(Ordering::Relaxed)) / 1000,
            last_success_ms: h.last_success_ms.load(Ordering::Relaxed),
        }
    }

    fn poll_fresh(&self, now_ms: i64) -> bool {
        self.polled_at_ms > 0 && now_ms.saturating_sub(self.polled_at_ms) <= POLL_FRESH_MS
    }

    /// Whether this processor may take a payment now.
    pub fn usable(&self, now_ms: i64) -> bool {
        let poll_fresh = self.poll_fresh(now_ms);
        if poll_fresh && (self.polled_failing || self.polled_delay_ms >= SLOW_MS) {
            return false;
        }
        if self.consecutive_failures > 0
            && now_ms.saturating_sub(self.last_failure_ms) < FAILURE_HOLD_MS
        {
            return false;
        }
        if self.slow_seen_ms > 0 && now_ms.saturating_sub(self.slow_seen_ms) < SLOW_SEEN_HOLD_MS {
            return false;
        }
        // A poll resets the average to the advertised delay, so the average counts when it
        // holds observations newer than the poll (a delay that changed since), and recent ones.
        let observed_at = self.last_success_ms.max(self.last_failure_ms);
        let average_counts = observed_at >= self.polled_at_ms
            && now_ms.saturating_sub(observed_at) <= AVERAGE_FRESH_MS;
        !(average_counts && self.latency_ms >= SLOW_MS)
    }

    /// How long a request to this processor may be outstanding before it counts as slow
    /// evidence (see the module doc).
    pub fn slow_after_ms(&self, now_ms: i64) -> i64 {
        let polled = if self.poll_fresh(now_ms) {
            self.polled_delay_ms
        } else {
            0
        };
        (polled.max(self.latency_ms) + SLOW_MARGIN_MS).min(SLOW_MS)
    }
}

/// The processor a new payment goes to, or `None` to wait.
pub fn route(default: &View, fallback: &View, now_ms: i64) -> Option<Processor> {
    if default.usable(now_ms) {
        Some(Processor::Default)
    } else if fallback.usable(now_ms) {
        Some(Processor::Fallback)
    } else {
        None
    }
}

/// Records a consumer's observation of one request to `h`.
pub fn observe(h: &ProcessorHealth, ok: bool, latency_us: u64, now_ms: i64) {
    if ok {
        h.consecutive_failures.store(0, Ordering::Relaxed);
        h.last_success_ms.store(now_ms, Ordering::Relaxed);
    } else {
        h.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        h.last_failure_ms.store(now_ms, Ordering::Relaxed);
    }
    let sample = latency_us.min(u64::from(u32::MAX)) as u32;
    let old = h.latency_ewma_us.load(Ordering::Relaxed);
    // EWMA with weight 1/8: advisory, so a lost update between consumers does not matter.
    let new = if old == 0 {
        sample
    } else {
        old - old / 8 + sample / 8
    };
    h.latency_ewma_us.store(new, Ordering::Relaxed);
}

/// Polls `client`'s health endpoint and publishes the answer in `h`.
pub async fn poll_once(client: &ProcessorClient, h: &ProcessorHealth, now_ms: i64) -> bool {
    match client.health().await {
        Some(health) => {
            h.failing
                .store(u32::from(health.failing), Ordering::Relaxed);
            h.min_response_ms
                .store(health.min_response_ms, Ordering::Relaxed);
            h.polled_at_ms.store(now_ms, Ordering::Relaxed);
            // A fresh poll replaces stale averages: the processor's delay is the floor.
            h.latency_ewma_us.store(
                health.min_response_ms.saturating_mul(1000),
                Ordering::Relaxed,
            );
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polled(delay: i64, failing: bool) -> View {
        View {
            polled_failing: failing,
            polled_delay_ms: delay,
            polled_at_ms: 1_000,
            ..View::default()
        }
    }

    #[test]
    fn the_final_timeline_routes_as_documented() {
        use Processor::*;
        let stages: [(i64, bool, i64, bool, Option<Processor>); 10] = [
            (0, false, 0, false, Some(Default)),
            (1000, false, 0, false, Some(Default)),
            (500, false, 0, false, Some(Default)),
            (2000, true, 1000, false, Some(Fallback)),
            (5000, true, 5, false, Some(Fallback)),
            (0, false, 5, true, Some(Default)),
            (100, false, 5, false, Some(Default)),
            (50, false, 0, false, Some(Default)),
            (103, false, 10, false, Some(Default)),
            (2000, false, 0, false, Some(Fallback)),
        ];
        for (dd, df, fd, ff, want) in stages {
            assert_eq!(
                route(&polled(dd, df), &polled(fd, ff), 2_000),
                want,
                "default {dd}/{df} fallback {fd}/{ff}"
            );
        }
    }

    #[test]
    fn both_bad_means_wait() {
        assert_eq!(route(&polled(0, true), &polled(0, true), 2_000), None);
        assert_eq!(
            route(&polled(3000, false), &polled(2500, false), 2_000),
            None
        );
    }

    #[test]
    fn consumer_evidence_beats_an_old_poll() {
        let now = 100_000;
        let mut d = polled(0, false);
        d.polled_at_ms = now - 1000;
        d.slow_seen_ms = now - 10;
        assert_eq!(route(&d, &View::default(), now), Some(Processor::Fallback));
        d.slow_seen_ms = now - SLOW_SEEN_HOLD_MS;
        assert_eq!(route(&d, &View::default(), now), Some(Processor::Default));
        d.consecutive_failures = 2;
        d.last_failure_ms = now - 10;
        assert_eq!(route(&d, &View::default(), now), Some(Processor::Fallback));
        // The hold expires: default is tried again.
        assert_eq!(
            route(&d, &View::default(), now + FAILURE_HOLD_MS),
            Some(Processor::Default)
        );
        // A poll older than POLL_FRESH_MS no longer counts.
        let stale = View {
            polled_failing: true,
            polled_at_ms: now - POLL_FRESH_MS - 1,
            ..View::default()
        };
        assert_eq!(
            route(&stale, &View::default(), now),
            Some(Processor::Default)
        );
    }

    #[test]
    fn a_delay_that_jumps_is_noticed_before_the_consistency_margin() {
        // 240 s: default advertises 103 ms and answers in about that.
        let now = 270_000;
        let mut d = polled(103, false);
        d.polled_at_ms = now - 4_000;
        d.latency_ms = 104;
        d.last_success_ms = now - 1;
        assert_eq!(d.slow_after_ms(now), 104 + SLOW_MARGIN_MS);
        assert!(d.slow_after_ms(now) < 2_000 - 1_500);
        // Never later than SLOW_MS, whatever the processor advertises.
        assert_eq!(polled(1_400, false).slow_after_ms(2_000), SLOW_MS);
        // 270 s: answers now take 2 s while the poll still says 103 ms: the average of
        // observations newer than the poll keeps default out.
        d.latency_ms = 1_600;
        d.last_success_ms = now + 2_000;
        assert_eq!(
            route(&d, &View::default(), now + 2_000),
            Some(Processor::Fallback)
        );
        // A newer poll resets the average (poll_once stores the advertised delay).
        d.polled_at_ms = now + 3_000;
        d.polled_delay_ms = 2_000;
        d.latency_ms = 2_000;
        assert_eq!(
            route(&d, &View::default(), now + 3_000),
            Some(Processor::Fallback)
        );
        // 300 s and later: the delay is back to 0.
        d.polled_at_ms = now + 8_000;
        d.polled_delay_ms = 0;
        d.latency_ms = 0;
        assert_eq!(
            route(&d, &View::default(), now + 8_000),
            Some(Processor::Default)
        );
    }

    #[test]
    fn a_slow_average_without_a_poll_expires_so_the_processor_is_tried_again() {
        let d = View {
            latency_ms: 3_000,
            last_success_ms: 10_000,
            ..View::default()
        };
        assert_eq!(
            route(&d, &View::default(), 10_100),
            Some(Processor::Fallback)
        );
        assert_eq!(
            route(&d, &View::default(), 10_000 + AVERAGE_FRESH_MS + 1),
            Some(Processor::Default)
        );
        // A poll newer than the observations wins over their average.
        let fresh = View {
            polled_at_ms: 10_050,
            ..d
        };
        assert_eq!(
            route(&fresh, &View::default(), 10_100),
            Some(Processor::Default)
        );
    }

    #[test]
    fn observations_update_the_board() {
        let h = ProcessorHealth::default();
        observe(&h, false, 2_000_000, 5);
        observe(&h, false, 2_000_000, 6);
        assert_eq!(h.consecutive_failures.load(Ordering::Relaxed), 2);
        assert_eq!(h.last_failure_ms.load(Ordering::Relaxed), 6);
        observe(&h, true, 1000, 7);
        assert_eq!(h.consecutive_failures.load(Ordering::Relaxed), 0);
        assert!(h.latency_ewma_us.load(Ordering::Relaxed) < 2_000_000);
    }
}
