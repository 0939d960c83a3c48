//! `okome-load`: a streaming load generator over raw HTTP/1.1.
//!
//! Closed loop (default): `--concurrency` connections each send `--requests` streamed requests
//! back to back (or until `--duration`). Open loop: `--rate` new streams per second for
//! `--duration`, each on its own tokio task, whatever the server's speed. Every stream is timed
//! as its bytes arrive on the socket: TTFT (request written → first token line), every gap
//! between token lines (SSE `data: {` lines or NDJSON `{` lines), per-stream jitter (standard
//! deviation of that stream's gaps) and total time, into HDR histograms. Prints one JSON object;
//! `--cdf` adds percentile curves for plots. One process holds tens of thousands of streams
//! (one task each; `--source-ips` spreads client sockets over 127.0.0.x to avoid running out of
//! ephemeral ports). `--tls-ca` loads an HTTPS target (HTTP/1.1 over TLS, a full handshake per
//! stream); TTFT then counts from the request's write after the handshake, and `connect_ms` holds
//! TCP connect + handshake.

use clap::Parser;
use hdrhistogram::Histogram;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Streaming load: TTFT, inter-token gaps, jitter and total time as the client sees them.
#[derive(Parser, Debug)]
#[command(name = "okome-load", version, about)]
struct Args {
    /// Target `IP:PORT` (the engine itself, or a proxy).
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
    /// Concurrent connections (closed loop).
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Requests per connection (closed loop; ignored when `--duration` is set).
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Extra request header, `Name: value` (repeatable), e.g. an API key.
    #[arg(long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Open loop: start this many streams per second (for `--duration`), each on its own task.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Run for this long (open loop: arrivals stop then and running streams finish; closed
    /// loop: connections stop starting new requests), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Spread the closed-loop connections' first requests over this long (avoids a SYN flood
    /// against listen backlogs at 10,000 streams), e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    ramp: Duration,
    /// Stream framing to count tokens in: `sse` (`data: {` lines), `ndjson` (`{` lines), or
    /// `auto` (both).
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Bind client sockets to 127.0.0.2 .. 127.0.0.(1+N), round robin (0: let the kernel pick).
    #[arg(long, default_value_t = 0)]
    source_ips: u8,
    /// Add percentile curves (`ttft_cdf`, `gap_cdf`: `[percentile, ms]` pairs) to the output.
    #[arg(long)]
    cdf: bool,
    /// Print the first failures' messages to stderr (at most this many).
    #[arg(long, default_value_t = 5)]
    show_errors: u64,
    /// Speak TLS to the target, trusting the CA certificates (PEM) in this file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Name sent as SNI and checked against the target's certificate (also the `Host` header);
    /// default: the target's IP.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_name: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Auto,
    Sse,
    Ndjson,
}

/// Per-task histograms and counters, merged at the end.
struct Stats {
    connect: Histogram<u64>,
    ttft: Histogram<u64>,
    gaps: Histogram<u64>,
    jitter: Histogram<u64>,
    total: Histogram<u64>,
    streams: u64,
    errors: u64,
    tokens: u64,
    bytes: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            connect: hist(),
            ttft: hist(),
            gaps: hist(),
            jitter: hist(),
            total: hist(),
            streams: 0,
            errors: 0,
            tokens: 0,
            bytes: 0,
        }
    }

    fn record(&mut self, s: &StreamTimes) {
        self.streams += 1;
        self.tokens += s.tokens;
        self.bytes += s.bytes;
        let _ = self.connect.record(us(s.connect));
        let _ = self.ttft.record(us(s.ttft));
        let _ = self.total.record(us(s.total));
        if s.gap_n > 0 {
            let _ = self.jitter.record(s.jitter_us().round().max(1.0) as u64);
        }
    }

    fn merge(&mut self, o: &Stats) {
        let _ = self.connect.add(&o.connect);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.gaps.add(&o.gaps);
        let _ = self.jitter.add(&o.jitter);
        let _ = self.total.add(&o.total);
        self.streams += o.streams;
        self.errors += o.errors;
        self.tokens += o.tokens;
        self.bytes += o.bytes;
    }
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 100_000_000)
}

fn hist() -> Histogram<u64> {
    // Microseconds, 1 us .. 100 s, 3 significant digits. Valid bounds: cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// What one stream measured.
struct StreamTimes {
    /// TCP connect, plus the TLS handshake on an HTTPS target.
    connect: Duration,
    ttft: Duration,
    total: Duration,
    tokens: u64,
    bytes: u64,
    gap_n: u64,
    gap_sum: f64,
    gap_sq: f64,
}

impl StreamTimes {
    /// Standard deviation of this stream's gaps, in microseconds.
    fn jitter_us(&self) -> f64 {
        let n = self.gap_n as f64;
        let mean = self.gap_sum / n;
        (self.gap_sq / n - mean * mean).max(0.0).sqrt()
    }
}

struct Shared {
    args: Args,
    request: Vec<u8>,
    next_ip: AtomicUsize,
    errors_shown: AtomicU64,
    totals: Mutex<Stats>,
    tls: Option<Tls>,
}

/// What a TLS stream needs: the client config (shared) and the name to ask for and check.
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

fn tls_setup(ca: &Path, name: Option<&str>, target: SocketAddr) -> Result<Tls, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    // ring, as the edge uses: no process-wide default provider to pick.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The request is written as HTTP/1.1: say so, or an h2-capable listener may pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match name {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| format!("{n}: {e}"))?,
        None => ServerName::IpAddress(target.ip().into()),
    };
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tls = match &args.tls_ca {
        Some(ca) => match tls_setup(ca, args.tls_name.as_deref(), args.target) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("okome-load: TLS: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    let host = match &args.tls_name {
        Some(n) => format!("{n}:{}", args.target.port()),
        None => args.target.to_string(),
    };
    let extra: String = args.headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
        args.path,
        host,
        args.body.len(),
        args.body
    )
    .into_bytes();
    let sh = Arc::new(Shared {
        args,
        request,
        next_ip: AtomicUsize::new(0),
        errors_shown: AtomicU64::new(0),
        totals: Mutex::new(Stats::new()),
        tls,
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut peak = 0usize;
    if let Some(rate) = sh.args.rate {
        // Open loop: arrivals on a fixed schedule, independent of completions.
        let dur = sh.args.duration.unwrap_or(Duration::from_secs(10));
        let n = (rate * dur.as_secs_f64()).round() as u64;
        let live = Arc::new(AtomicUsize::new(0));
        for i in 0..n {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            let (sh, live) = (sh.clone(), live.clone());
            peak = peak.max(live.fetch_add(1, Ordering::Relaxed) + 1);
            tasks.push(tokio::spawn(async move {
                let mut st = Stats::new();
                one_recorded(&sh, &mut st).await;
                live.fetch_sub(1, Ordering::Relaxed);
                sh.totals.lock().await.merge(&st);
            }));
        }
    } else {
        let c = sh.args.concurrency.max(1);
        peak = c;
        for i in 0..c {
            let sh = sh.clone();
            let delay = sh.args.ramp.mul_f64(i as f64 / c as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut st = Stats::new();
                let mut done = 0usize;
                loop {
                    match sh.args.duration {
                        Some(d) if started.elapsed() >= d => break,
                        None if done >= sh.args.requests => break,
                        _ => {}
                    }
                    one_recorded(&sh, &mut st).await;
                    done += 1;
                }
                sh.totals.lock().await.merge(&st);
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let t = sh.totals.lock().await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let summary = |h: &Histogram<u64>| {
        serde_json::json!({"p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99),
            "p999": ms(h, 0.999), "max": ms(h, 1.0), "mean": h.mean() / 1e3, "count": h.len()})
    };
    let mut out = serde_json::json!({
        "target": sh.args.target.to_string(),
        "mode": if sh.args.rate.is_some() { "open" } else { "closed" },
        "concurrency": sh.args.concurrency,
        "rate": sh.args.rate,
        "peak_streams": peak,
        "streams": t.streams,
        "errors": t.errors,
        "tokens": t.tokens,
        "bytes": t.bytes,
        "seconds": secs,
        "tokens_per_sec": t.tokens as f64 / secs,
        "tls": sh.tls.is_some(),
        "connect_ms": summary(&t.connect),
        "ttft_ms": summary(&t.ttft),
        "gap_ms": summary(&t.gaps),
        "jitter_ms": summary(&t.jitter),
        "total_ms": summary(&t.total),
    });
    if sh.args.cdf {
        let curve = |h: &Histogram<u64>| {
            let qs = [
                0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.5,
                99.0, 99.5, 99.9, 99.99, 100.0,
            ];
            qs.iter()
                .map(|q| serde_json::json!([q, ms(h, q / 100.0)]))
                .collect::<Vec<_>>()
        };
        out["ttft_cdf"] = serde_json::json!(curve(&t.ttft));
        out["gap_cdf"] = serde_json::json!(curve(&t.gaps));
    }
    println!("{out}");
}

async fn one_recorded(sh: &Shared, st: &mut Stats) {
    match one(sh, &mut st.gaps).await {
        Ok(s) => st.record(&s),
        Err(e) => {
            st.errors += 1;
            if sh.errors_shown.fetch_add(1, Ordering::Relaxed) < sh.args.show_errors {
                eprintln!("request failed: {e}");
            }
        }
    }
}

async fn connect(sh: &Shared) -> std::io::Result<TcpStream> {
    if sh.args.source_ips == 0 || !sh.args.target.is_ipv4() {
        return TcpStream::connect(sh.args.target).await;
    }
    let i = sh.next_ip.fetch_add(1, Ordering::Relaxed) % sh.args.source_ips as usize;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)),
        0,
    ))?;
    sock.connect(sh.args.target).await
}

/// One streamed request on a fresh connection (TLS when asked); gaps go straight into `gaps`.
async fn one(sh: &Shared, gaps: &mut Histogram<u64>) -> std::io::Result<StreamTimes> {
    let t0 = Instant::now();
    let s = connect(sh).await?;
    s.set_nodelay(true)?;
    match &sh.tls {
        None => exchange(sh, s, gaps, t0).await,
        Some(tls) => {
            let s = tls.connector.connect(tls.name.clone(), s).await?;
            exchange(sh, s, gaps, t0).await
        }
    }
}

/// Write the request, time the streamed response until the server closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    mut s: S,
    gaps: &mut Histogram<u64>,
    t0: Instant,
) -> std::io::Result<StreamTimes> {
    let start = Instant::now();
    s.write_all(&sh.request).await?;
    // Small buffer: a stream's chunks are small, and 10,000 streams must fit in memory.
    let mut buf = vec![0u8; 8 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    let mut st = StreamTimes {
        connect: start - t0,
        ttft: Duration::ZERO,
        total: Duration::ZERO,
        tokens: 0,
        bytes: 0,
        gap_n: 0,
        gap_sum: 0.0,
        gap_sq: 0.0,
    };
    let mut in_body = false;
    let (sse, ndjson) = match sh.args.format {
        Format::Auto => (true, true),
        Format::Sse => (true, false),
        Format::Ndjson => (false, true),
    };
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the body is what came before.
            Err(e) if in_body && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        st.bytes += n as u64;
        carry.extend_from_slice(&buf[..n]);
        if !in_body {
            match memchr::memmem::find(&carry, b"\r\n\r\n") {
                Some(p) => {
                    if !carry.starts_with(b"HTTP/1.1 200") && !carry.starts_with(b"HTTP/1.0 200") {
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
            let token =
                (sse && line.starts_with(b"data: {") && !line.starts_with(b"data: {\"error\""))
                    || (ndjson && line.starts_with(b"{") && !line.starts_with(b"{\"error\""));
            if token {
                st.tokens += 1;
                match last {
                    None => st.ttft = now - start,
                    Some(prev) => {
                        let g = now - prev;
                        let _ = gaps.record(us(g));
                        let g = g.as_secs_f64() * 1e6;
                        st.gap_n += 1;
                        st.gap_sum += g;
                        st.gap_sq += g * g;
                    }
                }
                last = Some(now);
            }
        }
        carry.drain(..consumed);
    }
    if st.tokens == 0 {
        return Err(std::io::Error::other("no token in the response"));
    }
    st.total = start.elapsed();
    Ok(st)
}
