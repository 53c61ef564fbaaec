//! `rinha api` over real HTTP: a real process on a unique shared file, checked through a
//! Region attached by the test (ring length, the queued payment itself, stats appended
//! directly to the log).
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{iso, raw, request, run_to_exit, uuid_n, Proc, TempShm};
use rinha::shm::{Payment, Processor, Region, RegionConfig, Role};

struct Api {
    _proc: Proc,
    addr: SocketAddr,
    region: Arc<Region>,
    _shm: TempShm,
}

fn start(tag: &str) -> Api {
    start_with(tag, &[])
}

/// [`start`] with more arguments for `rinha api`.
fn start_with(tag: &str, extra: &[&str]) -> Api {
    let shm = TempShm::new(tag);
    let path = shm.path();
    let mut args = vec!["api", "--listen", "127.0.0.1:0", "--shm", &path];
    args.extend_from_slice(extra);
    let proc = Proc::start(&args, &[]);
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
    // Unknown route; wrong method: 405 saying which method the path takes (RFC 9110).
    assert_eq!(post_to(api.addr, "/nope").status, 404);
    for (req, allow) in [
        (
            "GET /payments HTTP/1.1\r\nConnection: close\r\n\r\n",
            "POST",
        ),
        (
            "POST /payments-summary HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "GET",
        ),
        (
            "GET /purge-payments HTTP/1.1\r\nConnection: close\r\n\r\n",
            "POST",
        ),
        (
            "DELETE /payments HTTP/1.1\r\nConnection: close\r\n\r\n",
            "POST",
        ),
    ] {
        let got = exchange(api.addr, req.as_bytes());
        assert!(got.starts_with("HTTP/1.1 405 "), "{req:?} -> {got:?}");
        assert!(
            got.contains(&format!("\r\nAllow: {allow}\r\n")),
            "{req:?} -> {got:?}"
        );
    }
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
    // Purge empties the books; it takes no body, so no Content-Length is needed (what
    // `curl -X POST` sends).
    let a = exchange(
        api.addr,
        b"POST /purge-payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(common::our_summary(api.addr.port(), ""), ((0, 0), (0, 0)));
    let a = post_to(api.addr, "/purge-payments");
    assert_eq!(a.status, 200, "{a:?}");
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
        // A POST without Content-Length (or Transfer-Encoding): 411, not a 400 about JSON.
        (
            format!("POST /payments HTTP/1.1\r\nHost: x\r\n\r\n{body}").into_bytes(),
            " 411 ",
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
            got.starts_with("HTTP/1.1") && got.contains(want) && got.contains(r#"{"error":"#),
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

/// A full ring: 503 with `Retry-After: 1`, and the id is not remembered, so that the client's
/// retry is accepted once there is room.
#[test]
fn a_full_ring_answers_503_with_retry_after() {
    let api = start("api-full");
    let ring = api.region.ring();
    let me = api.region.join(Role::Api).expect("join as a producer");
    let filler = Payment {
        cents: 1,
        received_at_ms: rinha::shm::unix_ms(),
        ..Payment::default()
    };
    let mut pushed = 0u64;
    while ring.push_deferred(&me, &filler).is_ok() {
        pushed += 1;
    }
    assert_eq!(pushed, ring.capacity());
    let body = format!(r#"{{"correlationId":"{}","amount":1.00}}"#, uuid_n(42));
    let req = format!(
        "POST /payments HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let got = exchange(api.addr, req.as_bytes());
    assert!(got.starts_with("HTTP/1.1 503 "), "{got:?}");
    assert!(got.contains("\r\nRetry-After: 1\r\n"), "{got:?}");
    assert!(got.contains(r#"{"error":"#), "{got:?}");
    // Room for one: the same id is accepted now.
    let consumer = api.region.join(Role::Consumer).expect("join as a consumer");
    assert!(ring.take(&consumer, Some(Duration::ZERO)).is_some());
    assert_eq!(post(api.addr, &body).status, 202);
}

/// At `--max-connections` with every connection inside a request (none idle to evict), a new
/// client is told 503 with `Connection: close` before the close, instead of a bare close.
#[test]
fn a_full_connection_table_answers_503_before_closing() {
    let api = start_with("api-conns", &["--max-connections", "2"]);
    // Two connections inside a request: a head that is not finished yet (busy for 10 s).
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(api.addr).expect("connect");
            c.write_all(b"GET /payments-summary HTTP/1.1\r\n")
                .expect("write");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The third reads without sending: the answer comes from the server alone.
    let mut c = TcpStream::connect(api.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503 "), "{got:?}");
    assert!(got.contains("\r\nConnection: close\r\n"), "{got:?}");
    let (_, json) = got.split_once("\r\n\r\n").expect("a head and a body");
    let v: serde_json::Value = serde_json::from_str(json).expect("a JSON body");
    assert!(v["error"].is_string(), "{json}");
    // The busy ones were not disturbed, and once they go a new client is served.
    for mut b in busy {
        b.write_all(b"Connection: close\r\n\r\n").expect("write");
        let mut rest = String::new();
        let _ = b.read_to_string(&mut rest);
        assert!(rest.starts_with("HTTP/1.1 200 "), "{rest:?}");
    }
    assert!(common::eventually(Duration::from_secs(5), || {
        request(api.addr.port(), "GET", "/payments-summary", None, &[])
            .is_some_and(|a| a.status == 200)
    }));
}

/// `--max-connections 0` is refused before the shared file is opened (it is not created).
#[test]
fn zero_max_connections_is_refused_before_the_region_is_opened() {
    let shm = TempShm::new("api-maxconn");
    let path = shm.path();
    let (ok, err) = run_to_exit(&[
        "api",
        "--listen",
        "127.0.0.1:0",
        "--shm",
        &path,
        "--max-connections",
        "0",
    ]);
    assert!(!ok, "started: {err}");
    assert!(err.contains("--max-connections"), "{err}");
    assert!(!shm.0.exists(), "the shared file was created: {err}");
}

/// Hands the socket `fd` to the API listening on the Unix socket `path`, as the balancer does.
fn hand_over(path: &Path, fd: std::os::fd::RawFd) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let u = std::os::unix::net::UnixStream::connect(path).expect("connect to the api's socket");
    sendmsg::<()>(
        u.as_raw_fd(),
        &[std::io::IoSlice::new(b"x")],
        &[ControlMessage::ScmRights(&[fd])],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg");
}

/// `--socket PATH` removes only a stale socket: a regular file there (a typo naming the shared
/// file, say) is kept and the start fails; a second API given a live API's path fails and the
/// first keeps its socket (before, both were unlinked and replaced).
#[test]
fn socket_path_is_replaced_only_when_it_is_a_stale_socket() {
    use std::os::fd::AsRawFd;
    let shm = TempShm::new("api-sock");
    let path = shm.path();
    let sock = format!("{path}.api-1.sock");
    // Not a socket: refused, naming the flag and the path, and the file is untouched.
    std::fs::write(&sock, b"precious").expect("write a regular file");
    let (ok, err) = run_to_exit(&["api", "--socket", &sock, "--shm", &path]);
    assert!(!ok, "started over a regular file: {err}");
    assert!(err.contains("--socket") && err.contains(&sock), "{err}");
    assert_eq!(std::fs::read(&sock).expect("still there"), b"precious");
    std::fs::remove_file(&sock).expect("remove");
    // A stale socket (its listener is gone): replaced, the API starts.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(Path::new(&sock).exists());
    let first = Proc::start(&["api", "--socket", &sock, "--shm", &path], &[]);
    // A live one: a second API on the same path fails, naming the flag.
    let (ok, err) = run_to_exit(&["api", "--socket", &sock, "--shm", &path]);
    assert!(!ok, "a second API took a live socket: {err}");
    assert!(err.contains("--socket"), "{err}");
    // The first still receives clients through its socket.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server_side, _) = l.accept().expect("accept");
    hand_over(Path::new(&sock), server_side.as_raw_fd());
    drop(server_side);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client
        .write_all(b"GET /payments-summary HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut got = String::new();
    let _ = client.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    drop(first);
}

/// Counts the allocations of the threads that asked (the other tests' threads are not counted).
struct Counting;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
// const-initialised thread-local without a destructor, which never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count_allocation();
        std::alloc::System.realloc(p, layout, size)
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(p, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The API's handler, called in-process on a file of its own, allocates nothing for
/// `POST /payments` and `GET /payments-summary` (percent-encoded bounds included) once its
/// response buffer has grown: the summary decoded each bound into a `String` before.
#[test]
fn post_and_summary_allocate_nothing_once_warm() {
    use rinha::http::{Handler, Request, Response};
    let shm = TempShm::new("api-alloc");
    let region = Arc::new(
        Region::open(Path::new(&shm.path()), &RegionConfig::default()).expect("open the file"),
    );
    let member = Arc::new(region.join(Role::Api).expect("join"));
    let mut api = rinha::api::Api::new(Arc::clone(&region), member);
    let mut rsp = Response::new();
    let bodies: Vec<String> = (0..4)
        .map(|n| {
            format!(
                r#"{{"correlationId":"{}","amount":19.90}}"#,
                uuid_n(100 + n)
            )
        })
        .collect();
    let query = "from=2025-07-10T12%3A34%3A56.000Z&to=2025-07-10T12%3A35%3A00.000Z";
    // One request as the connection loop runs it (it clears the body first); its status.
    let mut call = |method: &str, path: &str, query: &str, body: &[u8]| {
        rsp.json("");
        let req = Request {
            method,
            path,
            query,
            headers: &[],
            body,
            content_length: Some(body.len()),
        };
        api.handle(&req, &mut rsp);
        api.after_write();
        rsp.code()
    };
    // Warm up: the response buffer grows to fit a summary.
    assert_eq!(call("POST", "/payments", "", bodies[0].as_bytes()), 202);
    assert_eq!(call("GET", "/payments-summary", query, b""), 200);
    let mut codes = Vec::with_capacity(8);
    ALLOCATIONS.with(|c| c.set(Some(0)));
    for body in &bodies[1..] {
        codes.push(call("POST", "/payments", "", body.as_bytes()));
        codes.push(call("GET", "/payments-summary", query, b""));
    }
    let allocations = ALLOCATIONS.with(|c| c.replace(None));
    assert_eq!(codes, [202, 200, 202, 200, 202, 200]);
    assert_eq!(allocations, Some(0), "allocations while warm");
    assert_eq!(region.ring().len(), 4);
}
