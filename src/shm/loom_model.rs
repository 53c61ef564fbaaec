//! loom models of the two lock-free protocols of the shared file, checked over every
//! interleaving loom explores (`RUSTFLAGS="--cfg rinha_loom" cargo test --release --lib shm::loom_model`; a cfg of our own,
//! because tokio reads `--cfg loom` as "build tokio for loom").
//!
//! The region's structs live in a file mapping and use `std` atomics, so the models restate
//! each protocol step for step on loom's atomics, with the same orderings as the code:
//! `ring.rs` (push: claim CAS AcqRel, payload Relaxed, publish Release; take: Acquire load,
//! claim CAS AcqRel, payload Relaxed, free Release) and `stats_log.rs` (the record seqlock).
//! A change of ordering or step there must be made here too.
use loom::sync::atomic::{fence, AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const READING: u64 = 3;

fn stamp(pos: u64, owner: u64, state: u64) -> u64 {
    pos << 8 | owner << 2 | state
}

struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    stamps: Vec<AtomicU64>,
    words: Vec<AtomicU64>,
}

impl Ring {
    fn new(cap: u64) -> Ring {
        Ring {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            stamps: (0..cap)
                .map(|i| AtomicU64::new(stamp(i, 0, EMPTY)))
                .collect(),
            words: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn cap(&self) -> u64 {
        self.stamps.len() as u64
    }

    fn push(&self, me: u64, v: u64) -> bool {
        loop {
            let t = self.tail.load(Ordering::Acquire);
            let i = (t % self.cap()) as usize;
            let s = self.stamps[i].load(Ordering::Acquire);
            let pos = s >> 8;
            if pos == t && s & 3 == EMPTY {
                if self.stamps[i]
                    .compare_exchange(
                        s,
                        stamp(t, me, WRITING),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    let _ =
                        self.tail
                            .compare_exchange(t, t + 1, Ordering::AcqRel, Ordering::Relaxed);
                    self.words[i].store(v, Ordering::Relaxed);
                    self.stamps[i].store(stamp(t, me, FULL), Ordering::Release);
                    return true;
                }
            } else if pos >= t {
                let _ = self
                    .tail
                    .compare_exchange(t, t + 1, Ordering::AcqRel, Ordering::Relaxed);
            } else if self.tail.load(Ordering::Acquire) == t {
                return false; // full
            }
            thread::yield_now();
        }
    }

    fn pop(&self, me: u64) -> Option<u64> {
        loop {
            let h = self.head.load(Ordering::Acquire);
            let i = (h % self.cap()) as usize;
            let s = self.stamps[i].load(Ordering::Acquire);
            let pos = s >> 8;
            if pos > h {
                let _ = self
                    .head
                    .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Relaxed);
                continue;
            }
            if pos < h {
                return None;
            }
            match s & 3 {
                FULL => {
                    if self.stamps[i]
                        .compare_exchange(
                            s,
                            stamp(h, me, READING),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ =
                        self.head
                            .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Relaxed);
                    let v = self.words[i].load(Ordering::Relaxed);
                    self.stamps[i].store(stamp(h + self.cap(), 0, EMPTY), Ordering::Release);
                    return Some(v);
                }
                READING => {
                    let _ =
                        self.head
                            .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Relaxed);
                }
                WRITING => {
                    thread::yield_now(); // a live producer is publishing
                }
                _ => return None,
            }
        }
    }
}

/// The stamp loops spin (with `yield_now`) while another thread is mid-step, so the ring
/// models bound preemptions: every schedule with at most 3 preemptions is explored.
fn bounded() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

#[test]
fn ring_delivers_each_item_once_two_producers_one_consumer() {
    bounded().check(|| {
        let ring = Arc::new(Ring::new(2));
        let producers: Vec<_> = (1..=2u64)
            .map(|me| {
                let r = Arc::clone(&ring);
                thread::spawn(move || assert!(r.push(me, 10 * me)))
            })
            .collect();
        let mut got = Vec::new();
        let r = Arc::clone(&ring);
        let consumer = thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Some(v) = r.pop(3) {
                    got.push(v);
                }
            }
            got
        });
        for p in producers {
            p.join().unwrap();
        }
        got.extend(consumer.join().unwrap());
        while let Some(v) = ring.pop(3) {
            got.push(v);
        }
        got.sort();
        assert_eq!(got, vec![10, 20]);
    });
}

#[test]
fn ring_wraps_with_two_consumers() {
    bounded().check(|| {
        let ring = Arc::new(Ring::new(1));
        assert!(ring.push(1, 7));
        let consumers: Vec<_> = (2..=3u64)
            .map(|me| {
                let r = Arc::clone(&ring);
                thread::spawn(move || r.pop(me))
            })
            .collect();
        let pushed_again = ring.push(1, 8);
        let mut got: Vec<u64> = consumers
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .collect();
        while let Some(v) = ring.pop(2) {
            got.push(v);
        }
        got.sort();
        let want = if pushed_again { vec![7, 8] } else { vec![7] };
        assert_eq!(got, want);
    });
}

struct Record {
    stamp: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

fn append(r: &Record, i: u64, v: u64) {
    r.stamp.store(i << 1, Ordering::Relaxed);
    fence(Ordering::Release);
    r.a.store(v, Ordering::Relaxed);
    r.b.store(v, Ordering::Relaxed);
    r.stamp.store(i << 1 | 1, Ordering::Release);
}

fn read(r: &Record, i: u64) -> Option<(u64, u64)> {
    let want = i << 1 | 1;
    if r.stamp.load(Ordering::Acquire) != want {
        return None;
    }
    let a = r.a.load(Ordering::Relaxed);
    let b = r.b.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    if r.stamp.load(Ordering::Relaxed) != want {
        return None;
    }
    Some((a, b))
}

#[test]
fn log_readers_never_see_a_torn_record_even_across_laps() {
    loom::model(|| {
        // Capacity 1: index 1 overwrites index 0 while a reader may be reading index 0.
        let rec = Arc::new(Record {
            stamp: AtomicU64::new(0),
            a: AtomicU64::new(0),
            b: AtomicU64::new(0),
        });
        let w = Arc::clone(&rec);
        let writer = thread::spawn(move || {
            append(&w, 0, 100);
            append(&w, 1, 200);
        });
        if let Some((a, b)) = read(&rec, 0) {
            assert_eq!((a, b), (100, 100), "torn or wrong record for index 0");
        }
        if let Some((a, b)) = read(&rec, 1) {
            assert_eq!((a, b), (200, 200), "torn or wrong record for index 1");
        }
        writer.join().unwrap();
    });
}
