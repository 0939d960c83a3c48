//! HTTP calls from the edge to the control plane; each is timed into
//! `okome_control_request_seconds{endpoint}`.

use crate::metrics::Metrics;
use bytes::Bytes;
use okome_core::http::Client;
use okome_filters::policy::{KeyInfo, Snapshot};
use okome_longpoll::{Backoff, Subscriber};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the control plane holds a snapshot poll open when nothing changes.
const POLL_WAIT: Duration = Duration::from_secs(30);

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
    http: Client,
    timeout: Duration,
    /// `Authorization` sent with every call, when the control plane requires a token.
    auth: Option<http::HeaderValue>,
    snapshots: Subscriber,
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
        let snapshots = Subscriber::new(
            format!("http://{addr}/v1/snapshot"),
            auth.clone(),
            POLL_WAIT,
            timeout,
            Backoff::new(Duration::from_millis(250), Duration::from_secs(5)),
        );
        ControlClient {
            addr,
            http: Client::new(),
            timeout,
            auth,
            snapshots,
            metrics,
        }
    }

    /// The control plane's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The snapshot, followed by long-poll.
    pub fn snapshots(&self) -> &Subscriber {
        &self.snapshots
    }

    /// Records how long a call to `endpoint` took.
    pub fn observe(&self, endpoint: &str, took: Duration) {
        self.metrics
            .control_request_seconds
            .with_label_values(&[endpoint])
            .observe(took.as_secs_f64());
    }

    async fn get(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<(u16, Bytes), ControlCallError> {
        let started = Instant::now();
        let answer = self
            .http
            .get_response(
                &format!("http://{}{path}", self.addr),
                self.auth.as_ref(),
                self.timeout,
            )
            .await;
        self.observe(endpoint, started.elapsed());
        answer
            .map(|(status, body)| (status.as_u16(), body))
            .map_err(|e| ControlCallError::Unreachable {
                addr: self.addr,
                why: e.to_string(),
            })
    }

    /// Who owns the key with this hash: `None` when the control plane does not know it.
    pub async fn key(&self, hash: &str) -> Result<Option<KeyInfo>, ControlCallError> {
        let (status, body) = self.get("keys", &format!("/v1/keys/{hash}")).await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.bad(status, e.to_string())),
            404 => Ok(None),
            s => Err(self.bad(s, String::from_utf8_lossy(&body).into_owned())),
        }
    }

    /// The snapshot now.
    pub async fn snapshot(&self) -> Result<Snapshot, ControlCallError> {
        let (status, body) = self.get("snapshot", "/v1/snapshot").await?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| self.bad(status, e.to_string())),
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
