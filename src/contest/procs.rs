//! The processes `rinha contest` starts, and how it stops them.
//!
//! Every child is the leader of its own process group, so a Ctrl-C at the terminal reaches
//! `rinha contest` alone; the runner then decides: it forwards SIGINT to k6 (which stops the
//! test, still runs its teardown and writes its result), and every [`Guard`] sends SIGTERM to
//! its child's whole group when dropped (on return, on error, on unwind), then SIGKILL after
//! a grace period. SIGINT and SIGTERM to `rinha contest` only raise the [`interrupted`] flag
//! (a tokio signal listener on a thread of its own: no `unsafe` handler here).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WATCH: Once = Once::new();

/// True once SIGINT or SIGTERM reached this process (after [`watch_signals`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on SIGINT and SIGTERM set [`interrupted`] instead of ending the process.
pub fn watch_signals() -> anyhow::Result<()> {
    let mut result = Ok(());
    WATCH.call_once(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    eprintln!("rinha contest: interrupted, stopping what it started");
                }
            });
        });
        result = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.context("install the SIGINT/SIGTERM listener"),
            Err(_) => Err(anyhow::anyhow!("the signal listener did not start")),
        };
    });
    result
}

/// A child (leader of its own process group) whose group is stopped on drop.
pub struct Guard {
    child: Option<Child>,
    what: &'static str,
    grace: Duration,
}

impl Guard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(mut cmd: Command, what: &'static str) -> anyhow::Result<Guard> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(Guard {
            child: Some(child),
            what,
            grace: Duration::from_secs(5),
        })
    }

    /// The child, while it is ours.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Sends `sig` to the child's process group.
    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = killpg(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Waits for the child to exit by itself, up to `limit`; None if it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pgid = Pid::from_raw(c.id() as i32);
        let exited = matches!(c.try_wait(), Ok(Some(_)));
        // Even when the leader is gone, members of its group may remain.
        let _ = killpg(pgid, Signal::SIGTERM);
        if !exited {
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = c.wait();
        if !exited {
            eprintln!("rinha contest: stopped {}", self.what);
        }
    }
}

/// Starts our own binary with `args` and waits for its `ready ...` line on stdout (30 s).
pub fn start_role(
    args: &[String],
    env: &[(&str, String)],
    what: &'static str,
) -> anyhow::Result<(Guard, String)> {
    let exe = std::env::current_exe().context("find our own binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = Guard::spawn(cmd, what)?;
    let stdout = guard
        .child()
        .and_then(|c| c.stdout.take())
        .context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        let mut tx = Some(tx);
        // Keep draining after the ready line so the child never blocks on a full pipe.
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.starts_with("ready ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line.trim_end().to_string());
                }
            }
            line.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => return Ok((guard, line)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.wait_for(Duration::from_secs(1));
                bail!("{what} exited before it was ready ({status:?}); see its errors above")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if interrupted() {
            bail!("interrupted while starting {what}");
        }
        if Instant::now() >= deadline {
            bail!("{what} did not print its ready line in 30 s");
        }
    }
}

/// Host and port of an `http://host:port` URL.
pub fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("target {url}: only http:// URLs are supported"))?;
    let auth = rest.split('/').next().unwrap_or(rest);
    if auth.is_empty() {
        bail!("target {url}: no host");
    }
    Ok(if auth.contains(':') {
        auth.to_string()
    } else {
        format!("{auth}:80")
    })
}

/// One GET /payments-summary, like one try of the contest runner: true on a 2xx.
fn probe(addr: &str) -> bool {
    let try_once = || -> Option<bool> {
        let sa: SocketAddr = addr.to_socket_addrs().ok()?.next()?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(
            format!("GET /payments-summary HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        // "HTTP/1.x 2.."
        Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    try_once() == Some(true)
}

/// GET /payments-summary like the contest runner: up to 15 tries, 3 s timeout, 5 s apart.
pub fn wait_ready(target: &str) -> anyhow::Result<()> {
    let addr = authority(target)?;
    for attempt in 1..=15 {
        if probe(&addr) {
            return Ok(());
        }
        if attempt < 15 {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if interrupted() {
                    bail!("interrupted while waiting for {target}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    bail!("{target} did not answer GET /payments-summary with 2xx in 15 tries (5 s apart): the contest would not rank it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_urls() {
        assert_eq!(
            authority("http://127.0.0.1:9999").unwrap(),
            "127.0.0.1:9999"
        );
        assert_eq!(
            authority("http://localhost:9999/").unwrap(),
            "localhost:9999"
        );
        assert_eq!(authority("http://example").unwrap(), "example:80");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://").is_err());
    }

    #[test]
    fn probe_wants_a_2xx() {
        use std::net::TcpListener;
        for (answer, want) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.0 204 No Content\r\n\r\n", true),
            ("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let t = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                s.write_all(answer.as_bytes()).unwrap();
            });
            assert_eq!(probe(&addr), want, "{answer}");
            t.join().unwrap();
        }
        // Nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!probe(&format!("127.0.0.1:{port}")));
    }
}
