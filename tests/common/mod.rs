//! Helpers shared by the integration tests: real processes, real HTTP, free ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "123";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

static N: AtomicU32 = AtomicU32::new(0);

/// A unique shm path, removed (with its sockets) on drop.
pub struct TempShm(pub PathBuf);
impl TempShm {
    pub fn new(tag: &str) -> TempShm {
        TempShm(PathBuf::from(format!(
            "/dev/shm/rinha-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}
impl Drop for TempShm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for i in 1..=4 {
            let _ = std::fs::remove_file(format!("{}.api-{i}.sock", self.path()));
        }
    }
}

/// A child process killed (with its process group) on drop.
pub struct Proc {
    pub child: Child,
    pub ready: String,
}
impl Proc {
    /// Starts `rinha ARGS` and waits for its `ready` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rinha"))
            .args(args)
            .env_remove("PROCESSOR_DEFAULT_URL")
            .env_remove("PROCESSOR_FALLBACK_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rinha");
        let stdout = child.stdout.take().expect("stdout");
        // Drained all along (a role that logs must never block on a full pipe); the first
        // lines are kept to say why a role never became ready.
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        if let Some(stderr) = child.stderr.take() {
            let said = std::sync::Arc::clone(&said);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut s) = said.lock() {
                        if s.len() < 20 {
                            s.push(line);
                        }
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut p = Proc {
            child,
            ready: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => p.ready = line,
            Err(_) => {
                let _ = p.child.kill();
                let _ = p.child.wait();
                std::thread::sleep(Duration::from_millis(100)); // the stderr reader's last lines
                let said = said.lock().map(|s| s.join("\n")).unwrap_or_default();
                panic!("rinha {args:?} did not become ready; it said:\n{said}")
            }
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port its ready line ends with (`ready up 127.0.0.1:PORT`): the one it bound.
    pub fn ready_port(&self) -> u16 {
        rinha::up::ready_address(&self.ready, "the process")
            .map(|a| a.port())
            .ok()
            .filter(|&p| p != 0)
            .unwrap_or_else(|| panic!("no port in the ready line {:?}", self.ready))
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.1 server on a free port, a thread per connection: each request (head, and
/// a `Content-Length` body) is answered with the whole response `answer` gives for its request
/// line (`GET /path HTTP/1.1`). For tests that need a backend with canned answers.
pub fn canned_server(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = std::sync::Arc::clone(&answer);
            std::thread::spawn(move || {
                let Ok(read_half) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(read_half);
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
                    if conn.write_all(answer(line.trim_end()).as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A simulator on a free port: it binds port 0 itself and says which in its ready line
/// (`ready processor 127.0.0.1:PORT`), so no other test's connection can take the port
/// between a `free_port()` and the simulator's bind (a CI run lost that race once).
pub fn processor(fee: &str) -> (Proc, u16) {
    processor_with(&["--fee", fee])
}

/// A simulator on a free port (as [`processor`]) with these extra arguments.
pub fn processor_with(extra: &[&str]) -> (Proc, u16) {
    let mut args = vec!["processor", "--port", "0"];
    args.extend_from_slice(extra);
    let p = Proc::start(&args, &[]);
    let port = p.ready_port();
    (p, port)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// One request on a fresh connection (`Connection: close`), raw bytes in, parsed answer out.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some(Answer { status, body })
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    raw(SocketAddr::from(([127, 0, 0, 1], port)), req.as_bytes())
}

pub fn post_payment(port: u16, id: &str, amount: &str) -> Option<u16> {
    let body = format!(r#"{{"correlationId":"{id}","amount":{amount}}}"#);
    request(port, "POST", "/payments", Some(&body), &[]).map(|a| a.status)
}

pub fn uuid_n(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// (count, cents) per processor from our summary.
pub fn our_summary(port: u16, query: &str) -> ((u64, u64), (u64, u64)) {
    let a = request(port, "GET", &format!("/payments-summary{query}"), None, &[])
        .expect("summary answers");
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("summary JSON");
    let side = |k: &str| {
        let s = &v[k];
        let amount = s["totalAmount"].to_string();
        (s["totalRequests"].as_u64().expect("count"), cents(&amount))
    };
    (side("default"), side("fallback"))
}

/// (count, cents) from a processor's admin summary.
pub fn admin_summary(port: u16, query: &str) -> (u64, u64) {
    let a = request(
        port,
        "GET",
        &format!("/admin/payments-summary{query}"),
        None,
        &[("X-Rinha-Token", TOKEN)],
    )
    .expect("admin summary answers");
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("admin JSON");
    (
        v["totalRequests"].as_u64().expect("count"),
        cents(&v["totalAmount"].to_string()),
    )
}

/// Decimal text to cents (test side: exact, no floats).
pub fn cents(text: &str) -> u64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, "0"));
    let frac = format!("{frac:0<2}");
    whole.parse::<u64>().expect("whole") * 100 + frac[..2].parse::<u64>().expect("frac")
}

pub fn admin(port: u16, what: &str, body: &str) {
    let a = request(
        port,
        "PUT",
        &format!("/admin/configurations/{what}"),
        Some(body),
        &[("X-Rinha-Token", TOKEN)],
    )
    .expect("admin answers");
    assert!(a.status == 200 || a.status == 204, "{what}: {a:?}");
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

pub fn iso(ms: i64) -> String {
    let mut b = [0u8; 24];
    rinha::iso8601::format_ms(ms, &mut b).to_string()
}

pub fn now_ms() -> i64 {
    rinha::shm::unix_ms()
}

/// The engine (`rinha up`) on free ports with external simulators.
pub struct Engine {
    pub up: Proc,
    pub port: u16,
    pub default: (Proc, u16),
    pub fallback: (Proc, u16),
    pub shm: TempShm,
}

impl Engine {
    pub fn start(tag: &str) -> Engine {
        Self::start_with(tag, &[])
    }

    /// The engine with extra environment for its roles (e.g. a consumer setting).
    pub fn start_with(tag: &str, env: &[(&str, &str)]) -> Engine {
        let default = processor("0.07");
        let fallback = processor("0.10");
        let shm = TempShm::new(tag);
        // Port 0: `rinha up` binds any free port and names it in its ready line, so no other
        // test's connection can take the port between a `free_port()` and the bind.
        let up = Self::up_with(&shm, 0, default.1, fallback.1, env);
        let port = up.ready_port();
        Engine {
            up,
            port,
            default,
            fallback,
            shm,
        }
    }

    pub fn up(shm: &TempShm, port: u16, d: u16, f: u16) -> Proc {
        Self::up_with(shm, port, d, f, &[])
    }

    pub fn up_with(shm: &TempShm, port: u16, d: u16, f: u16, extra: &[(&str, &str)]) -> Proc {
        let (du, fu) = (
            format!("http://127.0.0.1:{d}"),
            format!("http://127.0.0.1:{f}"),
        );
        let mut env = vec![
            ("PROCESSOR_DEFAULT_URL", du.as_str()),
            ("PROCESSOR_FALLBACK_URL", fu.as_str()),
        ];
        env.extend_from_slice(extra);
        let listen = format!("127.0.0.1:{port}");
        Proc::start(
            &[
                "up",
                "--listen",
                &listen,
                "--shm",
                &shm.path(),
                "--no-limits",
            ],
            &env,
        )
    }

    /// Pids of the engine's roles whose command line contains `role` (e.g. "api").
    pub fn role_pids(&self, role: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            // The APIs and consumers name the shared file; the balancer names the APIs'
            // sockets, which are named after it.
            let shm = self.shm.path();
            let sockets = format!("{shm}.api-");
            let mine = args.iter().any(|a| a == &shm || a.starts_with(&sockets));
            if mine && args.get(1).map(String::as_str) == Some(role) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Both processors' totals.
    pub fn processors_total(&self) -> u64 {
        admin_summary(self.default.1, "").0 + admin_summary(self.fallback.1, "").0
    }
}

pub fn kill9(pid: u32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
}

/// Runs `rinha ARGS`, which must exit within 10 s; returns whether it succeeded and its stderr
/// (a process still running after 10 s is killed and reported as such). The API's connection
/// bound from the environment is removed, so that a test of its own setting is not overridden.
pub fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .args(args)
        .env_remove("RINHA_API_MAX_CONNECTIONS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rinha");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (true, "still running after 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    (status.success(), err)
}
