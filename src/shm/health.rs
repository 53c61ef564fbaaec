//! The health board: what the engine knows about each payment processor, shared by every
//! consumer, and the lease that makes exactly one process the health poller.
//!
//! Contract: the fields are advisory (routing hints), so plain atomics with Relaxed ordering
//! suffice: a stale value costs a few milliseconds of routing, never a payment. The lease is
//! held by one member at a time: [`HealthBoard::try_lease`] renews it for its holder and
//! hands it over when the holder is dead (its process-table lock is free) or has stopped
//! renewing it.
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use crossbeam_utils::CachePadded;

use super::sys::Shared;
use super::{Member, Processor, Region};

/// A lease not renewed for this long is taken over even if its holder's entry is locked.
pub const LEASE_STALE_MS: i64 = 3_000;

/// What is known of one processor.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ProcessorHealth {
    /// 1 if the last health poll said failing.
    pub failing: AtomicU32,
    /// minResponseTime of the last health poll.
    pub min_response_ms: AtomicU32,
    /// When the last health poll answered (ms since the epoch).
    pub polled_at_ms: AtomicI64,
    /// Consumers' moving average of response times (µs).
    pub latency_ewma_us: AtomicU32,
    /// Consecutive failures seen by consumers (500, refused, reset, timeout).
    pub consecutive_failures: AtomicU32,
    /// Last failure seen by a consumer.
    pub last_failure_ms: AtomicI64,
    /// Last success seen by a consumer.
    pub last_success_ms: AtomicI64,
    /// Last time a consumer saw one of its requests outstanding for longer than the
    /// routing's slow limit (refreshed while such requests last; a time, not a counter, so
    /// that a consumer that dies cannot leave it set).
    pub slow_seen_ms: AtomicI64,
    /// When the poller last called this processor's health endpoint, answered or not: the
    /// next call waits [`crate::health::POLL_EVERY_MS`] from here, so a failed or refused
    /// (429) poll is not retried sooner, whichever process holds the lease.
    pub poll_tried_ms: AtomicI64,
}

/// The board's bytes in the file.
#[repr(C)]
pub struct BoardRaw {
    /// Default then fallback, each on its own cache line.
    pub processors: [CachePadded<ProcessorHealth>; 2],
    /// Poller lease: holder's member index + 1 (0 = none).
    pub lease_holder: AtomicU32,
    /// Last renewal of the lease.
    pub lease_renewed_ms: AtomicI64,
}
// SAFETY: only atomics.
unsafe impl Shared for BoardRaw {}

/// A view of the health board.
#[derive(Clone, Copy)]
pub struct HealthBoard<'a> {
    region: &'a Region,
    raw: &'a BoardRaw,
}

impl<'a> HealthBoard<'a> {
    pub(crate) fn new(region: &'a Region) -> Self {
        HealthBoard {
            region,
            raw: region.mapping().at(region.layout().health),
        }
    }

    /// What is known of `p`.
    pub fn processor(&self, p: Processor) -> &'a ProcessorHealth {
        &self.raw.processors[p.index()]
    }

    /// True while `me` holds the poller lease, renewing it. It is taken when free, when its
    /// holder is dead (its process-table lock is free), or when it was not renewed for
    /// [`LEASE_STALE_MS`]: a holder entry whose lock is held by someone that does not poll (a
    /// consumer that adopted the dead poller's entry, or a process that joined it later) must
    /// not leave the engine without a poller. The holder calls this every half second.
    pub fn try_lease(&self, me: &Member, now_ms: i64) -> bool {
        let mine = me.index() + 1;
        let holder = self.raw.lease_holder.load(Ordering::Acquire);
        if holder == mine {
            self.raw.lease_renewed_ms.store(now_ms, Ordering::Relaxed);
            return true;
        }
        let renewed = self.raw.lease_renewed_ms.load(Ordering::Relaxed);
        let stale = now_ms.saturating_sub(renewed) >= LEASE_STALE_MS;
        if holder != 0 && !stale && self.region.member_alive(holder - 1) {
            return false;
        }
        // The renewal time is stored before the CAS that takes the lease, and the CAS
        // releases it: whoever then reads us as the holder (Acquire above) also reads a fresh
        // time, so it cannot find our new lease stale and take it over at once (two pollers).
        // If our CAS loses, the time we stored is as fresh as the winner's own store.
        self.raw.lease_renewed_ms.store(now_ms, Ordering::Relaxed);
        self.raw
            .lease_holder
            .compare_exchange(holder, mine, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The current lease holder's member index, if any.
    pub fn lease_holder(&self) -> Option<u32> {
        self.raw.lease_holder.load(Ordering::Relaxed).checked_sub(1)
    }
}
