//! Process-table membership and the in-flight tables: who is alive, and what each consumer
//! holds between taking a payment off the ring and recording its outcome.
//!
//! Contract:
//! - [`Member`] is this process's entry in the process table. [`Region::join`] takes the
//!   first entry whose OFD lock it can take; the lock is held until the process exits (the
//!   kernel drops it on any death, SIGKILL included, in any container sharing the file), so
//!   "the entry's lock is free" means "its last holder is dead". A member is `Send + Sync`:
//!   share it with `Arc` between threads and tasks.
//! - Each entry owns `inflight_per_member` in-flight slots. A payment lives in exactly one
//!   place at any instant that matters for recovery: in a ring slot, in an in-flight slot, or
//!   in the stats log (a record carrying its correlationId), with overlaps only in the
//!   orders that recovery resolves (ring slot `READING` + in-flight copy: the copy wins;
//!   in-flight slot + log record: the record wins, see [`Member::recover_dead`]).
//! - Only consumers adopt the leftovers of a dead entry; an API process that meets an entry
//!   with leftovers passes it over.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::queue::ArrayQueue;

use super::ring::{self, READING, WRITING};
use super::sys::{self, Shared};
use super::{LogFull, Payment, Processor, Region, ShmError, MEMBER_ENTRY_SIZE};

/// What a member does (recorded in its entry, informational except for adoption rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Pushes payments.
    Api = 1,
    /// Takes payments; adopts dead members' leftovers.
    Consumer = 2,
    /// The balancer.
    Lb = 3,
    /// Tests and tools.
    Other = 4,
}

/// One process-table entry (64 bytes; its byte range is also the liveness lock range).
#[repr(C, align(64))]
pub struct MemberEntry {
    /// [`Role`] of the last holder.
    pub role: AtomicU64,
    /// Process id of the last holder (in its own PID namespace: informational).
    pub pid: AtomicU64,
    /// When the last holder joined, ms since the epoch; 0 when the entry was never used, or
    /// when a consumer found its dead holder left nothing (recovery skips such entries).
    pub joined_ms: AtomicU64,
    /// Unused.
    pub spare: [AtomicU64; 5],
}
// SAFETY: only atomics.
unsafe impl Shared for MemberEntry {}

/// One in-flight slot: `state` (FREE/USED) and the payment's seven words.
#[repr(C, align(64))]
pub struct InFlightSlot {
    /// 0 free, 1 used. Written last with Release when filled.
    pub state: AtomicU64,
    /// Payment words (same encoding as a ring slot).
    pub words: [AtomicU64; 7],
}
// SAFETY: only atomics.
unsafe impl Shared for InFlightSlot {}

const FREE: u64 = 0;
const USED: u64 = 1;

/// An in-flight slot: `entry << 16 | slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InFlightId(pub u32);

impl InFlightId {
    fn new(entry: u32, slot: u32) -> Self {
        InFlightId(entry << 16 | slot)
    }
    fn entry(self) -> u32 {
        self.0 >> 16
    }
    fn slot(self) -> u32 {
        self.0 & 0xFFFF
    }
}

/// This process's membership; see the module doc.
pub struct Member {
    region: Arc<Region>,
    index: u32,
    role: Role,
    free: ArrayQueue<u32>,
    /// Dead entries whose locks we took to finish their payments, each with how many of its
    /// in-flight slots we still have to finish. When that reaches 0 the entry is let go
    /// (unlocked), so that crashes and restarts do not use up the process table.
    adopted: Mutex<HashMap<u32, u32>>,
    /// Leftovers of our own entry's previous holder, handed out by the first `recover_dead`.
    pending: Mutex<Vec<InFlightId>>,
    /// Our own open file description of the region file: it holds the OFD locks on our entry
    /// and on the entries we adopted. OFD locks belong to an open file description, so two
    /// members of one process must not share one (the second `join` would re-take the first's
    /// entry, and one member's adopted entries would look free to its sibling). Dropping the
    /// member closes it, which releases every lock: a dropped member is like a dead one.
    lock_file: std::fs::File,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("index", &self.index)
            .field("role", &self.role)
            .finish()
    }
}

impl Member {
    pub(crate) fn join(region: Arc<Region>, role: Role) -> Result<Member, ShmError> {
        let max = region.config().max_members;
        let per = region.config().inflight_per_member;
        let lock_file =
            sys::reopen(region.file()).map_err(|e| ShmError::Io(region.path().to_path_buf(), e))?;
        for index in 0..max {
            let (start, len) = region.member_lock_range(index);
            match sys::try_lock_range(&lock_file, start, len) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(ShmError::Io(region.path().to_path_buf(), e)),
            }
            let used = used_slots(&region, index);
            let reading = region.ring().held_by(index).iter().any(|h| h.1 == READING);
            if role != Role::Consumer && (!used.is_empty() || reading) {
                let _ = sys::unlock_range(&lock_file, start, len);
                continue; // leave it to a consumer to adopt
            }
            let entry = entry_of(&region, index);
            entry.role.store(role as u64, Ordering::Relaxed);
            entry
                .pid
                .store(std::process::id() as u64, Ordering::Relaxed);
            entry
                .joined_ms
                .store(super::unix_ms() as u64, Ordering::Relaxed);
            let member = Member {
                region,
                index,
                role,
                free: ArrayQueue::new(per as usize),
                adopted: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                lock_file,
            };
            for s in 0..per {
                if !used.contains(&s) {
                    let _ = member.free.push(s);
                }
            }
            // The previous holder's READING slots move into our in-flight table (from the
            // free list just built), so they are among the leftovers counted next.
            member.settle_ring_holds(index);
            let used = used_slots(&member.region, index);
            if let Ok(mut p) = member.pending.lock() {
                p.extend(used.into_iter().map(|s| InFlightId::new(index, s)));
            }
            return Ok(member);
        }
        Err(ShmError::NoFreeMember(region.path().to_path_buf()))
    }

    /// This member's process-table index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The region this member belongs to.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn entry(&self, index: u32) -> &MemberEntry {
        entry_of(&self.region, index)
    }

    fn slot(&self, id: InFlightId) -> &InFlightSlot {
        let per = self.region.config().inflight_per_member as usize;
        let at = self.region.layout().inflight
            + (id.entry() as usize * per + id.slot() as usize)
                * std::mem::size_of::<InFlightSlot>();
        self.region.mapping().at(at)
    }

    pub(crate) fn alloc_slot(&self) -> Option<InFlightId> {
        self.free.pop().map(|s| InFlightId::new(self.index, s))
    }

    pub(crate) fn fill_slot(&self, id: InFlightId, p: &Payment, generation: u32) {
        let slot = self.slot(id);
        ring::store_words(&slot.words, &ring::encode(p, generation));
        // Release: recovery that sees USED (Acquire) sees the whole payment.
        slot.state.store(USED, Ordering::Release);
    }

    pub(crate) fn free_slot(&self, id: InFlightId) {
        self.slot(id).state.store(FREE, Ordering::Release);
        if id.entry() == self.index {
            let _ = self.free.push(id.slot());
        } else {
            self.finished_adopted_slot(id.entry());
        }
    }

    /// Free in-flight slots of this member: how many more payments `take` can hand out.
    pub fn take_limit(&self) -> u32 {
        self.free.len() as u32
    }

    /// The payment held in `id`.
    pub fn payment(&self, id: InFlightId) -> Payment {
        ring::decode(&ring::load_words(&self.slot(id).words)).0
    }

    fn generation_of(&self, id: InFlightId) -> u32 {
        self.slot(id).words[6].load(Ordering::Relaxed) as u32
    }

    /// Records, BEFORE sending, that `id` is being sent to `p` with `requested_at_ms`; a
    /// recovery will resend it to the same processor with the same requestedAt.
    /// Only the first unresolved attempt is kept: later calls for the same processor just
    /// count the attempt.
    pub fn mark_attempt(&self, id: InFlightId, p: Processor, requested_at_ms: i64) {
        let slot = self.slot(id);
        let w5 = slot.words[5].load(Ordering::Relaxed);
        let attempts = (w5 as u32).saturating_add(1) as u64;
        let current = (w5 >> 32) as u8;
        if current == 0 {
            slot.words[4].store(requested_at_ms as u64, Ordering::Relaxed);
        }
        let code = if current == 0 {
            p.index() as u64 + 1
        } else {
            current as u64
        };
        // Release: a survivor that reads the processor also reads the requestedAt.
        slot.words[5].store(attempts | code << 32, Ordering::Release);
    }

    /// The unresolved attempt of `id` is known not stored (a 500, or a 404 after its delay):
    /// the payment may go to any processor now.
    pub fn clear_attempt(&self, id: InFlightId) {
        let slot = self.slot(id);
        let attempts = slot.words[5].load(Ordering::Relaxed) as u32 as u64;
        slot.words[5].store(attempts, Ordering::Release);
        slot.words[4].store(0, Ordering::Relaxed);
    }

    /// The processor accepted `id` with `requested_at_ms`: appends the record (carrying the
    /// correlationId), then frees the slot. A payment purged while in flight is only freed.
    /// On [`LogFull`] the slot is kept.
    pub fn complete(
        &self,
        id: InFlightId,
        p: Processor,
        requested_at_ms: i64,
    ) -> Result<(), LogFull> {
        if self.generation_of(id) == self.region.generation() {
            let pay = self.payment(id);
            self.region
                .stats()
                .append(requested_at_ms, pay.cents, p, &pay.id)?;
        }
        self.free_slot(id);
        Ok(())
    }

    /// Drops `id` without a record (a duplicate the processor already had from another
    /// request, or a payment purged while in flight).
    pub fn discard(&self, id: InFlightId) {
        self.free_slot(id);
    }

    /// Whether `id` was purged while in flight.
    pub fn is_purged(&self, id: InFlightId) -> bool {
        self.generation_of(id) != self.region.generation()
    }

    /// Puts `id` back in the ring (attempt info kept) and frees the slot. For shutdown only:
    /// a death between the push and the free leaves two copies (see shm-layout.md).
    pub fn requeue(&self, id: InFlightId) -> Result<(), super::RingFull> {
        let p = self.payment(id);
        self.region.ring().push(self, &p)?;
        self.free_slot(id);
        Ok(())
    }

    /// Ends the ring holds of dead entry `index` (now locked by us): WRITING slots are
    /// skipped (never acknowledged), READING slots are copied into `index`'s in-flight table
    /// unless the dead consumer had copied them already.
    fn settle_ring_holds(&self, index: u32) {
        let per = self.region.config().inflight_per_member;
        for (pos, state, p, generation) in self.region.ring().held_by(index) {
            if state == WRITING {
                self.region.ring().clear_dead_hold(pos, index, WRITING);
                continue;
            }
            let already = (0..per).any(|s| {
                let id = InFlightId::new(index, s);
                self.slot(id).state.load(Ordering::Acquire) == USED && self.payment(id).id == p.id
            });
            if !already {
                let target = if index == self.index {
                    self.free.pop()
                } else {
                    (0..per).find(|&s| {
                        self.slot(InFlightId::new(index, s))
                            .state
                            .load(Ordering::Acquire)
                            == FREE
                    })
                };
                match target {
                    Some(s) => self.fill_slot(InFlightId::new(index, s), &p, generation),
                    None => continue, // no room: leave the hold for a later recovery
                }
            }
            debug_assert_eq!(state, READING);
            self.region.ring().clear_dead_hold(pos, index, READING);
        }
    }

    /// One slot of adopted entry `index` is finished; the last one lets the entry go. Its
    /// `joined_ms` is cleared first (nothing left, unless ring holds we had no room for are
    /// still there) so that recovery skips it until someone joins it.
    fn finished_adopted_slot(&self, index: u32) {
        let Ok(mut a) = self.adopted.lock() else {
            return;
        };
        let Some(left) = a.get_mut(&index) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        a.remove(&index);
        // Still under the `adopted` lock: `recover_dead` (on another thread) must not see the
        // entry out of the map while our OFD lock on it is still held, since our own lock
        // would look free to it and it could adopt the entry a second time. The ring scan is
        // paid once per adopted entry, after a crash.
        if self.region.ring().held_by(index).is_empty()
            && used_slots(&self.region, index).is_empty()
        {
            self.entry(index).joined_ms.store(0, Ordering::Relaxed);
        }
        let (start, len) = self.region.member_lock_range(index);
        let _ = sys::unlock_range(&self.lock_file, start, len);
    }

    /// Adopts the leftovers of dead members (and of this entry's previous holder) and returns
    /// the in-flight payments the caller must now finish, with their attempt info.
    /// Payments whose record is already in the log are freed, not returned.
    pub fn recover_dead(&self) -> Vec<InFlightId> {
        let mut found: Vec<InFlightId> = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        if self.role == Role::Consumer {
            let adopted_now: Vec<u32> = self
                .adopted
                .lock()
                .map(|a| a.keys().copied().collect())
                .unwrap_or_default();
            for index in 0..self.region.config().max_members {
                if index == self.index || adopted_now.contains(&index) {
                    continue;
                }
                let entry = self.entry(index);
                if entry.joined_ms.load(Ordering::Relaxed) == 0 {
                    // Never used, or looked at since its holder died and found empty: only a
                    // join (which sets `joined_ms`) can give it leftovers again. Skipping it
                    // saves scanning the whole ring for it every second.
                    continue;
                }
                let (start, len) = self.region.member_lock_range(index);
                if !matches!(sys::try_lock_range(&self.lock_file, start, len), Ok(true)) {
                    continue; // alive
                }
                let holds = self.region.ring().held_by(index);
                let used = used_slots(&self.region, index);
                if holds.is_empty() && used.is_empty() {
                    // Its holder is dead and left nothing: mark it so (under its lock, so no
                    // joiner is between our look and this store).
                    entry.joined_ms.store(0, Ordering::Relaxed);
                    let _ = sys::unlock_range(&self.lock_file, start, len);
                    continue;
                }
                self.settle_ring_holds(index);
                let used = used_slots(&self.region, index);
                if used.is_empty() {
                    // Ring holds we had no room to move: let go, a later pass looks again.
                    let _ = sys::unlock_range(&self.lock_file, start, len);
                    continue;
                }
                if let Ok(mut a) = self.adopted.lock() {
                    a.insert(index, used.len() as u32);
                }
                found.extend(used.into_iter().map(|s| InFlightId::new(index, s)));
            }
        }
        if found.is_empty() {
            return found;
        }
        let ids: std::collections::HashSet<[u8; 16]> =
            found.iter().map(|&f| self.payment(f).id).collect();
        let recorded = self.region.stats().find_ids(&ids);
        found.retain(|&f| {
            if recorded.contains(&self.payment(f).id) {
                self.free_slot(f);
                false
            } else {
                true
            }
        });
        found
    }
}

fn entry_of(region: &Region, index: u32) -> &MemberEntry {
    region
        .mapping()
        .at(region.layout().members + index as usize * MEMBER_ENTRY_SIZE)
}

fn used_slots(region: &Region, index: u32) -> Vec<u32> {
    let per = region.config().inflight_per_member as usize;
    let base =
        region.layout().inflight + index as usize * per * std::mem::size_of::<InFlightSlot>();
    let slots: &[InFlightSlot] = region.mapping().section(base, per);
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state.load(Ordering::Acquire) == USED)
        .map(|(i, _)| i as u32)
        .collect()
}
