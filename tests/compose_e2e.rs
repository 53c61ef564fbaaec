//! The docker deployment end to end (about a minute and a half): the image built here without
//! pulling, both composes up through contest/docker.sh, payments through localhost:9999, our
//! summary against both processors' books, one API container stopped (the service answers
//! and loses nothing), everything torn down even on failure. Runs wherever a Docker daemon
//! answers (CI here has one); where none does, it says SKIPPED and checks nothing.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("contest/docker.sh")
            .arg("down")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
}

fn docker_sh(arg: &str) -> bool {
    Command::new("contest/docker.sh")
        .arg(arg)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn compose_deployment_processes_everything_once_and_survives_a_lost_api() {
    let docker = Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !docker.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED compose_deployment_processes_everything_once_and_survives_a_lost_api: no Docker daemon");
        return;
    }
    for port in [9999, 8001, 8002] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is busy: the compose deployment needs it"
        );
    }
    let _down = Down;
    assert!(docker_sh("up"), "contest/docker.sh up failed");
    let port = 9999;
    let mut acked = 0;
    for n in 0..1500u64 {
        if matches!(post_payment(port, &uuid_n(n), "20.05"), Some(200..=299)) {
            acked += 1;
        }
    }
    let status = Command::new("docker")
        .args(["stop", "-t", "0", "rinha_api-1_1"])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "stop api-1");
    for n in 1500..3000u64 {
        if matches!(post_payment(port, &uuid_n(n), "20.05"), Some(200..=299)) {
            acked += 1;
        }
    }
    assert!(
        acked >= 2990,
        "the service kept answering: {acked} of 3000 acknowledged"
    );
    let settled = eventually(Duration::from_secs(60), || {
        let (d, f) = our_summary(port, "");
        d.0 + f.0 >= acked && admin_summary(8001, "").0 + admin_summary(8002, "").0 == d.0 + f.0
    });
    let (d, f) = our_summary(port, "");
    assert!(settled, "ours {d:?} {f:?}, acked {acked}");
    assert_eq!(d, admin_summary(8001, ""));
    assert_eq!(f, admin_summary(8002, ""));
}
