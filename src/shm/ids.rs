//! The set of correlationIds seen since the last purge: what makes `POST /payments` idempotent.
//!
//! Owns: an open-addressing hash table (linear probing) of 16-byte ids, laid out as plain
//! `#[repr(C)]` atomics so that it can live in the shared file and be used by every API
//! process at once. No locks, no allocation, no `unsafe` here: the region hands this module
//! a slice of [`IdEntry`] and the generation word that belong to it.
//!
//! Contract:
//! - [`IdSet::insert`] returns [`Insert::New`] exactly once per id and generation, and
//!   [`Insert::Seen`] for every later insert of the same id, whichever process made it.
//! - [`IdSet::clear`] (purge) starts a new generation: every entry of an older generation
//!   counts as empty and is reused in place, nothing is zeroed under running writers.
//! - Full (a probe run longer than [`MAX_PROBE`]) is [`Insert::Full`]: the caller decides
//!   (the API accepts the payment without the duplicate check rather than refusing it).
//!
//! # The entry protocol
//! Each entry has a `tag` word `generation << 2 | state` and the id in two words.
//! `state` is `EMPTY` (0), `WRITING` (1) or `FULL` (2); an entry whose generation is not the
//! current one is empty, whatever its state.
//! - A writer claims a free entry with a CAS of `tag` to `(gen, WRITING)`, stores the id words
//!   (Relaxed), then publishes with a Release store of `(gen, FULL)`.
//! - A reader loads `tag` with Acquire; only after it sees `(gen, FULL)` does it read the id
//!   words, which the Release/Acquire pair makes visible and complete.
//! - A reader that meets `(gen, WRITING)` waits for the writer (a few stores away) for a
//!   bounded number of spins; if the writer died there, its payment was never enqueued (the
//!   API inserts before it pushes), so treating the entry as "not this id" is correct.
//!
//! Linear probing stays correct without deletions: within one generation an entry only ever
//! goes from free to `WRITING` to `FULL`, so the run of occupied entries in front of an id
//! never gets a hole, and a probe may stop at the first free entry.
//!
//! ```
//! use rinha::shm::ids::{IdEntry, IdSet, Insert};
//! use std::sync::atomic::AtomicU64;
//! let entries: Vec<IdEntry> = (0..64).map(|_| IdEntry::default()).collect();
//! let generation = AtomicU64::new(1);
//! let set = IdSet::new(&entries, &generation);
//! let id = [7u8; 16];
//! assert_eq!(set.insert(&id), Insert::New);
//! assert_eq!(set.insert(&id), Insert::Seen);
//! set.clear();
//! assert_eq!(set.insert(&id), Insert::New);
//! ```
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest probe run before the set reports itself full.
pub const MAX_PROBE: usize = 512;
/// Spins a reader waits for an entry in `WRITING` before passing over it.
const WRITING_SPINS: u32 = 10_000;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const TOMBSTONE: u64 = 3;
const STATE_MASK: u64 = 3;

/// One entry of the table, 24 bytes, in the shared file.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IdEntry {
    /// `generation << 2 | state`.
    tag: AtomicU64,
    /// First 8 bytes of the id (little endian).
    lo: AtomicU64,
    /// Last 8 bytes of the id (little endian).
    hi: AtomicU64,
}

/// What an insert found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// First time this id is seen in this generation.
    New,
    /// The id was inserted before (by any process) in this generation.
    Seen,
    /// No free entry within [`MAX_PROBE`] entries of the id's home.
    Full,
}

/// A view of the id set over memory that someone else owns (the shared file, or a `Vec` in tests).
#[derive(Clone, Copy)]
pub struct IdSet<'a> {
    entries: &'a [IdEntry],
    generation: &'a AtomicU64,
}

impl<'a> IdSet<'a> {
    /// Views `entries` (any non-zero length; a power of two spreads best) and the set's
    /// generation word. `generation` must start at 1 or more for a fresh table of zeroes.
    pub fn new(entries: &'a [IdEntry], generation: &'a AtomicU64) -> Self {
        IdSet {
            entries,
            generation,
        }
    }

    /// Inserts `id`; see the module's contract.
    pub fn insert(&self, id: &[u8; 16]) -> Insert {
        let n = self.entries.len();
        if n == 0 {
            return Insert::Full;
        }
        let (lo, hi) = super::id_words(id);
        // Acquire pairs with the Release in `clear`: a writer that sees the new generation
        // also sees that every entry of the old one now counts as empty.
        let gen = self.generation.load(Ordering::Acquire);
        let current = |tag: u64| tag >> 2 == gen;
        let home = (mix(lo, hi) % n as u64) as usize;
        for step in 0..MAX_PROBE.min(n) {
            let entry = &self.entries[(home + step) % n];
            let mut tag = entry.tag.load(Ordering::Acquire);
            loop {
                if !current(tag) || tag & STATE_MASK == EMPTY {
                    // Free in this generation: claim it. AcqRel: on success no one else can
                    // claim it for this generation; on failure we re-examine what won.
                    match entry.tag.compare_exchange(
                        tag,
                        gen << 2 | WRITING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            entry.lo.store(lo, Ordering::Relaxed);
                            entry.hi.store(hi, Ordering::Relaxed);
                            // Release: a reader that sees FULL sees both id words.
                            entry.tag.store(gen << 2 | FULL, Ordering::Release);
                            return Insert::New;
                        }
                        Err(now) => {
                            tag = now;
                            continue;
                        }
                    }
                }
                if tag & STATE_MASK == TOMBSTONE {
                    break; // a removed id: occupied for probing, matches nothing
                }
                if tag & STATE_MASK == WRITING {
                    let mut spins = 0;
                    while tag & STATE_MASK == WRITING && current(tag) && spins < WRITING_SPINS {
                        std::hint::spin_loop();
                        spins += 1;
                        tag = entry.tag.load(Ordering::Acquire);
                    }
                    if tag & STATE_MASK == WRITING && current(tag) {
                        break; // writer stalled or dead: not comparable, probe on
                    }
                    continue;
                }
                // (gen, FULL): the Acquire load of `tag` makes the id words visible.
                if entry.lo.load(Ordering::Relaxed) == lo && entry.hi.load(Ordering::Relaxed) == hi
                {
                    return Insert::Seen;
                }
                break;
            }
        }
        Insert::Full
    }

    /// Whether `id` is in the set (a read-only probe).
    pub fn contains(&self, id: &[u8; 16]) -> bool {
        let n = self.entries.len();
        if n == 0 {
            return false;
        }
        let (lo, hi) = super::id_words(id);
        let gen = self.generation.load(Ordering::Acquire);
        let home = (mix(lo, hi) % n as u64) as usize;
        for step in 0..MAX_PROBE.min(n) {
            let entry = &self.entries[(home + step) % n];
            let tag = entry.tag.load(Ordering::Acquire);
            if tag >> 2 != gen || tag & STATE_MASK == EMPTY {
                return false;
            }
            if tag & STATE_MASK == FULL
                && entry.lo.load(Ordering::Relaxed) == lo
                && entry.hi.load(Ordering::Relaxed) == hi
            {
                return true;
            }
        }
        false
    }

    /// Takes `id` out again (the payment it guarded could not be queued after all). The
    /// entry becomes a tombstone: it keeps later probes going and is reused after a purge.
    pub fn remove(&self, id: &[u8; 16]) -> bool {
        let n = self.entries.len();
        if n == 0 {
            return false;
        }
        let (lo, hi) = super::id_words(id);
        let gen = self.generation.load(Ordering::Acquire);
        let home = (mix(lo, hi) % n as u64) as usize;
        for step in 0..MAX_PROBE.min(n) {
            let entry = &self.entries[(home + step) % n];
            let tag = entry.tag.load(Ordering::Acquire);
            if tag >> 2 != gen || tag & STATE_MASK == EMPTY {
                return false;
            }
            if tag & STATE_MASK == FULL
                && entry.lo.load(Ordering::Relaxed) == lo
                && entry.hi.load(Ordering::Relaxed) == hi
            {
                return entry
                    .tag
                    .compare_exchange(
                        tag,
                        gen << 2 | TOMBSTONE,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok();
            }
        }
        false
    }

    /// Empties the set for every process by starting a new generation (purge).
    pub fn clear(&self) {
        // Release pairs with the Acquire in `insert`.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A cheap 64-bit mix (splitmix64 finaliser) so that ids that differ in few bits spread.
fn mix(lo: u64, hi: u64) -> u64 {
    let mut z = lo ^ hi.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table(n: usize) -> Vec<IdEntry> {
        (0..n).map(|_| IdEntry::default()).collect()
    }

    fn id(n: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b[8..].copy_from_slice(&(!n).to_le_bytes());
        b
    }

    #[test]
    fn entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<IdEntry>(), 24);
        assert_eq!(std::mem::align_of::<IdEntry>(), 8);
    }

    #[test]
    fn new_then_seen_for_many_ids() {
        let entries = table(4096);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        for n in 0..3000 {
            assert_eq!(set.insert(&id(n)), Insert::New, "id {n}");
        }
        for n in 0..3000 {
            assert_eq!(set.insert(&id(n)), Insert::Seen, "id {n}");
            assert!(set.contains(&id(n)));
        }
        assert!(!set.contains(&id(3000)));
    }

    #[test]
    fn removed_ids_can_come_back_and_keep_probes_going() {
        let entries = table(8);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        for n in 0..6 {
            assert_eq!(set.insert(&id(n)), Insert::New);
        }
        assert!(set.remove(&id(2)));
        assert!(!set.remove(&id(2)));
        assert!(!set.contains(&id(2)));
        for n in [0, 1, 3, 4, 5] {
            assert!(set.contains(&id(n)), "{n} lost behind the tombstone");
        }
        assert_eq!(set.insert(&id(2)), Insert::New);
        assert_eq!(set.insert(&id(2)), Insert::Seen);
    }

    #[test]
    fn the_nil_id_is_an_id_like_any_other() {
        let entries = table(8);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        assert!(!set.contains(&[0; 16]));
        assert_eq!(set.insert(&[0; 16]), Insert::New);
        assert_eq!(set.insert(&[0; 16]), Insert::Seen);
    }

    #[test]
    fn clear_forgets_and_reuses_entries() {
        let entries = table(16);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        for n in 0..16 {
            assert_eq!(set.insert(&id(n)), Insert::New);
        }
        assert_eq!(set.insert(&id(99)), Insert::Full);
        set.clear();
        assert!(!set.contains(&id(3)));
        for n in 100..116 {
            assert_eq!(set.insert(&id(n)), Insert::New);
        }
        assert_eq!(set.insert(&id(105)), Insert::Seen);
        assert_eq!(set.insert(&id(3)), Insert::Full);
    }

    #[test]
    fn a_stalled_writer_is_passed_over() {
        let entries = table(4);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        for e in &entries {
            e.tag.store(1 << 2 | WRITING, Ordering::Relaxed); // four writers died mid-insert
        }
        assert_eq!(set.insert(&id(1)), Insert::Full);
        entries[2].tag.store(EMPTY, Ordering::Relaxed);
        assert_eq!(set.insert(&id(1)), Insert::New);
        assert_eq!(set.insert(&id(1)), Insert::Seen);
    }

    #[test]
    fn racing_threads_get_exactly_one_new_per_id() {
        let entries = Arc::new(table(1 << 14));
        let gen = Arc::new(AtomicU64::new(1));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let entries = Arc::clone(&entries);
                let gen = Arc::clone(&gen);
                std::thread::spawn(move || {
                    let set = IdSet::new(&entries, &gen);
                    (0..8000)
                        .filter(|n| set.insert(&id(*n)) == Insert::New)
                        .count()
                })
            })
            .collect();
        let news: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(news, 8000);
    }
}
