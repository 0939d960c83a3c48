//! A real Prometheus for the observability tests (Debian's `prometheus` package).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The path of `name` on PATH, or a test failure that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH: install Debian's `prometheus` package \
                 (apt-get install -y prometheus), as .ci/run does"
            )
        })
}

/// A Prometheus server on a free port, killed on drop.
pub struct PromProc {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
    /// Its log file.
    pub log: PathBuf,
}

impl Drop for PromProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus (1 s scrape and rule evaluation, the shipped rules) scraping `target`.
pub fn start_prometheus(target: std::net::SocketAddr) -> PromProc {
    let bin = tool("prometheus");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: okome-edge\n    static_configs:\n      - targets: [\"{target}\"]\n",
            repo("conf/prometheus/okome.rules.yml").display()
        ),
    )
    .expect("write config");
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn prometheus");
    PromProc {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
        log,
    }
}

/// Runs an instant query; the samples as (labels, value).
pub async fn query(url: &str, q: &str) -> Option<Vec<(serde_json::Value, f64)>> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let result = v["data"]["result"].as_array()?;
    Some(
        result
            .iter()
            .filter_map(|r| {
                let x: f64 = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), x))
            })
            .collect(),
    )
}
