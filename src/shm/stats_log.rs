//! The stats log: an append-only, lock-free record of every payment a processor accepted.
//!
//! Owns the log section: a control block (`head`, `floor`), `capacity / 1024` chunk headers
//! and `capacity` records of 48 bytes. Contract:
//! - [`StatsLog::append`] (consumers) never blocks and never waits for other writers. A full
//!   log (`capacity` records since the last purge) is [`LogFull`].
//! - [`StatsLog::summary`] (API processes) counts, per processor, the records with
//!   `from <= requestedAt <= to` (inclusive; `None` = unbounded), exactly, in cents. A reader
//!   never sees a half-written record: a record is visible only once its stamp is committed.
//!
//! # Records and stamps
//! Appending reserves index `i` with one `fetch_add` on `head`; record `i` lives at
//! `i mod capacity`. Its `stamp` works like a seqlock word: the writer first stores
//! `i << 1` (not committed), a Release fence, the fields, then `i << 1 | 1` with Release. A
//! reader loads the stamp (Acquire), the fields, an Acquire fence and the stamp again, and
//! uses the fields only if both loads equal `i << 1 | 1`. A writer that dies before
//! committing leaves a hole that readers skip (its payment is still in its in-flight slot,
//! and recovery appends it again under a new index).
//!
//! # The index by time
//! Records come in chunks of [`CHUNK`]. Once every record of a chunk is committed, the first
//! reader that scans it caches in the chunk header the min and max requestedAt and the count
//! and cents per processor (the header is "sealed": CAS to `SEALING`, write, then store the
//! chunk number + 1 with Release; readers validate it before and after like a record). A
//! summary uses a sealed header for a chunk entirely inside or outside `[from, to]` and scans
//! only the few chunks that straddle a bound, or are not sealed yet.
//!
//! # Purge
//! `StatsLog::purge` moves `floor` to `head`: readers start at the floor, so everything
//! before it is gone for them, and its space is reused by later laps.
use std::collections::HashSet;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::sys::Shared;
use super::{Processor, Region};

/// Records per chunk.
pub const CHUNK: usize = 1024;
const SEALING: u64 = u64::MAX;

/// Control block.
#[repr(C)]
pub struct LogCtl {
    /// Next index to reserve (grows forever).
    pub head: CachePadded<AtomicU64>,
    /// First index that counts (moved to `head` by purge).
    pub floor: CachePadded<AtomicU64>,
}
// SAFETY: only atomics.
unsafe impl Shared for LogCtl {}

/// Cached totals of one sealed chunk (64 bytes).
#[repr(C, align(64))]
pub struct ChunkHeader {
    /// 0 never sealed, chunk number + 1 when sealed, `u64::MAX` while being sealed.
    pub sealed: AtomicU64,
    /// Lowest requestedAt in the chunk.
    pub min_ms: AtomicU64,
    /// Highest requestedAt in the chunk.
    pub max_ms: AtomicU64,
    /// Count and cents for default, then fallback.
    pub totals: [AtomicU64; 4],
    /// Unused.
    pub spare: AtomicU64,
}
// SAFETY: only atomics.
unsafe impl Shared for ChunkHeader {}

/// One record (48 bytes).
#[repr(C)]
pub struct Record {
    /// `index << 1 | committed`.
    pub stamp: AtomicU64,
    /// requestedAt sent to the processor, ms since the epoch (as i64 bits).
    pub requested_at_ms: AtomicU64,
    /// Amount in cents.
    pub cents: AtomicU64,
    /// [`Processor::index`].
    pub processor: AtomicU64,
    /// correlationId, first 8 bytes (little endian).
    pub id_lo: AtomicU64,
    /// correlationId, last 8 bytes.
    pub id_hi: AtomicU64,
}
// SAFETY: only atomics.
unsafe impl Shared for Record {}

/// The log is full: `capacity` records since the last purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFull;

impl std::fmt::Display for LogFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stats log is full (purge to empty it)")
    }
}
impl std::error::Error for LogFull {}

/// Count and cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Payments.
    pub count: u64,
    /// Sum of their amounts in cents.
    pub cents: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.count = self.count.saturating_add(other.count);
        self.cents = self.cents.saturating_add(other.cents);
    }
}

/// Totals per processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Accepted by the default processor.
    pub default: Totals,
    /// Accepted by the fallback processor.
    pub fallback: Totals,
}

impl Summary {
    fn add(&mut self, p: Processor, t: Totals) {
        match p {
            Processor::Default => self.default.add(t),
            Processor::Fallback => self.fallback.add(t),
        }
    }
}

/// A committed record's fields.
#[derive(Clone, Copy, Debug)]
struct Fields {
    at: i64,
    cents: u64,
    processor: Processor,
    id: [u8; 16],
}

/// A view of the log of one region.
#[derive(Clone, Copy)]
pub struct StatsLog<'a> {
    ctl: &'a LogCtl,
    chunks: &'a [ChunkHeader],
    records: &'a [Record],
}

impl<'a> StatsLog<'a> {
    pub(crate) fn new(region: &'a Region) -> StatsLog<'a> {
        let map = region.mapping();
        let layout = region.layout();
        let cap = region.config().log_capacity as usize;
        StatsLog {
            ctl: map.at(layout.log_ctl),
            chunks: map.section(layout.log_chunks, cap / CHUNK),
            records: map.section(layout.log_records, cap),
        }
    }

    fn cap(&self) -> u64 {
        self.records.len() as u64
    }

    /// Records the processor `p` accepted payment `id` of `cents` with `requested_at_ms`.
    pub fn append(
        &self,
        requested_at_ms: i64,
        cents: u64,
        p: Processor,
        id: &[u8; 16],
    ) -> Result<(), LogFull> {
        // The reservation needs no order of its own (AcqRel costs nothing more than Relaxed
        // for a read-modify-write on x86); Acquire on floor pairs with purge's Release.
        let i = self.ctl.head.fetch_add(1, Ordering::AcqRel);
        let floor = self.ctl.floor.load(Ordering::Acquire);
        if i.saturating_sub(floor) >= self.cap() {
            return Err(LogFull); // index i is past the live range (see `live`): nothing is hidden
        }
        let r = &self.records[(i % self.cap()) as usize];
        let (lo, hi) = super::id_words(id);
        r.stamp.store(i << 1, Ordering::Relaxed);
        // Release fence: the "not committed" stamp is visible before any new field value, so
        // a reader of the previous lap that overlaps this write fails its second stamp check.
        fence(Ordering::Release);
        r.requested_at_ms
            .store(requested_at_ms as u64, Ordering::Relaxed);
        r.cents.store(cents, Ordering::Relaxed);
        r.processor.store(p.index() as u64, Ordering::Relaxed);
        r.id_lo.store(lo, Ordering::Relaxed);
        r.id_hi.store(hi, Ordering::Relaxed);
        // Release: a reader that sees the committed stamp (Acquire) sees every field.
        r.stamp.store(i << 1 | 1, Ordering::Release);
        Ok(())
    }

    fn read(&self, i: u64) -> Option<Fields> {
        let r = &self.records[(i % self.cap()) as usize];
        let want = i << 1 | 1;
        if r.stamp.load(Ordering::Acquire) != want {
            return None;
        }
        let at = r.requested_at_ms.load(Ordering::Relaxed) as i64;
        let cents = r.cents.load(Ordering::Relaxed);
        let processor = Processor::from_index(r.processor.load(Ordering::Relaxed));
        let lo = r.id_lo.load(Ordering::Relaxed);
        let hi = r.id_hi.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if r.stamp.load(Ordering::Relaxed) != want {
            return None;
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&lo.to_le_bytes());
        id[8..].copy_from_slice(&hi.to_le_bytes());
        Some(Fields {
            at,
            cents,
            processor: processor?,
            id,
        })
    }

    /// The live index range `[lo, hi)`. An append never overwrites (it is refused at
    /// `floor + capacity`), so the live records are those from the floor up to the head or
    /// the capacity, whichever comes first: refused reservations beyond it hide nothing.
    fn live(&self) -> (u64, u64) {
        let floor = self.ctl.floor.load(Ordering::Acquire);
        let head = self.ctl.head.load(Ordering::Acquire);
        (floor, head.min(floor.saturating_add(self.cap())).max(floor))
    }

    /// Records since the last purge (holes included).
    pub fn len(&self) -> u64 {
        let (lo, hi) = self.live();
        hi - lo
    }

    /// Whether [`StatsLog::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-processor count and cents of records with `from <= requestedAt <= to`.
    pub fn summary(&self, from_ms: Option<i64>, to_ms: Option<i64>) -> Summary {
        let from = from_ms.unwrap_or(i64::MIN);
        let to = to_ms.unwrap_or(i64::MAX);
        let mut out = Summary::default();
        if from > to {
            return out;
        }
        let (lo, hi) = self.live();
        let chunk = CHUNK as u64;
        let mut k = lo / chunk;
        while k.saturating_mul(chunk) < hi {
            let start = lo.max(k.saturating_mul(chunk));
            let end = hi.min((k + 1).saturating_mul(chunk));
            let whole = start == k.saturating_mul(chunk) && end == (k + 1).saturating_mul(chunk);
            if whole {
                if let Some((min, max, totals)) = self.sealed(k) {
                    if max < from || min > to {
                        k += 1;
                        continue;
                    }
                    if from <= min && max <= to {
                        out.add(Processor::Default, totals.default);
                        out.add(Processor::Fallback, totals.fallback);
                        k += 1;
                        continue;
                    }
                }
            }
            self.scan(k, start, end, whole, from, to, &mut out);
            k += 1;
        }
        out
    }

    fn header(&self, k: u64) -> &ChunkHeader {
        &self.chunks[(k % self.chunks.len() as u64) as usize]
    }

    fn sealed(&self, k: u64) -> Option<(i64, i64, Summary)> {
        let h = self.header(k);
        let s1 = h.sealed.load(Ordering::Acquire);
        if s1 != k + 1 {
            return None;
        }
        let min = h.min_ms.load(Ordering::Relaxed) as i64;
        let max = h.max_ms.load(Ordering::Relaxed) as i64;
        let t: [u64; 4] = std::array::from_fn(|i| h.totals[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        if h.sealed.load(Ordering::Relaxed) != s1 {
            return None;
        }
        Some((
            min,
            max,
            Summary {
                default: Totals {
                    count: t[0],
                    cents: t[1],
                },
                fallback: Totals {
                    count: t[2],
                    cents: t[3],
                },
            },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        k: u64,
        start: u64,
        end: u64,
        whole: bool,
        from: i64,
        to: i64,
        out: &mut Summary,
    ) {
        let mut all = Summary::default();
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        let mut complete = whole;
        for i in start..end {
            match self.read(i) {
                Some(f) => {
                    let t = Totals {
                        count: 1,
                        cents: f.cents,
                    };
                    if from <= f.at && f.at <= to {
                        out.add(f.processor, t);
                    }
                    all.add(f.processor, t);
                    min = min.min(f.at);
                    max = max.max(f.at);
                }
                None => complete = false,
            }
        }
        if complete {
            self.seal(k, min, max, &all);
        }
    }

    fn seal(&self, k: u64, min: i64, max: i64, all: &Summary) {
        let h = self.header(k);
        let cur = h.sealed.load(Ordering::Acquire);
        if cur == k + 1 || cur == SEALING {
            return;
        }
        if h.sealed
            .compare_exchange(cur, SEALING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Release fence: SEALING is visible before the new totals (readers re-check it).
        fence(Ordering::Release);
        h.min_ms.store(min as u64, Ordering::Relaxed);
        h.max_ms.store(max as u64, Ordering::Relaxed);
        let t = [
            all.default.count,
            all.default.cents,
            all.fallback.count,
            all.fallback.cents,
        ];
        for (a, v) in h.totals.iter().zip(t) {
            a.store(v, Ordering::Relaxed);
        }
        h.sealed.store(k + 1, Ordering::Release);
    }

    /// Which of `ids` have a committed record since the last purge (recovery only: a scan).
    pub fn find_ids(&self, ids: &HashSet<[u8; 16]>) -> HashSet<[u8; 16]> {
        let (lo, hi) = self.live();
        (lo..hi)
            .filter_map(|i| self.read(i))
            .filter(|f| ids.contains(&f.id))
            .map(|f| f.id)
            .collect()
    }

    /// Every committed record since the last purge as `(requestedAt, cents, processor, id)`
    /// (tests and tools).
    pub fn records(&self) -> Vec<(i64, u64, Processor, [u8; 16])> {
        let (lo, hi) = self.live();
        (lo..hi)
            .filter_map(|i| self.read(i))
            .map(|f| (f.at, f.cents, f.processor, f.id))
            .collect()
    }

    pub(crate) fn purge(&self) {
        let head = self.ctl.head.load(Ordering::Acquire);
        self.ctl.floor.fetch_max(head, Ordering::AcqRel);
    }
}
