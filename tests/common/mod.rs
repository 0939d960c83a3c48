//! Shared harness for the edge's integration tests: real sockets, the real `okome` binary,
//! in-process simulators.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

pub mod browser;
pub mod embedded;
pub mod llamacpp;
pub mod pki;
pub mod prom;
pub mod python;

use okome_sim::{SimConfig, SimHandle, SimKind};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; the edge binds it right after).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A simulator of `kind` on a free port, tuned by `tweak`.
pub async fn sim(kind: SimKind, tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig::new(kind);
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.prefill = Duration::from_millis(5);
    c.tokens_per_second = 200.0;
    c.default_max_tokens = 8;
    tweak(&mut c);
    okome_sim::start(c).await.expect("start sim")
}

/// A running `okome edge` process; killed on drop.
pub struct EdgeProc {
    child: Child,
    /// Client listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Where its config lives.
    pub dir: tempfile::TempDir,
    /// Path of the log file (stderr of the edge).
    pub log: std::path::PathBuf,
}

impl EdgeProc {
    /// `http://IP:PORT` of the client listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://IP:PORT` of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal (`TERM`, `QUIT`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Starts `okome edge --upgrade` on this edge's config: it takes the listeners over once
    /// this one gets SIGQUIT. Returns once it waits for them (its upgrade socket exists).
    pub async fn start_upgrade(&self) -> EdgeProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("edge.log");
        let child = Command::new(env!("CARGO_BIN_EXE_okome"))
            .args(["edge", "--upgrade", "-c"])
            .arg(self.dir.path().join("edge.yaml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn okome edge --upgrade");
        let p = EdgeProc {
            child,
            addr: self.addr,
            admin: self.admin,
            dir,
            log,
        };
        let sock = self.dir.path().join("upgrade.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "the new edge never waited for the listeners; log:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p
    }

    /// Waits up to `limit` for the process to exit; whether it did.
    pub async fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The edge's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape_metric(self.admin, name, labels).await
    }
}

/// Scrapes an admin listener's `/metrics` and sums `name`'s samples that carry all `labels`.
pub async fn scrape_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    sum_metric(&text, name, labels)
}

/// Sums the samples of `name` in Prometheus text that carry all `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the config (listeners and admin on free ports, then `yaml_body`) and starts the edge;
/// returns once its client listener accepts connections. A port taken between picking it and the
/// edge binding it (other tests run in parallel) is retried on fresh ports.
pub async fn start_edge(yaml_body: &str) -> EdgeProc {
    start_edge_with_grace(yaml_body, "1s").await
}

/// [`start_edge`] with another `server.grace_period`.
pub async fn start_edge_with_grace(yaml_body: &str, grace: &str) -> EdgeProc {
    let mut last_log = String::new();
    for _ in 0..5 {
        match try_start_edge(yaml_body, grace).await {
            Ok(p) => return p,
            Err(log) => last_log = log,
        }
    }
    panic!("edge did not start; log:\n{last_log}");
}

/// One start attempt; `Err(log)` when the edge exited because a port was taken.
async fn try_start_edge(yaml_body: &str, grace: &str) -> Result<EdgeProc, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let yaml = format!(
        "listeners:\n  - address: {addr}\nadmin:\n  address: {admin}\nserver:\n  threads: 2\n  grace_period: {grace}\n  upgrade_sock: {}\n{yaml_body}",
        dir.path().join("upgrade.sock").display()
    );
    let cfg = dir.path().join("edge.yaml");
    std::fs::write(&cfg, yaml).expect("write config");
    let log = dir.path().join("edge.log");
    let child = Command::new(env!("CARGO_BIN_EXE_okome"))
        .args(["edge", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn okome edge");
    let mut p = EdgeProc {
        child,
        addr,
        admin,
        dir,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(_)) = p.child.try_wait() {
            let log = p.log_text();
            assert!(
                log.contains("Address already in use"),
                "edge exited; log:\n{log}"
            );
            return Err(log);
        }
        assert!(
            Instant::now() < deadline,
            "edge did not start; log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The listener answered; make sure it is this edge, not another test's process that took
    // the port while this edge was exiting over it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Ok(Some(_)) = p.child.try_wait() {
        return Err(p.log_text());
    }
    Ok(p)
}

/// A pool entry for the YAML, e.g. `pool("vllm", "vllm", &[addr])`.
pub fn pool(name: &str, kind: &str, backends: &[SocketAddr]) -> String {
    let b: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "  {name}:\n    kind: {kind}\n    backends: [{}]\n    health_check: {{ interval: 200ms, timeout: 150ms }}\n",
        b.join(", ")
    )
}

/// [`raw`] with an owned request, for spawned tasks.
pub async fn raw_owned(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    raw(addr, &request).await
}

/// Raw HTTP/1.1 request over a fresh TCP connection; returns the whole response (head + body
/// bytes as received, chunked framing included) once the server closes or `Connection: close`.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    out
}

/// Builds a POST with a JSON body and `Connection: close`.
pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Decodes a chunked HTTP/1.1 body (or returns a plain one) from a raw response.
pub fn body_of(resp: &[u8]) -> Vec<u8> {
    let Some(pos) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let head = String::from_utf8_lossy(&resp[..pos]).to_ascii_lowercase();
    let mut rest = &resp[pos + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return rest.to_vec();
    }
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2.min(rest.len() - eol - 2 - size)..];
    }
    out
}

/// The status code of a raw response.
pub fn status_of(resp: &[u8]) -> u16 {
    String::from_utf8_lossy(resp)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A header's value from a raw response (first match, name case-insensitive).
pub fn header_of(resp: &[u8], name: &str) -> Option<String> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    String::from_utf8_lossy(&resp[..end])
        .lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
}

/// Polls `f` until it holds or `secs` pass; returns whether it held.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A streaming OpenAI chat request for `model`.
pub fn chat(model: &str, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// A streaming Ollama native chat request.
pub fn ollama_chat(model: &str, num_predict: u32) -> String {
    format!(
        r#"{{"model":"{model}","options":{{"num_predict":{num_predict}}},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// Tokens in an OpenAI SSE body: chat deltas with non-empty `content` (not the role preamble),
/// read as JSON whatever the engine's spacing or key order.
pub fn sse_tokens(body: &str) -> usize {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count()
}

/// Asserts an OpenAI-shaped error body `{"error":{"message","type","param":null,"code"}}`.
pub fn assert_openai_error(body: &[u8], code: &str) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(err["type"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(err.get("param").is_some_and(|p| p.is_null()), "{v}");
    assert_eq!(err["code"], code, "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
}

/// Asserts Ollama's (and TF Serving's) `{"error":"..."}` body.
pub fn assert_ollama_error(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
}

/// JSON keys whose values differ per request (ids, clocks, measured durations).
pub const VOLATILE_KEYS: &[&str] = &[
    "id",
    "created",
    "created_at",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
];

/// Replaces the value after each `"key":` of [`VOLATILE_KEYS`] (a string or a number) with a
/// placeholder; every other byte is kept as is.
pub fn normalize(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b).to_string();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < s.len() {
        for k in VOLATILE_KEYS {
            let pat = format!("\"{k}\":");
            if s[i..].starts_with(&pat) {
                out.push_str(&pat);
                i += pat.len();
                let rest = &s[i..];
                if let Some(r) = rest.strip_prefix('"') {
                    let end = r.find('"').map_or(rest.len(), |e| e + 2);
                    out.push_str("\"X\"");
                    i += end;
                } else {
                    let end = rest
                        .find(|c: char| {
                            !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
                        })
                        .unwrap_or(rest.len());
                    out.push('0');
                    i += end;
                }
                continue 'outer;
            }
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Reads a streamed response whole: (body, reads that carried bytes, time from the first such
/// read to the last). A broken stream ends the read where it broke.
pub async fn read_stream(resp: reqwest::Response) -> (Vec<u8>, usize, Duration) {
    use futures::StreamExt;
    let mut s = resp.bytes_stream();
    let (mut body, mut reads, mut first, mut last) = (Vec::new(), 0, None, None);
    while let Some(chunk) = s.next().await {
        let Ok(chunk) = chunk else { break };
        if chunk.is_empty() {
            continue;
        }
        reads += 1;
        let now = std::time::Instant::now();
        first.get_or_insert(now);
        last = Some(now);
        body.extend_from_slice(&chunk);
    }
    let spread = last.zip(first).map(|(l, f)| l - f).unwrap_or_default();
    (body, reads, spread)
}
