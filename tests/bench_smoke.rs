//! Smoke test of the side-by-side benchmark harness: `benchmarks/compare.sh --smoke` with the
//! real binaries (tiny sizes, direct + okome only, a few seconds), so the harness keeps working.
//! It checks that every workload produced clean runs and that the report and plots were written;
//! it asserts no timings.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `okome-load`, `okome-report` and `bare-pingora` next to the `okome` binary under test; built
/// with the same cargo, profile and target directory when they are not there yet.
fn bench_bins(okome: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = okome.parent().expect("bin dir");
    let (load, report, pingora) = (
        dir.join("okome-load"),
        dir.join("okome-report"),
        dir.join("bare-pingora"),
    );
    if !load.exists() || !report.exists() || !pingora.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = dir.parent().expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "okome-benchmarks", "--bin", "okome-load"])
            .args([
                "--bin",
                "okome-report",
                "--bin",
                "bare-pingora",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building okome-benchmarks failed");
    }
    (load, report, pingora)
}

#[test]
fn compare_smoke_runs_every_workload() {
    for tool in ["bash", "jq", "curl"] {
        if !have(tool) {
            eprintln!("SKIPPED: benchmarks/compare.sh needs {tool}");
            return;
        }
    }
    let okome = PathBuf::from(env!("CARGO_BIN_EXE_okome"));
    let (load, report, pingora) = bench_bins(&okome);
    let out = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let res = Command::new("bash")
        .arg(root.join("benchmarks/compare.sh"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .env("OKOME_BIN", &okome)
        .env("LOAD_BIN", &load)
        .env("REPORT_BIN", &report)
        .env("PINGORA_BIN", &pingora)
        .output()
        .expect("run compare.sh");
    let log = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "compare.sh --smoke failed:\n{log}");

    let runs = std::fs::read_to_string(out.path().join("runs.jsonl")).expect("runs.jsonl");
    let runs: Vec<serde_json::Value> = runs
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON record"))
        .collect();
    let wanted = if have("oha") || have("wrk") {
        vec!["a", "b", "c", "d"]
    } else {
        vec!["a", "b", "d"]
    };
    for w in wanted {
        for c in ["direct", "pingora", "okome"] {
            let sel: Vec<_> = runs.iter().filter(|r| r["w"] == w && r["c"] == c).collect();
            assert!(!sel.is_empty(), "no {w}/{c} run:\n{log}");
            for r in sel {
                let l = &r["load"];
                assert_eq!(
                    l["errors"].as_f64(),
                    Some(0.0),
                    "{w}/{c} errors: {r}\n{log}"
                );
                if w == "c" {
                    assert!(l["rps"].as_f64().unwrap_or(0.0) > 0.0, "{w}/{c}: {r}");
                } else {
                    assert!(l["streams"].as_u64().unwrap_or(0) > 0, "{w}/{c}: {r}");
                    assert!(l["tokens"].as_u64().unwrap_or(0) > 0, "{w}/{c}: {r}");
                }
                if w == "a" || w == "b" {
                    assert_eq!(l["streams"], r["streams"], "{w}/{c} lost streams: {r}");
                }
            }
        }
    }
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).expect("RESULTS.md");
    assert!(md.contains("| okome |"), "{md}");
    for png in ["ttft_cdf.png", "gap_cdf.png", "rss_vs_streams.png"] {
        let len = std::fs::metadata(out.path().join(png)).map_or(0, |m| m.len());
        assert!(len > 100, "{png} missing or empty");
    }
}
