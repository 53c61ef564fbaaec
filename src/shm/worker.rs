//! `rinha shm-worker` (hidden): a process that exercises the shared file for the
//! multi-process tests and benchmarks. Not part of the engine.
//!
//! Payment ids encode a number in their first 8 bytes (little endian), so a test can check
//! that every number arrived exactly once by reading the stats log.
//! - `produce`: pushes numbers `start..start+count` (retrying while the ring is full); with
//!   `--acked FILE`, appends each number to FILE once its push returned (so a kill test knows
//!   what was acknowledged); with `--wait-go`, prints `ready` once attached and starts on a
//!   line from stdin.
//! - `consume`: takes payments and records each in the log (processor default, requestedAt =
//!   its number), adopting what dead consumers left; exits after `--idle-ms` without work.
//! - `append`: appends `count` log records (requestedAt = start + i, cents = 1 + i % 100).
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Payment, Processor, Region, RegionConfig, Role};

/// What the worker does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Mode {
    /// Push numbered payments.
    Produce {
        /// First number.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// How many.
        #[arg(long)]
        count: u64,
        /// File that receives each acknowledged number.
        #[arg(long)]
        acked: Option<PathBuf>,
        /// Print `ready` once attached and wait for a line on stdin before pushing (lets a
        /// benchmark time the pushes without the process start).
        #[arg(long)]
        wait_go: bool,
    },
    /// Take payments and record them.
    Consume {
        /// Exit after this long without a payment.
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
    },
    /// Append log records.
    Append {
        /// First requestedAt.
        #[arg(long, default_value_t = 0)]
        start: i64,
        /// How many.
        #[arg(long)]
        count: u64,
    },
}

/// Arguments of `rinha shm-worker`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The shared file.
    #[arg(long)]
    pub shm: PathBuf,
    /// Ring capacity to create the file with (tests use small ones).
    #[arg(long, default_value_t = 131_072)]
    pub ring_capacity: u32,
    /// What to do.
    #[command(subcommand)]
    pub mode: Mode,
}

/// The region configuration the workers and the tests agree on.
pub fn test_config(ring_capacity: u32) -> RegionConfig {
    RegionConfig {
        ring_capacity,
        log_capacity: 2 * 1_048_576,
        ..RegionConfig::default()
    }
}

/// A payment id carrying `n`.
pub fn numbered(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8] = 0xA5;
    id
}

/// The number in a [`numbered`] id.
pub fn number_of(id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_le_bytes(b)
}

/// Runs the worker.
pub fn run(args: Args) -> anyhow::Result<()> {
    let region = Arc::new(Region::open(&args.shm, &test_config(args.ring_capacity))?);
    match args.mode {
        Mode::Produce {
            start,
            count,
            acked,
            wait_go,
        } => {
            let me = region.join(Role::Other)?;
            if wait_go {
                println!("ready");
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
            }
            let mut acked = match acked {
                Some(p) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                ),
                None => None,
            };
            for n in start..start + count {
                let p = Payment {
                    id: numbered(n),
                    cents: 1 + n % 100,
                    received_at_ms: n as i64,
                    ..Payment::default()
                };
                while region.ring().push(&me, &p).is_err() {
                    std::thread::yield_now();
                }
                if let Some(f) = acked.as_mut() {
                    f.write_all(format!("{n}\n").as_bytes())?;
                }
            }
        }
        Mode::Consume { idle_ms } => {
            let me = region.join(Role::Consumer)?;
            let mut last_work = Instant::now();
            let mut last_recovery = Instant::now();
            loop {
                if last_recovery.elapsed() > Duration::from_millis(100) {
                    for id in me.recover_dead() {
                        let p = me.payment(id);
                        me.complete(id, Processor::Default, number_of(&p.id) as i64)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        last_work = Instant::now();
                    }
                    last_recovery = Instant::now();
                }
                match region.ring().take(&me, Some(Duration::from_millis(50))) {
                    Some(id) => {
                        let p = me.payment(id);
                        me.complete(id, Processor::Default, number_of(&p.id) as i64)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        last_work = Instant::now();
                    }
                    None if last_work.elapsed() > Duration::from_millis(idle_ms) => break,
                    None => {}
                }
            }
        }
        Mode::Append { start, count } => {
            let stats = region.stats();
            for i in 0..count {
                let p = if i % 3 == 0 {
                    Processor::Fallback
                } else {
                    Processor::Default
                };
                stats
                    .append(start + i as i64, 1 + i % 100, p, &numbered(i))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    }
    println!("done");
    Ok(())
}
