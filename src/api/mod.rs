//! `rinha api`: the contest's HTTP API, answered from the shared file.
//!
//! Owns the routes and their validation; the wire is [`crate::http`]. Contract:
//! - `POST /payments` `{"correlationId": UUID, "amount": decimal}`: validated (see
//!   [`payment`]), checked against the shared id set, pushed into the ring, then 202 with an
//!   empty body; the consumer is woken after the 202 is written (the payment is in the ring
//!   before the answer leaves; only the wake-up follows it). A correlationId accepted
//!   before (by any API process, since the last purge) gets 200 `{"duplicate":true,...}`
//!   and nothing is queued. A full ring: 503 with `Retry-After: 1`, and the id is forgotten
//!   again so that the client may retry. Bad input: 400 with `{"error": ...}`, nothing
//!   queued.
//! - `GET /payments-summary[?from=..&to=..]`: per-processor count and exact amount of what the
//!   processors accepted, inclusive bounds on the requestedAt we sent them (one bound alone
//!   counts everything, as the processors' own summary does); 400 on a malformed date.
//! - `POST /purge-payments`: empties queue, stats and id set (see `shm-layout.md`), 200.
//! - Anything else: 404 (unknown path) or 405 with `Allow` (known path, wrong method). A
//!   `POST /payments` without `Content-Length`: 411 and close (the body's end is unknown).
//! - `POST /payments` and `GET /payments-summary` allocate nothing once the connection's
//!   buffers have grown; `POST /payments` takes no lock and logs nothing.
//!
//! Sockets arrive from the balancer over a Unix socket (`--socket`, SCM_RIGHTS) or from a
//! plain TCP listener (`--listen`). A socket file left at `--socket` by a dead API is
//! replaced; a live one, or anything that is not a socket, stops the start-up.
pub mod payment;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::http::{self, After, Handler, Limits, Request, Response};
use crate::shm::ids::Claim;
use crate::shm::{Member, Region, RegionConfig, Role, Summary};

/// Command-line arguments of `rinha api`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The shared file (created if absent).
    #[arg(long, env = "RINHA_SHM", default_value = "/dev/shm/rinha-shm")]
    pub shm: PathBuf,
    /// Unix socket on which the balancer hands over client sockets.
    #[arg(long, env = "RINHA_API_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Plain TCP listener (tests, proxy mode), e.g. 127.0.0.1:9001 (port 0 = any).
    #[arg(long, env = "RINHA_API_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Coroutine worker threads.
    #[arg(long, env = "RINHA_API_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Client connections open at once in this process (about 12 KiB each while idle); at the
    /// bound a new connection closes the longest-idle one.
    #[arg(long, env = "RINHA_API_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
}

/// The API's request handler (one clone per connection).
#[derive(Clone)]
pub struct Api {
    region: Arc<Region>,
    member: Arc<Member>,
    /// A payment was pushed since the last wake-up: the consumer is woken once the answer
    /// is written ([`Handler::after_write`]), so the 202 never waits for the wake-up.
    wake_pending: bool,
}

const NOT_FOUND: &str = r#"{"error":"not found"}"#;
const NOT_ALLOWED: &str = r#"{"error":"method not allowed"}"#;

impl Api {
    /// A handler over `region`, pushing as `member`.
    pub fn new(region: Arc<Region>, member: Arc<Member>) -> Api {
        Api {
            region,
            member,
            wake_pending: false,
        }
    }

    fn post_payment(&mut self, req: &Request<'_>, rsp: &mut Response) {
        // Without a length the body is empty by HTTP's rules, but a client that sent one
        // anyway would have it read as its next request: say why and close. (Not for
        // /purge-payments: `curl -X POST` sends no Content-Length, and that route takes no body.)
        if req.content_length.is_none() {
            rsp.status(411)
                .after(After::Close)
                .json(r#"{"error":"Content-Length required"}"#);
            return;
        }
        let p = match payment::decode(req.body, crate::shm::unix_ms()) {
            Ok(p) => p,
            Err(e) => {
                rsp.status(400);
                let _ = write!(rsp.body_mut(), r#"{{"error":"{}"}}"#, e.message());
                return;
            }
        };
        // The id is held (WRITING) across the push and published only once the payment is
        // queued: a concurrent POST of the same id waits for the outcome, so it is never told
        // "duplicate" for a payment that then failed to queue.
        let pending = match self.region.ids().claim(&p.id) {
            Claim::Seen => {
                rsp.status(200)
                    .json(r#"{"duplicate":true,"message":"this correlationId was already accepted; it is processed once"}"#);
                return;
            }
            Claim::New(pending) => Some(pending),
            Claim::Full => None,
        };
        match self.region.ring().push_deferred(&self.member, &p) {
            Ok(()) => {
                if let Some(p) = pending {
                    p.publish();
                }
                self.wake_pending = true;
                rsp.status(202);
            }
            Err(_) => {
                if let Some(p) = pending {
                    p.abandon();
                }
                rsp.status(503)
                    .header("Retry-After: 1")
                    .json(r#"{"error":"payment queue is full, retry later"}"#);
            }
        }
    }

    fn summary(&self, req: &Request<'_>, rsp: &mut Response) {
        // Decoded on the stack: a valid instant is at most 35 bytes, so a longer one is bad.
        let bound = |name: &str| match http::query_param_in(req.query, name, &mut [0u8; 64]) {
            None | Some(Some("")) => Ok(None),
            Some(Some(v)) => crate::iso8601::parse_ms(v).map(Some).ok_or(()),
            Some(None) => Err(()),
        };
        let (Ok(from), Ok(to)) = (bound("from"), bound("to")) else {
            rsp.status(400).json(
                r#"{"error":"from and to must be ISO-8601 UTC instants such as 2025-07-10T12:34:56.000Z"}"#,
            );
            return;
        };
        // The processors count everything when either bound is missing (the contest's rule:
        // our books must equal theirs), so one bound alone means no bound.
        let (from, to) = match (from, to) {
            (Some(f), Some(t)) => (Some(f), Some(t)),
            _ => (None, None),
        };
        let s = self.region.stats().summary(from, to);
        rsp.status(200);
        write_summary(rsp.body_mut(), &s);
    }
}

/// The summary's JSON, amounts with exactly two decimals.
pub fn write_summary(out: &mut Vec<u8>, s: &Summary) {
    let _ = write!(
        out,
        r#"{{"default":{{"totalRequests":{},"totalAmount":{}.{:02}}},"fallback":{{"totalRequests":{},"totalAmount":{}.{:02}}}}}"#,
        s.default.count,
        s.default.cents / 100,
        s.default.cents % 100,
        s.fallback.count,
        s.fallback.cents / 100,
        s.fallback.cents % 100
    );
}

impl Handler for Api {
    fn handle(&mut self, req: &Request<'_>, rsp: &mut Response) {
        match (req.path, req.method) {
            ("/payments", "POST") => self.post_payment(req, rsp),
            ("/payments-summary", "GET") => self.summary(req, rsp),
            ("/purge-payments", "POST") => {
                self.region.purge();
                rsp.status(200).json(r#"{"message":"purged"}"#);
            }
            ("/payments" | "/purge-payments", _) => {
                rsp.status(405).header("Allow: POST").json(NOT_ALLOWED);
            }
            ("/payments-summary", _) => {
                rsp.status(405).header("Allow: GET").json(NOT_ALLOWED);
            }
            _ => {
                rsp.status(404).json(NOT_FOUND);
            }
        }
    }

    fn after_write(&mut self) {
        if std::mem::take(&mut self.wake_pending) {
            self.region.ring().wake();
        }
    }
}

/// Receives client sockets from one balancer connection until it closes.
fn receive_sockets(conn: UnixStream, api: Api, limits: Limits) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let mut got_any = false;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        got_any = true;
                        // SAFETY: SCM_RIGHTS installed `fd` as a new descriptor in this
                        // process just now; nothing else knows or owns it.
                        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                        http::serve_fd(owned, api.clone(), limits);
                    }
                }
            }
        }
        if msg.bytes == 0 && !got_any {
            return; // the balancer closed the connection
        }
    }
}

/// Makes `path` free for binding: nothing there is fine; a Unix socket nobody listens on (left
/// by a dead API) is removed. A socket something answers on (another API given the same path)
/// or anything that is not a socket (a typo could name the shared file) is an error.
fn clear_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let says = |what: &str| format!("--socket (RINHA_API_SOCKET) {}: {what}", path.display());
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| says("cannot inspect it")),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(says("exists and is not a Unix socket; not removing it"));
    }
    // Non-blocking, so that a live listener with a full backlog (EAGAIN) cannot hold us here.
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .with_context(|| says("cannot create a socket to probe it"))?;
    let addr = UnixAddr::new(path).with_context(|| says("not a valid socket path"))?;
    match connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) => anyhow::bail!(says(
            "a live process listens on it (another API given the same path?)"
        )),
        // Refused: nobody listens there any more (left by a dead API).
        Err(nix::errno::Errno::ECONNREFUSED) => {
            std::fs::remove_file(path).with_context(|| says("cannot remove the stale socket"))
        }
        Err(e) => Err(anyhow::anyhow!(says(&format!(
            "cannot tell whether it is in use ({e}); not removing it"
        )))),
    }
}

/// Runs the API until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.socket.is_none() && args.listen.is_none() {
        anyhow::bail!("give --socket (RINHA_API_SOCKET) or --listen (RINHA_API_LISTEN), or both");
    }
    if args.workers == 0 {
        anyhow::bail!("--workers (RINHA_API_WORKERS) must be at least 1");
    }
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections (RINHA_API_MAX_CONNECTIONS) must be at least 1");
    }
    if let Some(path) = &args.socket {
        clear_stale_socket(path)?;
    }
    http::init_runtime(args.workers);
    let region = Arc::new(Region::open(&args.shm, &RegionConfig::default())?);
    let member = Arc::new(region.join(Role::Api)?);
    let api = Api::new(Arc::clone(&region), member);
    let limits = Limits {
        max_connections: args.max_connections,
        ..Limits::default()
    };
    let mut ready = Vec::new();
    if let Some(addr) = args.listen {
        let listener =
            http::bind(addr).with_context(|| format!("--listen {addr}: cannot listen"))?;
        let local = listener.local_addr()?;
        http::serve_listener(listener, api.clone(), limits)?;
        ready.push(local.to_string());
    }
    if let Some(path) = &args.socket {
        let listener = UnixListener::bind(path)
            .with_context(|| format!("--socket {}: cannot bind", path.display()))?;
        let api = api.clone();
        std::thread::Builder::new()
            .name("handoff".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let api = api.clone();
                    let _ = std::thread::Builder::new()
                        .name("handoff-conn".into())
                        .spawn(move || receive_sockets(conn, api, limits));
                }
            })
            .context("start the handoff thread")?;
        ready.push(format!("unix:{}", path.display()));
    }
    println!("ready api {}", ready.join(","));
    eprintln!(
        "rinha api: serving {} on {}",
        ready.join(" and "),
        region.path().display()
    );
    loop {
        std::thread::park();
    }
}
