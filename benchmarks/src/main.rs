//! `okome-load`: a closed-loop streaming load generator.
//!
//! N connections each send requests back to back over raw HTTP/1.1 and time, per stream, the
//! first token (TTFT) and every gap between token events (SSE `data:` lines or NDJSON lines) as
//! they arrive on the socket. Prints percentiles as JSON. Run it against an engine directly and
//! through the edge to see what the proxy adds.

use clap::Parser;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Closed-loop streaming load: TTFT and inter-token gaps as the client sees them.
#[derive(Parser, Debug)]
#[command(name = "okome-load", version, about)]
struct Args {
    /// Target `IP:PORT` (the engine itself, or the edge).
    #[arg(long)]
    target: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// JSON request body.
    #[arg(
        long,
        default_value = r#"{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#
    )]
    body: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Requests per connection.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Extra request header, `Name: value` (repeatable), e.g. an API key.
    #[arg(long = "header", value_name = "HEADER")]
    headers: Vec<String>,
}

#[derive(Default)]
struct Totals {
    ttft: Option<Histogram<u64>>,
    gaps: Option<Histogram<u64>>,
    streams: u64,
    errors: u64,
    tokens: u64,
}

fn hist() -> Histogram<u64> {
    // Microseconds, 1 us .. 100 s, 3 significant digits. Valid bounds: cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| unreachable!())
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let totals = Arc::new(Mutex::new(Totals {
        ttft: Some(hist()),
        gaps: Some(hist()),
        ..Totals::default()
    }));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, totals) = (args.clone(), totals.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ttft, mut gaps) = (hist(), hist());
            let (mut ok, mut err, mut toks) = (0u64, 0u64, 0u64);
            for _ in 0..args.requests {
                match one(&args).await {
                    Ok((t, g)) => {
                        ok += 1;
                        toks += g.len() as u64 + 1;
                        let _ = ttft.record(t.as_micros() as u64);
                        for gap in g {
                            let _ = gaps.record(gap.as_micros().max(1) as u64);
                        }
                    }
                    Err(e) => {
                        err += 1;
                        eprintln!("request failed: {e}");
                    }
                }
            }
            let mut t = totals.lock().await;
            if let Some(h) = t.ttft.as_mut() {
                let _ = h.add(&ttft);
            }
            if let Some(h) = t.gaps.as_mut() {
                let _ = h.add(&gaps);
            }
            t.streams += ok;
            t.errors += err;
            t.tokens += toks;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = totals.lock().await;
    let pct = |h: &Option<Histogram<u64>>, q: f64| {
        h.as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3)
    };
    let out = serde_json::json!({
        "target": args.target.to_string(),
        "concurrency": args.concurrency,
        "streams": t.streams,
        "errors": t.errors,
        "tokens": t.tokens,
        "seconds": started.elapsed().as_secs_f64(),
        "ttft_ms": {"p50": pct(&t.ttft, 0.5), "p90": pct(&t.ttft, 0.9), "p99": pct(&t.ttft, 0.99), "max": pct(&t.ttft, 1.0)},
        "gap_ms": {"p50": pct(&t.gaps, 0.5), "p90": pct(&t.gaps, 0.9), "p99": pct(&t.gaps, 0.99), "max": pct(&t.gaps, 1.0)},
    });
    println!("{out}");
}

/// One streamed request on a fresh connection; returns TTFT and the gaps between token lines.
async fn one(args: &Args) -> std::io::Result<(Duration, Vec<Duration>)> {
    let mut s = TcpStream::connect(args.target).await?;
    s.set_nodelay(true)?;
    let extra: String = args.headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
        args.path,
        args.target,
        args.body.len(),
        args.body
    );
    let start = Instant::now();
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    let mut ttft = None;
    let mut gaps = Vec::new();
    let mut in_body = false;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        carry.extend_from_slice(&buf[..n]);
        if !in_body {
            match memchr::memmem::find(&carry, b"\r\n\r\n") {
                Some(p) => {
                    if !carry.starts_with(b"HTTP/1.1 200") {
                        return Err(std::io::Error::other(
                            String::from_utf8_lossy(&carry[..p]).to_string(),
                        ));
                    }
                    carry.drain(..p + 4);
                    in_body = true;
                }
                None => continue,
            }
        }
        // Count token lines completed by this read (chunk-size lines are short hex; skip them).
        let mut consumed = 0;
        while let Some(nl) = memchr::memchr(b'\n', &carry[consumed..]) {
            let line = &carry[consumed..consumed + nl];
            consumed += nl + 1;
            let token = (line.starts_with(b"data: {") && !line.starts_with(b"data: {\"error\""))
                || line.starts_with(b"{\"model\"");
            if token {
                match last {
                    None => ttft = Some(now - start),
                    Some(prev) => gaps.push(now - prev),
                }
                last = Some(now);
            }
        }
        carry.drain(..consumed);
    }
    let ttft = ttft.ok_or_else(|| std::io::Error::other("no token in the response"))?;
    Ok((ttft, gaps))
}
