//! `rinha up`: the whole engine on this machine, one command, no Docker.
//!
//! Owns the engine's processes: it starts (children of the same binary) the payment
//! processor simulators when no processors are given, two API processes, the consumers and
//! the balancer, all on one shared file; waits for each one's `ready` line; caps the engine
//! (not the simulators) at the contest's 1.5 CPU / 350 MB with cgroups v1 when it can; then
//! supervises: a role that exits is started again (with backoff), Ctrl-C or SIGTERM stops
//! everything, and the cgroups and API sockets it made are removed (the shared file stays:
//! a `rinha up` on it later resumes the payments still queued).
//!
//! ```text
//! rinha up                      # simulators on 8001/8002, engine on 127.0.0.1:9999
//! PROCESSOR_DEFAULT_URL=http://127.0.0.1:8001 PROCESSOR_FALLBACK_URL=http://127.0.0.1:8002 rinha up
//! ```
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;

use crate::shm::{Region, RegionConfig};

/// Command-line arguments of `rinha up`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Public address of the balancer. Port 0 takes any free port, once: the `ready up` line
    /// names the port bound, and a restarted balancer binds that same one.
    #[arg(long, env = "RINHA_LISTEN", default_value = "127.0.0.1:9999")]
    pub listen: SocketAddr,
    /// The shared file.
    #[arg(long, env = "RINHA_SHM", default_value = "/dev/shm/rinha-shm")]
    pub shm: PathBuf,
    /// API processes behind the balancer (at least 2, as the contest requires).
    #[arg(long, env = "RINHA_APIS", default_value_t = 2)]
    pub apis: u32,
    /// Consumer processes.
    #[arg(long, env = "RINHA_CONSUMERS", default_value_t = 1)]
    pub consumers: u32,
    /// Default processor; when neither URL is given, simulators are started.
    #[arg(long, env = "PROCESSOR_DEFAULT_URL")]
    pub default_url: Option<String>,
    /// Fallback processor.
    #[arg(long, env = "PROCESSOR_FALLBACK_URL")]
    pub fallback_url: Option<String>,
    /// Port of the built-in default simulator (not 0: the consumers are told it once).
    #[arg(long, env = "RINHA_SIM_DEFAULT_PORT", default_value_t = 8001)]
    pub default_port: u16,
    /// Port of the built-in fallback simulator.
    #[arg(long, env = "RINHA_SIM_FALLBACK_PORT", default_value_t = 8002)]
    pub fallback_port: u16,
    /// Do not cap the engine with cgroups.
    #[arg(long, env = "RINHA_NO_LIMITS")]
    pub no_limits: bool,
    /// CPU cap for the engine's processes together (0.1 to 64).
    #[arg(long, env = "RINHA_CPUS", default_value_t = 1.5)]
    pub cpus: f64,
    /// Memory cap for the engine's processes together, MB (64 to 1048576).
    #[arg(long, env = "RINHA_MEMORY_MB", default_value_t = 350)]
    pub memory_mb: u64,
    /// Balancer mode.
    #[arg(long, env = "RINHA_LB_MODE", value_enum, default_value = "handoff")]
    pub lb_mode: crate::lb::Mode,
}

struct Role {
    name: String,
    /// The binary to run: our own for every role of `rinha up`.
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    engine: bool,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    /// When a role that exited (or failed to restart) is to be started again.
    restart_at: Option<Instant>,
    /// A restarted role whose `ready` line has not come yet: its first line, and when to
    /// give up on it. The supervisor polls this instead of blocking, so one role that hangs
    /// on start never delays another's restart or a stop.
    awaiting_ready: Option<(mpsc::Receiver<String>, Instant)>,
    /// Stopped by us for not saying `ready` in time: its next backoff grows however long
    /// it ran (it ran for the whole ready limit, which would otherwise count as a long run).
    stopped_unready: bool,
}

struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    fn create(cpus: f64, memory_mb: u64) -> Result<Cgroups, String> {
        let name = format!("rinha-up-{}", std::process::id());
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(&name);
        let mem = Path::new("/sys/fs/cgroup/memory").join(&name);
        if !Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            return Err("no cgroup v1 cpu controller at /sys/fs/cgroup/cpu".into());
        }
        let mut made = Cgroups { dirs: Vec::new() };
        let step = |r: std::io::Result<()>, what: &str| r.map_err(|e| format!("{what}: {e}"));
        step(std::fs::create_dir(&cpu), "create the cpu cgroup")?;
        made.dirs.push(cpu.clone());
        step(
            std::fs::write(cpu.join("cpu.cfs_period_us"), "100000"),
            "cpu.cfs_period_us",
        )?;
        let quota = (cpus * 100_000.0).round() as u64;
        step(
            std::fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string()),
            "cpu.cfs_quota_us",
        )?;
        step(std::fs::create_dir(&mem), "create the memory cgroup")?;
        made.dirs.push(mem.clone());
        step(
            std::fs::write(
                mem.join("memory.limit_in_bytes"),
                (memory_mb * 1024 * 1024).to_string(),
            ),
            "memory.limit_in_bytes",
        )?;
        Ok(made)
    }

    fn add(&self, pid: u32) {
        for d in &self.dirs {
            let _ = std::fs::write(d.join("cgroup.procs"), pid.to_string());
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..20 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Engine {
    roles: Vec<Role>,
    cgroups: Option<Cgroups>,
    /// How long a role may take from its start to its `ready` line.
    ready_within: Duration,
    /// The balancer's Unix sockets to the APIs that this engine's APIs made (each added once
    /// its API said `ready`): ours to remove once every role has stopped, however `rinha up`
    /// ends (stopped, or a failed start-up). A socket path that another engine's live API
    /// holds (a second `rinha up` on the same file) is never ours.
    sockets: Vec<String>,
}

impl Engine {
    /// One look at every role: a role that exited is scheduled to start again after its
    /// backoff; a role whose time has come is started; a restarted role that said `ready`
    /// is reported, and one that did not within `ready_within` is stopped (and so started
    /// again later). Never blocks: one role that hangs on start delays no other.
    fn tick(&mut self) {
        let Engine {
            roles,
            cgroups,
            ready_within,
            ..
        } = self;
        let now = Instant::now();
        for r in roles.iter_mut() {
            let exited = match r.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => {
                    // We cannot tell: make sure it is gone before starting another copy.
                    if let Some(c) = r.child.as_mut() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    Some(e.to_string())
                }
                _ => None,
            };
            if let Some(status) = exited {
                r.child = None;
                r.awaiting_ready = None;
                // A role that ran 10 s is back in 50 ms (the balancer is the front door);
                // one that keeps dying young waits longer each time, up to 5 s.
                r.backoff = if r.started.elapsed() > Duration::from_secs(10)
                    && !std::mem::take(&mut r.stopped_unready)
                {
                    Duration::from_millis(50)
                } else {
                    (r.backoff * 2).min(Duration::from_secs(5))
                };
                eprintln!(
                    "rinha up: {} exited ({status}); restarting in {:?}",
                    r.name, r.backoff
                );
                r.restart_at = Some(now + r.backoff);
            }
        }
        for r in roles.iter_mut() {
            if r.restart_at.is_some_and(|at| at <= Instant::now()) {
                r.restart_at = None;
                match start(r, cgroups.as_ref()) {
                    Ok(rx) => r.awaiting_ready = Some((rx, Instant::now() + *ready_within)),
                    Err(e) => {
                        r.backoff = (r.backoff * 2).min(Duration::from_secs(5));
                        eprintln!(
                            "rinha up: restart of {} failed: {e:#}; trying again in {:?}",
                            r.name, r.backoff
                        );
                        r.restart_at = Some(Instant::now() + r.backoff);
                    }
                }
            }
            let Some((rx, give_up_at)) = &r.awaiting_ready else {
                continue;
            };
            let first = match rx.try_recv() {
                Ok(line) => Ok(line),
                Err(mpsc::TryRecvError::Empty) if Instant::now() < *give_up_at => continue,
                Err(mpsc::TryRecvError::Empty) => Err(mpsc::RecvTimeoutError::Timeout),
                Err(mpsc::TryRecvError::Disconnected) => Err(mpsc::RecvTimeoutError::Disconnected),
            };
            r.awaiting_ready = None;
            match ready_line(r, first, *ready_within) {
                Ok(addr) => eprintln!("rinha up: {} restarted ({addr})", r.name),
                Err(e) => {
                    // Stopped here, it is seen as exited on the next tick and started again
                    // after its (growing) backoff.
                    eprintln!("rinha up: restart failed: {e:#}");
                    if let Some(c) = r.child.as_mut() {
                        let _ = c.kill();
                        r.stopped_unready = true;
                    }
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stop in reverse order (balancer first), gently, then for sure.
        for r in self.roles.iter_mut().rev() {
            if let Some(c) = &r.child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for r in self.roles.iter_mut().rev() {
            if let Some(mut c) = r.child.take() {
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.cgroups.take();
        // The shared file stays, so that the next `rinha up` on it resumes what was queued.
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Starts `role` (in the engine's cgroups when it is an engine role) and returns the channel
/// that receives its first line of output; the lines after it are echoed with its name.
fn start(role: &mut Role, cgroups: Option<&Cgroups>) -> anyhow::Result<mpsc::Receiver<String>> {
    let mut cmd = Command::new(&role.program);
    cmd.args(&role.args)
        .envs(role.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    // Each role has its own process group (a Ctrl-C at the terminal reaches only us, and we
    // stop the roles in order), so if `rinha up` itself is killed the kernel must tell them:
    // they get SIGTERM when the thread that started them (this one: the main thread) exits.
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec. It only makes the prctl
    // and getppid system calls (both async-signal-safe), allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            if nix::unistd::getppid() != parent {
                // We died before the prctl took effect: do not start an orphan. (An OS error
                // code, not a message: nothing may allocate between fork and exec.)
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", role.name))?;
    if role.engine {
        if let Some(cg) = cgroups {
            cg.add(child.id());
        }
    }
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    let name = role.name.clone();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for line in lines.map_while(Result::ok) {
            println!("[{name}] {line}");
        }
    });
    role.started = Instant::now();
    role.child = Some(child);
    Ok(rx)
}

/// What a role's first line says: `Ok(address)` for `ready <address>`, else why not.
fn ready_line(
    role: &Role,
    first: Result<String, mpsc::RecvTimeoutError>,
    within: Duration,
) -> anyhow::Result<String> {
    match first {
        Ok(line) if line.starts_with("ready ") => Ok(line.trim_start_matches("ready ").to_string()),
        Ok(line) => bail!("{} said {line:?} instead of ready", role.name),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "{} did not become ready within {within:?} (see its errors above)",
            role.name
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            bail!(
                "{} exited before it was ready (see its errors above)",
                role.name
            )
        }
    }
}

/// The address a role's ready line ends with (`ready processor 127.0.0.1:8001`, `ready up
/// 127.0.0.1:9999`): the one it bound, which tells the port when it was asked for port 0.
pub fn ready_address(line: &str, what: &str) -> anyhow::Result<SocketAddr> {
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{what} said {line:?}, which ends with no address"))
}

/// Replaces the value after `--listen` in a balancer's arguments.
fn pin_listen(args: &mut [String], listen: SocketAddr) {
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        if let Some(v) = args.get_mut(i + 1) {
            *v = listen.to_string();
        }
    }
}

fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        f.store(true, Ordering::SeqCst);
    });
    flag
}

/// Runs the engine until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.apis < 2 {
        bail!("--apis (RINHA_APIS) must be at least 2: the contest requires two web servers");
    }
    if args.consumers == 0 {
        bail!("--consumers (RINHA_CONSUMERS) must be at least 1");
    }
    // The consumers are given the simulators' URLs once; a restarted simulator must come
    // back on the same port.
    if args.default_port == 0 || args.fallback_port == 0 {
        bail!("--default-port (RINHA_SIM_DEFAULT_PORT) and --fallback-port (RINHA_SIM_FALLBACK_PORT) must not be 0");
    }
    let members = RegionConfig::default().max_members;
    if args.apis.saturating_add(args.consumers) > members {
        bail!(
            "--apis (RINHA_APIS) plus --consumers (RINHA_CONSUMERS) is {}, more than the shared file's {members} process entries",
            u64::from(args.apis) + u64::from(args.consumers)
        );
    }
    if !(0.1..=64.0).contains(&args.cpus) {
        bail!(
            "--cpus (RINHA_CPUS) must be from 0.1 to 64, not {}",
            args.cpus
        );
    }
    if !(64..=1_048_576).contains(&args.memory_mb) {
        bail!(
            "--memory-mb (RINHA_MEMORY_MB) must be from 64 to 1048576, not {}",
            args.memory_mb
        );
    }
    if args.default_url.is_some() != args.fallback_url.is_some() {
        bail!("give both PROCESSOR_DEFAULT_URL and PROCESSOR_FALLBACK_URL (--default-url, --fallback-url), or neither (built-in simulators)");
    }
    let stop = shutdown_flag();
    // Create (or attach and validate) the shared file now: a bad file is reported here.
    let region = Region::open(&args.shm, &RegionConfig::default())?;
    drop(region);
    let cgroups = if args.no_limits {
        println!("limits: off (--no-limits)");
        None
    } else if !nix::unistd::geteuid().is_root() {
        println!("limits: not applied (needs root for cgroups); the engine runs uncapped");
        None
    } else {
        match Cgroups::create(args.cpus, args.memory_mb) {
            Ok(c) => {
                println!(
                    "limits: engine capped at {} CPU and {} MB (cgroup v1)",
                    args.cpus, args.memory_mb
                );
                Some(c)
            }
            Err(e) => {
                println!("limits: not applied ({e}); the engine runs uncapped");
                None
            }
        }
    };
    let shm = args.shm.display().to_string();
    let mut roles = Vec::new();
    let exe = std::env::current_exe().context("find our own binary")?;
    let role = |name: String, args: Vec<String>, env: Vec<(String, String)>, engine: bool| Role {
        name,
        program: exe.clone(),
        args,
        env,
        engine,
        child: None,
        started: Instant::now(),
        // Doubled before the first use when the role dies young: 50 ms, then 100 ms, ... 5 s.
        backoff: Duration::from_millis(25),
        restart_at: None,
        awaiting_ready: None,
        stopped_unready: false,
    };
    let (default_url, fallback_url) = match (&args.default_url, &args.fallback_url) {
        (Some(d), Some(f)) => (d.clone(), f.clone()),
        (None, None) => {
            for (name, port, fee) in [
                ("default", args.default_port, "0.07"),
                ("fallback", args.fallback_port, "0.10"),
            ] {
                roles.push(role(
                    format!("processor-{name}"),
                    vec![
                        "processor".into(),
                        "--port".into(),
                        port.to_string(),
                        "--fee".into(),
                        fee.into(),
                        "--name".into(),
                        name.into(),
                    ],
                    vec![],
                    false,
                ));
            }
            (
                format!("http://127.0.0.1:{}", args.default_port),
                format!("http://127.0.0.1:{}", args.fallback_port),
            )
        }
        _ => unreachable!("checked above: both URLs or neither"),
    };
    let mut sockets = Vec::new();
    for i in 1..=args.apis {
        let sock = format!("{shm}.api-{i}.sock");
        roles.push(role(
            format!("api-{i}"),
            vec![
                "api".into(),
                "--shm".into(),
                shm.clone(),
                "--socket".into(),
                sock.clone(),
            ],
            vec![],
            true,
        ));
        sockets.push(sock);
    }
    for i in 1..=args.consumers {
        roles.push(role(
            format!("consumer-{i}"),
            vec!["consumer".into(), "--shm".into(), shm.clone()],
            vec![
                ("PROCESSOR_DEFAULT_URL".into(), default_url.clone()),
                ("PROCESSOR_FALLBACK_URL".into(), fallback_url.clone()),
            ],
            true,
        ));
    }
    roles.push(role(
        "lb".into(),
        vec![
            "lb".into(),
            "--listen".into(),
            args.listen.to_string(),
            "--backend".into(),
            sockets.join(","),
            "--mode".into(),
            args.lb_mode
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string()),
        ],
        vec![],
        true,
    ));
    let mut listen = args.listen;
    let mut engine = Engine {
        roles,
        cgroups,
        ready_within: Duration::from_secs(10),
        sockets: Vec::new(),
    };
    for i in 0..engine.roles.len() {
        let Engine {
            roles,
            cgroups,
            ready_within,
            ..
        } = &mut engine;
        // At start-up the roles come up in order (simulators, APIs, consumers, then the
        // balancer in front of them), and any that fails stops `rinha up` with its reason.
        let rx = start(&mut roles[i], cgroups.as_ref())?;
        // Waited for in steps, so that Ctrl-C during start-up stops at once.
        let deadline = Instant::now() + *ready_within;
        let first = loop {
            if stop.load(Ordering::SeqCst) {
                println!("rinha up: stopping");
                return Ok(()); // `engine` stops the roles and removes the sockets
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                other => break other,
            }
        };
        let addr = ready_line(&roles[i], first, *ready_within)?;
        println!("started {:<18} {addr}", roles[i].name);
        if roles[i].name == "lb" {
            listen = ready_address(&addr, "lb")?;
            // A restart binds the port this start took (it matters when --listen said 0).
            pin_listen(&mut roles[i].args, listen);
        }
        if let Some(sock) = sockets.iter().find(|s| roles[i].args.contains(s)) {
            engine.sockets.push(sock.clone());
        }
    }
    println!("processors: default {default_url}, fallback {fallback_url}; shared file {shm}");
    println!("ready up {listen}");
    // Each role keeps its own restart time, so one role's backoff never delays another's
    // restart (a dead balancer is not kept waiting behind a consumer that crashed twice).
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        engine.tick();
    }
    println!("rinha up: stopping");
    drop(engine); // stops every role, then removes the API sockets
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell_role(name: &str, script: &str) -> Role {
        Role {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            engine: false,
            child: None,
            started: Instant::now(),
            backoff: Duration::from_millis(25),
            restart_at: Some(Instant::now()),
            awaiting_ready: None,
            stopped_unready: false,
        }
    }

    fn pid(r: &Role) -> Option<u32> {
        r.child.as_ref().map(Child::id)
    }

    #[test]
    fn a_role_that_hangs_on_restart_delays_no_other_and_is_stopped_at_its_limit() {
        let mut e = Engine {
            roles: vec![
                shell_role("hangs", "exec sleep 30"),
                shell_role("quick", "echo ready quick; exec sleep 30"),
            ],
            cgroups: None,
            ready_within: Duration::from_millis(500),
            sockets: vec![],
        };
        e.tick();
        let hung = pid(&e.roles[0]).expect("the hanging role was started");
        // The quick role is reported ready while the hanging one is still being waited for.
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.roles[1].awaiting_ready.is_some() {
            assert!(Instant::now() < deadline, "quick never became ready");
            std::thread::sleep(Duration::from_millis(10));
            e.tick();
        }
        let quick = pid(&e.roles[1]).expect("quick is running");
        assert_eq!(pid(&e.roles[0]), Some(hung));
        assert!(
            e.roles[0].awaiting_ready.is_some(),
            "the hanging role was given up on before the quick one was even looked at"
        );
        // Past its limit the hanging role is stopped and, after its backoff, started again.
        while pid(&e.roles[0]).is_none_or(|p| p == hung) {
            assert!(
                Instant::now() < deadline,
                "the hanging role was never restarted"
            );
            std::thread::sleep(Duration::from_millis(10));
            e.tick();
        }
        assert!(e.roles[0].awaiting_ready.is_some());
        assert_eq!(pid(&e.roles[1]), Some(quick), "quick was left alone");
    }
}
