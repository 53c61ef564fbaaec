//! `rinha processor` over real HTTP: every row of the spec's processor table.
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn pay_body(id: &str, amount: &str, at: &str) -> String {
    format!(r#"{{"correlationId":"{id}","amount":{amount},"requestedAt":"{at}"}}"#)
}

fn pay(port: u16, id: &str, amount: &str, at: &str) -> Answer {
    request(
        port,
        "POST",
        "/payments",
        Some(&pay_body(id, amount, at)),
        &[],
    )
    .expect("answer")
}

#[test]
fn stores_refuses_duplicates_and_summarises_inclusively() {
    let (_p, port) = processor("0.07");
    assert_eq!(
        pay(port, &uuid_n(1), "20.05", "2025-07-10T12:00:00.000Z").status,
        200
    );
    assert_eq!(
        pay(port, &uuid_n(1), "20.05", "2025-07-10T12:00:00.000Z").status,
        422
    );
    assert_eq!(
        pay(port, &uuid_n(2), "10.005", "2025-07-10T12:00:01.000Z").status,
        200
    ); // rounds to 10.01
    assert_eq!(
        pay(port, &uuid_n(3), "1", "2025-07-10T12:00:02.000Z").status,
        200
    );
    let got = request(port, "GET", &format!("/payments/{}", uuid_n(2)), None, &[]).unwrap();
    assert_eq!(got.status, 200);
    assert!(
        got.body.contains("\"amount\":10.01") && got.body.contains("2025-07-10T12:00:01.000Z"),
        "{}",
        got.body
    );
    assert_eq!(
        request(port, "GET", &format!("/payments/{}", uuid_n(9)), None, &[])
            .unwrap()
            .status,
        404
    );
    assert_eq!(admin_summary(port, ""), (3, 2005 + 1001 + 100));
    let q = "?from=2025-07-10T12:00:00.000Z&to=2025-07-10T12:00:01.000Z";
    assert_eq!(admin_summary(port, q), (2, 2005 + 1001));
    // One bound alone counts everything, like the real processor.
    assert_eq!(
        admin_summary(port, "?from=2025-07-10T12:00:01.001Z"),
        (3, 2005 + 1001 + 100)
    );
    let a = request(
        port,
        "GET",
        "/admin/payments-summary",
        None,
        &[("X-Rinha-Token", TOKEN)],
    )
    .unwrap();
    assert!(
        a.body.contains("\"feePerTransaction\":0.07") && a.body.contains("\"totalFee\":2.1742"),
        "{}",
        a.body
    );
    // Token checks.
    assert_eq!(
        request(port, "GET", "/admin/payments-summary", None, &[])
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        request(
            port,
            "GET",
            "/admin/payments-summary",
            None,
            &[("X-Rinha-Token", "no")]
        )
        .unwrap()
        .status,
        401
    );
    let a = request(
        port,
        "PUT",
        "/admin/configurations/token",
        Some(r#"{"token":"abc"}"#),
        &[("X-Rinha-Token", TOKEN)],
    )
    .unwrap();
    assert_eq!(a.status, 204);
    assert_eq!(
        request(
            port,
            "GET",
            "/admin/payments-summary",
            None,
            &[("X-Rinha-Token", TOKEN)]
        )
        .unwrap()
        .status,
        401
    );
    let a = request(
        port,
        "POST",
        "/admin/purge-payments",
        None,
        &[("X-Rinha-Token", "abc")],
    )
    .unwrap();
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, r#"{"message":"All payments purged."}"#)
    );
    assert_eq!(
        request(port, "GET", &format!("/payments/{}", uuid_n(1)), None, &[])
            .unwrap()
            .status,
        404
    );
}

#[test]
fn malformed_bodies_get_400() {
    let (_p, port) = processor("0.07");
    for body in [
        "",
        "{",
        "[]",
        r#"{"correlationId":"x","amount":1,"requestedAt":"2025-07-10T12:00:00.000Z"}"#,
        r#"{"correlationId":"00000000-0000-4000-8000-000000000001","amount":"a","requestedAt":"2025-07-10T12:00:00.000Z"}"#,
        r#"{"correlationId":"00000000-0000-4000-8000-000000000001","amount":1,"requestedAt":"yesterday"}"#,
        // 28 digits: times 100 overflows Decimal.
        r#"{"correlationId":"00000000-0000-4000-8000-000000000001","amount":7922816251426433759354395033,"requestedAt":"2025-07-10T12:00:00.000Z"}"#,
    ] {
        assert_eq!(
            request(port, "POST", "/payments", Some(body), &[])
                .unwrap()
                .status,
            400,
            "{body}"
        );
    }
    let a = request(
        port,
        "PUT",
        "/admin/configurations/delay",
        Some(r#"{"delay":"x"}"#),
        &[("X-Rinha-Token", TOKEN)],
    );
    assert_eq!(a.unwrap().status, 400);
}

#[test]
fn delay_is_applied_and_not_cancelled_by_a_client_that_leaves() {
    let (_p, port) = processor("0.07");
    let a = request(
        port,
        "PUT",
        "/admin/configurations/delay",
        Some(r#"{"delay":400}"#),
        &[("X-Rinha-Token", TOKEN)],
    )
    .unwrap();
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, r#"{"config":"delay","is":400,"was":0}"#)
    );
    let t = Instant::now();
    assert_eq!(
        pay(port, &uuid_n(1), "1", "2025-07-10T12:00:00.000Z").status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(400));
    let health = request(port, "GET", "/payments/service-health", None, &[]).unwrap();
    assert_eq!(health.body, r#"{"failing":false,"minResponseTime":400}"#);
    // Send and hang up at once: the payment is stored when the delay ends. A delay of 1.5 s
    // leaves a slow machine room to ask before it ends.
    admin(port, "delay", r#"{"delay":1500}"#);
    let sent = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = pay_body(&uuid_n(2), "1", "2025-07-10T12:00:00.000Z");
    write!(
        s,
        "POST /payments HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    drop(s);
    assert_eq!(
        request(port, "GET", &format!("/payments/{}", uuid_n(2)), None, &[])
            .unwrap()
            .status,
        404
    );
    let stored = eventually(Duration::from_secs(10), || {
        request(port, "GET", &format!("/payments/{}", uuid_n(2)), None, &[])
            .is_some_and(|a| a.status == 200)
    });
    assert!(stored, "a payment whose sender hung up was not stored");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "stored before its delay ended"
    );
}

#[test]
fn failure_mode_answers_500_after_the_delay_and_stores_nothing() {
    let (_p, port) = processor("0.07");
    admin(port, "delay", r#"{"delay":200}"#);
    let a = request(
        port,
        "PUT",
        "/admin/configurations/failure",
        Some(r#"{"failure":true}"#),
        &[("X-Rinha-Token", TOKEN)],
    )
    .unwrap();
    assert_eq!(a.body, r#"{"config":"failure","is":true,"was":false}"#);
    let t = Instant::now();
    let a = pay(port, &uuid_n(1), "1", "2025-07-10T12:00:00.000Z");
    assert_eq!((a.status, a.body.as_str()), (500, ""));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(admin_summary(port, ""), (0, 0));
}

#[test]
fn health_checks_share_one_call_per_window() {
    let (_p, port) = processor_with(&["--health-window-ms", "1000"]);
    let t = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20 * i));
                let a = request(port, "GET", "/payments/service-health", None, &[]).unwrap();
                (a.status, t.elapsed())
            })
        })
        .collect();
    let mut got: Vec<(u16, Duration)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    got.sort_by_key(|g| g.1);
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 3, "{got:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 1, "{got:?}");
    let ok: Vec<Duration> = got.iter().filter(|g| g.0 == 200).map(|g| g.1).collect();
    assert!(
        ok[1] >= Duration::from_millis(900) && ok[2] >= Duration::from_millis(1900),
        "{got:?}"
    );
    // The waiting places were given back: once the last window has passed, a new burst again
    // gets one answer at once and two more in the next windows.
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let again: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20 * i));
                let a = request(port, "GET", "/payments/service-health", None, &[]).unwrap();
                (a.status, t.elapsed())
            })
        })
        .collect();
    let again: Vec<(u16, Duration)> = again.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(again.iter().all(|g| g.0 == 200), "{again:?}");
    assert!(
        again.iter().any(|g| g.1 < Duration::from_millis(500)),
        "{again:?}"
    );
}

#[test]
fn the_limiter_queues_then_answers_429() {
    let (_p, port) = processor_with(&["--max-in-flight", "2", "--max-queued", "1"]);
    // The five calls must all arrive while the first two are held, so the delay is long and
    // the threads start together.
    admin(port, "delay", r#"{"delay":2000}"#);
    let start = std::sync::Arc::new(std::sync::Barrier::new(5));
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                pay(port, &uuid_n(i), "1", "2025-07-10T12:00:00.000Z").status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    assert_eq!(admin_summary(port, "").0, 3);
}

#[test]
fn test_only_chaos_modes_misbehave_as_documented() {
    let (_p, port) = processor("0.07");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let req = |n: u64| {
        let body = pay_body(&uuid_n(n), "1", "2025-07-10T12:00:00.000Z");
        format!(
            "POST /payments HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    admin(port, "chaos", r#"{"mode":"reset"}"#);
    assert!(
        raw(addr, req(1).as_bytes()).is_none(),
        "reset must close without an answer"
    );
    admin(port, "chaos", r#"{"mode":"garbage"}"#);
    let a = raw(addr, req(2).as_bytes()).unwrap();
    assert_eq!(a.status, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&a.body).is_err());
    admin(port, "chaos", r#"{"mode":"status429"}"#);
    assert_eq!(raw(addr, req(3).as_bytes()).unwrap().status, 429);
    admin(port, "chaos", r#"{"mode":"none"}"#);
    // reset and garbage stored their payment; status429 did not.
    assert_eq!(admin_summary(port, "").0, 2);
}

/// A known path with the wrong method gets 405 and says which method it takes.
#[test]
fn wrong_methods_get_405_with_allow() {
    use std::io::Read;
    let (_sim, port) = processor("0.05");
    for (req, allow) in [
        ("GET /payments HTTP/1.1\r\nConnection: close\r\n\r\n", "Allow: POST"),
        (
            "POST /payments/service-health HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "Allow: GET",
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(req.as_bytes()).expect("write");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 405 "), "{req:?}: {text}");
        assert!(text.contains(allow), "{req:?}: no {allow} in {text}");
    }
}

/// A second simulator on a port the first listens on is refused: `may` binds with
/// SO_REUSEPORT, and without the check the two would share the port, each getting some of
/// the connections (a stale simulator answering a run's admin calls with the wrong token).
#[test]
fn a_port_another_simulator_listens_on_is_refused() {
    let (_first, port) = processor("0.07");
    let (ok, err) = run_to_exit(&["processor", "--port", &port.to_string(), "--fee", "0.07"]);
    assert!(
        !ok,
        "a second simulator on port {port}, taken by the first: {err}"
    );
    assert!(
        err.contains(&port.to_string()) && err.contains("in use"),
        "{err}"
    );
    // The first still answers alone.
    assert_eq!(
        pay(port, &uuid_n(1), "1", "2025-07-10T12:00:00.000Z").status,
        200
    );
}
