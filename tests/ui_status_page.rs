//! The live status page on the admin listener, in a real headless browser (Debian's `chromium`;
//! `.ci/run` installs it): it loads with no external assets, shows every pool and backend, refreshes
//! itself from `/status` without a reload, and its figures follow the traffic. The test also takes
//! the README's screenshot (written to `docs/status-page.png` when it is missing or when
//! `OKOME_UPDATE_SCREENSHOT=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::browser::chromium;
use common::embedded::{self, TestEdge};
use common::*;
use okome_sim::SimKind;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs headless chromium on `url` with `extra` flags (`--dump-dom`, `--screenshot=…`), lets the
/// page's scripts run for `budget_ms` of virtual time, and returns its stdout.
fn headless(url: &str, budget_ms: u32, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,720",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The text content of the element with `id` in a dumped DOM (no nested tags expected).
fn text_of(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').map_or(0, |i| i + 1);
    let end = rest[start..].find('<').map_or(rest.len(), |i| start + i);
    rest[start..end].trim().to_owned()
}

fn number(dom: &str, id: &str) -> u64 {
    let t = text_of(dom, id);
    t.parse()
        .unwrap_or_else(|_| panic!("#{id} is {t:?}, not a number"))
}

async fn stream(edge: &TestEdge, path: &str, body: &str, n: usize) {
    for _ in 0..n {
        let resp = raw(edge.addr, &post(path, body)).await;
        assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    }
}

const CHAT: &str = r#"{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
const OLLAMA: &str = r#"{"model":"llama3.2:latest","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":4}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_pools_and_updates_in_headless_chromium() {
    let v = sim(SimKind::Vllm, |_| {}).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    ))
    .await;
    stream(&edge, "/v1/chat/completions", CHAT, 3).await;
    stream(&edge, "/api/chat", OLLAMA, 2).await;

    // The page itself: self-contained (no external scripts, styles or fonts).
    let html = reqwest::get(edge.admin_url("/ui"))
        .await
        .expect("GET /ui")
        .text()
        .await
        .expect("html");
    for external in [
        "src=\"http",
        "href=\"http",
        "@import",
        "url(http",
        "src=\"//",
    ] {
        assert!(
            !html.contains(external),
            "page loads an external asset: {external}"
        );
    }
    let root = reqwest::get(edge.admin_url("/")).await.expect("GET /");
    assert_eq!(root.status(), 200);

    // First load: pools and backends rendered from /status, refreshed more than once in place.
    let url = edge.admin_url("/ui");
    let dom1 = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || headless(&url, 3500, &["--dump-dom".into()]))
            .await
            .expect("chromium task")
    };
    for p in ["vllm", "ollama"] {
        assert!(
            dom1.contains(&format!("data-pool=\"{p}\"")),
            "pool {p} missing:\n{dom1}"
        );
    }
    for b in [v.addr(), o.addr()] {
        assert!(
            dom1.contains(&format!("data-backend=\"{b}\"")),
            "backend {b} missing"
        );
    }
    assert!(dom1.contains("class=\"state s-ok\""), "no backend shown ok");
    assert_eq!(text_of(&dom1, "ready"), "ready");
    let polls = number(&dom1, "polls");
    assert!(
        polls >= 2,
        "the page polled /status {polls} time(s): no live refresh"
    );
    let before = number(&dom1, "requests-total");
    assert!(before >= 5, "requests-total {before}");
    assert_ne!(text_of(&dom1, "edge-ttft"), "– / –", "no live TTFT shown");

    // More traffic: a second load shows the new figures.
    stream(&edge, "/v1/chat/completions", CHAT, 4).await;
    let shot_dir = tempfile::tempdir().expect("tempdir");
    let shot = shot_dir.path().join("status-page.png");
    let dom2 = {
        let url = url.clone();
        let arg = format!("--screenshot={}", shot.display());
        tokio::task::spawn_blocking(move || {
            let dom = headless(&url, 2500, &["--dump-dom".into()]);
            headless(&url, 2500, &[arg]);
            dom
        })
        .await
        .expect("chromium task")
    };
    let after = number(&dom2, "requests-total");
    assert!(after >= before + 4, "requests-total {before} -> {after}");
    assert!(number(&dom2, "tokens-total") > number(&dom1, "tokens-total"));

    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "bad screenshot"
    );
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    if !committed.exists() || std::env::var_os("OKOME_UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(committed.parent().expect("docs dir")).expect("mkdir docs");
        std::fs::write(&committed, &png).expect("write docs/status-page.png");
    }
}
