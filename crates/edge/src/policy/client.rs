//! HTTP calls from the edge to the control plane; each is timed into
//! `okome_control_request_seconds{endpoint}`.

use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use okome_filters::policy::{KeyInfo, Snapshot};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Largest answer read from the control plane.
const MAX_ANSWER: usize = 16 << 20;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlCallError {
    /// No connection or no answer in time.
    #[error("control plane at {addr} unreachable: {why}")]
    Unreachable {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// It answered something we cannot use.
    #[error("control plane at {addr} answered {status}: {why}")]
    BadAnswer {
        /// Its address.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        why: String,
    },
}

/// A client for one control plane.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    /// `Authorization` sent with every call, when the control plane requires a token.
    auth: Option<http::HeaderValue>,
    metrics: Metrics,
}

impl ControlClient {
    /// A client for the control plane at `addr`.
    pub fn new(
        addr: SocketAddr,
        timeout: Duration,
        token: Option<crate::config::Secret>,
        metrics: Metrics,
    ) -> Self {
        let auth = token.map(|t| t.bearer());
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(timeout));
        ControlClient {
            addr,
            http: Client::builder(TokioExecutor::new()).build(conn),
            timeout,
            auth,
            metrics,
        }
    }

    /// The control plane's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn get(
        &self,
        endpoint: &'static str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ControlCallError> {
        let unreachable = |why: String| ControlCallError::Unreachable {
            addr: self.addr,
            why,
        };
        let uri: http::Uri = format!("http://{}{}", self.addr, path)
            .parse()
            .map_err(|e| unreachable(format!("{e}")))?;
        let started = Instant::now();
        let call = async {
            let mut req = http::Request::get(uri);
            if let Some(a) = &self.auth {
                req = req.header(http::header::AUTHORIZATION, a.clone());
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| unreachable(e.to_string()))?;
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        let out = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?;
        self.metrics
            .control_request_seconds
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Who owns the key with this hash: `None` when the control plane does not know it.
    pub async fn key(&self, hash: &str) -> Result<Option<KeyInfo>, ControlCallError> {
        let (status, body) = self
            .get("keys", &format!("/v1/keys/{hash}"), self.timeout)
            .await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.bad(status, e.to_string())),
            404 => Ok(None),
            s => Err(self.bad(s, String::from_utf8_lossy(&body).into_owned())),
        }
    }

    /// The snapshot, waiting up to `wait` for one newer than `since`; `None` when nothing changed.
    pub async fn snapshot(
        &self,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<Option<Snapshot>, ControlCallError> {
        let path = match since {
            Some(v) => format!("/v1/snapshot?since={v}&wait={}s", wait.as_secs()),
            None => "/v1/snapshot".to_owned(),
        };
        let (status, body) = self.get("snapshot", &path, wait + self.timeout).await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.bad(status, e.to_string())),
            304 => Ok(None),
            s => Err(self.bad(s, String::from_utf8_lossy(&body).into_owned())),
        }
    }

    fn bad(&self, status: u16, why: String) -> ControlCallError {
        ControlCallError::BadAnswer {
            addr: self.addr,
            status,
            why,
        }
    }
}
