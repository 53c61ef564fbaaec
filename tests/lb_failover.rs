//! `rinha lb` in front of two real `rinha api` processes: both modes serve, a dead backend
//! (absent from the start, or SIGKILLed under way) never takes the balancer down, and a
//! backend that comes back is used again.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, request, uuid_n, Proc, TempShm};

fn addr_of(p: &Proc, role: &str) -> SocketAddr {
    p.ready
        .strip_prefix(&format!("ready {role} "))
        .and_then(|a| a.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ready line {:?}", p.ready))
}

fn api(shm: &TempShm, n: u32) -> (Proc, String) {
    let sock = format!("{}.api-{n}.sock", shm.path());
    let p = Proc::start(
        &[
            "api",
            "--shm",
            &shm.path(),
            "--socket",
            &sock,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    (p, sock)
}

/// `n` summaries through the balancer, each on a fresh connection; how many got a 200.
fn answered(lb: SocketAddr, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            request(lb.port(), "GET", "/payments-summary", None, &[])
                .is_some_and(|a| a.status == 200)
        })
        .count()
}

#[test]
fn handoff_survives_a_killed_api_and_uses_it_again_after_restart() {
    let shm = TempShm::new("lb-handoff");
    let (a1, s1) = api(&shm, 1);
    let (mut a2, s2) = api(&shm, 2);
    let lb = Proc::start(
        &[
            "lb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &format!("{s1},{s2}"),
        ],
        &[],
    );
    let lb_addr = addr_of(&lb, "lb");
    assert_eq!(answered(lb_addr, 20), 20);
    // Payments through the balancer land in the shared ring, whichever API took them.
    for i in 0..10 {
        let body = format!(r#"{{"correlationId":"{}","amount":3.25}}"#, uuid_n(i));
        let a = request(lb_addr.port(), "POST", "/payments", Some(&body), &[]).expect("answer");
        assert_eq!(a.status, 202, "{a:?}");
    }
    let region = rinha::shm::Region::attach(&shm.0).expect("attach");
    assert_eq!(region.ring().len(), 10);

    // SIGKILL one API: every new connection still gets its answer (the first handoff to
    // the dead socket fails and goes to the living one).
    let _ = a2.child.kill();
    let _ = a2.child.wait();
    assert_eq!(answered(lb_addr, 30), 30);

    // Bring it back on the same socket path: the balancer reconnects and both serve.
    drop(a2);
    let (a2b, _) = api(&shm, 2);
    drop(a1); // now only the restarted one is alive
    assert!(
        eventually(Duration::from_secs(10), || answered(lb_addr, 5) == 5),
        "the balancer did not reconnect to the restarted API"
    );
    assert_eq!(answered(lb_addr, 20), 20);
    drop(a2b);
    drop(lb);
}

/// An API process that is alive but stopped reading its handoff socket (stuck, or SIGSTOPed)
/// must not stall the balancer: once that socket's queue is full, new clients go to the
/// other API. Before, the blocking `sendmsg` held the single accept loop for good.
#[test]
fn handoff_skips_a_backend_that_stopped_reading() {
    let shm = TempShm::new("lb-stuck");
    let (_a1, s1) = api(&shm, 1);
    let stuck_path = format!("{}.api-9.sock", shm.path());
    let _ = std::fs::remove_file(&stuck_path);
    let stuck = std::os::unix::net::UnixListener::bind(&stuck_path).expect("bind stuck");
    let holder = std::thread::spawn(move || {
        // Accept the balancer's connection and never read from it.
        let conn = stuck.accept().map(|(c, _)| c);
        std::thread::sleep(Duration::from_secs(120));
        drop(conn);
    });
    let lb = Proc::start(
        &[
            "lb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &format!("{stuck_path},{s1}"),
        ],
        &[],
    );
    let lb_addr = addr_of(&lb, "lb");
    // Connections that are accepted and closed fill the stuck backend's queue: every other one
    // is handed to it.
    for _ in 0..3000 {
        drop(std::net::TcpStream::connect(lb_addr).expect("connect"));
    }
    assert_eq!(answered(lb_addr, 20), 20);
    drop(lb);
    let _ = std::fs::remove_file(&stuck_path);
    drop(holder);
}

#[test]
fn handoff_skips_a_backend_that_never_existed() {
    let shm = TempShm::new("lb-missing");
    let (_a1, s1) = api(&shm, 1);
    let missing = format!("{}.api-4.sock", shm.path());
    let lb = Proc::start(
        &[
            "lb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &format!("{missing},{s1}"),
        ],
        &[],
    );
    assert_eq!(answered(addr_of(&lb, "lb"), 20), 20);
}

#[test]
fn proxy_mode_serves_and_survives_a_killed_api() {
    let shm = TempShm::new("lb-proxy");
    let (a1, _) = api(&shm, 1);
    let (mut a2, _) = api(&shm, 2);
    let b1 = common_listen(&a1);
    let b2 = common_listen(&a2);
    let lb = Proc::start(
        &[
            "lb",
            "--mode",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &format!("{b1},{b2}"),
        ],
        &[],
    );
    let lb_addr = addr_of(&lb, "lb");
    assert_eq!(answered(lb_addr, 20), 20);
    let _ = a2.child.kill();
    let _ = a2.child.wait();
    assert_eq!(answered(lb_addr, 20), 20);
}

/// The TCP listener of an API started with both `--listen` and `--socket`.
fn common_listen(p: &Proc) -> SocketAddr {
    p.ready
        .strip_prefix("ready api ")
        .and_then(|r| r.split(',').find_map(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no TCP address in {:?}", p.ready))
}
