//! `rinha api` over real HTTP: a real process on a unique shared file, checked through a
//! Region attached by the test (ring length, the queued payment itself, stats appended
//! directly to the log).
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{iso, raw, request, uuid_n, Proc, TempShm};
use rinha::shm::{Processor, Region, Role};

struct Api {
    _proc: Proc,
    addr: SocketAddr,
    region: Arc<Region>,
    _shm: TempShm,
}

fn start(tag: &str) -> Api {
    let shm = TempShm::new(tag);
    let proc = Proc::start(
        &["api", "--listen", "127.0.0.1:0", "--shm", &shm.path()],
        &[],
    );
    let addr: SocketAddr = proc
        .ready
        .strip_prefix("ready api ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ready line {:?}", proc.ready));
    let region = Arc::new(Region::attach(Path::new(&shm.path())).expect("attach the api's file"));
    Api {
        _proc: proc,
        addr,
        region,
        _shm: shm,
    }
}

fn post(addr: SocketAddr, body: &str) -> common::Answer {
    let req = format!(
        "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes()).expect("the api answers")
}

fn get(addr: SocketAddr, path: &str) -> common::Answer {
    request(addr.port(), "GET", path, None, &[]).expect("the api answers")
}

#[test]
fn bad_payments_get_400_and_enqueue_nothing() {
    let api = start("api-bad");
    let id = uuid_n(7);
    let bodies = [
        String::new(),
        "{".into(),
        "not json".into(),
        "[]".into(),
        r#"{"correlationId":"not-a-uuid","amount":19.90}"#.into(),
        r#"{"correlationId":"","amount":19.90}"#.into(),
        r#"{"correlationId":123,"amount":19.90}"#.into(),
        format!(r#"{{"correlationId":"{id}"}}"#),
        r#"{"amount":19.90}"#.into(),
        format!(r#"{{"correlationId":"{id}","amount":0}}"#),
        format!(r#"{{"correlationId":"{id}","amount":0.00}}"#),
        format!(r#"{{"correlationId":"{id}","amount":-1.00}}"#),
        format!(r#"{{"correlationId":"{id}","amount":"19.90"}}"#),
        format!(r#"{{"correlationId":"{id}","amount":null}}"#),
        format!(r#"{{"correlationId":"{id}","amount":19.901}}"#),
        format!(r#"{{"correlationId":"{id}","amount":1e3}}"#),
        format!(r#"{{"correlationId":"{id}","amount":"NaN"}}"#),
        format!(r#"{{"correlationId":"{id}","amount":99999999999999999999999999999}}"#),
        format!(r#"{{"correlationId":"{id}","amount":true}}"#),
        format!(r#"{{"correlationId":"{id}","amount":1.00,"amount":-1.00}}"#),
        format!(r#"{{"correlationId":"{id}","amount":{{"value":1.00}}}}"#),
        format!(r#"{{"correlationId":"{id}","amount":1.00}} trailing"#),
        format!(r#"{{"correlationId":"{id}\u0030","amount":1.00}}"#),
    ];
    for body in &bodies {
        let a = post(api.addr, body);
        assert_eq!(a.status, 400, "body {body:?} got {a:?}");
        assert!(a.body.contains("\"error\""), "body {body:?}: {}", a.body);
    }
    // A body over 4 KiB: 413.
    let big = format!(
        r#"{{"correlationId":"{id}","amount":19.90,"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(post(api.addr, &big).status, 413);
    // Unknown route, wrong method.
    assert_eq!(post_to(api.addr, "/nope").status, 404);
    assert_eq!(get(api.addr, "/payments").status, 405);
    assert_eq!(post_to(api.addr, "/payments-summary").status, 405);
    assert_eq!(get(api.addr, "/purge-payments").status, 405);
    assert_eq!(api.region.ring().len(), 0, "a bad request reached the ring");
    // Still alive and still accepting the same id, which none of the above consumed.
    assert_eq!(
        post(
            api.addr,
            &format!(r#"{{"correlationId":"{id}","amount":19.90}}"#)
        )
        .status,
        202
    );
    assert_eq!(api.region.ring().len(), 1);
}

fn post_to(addr: SocketAddr, path: &str) -> common::Answer {
    request(addr.port(), "POST", path, Some("{}"), &[]).expect("the api answers")
}

#[test]
fn a_valid_payment_is_queued_once_with_exact_cents() {
    let api = start("api-valid");
    let id = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";
    let body = format!(r#"{{"correlationId":"{id}","amount":19.9}}"#);
    let a = post(api.addr, &body);
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(api.region.ring().len(), 1);
    // The same id again: answered, flagged as a duplicate, not queued.
    let again = post(api.addr, &body);
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body.contains("duplicate"), "{}", again.body);
    assert_eq!(api.region.ring().len(), 1);

    let me = api.region.join(Role::Consumer).expect("join");
    let slot = api
        .region
        .ring()
        .take(&me, Some(Duration::ZERO))
        .expect("one payment queued");
    let p = me.payment(slot);
    assert_eq!(p.cents, 1990);
    let want = uuid::Uuid::parse_str(id).expect("uuid");
    assert_eq!(&p.id, want.as_bytes());
    let now = rinha::shm::unix_ms();
    assert!((now - p.received_at_ms).abs() < 60_000, "{p:?}");
    assert!(api.region.ring().take(&me, Some(Duration::ZERO)).is_none());
}

#[test]
fn summary_is_exact_for_many_windows_with_inclusive_bounds() {
    let api = start("api-summary");
    let stats = api.region.stats();
    let base = 1_752_150_896_000i64; // 2025-07-10T12:34:56.000Z
    let mut records = Vec::new();
    for i in 0..200u64 {
        let at = base + (i as i64) * 137;
        let cents = 1 + i * 1_013 % 100_000;
        let p = if i % 3 == 0 {
            Processor::Fallback
        } else {
            Processor::Default
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        stats.append(at, cents, p, &id).expect("append");
        records.push((at, cents, p));
    }
    // As the processors' own summary (spec section 2): a missing bound on either side
    // counts everything.
    let expect = |from: Option<i64>, to: Option<i64>| {
        let mut t = [(0u64, 0u64); 2];
        for &(at, c, p) in &records {
            let (from, to) = if from.is_none() || to.is_none() {
                (None, None)
            } else {
                (from, to)
            };
            if from.is_none_or(|f| at >= f) && to.is_none_or(|e| at <= e) {
                t[p.index()].0 += 1;
                t[p.index()].1 += c;
            }
        }
        t
    };
    let mut windows = vec![(None, None), (Some(base), None), (None, Some(base))];
    for k in 0..40i64 {
        let a = base + k * 311;
        // Bounds exactly on records (inclusive) and between records.
        windows.push((Some(a), Some(a + 137 * (k % 7))));
        windows.push((Some(base + 137 * k), Some(base + 137 * (k + 3))));
        windows.push((Some(a + 1), Some(a + 2_000)));
    }
    for (from, to) in windows {
        let mut q = Vec::new();
        if let Some(f) = from {
            q.push(format!("from={}", iso(f)));
        }
        if let Some(t) = to {
            q.push(format!("to={}", iso(t)));
        }
        let query = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        let (d, f) = common::our_summary(api.addr.port(), &query);
        let want = expect(from, to);
        assert_eq!(d, want[0], "default for {query}");
        assert_eq!(f, want[1], "fallback for {query}");
    }
    // The answer's amounts are written with exactly two decimals.
    let a = get(api.addr, "/payments-summary");
    let body = a.body.replace(' ', "");
    for part in body.split("\"totalAmount\":").skip(1) {
        let num: String = part
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let (_, frac) = num.split_once('.').expect("a decimal point");
        assert_eq!(frac.len(), 2, "{body}");
    }
    // Malformed dates: 400 with a JSON error.
    for q in [
        "?from=yesterday",
        "?to=2025-13-01T00:00:00.000Z",
        "?from=2025-07-10T25:00:00Z",
        "?from=2025-07-10",
    ] {
        let a = get(api.addr, &format!("/payments-summary{q}"));
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert!(a.body.contains("\"error\""), "{q}: {}", a.body);
    }
    // Purge empties the books.
    let a = post_to(api.addr, "/purge-payments");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(common::our_summary(api.addr.port(), ""), ((0, 0), (0, 0)));
}

/// Sends raw bytes and returns everything read until the server closes (or 5 s pass).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn malformed_http_is_refused_and_never_crashes() {
    let api = start("api-http");
    let body = format!(r#"{{"correlationId":"{}","amount":1.00}}"#, uuid_n(1));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), " 400 "),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), " 400 "),
        (b"GET\r\n\r\n".to_vec(), " 400 "),
        (
            format!("POST /payments HTTP/1.1\r\nContent-Length: x\r\n\r\n{body}").into_bytes(),
            " 400 ",
        ),
        (
            format!(
                "POST /payments HTTP/1.1\r\nContent-Length: {0}\r\nContent-Length: {0}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            " 400 ",
        ),
        (
            format!("POST /payments HTTP/1.1\r\nContent-Length: -5\r\n\r\n{body}").into_bytes(),
            " 400 ",
        ),
        (
            format!(
                "POST /payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            " 501 ",
        ),
        (
            format!(
                "GET /payments-summary HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(10_000)
            )
            .into_bytes(),
            " 431 ",
        ),
        (
            {
                let mut r = b"GET /payments-summary HTTP/1.1\r\n".to_vec();
                for i in 0..100 {
                    r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
                }
                r.extend_from_slice(b"\r\n");
                r
            },
            " 431 ",
        ),
    ];
    for (req, want) in &cases {
        let got = exchange(api.addr, req);
        assert!(
            got.starts_with("HTTP/1.1") && got.contains(want),
            "{:?} -> {got:?}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
        // Each of these closes the connection (exchange returned, so the server closed).
    }
    assert_eq!(
        api.region.ring().len(),
        0,
        "malformed HTTP reached the ring"
    );

    // HTTP/1.0 and Connection: close are answered and then closed.
    let got = exchange(api.addr, b"GET /payments-summary HTTP/1.0\r\n\r\n");
    assert!(got.contains(" 200 "), "{got}");
    let got = exchange(
        api.addr,
        b"GET /payments-summary HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(got.contains(" 200 "), "{got}");
    // HTTP/1.0 asking for keep-alive: told so, and the connection serves a second request.
    let got = exchange(
        api.addr,
        b"GET /payments-summary HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /payments-summary HTTP/1.0\r\n\r\n",
    );
    assert_eq!(got.matches(" 200 ").count(), 2, "{got}");
    assert!(got.contains("Connection: keep-alive\r\n"), "{got}");

    // Keep-alive with pipelining: three requests in one write, three answers, in order.
    let pipelined = format!(
        "GET /payments-summary HTTP/1.1\r\n\r\nPOST /payments HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let got = exchange(api.addr, pipelined.as_bytes());
    let statuses: Vec<&str> = got
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &got[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "202", "404"], "{got}");
    assert_eq!(api.region.ring().len(), 1);

    // A request split into single bytes still parses.
    let mut s = TcpStream::connect(api.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for b in b"GET /payments-summary HTTP/1.1\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).expect("write");
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    assert!(buf.contains(" 200 "), "{buf}");

    // After all of this the process still serves.
    assert_eq!(get(api.addr, "/payments-summary").status, 200);
}

#[test]
fn idle_and_slowloris_clients_neither_block_others_nor_stay_forever() {
    let api = start("api-slow");
    // Many idle connections (bounded by this process's descriptor limit).
    let idle: Vec<TcpStream> = (0..1000)
        .map_while(|_| TcpStream::connect(api.addr).ok())
        .collect();
    assert!(idle.len() >= 500, "only {} idle connections", idle.len());
    // A slowloris client: a head that never completes, one byte at a time.
    let mut slow = TcpStream::connect(api.addr).expect("connect");
    slow.write_all(b"GET /payments-summary HTTP/1.1\r\n")
        .expect("write");
    let started = std::time::Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(20) {
        // Everyone else is served meanwhile.
        assert_eq!(get(api.addr, "/payments-summary").status, 200);
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut b = [0u8; 512];
        match slow.read(&mut b) {
            Ok(_) => {
                // 0 = closed; > 0 = an answer (a 4xx) before the close: both end it.
                closed_after = Some(started.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the slowloris connection was never closed");
    // The head deadline is 10 s from its first byte (http::Limits::head_timeout).
    assert!(
        closed_after >= Duration::from_secs(8),
        "closed too early: {closed_after:?}"
    );
    drop(idle);
    assert_eq!(get(api.addr, "/payments-summary").status, 200);
}
