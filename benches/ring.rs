//! Ring and stats-log microbenchmarks (`cargo bench --bench ring`).
//!
//! In one run, side by side: our ring 1P/1C and 2P/2C in one process and across processes,
//! `crossbeam::queue::ArrayQueue` in one process as the yardstick; the wake-up latency of a
//! parked consumer (p50/p99, printed); `summary` over 100,000 and 1,000,000 records.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use rinha::shm::worker::{numbered, test_config};
use rinha::shm::{Payment, Processor, Region, RegionConfig, Role};

const ITEMS: u64 = 1_000_000;
/// Items per cross-process run (timed from a start signal: process start-up is not counted).
const PROCESS_ITEMS: u64 = 1_000_000;

/// Pins thread or process `pid` (0 = the calling thread) to CPU `n % cpus`. Every variant
/// pins its producers and consumers the same way, so that the scheduler's placement (two
/// threads sharing one of this machine's two cores, or not) does not decide the comparison.
fn pin(pid: i32, n: u64) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut set = CpuSet::new();
    if set.set((n % cpus) as usize).is_ok() {
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set);
    }
}

fn shm_path(tag: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/rinha-bench-{tag}-{}", std::process::id()))
}

fn fresh(tag: &str, cfg: &RegionConfig) -> (Arc<Region>, PathBuf) {
    let p = shm_path(tag);
    let _ = std::fs::remove_file(&p);
    (Arc::new(Region::open(&p, cfg).expect("region")), p)
}

fn pay(n: u64) -> Payment {
    Payment {
        id: numbered(n),
        cents: 2005,
        received_at_ms: n as i64,
        ..Payment::default()
    }
}

/// Moves ITEMS through our ring with `p` producer and `c` consumer threads.
fn ring_threads(region: &Arc<Region>, p: u64, c: u64) -> Duration {
    let start = Instant::now();
    let per = ITEMS / p;
    let mut handles = Vec::new();
    for i in 0..p {
        let r = Arc::clone(region);
        handles.push(std::thread::spawn(move || {
            pin(0, i);
            let me = r.join(Role::Other).expect("join");
            for n in i * per..(i + 1) * per {
                while r.ring().push(&me, &pay(n)).is_err() {
                    std::hint::spin_loop();
                }
            }
        }));
    }
    let total = per * p;
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for j in 0..c {
        let r = Arc::clone(region);
        let taken = Arc::clone(&taken);
        handles.push(std::thread::spawn(move || {
            pin(0, p + j);
            let me = r.join(Role::Consumer).expect("join");
            while taken.load(std::sync::atomic::Ordering::Relaxed) < total {
                if let Some(id) = r.ring().take(&me, Some(Duration::from_millis(1))) {
                    std::hint::black_box(me.payment(id));
                    me.discard(id);
                    taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    start.elapsed()
}

fn array_queue_threads(p: u64, c: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<Payment>::new(4096));
    let start = Instant::now();
    let per = ITEMS / p;
    let total = per * p;
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..p {
        let q = Arc::clone(&q);
        handles.push(std::thread::spawn(move || {
            pin(0, i);
            for n in i * per..(i + 1) * per {
                let mut item = pay(n);
                while let Err(back) = q.push(item) {
                    item = back;
                    std::hint::spin_loop();
                }
            }
        }));
    }
    for j in 0..c {
        let q = Arc::clone(&q);
        let taken = Arc::clone(&taken);
        handles.push(std::thread::spawn(move || {
            pin(0, p + j);
            while taken.load(std::sync::atomic::Ordering::Relaxed) < total {
                if let Some(item) = q.pop() {
                    std::hint::black_box(item);
                    taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    std::hint::spin_loop();
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    start.elapsed()
}

/// Producers in other processes (`rinha shm-worker produce --wait-go`), consumers here. The
/// clock starts once every producer has attached and the consumers are running, so process
/// start-up and mapping the file are not counted.
fn ring_processes(tag: &str, p: u64, c: u64) -> Duration {
    use std::io::{BufRead, BufReader, Write};
    let (region, path) = fresh(tag, &test_config(4096));
    let per = PROCESS_ITEMS / p;
    let mut kids: Vec<_> = (0..p)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_rinha"))
                .args(["shm-worker", "--shm"])
                .arg(&path)
                .args([
                    "--ring-capacity",
                    "4096",
                    "produce",
                    "--wait-go",
                    "--start",
                    &(i * per).to_string(),
                    "--count",
                    &per.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn producer")
        })
        .collect();
    for (i, k) in kids.iter_mut().enumerate() {
        pin(k.id() as i32, i as u64);
        let mut line = String::new();
        let out = k.stdout.as_mut().expect("producer stdout");
        BufReader::new(out).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready", "producer did not attach");
    }
    let total = per * p;
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let go = Arc::new(std::sync::Barrier::new(c as usize + 1));
    let consumers: Vec<_> = (0..c)
        .map(|j| {
            let r = Arc::clone(&region);
            let taken = Arc::clone(&taken);
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                pin(0, p + j);
                let me = r.join(Role::Consumer).expect("join");
                go.wait();
                while taken.load(std::sync::atomic::Ordering::Relaxed) < total {
                    if let Some(id) = r.ring().take(&me, Some(Duration::from_millis(1))) {
                        std::hint::black_box(me.payment(id));
                        me.discard(id);
                        taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    for k in &mut kids {
        let stdin = k.stdin.as_mut().expect("producer stdin");
        stdin.write_all(b"go\n").expect("go");
        stdin.flush().expect("go");
    }
    for h in consumers {
        let _ = h.join();
    }
    let took = start.elapsed();
    for k in &mut kids {
        let _ = k.wait();
    }
    drop(region);
    let _ = std::fs::remove_file(path);
    took
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    for (p, cons) in [(1u64, 1u64), (2, 2)] {
        let label = format!("{p}P{cons}C");
        g.bench_function(BenchmarkId::new("ArrayQueue, threads", &label), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| array_queue_threads(p, cons)).sum())
        });
        g.bench_function(BenchmarkId::new("shm ring, threads", &label), |b| {
            let (region, path) = fresh(&format!("t{label}"), &test_config(4096));
            b.iter_custom(|iters| (0..iters).map(|_| ring_threads(&region, p, cons)).sum());
            drop(region);
            let _ = std::fs::remove_file(path);
        });
        g.bench_function(BenchmarkId::new("shm ring, processes", &label), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| ring_processes(&format!("p{label}"), p, cons))
                    .sum()
            })
        });
    }
    g.finish();
}

fn wake_up_latency(_c: &mut Criterion) {
    let (region, path) = fresh("wake", &test_config(1024));
    let r = Arc::clone(&region);
    let (tx, rx) = std::sync::mpsc::channel::<Duration>();
    let epoch = Instant::now();
    let consumer = std::thread::spawn(move || {
        let me = r.join(Role::Consumer).expect("join");
        for _ in 0..2000 {
            if let Some(id) = r.ring().take(&me, Some(Duration::from_secs(5))) {
                let sent = Duration::from_nanos(me.payment(id).cents);
                let _ = tx.send(epoch.elapsed().saturating_sub(sent));
                me.discard(id);
            }
        }
    });
    let me = region.join(Role::Api).expect("join");
    for n in 0..2000u64 {
        std::thread::sleep(Duration::from_micros(500)); // the consumer is parked by now
        let p = Payment {
            id: numbered(n),
            cents: epoch.elapsed().as_nanos() as u64,
            ..Payment::default()
        };
        let _ = region.ring().push(&me, &p);
    }
    let _ = consumer.join();
    let mut lat: Vec<Duration> = rx.try_iter().collect();
    lat.sort();
    if !lat.is_empty() {
        let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
        println!(
            "wake-up latency of a parked consumer over {} wake-ups: p50 {:?}, p99 {:?}, max {:?}",
            lat.len(),
            q(0.50),
            q(0.99),
            lat[lat.len() - 1]
        );
    }
    drop(region);
    let _ = std::fs::remove_file(path);
}

fn summary(c: &mut Criterion) {
    let mut g = c.benchmark_group("summary");
    for records in [100_000u64, 1_000_000] {
        let (region, path) = fresh(&format!("sum{records}"), &RegionConfig::default());
        for i in 0..records {
            // ~600 payments a second, some retries out of order.
            let at = 1_750_000_000_000 + (i as i64 * 5) / 3 - (i % 7) as i64 * 40;
            let p = if i % 4 == 0 {
                Processor::Fallback
            } else {
                Processor::Default
            };
            region
                .stats()
                .append(at, 2005, p, &numbered(i))
                .expect("append");
        }
        let span = (records as i64 * 5) / 3;
        let from = 1_750_000_000_000 + span / 3;
        let to = from + span / 3;
        let _ = region.stats().summary(None, None); // first pass seals the chunks
        g.bench_function(BenchmarkId::new("window", records), |b| {
            b.iter(|| std::hint::black_box(region.stats().summary(Some(from), Some(to))))
        });
        g.bench_function(BenchmarkId::new("all", records), |b| {
            b.iter(|| std::hint::black_box(region.stats().summary(None, None)))
        });
        drop(region);
        let _ = std::fs::remove_file(path);
    }
    g.finish();
}

criterion_group!(benches, throughput, wake_up_latency, summary);
criterion_main!(benches);
