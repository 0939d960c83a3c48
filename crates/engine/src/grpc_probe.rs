//! TF Serving's gRPC side probed as its clients see it: `ModelService/GetModelStatus` on its
//! gRPC port over HTTP/2 (h2c with prior knowledge, or TLS with ALPN h2). An answer in TF
//! Serving's shape (OK with the model's versions, or NOT_FOUND for a model it does not have)
//! proves the gRPC server is up; anything else (no connection, no HTTP/2, not gRPC, another
//! status) does not.

use crate::tfs_grpc::{self as g, Code};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest probe answer read (a status list is a few bytes per version).
const MAX_ANSWER: usize = 64 * 1024;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct GrpcTarget<'a> {
    /// The engine's gRPC address.
    pub addr: SocketAddr,
    /// TLS: the client config (its ALPN is set to h2 here) and the name to check.
    pub tls: Option<(
        &'a Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The engine's own key, sent as `authorization`.
    pub auth: Option<&'a http::HeaderValue>,
    /// The model asked about.
    pub model: &'a str,
    /// For the whole call.
    pub timeout: Duration,
}

/// What TF Serving said about the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAnswer {
    /// Its versions and whether each is `AVAILABLE`.
    Versions(Vec<(i64, bool)>),
    /// NOT_FOUND: the server is up but does not have the model.
    NotFound,
}

/// Why the gRPC side is not up.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GrpcUnhealthy {
    /// No answer in time.
    #[error("gRPC {addr}: no answer within {timeout:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The connection, TLS or HTTP/2 failed.
    #[error("gRPC {addr}: {message}")]
    Transport {
        /// Where.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// An answer that is not a TF Serving model status.
    #[error("gRPC {addr}: not a TF Serving model status: {message}")]
    NotModelStatus {
        /// Where.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
}

/// Asks `GetModelStatus` for `t.model`.
pub async fn model_status(t: &GrpcTarget<'_>) -> Result<ModelAnswer, GrpcUnhealthy> {
    tokio::time::timeout(t.timeout, call(t))
        .await
        .unwrap_or(Err(GrpcUnhealthy::Timeout {
            addr: t.addr,
            timeout: t.timeout,
        }))
}

async fn call(t: &GrpcTarget<'_>) -> Result<ModelAnswer, GrpcUnhealthy> {
    let transport = |message: String| GrpcUnhealthy::Transport {
        addr: t.addr,
        message,
    };
    let not_status = |message: String| GrpcUnhealthy::NotModelStatus {
        addr: t.addr,
        message,
    };
    let tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| transport(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let req = request(t).map_err(|e| transport(e.to_string()))?;
    let resp = match &t.tls {
        None => send(TokioIo::new(tcp), req).await,
        Some((config, name)) => {
            let mut config = rustls::ClientConfig::clone(config);
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| transport(format!("TLS: {e}")))?;
            send(TokioIo::new(tls), req).await
        }
    }
    .map_err(transport)?;
    let (head, body) = resp.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(not_status(format!("HTTP {}", head.status)));
    }
    let body = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| transport(format!("reading the answer: {e}")))?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let bytes = body.to_bytes();
    // A trailers-only answer carries its status in the head.
    let status = trailers
        .get("grpc-status")
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| not_status("no grpc-status".into()))?;
    if status == Code::NotFound.as_str() {
        return Ok(ModelAnswer::NotFound);
    }
    if status != Code::Ok.as_str() {
        let message = trailers
            .get("grpc-message")
            .or_else(|| head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .map(g::decode_message)
            .unwrap_or_default();
        return Err(not_status(format!("grpc-status {status}: {message}")));
    }
    let answer: g::GetModelStatusResponse =
        g::decode(&bytes).map_err(|e| not_status(e.to_string()))?;
    Ok(ModelAnswer::Versions(
        answer
            .model_version_status
            .iter()
            .map(|v| (v.version, v.state == g::State::Available as i32))
            .collect(),
    ))
}

fn request(t: &GrpcTarget<'_>) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let scheme = if t.tls.is_some() { "https" } else { "http" };
    let msg = g::frame(&g::GetModelStatusRequest {
        model_spec: Some(g::ModelSpec {
            name: t.model.to_owned(),
            ..Default::default()
        }),
    });
    let mut req = http::Request::post(format!("{scheme}://{}{}", t.addr, g::GET_MODEL_STATUS))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", t.timeout.as_millis().max(1)));
    if let Some(a) = t.auth {
        req = req.header(http::header::AUTHORIZATION, a.clone());
    }
    req.body(Full::new(msg))
}

async fn send<I>(
    io: I,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    // The connection ends with the probe: the task ends when `sender` is dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("gRPC probe connection: {e}");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP/2: {e}"))
}
