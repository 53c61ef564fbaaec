//! `rinha processor`: the payment-processor simulator (section 3 of the contest spec).
//!
//! Owns an in-memory payment store and the processor's whole HTTP surface, served by our
//! HTTP loop ([`crate::http`]) on coroutines, so a 5 s delay costs one parked coroutine.
//!
//! | endpoint | behaviour |
//! |---|---|
//! | `POST /payments` | limiter (800 in flight + 500 queued, then 429 `Retry-After: 5`); the delay, slept first and never cancelled by a client that leaves; failure mode: 500, empty body, nothing stored; else store (amount rounded to 2 places, requestedAt as sent): 200, or 422 for a known correlationId. 400 for a malformed body. |
//! | `GET /payments/service-health` | `{"failing","minResponseTime"}`; one call per 5 s window shared by all callers, up to 2 more wait for the next windows, any further one 429 `Retry-After: 5`. |
//! | `GET /payments/{id}` | 200 with the stored payment, or 404. |
//! | `GET /admin/payments-summary` | `{"totalAmount","totalRequests","totalFee","feePerTransaction"}`, inclusive `from`/`to`, each optional. |
//! | `PUT /admin/configurations/{token,delay,failure}`, `POST /admin/purge-payments` | as the spec; `X-Rinha-Token` checked (401). |
//!
//! **Test-only** (not in the real processor): `PUT /admin/configurations/chaos`
//! `{"mode": M}` makes every later `POST /payments` misbehave after its delay and failure
//! checks: `reset` stores the payment then closes the connection without answering;
//! `garbage` stores it and answers 200 with a body that is not JSON; `truncated` stores it
//! and sends half of the answer before closing; `status429` stores nothing and answers 429
//! `Retry-After: 1`; `hang` stores nothing and never answers; `none` is normal. The normal
//! path pays one relaxed atomic load for this.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::{self, After, Handler, Limits, Request, Response};
use crate::iso8601;

/// Command-line arguments of `rinha processor`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Test-only (not in the contest's processor): PUT /admin/configurations/chaos \
{\"mode\": \"none|reset|garbage|truncated|status429|hang\"} (X-Rinha-Token) makes every later \
POST /payments misbehave after its delay and failure checks. reset, garbage and truncated store \
the payment first, then close without an answer / answer 200 with a non-JSON body / send part of \
the answer and close; status429 (Retry-After: 1) and hang (never answers) store nothing."
)]
pub struct Args {
    /// Address to bind.
    #[arg(long, env = "RINHA_SIM_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "RINHA_SIM_PORT", default_value_t = 8001)]
    pub port: u16,
    /// Fee charged on every amount, e.g. 0.07.
    #[arg(long, env = "RINHA_SIM_FEE", default_value = "0.07")]
    pub fee: Decimal,
    /// Initial admin token (X-Rinha-Token).
    #[arg(long, env = "RINHA_SIM_TOKEN", default_value = "123")]
    pub token: String,
    /// A name for logs (default / fallback).
    #[arg(long, env = "RINHA_SIM_NAME", default_value = "default")]
    pub name: String,
    /// Coroutine worker threads.
    #[arg(long, env = "RINHA_SIM_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Payments processed at once before queueing (test knob; the contest's is 800).
    #[arg(long, default_value_t = 800, hide = true)]
    pub max_in_flight: usize,
    /// Payments allowed to wait for a place (test knob; the contest's is 500).
    #[arg(long, default_value_t = 500, hide = true)]
    pub max_queued: usize,
    /// Health-check window in ms (test knob; the contest's is 5000).
    #[arg(long, default_value_t = 5000, hide = true)]
    pub health_window_ms: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Chaos {
    None = 0,
    Reset = 1,
    Garbage = 2,
    Truncated = 3,
    Status429 = 4,
    Hang = 5,
}

impl Chaos {
    fn parse(s: &str) -> Option<Chaos> {
        Some(match s {
            "none" => Chaos::None,
            "reset" => Chaos::Reset,
            "garbage" => Chaos::Garbage,
            "truncated" => Chaos::Truncated,
            "status429" => Chaos::Status429,
            "hang" => Chaos::Hang,
            _ => return None,
        })
    }
    fn from_u8(v: u8) -> Chaos {
        match v {
            1 => Chaos::Reset,
            2 => Chaos::Garbage,
            3 => Chaos::Truncated,
            4 => Chaos::Status429,
            5 => Chaos::Hang,
            _ => Chaos::None,
        }
    }
}

#[derive(Default)]
struct Store {
    /// correlationId text -> (cents, requestedAt ms, requestedAt as sent).
    by_id: HashMap<String, (u64, i64, String)>,
    /// requestedAt ms -> (count, cents): the index behind the admin summary.
    by_time: BTreeMap<i64, (u64, u64)>,
}

impl Store {
    /// Sized for a million payments up front: growing a large map rehashes it under the lock,
    /// a multi-millisecond pause for every request waiting on it. (Only touched pages cost.)
    fn new() -> Store {
        Store {
            by_id: HashMap::with_capacity(1 << 20),
            by_time: BTreeMap::new(),
        }
    }
}

struct Health {
    next_free_ms: i64,
    waiting: u32,
}

struct State {
    fee: Decimal,
    token: Mutex<String>,
    delay_ms: AtomicU64,
    failure: AtomicBool,
    chaos: AtomicU8,
    store: Mutex<Store>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    max_in_flight: usize,
    max_queued: usize,
    health: Mutex<Health>,
    health_window_ms: i64,
}

/// The simulator's request handler.
#[derive(Clone)]
pub struct Sim {
    state: Arc<State>,
}

#[derive(Deserialize)]
struct PaymentIn<'a> {
    #[serde(rename = "correlationId")]
    correlation_id: String,
    #[serde(borrow)]
    amount: &'a RawValue,
    #[serde(rename = "requestedAt")]
    requested_at: String,
}

fn now_ms() -> i64 {
    crate::shm::unix_ms()
}

fn json_error(rsp: &mut Response, code: u16, msg: &str) {
    rsp.status(code);
    let body = rsp.body_mut();
    body.clear();
    body.extend_from_slice(serde_json::json!({ "error": msg }).to_string().as_bytes());
}

fn decimal_cents(cents: u64) -> Decimal {
    Decimal::new(cents as i64, 2)
}

impl Sim {
    fn new(args: &Args) -> Sim {
        Sim {
            state: Arc::new(State {
                fee: args.fee,
                token: Mutex::new(args.token.clone()),
                delay_ms: AtomicU64::new(0),
                failure: AtomicBool::new(false),
                chaos: AtomicU8::new(0),
                store: Mutex::new(Store::new()),
                in_flight: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                max_in_flight: args.max_in_flight,
                max_queued: args.max_queued,
                health: Mutex::new(Health {
                    next_free_ms: 0,
                    waiting: 0,
                }),
                health_window_ms: args.health_window_ms,
            }),
        }
    }

    fn authorised(&self, req: &Request<'_>) -> bool {
        let token = self
            .state
            .token
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        req.header("x-rinha-token") == Some(token.as_bytes())
    }

    /// Takes a place in the limiter, waiting in the queue if needed; false = 429.
    fn admit(&self) -> bool {
        let s = &self.state;
        let try_take = || {
            s.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < s.max_in_flight).then_some(n + 1)
                })
                .is_ok()
        };
        if try_take() {
            return true;
        }
        if s.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < s.max_queued).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        while !try_take() {
            may::coroutine::sleep(Duration::from_millis(1));
        }
        s.queued.fetch_sub(1, Ordering::AcqRel);
        true
    }

    fn post_payment(&self, req: &Request<'_>, rsp: &mut Response) {
        let parsed: Result<PaymentIn<'_>, _> = serde_json::from_slice(req.body);
        let Ok(p) = parsed else {
            return json_error(rsp, 400, "malformed payment body");
        };
        let Ok(amount) = p.amount.get().trim().parse::<Decimal>() else {
            return json_error(rsp, 400, "amount must be a number");
        };
        let amount =
            amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        use rust_decimal::prelude::ToPrimitive;
        // checked_mul: a 28-digit amount overflows Decimal (it used to panic the handler).
        let cents = match amount
            .checked_mul(Decimal::ONE_HUNDRED)
            .and_then(|c| c.trunc().to_u64())
        {
            Some(c) if c > 0 => c,
            _ => return json_error(rsp, 400, "amount must be positive and below 2^64 cents"),
        };
        let Some(at_ms) = iso8601::parse_ms(&p.requested_at) else {
            return json_error(rsp, 400, "requestedAt must be an ISO-8601 instant");
        };
        if uuid::Uuid::parse_str(&p.correlation_id).is_err() {
            return json_error(rsp, 400, "correlationId must be a UUID");
        }
        if !self.admit() {
            rsp.status(429).header("Retry-After: 5").json("");
            return;
        }
        let s = &self.state;
        let delay = s.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            may::coroutine::sleep(Duration::from_millis(delay));
        }
        let failing = s.failure.load(Ordering::Relaxed);
        let chaos = Chaos::from_u8(s.chaos.load(Ordering::Relaxed));
        let outcome = if failing {
            rsp.status(500).json("");
            None
        } else if matches!(chaos, Chaos::Status429 | Chaos::Hang) {
            if chaos == Chaos::Hang {
                rsp.after(After::Hang);
            } else {
                rsp.status(429).header("Retry-After: 1").json("");
            }
            None
        } else {
            let mut store = match s.store.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if store.by_id.contains_key(&p.correlation_id) {
                json_error(rsp, 422, "payment already exists");
                None
            } else {
                store.by_id.insert(
                    p.correlation_id.clone(),
                    (cents, at_ms, p.requested_at.clone()),
                );
                let e = store.by_time.entry(at_ms).or_insert((0, 0));
                e.0 += 1;
                e.1 += cents;
                rsp.status(200)
                    .json(r#"{"message":"payment processed successfully"}"#);
                Some(())
            }
        };
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
        if outcome.is_some() {
            match chaos {
                Chaos::Reset => {
                    rsp.after(After::Abort);
                }
                Chaos::Garbage => {
                    rsp.status(200).json("<html>not json");
                }
                Chaos::Truncated => {
                    rsp.after(After::Truncate(60));
                }
                _ => {}
            }
        }
    }

    fn health(&self, rsp: &mut Response) {
        let s = &self.state;
        // (time to answer, whether this call took one of the 2 waiting places)
        let wait_until = {
            let mut h = match s.health.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let now = now_ms();
            if h.next_free_ms <= now {
                h.next_free_ms = now + s.health_window_ms;
                Some((now, false))
            } else if h.waiting < 2 {
                let at = h.next_free_ms;
                h.next_free_ms += s.health_window_ms;
                h.waiting += 1;
                Some((at, true))
            } else {
                None
            }
        };
        let Some((at, queued)) = wait_until else {
            rsp.status(429).header("Retry-After: 5").json("");
            return;
        };
        let wait = at - now_ms();
        if wait > 0 {
            may::coroutine::sleep(Duration::from_millis(wait as u64));
        }
        // Give the waiting place back whether or not this coroutine had to sleep (a busy
        // machine can run it after its window opened): a place never returned would turn
        // every later call beyond the first of a window into a 429 for good.
        if queued {
            let mut h = match s.health.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            h.waiting = h.waiting.saturating_sub(1);
        }
        let body = serde_json::json!({
            "failing": s.failure.load(Ordering::Relaxed),
            "minResponseTime": s.delay_ms.load(Ordering::Relaxed),
        });
        rsp.status(200)
            .body_mut()
            .extend_from_slice(body.to_string().as_bytes());
    }

    fn get_payment(&self, id: &str, rsp: &mut Response) {
        let store = match self.state.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match store.by_id.get(id) {
            Some((cents, _, at)) => {
                let body = format!(
                    r#"{{"correlationId":"{}","amount":{},"requestedAt":"{}"}}"#,
                    id,
                    decimal_cents(*cents),
                    at
                );
                rsp.status(200)
                    .body_mut()
                    .extend_from_slice(body.as_bytes());
            }
            None => json_error(rsp, 404, "payment not found"),
        }
    }

    fn summary(&self, req: &Request<'_>, rsp: &mut Response) {
        let bound = |name: &str| match http::query_param(req.query, name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => iso8601::parse_ms(&v).map(Some).ok_or(()),
        };
        let (Ok(from), Ok(to)) = (bound("from"), bound("to")) else {
            return json_error(rsp, 400, "from and to must be ISO-8601 instants");
        };
        let (count, cents) = {
            let store = match self.state.store.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            // Like the real processor (`BETWEEN @from AND @to OR @from IS NULL OR @to IS NULL`):
            // a missing bound on either side counts everything.
            let (lo, hi) = match (from, to) {
                (Some(f), Some(t)) => (f, t),
                _ => (i64::MIN, i64::MAX),
            };
            if lo > hi {
                (0, 0)
            } else {
                store
                    .by_time
                    .range(lo..=hi)
                    .fold((0u64, 0u64), |a, (_, v)| (a.0 + v.0, a.1 + v.1))
            }
        };
        let amount = decimal_cents(cents);
        let fee = amount * self.state.fee;
        let body = format!(
            r#"{{"totalAmount":{amount},"totalRequests":{count},"totalFee":{fee},"feePerTransaction":{}}}"#,
            self.state.fee
        );
        rsp.status(200)
            .body_mut()
            .extend_from_slice(body.as_bytes());
    }

    fn configure(&self, what: &str, req: &Request<'_>, rsp: &mut Response) {
        let value: Result<serde_json::Value, _> = serde_json::from_slice(req.body);
        let Ok(value) = value else {
            return json_error(rsp, 400, "malformed JSON");
        };
        let s = &self.state;
        let reply = |rsp: &mut Response, was: serde_json::Value, is: serde_json::Value| {
            let body = serde_json::json!({ "config": what, "was": was, "is": is });
            rsp.status(200)
                .body_mut()
                .extend_from_slice(body.to_string().as_bytes());
        };
        match what {
            "token" => match value.get("token").and_then(|t| t.as_str()) {
                Some(t) => {
                    if let Ok(mut tok) = s.token.lock() {
                        *tok = t.to_string();
                    }
                    rsp.status(204);
                }
                None => json_error(rsp, 400, "token must be a string"),
            },
            "delay" => match value.get("delay").and_then(|d| d.as_u64()) {
                Some(d) => {
                    let was = s.delay_ms.swap(d, Ordering::Relaxed);
                    reply(rsp, was.into(), d.into());
                }
                None => json_error(rsp, 400, "delay must be a non-negative integer (ms)"),
            },
            "failure" => match value.get("failure").and_then(|f| f.as_bool()) {
                Some(f) => {
                    let was = s.failure.swap(f, Ordering::Relaxed);
                    reply(rsp, was.into(), f.into());
                }
                None => json_error(rsp, 400, "failure must be a boolean"),
            },
            "chaos" => match value
                .get("mode")
                .and_then(|m| m.as_str())
                .and_then(Chaos::parse)
            {
                Some(c) => {
                    let was = Chaos::from_u8(s.chaos.swap(c as u8, Ordering::Relaxed));
                    reply(
                        rsp,
                        format!("{was:?}").to_lowercase().into(),
                        format!("{c:?}").to_lowercase().into(),
                    );
                }
                None => json_error(
                    rsp,
                    400,
                    "mode must be none|reset|garbage|truncated|status429|hang",
                ),
            },
            _ => json_error(rsp, 404, "unknown configuration"),
        }
    }
}

impl Handler for Sim {
    fn handle(&mut self, req: &Request<'_>, rsp: &mut Response) {
        match (req.method, req.path) {
            ("POST", "/payments") => self.post_payment(req, rsp),
            ("GET", "/payments/service-health") => self.health(rsp),
            ("GET", p) if p.starts_with("/payments/") => {
                self.get_payment(&p["/payments/".len()..], rsp)
            }
            (_, p) if p.starts_with("/admin/") => {
                if !self.authorised(req) {
                    return json_error(rsp, 401, "invalid token");
                }
                match (req.method, p) {
                    ("GET", "/admin/payments-summary") => self.summary(req, rsp),
                    ("POST", "/admin/purge-payments") => {
                        if let Ok(mut st) = self.state.store.lock() {
                            *st = Store::new();
                        }
                        rsp.status(200)
                            .json(r#"{"message":"All payments purged."}"#);
                    }
                    ("PUT", p) if p.starts_with("/admin/configurations/") => {
                        self.configure(&p["/admin/configurations/".len()..], req, rsp)
                    }
                    _ => json_error(rsp, 404, "not found"),
                }
            }
            (_, "/payments") => {
                json_error(rsp, 405, "method not allowed");
                rsp.header("Allow: POST");
            }
            (_, "/payments/service-health") => {
                json_error(rsp, 405, "method not allowed");
                rsp.header("Allow: GET");
            }
            _ => json_error(rsp, 404, "not found"),
        }
    }
}

/// Runs the simulator until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.fee < Decimal::ZERO || args.fee >= Decimal::ONE {
        anyhow::bail!("--fee (RINHA_SIM_FEE) must be in [0, 1), got {}", args.fee);
    }
    if args.workers == 0 {
        anyhow::bail!("--workers (RINHA_SIM_WORKERS) must be at least 1");
    }
    http::init_runtime(args.workers);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = http::bind(addr)
        .with_context(|| format!("processor {}: cannot listen on {addr}", args.name))?;
    let local = listener.local_addr().context("local address")?;
    let limits = Limits {
        max_body: 64 * 1024,
        idle_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    http::serve_listener(listener, Sim::new(&args), limits).context("start the acceptor")?;
    println!("ready processor {local}");
    eprintln!(
        "rinha processor {}: listening on {local}, fee {}",
        args.name, args.fee
    );
    loop {
        std::thread::park();
    }
}
