//! Bad settings stop a role at start-up with an error that names the flag and its environment
//! variable, whichever of the two carried the bad value, before anything is started.
mod common;

use std::process::Command;

use common::TempShm;

/// Runs `rinha args...` with `env`; its exit status must be a failure, and its stderr is
/// returned.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rinha"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PROCESSOR_DEFAULT_URL")
        .env_remove("PROCESSOR_FALLBACK_URL")
        .output()
        .expect("run rinha");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} {env:?} was accepted; stderr: {stderr}"
    );
    stderr
}

fn assert_names(stderr: &str, what: &[&str]) {
    for w in what {
        assert!(stderr.contains(w), "{w:?} not named in: {stderr}");
    }
}

/// Arguments, environment, and what the error must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn up_refuses_bad_settings_by_name() {
    let cases: [Case<'_>; 8] = [
        (&["up", "--apis", "1"], &[], &["--apis", "RINHA_APIS"]),
        (&["up", "--consumers", "0"], &[], &["--consumers"]),
        (
            &["up", "--apis", "20", "--consumers", "20"],
            &[],
            &["--apis", "--consumers", "40"],
        ),
        (&["up", "--cpus", "0"], &[], &["--cpus", "RINHA_CPUS"]),
        (
            &["up", "--fallback-port", "0"],
            &[],
            &["--fallback-port", "RINHA_SIM_FALLBACK_PORT"],
        ),
        (
            &["up"],
            &[("RINHA_MEMORY_MB", "0")],
            &["--memory-mb", "RINHA_MEMORY_MB"],
        ),
        (&["up", "--lb-mode", "bogus"], &[], &["--lb-mode", "bogus"]),
        (
            &["up", "--default-url", "http://127.0.0.1:1"],
            &[],
            &["PROCESSOR_DEFAULT_URL", "PROCESSOR_FALLBACK_URL"],
        ),
    ];
    for (args, env, named) in cases {
        assert_names(&refused(args, env), named);
    }
}

#[test]
fn consumer_and_lb_refuse_bad_settings_by_name() {
    let shm = TempShm::new("cli-settings");
    let shm_path = shm.path();
    let consumer = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["consumer", "--shm", &shm_path];
        args.extend_from_slice(extra);
        refused(&args, env)
    };
    assert_names(
        &consumer(&["--timeout-ms", "5"], &[]),
        &["--timeout-ms", "RINHA_PROCESSOR_TIMEOUT_MS"],
    );
    assert_names(
        &consumer(&[], &[("RINHA_PROCESSOR_TIMEOUT_MS", "999999999")]),
        &["--timeout-ms"],
    );
    assert_names(
        &consumer(&["--max-in-flight", "1000000"], &[]),
        &["--max-in-flight", "RINHA_MAX_IN_FLIGHT", "in-flight slots"],
    );
    assert_names(
        &consumer(&["--default-url", "ftp://x"], &[]),
        &["--default-url", "PROCESSOR_DEFAULT_URL"],
    );
    assert_names(
        &refused(
            &["lb", "--listen", "127.0.0.1:0", "--backend", "a.sock,"],
            &[],
        ),
        &["RINHA_LB_BACKENDS", "empty entry"],
    );
    assert_names(
        &refused(
            &[
                "lb",
                "--listen",
                "127.0.0.1:0",
                "--mode",
                "proxy",
                "--backend",
                "api1:9001",
            ],
            &[],
        ),
        &["RINHA_LB_BACKENDS", "IP:port"],
    );
}
