//! The official Python clients (OpenAI, Ollama, grpcio) the tests drive through the edge: a
//! virtualenv made by `tests/clients/setup.sh` (which `.ci/run` calls) and scripts under
//! `tests/clients/`. A missing or stale virtualenv is made on first use (under a lock, as test
//! binaries run in parallel), so `cargo test --workspace` alone works on a fresh machine.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The virtualenv's interpreter: `$OKOME_PYENV/bin/python` (default `~/.cache/okome/pyenv`).
pub fn interpreter() -> PathBuf {
    let venv = std::env::var_os("OKOME_PYENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/okome/pyenv")
        },
        PathBuf::from,
    );
    let setup = script("setup.sh");
    // setup.sh returns at once when the virtualenv matches requirements.txt.
    let status = Command::new("flock")
        .arg(std::env::temp_dir().join("okome-pyenv.lock"))
        .arg("bash")
        .arg(&setup)
        .env("OKOME_PYENV", &venv)
        .status()
        .expect("run flock (util-linux)");
    assert!(
        status.success(),
        "{} failed ({status}): the tests need the official Python clients from PyPI",
        setup.display()
    );
    venv.join("bin/python")
}

/// `tests/clients/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Runs `tests/clients/<name> args…` with the virtualenv's Python and returns its output;
/// panics with its stdout and stderr when it exits non-zero.
pub async fn run(name: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(interpreter());
    cmd.arg(script(name)).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} ran over 120 s"))
        .expect("spawn python");
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
