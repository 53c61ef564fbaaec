//! The engine end to end: `rinha up` (balancer, two APIs, a consumer) in front of two real
//! simulators, over real HTTP.
mod common;

use std::time::Duration;

use common::*;

/// Posts ids `from..to` from 8 threads; returns how many got a 2xx.
fn post_range(port: u16, from: u64, to: u64) -> u64 {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (from..to)
                    .filter(|n| n % 8 == t)
                    .filter(|&n| matches!(post_payment(port, &uuid_n(n), "20.05"), Some(200..=299)))
                    .count() as u64
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
}

fn settle(e: &Engine, want: u64) {
    let ok = eventually(Duration::from_secs(40), || {
        let (d, f) = our_summary(e.port, "");
        d.0 + f.0 == want && e.processors_total() == want
    });
    let (d, f) = our_summary(e.port, "");
    assert!(
        ok,
        "not settled: ours {d:?} {f:?}, processors {}, want {want}",
        e.processors_total()
    );
}

/// Our summary equals both processors' admin summaries for `windows` random windows in
/// [t0, t1] (and for the unbounded one).
fn books_agree(e: &Engine, t0: i64, t1: i64, windows: u32) {
    let mut rng = 0x2545_F491u64;
    for i in 0..=windows {
        let q = if i == 0 {
            String::new()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let a = t0 + (rng % (t1 - t0 + 1) as u64) as i64;
            let b = a + (rng >> 20) as i64 % (t1 - a + 1);
            format!("?from={}&to={}", iso(a), iso(b))
        };
        let (d, f) = our_summary(e.port, &q);
        assert_eq!(
            d,
            admin_summary(e.default.1, &q),
            "default books differ for {q}"
        );
        assert_eq!(
            f,
            admin_summary(e.fallback.1, &q),
            "fallback books differ for {q}"
        );
    }
}

#[test]
fn every_payment_is_processed_once_and_the_books_agree() {
    let e = Engine::start("e2e-once");
    let t0 = now_ms();
    let acked = post_range(e.port, 0, 2000);
    assert_eq!(acked, 2000);
    // The same ids again: answered as duplicates, processed once.
    let again = post_payment(e.port, &uuid_n(7), "20.05");
    assert_eq!(again, Some(200));
    settle(&e, 2000);
    let t1 = now_ms();
    books_agree(&e, t0 - 10, t1 + 10, 60);
    let ((dc, dcents), (fc, _)) = our_summary(e.port, "");
    assert_eq!(dc + fc, 2000);
    assert_eq!(dcents, dc * 2005);
}

#[test]
fn failover_when_default_fails_and_a_drain_after_both_fail() {
    let e = Engine::start("e2e-fail");
    admin(e.default.1, "failure", r#"{"failure":true}"#);
    let t0 = now_ms();
    assert_eq!(post_range(e.port, 0, 300), 300);
    settle(&e, 300);
    let (_, f) = our_summary(e.port, "");
    assert!(
        f.0 >= 290,
        "default fails: fallback should take them, got {f:?}"
    );
    // Both fail: payments wait.
    admin(e.fallback.1, "failure", r#"{"failure":true}"#);
    assert_eq!(post_range(e.port, 1000, 1200), 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        e.processors_total(),
        300,
        "nothing can be stored while both fail"
    );
    // Default recovers: the queue drains to it.
    admin(e.default.1, "failure", r#"{"failure":false}"#);
    settle(&e, 500);
    books_agree(&e, t0 - 10, now_ms() + 10, 30);
}

#[test]
fn a_slow_default_sends_payments_to_fallback() {
    let e = Engine::start("e2e-slow");
    admin(e.default.1, "delay", r#"{"delay":3000}"#);
    let t0 = now_ms();
    // The first payments go to default (nothing says it is slow yet); once they are
    // outstanding beyond 1.5 s the rest must go to fallback.
    assert_eq!(post_range(e.port, 0, 50), 50);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(post_range(e.port, 50, 400), 400 - 50);
    settle(&e, 400);
    let (d, f) = our_summary(e.port, "");
    assert!(
        f.0 >= 300,
        "a 3 s default should lose to fallback: default {d:?} fallback {f:?}"
    );
    books_agree(&e, t0 - 10, now_ms() + 10, 30);
}

#[test]
fn bad_input_gets_4xx_and_enqueues_nothing() {
    let e = Engine::start("e2e-bad");
    let id = uuid_n(1);
    let long = "x".repeat(5000);
    let cases: Vec<(String, u16)> = vec![
        ("{".into(), 400),
        ("[]".into(), 400),
        (r#"{"amount":1}"#.into(), 400),
        (format!(r#"{{"correlationId":"{id}"}}"#), 400),
        (
            r#"{"correlationId":"not-a-uuid","amount":1}"#.to_string(),
            400,
        ),
        (format!(r#"{{"correlationId":"{id}","amount":0}}"#), 400),
        (format!(r#"{{"correlationId":"{id}","amount":-3}}"#), 400),
        (
            format!(r#"{{"correlationId":"{id}","amount":"20.05"}}"#),
            400,
        ),
        (format!(r#"{{"correlationId":"{id}","amount":1.001}}"#), 400),
        (format!(r#"{{"correlationId":"{id}","amount":1e999}}"#), 400),
        (format!(r#"{{"correlationId":"{id}","amount":NaN}}"#), 400),
        (
            format!(r#"{{"correlationId":"{id}","amount":1,"pad":"{long}"}}"#),
            413,
        ),
    ];
    for (body, want) in &cases {
        let a = request(e.port, "POST", "/payments", Some(body), &[]).expect("answer");
        assert_eq!(a.status, *want, "{body:.80}: {}", a.body);
        assert!(a.body.contains("\"error\""), "{}", a.body);
    }
    let a = request(e.port, "GET", "/nope", None, &[]).expect("answer");
    assert_eq!(a.status, 404);
    let a = request(e.port, "GET", "/payments", None, &[]).expect("answer");
    assert_eq!(a.status, 405);
    let a = request(e.port, "GET", "/payments-summary?from=yesterday", None, &[]).expect("answer");
    assert_eq!(a.status, 400);
    // Malformed HTTP: an answer where HTTP allows one, and the connection closed.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], e.port));
    let raw_cases: [(&[u8], u16); 5] = [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"POST /payments HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}",
            400,
        ),
        (
            b"POST /payments HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            400,
        ),
        (
            b"POST /payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        (b"GET /payments-summary HTTP/1.0\r\n\r\n", 200),
    ];
    for (req, want) in raw_cases {
        let a = raw(addr, req).expect("an answer");
        assert_eq!(a.status, want, "{}", String::from_utf8_lossy(req));
    }
    let mut huge = b"GET /payments-summary HTTP/1.1\r\n".to_vec();
    for i in 0..400 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(30)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    assert_eq!(raw(addr, &huge).map(|a| a.status), Some(431));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(our_summary(e.port, ""), ((0, 0), (0, 0)));
    assert_eq!(e.processors_total(), 0);
    // Still alive and serving.
    assert_eq!(post_payment(e.port, &id, "1.50"), Some(202));
    settle(&e, 1);
}

#[test]
fn killed_roles_restart_and_nothing_acknowledged_is_lost_or_doubled() {
    let e = Engine::start("e2e-kill");
    let port = e.port;
    let loader = std::thread::spawn(move || {
        // Payments whose POST was acknowledged.
        let mut acked = Vec::new();
        for n in 0..3000u64 {
            if matches!(post_payment(port, &uuid_n(n), "20.05"), Some(200..=299)) {
                acked.push(n);
            } else {
                // A client backs off: without it, the loader spends its ids in a burst of
                // refused connections while the balancer restarts.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        acked
    });
    for (i, role) in ["api", "consumer", "lb", "consumer", "api", "consumer"]
        .iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(300 + 150 * i as u64));
        // A role killed just before may still be restarting (backoff, then exec).
        let mut pids = Vec::new();
        let found = eventually(Duration::from_secs(10), || {
            pids = e.role_pids(role);
            !pids.is_empty()
        });
        assert!(found, "no {role} process found");
        kill9(pids[i % pids.len()]);
    }
    let acked = loader.join().expect("loader");
    assert!(acked.len() > 2000, "too few acknowledged: {}", acked.len());
    // Every acknowledged payment reaches exactly one processor, once.
    let all_there = eventually(Duration::from_secs(60), || {
        let (d, f) = our_summary(e.port, "");
        d.0 + f.0 >= acked.len() as u64 && e.processors_total() == d.0 + f.0
    });
    assert!(
        all_there,
        "acked {} ours {:?} processors {}",
        acked.len(),
        our_summary(e.port, ""),
        e.processors_total()
    );
    for n in &acked {
        let path = format!("/payments/{}", uuid_n(*n));
        let d = request(e.default.1, "GET", &path, None, &[]).map(|a| a.status);
        let f = request(e.fallback.1, "GET", &path, None, &[]).map(|a| a.status);
        assert!(
            (d == Some(200)) != (f == Some(200)),
            "payment {n}: default {d:?} fallback {f:?} (must be in exactly one)"
        );
    }
    books_agree(&e, now_ms() - 120_000, now_ms(), 20);
}

#[test]
fn queued_payments_resume_after_the_engine_restarts_on_the_same_file() {
    let mut e = Engine::start("e2e-restart");
    admin(e.default.1, "failure", r#"{"failure":true}"#);
    admin(e.fallback.1, "failure", r#"{"failure":true}"#);
    assert_eq!(post_range(e.port, 0, 300), 300);
    std::thread::sleep(Duration::from_millis(500));
    e.up.stop();
    // A clean stop removes the API sockets it made and keeps the shared file.
    for i in [1, 2] {
        let sock = format!("{}.api-{i}.sock", e.shm.path());
        assert!(!std::path::Path::new(&sock).exists(), "{sock} left behind");
    }
    assert!(e.shm.0.exists(), "the shared file must stay");
    admin(e.default.1, "failure", r#"{"failure":false}"#);
    admin(e.fallback.1, "failure", r#"{"failure":false}"#);
    e.up = Engine::up(&e.shm, e.port, e.default.1, e.fallback.1);
    settle(&e, 300);
}

/// If `rinha up` itself is killed (SIGKILL: no chance to stop anything), the roles it started
/// are stopped by the kernel (parent-death signal) instead of running on orphaned, holding the
/// balancer's port.
#[test]
fn the_roles_stop_when_rinha_up_is_killed() {
    let mut e = Engine::start("e2e-orphans");
    let roles: Vec<u32> = ["lb", "api", "consumer"]
        .iter()
        .flat_map(|r| e.role_pids(r))
        .collect();
    assert_eq!(roles.len(), 4, "lb, two APIs and a consumer: {roles:?}");
    let _ = e.up.child.kill();
    let _ = e.up.child.wait();
    let gone = eventually(Duration::from_secs(10), || {
        roles
            .iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    assert!(
        gone,
        "orphaned roles still running: {:?}",
        e.role_pids("api")
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", e.port)).is_err(),
        "the balancer's port is still open"
    );
}

/// Runs `rinha up` to its end (these tests expect it to fail at start-up) with the given
/// processors; its output.
fn up_to_the_end(listen: &str, shm: &str, default: &str, fallback: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rinha"))
        .args(["up", "--listen", listen, "--shm", shm, "--no-limits"])
        .env("PROCESSOR_DEFAULT_URL", default)
        .env("PROCESSOR_FALLBACK_URL", fallback)
        .output()
        .expect("run rinha up")
}

/// A start-up that fails after the APIs are up (here the balancer's port is taken) stops what
/// it started and leaves none of the APIs' socket files behind.
#[test]
fn a_failed_start_up_leaves_no_api_sockets() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let listen = taken.local_addr().expect("held port").to_string();
    let shm = common::TempShm::new("e2e-failed-start");
    let out = up_to_the_end(
        &listen,
        &shm.path(),
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "rinha up started on a taken port: {stdout}"
    );
    assert!(
        stdout.contains("started api-2"),
        "the failure came before the APIs were up, so this shows nothing: {stdout}"
    );
    for i in 1..=2 {
        let sock = format!("{}.api-{i}.sock", shm.path());
        assert!(
            !std::path::Path::new(&sock).exists(),
            "{sock} was left behind"
        );
    }
}

/// A second `rinha up` on the same shared file while the first runs fails (its first API
/// finds the first engine's live socket), and in failing removes nothing of the first's: the
/// first engine's API sockets stay and it goes on answering.
#[test]
fn a_second_engine_on_the_same_file_leaves_the_first_alone() {
    let e = Engine::start("e2e-second-up");
    let out = up_to_the_end(
        "127.0.0.1:0",
        &e.shm.path(),
        &format!("http://127.0.0.1:{}", e.default.1),
        &format!("http://127.0.0.1:{}", e.fallback.1),
    );
    assert!(
        !out.status.success(),
        "a second engine started on a file whose APIs are live"
    );
    for i in 1..=2 {
        let sock = format!("{}.api-{i}.sock", e.shm.path());
        assert!(
            std::path::Path::new(&sock).exists(),
            "{sock} of the first engine was removed"
        );
    }
    assert_eq!(post_payment(e.port, &uuid_n(1), "10.00"), Some(202));
}
