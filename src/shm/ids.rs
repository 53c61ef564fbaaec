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
//! - [`IdSet::claim`] is an insert in two steps, for a caller whose own step may still fail
//!   (the API's push into a full ring): the id is held in `WRITING` until the returned
//!   [`Pending`] is published (then it is `Seen` by everyone) or abandoned (then it was never
//!   in). A concurrent insert of the same id waits meanwhile, so it is never told "seen" for
//!   an id whose payment then fails to queue.
//! - [`IdSet::clear`] (purge) starts a new generation: every entry of an older generation
//!   counts as empty and is reused in place, nothing is zeroed under running writers.
//! - Full (a probe run longer than [`MAX_PROBE`]) is [`Insert::Full`]: the caller decides
//!   (the API accepts the payment without the duplicate check rather than refusing it).
//!
//! # The entry protocol
//! Each entry has a `tag` word and the id in two words. The tag is
//! `generation (32 bits) << 32 | fingerprint (30 bits) << 2 | state`: `state` is `EMPTY` (0),
//! `WRITING` (1), `FULL` (2) or `TOMBSTONE` (3); the fingerprint is 30 bits of the id's hash
//! (not the bits that choose its home); an entry of an older generation than the current one
//! (compared on the low 32 bits, wrapping) is empty, whatever its state. An entry of a *newer*
//! generation means a purge happened after the writer read the generation: it reads the
//! generation again and starts its probe over, so a stale writer never claims over a new one.
//! - A writer claims a free entry with a CAS of `tag` to `(gen, fp, WRITING)` and stores the id
//!   words (Relaxed); once the caller's own step is done ([`Pending`]) it publishes with a
//!   Release CAS to `(gen, fp, FULL)`, or abandons with one to `(gen, fp, TOMBSTONE)`.
//! - A reader loads `tag` with Acquire. An entry with another fingerprint holds another id,
//!   whatever its state: the reader probes on without reading the id words or waiting. With
//!   the same fingerprint and `FULL`, it reads the id words, which the Release/Acquire pair
//!   makes visible and complete.
//! - A reader that meets `(gen, same fp, WRITING)` may be racing a writer of the same id, so
//!   it must not pass: it waits for `FULL` or `TOMBSTONE` (spinning, then yielding), for up
//!   to [`STALLED_WRITER`]. A writer that is only preempted (or CPU-throttled) finishes within
//!   that (the API holds a claim only across a non-blocking ring push); one that never does
//!   died between its claim and its publish, and passing over it then is what lets the
//!   client's retry in. If it died after its push, that payment is queued as well: the same
//!   id twice, which the consumer sends to a processor that already has it (422, counted
//!   once) unless routing changed in between. The one way to get two `New` for one live
//!   writer is a stall longer than that bound.
//! - Publish and abandon are CASes from the claimed tag: if a purge started a new generation
//!   meanwhile and someone reclaimed the entry, the stale claim changes nothing.
//!   (Version 1 of the layout passed over any writer after 10,000 spins, fingerprint or not:
//!   a preempted writer let the same id in twice, 3 runs in 90 of the racing test.)
//!
//! Linear probing stays correct without deletions: within one generation an entry only ever
//! goes from free to `WRITING` to `FULL` (or `TOMBSTONE`), so the run of occupied entries in
//! front of an id never gets a hole, and a probe may stop at the first free entry.
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
/// How long a reader waits for a writer of the same fingerprint to publish before it takes
/// the writer for dead and passes over the entry.
pub const STALLED_WRITER: std::time::Duration = std::time::Duration::from_secs(1);
/// Spins before a waiting reader starts yielding its thread.
const WRITING_SPINS: u32 = 2_000;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const TOMBSTONE: u64 = 3;
const STATE_MASK: u64 = 3;
/// Fingerprint bits, in place (bits 2..32 of the tag).
const FP_MASK: u64 = 0xFFFF_FFFC;

/// The tag of an entry of generation `gen` (its low 32 bits), fingerprint `fp` (already in
/// place, see [`fingerprint`]) and `state`.
fn tag_of(gen: u64, fp: u64, state: u64) -> u64 {
    gen << 32 | fp | state
}

/// Whether `tag` belongs to generation `gen` (compared on the low 32 bits).
fn of_generation(tag: u64, gen: u64) -> bool {
    tag >> 32 == gen & 0xFFFF_FFFF
}

/// Whether `tag` belongs to a generation after `gen` (low 32 bits, wrapping: a purge a
/// second for 68 years would be needed to confuse the two).
fn newer_than(tag: u64, gen: u64) -> bool {
    ((tag >> 32) as u32).wrapping_sub(gen as u32) as i32 > 0
}

/// 30 bits of the hash `h`, placed at bits 2..32: the top bits, while the home entry is taken
/// from `h % len` (the low bits for a power-of-two table).
fn fingerprint(h: u64) -> u64 {
    (h >> 32) & FP_MASK
}

/// One entry of the table, 24 bytes, in the shared file.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IdEntry {
    /// `generation << 32 | fingerprint << 2 | state` (see the module docs).
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

/// What a claim found: [`Claim::New`] holds the id until it is published or abandoned.
#[derive(Debug)]
pub enum Claim<'a> {
    /// First time this id is seen in this generation; it is held in `WRITING`.
    New(Pending<'a>),
    /// The id was inserted before (by any process) in this generation.
    Seen,
    /// No free entry within [`MAX_PROBE`] entries of the id's home.
    Full,
}

/// A claimed id, not yet visible as seen. Publish it once what it guards is done, or abandon
/// it; dropped without either, it stays `WRITING` as if its process had died (readers of the
/// same id wait [`STALLED_WRITER`] and then pass over it).
#[must_use = "publish or abandon the claim"]
#[derive(Debug)]
pub struct Pending<'a> {
    entry: &'a IdEntry,
    /// The `WRITING` tag this claim stored.
    claimed: u64,
}

impl Pending<'_> {
    /// Makes the id seen by every later insert.
    pub fn publish(self) {
        self.finish(FULL);
    }

    /// Takes the id out again (what it guarded could not be done): the entry becomes a
    /// tombstone, which keeps later probes going and is reused after a purge.
    pub fn abandon(self) {
        self.finish(TOMBSTONE);
    }

    fn finish(self, state: u64) {
        // Release: a reader that sees FULL sees both id words. A CAS, not a store: if a
        // purge made this claim stale and the entry was claimed again in the new
        // generation, that claim must stand.
        let _ = self.entry.tag.compare_exchange(
            self.claimed,
            (self.claimed & !STATE_MASK) | state,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
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
        match self.claim(id) {
            Claim::New(pending) => {
                pending.publish();
                Insert::New
            }
            Claim::Seen => Insert::Seen,
            Claim::Full => Insert::Full,
        }
    }

    /// Claims `id`, to publish or abandon later; see the module's contract.
    pub fn claim(&self, id: &[u8; 16]) -> Claim<'a> {
        let n = self.entries.len();
        if n == 0 {
            return Claim::Full;
        }
        let (lo, hi) = super::id_words(id);
        let h = mix(lo, hi);
        let fp = fingerprint(h);
        let home = (h % n as u64) as usize;
        'probe: loop {
            // Acquire pairs with the Release in `clear`: a writer that sees the new generation
            // also sees that every entry of the old one now counts as empty.
            let gen = self.generation.load(Ordering::Acquire);
            for step in 0..MAX_PROBE.min(n) {
                let entry = &self.entries[(home + step) % n];
                let mut tag = entry.tag.load(Ordering::Acquire);
                let mut waited: Option<std::time::Instant> = None;
                let mut spins = 0u32;
                loop {
                    if newer_than(tag, gen) {
                        continue 'probe; // a purge since we read the generation: start over
                    }
                    if !of_generation(tag, gen) || tag & STATE_MASK == EMPTY {
                        // Free in this generation: claim it. AcqRel: on success no one else can
                        // claim it for this generation; on failure we re-examine what won.
                        match entry.tag.compare_exchange(
                            tag,
                            tag_of(gen, fp, WRITING),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => {
                                // Ordered before the publish by its Release (`Pending::finish`).
                                entry.lo.store(lo, Ordering::Relaxed);
                                entry.hi.store(hi, Ordering::Relaxed);
                                return Claim::New(Pending {
                                    entry,
                                    claimed: tag_of(gen, fp, WRITING),
                                });
                            }
                            Err(now) => {
                                tag = now;
                                continue;
                            }
                        }
                    }
                    if tag & FP_MASK != fp || tag & STATE_MASK == TOMBSTONE {
                        break; // another id, or an abandoned one: occupied for probing, no match
                    }
                    if tag & STATE_MASK == WRITING {
                        // Maybe the same id, being written: wait for it (module docs).
                        if spins < WRITING_SPINS {
                            spins += 1;
                            std::hint::spin_loop();
                        } else {
                            let since = *waited.get_or_insert_with(std::time::Instant::now);
                            if since.elapsed() >= STALLED_WRITER {
                                break; // the writer died before publishing: pass over
                            }
                            std::thread::yield_now();
                        }
                        tag = entry.tag.load(Ordering::Acquire);
                        continue;
                    }
                    // (gen, fp, FULL): the Acquire load of `tag` makes the id words visible.
                    if entry.lo.load(Ordering::Relaxed) == lo
                        && entry.hi.load(Ordering::Relaxed) == hi
                    {
                        return Claim::Seen;
                    }
                    break;
                }
            }
            return Claim::Full;
        }
    }

    /// Whether `id` is in the set (a read-only probe).
    pub fn contains(&self, id: &[u8; 16]) -> bool {
        let n = self.entries.len();
        if n == 0 {
            return false;
        }
        let (lo, hi) = super::id_words(id);
        let gen = self.generation.load(Ordering::Acquire);
        let h = mix(lo, hi);
        let fp = fingerprint(h);
        let home = (h % n as u64) as usize;
        for step in 0..MAX_PROBE.min(n) {
            let entry = &self.entries[(home + step) % n];
            let tag = entry.tag.load(Ordering::Acquire);
            if !of_generation(tag, gen) || tag & STATE_MASK == EMPTY {
                return false;
            }
            if tag & STATE_MASK == FULL
                && tag & FP_MASK == fp
                && entry.lo.load(Ordering::Relaxed) == lo
                && entry.hi.load(Ordering::Relaxed) == hi
            {
                return true;
            }
        }
        false
    }

    /// Empties the set for every process by starting a new generation (purge).
    pub fn clear(&self) {
        // Release pairs with the Acquire in `claim`.
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
        for n in [0, 1] {
            assert_eq!(set.insert(&id(n)), Insert::New);
        }
        let Claim::New(two) = set.claim(&id(2)) else {
            panic!("id 2 is new")
        };
        for n in [3, 4, 5] {
            assert_eq!(set.insert(&id(n)), Insert::New);
        }
        two.abandon();
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

    /// Home entry and fingerprint of `id` in a table of `n`.
    fn home_fp(id: &[u8; 16], n: usize) -> (usize, u64) {
        let (lo, hi) = crate::shm::id_words(id);
        let h = mix(lo, hi);
        ((h % n as u64) as usize, fingerprint(h))
    }

    #[test]
    fn dead_writers_of_other_ids_are_passed_over() {
        let entries = table(4);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        let (_, fp) = home_fp(&id(1), 4);
        let other = fp ^ 4; // another fingerprint
        for e in &entries {
            e.tag.store(tag_of(1, other, WRITING), Ordering::Relaxed); // died mid-insert
        }
        assert_eq!(set.insert(&id(1)), Insert::Full);
        entries[2].tag.store(EMPTY, Ordering::Relaxed);
        assert_eq!(set.insert(&id(1)), Insert::New);
        assert_eq!(set.insert(&id(1)), Insert::Seen);
    }

    #[test]
    fn a_dead_writer_with_the_same_fingerprint_is_passed_over_after_the_bound() {
        let entries = table(4);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        let (home, fp) = home_fp(&id(1), 4);
        entries[home]
            .tag
            .store(tag_of(1, fp, WRITING), Ordering::Relaxed);
        let start = std::time::Instant::now();
        assert_eq!(set.insert(&id(1)), Insert::New);
        assert!(
            start.elapsed() >= STALLED_WRITER,
            "it waited for the writer"
        );
        assert_eq!(set.insert(&id(1)), Insert::Seen);
    }

    /// The race that version 1 lost: a writer of the same id is descheduled between its claim
    /// and its publish (here for 50 ms, far beyond the old spin budget). The other insert
    /// must wait and see it, not claim a second entry.
    #[test]
    fn a_preempted_writer_of_the_same_id_is_waited_for() {
        let entries = Arc::new(table(16));
        let gen = Arc::new(AtomicU64::new(1));
        let (home, fp) = home_fp(&id(7), 16);
        let (lo, hi) = crate::shm::id_words(&id(7));
        entries[home]
            .tag
            .store(tag_of(1, fp, WRITING), Ordering::Release);
        let reader = {
            let (entries, gen) = (Arc::clone(&entries), Arc::clone(&gen));
            std::thread::spawn(move || IdSet::new(&entries, &gen).insert(&id(7)))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        entries[home].lo.store(lo, Ordering::Relaxed);
        entries[home].hi.store(hi, Ordering::Relaxed);
        entries[home]
            .tag
            .store(tag_of(1, fp, FULL), Ordering::Release);
        assert_eq!(reader.join().ok(), Some(Insert::Seen));
        let set = IdSet::new(&entries, &gen);
        assert_eq!(set.insert(&id(7)), Insert::Seen);
    }

    #[test]
    fn a_new_generation_empties_whatever_the_fingerprint() {
        let entries = table(8);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        assert_eq!(set.insert(&id(3)), Insert::New);
        let (home, fp) = home_fp(&id(3), 8);
        entries[home]
            .tag
            .store(tag_of(1, fp, WRITING), Ordering::Relaxed); // died there, last generation
        set.clear();
        let start = std::time::Instant::now();
        assert_eq!(set.insert(&id(3)), Insert::New);
        assert!(
            start.elapsed() < STALLED_WRITER,
            "an old generation's writer is not waited for"
        );
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

    /// The API's race with a full ring: while one insert holds its claim (its push not yet
    /// known), a second insert of the same id waits; it is told "seen" only if the claim is
    /// published, and gets the id itself if the claim is abandoned.
    #[test]
    fn an_insert_waits_for_a_claim_of_the_same_id_and_follows_its_outcome() {
        let entries = table(16);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        for publish in [false, true] {
            set.clear();
            let Claim::New(pending) = set.claim(&id(7)) else {
                panic!("id 7 is new")
            };
            std::thread::scope(|s| {
                let other = s.spawn(|| set.insert(&id(7)));
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(!other.is_finished(), "the second insert did not wait");
                if publish {
                    pending.publish();
                } else {
                    pending.abandon();
                }
                let want = if publish { Insert::Seen } else { Insert::New };
                assert_eq!(other.join().expect("insert thread"), want);
            });
        }
    }

    /// A writer that read the generation before a purge meets an entry of the new generation:
    /// it starts over in the new one instead of claiming over that entry.
    #[test]
    fn a_writer_with_a_stale_generation_does_not_claim_over_a_newer_entry() {
        let entries = table(1);
        let gen = AtomicU64::new(2);
        let set = IdSet::new(&entries, &gen);
        let Claim::New(new_writer) = set.claim(&id(2)) else {
            panic!("id 2 is new")
        };
        // What a writer still on generation 1 sees: the entry is generation 2's.
        let tag = entries[0].tag.load(Ordering::Relaxed);
        assert!(newer_than(tag, 1) && !newer_than(tag, 2) && !newer_than(tag, 3));
        new_writer.publish();
        // A writer that read generation 1: here the word itself says 1 for 20 ms. It must
        // not take the entry; once the word says 2 again, it finds the table full (its one
        // entry holds id 2).
        gen.store(1, Ordering::Relaxed);
        let racer = std::thread::scope(|s| {
            let h = s.spawn(|| matches!(set.claim(&id(3)), Claim::New(_)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            gen.store(2, Ordering::Release);
            h.join().expect("claim thread")
        });
        assert!(!racer, "a stale writer claimed over generation 2's entry");
        assert_eq!(set.insert(&id(2)), Insert::Seen);
    }

    /// A claim made stale by a purge, and its entry claimed again in the new generation: the
    /// stale claim's publish or abandon leaves the new one alone.
    #[test]
    fn a_stale_claim_does_not_touch_the_next_generation() {
        let entries = table(1);
        let gen = AtomicU64::new(1);
        let set = IdSet::new(&entries, &gen);
        let Claim::New(stale) = set.claim(&id(1)) else {
            panic!("id 1 is new")
        };
        set.clear();
        assert_eq!(set.insert(&id(2)), Insert::New);
        stale.abandon();
        assert_eq!(set.insert(&id(2)), Insert::Seen);
        assert!(set.contains(&id(2)));
    }
}
