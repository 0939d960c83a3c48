//! The continuation: another backend of the pool is asked to go on from the text the client
//! already has, and its events are spliced into the client's stream under the original
//! chunk identity, with one usage chunk counting every token and exactly one `[DONE]`.

use super::eligible::{Eligible, Endpoint};
use super::transcript::Transcript;
use crate::edge::{ctx::RequestCtx, Edge};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pingora_proxy::Session;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// How a continuation ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// The stream was finished: usage (when asked) and `[DONE]` written.
    Finished,
    /// The client went away; the continuation request was dropped (the engine aborts).
    ClientGone,
}

/// Why a continuation could not finish the stream.
#[derive(Debug, thiserror::Error)]
pub enum ContinueError {
    /// No other healthy backend in the pool.
    #[error("no other healthy backend in the pool")]
    NoBackend,
    /// The pool's backends are reached over TLS, which the continuation client does not speak.
    #[error("the pool uses TLS; continuation requests are plain HTTP only")]
    Tls,
    /// The answer so far already used the request's token limit.
    #[error("the token limit is already reached")]
    NoTokensLeft,
    /// The request body could not be rebuilt (it parsed when the stream started).
    #[error("the continuation body could not be built")]
    Body,
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Http(String),
    /// Nothing within the first-token or idle timeout.
    #[error("the continuation timed out")]
    Timeout,
    /// The engine answered with a status other than 200.
    #[error("the continuation was answered {0}")]
    Status(u16),
    /// The continuation stream carried an error event.
    #[error("the continuation stream carried an error")]
    InBand,
    /// The continuation stream ended without `[DONE]`.
    #[error("the continuation stream ended without [DONE]")]
    Eof,
}

/// The continuation's request body: the original one, continuing `text`.
pub fn continuation_body(e: &Eligible, text: &str, tokens: u64) -> Result<Bytes, ContinueError> {
    // It parsed when the stream started: `Body` is not expected.
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&e.body) else {
        return Err(ContinueError::Body);
    };
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = body.get(key).and_then(Value::as_u64) {
            let left = n.saturating_sub(tokens);
            if left == 0 {
                return Err(ContinueError::NoTokensLeft);
            }
            body.insert(key.to_owned(), left.into());
        }
    }
    match e.endpoint {
        Endpoint::Chat => {
            if let Some(Value::Array(messages)) = body.get_mut("messages") {
                messages.push(json!({"role": "assistant", "content": text}));
            }
            body.insert("continue_final_message".into(), true.into());
            body.insert("add_generation_prompt".into(), false.into());
        }
        Endpoint::Completions => {
            if let Some(Value::String(prompt)) = body.get_mut("prompt") {
                prompt.push_str(text);
            }
        }
    }
    // The edge needs the engine's counts for the final usage chunk, asked for or not.
    body.insert("stream_options".into(), json!({"include_usage": true}));
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|_| ContinueError::Body)
}

/// Aborts the connection task when the continuation is dropped (client gone, error), so the
/// engine sees the close and stops generating.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts from the continuation's usage chunk.
#[derive(Debug, Default)]
struct Counts {
    prompt: Option<u64>,
    completion: Option<u64>,
    tokens_seen: u64,
}

/// What a continuation needs to know.
#[derive(Debug)]
pub struct Continuation<'a> {
    /// The original request.
    pub eligible: &'a Eligible,
    /// What the client got so far.
    pub transcript: &'a Transcript,
    /// Path and query of the original request.
    pub target: &'a str,
    /// When the engine's death was noticed (the gap metric's start).
    pub died_at: Instant,
    /// The route's name (metric label).
    pub route: &'a str,
}

/// Re-issues the request to another backend and splices its answer into the client's stream.
pub async fn continue_stream(
    edge: &Edge,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Continuation<'_>,
) -> Result<Spliced, ContinueError> {
    let (eligible, t) = (job.eligible, job.transcript);
    let body = continuation_body(eligible, &t.text, t.tokens)?;
    let (pi, _) = ctx.attempt.current.ok_or(ContinueError::NoBackend)?;
    let pool = &edge.upstreams.pools[pi];
    if pool.tls.is_some() {
        return Err(ContinueError::Tls);
    }
    let bi = crate::upstream::select::pick(&pool.backends, |b| edge.skip(ctx, pi, b))
        .ok_or(ContinueError::NoBackend)?;
    let backend = &pool.backends[bi];
    ctx.attempt.tried.push((pi, bi));
    ctx.attempt.current = Some((pi, bi));
    ctx.attempt.inflight = Some(backend.acquire());
    let req = request(edge, session, ctx, job.target, body)?;
    let timeouts = &edge.timeouts;
    let http = |e: &dyn std::fmt::Display| ContinueError::Http(format!("{}: {e}", backend.id));
    let tcp = match tokio::time::timeout(
        timeouts.connect.0,
        tokio::net::TcpStream::connect(backend.addr),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        failed => {
            // As for any attempt: an unreachable backend is taken out of rotation at once.
            backend.record_failure(&pool.ejection, "connect (mid-stream failover)", true);
            return Err(match failed {
                Ok(Err(e)) => http(&e),
                _ => ContinueError::Timeout,
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| http(&e))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut watch = true;
    let sent = tokio::time::timeout(timeouts.first_token.0, sender.send_request(req));
    let Some(resp) = unless_client_gone(session, &mut watch, sent).await else {
        return Ok(Spliced::ClientGone);
    };
    let resp = resp
        .map_err(|_| ContinueError::Timeout)?
        .map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    if status >= 500 {
        backend.record_failure(&pool.ejection, &format!("answered {status}"), false);
    } else {
        backend.record_success();
    }
    if status != 200 {
        return Err(ContinueError::Status(status));
    }
    let mut body = resp.into_body();
    let mut splice = Splice {
        identity: &t.identity,
        chat: eligible.endpoint == Endpoint::Chat,
        partial: Vec::new(),
        counts: Counts::default(),
        done: false,
    };
    let mut first_token = true;
    // The first bytes wait for prefill (first_token); every later gap is bounded by idle.
    let mut wait = timeouts.first_token.0;
    while !splice.done {
        let next = tokio::time::timeout(wait, body.frame());
        let Some(next) = unless_client_gone(session, &mut watch, next).await else {
            return Ok(Spliced::ClientGone);
        };
        let frame = match next {
            Err(_) => return Err(ContinueError::Timeout),
            Ok(None) => break,
            Ok(Some(f)) => f.map_err(|e| http(&e))?,
        };
        wait = timeouts.idle.0;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let (out, tokens) = splice.feed(&data)?;
        if out.is_empty() {
            continue;
        }
        let mut out = Some(out);
        crate::edge::response::tap_body(edge, &out, ctx);
        crate::resume::stream::pass(&edge.streams, &mut out, false, ctx);
        if session.write_response_body(out, false).await.is_err() {
            return Ok(Spliced::ClientGone);
        }
        if first_token && tokens > 0 {
            first_token = false;
            edge.metrics
                .failover_gap
                .with_label_values(&[job.route])
                .observe(job.died_at.elapsed().as_secs_f64());
        }
    }
    if !splice.done {
        return Err(ContinueError::Eof);
    }
    let mut tail = BytesMut::new();
    if eligible.include_usage {
        let c = &splice.counts;
        let before = t.tokens;
        let completion = before + c.completion.unwrap_or(c.tokens_seen);
        // The continuation's prompt held the generated text: its tokens are counted once, as
        // completion tokens.
        let prompt = c.prompt.unwrap_or(0).saturating_sub(before);
        let object = t.object.clone().unwrap_or_else(|| {
            Value::from(if splice.chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            })
        });
        let mut usage = Map::new();
        usage.insert("object".into(), object);
        for (k, v) in &t.identity {
            usage.insert((*k).to_owned(), v.clone());
        }
        usage.insert("choices".into(), json!([]));
        usage.insert(
            "usage".into(),
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}),
        );
        event(&mut tail, &Value::Object(usage));
    }
    tail.extend_from_slice(b"data: [DONE]\n\n");
    let mut tail = Some(tail.freeze());
    crate::edge::response::tap_body(edge, &tail, ctx);
    crate::resume::stream::pass(&edge.streams, &mut tail, true, ctx);
    if session.write_response_body(tail, true).await.is_err() {
        return Ok(Spliced::ClientGone);
    }
    Ok(Spliced::Finished)
}

/// Runs `fut` unless the client goes away first (`None`): a continuation still in prefill
/// writes nothing, and a client that left would otherwise be noticed only at the first token,
/// with the engine generating for nobody meanwhile. `watch` turns off if the client's side
/// says something other than goodbye (nothing to learn from it then).
async fn unless_client_gone<T>(
    session: &mut Session,
    watch: &mut bool,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Some(v),
            r = session.downstream_session.read_body_or_idle(true), if *watch => match r {
                Err(_) => return None,
                Ok(_) => *watch = false,
            },
        }
    }
}

/// Headers of the client's request the continuation does not carry: hop-by-hop and framing
/// (it has its own), and encodings (the edge reads the answer).
const NOT_SENT: [http::HeaderName; 7] = [
    http::header::ACCEPT_ENCODING,
    http::header::CONNECTION,
    http::header::TE,
    http::header::UPGRADE,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_LENGTH,
    http::HeaderName::from_static("keep-alive"),
];

/// The continuation request: the client's request head under the same policy as any upstream
/// attempt ([`crate::edge::upstream_request::prepare`]: no client credentials, the pool's key,
/// the forwarding headers, the route's header effects), with the continuation body.
fn request(
    edge: &Edge,
    session: &Session,
    ctx: &RequestCtx,
    path: &str,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, ContinueError> {
    let mut head = session.req_header().clone();
    for name in &NOT_SENT {
        head.remove_header(name);
    }
    crate::edge::upstream_request::prepare(edge, &mut head, ctx)
        .map_err(|e| ContinueError::Http(e.to_string()))?;
    let mut req = http::Request::post(path)
        .body(Full::new(body))
        .map_err(|e| ContinueError::Http(e.to_string()))?;
    *req.headers_mut() = head.headers.clone();
    Ok(req)
}

fn event(out: &mut BytesMut, v: &Value) {
    out.extend_from_slice(b"data: ");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), v);
    out.extend_from_slice(b"\n\n");
}

/// Rewrites the continuation's events for the client's stream.
struct Splice<'a> {
    identity: &'a [(&'static str, Value)],
    chat: bool,
    partial: Vec<u8>,
    counts: Counts,
    done: bool,
}

impl Splice<'_> {
    /// The client's bytes for one chunk of the continuation, and the tokens they carry.
    fn feed(&mut self, data: &[u8]) -> Result<(Bytes, u64), ContinueError> {
        let mut out = BytesMut::new();
        let mut tokens = 0;
        self.partial.extend_from_slice(data);
        // Taken out so the lines can borrow it while `self` is updated; the unfinished tail
        // stays in it for the next chunk.
        let mut buf = std::mem::take(&mut self.partial);
        let mut used = 0;
        while let Some(pos) = memchr::memchr(b'\n', &buf[used..]) {
            let line = &buf[used..used + pos];
            used += pos + 1;
            tokens += self.line(line.strip_suffix(b"\r").unwrap_or(line), &mut out)?;
        }
        buf.drain(..used);
        self.partial = buf;
        Ok((out.freeze(), tokens))
    }

    fn line(&mut self, line: &[u8], out: &mut BytesMut) -> Result<u64, ContinueError> {
        let Some(data) = line.strip_prefix(b"data:") else {
            return Ok(0);
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return Ok(0);
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
            return Ok(0);
        };
        if chunk.contains_key("error") {
            return Err(ContinueError::InBand);
        }
        if let Some(u) = chunk.remove("usage").filter(|u| !u.is_null()) {
            self.counts.prompt = u.get("prompt_tokens").and_then(Value::as_u64);
            self.counts.completion = u.get("completion_tokens").and_then(Value::as_u64);
        }
        let Some(choice) = chunk
            .get_mut("choices")
            .and_then(|c| c.get_mut(0))
            .and_then(Value::as_object_mut)
        else {
            // The usage chunk (no choices): replaced by the edge's own at the end.
            return Ok(0);
        };
        let piece = if self.chat {
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                return Ok(0);
            };
            // The role was sent at the start of the original stream.
            delta.remove("role");
            let len = delta
                .get("content")
                .and_then(Value::as_str)
                .map_or(0, str::len);
            if len == 0 && choice.get("finish_reason").is_none_or(Value::is_null) {
                return Ok(0);
            }
            len
        } else {
            choice
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, str::len)
        };
        let n = match choice.get("token_ids").and_then(Value::as_array) {
            Some(ids) => ids.len() as u64,
            None => u64::from(piece > 0),
        };
        self.counts.tokens_seen += n;
        for (k, v) in self.identity {
            chunk.insert((*k).to_owned(), v.clone());
        }
        event(out, &Value::Object(chunk));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::eligible;

    #[test]
    fn the_continuation_asks_for_the_rest_of_the_answer() {
        let e = eligible::check(
            "/v1/chat/completions",
            Bytes::from_static(
                br#"{"stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
        )
        .unwrap();
        let b: Value =
            serde_json::from_slice(&continuation_body(&e, "Hello own", 2).unwrap()).unwrap();
        assert_eq!(b["max_tokens"], 8);
        assert_eq!(
            b["messages"][1],
            json!({"role": "assistant", "content": "Hello own"})
        );
        assert_eq!(b["continue_final_message"], true);
        assert_eq!(b["add_generation_prompt"], false);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(matches!(
            continuation_body(&e, "x", 10),
            Err(ContinueError::NoTokensLeft)
        ));
        let e = eligible::check(
            "/v1/completions",
            Bytes::from_static(br#"{"stream":true,"max_completion_tokens":4,"prompt":"Once"}"#),
        )
        .unwrap();
        let b: Value = serde_json::from_slice(&continuation_body(&e, " upon", 1).unwrap()).unwrap();
        assert_eq!(
            (b["prompt"].as_str(), b["max_completion_tokens"].as_u64()),
            (Some("Once upon"), Some(3))
        );
    }

    #[test]
    fn the_splice_drops_the_preamble_usage_and_done_and_keeps_the_identity() {
        let identity = [("id", json!("orig")), ("created", json!(1))];
        let mut s = Splice {
            identity: &identity,
            chat: true,
            partial: Vec::new(),
            counts: Counts::default(),
            done: false,
        };
        let stream = b"data: {\"id\":\"new\",\"created\":2,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"new\",\"created\":2,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" I\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"new\",\"created\":2,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"new\",\"created\":2,\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n\
data: [DONE]\n\n";
        let mut out = Vec::new();
        let mut tokens = 0;
        for c in stream.chunks(7) {
            let (b, n) = s.feed(c).unwrap();
            out.extend_from_slice(&b);
            tokens += n;
        }
        let out = String::from_utf8(out).unwrap();
        let events: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(events.len(), 2, "{out}");
        assert!(events
            .iter()
            .all(|e| e["id"] == "orig" && e["created"] == 1));
        assert_eq!(events[0]["choices"][0]["delta"], json!({"content": " I"}));
        assert_eq!(events[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(tokens, 1);
        assert!(s.done);
        assert_eq!((s.counts.prompt, s.counts.completion), (Some(12), Some(2)));
        let err = s.feed(b"data: {\"error\":{\"message\":\"x\"}}\n\n");
        assert!(matches!(err, Err(ContinueError::InBand)));
    }
}
