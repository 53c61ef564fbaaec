//! The payment ring: a bounded multi-producer multi-consumer queue shared by processes.
//!
//! Owns the ring section of the file: a control block (head, tail, futex word, waiter count)
//! and `capacity` slots of 64 bytes. Contract:
//! - [`Ring::push`] (API processes, and consumers re-queueing) never blocks: a full ring is
//!   an immediate [`RingFull`]. It wakes one parked consumer when any is parked.
//! - [`Ring::take`] (consumers) moves the oldest payment into the caller's in-flight table
//!   and returns its slot there; while the ring is empty it parks on a futex shared by every
//!   process, woken by producers, with no sleep-polling.
//! - A process killed at any instruction never jams the ring for the others.
//!
//! # The stamp protocol
//! Every slot has one 64-bit `stamp` = `position << 8 | owner << 2 | state`, where
//! `position` is the queue position the slot holds now (slot = position mod capacity),
//! `owner` the process-table index of the member that claimed it, and `state` one of
//! `EMPTY` (free for a producer at `position`), `WRITING`, `FULL` (readable at `position`),
//! `READING`. Initially slot `i` is `(i, -, EMPTY)`.
//! - **Producer at tail `t`**: if the slot reads `(t, -, EMPTY)` it CASes it to
//!   `(t, me, WRITING)` (the claim: one winner), helps `tail` to `t + 1`, writes the payload
//!   words and publishes `(t, me, FULL)` with Release. `(t - capacity, ..)` means the slot
//!   still holds the previous lap: the ring is full. A slot already claimed at `t` only
//!   means `tail` is stale: help it forward and retry.
//! - **Consumer at head `h`**: if the slot reads `(h, -, FULL)` (Acquire: the payload is
//!   visible) it CASes it to `(h, me, READING)`, helps `head` to `h + 1`, copies the payload
//!   into its in-flight table (published there before the slot is released), then frees the
//!   slot for the next lap with `(h + capacity, -, EMPTY)` (Release: the copy is done before a
//!   producer may overwrite). `(h, -, EMPTY)` means empty.
//! - **Death**: because every in-progress slot names its owner, a survivor can tell a slow
//!   owner from a dead one (the owner's OFD lock, see `member.rs`). A slot stuck in
//!   `WRITING` by a dead producer is skipped by the consumer at `head` (the producer never
//!   acknowledged its client: nothing acknowledged is lost). A slot stuck in `READING` by a
//!   dead consumer still holds its payload; the member that takes over the dead one's entry
//!   copies it into its own in-flight table unless the dead one already had (see
//!   [`crate::shm::Member::recover_dead`]).
//!
//! `head` and `tail` are only hints that anyone may advance by CAS; the stamps are the truth.
//! Positions are 56 bits: at a billion payments a second they last two years.
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::member::Member;
use super::sys::{self, Mapping, Shared};
use super::{Layout, Payment, Region, RegionConfig};

/// Highest number of process-table entries the stamp's owner field can name.
pub const MAX_MEMBERS: u32 = 64;

/// Polls of an empty ring before a consumer parks (a few microseconds).
const EMPTY_SPINS: u32 = 500;

pub(crate) const EMPTY: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const READING: u64 = 3;

pub(crate) fn stamp(pos: u64, owner: u32, state: u64) -> u64 {
    pos << 8 | (owner as u64) << 2 | state
}
pub(crate) fn s_pos(s: u64) -> u64 {
    s >> 8
}
pub(crate) fn s_owner(s: u64) -> u32 {
    ((s >> 2) & 63) as u32
}
pub(crate) fn s_state(s: u64) -> u64 {
    s & 3
}

/// The ring's control block: each counter on its own cache line (producers hammer `tail`,
/// consumers `head`).
#[repr(C)]
pub struct RingCtl {
    /// Next position to take (a hint; see the module doc).
    pub head: CachePadded<AtomicU64>,
    /// Next position to fill (a hint).
    pub tail: CachePadded<AtomicU64>,
    /// Futex word: bumped after every publish.
    pub seq: CachePadded<AtomicU32>,
    /// Consumers parked (or about to park) on `seq`.
    pub waiters: CachePadded<AtomicU32>,
}
// SAFETY: only atomics (CachePadded is #[repr(C)]-compatible padding around them).
unsafe impl Shared for RingCtl {}

/// One 64-byte slot: the stamp and the payment's seven words (see `encode`).
#[repr(C, align(64))]
pub struct Slot {
    /// See the module doc.
    pub stamp: AtomicU64,
    /// The payload.
    pub words: [AtomicU64; 7],
}
// SAFETY: only atomics.
unsafe impl Shared for Slot {}

/// The payment and its purge generation as seven words.
pub(crate) fn encode(p: &Payment, generation: u32) -> [u64; 7] {
    let (lo, hi) = super::id_words(&p.id);
    [
        lo,
        hi,
        p.cents,
        p.received_at_ms as u64,
        p.first_requested_at_ms as u64,
        p.attempts as u64 | (p.first_processor as u64) << 32,
        generation as u64,
    ]
}

/// Inverse of [`encode`].
pub(crate) fn decode(w: &[u64; 7]) -> (Payment, u32) {
    (
        Payment {
            id: super::id_from_words(w[0], w[1]),
            cents: w[2],
            received_at_ms: w[3] as i64,
            first_requested_at_ms: w[4] as i64,
            attempts: w[5] as u32,
            first_processor: (w[5] >> 32) as u8,
        },
        w[6] as u32,
    )
}

pub(crate) fn load_words(words: &[AtomicU64; 7]) -> [u64; 7] {
    std::array::from_fn(|i| words[i].load(Ordering::Relaxed))
}

pub(crate) fn store_words(words: &[AtomicU64; 7], w: &[u64; 7]) {
    for (a, v) in words.iter().zip(w) {
        a.store(*v, Ordering::Relaxed);
    }
}

pub(crate) fn init(map: &Mapping, layout: &Layout, cfg: &RegionConfig) {
    let slots: &[Slot] = map.section(layout.ring_slots, cfg.ring_capacity as usize);
    for (i, s) in slots.iter().enumerate() {
        s.stamp.store(stamp(i as u64, 0, EMPTY), Ordering::Relaxed);
    }
}

/// The ring is full: the producer must answer 503 (or retry later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

impl std::fmt::Display for RingFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payment queue is full")
    }
}
impl std::error::Error for RingFull {}

/// A view of the ring of one region.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    region: &'a Region,
    ctl: &'a RingCtl,
    slots: &'a [Slot],
    mask: u64,
}

enum Pop {
    Got(Payment, u32, u64),
    Empty,
    /// The slot at head is being written by a live producer: retry very soon.
    Busy,
}

impl<'a> Ring<'a> {
    pub(crate) fn new(region: &'a Region) -> Ring<'a> {
        let map = region.mapping();
        let layout = region.layout();
        let cap = region.config().ring_capacity as usize;
        Ring {
            region,
            ctl: map.at(layout.ring_ctl),
            slots: map.section(layout.ring_slots, cap),
            mask: cap as u64 - 1,
        }
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Approximate number of queued payments.
    pub fn len(&self) -> u64 {
        let head = self.ctl.head.load(Ordering::Relaxed);
        let tail = self.ctl.tail.load(Ordering::Relaxed);
        tail.saturating_sub(head)
    }

    /// Whether [`Ring::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `p`; never blocks. Wakes a parked consumer.
    pub fn push(&self, me: &Member, p: &Payment) -> Result<(), RingFull> {
        self.push_deferred(me, p)?;
        self.wake();
        Ok(())
    }

    /// Queues `p` like [`Ring::push`] but leaves the wake-up to the caller, who must call
    /// [`Ring::wake`] soon after (one call covers any number of deferred pushes). The API
    /// answers its client first and wakes the consumer after, so the answer never waits for
    /// the wake-up's system call, nor behind a consumer thread that the wake-up schedules on
    /// the API's own CPU. Nothing is lost if the wake never comes (the pusher dies): the
    /// payment is in the ring, and a parked consumer looks again when its timed wait ends.
    pub fn push_deferred(&self, me: &Member, p: &Payment) -> Result<(), RingFull> {
        let generation = self.region.generation();
        let words = encode(p, generation);
        let owner = me.index();
        loop {
            let t = self.ctl.tail.load(Ordering::Acquire);
            let slot = &self.slots[(t & self.mask) as usize];
            let s = slot.stamp.load(Ordering::Acquire);
            let pos = s_pos(s);
            if pos == t && s_state(s) == EMPTY {
                // The claim. AcqRel: on success we own the slot for position t; Acquire also
                // orders our payload stores after the previous lap's consumer released it.
                if slot
                    .stamp
                    .compare_exchange(
                        s,
                        stamp(t, owner, WRITING),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    let _ = self.ctl.tail.compare_exchange(
                        t,
                        t + 1,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    store_words(&slot.words, &words);
                    // Release: a consumer that reads FULL with Acquire sees every payload word.
                    slot.stamp.store(stamp(t, owner, FULL), Ordering::Release);
                    return Ok(());
                }
            } else if pos >= t {
                // Claimed at t already (tail is stale) or even consumed: help tail forward.
                let _ =
                    self.ctl
                        .tail
                        .compare_exchange(t, t + 1, Ordering::AcqRel, Ordering::Relaxed);
            } else if t.wrapping_sub(pos) >= self.capacity() {
                if self.ctl.tail.load(Ordering::Acquire) == t {
                    // The slot still holds position t - capacity: full.
                    return Err(RingFull);
                }
                // The tail moved meanwhile: look again.
            } else {
                // A position behind t by less than a lap cannot be in this slot (its positions
                // are t modulo the capacity): the file was written by something else. Refuse
                // rather than spin on it for good.
                return Err(RingFull);
            }
        }
    }

    /// Wakes one parked consumer, if any is parked: what [`Ring::push`] does after it
    /// publishes, for callers of [`Ring::push_deferred`]. Cheap when nobody is parked.
    pub fn wake(&self) {
        // SeqCst on `seq` and `waiters` (here and in `take`) forms the Dekker pair that makes
        // a lost wake-up impossible: either the consumer's increment of `waiters` is seen here
        // and we wake it, or its load of `seq` sees our increment and FUTEX_WAIT returns.
        // This holds however late after the publish (the FULL stamp) it runs: a consumer that
        // parks in between has re-checked the ring after raising `waiters`, so it either took
        // the payment or is counted in `waiters` here.
        self.ctl.seq.fetch_add(1, Ordering::SeqCst);
        if self.ctl.waiters.load(Ordering::SeqCst) > 0 {
            sys::futex_wake(&self.ctl.seq, 1);
        }
    }

    fn alive(&self, me: &Member, owner: u32) -> bool {
        owner == me.index() || self.region.member_alive(owner)
    }

    fn try_pop(&self, me: &Member, check_owner: bool) -> Pop {
        let owner = me.index();
        loop {
            let h = self.ctl.head.load(Ordering::Acquire);
            let slot = &self.slots[(h & self.mask) as usize];
            let s = slot.stamp.load(Ordering::Acquire);
            let pos = s_pos(s);
            if pos > h {
                // Already taken and released: head is stale.
                let _ =
                    self.ctl
                        .head
                        .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Relaxed);
                continue;
            }
            if pos < h {
                // Position h - capacity is still being read by a (slow or dead) consumer:
                // nothing has been produced at h yet.
                return Pop::Empty;
            }
            match s_state(s) {
                FULL => {
                    if slot
                        .stamp
                        .compare_exchange(
                            s,
                            stamp(h, owner, READING),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ = self.ctl.head.compare_exchange(
                        h,
                        h + 1,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    let (p, generation) = decode(&load_words(&slot.words));
                    return Pop::Got(p, generation, h);
                }
                READING => {
                    let _ = self.ctl.head.compare_exchange(
                        h,
                        h + 1,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
                WRITING => {
                    // A producer publishes within nanoseconds of its claim: spin first, and
                    // ask the kernel whether it is alive (a syscall) only if it stays stuck.
                    if !check_owner || self.alive(me, s_owner(s)) {
                        return Pop::Busy;
                    }
                    // Its producer died before publishing: it never answered its client.
                    // Skip the position for good.
                    if slot
                        .stamp
                        .compare_exchange(
                            s,
                            stamp(h + self.capacity(), 0, EMPTY),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        let _ = self.ctl.head.compare_exchange(
                            h,
                            h + 1,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                    }
                }
                _ => return Pop::Empty,
            }
        }
    }

    /// Releases the slot at `pos` (which `me` holds in READING) for the next lap.
    fn release(&self, pos: u64) {
        let slot = &self.slots[(pos & self.mask) as usize];
        // Release: the in-flight copy (and every read of the payload) happens before a
        // producer of the next lap may claim the slot.
        slot.stamp
            .store(stamp(pos + self.capacity(), 0, EMPTY), Ordering::Release);
    }

    /// Takes the next payment into `me`'s in-flight table. Parks while the ring is empty, for
    /// at most `timeout` (`None` = until a payment comes; `Some(ZERO)` = do not wait).
    /// `None` when the time ran out or `me` has no free in-flight slot.
    pub fn take(&self, me: &Member, timeout: Option<Duration>) -> Option<super::InFlightId> {
        // The deadline is computed on the first miss only: reading the clock on every take
        // costs as much as the take itself when payments are waiting.
        let mut deadline: Option<Instant> = None;
        let deadline_of = |d: &mut Option<Instant>| -> Option<Instant> {
            let t = timeout?;
            Some(*d.get_or_insert_with(|| Instant::now() + t))
        };
        let slot = me.alloc_slot()?;
        let mut busy_spins = 0u32;
        let mut empty_spins = 0u32;
        loop {
            match self.try_pop(me, busy_spins >= 256) {
                Pop::Got(p, generation, pos) => {
                    if generation != self.region.generation() {
                        self.release(pos);
                        continue; // purged while queued: dropped (see shm-layout.md, Purge)
                    }
                    me.fill_slot(slot, &p, generation);
                    self.release(pos);
                    return Some(slot);
                }
                Pop::Busy => {
                    busy_spins += 1;
                    if busy_spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    if deadline_of(&mut deadline).is_some_and(|d| Instant::now() >= d) {
                        me.free_slot(slot);
                        return None;
                    }
                    continue;
                }
                Pop::Empty => {
                    // Spin a moment before parking: when producers and a consumer run in
                    // lockstep, parking on every item would cost two syscalls an item. A caller
                    // that will not wait (`Some(ZERO)`, a poller) gets its answer at once.
                    if empty_spins < EMPTY_SPINS && timeout != Some(Duration::ZERO) {
                        empty_spins += 1;
                        std::hint::spin_loop();
                        continue;
                    }
                }
            }
            let remaining = match deadline_of(&mut deadline) {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        me.free_slot(slot);
                        return None;
                    }
                    d - now
                }
                None => Duration::from_millis(200),
            };
            self.ctl.waiters.fetch_add(1, Ordering::SeqCst);
            let seen = self.ctl.seq.load(Ordering::SeqCst);
            if self.looks_empty() {
                // A timed wait is only a safety net: wake-ups come from `wake`.
                sys::futex_wait(
                    &self.ctl.seq,
                    seen,
                    Some(remaining.min(Duration::from_millis(200))),
                );
            }
            self.ctl.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn looks_empty(&self) -> bool {
        let h = self.ctl.head.load(Ordering::SeqCst);
        let s = self.slots[(h & self.mask) as usize]
            .stamp
            .load(Ordering::SeqCst);
        !(s_pos(s) == h && s_state(s) != EMPTY) && s_pos(s) <= h
    }

    /// Slots held by `owner` in READING (payload intact) or WRITING (never published):
    /// `(position, state, payment)`. Used by recovery only: scans the whole ring.
    pub(crate) fn held_by(&self, owner: u32) -> Vec<(u64, u64, Payment, u32)> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let s = slot.stamp.load(Ordering::Acquire);
                let st = s_state(s);
                if s_owner(s) == owner && (st == READING || st == WRITING) {
                    let (p, g) = decode(&load_words(&slot.words));
                    Some((s_pos(s), st, p, g))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Recovery: ends `owner`'s hold on the slot at `pos` (state `state`), so that the ring
    /// moves past it. Returns false if the slot changed meanwhile.
    pub(crate) fn clear_dead_hold(&self, pos: u64, owner: u32, state: u64) -> bool {
        let slot = &self.slots[(pos & self.mask) as usize];
        slot.stamp
            .compare_exchange(
                stamp(pos, owner, state),
                stamp(pos + self.capacity(), 0, EMPTY),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}
