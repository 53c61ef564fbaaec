//! Real processes on one shared file: exactly-once delivery under load and under SIGKILL,
//! and log appenders racing readers.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rinha::shm::worker::{number_of, test_config};
use rinha::shm::{Processor, Region};

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct TempShm(PathBuf);
impl TempShm {
    fn new(tag: &str) -> TempShm {
        TempShm(PathBuf::from(format!(
            "/dev/shm/rinha-test-mp-{tag}-{}",
            std::process::id()
        )))
    }
}
impl Drop for TempShm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A scratch directory removed on drop, also when a test panics.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn worker(shm: &TempShm, ring: u32, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rinha"))
        .arg("shm-worker")
        .arg("--shm")
        .arg(&shm.0)
        .arg("--ring-capacity")
        .arg(ring.to_string())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn shm-worker")
}

fn wait_all(procs: &mut Procs, limit: Duration) {
    let deadline = Instant::now() + limit;
    for c in &mut procs.0 {
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "workers did not finish in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn recorded(shm: &TempShm) -> HashMap<u64, u32> {
    let region = Region::attach(&shm.0).expect("attach");
    let mut seen = HashMap::new();
    for (_, _, _, id) in region.stats().records() {
        *seen.entry(number_of(&id)).or_insert(0) += 1;
    }
    seen
}

#[test]
fn producers_and_consumers_move_every_item_exactly_once() {
    // 1,000,000 items in release (what CI runs); a tenth in debug builds.
    let total: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let shm = TempShm::new("once");
    drop(Region::open(&shm.0, &test_config(4096)).expect("create"));
    let (producers, consumers) = (3u64, 2);
    let per = total / producers;
    let mut procs = Procs(Vec::new());
    for c in 0..consumers {
        let _ = c;
        procs
            .0
            .push(worker(&shm, 4096, &["consume", "--idle-ms", "1500"]));
    }
    for p in 0..producers {
        let start = (p * per).to_string();
        procs.0.push(worker(
            &shm,
            4096,
            &["produce", "--start", &start, "--count", &per.to_string()],
        ));
    }
    wait_all(&mut procs, Duration::from_secs(240));
    let seen = recorded(&shm);
    assert_eq!(seen.len() as u64, per * producers, "items missing");
    assert!(seen.values().all(|&n| n == 1), "an item was recorded twice");
    assert!((0..per * producers).all(|n| seen.contains_key(&n)));
}

#[test]
fn sigkilled_producers_and_consumers_lose_nothing_acknowledged() {
    let shm = TempShm::new("kill");
    drop(Region::open(&shm.0, &test_config(1024)).expect("create"));
    let dir = TempDir(std::env::temp_dir().join(format!("rinha-kill-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("tmp dir");
    let per: u64 = 20_000;
    let producers = 4u64;
    let mut procs = Procs(Vec::new());
    // In guards: every child is killed if the test panics half-way.
    let mut consumers = Procs(
        (0..2)
            .map(|_| worker(&shm, 1024, &["consume", "--idle-ms", "60000"]))
            .collect(),
    );
    let mut starts: Vec<u64> = Vec::new();
    let mut prods = Procs(Vec::new());
    for p in 0..producers {
        let acked = dir.0.join(format!("acked-{p}"));
        let start = p * per;
        starts.push(start);
        prods.0.push(worker(
            &shm,
            1024,
            &[
                "produce",
                "--start",
                &start.to_string(),
                "--count",
                &per.to_string(),
                "--acked",
                acked.to_str().unwrap(),
            ],
        ));
    }
    // Kill producers and consumers at pseudo-random moments; restart killed consumers.
    // The seed changes every run (so repeated runs explore different kill moments) and is in
    // every failure message, so a failing schedule can be replayed with RINHA_KILL_SEED.
    let seed = std::env::var("RINHA_KILL_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9)
        })
        | 1;
    let mut rng = seed;
    let mut kills = 0;
    let mut killed_producers = HashSet::new();
    for round in 0..30 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(5 + rng % 40));
        if round % 3 == 0 && (round / 3) < producers as usize {
            let _ = prods.0[round / 3].kill();
            killed_producers.insert(starts[round / 3]);
            kills += 1;
        } else {
            let victim = (rng % 2) as usize;
            let _ = consumers.0[victim].kill();
            let _ = consumers.0[victim].wait();
            consumers.0[victim] = worker(&shm, 1024, &["consume", "--idle-ms", "60000"]);
            kills += 1;
        }
    }
    for c in &mut prods.0 {
        let _ = c.wait();
    }
    // Fresh consumers that exit once idle: they finish the queue and adopt what the killed
    // consumers held.
    drop(consumers); // kills and reaps them
    procs
        .0
        .push(worker(&shm, 1024, &["consume", "--idle-ms", "2500"]));
    procs
        .0
        .push(worker(&shm, 1024, &["consume", "--idle-ms", "2500"]));
    wait_all(&mut procs, Duration::from_secs(120));
    let seen = recorded(&shm);
    assert!(
        seen.values().all(|&n| n == 1),
        "an item was recorded twice after {kills} kills (RINHA_KILL_SEED={seed})"
    );
    for p in 0..producers {
        let acked = std::fs::read_to_string(dir.0.join(format!("acked-{p}"))).unwrap_or_default();
        for n in acked.lines().filter_map(|l| l.parse::<u64>().ok()) {
            assert!(
                seen.contains_key(&n),
                "acknowledged item {n} lost after {kills} kills (RINHA_KILL_SEED={seed})"
            );
        }
        let start = p * per;
        if !killed_producers.contains(&start) {
            assert!(
                (start..start + per).all(|n| seen.contains_key(&n)),
                "producer {p} finished but lost items (RINHA_KILL_SEED={seed})"
            );
        }
    }
}

#[test]
fn log_readers_never_see_torn_records_and_totals_add_up() {
    let shm = TempShm::new("log");
    let region = Arc::new(Region::open(&shm.0, &test_config(1024)).expect("create"));
    let count: u64 = 100_000;
    let mut procs = Procs(Vec::new());
    for w in 0..3 {
        let start = (w * 1_000_000).to_string();
        procs.0.push(worker(
            &shm,
            1024,
            &["append", "--start", &start, "--count", &count.to_string()],
        ));
    }
    // Read while they write: every record seen must be one a writer wrote in full.
    let mut reads = 0;
    while procs.0.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
        for (at, cents, p, id) in region.stats().records() {
            let i = number_of(&id);
            let base = at - i as i64;
            assert!(
                [0, 1_000_000, 2_000_000].contains(&base),
                "torn record: at {at} id {i}"
            );
            assert_eq!(cents, 1 + i % 100, "torn record {i}");
            assert_eq!(
                p == Processor::Fallback,
                i.is_multiple_of(3),
                "torn record {i}"
            );
        }
        let s = region.stats().summary(None, None);
        assert!(s.default.count + s.fallback.count <= 3 * count);
        reads += 1;
    }
    wait_all(&mut procs, Duration::from_secs(60));
    let per_default: u64 = (0..count).filter(|i| i % 3 != 0).map(|i| 1 + i % 100).sum();
    let per_fallback: u64 = (0..count).filter(|i| i % 3 == 0).map(|i| 1 + i % 100).sum();
    let s = region.stats().summary(None, None);
    assert_eq!(s.default.cents, 3 * per_default);
    assert_eq!(s.fallback.cents, 3 * per_fallback);
    assert_eq!(s.default.count + s.fallback.count, 3 * count);
    assert!(reads > 0);
}
