//! `rinha consumer`: takes payments off the ring and gets each one accepted by a processor,
//! exactly once.
//!
//! Owns the life of a payment between the ring and the stats log. Every `--tick-ms` (10)
//! the single-threaded tokio runtime takes what the ring holds (or, with `--tick-ms 0`, one
//! OS thread parks on the ring and hands each payment over as it comes); each payment,
//! already in this member's in-flight table so that a crash loses nothing, becomes a task;
//! thousands of tasks wait on processors at once without a thread each. Contract, per
//! payment:
//! - The attempt (processor, requestedAt) is written to the in-flight slot BEFORE sending.
//! - 200 -> recorded with the requestedAt sent. 422 when an earlier attempt of ours at that
//!   processor (this process's or a dead consumer's) has an unknown outcome -> the processor
//!   has it from that attempt: recorded. Any other 422 -> another copy of the payment was
//!   stored there, and is recorded by whoever sent it: dropped without a record.
//! - 500 / 429 / refused -> not stored. The payment may be re-routed, unless an earlier
//!   attempt ended in an unknown outcome: then it stays with that processor until a retry is
//!   answered 200/422 or `GET /payments/{id}` answers 404 once that attempt must have been
//!   handled (its send + the longest expected delay, at least our timeout, + 1 s).
//! - Timeout, reset, garbage -> unknown: retried on the SAME processor with the SAME
//!   requestedAt (a stored payment answers 422 and is recorded once).
//! - Retries back off from 10 ms to 1 s and never give up: a payment leaves the consumer
//!   only recorded, dropped as a duplicate, or purged.
//! - Every second the consumer adopts what dead consumers left ([`crate::shm::Member::recover_dead`]).
//! - One consumer at a time (a lease in the region) polls the processors' health.
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::health::{self, View, SLOW_MS};
use crate::processor_client::{Endpoint, Lookup, Outcome, ProcessorClient};
use crate::shm::{
    unix_ms, InFlightId, Member, Processor, ProcessorHealth, Region, RegionConfig, Role,
};

/// Command-line arguments of `rinha consumer`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The shared file (created if absent).
    #[arg(long, env = "RINHA_SHM", default_value = "/dev/shm/rinha-shm")]
    pub shm: PathBuf,
    /// Base URL of the default processor.
    #[arg(
        long,
        env = "PROCESSOR_DEFAULT_URL",
        default_value = "http://payment-processor-default:8080"
    )]
    pub default_url: String,
    /// Base URL of the fallback processor.
    #[arg(
        long,
        env = "PROCESSOR_FALLBACK_URL",
        default_value = "http://payment-processor-fallback:8080"
    )]
    pub fallback_url: String,
    /// Payments this consumer works on at once (at most the region's in-flight slots).
    #[arg(long, env = "RINHA_MAX_IN_FLIGHT", default_value_t = 3000)]
    pub max_in_flight: u32,
    /// A request to a processor with no answer after this many ms has an unknown outcome.
    /// Keep it above the processors' delays (the contest's longest is 5000).
    #[arg(long, env = "RINHA_PROCESSOR_TIMEOUT_MS", default_value_t = 12_000)]
    pub timeout_ms: u64,
    /// How the consumer learns of new payments. N > 0 (the default, 10): the runtime looks
    /// at the ring every N ms and takes everything there; no thread parks, so an API's
    /// enqueue never makes a wake-up system call, and the consumer's work comes in one
    /// batch per tick instead of two thread wake-ups per payment (processing waits up to N
    /// ms, which no score counts). Measured with `cargo bench --bench post`: p50 of the
    /// POST round trip 10-40 µs lower than parked, in every one of seven back-to-back
    /// pairs. 0: a thread parks on the ring and each enqueue wakes it (lowest processing
    /// delay). At most 1000.
    #[arg(long, env = "RINHA_CONSUMER_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
}

#[derive(Default)]
struct Counters {
    recorded: [AtomicU64; 2],
    duplicates: AtomicU64,
    retries: AtomicU64,
    recovered: AtomicU64,
    /// Set while some payment is held because the stats log is full: the message is said
    /// once when it fills and once when it has room again, not once per payment.
    log_full: AtomicBool,
}

struct Ctx {
    region: Arc<Region>,
    member: Arc<Member>,
    clients: [Arc<ProcessorClient>; 2],
    counters: Counters,
    /// The processor client's timeout, ms: also our bound on a processor's delay.
    timeout_ms: i64,
    /// Payments waiting because no processor may take one now ...
    waiting: AtomicU64,
    /// ... and how they learn that one may: [`gatekeeper`] looks at the routing every
    /// [`GATE_EVERY`] while any wait, and wakes them all when a processor is usable. One look
    /// for all of them, instead of thousands of tasks each looking every few milliseconds.
    route_open: tokio::sync::Notify,
    /// Rung by the payment that starts the waiting (0 to 1), so that the gatekeeper sleeps
    /// while none wait instead of looking every [`GATE_EVERY`] for nothing.
    someone_waits: tokio::sync::Notify,
}

/// How often the gatekeeper looks at the routing while payments wait for a processor.
const GATE_EVERY: Duration = Duration::from_millis(20);

/// Wakes the payments that wait for a usable processor as soon as there is one; sleeps while
/// none wait.
async fn gatekeeper(ctx: Arc<Ctx>) {
    loop {
        if ctx.waiting.load(Ordering::Relaxed) == 0 {
            // `notify_one` keeps a permit when nobody is parked here yet, so a payment that
            // starts waiting between the load and this await is not missed.
            ctx.someone_waits.notified().await;
        }
        tokio::time::sleep(GATE_EVERY).await;
        if ctx.waiting.load(Ordering::Relaxed) > 0 && ctx.route(unix_ms()).is_some() {
            ctx.route_open.notify_waiters();
        }
    }
}

impl Ctx {
    fn board(&self, p: Processor) -> &ProcessorHealth {
        self.region.health().processor(p)
    }

    fn route(&self, now: i64) -> Option<Processor> {
        let d = View::of(self.board(Processor::Default));
        let f = View::of(self.board(Processor::Fallback));
        health::route(&d, &f, now)
    }
}

/// Awaits `fut`, flagging `h` as slow while it is outstanding beyond `after_ms`
/// ([`View::slow_after_ms`], at most [`SLOW_MS`]).
async fn flag_if_slow<F: Future>(h: &ProcessorHealth, after_ms: i64, fut: F) -> F::Output {
    tokio::pin!(fut);
    let after = Duration::from_millis(after_ms.clamp(1, SLOW_MS) as u64);
    tokio::select! {
        out = &mut fut => return out,
        _ = tokio::time::sleep(after) => {}
    }
    loop {
        h.slow_seen_ms.store(unix_ms(), Ordering::Relaxed);
        tokio::select! {
            out = &mut fut => return out,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn record(ctx: &Ctx, id: InFlightId, p: Processor, requested_at: i64) {
    loop {
        match ctx.member.complete(id, p, requested_at) {
            Ok(()) => {
                ctx.counters.recorded[p.index()].fetch_add(1, Ordering::Relaxed);
                if ctx.counters.log_full.load(Ordering::Relaxed)
                    && ctx.counters.log_full.swap(false, Ordering::Relaxed)
                {
                    eprintln!("rinha consumer: the stats log has room again");
                }
                return;
            }
            Err(_) => {
                // The log is full until a purge: keep the payment and look again each second.
                if !ctx.counters.log_full.swap(true, Ordering::Relaxed) {
                    eprintln!("rinha consumer: stats log full; holding payments until a purge");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Settles a payment whose earlier attempt had an unknown outcome and whose retry was not
/// stored: asks the processor once that attempt must have been handled. True if it is
/// settled (recorded).
///
/// The processor stores a request when its delay has passed, even if we are gone, so a 404
/// only proves "not stored" after `sent_ms` (the last send whose outcome is unknown) plus the
/// longest time it can take to get there: twice the larger of the advertised delay and the
/// observed average (a request may wait in the processor's queue for a whole delay before
/// its own starts), or our own timeout if that is longer, plus a second.
async fn resolve_unknown(
    ctx: &Ctx,
    id: InFlightId,
    target: Processor,
    requested_at: i64,
    sent_ms: i64,
) -> Option<bool> {
    let board = ctx.board(target);
    let delay = (i64::from(board.min_response_ms.load(Ordering::Relaxed))
        .max(i64::from(board.latency_ewma_us.load(Ordering::Relaxed)) / 1000)
        * 2)
    .max(ctx.timeout_ms);
    let ready_at = sent_ms.max(requested_at) + delay + 1000;
    let wait = ready_at - unix_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let pay = ctx.member.payment(id);
    match ctx.clients[target.index()].lookup(&pay.id).await {
        Lookup::Found(at) => {
            record(ctx, id, target, at.unwrap_or(requested_at)).await;
            Some(true)
        }
        Lookup::NotFound => Some(false),
        Lookup::Error => None,
    }
}

async fn process(ctx: Arc<Ctx>, id: InFlightId) {
    // The API validated the amount; a value out of range here was not written by us (a
    // damaged or foreign file): never send it to a processor.
    let cents = ctx.member.payment(id).cents;
    if !(1..=crate::money::MAX_CENTS).contains(&cents) {
        eprintln!("rinha consumer: dropped a queued payment with an impossible amount ({cents} cents): the shared file was not written by rinha");
        ctx.member.discard(id);
        return;
    }
    // A payment that carries an attempt (adopted from a dead consumer, or put back in the
    // ring with its attempt kept) may be stored at that processor already.
    let mut unknown = ctx.member.payment(id).attempted().is_some();
    // When the last attempt with an unknown outcome was sent (a dead consumer's: before now).
    let mut unknown_sent_ms = if unknown { unix_ms() } else { 0 };
    let mut backoff = Duration::from_millis(10);
    loop {
        if ctx.member.is_purged(id) {
            ctx.member.discard(id);
            return;
        }
        let p = ctx.member.payment(id);
        let now = unix_ms();
        let target = match p.attempted() {
            Some(t) => t,
            None => match ctx.route(now) {
                Some(t) => t,
                None => {
                    // Registered before the second look, so a wake-up in between is not lost;
                    // the timeout only bounds the wait should the gatekeeper be gone.
                    let opened = ctx.route_open.notified();
                    tokio::pin!(opened);
                    opened.as_mut().enable();
                    if ctx.route(unix_ms()).is_none() {
                        if ctx.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
                            ctx.someone_waits.notify_one();
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(1), opened).await;
                        ctx.waiting.fetch_sub(1, Ordering::Relaxed);
                    }
                    continue;
                }
            },
        };
        let requested_at = if p.attempted().is_some() {
            p.first_requested_at_ms
        } else {
            now
        };
        ctx.member.mark_attempt(id, target, requested_at);
        let started = Instant::now();
        let board = ctx.board(target);
        let slow_after = View::of(board).slow_after_ms(now);
        let outcome = flag_if_slow(
            board,
            slow_after,
            ctx.clients[target.index()].pay(&p.id, p.cents, requested_at),
        )
        .await;
        let ok = matches!(outcome, Outcome::Stored | Outcome::AlreadyStored);
        health::observe(board, ok, started.elapsed().as_micros() as u64, unix_ms());
        match outcome {
            Outcome::Stored => return record(&ctx, id, target, requested_at).await,
            // A 422 proves the payment stored only when an earlier attempt of ours at this
            // processor has an unknown outcome; otherwise another copy of it was stored there,
            // and that copy is recorded by whoever sent it.
            Outcome::AlreadyStored if !unknown => {
                ctx.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                ctx.member.discard(id);
                return;
            }
            Outcome::AlreadyStored => return record(&ctx, id, target, requested_at).await,
            Outcome::Failed(_) | Outcome::Busy(_) | Outcome::NotSent => {
                if unknown {
                    match resolve_unknown(&ctx, id, target, requested_at, unknown_sent_ms).await {
                        Some(true) => return,
                        Some(false) => {
                            unknown = false;
                            ctx.member.clear_attempt(id);
                        }
                        None => {}
                    }
                } else {
                    ctx.member.clear_attempt(id);
                }
                if let Outcome::Busy(secs) = outcome {
                    tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
                }
            }
            Outcome::Unknown => {
                unknown = true;
                unknown_sent_ms = now;
            }
        }
        ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Renews the poller lease every half second and, while it is ours, polls each processor's
/// health at most once per [`health::POLL_EVERY_MS`] (counted from the last call, answered or
/// not). Each poll runs on its own task: a call the processor holds (its rate limit queues
/// early callers for the next 5 s window) delays neither the other processor's poll nor the
/// lease's renewal.
async fn poller(ctx: Arc<Ctx>) {
    // The poll still running for each processor, if any: never two at once for one.
    let mut polling: [Option<tokio::task::JoinHandle<()>>; 2] = [None, None];
    loop {
        let now = unix_ms();
        if ctx.region.health().try_lease(&ctx.member, now) {
            for p in Processor::ALL {
                let h = ctx.board(p);
                let last = h
                    .polled_at_ms
                    .load(Ordering::Relaxed)
                    .max(h.poll_tried_ms.load(Ordering::Relaxed));
                let running = &mut polling[p.index()];
                if now.saturating_sub(last) < health::POLL_EVERY_MS
                    || running.as_ref().is_some_and(|t| !t.is_finished())
                {
                    continue;
                }
                h.poll_tried_ms.store(now, Ordering::Relaxed);
                let ctx = Arc::clone(&ctx);
                *running = Some(tokio::spawn(async move {
                    health::poll_once(&ctx.clients[p.index()], ctx.board(p), now).await;
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn recovery(ctx: Arc<Ctx>) {
    loop {
        let member = Arc::clone(&ctx.member);
        if let Ok(ids) = tokio::task::spawn_blocking(move || member.recover_dead()).await {
            ctx.counters
                .recovered
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            for id in ids {
                tokio::spawn(process(Arc::clone(&ctx), id));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn report(ctx: Arc<Ctx>) {
    let mut last = [0u64; 2];
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let c = &ctx.counters;
        let now = [
            c.recorded[0].load(Ordering::Relaxed),
            c.recorded[1].load(Ordering::Relaxed),
        ];
        let queued = ctx.region.ring().len();
        let in_flight = ctx
            .region
            .config()
            .inflight_per_member
            .saturating_sub(ctx.member.take_limit());
        if now != last {
            eprintln!(
                "rinha consumer {}: recorded default {} fallback {}, retries {}, duplicates {}, recovered {}, queue {queued}, in flight {in_flight}",
                ctx.member.index(),
                now[0],
                now[1],
                c.retries.load(Ordering::Relaxed),
                c.duplicates.load(Ordering::Relaxed),
                c.recovered.load(Ordering::Relaxed),
            );
            last = now;
        } else if queued + u64::from(in_flight) > 0 {
            // Payments wait and none was recorded for 10 s: say why it may be.
            eprintln!(
                "rinha consumer {}: nothing recorded in 10 s with {queued} queued and {in_flight} in flight: are the processors ({} and {}) reachable and healthy?",
                ctx.member.index(),
                ctx.clients[0].endpoint(),
                ctx.clients[1].endpoint(),
            );
        }
    }
}

/// Runs a consumer until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let default = Endpoint::parse(&args.default_url)
        .map_err(|e| anyhow::anyhow!("--default-url (PROCESSOR_DEFAULT_URL): {e}"))?;
    let fallback = Endpoint::parse(&args.fallback_url)
        .map_err(|e| anyhow::anyhow!("--fallback-url (PROCESSOR_FALLBACK_URL): {e}"))?;
    if args.max_in_flight == 0 {
        anyhow::bail!("--max-in-flight (RINHA_MAX_IN_FLIGHT) must be at least 1");
    }
    if args.tick_ms > 1000 {
        anyhow::bail!("--tick-ms (RINHA_CONSUMER_TICK_MS) must be at most 1000");
    }
    if !(100..=600_000).contains(&args.timeout_ms) {
        anyhow::bail!("--timeout-ms (RINHA_PROCESSOR_TIMEOUT_MS) must be from 100 to 600000");
    }
    // Thousands of payments in flight, each on its own connection, need more than the usual
    // 1024 descriptors.
    crate::http::raise_fd_limit();
    let config = RegionConfig::default();
    if args.max_in_flight > config.inflight_per_member {
        anyhow::bail!(
            "--max-in-flight (RINHA_MAX_IN_FLIGHT) is {}, more than the shared file's {} in-flight slots per process",
            args.max_in_flight,
            config.inflight_per_member
        );
    }
    let region = Arc::new(Region::open(&args.shm, &config)?);
    let member = Arc::new(region.join(Role::Consumer)?);
    let timeout = Duration::from_millis(args.timeout_ms);
    let ctx = Arc::new(Ctx {
        region: Arc::clone(&region),
        member: Arc::clone(&member),
        clients: [
            Arc::new(ProcessorClient::new(default, timeout)),
            Arc::new(ProcessorClient::new(fallback, timeout)),
        ],
        counters: Counters::default(),
        timeout_ms: i64::try_from(args.timeout_ms).unwrap_or(i64::MAX / 4),
        waiting: AtomicU64::new(0),
        route_open: tokio::sync::Notify::new(),
        someone_waits: tokio::sync::Notify::new(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let limit = args.max_in_flight;
    let per = region.config().inflight_per_member;
    if args.tick_ms > 0 {
        return run_ticking(rt, ctx, limit, per, Duration::from_millis(args.tick_ms));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<InFlightId>();
    let taker_member = Arc::clone(&member);
    let taker_region = Arc::clone(&region);
    std::thread::Builder::new()
        .name("ring-taker".into())
        .spawn(move || loop {
            // Busy slots = per - free; keep at most `limit` of them.
            if per - taker_member.take_limit() >= limit {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if let Some(id) = taker_region
                .ring()
                .take(&taker_member, Some(Duration::from_millis(500)))
            {
                if tx.send(id).is_err() {
                    return;
                }
            }
        })
        .context("start the ring taker")?;
    announce(&ctx, limit, "parked on the ring");
    rt.block_on(async move {
        tokio::spawn(poller(Arc::clone(&ctx)));
        tokio::spawn(gatekeeper(Arc::clone(&ctx)));
        tokio::spawn(recovery(Arc::clone(&ctx)));
        tokio::spawn(report(Arc::clone(&ctx)));
        while let Some(id) = rx.recv().await {
            tokio::spawn(process(Arc::clone(&ctx), id));
        }
    });
    Ok(())
}

fn announce(ctx: &Ctx, limit: u32, how: &str) {
    println!("ready consumer {}", ctx.member.index());
    eprintln!(
        "rinha consumer {}: default {}:{} fallback {}:{}, up to {limit} payments in flight, {how}",
        ctx.member.index(),
        ctx.clients[0].endpoint().host,
        ctx.clients[0].endpoint().port,
        ctx.clients[1].endpoint().host,
        ctx.clients[1].endpoint().port,
    );
}

/// The `--tick-ms` mode: one runtime thread, no ring-taker. Every `tick` it takes what the
/// ring holds (never waiting), up to `limit` payments in flight.
fn run_ticking(
    rt: tokio::runtime::Runtime,
    ctx: Arc<Ctx>,
    limit: u32,
    per: u32,
    tick: Duration,
) -> anyhow::Result<()> {
    announce(&ctx, limit, &format!("looking at the ring every {tick:?}"));
    rt.block_on(async move {
        tokio::spawn(poller(Arc::clone(&ctx)));
        tokio::spawn(gatekeeper(Arc::clone(&ctx)));
        tokio::spawn(recovery(Arc::clone(&ctx)));
        tokio::spawn(report(Arc::clone(&ctx)));
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Busy slots = per - free; keep at most `limit` of them.
            while per - ctx.member.take_limit() < limit {
                match ctx.region.ring().take(&ctx.member, Some(Duration::ZERO)) {
                    Some(id) => {
                        tokio::spawn(process(Arc::clone(&ctx), id));
                    }
                    None => break,
                }
            }
        }
    });
    Ok(())
}
