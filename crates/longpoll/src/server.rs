//! The serving side: ETag = version, `?since=V&wait=30s` waits for a change ([`answer`]), a
//! listener whose connections are cut on shutdown (a dying server does not linger on open polls).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest a long-poll may wait, whatever `wait` asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Resolves when `shutdown()` was called. A handle dropped without it leaves the server running
/// for the life of the runtime, so a dropped sender must not read as "stop".
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves `app` on `listener` until `stop` turns true, then cuts every open connection (long-polls
/// included) as a dying server would; `what` names the server in the log.
pub fn serve_killable(
    listener: TcpListener,
    app: axum::Router,
    stop: watch::Receiver<bool>,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    let addr = listener.local_addr().ok();
    let listener = KillableListener {
        inner: listener,
        stop: stop.clone(),
    };
    let mut graceful = stop;
    tokio::spawn(async move {
        let shutdown = async move {
            stopped(&mut graceful).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            log::error!("{what} on {addr:?} stopped: {e}");
        }
    })
}

/// The long-poll query: `?since=V&wait=30s`.
#[derive(Debug, serde::Deserialize)]
pub struct LongPollQuery {
    /// The version the client holds.
    pub since: Option<u64>,
    /// How long to wait for a newer one.
    pub wait: Option<String>,
}

impl LongPollQuery {
    /// The wait asked for, capped at [`MAX_WAIT`]; `None` when it is malformed (answer
    /// [`bad_wait`]).
    pub fn wait(&self) -> Option<Duration> {
        match self.wait.as_deref() {
            None => Some(Duration::ZERO),
            Some(w) => parse_wait(w).map(|d| d.min(MAX_WAIT)),
        }
    }

    /// The version the client holds: `since`, else `If-None-Match`.
    pub fn known(&self, headers: &HeaderMap) -> Option<u64> {
        self.since.or_else(|| if_none_match(headers))
    }
}

/// The 400 for a malformed `wait`.
pub fn bad_wait() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad wait: write it like \"30s\" or \"500ms\"",
    )
}

/// `"V"`: the ETag of version `V`.
pub fn etag(version: u64) -> HeaderValue {
    // A decimal number in quotes is always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The version named by `If-None-Match: "V"` (or `W/"V"`), if it names exactly one.
pub fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// `30s`, `500ms`, or a bare number of seconds.
pub fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    humantime::parse_duration(s).ok()
}

/// What a long-poll is answered with.
#[derive(Debug)]
pub enum Answer<T> {
    /// A version other than the one the client holds (or the client holds none).
    Newer(T),
    /// Still the version the client holds, after waiting.
    Unchanged(u64),
    /// The server is stopping.
    ShuttingDown,
}

/// Waits up to `wait` for the state behind `changes` to move past `known`, the version the
/// client holds; `load` reads the state now, `version` says which it is. Subscribe `changes`
/// before the request reads anything, so a publication in between is not missed.
pub async fn answer<W, T>(
    mut changes: watch::Receiver<W>,
    mut load: impl FnMut(&mut watch::Receiver<W>) -> T,
    version: impl Fn(&T) -> u64,
    known: Option<u64>,
    wait: Duration,
    mut stop: watch::Receiver<bool>,
) -> Answer<T> {
    let mut current = load(&mut changes);
    let Some(known) = known else {
        return Answer::Newer(current);
    };
    if version(&current) == known && !wait.is_zero() {
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break; // The publisher is gone; answer with what there is.
                    }
                    current = load(&mut changes);
                    if version(&current) != known {
                        break;
                    }
                }
                _ = &mut deadline => break,
                _ = stopped(&mut stop) => return Answer::ShuttingDown,
            }
        }
    }
    if version(&current) == known {
        Answer::Unchanged(known)
    } else {
        Answer::Newer(current)
    }
}

/// 304 with the ETag of `version`.
pub fn not_modified(version: u64) -> Response {
    (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(version))]).into_response()
}

/// 200 with `body` as JSON, its ETag, and `Cache-Control: no-cache`.
pub fn current<T: serde::Serialize>(version: u64, body: &T) -> Response {
    (
        [
            (header::ETAG, etag(version)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Json(body),
    )
        .into_response()
}

/// A JSON `{"error": message}` answer.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A TCP listener whose connections are cut when `stop` turns true: graceful shutdown alone
/// would wait for open long-polls and keep-alive connections, and a dying server does not.
pub struct KillableListener {
    /// The bound socket.
    pub inner: TcpListener,
    /// Turns true on `shutdown()`.
    pub stop: watch::Receiver<bool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let mut stop = self.stop.clone();
        let io = KillableStream {
            inner: stream,
            killed: Box::pin(async move {
                stopped(&mut stop).await;
            }),
            dead: false,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that reads EOF and fails writes once the server stops.
pub struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableStream {
    /// Polls the stop signal; registering the waker makes an idle connection wake on stop.
    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server stopped")
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Ok(())); // EOF: the server hangs up.
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
