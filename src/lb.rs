//! `rinha lb`: the balancer on port 9999 in front of the API processes.
//!
//! Owns the public listener. Contract:
//! - **handoff** (default): each accepted client socket is passed to an API process over that
//!   process's Unix socket with SCM_RIGHTS, round-robin, and the balancer closes its copy: it
//!   is out of the data path from then on (no extra hop, no extra wake-up per request).
//! - **proxy**: bytes are copied both ways to an API process's TCP `--listen` address (kept to
//!   measure against handoff; see the README).
//! - A backend that dies or refuses is skipped and reconnected in the background (handoff:
//!   at most every 100 ms, on demand); a socket whose handoff failed goes to the next backend.
//!   A handoff never blocks on one backend: a backend that is alive but not reading (its
//!   socket's queue is full) is skipped for that client and kept; only when every living
//!   backend is full does the balancer wait (up to 1 s) for room before giving up on a client.
//!   With no backend alive the client socket is closed. The balancer itself never exits
//!   because of a backend.
//!
//! Measured (release, `wrk` on loopback, `GET /payments-summary` on an empty log, two API
//! processes of one worker each, busy 2-core machine, so only the ratios matter):
//!
//! | path | keep-alive, 4 conns: p50 / p99 / req/s | 50 conns: req/s | `Connection: close`, 4 conns: p50 / req/s |
//! |---|---|---|---|
//! | direct (one API) | 26 us / 0.77 ms / 91.8k | 140k | 80 us / 22.4k |
//! | handoff (default) | 31 us / 1.40 ms / 85.5k | 172k (two APIs) | 99 us / 17.1k |
//! | proxy | 88 us / 1.23 ms / 38.6k | 72k | 235 us / 12.4k |
//!
//! Handoff costs a few microseconds once per connection and nothing per request; the proxy
//! adds ~60 us per request and halves throughput, so handoff is the default.
use std::io::IoSlice;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How client connections reach the API processes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass the accepted socket itself (SCM_RIGHTS).
    Handoff,
    /// Copy bytes to a TCP backend.
    Proxy,
}

/// Command-line arguments of `rinha lb`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Public address.
    #[arg(long, env = "RINHA_LB_LISTEN", default_value = "0.0.0.0:9999")]
    pub listen: SocketAddr,
    /// Backends: Unix socket paths (handoff) or IP:port (proxy), comma-separated.
    #[arg(
        long = "backend",
        env = "RINHA_LB_BACKENDS",
        value_delimiter = ',',
        required = true
    )]
    pub backends: Vec<String>,
    /// handoff or proxy.
    #[arg(long, env = "RINHA_LB_MODE", value_enum, default_value = "handoff")]
    pub mode: Mode,
}

struct Backend {
    path: PathBuf,
    conn: Option<UnixStream>,
    last_try: Option<Instant>,
}

impl Backend {
    fn connected(&mut self) -> Option<&UnixStream> {
        if self.conn.is_none()
            && self
                .last_try
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            self.last_try = Some(Instant::now());
            self.conn = UnixStream::connect(&self.path).ok();
        }
        self.conn.as_ref()
    }

    /// Sends `client`'s descriptor, never blocking (a stopped API process cannot stall the
    /// accept loop): [`Handed::Gone`] when the backend is not connected (it is reconnected
    /// later), [`Handed::Full`] when it is alive but its queue is full (it is kept; the client
    /// goes to the next backend).
    fn hand(&mut self, client: &TcpStream) -> Handed {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let Some(conn) = self.connected() else {
            return Handed::Gone;
        };
        let fds = [client.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(b"c")];
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, flags, None) {
            Ok(_) => Handed::Yes,
            // Too many descriptors in flight is a full queue too, not a dead backend.
            Err(
                nix::errno::Errno::EAGAIN
                | nix::errno::Errno::ETOOMANYREFS
                | nix::errno::Errno::ENOBUFS,
            ) => Handed::Full,
            Err(_) => {
                self.conn = None;
                Handed::Gone
            }
        }
    }
}

/// What became of one handoff.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handed {
    Yes,
    /// Alive, but its queue is full (it is not reading, or not fast enough).
    Full,
    /// Not connected (dead, or not started yet).
    Gone,
}

/// Waits, at most `limit`, until one of the `backends` whose queue was full can take more.
fn wait_for_room(backends: &[Backend], limit: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds: Vec<PollFd<'_>> = backends
        .iter()
        .filter_map(|b| b.conn.as_ref())
        .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLOUT))
        .collect();
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

fn run_handoff(listener: TcpListener, paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut backends: Vec<Backend> = paths
        .into_iter()
        .map(|path| Backend {
            path,
            conn: None,
            last_try: None,
        })
        .collect();
    for b in &mut backends {
        b.connected();
    }
    let mut next = 0usize;
    loop {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5)); // EMFILE and the like
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let n = backends.len();
        // Round-robin over the backends that take it. When every living one is full (a burst
        // of new connections faster than the APIs take them), wait up to a second for room
        // once, rather than drop the client; a backend that is stuck for good then costs each
        // new client that second only while no other backend has room.
        'client: for attempt in 0..2 {
            let mut any_full = false;
            for i in 0..n {
                match backends[(next + i) % n].hand(&client) {
                    Handed::Yes => {
                        next = (next + i + 1) % n;
                        break 'client;
                    }
                    Handed::Full => any_full = true,
                    Handed::Gone => {}
                }
            }
            if !any_full || attempt == 1 {
                break;
            }
            wait_for_room(&backends, Duration::from_secs(1));
        }
        // Our copy of the descriptor closes here; the API process holds its own.
    }
}

fn run_proxy(listen: SocketAddr, backends: Vec<SocketAddr>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen {listen}: cannot listen"))?;
        println!("ready lb {}", listener.local_addr()?);
        let mut next = 0usize;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = client.set_nodelay(true);
            let start = next;
            next = (next + 1) % backends.len();
            let backends = backends.clone();
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let addr = backends[(start + i) % backends.len()];
                    if let Ok(mut up) = tokio::net::TcpStream::connect(addr).await {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        return;
                    }
                }
            });
        }
    })
}

/// Runs the balancer until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.backends.is_empty() {
        anyhow::bail!("--backend (RINHA_LB_BACKENDS) needs at least one backend");
    }
    if args.backends.iter().any(|b| b.trim().is_empty()) {
        anyhow::bail!(
            "--backend (RINHA_LB_BACKENDS) {:?} has an empty entry",
            args.backends.join(",")
        );
    }
    match args.mode {
        Mode::Handoff => {
            let paths: Vec<PathBuf> = args.backends.iter().map(PathBuf::from).collect();
            let listener = TcpListener::bind(args.listen)
                .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
            // std binds with SO_REUSEADDR and a backlog of 128; a burst of new connections
            // (the load test's ramp) needs more. Listening again only raises the backlog
            // (the kernel caps it at net.core.somaxconn).
            nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
                .context("raise the listen backlog")?;
            println!("ready lb {}", listener.local_addr()?);
            eprintln!(
                "rinha lb: {} -> {} API processes (socket handoff)",
                args.listen,
                paths.len()
            );
            run_handoff(listener, paths)
        }
        Mode::Proxy => {
            let addrs = args
                .backends
                .iter()
                .map(|b| {
                    b.parse::<SocketAddr>().with_context(|| {
                        format!("--backend (RINHA_LB_BACKENDS) {b:?}: proxy mode needs IP:port backends")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            run_proxy(args.listen, addrs)
        }
    }
}
