//! The shared file in one process: lifecycle, bad files, ring, log, purge, recovery.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rinha::shm::worker::{number_of, numbered};
use rinha::shm::{Payment, Processor, Region, RegionConfig, Role, Summary, Totals};

static N: AtomicU32 = AtomicU32::new(0);

struct TempShm(PathBuf);
impl TempShm {
    fn new() -> TempShm {
        TempShm(PathBuf::from(format!(
            "/dev/shm/rinha-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}
impl Drop for TempShm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn small() -> RegionConfig {
    RegionConfig {
        ring_capacity: 64,
        log_capacity: 4096,
        max_members: 8,
        inflight_per_member: 128,
        id_capacity: 1024,
    }
}

fn pay(n: u64) -> Payment {
    Payment {
        id: numbered(n),
        cents: n + 1,
        received_at_ms: 5,
        ..Payment::default()
    }
}

#[test]
fn create_then_attach_sees_the_same_region() {
    let f = TempShm::new();
    let a = Arc::new(Region::open(&f.0, &small()).unwrap());
    let b = Arc::new(Region::attach(&f.0).unwrap());
    assert_eq!(b.config(), &small());
    let ma = a.join(Role::Api).unwrap();
    let mb = b.join(Role::Consumer).unwrap();
    assert_ne!(ma.index(), mb.index());
    a.ring().push(&ma, &pay(1)).unwrap();
    let id = b.ring().take(&mb, Some(Duration::ZERO)).unwrap();
    assert_eq!(mb.payment(id), pay(1));
}

#[test]
fn racing_creators_make_one_region() {
    let f = TempShm::new();
    let path = f.0.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || Region::open(&p, &small()).map(|r| r.config().clone()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), small());
    }
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().contains(&format!(
                "{}.init",
                path.file_name().unwrap().to_string_lossy()
            ))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary init files left: {leftovers:?}"
    );
}

#[test]
fn bad_files_are_refused_with_a_clear_error_and_left_alone() {
    let f = TempShm::new();
    let name = f.0.display().to_string();
    // Another program's file.
    std::fs::write(&f.0, vec![7u8; 8192]).unwrap();
    let e = Region::open(&f.0, &small()).err().unwrap().to_string();
    assert!(e.contains(&name) && e.contains("wrong magic"), "{e}");
    assert_eq!(
        std::fs::read(&f.0).unwrap(),
        vec![7u8; 8192],
        "the file was modified"
    );
    // Truncated: shorter than a header.
    std::fs::write(&f.0, b"RINHASHM").unwrap();
    let e = Region::attach(&f.0).err().unwrap().to_string();
    assert!(e.contains(&name) && e.contains("truncated"), "{e}");
    // A real region cut short.
    std::fs::remove_file(&f.0).unwrap();
    drop(Region::open(&f.0, &small()).unwrap());
    let full = std::fs::read(&f.0).unwrap();
    std::fs::write(&f.0, &full[..full.len() / 2]).unwrap();
    let e = Region::attach(&f.0).err().unwrap().to_string();
    assert!(e.contains("truncated or resized"), "{e}");
    // An older layout version.
    let mut old = full.clone();
    old[8] = 0;
    std::fs::write(&f.0, &old).unwrap();
    let e = Region::attach(&f.0).err().unwrap().to_string();
    assert!(e.contains("layout version 0"), "{e}");
    // Other capacities than asked for.
    std::fs::write(&f.0, &full).unwrap();
    let other = RegionConfig {
        ring_capacity: 128,
        ..small()
    };
    let e = Region::open(&f.0, &other).err().unwrap().to_string();
    assert!(e.contains("capacities differ"), "{e}");
    // A directory that does not exist.
    let e = Region::open(std::path::Path::new("/nonexistent-dir/x"), &small())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent-dir/x"), "{e}");
}

#[test]
fn bad_configurations_name_the_setting() {
    let f = TempShm::new();
    let e = Region::open(
        &f.0,
        &RegionConfig {
            ring_capacity: 100,
            ..small()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("ring_capacity 100"), "{e}");
    let e = Region::open(
        &f.0,
        &RegionConfig {
            log_capacity: 1000,
            ..small()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("log_capacity 1000"), "{e}");
}

#[test]
fn ring_is_fifo_and_full_is_an_immediate_error() {
    let f = TempShm::new();
    let r = Arc::new(Region::open(&f.0, &small()).unwrap());
    let me = r.join(Role::Consumer).unwrap();
    for n in 0..64 {
        r.ring().push(&me, &pay(n)).unwrap();
    }
    assert_eq!(r.ring().len(), 64);
    assert!(r.ring().push(&me, &pay(99)).is_err());
    for n in 0..64 {
        let id = r.ring().take(&me, Some(Duration::ZERO)).unwrap();
        assert_eq!(number_of(&me.payment(id).id), n);
        me.discard(id);
    }
    assert!(r.ring().take(&me, Some(Duration::ZERO)).is_none());
    // Wraps around many laps.
    for n in 0..1000 {
        r.ring().push(&me, &pay(n)).unwrap();
        let id = r.ring().take(&me, Some(Duration::ZERO)).unwrap();
        assert_eq!(number_of(&me.payment(id).id), n);
        me.discard(id);
    }
}

/// A consumer thread that parks on `r`'s ring (30 s timed waits) until it has taken `n`
/// payments or a wait ends empty; gives what it took and how long that took.
fn parked_consumer(r: &Arc<Region>, n: usize) -> std::thread::JoinHandle<(Vec<Payment>, Duration)> {
    let r = Arc::clone(r);
    std::thread::spawn(move || {
        let me = r.join(Role::Consumer).unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        while got.len() < n {
            match r.ring().take(&me, Some(Duration::from_secs(30))) {
                Some(id) => got.push(me.payment(id)),
                None => break,
            }
        }
        (got, started.elapsed())
    })
}

#[test]
fn a_parked_consumer_is_woken_by_a_producer() {
    let f = TempShm::new();
    let r = Arc::new(Region::open(&f.0, &small()).unwrap());
    let waiter = parked_consumer(&r, 1);
    std::thread::sleep(Duration::from_millis(100));
    let me = r.join(Role::Api).unwrap();
    r.ring().push(&me, &pay(7)).unwrap();
    let (got, waited) = waiter.join().unwrap();
    assert_eq!(got, vec![pay(7)]);
    assert!(waited < Duration::from_secs(30));
}

/// The API's order: publish without waking (`push_deferred`), answer, then `wake`. A
/// consumer parked before the publish is woken by that late `wake` (not by its 30 s timed
/// wait), and several deferred pushes are all taken after one `wake`.
#[test]
fn a_late_wake_after_deferred_pushes_reaches_a_parked_consumer() {
    let f = TempShm::new();
    let r = Arc::new(Region::open(&f.0, &small()).unwrap());
    let waiter = parked_consumer(&r, 3);
    std::thread::sleep(Duration::from_millis(100));
    let me = r.join(Role::Api).unwrap();
    for n in 1..=3 {
        r.ring().push_deferred(&me, &pay(n)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    r.ring().wake();
    let (got, waited) = waiter.join().unwrap();
    assert_eq!(got, vec![pay(1), pay(2), pay(3)]);
    assert!(
        waited < Duration::from_secs(30),
        "woken by wake(), not the timeout"
    );
}

#[test]
fn in_flight_limit_is_respected() {
    let f = TempShm::new();
    let r = Arc::new(Region::open(&f.0, &small()).unwrap());
    let me = r.join(Role::Consumer).unwrap();
    for n in 0..64 {
        r.ring().push(&me, &pay(n)).unwrap();
    }
    let mut held = Vec::new();
    while let Some(id) = r.ring().take(&me, Some(Duration::ZERO)) {
        held.push(id);
        if held.len() == 64 {
            break;
        }
    }
    assert_eq!(held.len(), 64);
    assert_eq!(me.take_limit(), 128 - 64);
}

fn naive(records: &[(i64, u64, Processor)], from: Option<i64>, to: Option<i64>) -> Summary {
    let mut s = Summary::default();
    for &(at, cents, p) in records {
        if from.is_none_or(|f| f <= at) && to.is_none_or(|t| at <= t) {
            let t = if p == Processor::Default {
                &mut s.default
            } else {
                &mut s.fallback
            };
            t.count += 1;
            t.cents += cents;
        }
    }
    s
}

#[test]
fn summary_is_exact_for_many_windows_and_inclusive() {
    let f = TempShm::new();
    let cfg = RegionConfig {
        log_capacity: 8192,
        ..small()
    };
    let r = Region::open(&f.0, &cfg).unwrap();
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut recs = Vec::new();
    for i in 0..5000u64 {
        // Mostly increasing times with some out-of-order retries.
        let at = 1_000_000 + i as i64 * 3 - (next() % 50) as i64;
        let p = if next() % 3 == 0 {
            Processor::Fallback
        } else {
            Processor::Default
        };
        let cents = 1 + next() % 100_000;
        r.stats().append(at, cents, p, &numbered(i)).unwrap();
        recs.push((at, cents, p));
    }
    for _ in 0..3 {
        // Three passes: the first scans and seals chunks, the later ones use the headers.
        for _ in 0..200 {
            let a = 1_000_000 + (next() % 16_000) as i64 - 500;
            let b = a + (next() % 8000) as i64;
            assert_eq!(
                r.stats().summary(Some(a), Some(b)),
                naive(&recs, Some(a), Some(b)),
                "[{a}, {b}]"
            );
            assert_eq!(
                r.stats().summary(Some(a), None),
                naive(&recs, Some(a), None)
            );
            assert_eq!(
                r.stats().summary(None, Some(b)),
                naive(&recs, None, Some(b))
            );
        }
    }
    assert_eq!(r.stats().summary(None, None), naive(&recs, None, None));
    // Inclusive bounds on an exact record time.
    let (at, cents, p) = recs[2500];
    let s = r.stats().summary(Some(at), Some(at));
    let want = naive(&recs, Some(at), Some(at));
    assert_eq!(s, want);
    assert!(if p == Processor::Default {
        s.default.cents >= cents
    } else {
        s.fallback.cents >= cents
    });
    assert_eq!(r.stats().summary(Some(10), Some(5)), Summary::default());
}

#[test]
fn log_full_is_an_error_and_purge_empties_everything() {
    let f = TempShm::new();
    let r = Arc::new(
        Region::open(
            &f.0,
            &RegionConfig {
                log_capacity: 1024,
                ..small()
            },
        )
        .unwrap(),
    );
    for i in 0..1024 {
        r.stats()
            .append(i, 1, Processor::Default, &numbered(i as u64))
            .unwrap();
    }
    for refused in 0..10 {
        assert!(r
            .stats()
            .append(5, 1, Processor::Default, &numbered(5000 + refused))
            .is_err());
    }
    // Refused appends hide nothing that is in the log.
    assert_eq!(
        r.stats().summary(None, None).default,
        Totals {
            count: 1024,
            cents: 1024
        }
    );
    assert_eq!(r.stats().len(), 1024);
    let me = r.join(Role::Consumer).unwrap();
    r.ring().push(&me, &pay(1)).unwrap();
    assert_eq!(r.ids().insert(&numbered(1)), rinha::shm::ids::Insert::New);
    r.purge();
    assert_eq!(r.stats().summary(None, None), Summary::default());
    assert!(
        r.ring().take(&me, Some(Duration::ZERO)).is_none(),
        "a purged payment was handed out"
    );
    assert_eq!(r.ids().insert(&numbered(1)), rinha::shm::ids::Insert::New);
    // The log's space is reused after the purge.
    for i in 0..1024 {
        r.stats()
            .append(i, 2, Processor::Fallback, &numbered(i as u64))
            .unwrap();
    }
    assert_eq!(
        r.stats().summary(None, None).fallback,
        Totals {
            count: 1024,
            cents: 2048
        }
    );
}

#[test]
fn a_dead_consumers_payments_are_adopted_once() {
    let f = TempShm::new();
    let survivor_region = Arc::new(Region::open(&f.0, &small()).unwrap());
    {
        // Another "process": its own open file description, so its own locks.
        let dead = Arc::new(Region::attach(&f.0).unwrap());
        let m = dead.join(Role::Consumer).unwrap();
        for n in 0..5 {
            dead.ring().push(&m, &pay(n)).unwrap();
        }
        let a = dead.ring().take(&m, Some(Duration::ZERO)).unwrap(); // in flight, never sent
        let b = dead.ring().take(&m, Some(Duration::ZERO)).unwrap(); // sent to default
        m.mark_attempt(b, Processor::Default, 1234);
        let c = dead.ring().take(&m, Some(Duration::ZERO)).unwrap(); // recorded, slot not freed
        dead.stats()
            .append(77, pay(2).cents, Processor::Default, &pay(2).id)
            .unwrap();
        let _ = (a, c);
        drop(m); // a Member has no clean-up: this is what a kill leaves
        drop(dead); // the last reference closes its file: its locks go, as at death
    }
    let me = survivor_region.join(Role::Consumer).unwrap();
    // The dead member's locks go when the last reference to its open file description closes.
    // Another test of this binary may be forking `mount` at this moment: the child holds a copy
    // of every descriptor until it execs, so the member can look alive for a moment longer.
    let got = eventually("the dead member's lock to go", || {
        let got = me.recover_dead();
        (!got.is_empty()).then_some(got)
    });
    let mut numbers: Vec<(u64, Option<Processor>, i64)> = got
        .iter()
        .map(|&id| {
            let p = me.payment(id);
            (number_of(&p.id), p.attempted(), p.first_requested_at_ms)
        })
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        vec![(0, None, 0), (1, Some(Processor::Default), 1234)]
    );
    assert!(me.recover_dead().is_empty(), "adopted twice");
    // The two still queued are untouched.
    let rest: Vec<u64> =
        std::iter::from_fn(|| survivor_region.ring().take(&me, Some(Duration::ZERO)))
            .map(|id| number_of(&me.payment(id).id))
            .collect();
    assert_eq!(rest, vec![3, 4]);
}

/// Recovery skips an entry once it found its dead holder left nothing, and looks at it again
/// as soon as someone joins it: a later holder's leftovers are still adopted.
#[test]
fn an_entry_found_empty_is_looked_at_again_after_a_new_holder_dies() {
    let f = TempShm::new();
    let survivor_region = Arc::new(Region::open(&f.0, &small()).unwrap());
    let me = survivor_region.join(Role::Consumer).unwrap();
    let die_with = |n: Option<u64>| -> u32 {
        let dead = Arc::new(Region::attach(&f.0).unwrap());
        let m = dead.join(Role::Consumer).unwrap();
        if let Some(n) = n {
            dead.ring().push(&m, &pay(n)).unwrap();
            let _ = dead.ring().take(&m, Some(Duration::ZERO)).unwrap();
        }
        m.index()
    };
    let first = die_with(None);
    // Its lock may outlive the drop for a moment (see `eventually`); then it is found empty.
    eventually("the empty entry's lock to go", || {
        survivor_region
            .join(Role::Other)
            .ok()
            .filter(|m| m.index() == first)
            .map(drop)
    });
    assert!(me.recover_dead().is_empty());
    let second = die_with(Some(9));
    assert_eq!(second, first, "the entry found empty is joined again");
    let got = eventually("the second holder's payment to be adopted", || {
        let got = me.recover_dead();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got.len(), 1);
    assert_eq!(number_of(&me.payment(got[0]).id), 9);
}

/// An adopted entry is let go once its last payment is finished: consumers that crash and
/// restart do not use up the process table (each adoption used to hold its entry for good).
#[test]
fn an_adopted_entry_is_let_go_when_its_payments_are_finished() {
    let f = TempShm::new();
    let survivor_region = Arc::new(Region::open(&f.0, &small()).unwrap());
    let me = survivor_region.join(Role::Consumer).unwrap();
    let dead_index = {
        let dead = Arc::new(Region::attach(&f.0).unwrap());
        let m = dead.join(Role::Consumer).unwrap();
        for n in 0..2 {
            dead.ring().push(&m, &pay(n)).unwrap();
            let _ = dead.ring().take(&m, Some(Duration::ZERO)).unwrap();
        }
        m.index()
    };
    let got = eventually("the dead member's payments to be adopted", || {
        let got = me.recover_dead();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got.len(), 2);
    // Held while a payment of it is unfinished (a consumer would take an entry left unlocked,
    // leftovers and all).
    me.complete(got[0], Processor::Default, 1).unwrap();
    let other = survivor_region.join(Role::Consumer).unwrap();
    assert_ne!(other.index(), dead_index, "let go too early");
    drop(other);
    me.discard(got[1]);
    let again = eventually("the adopted entry to be let go", || {
        survivor_region
            .join(Role::Api)
            .ok()
            .filter(|m| m.index() == dead_index)
    });
    drop(again);
    assert!(me.recover_dead().is_empty(), "nothing is left to adopt");
}

#[test]
fn a_full_tmpfs_is_a_clear_error_at_creation() {
    let dir = std::env::temp_dir().join(format!("rinha-tiny-tmpfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Mounting needs root (CI has it); say so rather than pass silently.
        eprintln!("SKIPPED a_full_tmpfs_is_a_clear_error_at_creation: cannot mount a tmpfs here");
        let _ = std::fs::remove_dir(&dir);
        return;
    }
    let path = dir.join("rinha-shm");
    let e = Region::open(&path, &RegionConfig::default())
        .err()
        .map(|e| e.to_string());
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    let e = e.expect("a region larger than the tmpfs must be refused");
    assert!(
        e.contains("tmpfs full or too small") && e.contains("rinha-shm"),
        "{e}"
    );
}

#[test]
fn members_of_one_process_get_distinct_entries_and_release_them_on_drop() {
    // OFD locks belong to an open file description: each member must have its own, or a
    // second join in the same process would take the first one's entry again.
    let shm = TempShm::new();
    let region = Arc::new(Region::open(&shm.0, &small()).expect("create"));
    let a = region.join(Role::Consumer).expect("join a");
    let b = region.join(Role::Consumer).expect("join b");
    assert_ne!(a.index(), b.index(), "two members share one entry");
    // A sibling is alive: b must not adopt what a holds.
    region.ring().push(&a, &pay(7)).expect("push");
    let _held = region.ring().take(&a, Some(Duration::ZERO)).expect("take");
    assert!(b.recover_dead().is_empty(), "a live sibling was recovered");
    // Dropping a member releases its entry like a death: its payment is adopted once.
    drop(a);
    let adopted = eventually("the dropped member's payment to be adopted", || {
        let got = b.recover_dead();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(
        adopted.len(),
        1,
        "the dropped member's payment was not adopted once"
    );
    assert_eq!(b.payment(adopted[0]).cents, pay(7).cents);
    // Every entry can be joined and given back any number of times.
    for _ in 0..3 * small().max_members {
        let m = region.join(Role::Api).expect("join after drops");
        assert_ne!(m.index(), b.index());
    }
}

/// The health poller's lease: one holder at a time, renewed by its holder, taken over by
/// another member once the holder is gone (a member dropped releases its lock exactly as a
/// killed process does: the lock belongs to its open file description).
#[test]
fn the_poller_lease_has_one_holder_and_passes_on_when_it_dies() {
    let f = TempShm::new();
    let region = Arc::new(Region::open(&f.0, &small()).expect("region"));
    let a = region.join(Role::Consumer).expect("a");
    let b = region.join(Role::Consumer).expect("b");
    let board = region.health();
    assert!(board.try_lease(&a, 1_000), "a free lease is taken");
    assert!(!board.try_lease(&b, 1_001), "a live holder keeps it");
    assert!(board.try_lease(&a, 1_500), "the holder renews it");
    assert_eq!(board.lease_holder(), Some(a.index()));
    drop(a);
    // As in `a_dead_consumers_payments_are_adopted_once`: a forked child of another test may keep
    // the dead holder's lock for a moment, so the takeover is awaited, bounded.
    eventually("a dead holder's lease to be taken over", || {
        board.try_lease(&b, 2_000).then_some(())
    });
    assert_eq!(board.lease_holder(), Some(b.index()));
    let c = region.join(Role::Consumer).expect("c");
    assert!(
        !board.try_lease(&c, 2_001),
        "and then kept by its new holder"
    );
    // A holder that is alive but stopped renewing (its entry adopted by a consumer that does
    // not poll, say) loses the lease once it is stale, and only then.
    let stale = rinha::shm::LEASE_STALE_MS;
    assert!(
        !board.try_lease(&c, 2_000 + stale - 1),
        "taken before it was stale"
    );
    assert!(
        board.try_lease(&c, 2_000 + stale),
        "a stale lease is taken over"
    );
    assert!(
        !board.try_lease(&b, 2_000 + stale + 1),
        "the old holder lost it"
    );
}

/// Polls `f` until it gives `Some`, for at most 10 s; panics naming `what` after that.
/// For the one thing in this file that is not immediate: a dropped member's OFD lock is released
/// only once every copy of its descriptor is closed, and a child forked by a concurrent test
/// holds a copy until it execs.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
