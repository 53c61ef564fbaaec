//! Slow and idle clients (issue 6): 10,000 idle connections and a slowloris client neither
//! exhaust the API processes (each holds at most its bound of connections, evicting the
//! longest-idle one for a newcomer) nor stop other clients being served. The latency effect is
//! printed (targets live in benchmarks and the load test, not in assertions here).
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn p99_of_posts(port: u16, from: u64, n: u64) -> Duration {
    let mut lat: Vec<Duration> = (from..from + n)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(post_payment(port, &uuid_n(i), "1.00"), Some(202));
            t.elapsed()
        })
        .collect();
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

/// Connections the server closed: reading reaches end-of-stream (or a reset) at once, after
/// whatever the server said first (a connection refused at a full table gets a 503, then the
/// close).
fn closed_by_server(conns: &mut [TcpStream]) -> usize {
    use std::io::Read;
    let mut closed = 0;
    for s in conns.iter_mut() {
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 512];
        loop {
            match s.read(&mut b) {
                Ok(0) => closed += 1,
                Ok(_) => continue,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
                Err(_) => {}
            }
            break;
        }
    }
    closed
}

#[test]
fn idle_and_slowloris_clients_do_not_starve_the_others() {
    rinha::http::raise_fd_limit();
    // A bound of 1,000 connections per API process (the default is 2,048) shows the eviction
    // with 10,000 idle clients.
    let max = 1000;
    let e = Engine::start_with("clients", &[("RINHA_API_MAX_CONNECTIONS", "1000")]);
    let before = p99_of_posts(e.port, 0, 300);
    let idle_target = 10_000;
    let mut idle = Vec::with_capacity(idle_target);
    for _ in 0..idle_target {
        match TcpStream::connect(("127.0.0.1", e.port)) {
            Ok(s) => idle.push(s),
            Err(err) => panic!("could only open {} idle connections: {err}", idle.len()),
        }
    }
    // Slowloris: a head dribbled one byte at a time, never finished, for 25 s: the 10 s head
    // timeout counts from the API's first read, which may come seconds after the first byte
    // while the balancer works through the idle connections' backlog.
    let port = e.port;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = b"POST /payments HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut sent = 0;
        for b in head.iter().chain(std::iter::repeat(&b'a')).take(100) {
            if s.write_all(&[*b]).is_err() {
                return sent; // the server closed it: the head timeout did its job
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(1));
    // Every new connection of these POSTs evicts one idle connection: they are still served.
    let during = p99_of_posts(e.port, 1000, 300);
    let apis = e.role_pids("api");
    let rss: u64 = apis.iter().map(|&p| rss_kb(p)).sum();
    let closed = closed_by_server(&mut idle);
    println!(
        "p99 of sequential POSTs: {before:?} before, {during:?} with {} idle connections ({closed} closed by the servers) and a slowloris; API RSS {} MB total",
        idle.len(),
        rss / 1024
    );
    // Two API processes hold at most `max` connections each (plus the POST clients' and the
    // slowloris's): the rest of the idle ones were closed, the oldest first.
    let open = idle.len() - closed;
    assert!(
        open <= 2 * max,
        "{open} idle connections still open: the bound of {max} per API process did not hold"
    );
    assert!(
        open >= max,
        "only {open} idle connections left open: the servers closed more than they had to"
    );
    assert!(
        closed_by_server(&mut idle[..100]) == 100,
        "the oldest idle connections are the ones evicted"
    );
    assert!(
        rss < 2 * 64 * 1024,
        "API processes use {} MB with {} idle connections",
        rss / 1024,
        idle.len()
    );
    let sent = slow.join().expect("slowloris thread");
    assert!(
        sent < 100,
        "a head dribbled for 25 s must be cut off by the 10 s head timeout"
    );
    drop(idle);
    assert_eq!(post_payment(e.port, &uuid_n(5000), "1.00"), Some(202));
}
