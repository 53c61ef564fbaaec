//! The simulator must never be the bottleneck (`cargo bench --bench sim`).
//!
//! Starts the real binary (`rinha processor --port 0`, zero delay, one coroutine worker as in
//! `rinha contest`) and drives it over loopback with keep-alive connections, one blocking
//! client thread per connection, every request a `POST /payments` with a fresh correlationId:
//! - **latency**: one connection, sequential requests; p50/p99/p99.9/max of the round trip, and
//!   the same client against a trivial in-process HTTP server that answers 200 without doing
//!   anything (the loopback floor). "Added" = simulator minus floor at the same percentile.
//! - **throughput**: 16 connections for 3 s; requests/s and the round-trip p99 under that load.
//! - **admin summary** over everything stored by then (> 200,000 payments), bounded and unbounded.
//!
//! Targets (issue 3): >= 5,000 requests/s, < 1 ms added at p99. The process prints its figures;
//! it exits non-zero if a target is missed. Other work on the same cores moves these figures:
//! compare runs with each other.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "123";

/// The simulator process, killed on drop (also when the bench panics).
struct Sim {
    child: Child,
    addr: SocketAddr,
}

impl Sim {
    fn start() -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rinha"))
            .args(["processor", "--port", "0", "--fee", "0.07"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rinha processor");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = match (read, line.trim().strip_prefix("ready processor ")) {
            (Ok(_), Some(a)) => a.parse().expect("address in the ready line"),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no ready line from rinha processor: {line:?}");
            }
        };
        Sim { child, addr }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 client over one blocking socket.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client {
            s,
            buf: Vec::with_capacity(4096),
            req: Vec::with_capacity(512),
        }
    }

    /// Sends one request and reads the whole answer; returns its status.
    fn call(&mut self, method: &str, path: &str, headers: &str, body: &str) -> u16 {
        self.req.clear();
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("format");
        self.s.write_all(&self.req).expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed mid-answer");
            self.buf.extend_from_slice(&chunk[..n]);
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut rsp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(head)) = rsp.parse(&self.buf) {
                let len = rsp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= head + len {
                    return rsp.code.unwrap_or(0);
                }
            }
        }
    }

    fn pay(&mut self, n: u64) -> u16 {
        let body = format!(
            r#"{{"correlationId":"{:08x}-0000-4000-8000-{:012x}","amount":20.05,"requestedAt":"2025-07-10T12:{:02}:{:02}.{:03}Z"}}"#,
            n >> 48,
            n & 0xffff_ffff_ffff,
            (n / 60_000) % 60,
            (n / 1000) % 60,
            n % 1000
        );
        self.call("POST", "/payments", "", &body)
    }
}

/// The loopback floor: answers every request with a fixed 200 from one thread per connection.
fn floor_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind floor");
    let addr = l.local_addr().expect("floor address");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_floor(s));
        }
    });
    addr
}

fn serve_floor(mut s: TcpStream) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n{\"message\":\"payment processed successfully\"}\n";
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut hs);
            let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                break;
            };
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < head + len {
                break;
            }
            buf.drain(..head + len);
            if s.write_all(OK).is_err() {
                return;
            }
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sequential requests on one connection; sorted round trips. `first` numbers the payments.
fn sequential(addr: SocketAddr, first: u64, n: u64) -> Vec<Duration> {
    let mut c = Client::connect(addr);
    for i in 0..1000 {
        c.pay(first + n + i); // warm-up
    }
    let mut lat: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            let code = c.pay(first + i);
            let d = t.elapsed();
            assert_eq!(code, 200, "payment {i}");
            d
        })
        .collect();
    lat.sort();
    lat
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once too: keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (seq_n, secs) = if quick { (2_000, 1) } else { (20_000, 3) };

    let sim = Sim::start();
    let floor = floor_server();

    let f = sequential(floor, 0, seq_n);
    let s = sequential(sim.addr, 0, seq_n);
    println!("one connection, {seq_n} sequential POST /payments, round trip in µs:");
    println!("            p50      p99    p99.9      max");
    for (name, l) in [("floor", &f), ("simulator", &s)] {
        println!(
            "{name:>9} {:8.1} {:8.1} {:8.1} {:8.1}",
            us(pct(l, 0.5)),
            us(pct(l, 0.99)),
            us(pct(l, 0.999)),
            us(*l.last().expect("samples"))
        );
    }
    let added_p99 = pct(&s, 0.99).saturating_sub(pct(&f, 0.99));
    println!(
        "    added     {:8.1} {:8.1}",
        us(pct(&s, 0.5).saturating_sub(pct(&f, 0.5))),
        us(added_p99)
    );

    // Throughput: 16 connections for `secs` seconds.
    let conns = 16u64;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let addr = sim.addr;
    let workers: Vec<_> = (0..conns)
        .map(|k| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut lat = Vec::with_capacity(100_000);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let code = c.pay(((k + 1) << 40) + i);
                    lat.push(t.elapsed());
                    assert_eq!(code, 200);
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
                lat
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("client thread"))
        .collect();
    let elapsed = t.elapsed();
    all.sort();
    let rps = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    println!(
        "{conns} connections, {:.1} s: {rps:.0} requests/s, round trip p50 {:.1} µs, p99 {:.1} µs",
        elapsed.as_secs_f64(),
        us(pct(&all, 0.5)),
        us(pct(&all, 0.99))
    );

    // The admin summary over everything stored so far.
    let mut c = Client::connect(sim.addr);
    let stored = seq_n + 1000 + all.len() as u64;
    let hdr = format!("X-Rinha-Token: {TOKEN}\r\n");
    for (name, q) in [
        ("unbounded", String::new()),
        (
            "bounded",
            "?from=2025-07-10T12:00:10.000Z&to=2025-07-10T12:30:00.000Z".to_string(),
        ),
    ] {
        let path = format!("/admin/payments-summary{q}");
        let mut lat: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(c.call("GET", &path, &hdr, ""), 200);
                t.elapsed()
            })
            .collect();
        lat.sort();
        println!(
            "admin summary {name} over {stored} payments: p50 {:.1} µs, p99 {:.1} µs",
            us(pct(&lat, 0.5)),
            us(pct(&lat, 0.99))
        );
    }

    if !quick {
        let mut missed = Vec::new();
        if rps < 5_000.0 {
            missed.push(format!("{rps:.0} requests/s < 5,000"));
        }
        if added_p99 >= Duration::from_millis(1) {
            missed.push(format!("{:.1} µs added at p99 >= 1 ms", us(added_p99)));
        }
        if !missed.is_empty() {
            eprintln!("target missed: {}", missed.join("; "));
            std::process::exit(1);
        }
        println!("targets met: >= 5,000 requests/s and < 1 ms added at p99");
    }
}
