//! A resumable stream (`resumable: true`) as a browser uses it, in headless Chromium (Debian's
//! `chromium`; `.ci/run` installs it): the page, served through the edge so that it shares the
//! API's origin, reads a streaming chat completion with `fetch`, drops it after a few events,
//! then follows the rest with `EventSource` from the last event id it read. The text it ends up
//! with is the whole answer, the event ids run on without a gap or a repeat, and the engine was
//! asked once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::browser::chromium;
use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use okome_sim::{SimHandle, SimKind};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const MODEL: &str = "Qwen/Qwen3-8B";
/// The answer's length: long enough that the drop comes early in it.
const TOKENS: u32 = 30;
/// Events the page reads with `fetch` before it drops the stream.
const CUT_AFTER: u32 = 5;
/// The page's source; `__REQUEST_BODY__` and `__CUT_AFTER__` are filled in by [`page`].
const PAGE: &str = include_str!("fixtures/resumable_browser.html");

fn chat_body() -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":true,"max_tokens":{TOKENS},"messages":[{{"role":"user","content":"Why do streams need to be resumable?"}}]}}"#
    )
}

fn page() -> String {
    PAGE.replace("__REQUEST_BODY__", &json!(chat_body()).to_string())
        .replace("__CUT_AFTER__", &CUT_AFTER.to_string())
}

/// Loads `url` in headless Chromium and returns the DOM at the page's load event, which the
/// page holds back until its work is done (its image `/page/hold`), and the page's console. No `--virtual-time-budget`: virtual time runs ahead while a body
/// streams, and pausing it holds back `EventSource`'s events.
fn dump_dom(url: &str) -> (String, String) {
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
            "--dump-dom",
            // The page's console, for a failure's message.
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait chromium").is_none() {
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
    // Of Chromium's log, the page's console (its errors among it).
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .collect::<Vec<_>>()
        .join("\n");
    (stdout, console)
}

/// The JSON the page wrote into `#result`.
fn result_of(dom: &str, console: &str) -> Value {
    let open = "<pre id=\"result\">";
    let at = dom
        .find(open)
        .unwrap_or_else(|| panic!("no #result in the page:\n{dom}\nconsole:\n{console}"))
        + open.len();
    let end = at + dom[at..].find("</pre>").expect("#result closes");
    // `textContent` in the dump: only these three are escaped.
    let text = dom[at..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("#result is {text:?}, not the page's JSON ({e}); console:\n{console}")
    })
}

/// The page's own server (the edge's `page` pool), for `GET`s only: the page
/// (`/page/resume.html`), `/page/hold` answered once `/page/done` is asked (or after 30 s, so a
/// stuck page still gets dumped), and the `/v1/models` of the edge's health probe. Counts the
/// page's loads.
async fn page_server(page: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let addr = listener.local_addr().expect("page server addr");
    let loads = Arc::new(AtomicUsize::new(0));
    let site = Arc::new(Site {
        page,
        loads: loads.clone(),
        done: Notify::new(),
    });
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_page(conn, site.clone()));
        }
    });
    (addr, loads)
}

struct Site {
    page: String,
    loads: Arc<AtomicUsize>,
    /// The page asked `/page/done` (a permit is kept if `/page/hold` is not waiting yet).
    done: Notify,
}

/// One keep-alive connection of [`page_server`].
async fn serve_page(mut conn: tokio::net::TcpStream, site: Arc<Site>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let (status, ctype, body) = match path {
            "/page/resume.html" => {
                site.loads.fetch_add(1, Relaxed);
                ("200 OK", "text/html; charset=utf-8", site.page.as_str())
            }
            "/page/hold" => {
                let _ = tokio::time::timeout(Duration::from_secs(30), site.done.notified()).await;
                ("200 OK", "text/plain", "released")
            }
            "/page/done" => {
                site.done.notify_one();
                ("200 OK", "text/plain", "ok")
            }
            "/v1/models" => (
                "200 OK",
                "application/json",
                r#"{"object":"list","data":[]}"#,
            ),
            _ => ("404 Not Found", "text/plain", "not found"),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The edge: `/page/` from the page server, `/v1/` to the simulator on a resumable route.
async fn edge(pages: SocketAddr, engine: &SimHandle) -> TestEdge {
    EdgeBuilder::new()
        .pool("page", "openai", &[pages])
        .pool("vllm", "vllm", &[engine.addr()])
        .route(
            Route::to_pool("page", "page")
                .path_prefix("/page/")
                .set("allow", json!(["GET /page/*"])),
        )
        .route(
            Route::to_pool("chat", "vllm")
                .path_prefix("/v1/")
                .set("resumable", json!(true)),
        )
        .start()
        .await
}

/// An OpenAI chat SSE body's concatenated delta text, its number of events and of `[DONE]`s.
fn text_of(body: &str) -> (String, usize, usize) {
    let mut text = String::new();
    let (mut events, mut dones) = (0, 0);
    for data in body
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
    {
        events += 1;
        if data == "[DONE]" {
            dones += 1;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (text, events, dones)
}

/// The simulator's answer to the chat request, asked directly (no edge): its text and its
/// number of events.
async fn uninterrupted(engine: &SimHandle) -> (String, usize) {
    let resp = raw(engine.addr(), &post("/v1/chat/completions", &chat_body())).await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let body = String::from_utf8_lossy(&body_of(&resp)).to_string();
    let (text, events, dones) = text_of(&body);
    assert_eq!(dones, 1, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(sse_tokens(&body), TOKENS as usize, "{body}");
    (text, events)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of ids: {v}"))
        .iter()
        .map(|i| i.as_u64().unwrap_or_else(|| panic!("not an id: {i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_drops_a_stream_and_resumes_it_with_eventsource() {
    let engine = sim(SimKind::Vllm, |c| c.tokens_per_second = 50.0).await;
    let (pages, loads) = page_server(page()).await;
    let edge = edge(pages, &engine).await;

    // The reference: the same request straight to the engine, twice (the simulator's text is a
    // function of the prompt, so one uninterrupted run is what the browser must end up with).
    let (whole, events) = uninterrupted(&engine).await;
    assert_eq!(
        uninterrupted(&engine).await,
        (whole.clone(), events),
        "the simulator is not deterministic"
    );
    assert!(!whole.is_empty());

    let before = engine.stats();
    let url = edge.url("/page/resume.html");
    let (dom, console) = tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .expect("chromium task");
    let after = engine.stats();
    assert_eq!(
        loads.load(Relaxed),
        1,
        "the page came through the edge once"
    );
    let r = result_of(&dom, &console);
    let errors = r["errors"].as_array().expect("errors");
    assert!(errors.is_empty(), "the page failed: {r}");
    assert_eq!(r["status"], 200, "{r}");
    let stream_id = r["streamId"].as_str().expect("a stream id");
    assert!(!stream_id.is_empty(), "{r}");

    // The drop came mid-stream: `CUT_AFTER` events read, no end seen, the rest resumed.
    let (read, resumed) = (ids(&r["fetchIds"]), ids(&r["resumeIds"]));
    assert_eq!(read.len(), CUT_AFTER as usize, "{r}");
    assert_eq!(
        r["fetchDones"], 0,
        "the fetch saw the end: no drop mid-stream: {r}"
    );
    assert!(!resumed.is_empty(), "{r}");
    // One numbering across both, 1..=N with N the uninterrupted answer's events: no gap, no
    // repeat, nothing lost at the end (the page stops at the [DONE]).
    let all: Vec<u64> = read.iter().chain(&resumed).copied().collect();
    let want: Vec<u64> = (1..=events as u64).collect();
    assert_eq!(all, want, "event ids: {r}");
    assert_eq!(r["idSteps"], true, "e.lastEventId did not step by 1: {r}");
    assert_eq!(r["dones"], 1, "{r}");

    assert_eq!(
        r["text"].as_str().expect("text"),
        whole,
        "the browser's text is not the uninterrupted answer: {r}"
    );

    // One engine request, run to its end for nobody in between (not aborted, not repeated).
    assert_eq!(
        after.requests - before.requests,
        1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.streams_completed - before.streams_completed,
        1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.streams_aborted, before.streams_aborted,
        "the engine's stream was aborted: {before:?} -> {after:?}"
    );

    // The edge saw the client leave the first request, and one resume.
    assert!(
        eventually(5, || async {
            edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
                .await
                == 1.0
        })
        .await,
        "the dropped fetch is not counted as a client disconnect; log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_stream_resumes_total", &[("result", "resumed")])
            .await,
        1.0
    );
}
