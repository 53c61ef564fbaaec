//! Round trip of `POST /payments` through the whole engine (`cargo bench --bench post`).
//!
//! Starts the real engine (`rinha up`, its own simulators, on free ports and its own shared
//! file) and drives it the way the contest's users do, scaled down: `POST_BENCH_CLIENTS`
//! keep-alive connections (64), each sending one payment with a fresh correlationId every
//! `POST_BENCH_PERIOD_MS` (100 ms; 640 payments/s together, the final's peak), for
//! `POST_BENCH_SECONDS` (20). Prints the count and p50/p90/p99/p99.9/max of the round trip in
//! µs, and the CPU time the hypervisor took from this VM meanwhile (steal, from `/proc/stat`),
//! which moves the tail more than anything we do: compare runs taken back to back, and look at
//! p50 first. Every answer must be a 202; anything else stops the bench.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: give a whole number")),
        Err(_) => default,
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Total steal jiffies of all CPUs (0 where `/proc/stat` has no such column).
fn steal() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            line.split_whitespace().nth(8)?.parse().ok()
        })
        .unwrap_or(0)
}

/// `rinha up` on its own ports and file; stopped with SIGINT on drop.
struct Engine {
    child: Child,
    addr: SocketAddr,
    shm: String,
}

impl Engine {
    fn start() -> Engine {
        let port = free_port();
        let shm = format!("/dev/shm/rinha-bench-post-{}", std::process::id());
        let child = Command::new(env!("CARGO_BIN_EXE_rinha"))
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shm",
                &shm,
            ])
            .args(["--default-port", &free_port().to_string()])
            .args(["--fallback-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rinha up");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let e = Engine { child, addr, shm };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !e.answers() {
            assert!(Instant::now() < deadline, "rinha up did not answer in 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /payments-summary HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 200")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.shm);
    }
}

/// One client: a payment every `period` until `end`; the round trips in µs.
fn client(addr: SocketAddr, n: usize, of: usize, period: Duration, end: Instant) -> Vec<u64> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    std::thread::sleep(period * n as u32 / of as u32); // spread the clients over a period
    let (mut rtts, mut buf, mut seq) = (Vec::new(), [0u8; 512], 0u64);
    let tag = std::process::id();
    while Instant::now() < end {
        let next = Instant::now() + period;
        seq += 1;
        let body = format!(
            r#"{{"correlationId":"{tag:08x}-{n:04x}-4{:03x}-8{:03x}-{seq:012x}","amount":19.90}}"#,
            (seq >> 12) & 0xfff,
            seq & 0xfff
        );
        let req = format!(
            "POST /payments HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t0 = Instant::now();
        s.write_all(req.as_bytes()).expect("send");
        let mut got = 0;
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut buf[got..]).expect("read");
            assert!(k > 0, "the engine closed the connection");
            got += k;
        }
        rtts.push(t0.elapsed().as_micros() as u64);
        assert!(
            buf.starts_with(b"HTTP/1.1 202"),
            "not a 202: {}",
            String::from_utf8_lossy(&buf[..got])
        );
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    rtts
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let clients = env_or("POST_BENCH_CLIENTS", 64) as usize;
    let period = Duration::from_millis(env_or("POST_BENCH_PERIOD_MS", 100));
    let seconds = env_or("POST_BENCH_SECONDS", if benching { 20 } else { 2 });
    let engine = Engine::start();
    let stolen = steal();
    let end = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let addr = engine.addr;
            std::thread::spawn(move || client(addr, n, clients, period, end))
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a client failed"))
        .collect();
    let stolen = steal().saturating_sub(stolen);
    drop(engine);
    all.sort_unstable();
    assert!(!all.is_empty(), "no request was made");
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "post round trip, {clients} clients x 1 per {period:?}, {seconds} s: n {} p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; steal {stolen} jiffies",
        all.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        all[all.len() - 1]
    );
}
