//! A real llama.cpp `llama-server` for the real-engine tier (`tests/real_llamacpp.rs`).
//!
//! The tier runs when `OKOME_REAL_ENGINE=1` (`.ci/run` sets it after
//! `tests/engines/llamacpp.sh` built the server and made the models); then a missing binary or
//! model fails the test loudly. Without it each test says it was skipped and returns: a
//! machine with only Rust cannot build llama.cpp in a test's time.

use super::free_port;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable that turns the tier on.
pub const TIER_VAR: &str = "OKOME_REAL_ENGINE";

/// Whether the real-engine tier is on; prints why a test returns early when it is not.
pub fn tier(test: &str) -> bool {
    let on = std::env::var(TIER_VAR).is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "{test}: skipped, the real-engine tier is off ({TIER_VAR}=1 turns it on after \
             `bash tests/engines/llamacpp.sh`; .ci/run does both)"
        );
    }
    on
}

/// Which generated model a server loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// okome-tiny: thousands of tokens a second on one thread.
    Tiny,
    /// okome-slow: the same vocabulary and template, wide enough to generate tens of tokens a
    /// second on one thread, so a test can act mid-stream.
    Slow,
}

/// `KEY=VALUE` from the environment, else from `~/.cache/okome/llamacpp.env`: an existing file
/// or directory.
fn setting(key: &str) -> PathBuf {
    if let Ok(v) = std::env::var(key) {
        return PathBuf::from(v);
    }
    let cache = std::env::var("OKOME_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/okome")
        });
    let env = cache.join("llamacpp.env");
    let text = std::fs::read_to_string(&env).unwrap_or_else(|e| {
        panic!(
            "{TIER_VAR}=1 but {} cannot be read ({e}): run `bash tests/engines/llamacpp.sh` first",
            env.display()
        )
    });
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "{}: no {key}= line; rerun tests/engines/llamacpp.sh",
                env.display()
            )
        });
    assert!(
        path.exists(),
        "{key}={} does not exist; rerun tests/engines/llamacpp.sh",
        path.display()
    );
    path
}

/// A running engine process (`llama-server` or llama-cpp-python's server); killed on drop.
pub struct LlamaServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Starts `llama-server` on a free loopback port with `slots` slots (each with 1,024 tokens
    /// of context), `--metrics`, `--slots`, one thread, the alias `okome-tiny`, and `extra`
    /// flags; returns once `/health` answers 200.
    pub async fn start(model: Model, slots: u32, extra: &[&str]) -> LlamaServer {
        let mut cmd = Command::new(setting("LLAMA_SERVER"));
        let port = free_port();
        cmd.arg("-m")
            .arg(model_path(model))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "-c",
                &(1024 * slots).to_string(),
                "-np",
                &slots.to_string(),
                "-t",
                "1",
            ])
            .args([
                "--metrics",
                "--slots",
                "--no-webui",
                "--alias",
                "okome-tiny",
                "--seed",
                "42",
            ])
            .args(extra);
        spawn(cmd, port, "/health").await
    }

    /// Starts llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, the
    /// same llama.cpp build through its Python bindings) with one thread and the alias
    /// `okome-tiny`, and `extra` flags; returns once `/v1/models` answers 200. It writes its
    /// stream chunks as Python's `json.dumps` does: `"content": " x"`.
    pub async fn start_python(model: Model, extra: &[&str]) -> LlamaServer {
        let python = PathBuf::from(std::env::var("OKOME_PYENV").unwrap_or_else(|_| {
            format!(
                "{}/.cache/okome/pyenv",
                std::env::var("HOME").unwrap_or_default()
            )
        }))
        .join("bin/python");
        let port = free_port();
        let mut cmd = Command::new(python);
        cmd.env("PYTHONPATH", setting("LLAMA_CPP_PYTHON"))
            .env("LLAMA_CPP_LIB_PATH", setting("LLAMA_CPP_LIB"))
            // pydantic-settings reads these as the server's own settings.
            .env_remove("PORT")
            .env_remove("HOST")
            .env_remove("MODEL")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model_path(model))
            .args(["--model_alias", "okome-tiny", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--n_ctx", "2048"])
            .args(["--n_threads", "1", "--n_threads_batch", "1"])
            .args(extra);
        spawn(cmd, port, "/v1/models").await
    }

    /// `http://IP:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One sample of its own `/metrics` (`llamacpp:…`), summed over label sets.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .expect("llama-server /metrics")
            .text()
            .await
            .expect("body");
        super::sum_metric(&text, name, &[])
    }

    /// SIGKILLs it (a crashed engine).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn model_path(model: Model) -> PathBuf {
    setting(match model {
        Model::Tiny => "LLAMA_MODEL",
        Model::Slow => "LLAMA_MODEL_SLOW",
    })
}

/// Spawns `cmd` (listening on `port`) with its output in a log; returns once `ready` answers 200.
async fn spawn(mut cmd: Command, port: u16, ready: &str) -> LlamaServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("engine.log");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut s = LlamaServer {
        child: Some(child),
        addr,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(s.url(ready)).send().await {
            if r.status() == 200 {
                return s;
            }
        }
        if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
            panic!(
                "{cmd:?} exited ({st}) before it was ready:\n{}",
                s.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} not ready in 60 s:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
