//! Request smuggling and malformed input, over raw TCP against the real `okome edge` binary.
//!
//! Each test starts its own echo engine (below) and edge, writes raw bytes on a fresh
//! connection, checks what the edge answered (and whether it closed the connection), then checks
//! in the engine's log what reached it. Every test ends with a good request that must get 200.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::assert_openai_error;
use common::embedded::{self, TestEdge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A good chat request body (66 bytes).
const GOOD: &str = r#"{"model":"echo-model","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT: &str = "/v1/chat/completions";
/// How long we wait for a response.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);
/// How long the edge has to close a connection after its response.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Lets a request the edge may still be forwarding land in the engine's log.
const SETTLE: Duration = Duration::from_millis(300);
/// The echo engine's answer to `GET /v1/models`.
const MODELS: &str = concat!(
    r#"{"object":"list","data":[{"id":"echo-model","object":"model","created":0,"#,
    r#""owned_by":"echo"}]}"#
);
/// The edge's pools and routes; `{echo}` is the echo engine's address.
const CONFIG: &str = r#"pools:
  echo:
    kind: openai
    backends: ["{echo}"]
    models: [echo-model]
    health_check: { interval: 200ms, timeout: 150ms }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    pool: echo
    filters:
      - { type: allow_models, models: ["echo-model"] }
"#;

// ---------------------------------------------------------------------------------------------
// The echo engine
// ---------------------------------------------------------------------------------------------

/// One request as the engine received it. It is logged as soon as its head arrives
/// (`complete` turns true once the whole body did), so a forwarded head counts as "seen".
#[derive(Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    complete: bool,
}

impl Seen {
    /// Every value of header `name` (case-insensitive), in order.
    fn values(&self, name: &str) -> Vec<&str> {
        let named = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        named.map(|(_, v)| v.as_str()).collect()
    }

    fn is_probe(&self) -> bool {
        self.method == "GET" && self.target == "/v1/models"
    }
}

impl std::fmt::Debug for Seen {
    /// Shows the body as text, cut to 200 bytes (some bodies are 40 MiB).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        let (m, t, h, c, n) = (
            &self.method,
            &self.target,
            &self.headers,
            self.complete,
            self.body.len(),
        );
        write!(f, "{m} {t} {h:?} complete={c} body({n})={body:?}")
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An OpenAI-ish engine that logs every request and answers `{"ok":true}` (model list on
/// `GET /v1/models`); keep-alive, Content-Length and chunked bodies.
struct Echo {
    addr: SocketAddr,
    log: Log,
}

impl Echo {
    async fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = l.local_addr().expect("echo addr");
        let log = Log::default();
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, shared.clone()));
            }
        });
        Echo { addr, log }
    }

    /// Every request so far except the health/discovery probes (`GET /v1/models`).
    fn requests(&self) -> Vec<Seen> {
        let log = self.log.lock().expect("echo log");
        log.iter().filter(|s| !s.is_probe()).cloned().collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more of `s` into `buf`; false at EOF or on an error.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(64 * 1024);
    matches!(s.read_buf(buf).await, Ok(n) if n > 0)
}

/// A complete chunked body at the start of `b`: (content, bytes used), or `None` if incomplete.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut out, mut at) = (Vec::new(), 0);
    loop {
        let eol = at + find(&b[at..], b"\r\n")?;
        let line = std::str::from_utf8(&b[at..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = eol + 2;
        if size == 0 {
            // Trailer fields up to the blank line.
            loop {
                let eol = at + find(&b[at..], b"\r\n")?;
                let blank = eol == at;
                at = eol + 2;
                if blank {
                    return Some((out, at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

/// Head fields as (name, trimmed value), order kept.
fn parse_fields<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    let fields = lines.filter_map(|l| l.split_once(':'));
    fields
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// First value of `name` in `fields`, lower-cased.
fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    let f = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
    f.map(|(_, v)| v.to_ascii_lowercase())
}

async fn serve(mut s: TcpStream, log: Log) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            if !fill(&mut s, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or_default().split(' ');
        let seen = Seen {
            method: start.next().unwrap_or_default().to_owned(),
            target: start.next().unwrap_or_default().to_owned(),
            headers: parse_fields(lines),
            body: Vec::new(),
            complete: false,
        };
        let chunked =
            field(&seen.headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: usize = field(&seen.headers, "content-length")
            .and_then(|v| v.split(',').next()?.trim().parse().ok())
            .unwrap_or(0);
        let close = field(&seen.headers, "connection").is_some_and(|v| v.contains("close"));
        let probe = seen.is_probe();
        let idx = {
            let mut l = log.lock().expect("echo log");
            l.push(seen);
            l.len() - 1
        };
        let body = loop {
            if chunked {
                if let Some((body, used)) = dechunk(&buf) {
                    buf.drain(..used);
                    break body;
                }
            } else if buf.len() >= length {
                break buf.drain(..length).collect();
            }
            if !fill(&mut s, &mut buf).await {
                return;
            }
        };
        {
            let mut l = log.lock().expect("echo log");
            l[idx].body = body;
            l[idx].complete = true;
        }
        let payload = if probe { MODELS } else { r#"{"ok":true}"# };
        let n = payload.len();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
        let resp = format!("{head}Content-Length: {n}\r\n\r\n{payload}");
        if s.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side: raw connections and responses
// ---------------------------------------------------------------------------------------------

/// A response read off the wire (body de-chunked).
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// What came next on a connection.
#[derive(Debug)]
enum Next {
    Resp(Resp),
    /// EOF or reset with no complete response pending (the bytes left over, if any).
    Closed(String),
    /// Nothing within the wait, connection still open.
    Silent,
}

/// A complete response at the start of `b` (1xx skipped by the caller); `eof` lets a body
/// without framing end at the end of `b`.
fn parse_response(b: &[u8], eof: bool) -> Option<(Resp, usize)> {
    let end = find(b, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&b[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let fields = parse_fields(head.split("\r\n").skip(1));
    let start = end + 4;
    let (body, used) = if status < 200 || status == 204 || status == 304 {
        (Vec::new(), start)
    } else if field(&fields, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let (body, n) = dechunk(&b[start..])?;
        (body, start + n)
    } else if let Some(n) = field(&fields, "content-length") {
        let n: usize = n.parse().ok()?;
        (b.get(start..start + n)?.to_vec(), start + n)
    } else if eof {
        (b[start..].to_vec(), b.len())
    } else {
        return None;
    };
    Some((Resp { status, head, body }, used))
}

/// One client connection to the edge. The write half stays open unless a test shuts it.
struct Conn {
    r: OwnedReadHalf,
    w: Option<OwnedWriteHalf>,
    /// A background writer (large requests); it keeps the write half open when done.
    writer: Option<JoinHandle<OwnedWriteHalf>>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect to edge");
        let (r, w) = s.into_split();
        Conn {
            r,
            w: Some(w),
            writer: None,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let w = self.w.as_mut().expect("write half");
        w.write_all(bytes).await.expect("write request");
    }

    /// Writes `bytes` in the background, ignoring write errors (the edge may answer and close
    /// before reading it all); then shuts the write half down if `half_close`.
    fn send_bg(&mut self, bytes: Vec<u8>, half_close: bool) {
        let mut w = self.w.take().expect("write half");
        self.writer = Some(tokio::spawn(async move {
            if w.write_all(&bytes).await.is_ok() && half_close {
                let _ = w.shutdown().await;
            }
            w
        }));
    }

    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            while let Some((resp, used)) = parse_response(&self.buf, false) {
                self.buf.drain(..used);
                if resp.status >= 200 {
                    return Next::Resp(resp);
                }
            }
            self.buf.reserve(64 * 1024);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.r.read_buf(&mut self.buf)).await {
                Err(_) => return Next::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return match parse_response(&self.buf, true) {
                        Some((resp, used)) if resp.status >= 200 => {
                            self.buf.drain(..used);
                            Next::Resp(resp)
                        }
                        _ => Next::Closed(String::from_utf8_lossy(&self.buf).into_owned()),
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next response; panics naming `case` if there is none within [`RESPONSE_WAIT`].
    async fn response(&mut self, case: &str) -> Resp {
        match self.next(RESPONSE_WAIT).await {
            Next::Resp(r) => r,
            other => panic!("{case}: expected a response, got {other:?}"),
        }
    }

    /// Asserts the edge closes the connection within [`CLOSE_WAIT`] with nothing more sent.
    async fn assert_closed(&mut self, case: &str) {
        match self.next(CLOSE_WAIT).await {
            Next::Closed(rest) if rest.is_empty() => {}
            other => panic!("{case}: expected the edge to close the connection, got {other:?}"),
        }
    }
}

/// `start` line, `fields`, blank line, `body`.
fn request(start: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{start}\r\n{}\r\n\r\n", fields.join("\r\n")).into_bytes();
    out.extend_from_slice(body);
    out
}

const HOST: &str = "Host: localhost";
const JSON: &str = "Content-Type: application/json";

/// `POST target HTTP/1.1` with Host, Content-Type, the body's Content-Length and `extra`.
fn post_to(target: &str, extra: &[&str], body: &str) -> Vec<u8> {
    let cl = format!("Content-Length: {}", body.len());
    let fields = [&[HOST, JSON, &cl], extra].concat();
    request(&format!("POST {target} HTTP/1.1"), &fields, body.as_bytes())
}

/// `POST /v1/chat/completions`, as [`post_to`].
fn chat(extra: &[&str], body: &str) -> Vec<u8> {
    post_to(CHAT, extra, body)
}

/// `body` as one chunk and the last chunk.
fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

// ---------------------------------------------------------------------------------------------
// The rig: one echo engine behind one edge
// ---------------------------------------------------------------------------------------------

/// An echo engine behind a fresh `okome edge` (the [`CONFIG`] route allows only `echo-model`).
struct Rig {
    echo: Echo,
    edge: TestEdge,
}

impl Rig {
    async fn start() -> Rig {
        let echo = Echo::start().await;
        let edge = embedded::edge(&CONFIG.replace("{echo}", &echo.addr.to_string())).await;
        Rig { echo, edge }
    }

    async fn conn(&self) -> Conn {
        Conn::open(self.edge.addr).await
    }

    /// What reached the engine (probes excluded), once in-flight requests had time to land.
    async fn engine(&self) -> Vec<Seen> {
        tokio::time::sleep(SETTLE).await;
        self.echo.requests()
    }

    async fn assert_engine_saw_nothing(&self, case: &str) {
        let seen = self.engine().await;
        assert!(seen.is_empty(), "{case}: the engine saw {seen:#?}");
    }

    /// The single request the engine saw: a complete chat POST with exactly `body`.
    async fn assert_engine_saw_one(&self, case: &str, body: &str) -> Seen {
        let seen = self.engine().await;
        assert_eq!(seen.len(), 1, "{case}: the engine saw {seen:#?}");
        let s = seen[0].clone();
        assert!(s.complete, "{case}: body never completed: {s:?}");
        assert_eq!(s.method, "POST", "{case}");
        assert_eq!(String::from_utf8_lossy(&s.body), body, "{case}: body");
        s
    }

    /// Sends `bytes` on a fresh connection and expects `status`; returns the response and the
    /// connection.
    async fn expect(&self, case: &str, bytes: &[u8], status: u16) -> (Resp, Conn) {
        let mut c = self.conn().await;
        c.send(bytes).await;
        let r = c.response(case).await;
        let log = self.edge.log_text();
        let tail = &log[log.char_indices().rev().nth(1500).map_or(0, |(i, _)| i)..];
        assert_eq!(
            r.status,
            status,
            "{case}: {}\n{}\nedge log tail:\n{tail}",
            r.head,
            String::from_utf8_lossy(&r.body)
        );
        (r, c)
    }

    /// A good request on a fresh connection still gets 200 and reaches the engine intact.
    async fn assert_still_serving(&self, case: &str) {
        let before = self.echo.requests().len();
        let case = format!("{case} (good request afterwards)");
        self.expect(&case, &chat(&["Connection: close"], GOOD), 200)
            .await;
        let seen = self.echo.requests();
        assert_eq!(seen.len(), before + 1, "{case}: {seen:#?}");
        assert_eq!(seen[before].body, GOOD.as_bytes(), "{case}");
    }
}

/// Starts a rig, sends `bytes` and expects `status`, nothing at the engine, and a good request
/// served afterwards. Returns the response.
async fn refused(case: &str, bytes: &[u8], status: u16) -> Resp {
    let rig = Rig::start().await;
    let (r, _) = rig.expect(case, bytes, status).await;
    rig.assert_engine_saw_nothing(case).await;
    rig.assert_still_serving(case).await;
    r
}

/// Starts a rig, sends `bytes` and expects 200, the engine to see just that request with body
/// [`GOOD`], and a good request served afterwards. Returns what the engine saw.
async fn served(case: &str, bytes: &[u8]) -> Seen {
    let rig = Rig::start().await;
    rig.expect(case, bytes, 200).await;
    let s = rig.assert_engine_saw_one(case, GOOD).await;
    rig.assert_still_serving(case).await;
    s
}

/// A fresh connection gets `bytes` (written in the background) and must be refused with one of
/// `statuses` or closed without an answer; nothing reaches the engine.
async fn refused_or_closed(case: &str, bytes: Vec<u8>, statuses: &[u16], half_close: bool) {
    let rig = Rig::start().await;
    let mut c = rig.conn().await;
    c.send_bg(bytes, half_close);
    match c.next(RESPONSE_WAIT).await {
        Next::Resp(r) => assert!(statuses.contains(&r.status), "{case}: {}", r.head),
        Next::Closed(_) => eprintln!("{case}: the edge closed the connection without a response"),
        Next::Silent => panic!("{case}: no response and the connection is still open"),
    }
    rig.assert_engine_saw_nothing(case).await;
    rig.assert_still_serving(case).await;
}

/// A test that `bytes` gets `status` (and the OpenAI error `code`) from a fresh edge, that
/// nothing reaches the engine, and that the edge keeps serving.
macro_rules! refuses {
    ($(#[doc = $doc:literal])* $name:ident, $case:literal,
     $bytes:expr => $status:literal $($code:literal)?) => {
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let _r = refused($case, &$bytes, $status).await;
            $(assert_openai_error(&_r.body, $code);)?
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The malformed requests (also fired together in the barrage of the last test)
// ---------------------------------------------------------------------------------------------

/// A Content-Length field line.
fn cl(value: impl std::fmt::Display) -> String {
    format!("Content-Length: {value}")
}

/// Content-Length 4 and chunked, in either order; the chunked body is [`GOOD`] followed by a
/// smuggled request that the route would forward (`/v1/` prefix) if it were parsed as one.
fn cl_te(te_first: bool) -> Vec<u8> {
    let (cl, te) = ("Content-Length: 4", "Transfer-Encoding: chunked");
    let (a, b) = if te_first { (te, cl) } else { (cl, te) };
    let body = chunked(GOOD) + "GET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    request(
        &format!("POST {CHAT} HTTP/1.1"),
        &[HOST, JSON, a, b],
        body.as_bytes(),
    )
}

/// [`GOOD`] with the given Content-Length field values instead of a single right one.
fn with_lengths(values: &[&str]) -> Vec<u8> {
    let lengths: Vec<String> = values.iter().map(cl).collect();
    let fields = [HOST, JSON]
        .into_iter()
        .chain(lengths.iter().map(String::as_str));
    let start = format!("POST {CHAT} HTTP/1.1");
    request(&start, &fields.collect::<Vec<_>>(), GOOD.as_bytes())
}

fn http10_chunked() -> Vec<u8> {
    let (start, body) = (format!("POST {CHAT} HTTP/1.0"), chunked(GOOD));
    request(
        &start,
        &[HOST, "Transfer-Encoding: chunked"],
        body.as_bytes(),
    )
}

fn without_host(version: &str) -> Vec<u8> {
    let start = format!("POST {CHAT} {version}");
    request(&start, &[JSON, &cl(GOOD.len())], GOOD.as_bytes())
}

fn absolute(authority: &str) -> Vec<u8> {
    post_to(&format!("http://{authority}{CHAT}"), &[], GOOD)
}

/// Declares [`GOOD`]'s length but sends only its first 30 bytes.
fn short_body() -> Vec<u8> {
    let mut r = chat(&[], GOOD);
    r.truncate(r.len() - (GOOD.len() - 30));
    r
}

/// [`GOOD`], then bytes past its Content-Length.
fn long_body() -> Vec<u8> {
    [chat(&[], GOOD), b"XYZ garbage\r\n\r\n".to_vec()].concat()
}

fn huge_uri() -> Vec<u8> {
    post_to(&format!("{CHAT}?q={}", "a".repeat(2 << 20)), &[], GOOD)
}

fn huge_header() -> Vec<u8> {
    chat(&[&format!("X-Big: {}", "a".repeat(2 << 20))], GOOD)
}

fn many_headers() -> Vec<u8> {
    let fields: Vec<String> = (0..300).map(|i| format!("X-H{i}: v")).collect();
    chat(&fields.iter().map(String::as_str).collect::<Vec<_>>(), GOOD)
}

fn deep_json() -> Vec<u8> {
    let (open, close) = ("[".repeat(100_000), "]".repeat(100_000));
    chat(
        &[],
        &format!(r#"{{"model":"echo-model","x":{open}{close}}}"#),
    )
}

/// A POST naming `forbidden-model`, with `Upgrade: x`.
fn forbidden_upgrade() -> Vec<u8> {
    chat(
        &["Upgrade: x"],
        &GOOD.replace("echo-model", "forbidden-model"),
    )
}

// ---------------------------------------------------------------------------------------------
// Framing: Content-Length and Transfer-Encoding
// ---------------------------------------------------------------------------------------------

/// Shared by cases 1 and 2: refused, or served once and the connection closed; nothing
/// smuggled, no request with both framings, at most the one chat request with the exact body.
async fn cl_and_te(case: &str, te_first: bool) {
    let rig = Rig::start().await;
    let mut c = rig.conn().await;
    c.send(&cl_te(te_first)).await;
    let r = c.response(case).await;
    match r.status {
        400 => eprintln!("{case}: the edge refused it with 400"),
        200 => {
            c.assert_closed(case).await;
            eprintln!("{case}: the edge served it with 200 and closed the connection");
        }
        s => panic!("{case}: expected 400, or 200 and a close; got {s}"),
    }
    let seen = rig.engine().await;
    let smuggled = seen.iter().any(|s| s.target.contains("smuggled"));
    assert!(!smuggled, "{case}: smuggled: {seen:#?}");
    let has_cl = |s: &Seen| !s.values("content-length").is_empty();
    let both = |s: &Seen| has_cl(s) && !s.values("transfer-encoding").is_empty();
    assert!(!seen.iter().any(both), "{case}: CL and TE: {seen:#?}");
    let exact = |s: &Seen| s.target == CHAT && s.body == GOOD.as_bytes();
    let at_most_one = seen.len() <= 1 && seen.iter().all(exact);
    assert!(at_most_one, "{case}: {seen:#?}");
    if r.status == 200 {
        assert_eq!(seen.len(), 1, "{case}: 200 but the engine saw {seen:#?}");
    }
    rig.assert_still_serving(case).await;
}

/// Case 1: Content-Length then Transfer-Encoding cannot smuggle a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_then_te_smuggles_nothing() {
    cl_and_te("case 1 (CL+TE)", false).await;
}

/// Case 2: Transfer-Encoding then Content-Length cannot smuggle a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_then_cl_smuggles_nothing() {
    cl_and_te("case 2 (TE+CL)", true).await;
}

/// Case 3: two different Content-Length fields are a framing error: 400 and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_lengths_are_refused() {
    let case = "case 3 (CL 4 + CL 66)";
    let rig = Rig::start().await;
    let bytes = with_lengths(&["4", &GOOD.len().to_string()]);
    let (_, mut c) = rig.expect(case, &bytes, 400).await;
    c.assert_closed(case).await;
    rig.assert_engine_saw_nothing(case).await;
    rig.assert_still_serving(case).await;
}

/// Case 4: identical duplicate Content-Length fields are served, and the engine gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_lengths_reach_the_engine_as_one() {
    let (case, n) = ("case 4 (CL 66 twice)", GOOD.len().to_string());
    let s = served(case, &with_lengths(&[&n, &n])).await;
    assert_eq!(s.values("content-length"), [n], "{case}: {s:#?}");
}

/// Case 5a: `Content-Length: 66, 66` is served and reaches the engine as a single plain value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_list_of_equal_values_is_normalized() {
    let (case, n) = ("case 5a (CL `66, 66`)", GOOD.len());
    let s = served(case, &with_lengths(&[&format!("{n}, {n}")])).await;
    assert_eq!(
        s.values("content-length"),
        [n.to_string()],
        "{case}: {s:#?}"
    );
}

refuses!(
    /// Case 5b: `Content-Length: 66, 67` is refused.
    content_length_list_of_different_values_is_refused, "case 5b (CL `66, 67`)",
    with_lengths(&[&format!("{}, {}", GOOD.len(), GOOD.len() + 1)]) => 400
);

refuses!(
    /// Case 6: obs-fold (a field line continued on the next line) is refused.
    obs_fold_is_refused, "case 6 (obs-fold)", chat(&["X-A: a", " b"], GOOD) => 400
);

/// Case 7: an HTTP/1.0 request with Transfer-Encoding has faulty framing: 400 and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_with_transfer_encoding_is_refused() {
    let case = "case 7 (HTTP/1.0 + chunked)";
    let rig = Rig::start().await;
    let (_, mut c) = rig.expect(case, &http10_chunked(), 400).await;
    c.assert_closed(case).await;
    rig.assert_engine_saw_nothing(case).await;
    rig.assert_still_serving(case).await;
}

// ---------------------------------------------------------------------------------------------
// Host and request target
// ---------------------------------------------------------------------------------------------

refuses!(
    /// Case 8a: HTTP/1.1 requires Host (RFC 9112 §3.2).
    http11_without_host_is_refused, "case 8a (HTTP/1.1, no Host)", without_host("HTTP/1.1") => 400
);

/// Case 8b: HTTP/1.0 without Host is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_is_served() {
    served("case 8b (HTTP/1.0, no Host)", &without_host("HTTP/1.0")).await;
}

/// Case 9a: an absolute-form target reaches the engine in origin form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_reaches_the_engine_in_origin_form() {
    let case = "case 9a (absolute-form, same authority)";
    let s = served(case, &absolute("localhost")).await;
    assert_eq!(s.target, CHAT, "{case}");
}

refuses!(
    /// Case 9b: an absolute-form target whose authority is not the Host is refused.
    absolute_form_with_another_authority_is_refused,
    "case 9b (absolute-form, other authority)", absolute("evil.example") => 400
);

// ---------------------------------------------------------------------------------------------
// Bodies that do not match their length, oversize heads
// ---------------------------------------------------------------------------------------------

/// Case 10: a body shorter than its Content-Length, then a half-close: 400 or a silent close,
/// and the truncated request never reaches the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_body_then_half_close_reaches_nothing() {
    refused_or_closed("case 10 (short body + FIN)", short_body(), &[400], true).await;
}

/// Case 11: bytes after the declared body are not forwarded; they are refused as a request of
/// their own, or the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_content_length_are_not_forwarded() {
    let case = "case 11 (body longer than CL)";
    let rig = Rig::start().await;
    let (_, mut c) = rig.expect(case, &long_body(), 200).await;
    match c.next(RESPONSE_WAIT).await {
        Next::Resp(r) => assert_eq!(r.status, 400, "{case}: garbage answered with {}", r.head),
        Next::Closed(_) => eprintln!("{case}: the edge closed the connection on the garbage"),
        Next::Silent => panic!("{case}: no answer to the garbage and the connection is open"),
    }
    rig.assert_engine_saw_one(case, GOOD).await;
    rig.assert_still_serving(case).await;
}

const TOO_BIG: &[u16] = &[400, 414, 431];

/// Case 12a: a 2 MiB request target is refused or cut, never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_line_is_refused() {
    refused_or_closed("case 12a (2 MiB URI)", huge_uri(), TOO_BIG, false).await;
}

/// Case 12b: a 2 MiB header value is refused or cut, never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_header_section_is_refused() {
    refused_or_closed("case 12b (2 MiB header)", huge_header(), TOO_BIG, false).await;
}

/// Case 12c: 300 header fields (Pingora parses at most 256) are refused or cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_are_refused() {
    refused_or_closed("case 12c (300 headers)", many_headers(), TOO_BIG, false).await;
}

// ---------------------------------------------------------------------------------------------
// JSON bodies and the model
// ---------------------------------------------------------------------------------------------

refuses!(
    /// Case 13a: a truncated JSON body gets an OpenAI `invalid_json` error.
    invalid_json_is_refused,
    "case 13a (invalid JSON)", chat(&[], r#"{"model":"echo-model","#) => 400 "invalid_json"
);

refuses!(
    /// Case 13b: JSON nested 100 000 deep is refused as `invalid_json`.
    deeply_nested_json_is_refused, "case 13b (deep JSON)", deep_json() => 400 "invalid_json"
);

refuses!(
    /// Case 13c: two `model` keys are ambiguous and refused.
    duplicate_model_keys_are_refused,
    "case 13c (duplicate model keys)", chat(&[], r#"{"model":"echo-model","model":"other"}"#) => 400
);

refuses!(
    /// Case 14a: `Upgrade:` on a POST does not skip the model allowlist.
    upgrade_header_does_not_bypass_the_allowlist,
    "case 14a (Upgrade + forbidden model)", forbidden_upgrade() => 403 "model_not_allowed"
);

/// Case 14b: an allowed POST with `Upgrade:` is served as a plain request, without the Upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_is_dropped_from_a_post() {
    let case = "case 14b (Upgrade + allowed model)";
    let s = served(case, &chat(&["Upgrade: x"], GOOD)).await;
    assert!(s.values("upgrade").is_empty(), "{case}: {s:#?}");
}

/// Case 14c: `Upgrade:` on a POST does not skip the body limit (16 MiB by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_does_not_bypass_the_body_limit() {
    let case = "case 14c (Upgrade + 40 MiB)";
    let rig = Rig::start().await;
    let body = GOOD.replace("hi", &"a".repeat(40 << 20));
    let mut c = rig.conn().await;
    c.send_bg(chat(&["Upgrade: x"], &body), false);
    let r = c.response(case).await;
    assert_eq!(r.status, 413, "{case}: {}", r.head);
    drop(c);
    rig.assert_engine_saw_nothing(case).await;
    rig.assert_still_serving(case).await;
}

refuses!(
    /// Case 15a: a request without a model on a model-restricted route is refused.
    absent_model_is_refused,
    "case 15a (no model)", chat(&[], r#"{"messages":[]}"#) => 400 "model_required"
);

refuses!(
    /// Case 15b: a null model on a model-restricted route is refused.
    null_model_is_refused,
    "case 15b (null model)", chat(&[], r#"{"model":null,"messages":[]}"#) => 400 "model_required"
);

refuses!(
    /// Case 16a: a dot-dot segment in the path is refused, not forwarded.
    dot_dot_segment_is_refused,
    "case 16a (/v1/../)", post_to("/v1/../v1/chat/completions", &[], GOOD) => 400
);

refuses!(
    /// Case 16b: a percent-encoded dot-dot segment is refused, not forwarded.
    encoded_dot_dot_is_refused, "case 16b (%2e%2e)", post_to("/v1/%2e%2e/x", &[], GOOD) => 400
);

refuses!(
    /// Case 16c: a percent-encoded slash is refused, not forwarded.
    encoded_slash_is_refused, "case 16c (%2F)", post_to("/v1/chat%2Fcompletions", &[], GOOD) => 400
);

// ---------------------------------------------------------------------------------------------
// After a barrage
// ---------------------------------------------------------------------------------------------

/// Case 17: after the malformed requests above (one connection each), the edge still serves
/// 50 good requests in a row on one keep-alive connection, and the engine sees exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_fifty_after_a_barrage() {
    let case = "case 17 (barrage, then 50 keep-alive)";
    let rig = Rig::start().await;
    let n = GOOD.len();
    let barrage = [
        cl_te(false),
        cl_te(true),
        with_lengths(&["4", &n.to_string()]),
        with_lengths(&[&format!("{n}, {}", n + 1)]),
        chat(&["X-A: a", " b"], GOOD),
        http10_chunked(),
        without_host("HTTP/1.1"),
        absolute("evil.example"),
        short_body(),
        long_body(),
        huge_uri(),
        huge_header(),
        many_headers(),
        deep_json(),
        forbidden_upgrade(),
        post_to("/v1/../v1/chat/completions", &[], GOOD),
    ];
    for bytes in barrage {
        let mut c = rig.conn().await;
        let half_close = bytes == short_body(); // a FIN after it, as in case 10
        c.send_bg(bytes, half_close);
        let _ = c.next(RESPONSE_WAIT).await;
    }
    let before = rig.engine().await.len();
    let mut c = rig.conn().await;
    for i in 0..50 {
        c.send(&chat(&[], GOOD)).await;
        let r = c.response(&format!("{case}: request {i}")).await;
        assert_eq!(r.status, 200, "{case}: request {i}: {}", r.head);
    }
    let seen = rig.engine().await;
    let new = &seen[before..];
    assert_eq!(new.len(), 50, "{case}: the engine saw {new:#?}");
    let exact = |s: &Seen| s.target == CHAT && s.body == GOOD.as_bytes();
    assert!(new.iter().all(exact), "{case}: {new:#?}");
    let smuggled = seen.iter().any(|s| s.target.contains("smuggled"));
    assert!(!smuggled, "{case}: smuggled: {seen:#?}");
    rig.assert_still_serving(case).await;
}
