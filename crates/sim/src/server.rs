//! Listener, connection tasks, request dispatch and the `/_sim/*` control endpoints.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::{SimConfig, SimKind};
use super::faults::Faults;
use super::stats::{Counters, Scheduler, SimStats};
use super::{llamacpp, ollama, tfserving, vllm};

/// Response body: a boxed stream of byte frames; an error aborts the connection.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// State shared by the listener, the connections and every stream of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub addr: SocketAddr,
    /// The bound gRPC address (TF Serving's port 8500), when `grpc_listen` asked for one.
    pub grpc_addr: Option<SocketAddr>,
    pub faults: RwLock<Faults>,
    tps_bits: AtomicU64,
    pub sched: Arc<Scheduler>,
    pub counters: Counters,
    pub started_at: SystemTime,
    seq: AtomicU64,
    refuse_tx: watch::Sender<bool>,
    shutdown_tx: watch::Sender<bool>,
    pub pressure: RwLock<super::pressure::Pressure>,
    /// The W3C `traceparent` of the last engine request (tests check trace propagation).
    pub last_traceparent: RwLock<Option<String>>,
    /// Credential headers of the last engine request (tests check that clients' keys stay at the edge).
    pub last_credentials: RwLock<Vec<String>>,
    /// `x-request-id` of the last engine request.
    pub last_request_id: RwLock<Option<String>>,
    /// Forwarding headers of the last engine request (tests check the client's address arrives).
    pub last_forwarded: RwLock<Vec<String>>,
    /// vLLM's prefix cache (automatic prefix caching).
    pub prefix_cache: super::prefix_cache::PrefixCache,
    /// llama-server's slots (kind llamacpp).
    pub llama_slots: super::llamacpp_slots::Slots,
}

impl Shared {
    /// The simulated GPU as a fake NVML device.
    pub(crate) fn gpu(&self) -> super::pressure::SimGpu {
        use super::pressure::{SimGpu, SimGpuProcess, DEFAULT_GPU_BYTES};
        let p = self.pressure.read();
        let total = p.gpu_memory_total_bytes.unwrap_or(DEFAULT_GPU_BYTES);
        let used = p.gpu_memory_used_bytes.min(total);
        let (running, _) = self.sched.load();
        let util = (running as f64 / self.sched.max().max(1) as f64 * 100.0).min(100.0) as u32;
        SimGpu {
            uuid: format!("GPU-sim-{}", self.addr.port()),
            name: "okome-sim GPU".into(),
            memory_total_bytes: total,
            memory_used_bytes: used,
            memory_free_bytes: total - used,
            utilization_percent: util,
            processes: vec![SimGpuProcess {
                pid: std::process::id(),
                used_bytes: used,
            }],
        }
    }

    /// Current decode speed.
    pub(crate) fn tps(&self) -> f64 {
        f64::from_bits(self.tps_bits.load(Relaxed))
    }

    /// Changes the decode speed for new requests.
    pub(crate) fn set_tps(&self, tps: f64) {
        if tps.is_finite() && tps > 0.0 {
            self.tps_bits.store(tps.to_bits(), Relaxed);
        }
    }

    /// Replaces the faults; `refuse_connections` reaches the listener at once.
    pub(crate) fn set_faults(&self, f: Faults) {
        let refuse = f.refuse_connections;
        *self.faults.write() = f;
        self.refuse_tx.send_replace(refuse);
    }

    /// Current faults.
    pub(crate) fn faults(&self) -> Faults {
        self.faults.read().clone()
    }

    /// A fresh seed for ids (unique per request, different per simulator).
    pub(crate) fn next_seed(&self) -> u64 {
        let n = self.seq.fetch_add(1, Relaxed);
        n ^ (u64::from(self.addr.port()) << 48) ^ self.started_nanos()
    }

    /// A seed fixed for this simulator's lifetime (llama-server's per-process random strings).
    pub(crate) fn started_at_seed(&self) -> u64 {
        self.started_nanos() ^ u64::from(self.addr.port())
    }

    fn started_nanos(&self) -> u64 {
        self.started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Unix seconds now (vLLM's `created`).
    pub(crate) fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Snapshot of the counters.
    pub(crate) fn stats(&self) -> SimStats {
        let c = &self.counters;
        let (running, waiting) = self.sched.load();
        SimStats {
            requests: c.requests.load(Relaxed),
            streams_started: c.started.load(Relaxed),
            streams_completed: c.completed.load(Relaxed),
            streams_aborted: c.aborted.load(Relaxed),
            running: running as u64,
            waiting: waiting as u64,
            last_body_len: c.last_body_len.load(Relaxed),
            last_body_hash: c.last_body_hash.load(Relaxed),
            last_traceparent: self.last_traceparent.read().clone(),
            last_credentials: self.last_credentials.read().clone(),
            last_request_id: self.last_request_id.read().clone(),
            last_forwarded: self.last_forwarded.read().clone(),
        }
    }

    /// Whether `name` is served (exact match).
    pub(crate) fn has_model(&self, name: &str) -> bool {
        self.cfg.models.iter().any(|m| m == name)
    }

    /// Stops listening and ends every connection.
    pub(crate) fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }
}

/// Binds, spawns the accept loop and returns the shared state.
pub(crate) async fn start(cfg: SimConfig) -> io::Result<Arc<Shared>> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let grpc = match cfg.grpc_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let grpc_addr = grpc.as_ref().map(TcpListener::local_addr).transpose()?;
    let (refuse_tx, refuse_rx) = watch::channel(cfg.faults.refuse_connections);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        addr,
        grpc_addr,
        faults: RwLock::new(cfg.faults.clone()),
        tps_bits: AtomicU64::new(cfg.tokens_per_second.to_bits()),
        sched: Arc::new(Scheduler::new(cfg.max_concurrent)),
        counters: Counters::default(),
        started_at: SystemTime::now(),
        seq: AtomicU64::new(1),
        refuse_tx,
        shutdown_tx,
        pressure: RwLock::new(Default::default()),
        last_traceparent: RwLock::new(None),
        last_credentials: RwLock::new(Vec::new()),
        last_request_id: RwLock::new(None),
        last_forwarded: RwLock::new(Vec::new()),
        prefix_cache: super::prefix_cache::PrefixCache::new(cfg.prefix_cache_blocks),
        llama_slots: Default::default(),
        cfg,
    });
    if let Some(l) = grpc {
        tokio::spawn(super::grpc::accept_loop(
            shared.clone(),
            l,
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(accept_loop(
        shared.clone(),
        listener,
        refuse_rx,
        shutdown_rx,
    ));
    Ok(shared)
}

/// Accepts connections; drops the listener while `refuse_connections` is set (true ECONNREFUSED).
async fn accept_loop(
    sim: Arc<Shared>,
    listener: TcpListener,
    mut refuse: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let want = !*refuse.borrow_and_update();
        match (&listener, want) {
            (Some(_), false) => listener = None,
            (None, true) => match bind_retry(sim.addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    log::error!("sim {}: cannot re-bind {}: {e}", sim.cfg.kind, sim.addr);
                    return;
                }
            },
            _ => {}
        }
        let Some(l) = &listener else {
            tokio::select! {
                r = refuse.changed() => if r.is_err() { return },
                _ = shutdown.changed() => {}
            }
            continue;
        };
        tokio::select! {
            acc = l.accept() => match acc {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(sim.clone(), stream, shutdown.clone()));
                }
                Err(e) => log::debug!("sim accept: {e}"),
            },
            r = refuse.changed() => if r.is_err() { return },
            _ = shutdown.changed() => {}
        }
    }
}

/// Re-binds the same address; the old socket may linger a moment, so retry briefly.
async fn bind_retry(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("bind failed")))
}

/// Serves one HTTP/1.1 connection until it ends or the simulator shuts down.
async fn serve_conn(
    sim: Arc<Shared>,
    stream: tokio::net::TcpStream,
    mut shutdown: watch::Receiver<bool>,
) {
    // llama-server (cpp-httplib) sends no Date header; the others do.
    let date = sim.cfg.kind != SimKind::Llamacpp;
    let svc = hyper::service::service_fn(move |req| handle(sim.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .auto_date_header(date)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => if let Err(e) = r { log::debug!("sim connection: {e}") },
        // Dropping the connection future closes the socket mid-response: the engine "died".
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// Routes one request: control endpoints first, then the engine's API.
async fn handle(sim: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    if req.uri().path().starts_with("/_sim/") {
        return Ok(control(&sim, req).await);
    }
    let probe = match req.uri().path() {
        "/health" | "/metrics" | "/" | "/v1/models" | "/api/tags" => true,
        "/v1/health" | "/models" | "/slots" | "/props" => sim.cfg.kind == SimKind::Llamacpp,
        _ => false,
    };
    if !probe {
        record_request(&sim, req.headers());
    }
    let style = sim.cfg.json_style;
    let resp = route(sim, req).await?;
    Ok(super::style::apply(style, resp).await)
}

/// The engine's API (and its own `--api-key` check).
async fn route(sim: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    // vLLM's --api-key guards every /v1 path with exactly this check and answer (llama-server
    // checks its own way, in its module).
    if let (Some(key), false) = (&sim.cfg.api_key, sim.cfg.kind == SimKind::Llamacpp) {
        let ok = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {key}").as_bytes());
        if req.uri().path().starts_with("/v1") && !ok {
            return Ok(json(
                StatusCode::UNAUTHORIZED,
                "application/json",
                &serde_json::json!({"error": "Unauthorized"}),
            ));
        }
    }
    match sim.cfg.kind {
        SimKind::Vllm => vllm::route(sim, req).await,
        SimKind::Ollama => ollama::route(sim, req).await,
        SimKind::TfServing => tfserving::route(sim, req).await,
        SimKind::Llamacpp => llamacpp::route(sim, req).await,
    }
}

/// Remembers what tests look at of an engine request: its trace, id, credentials, forwarding.
pub(crate) fn record_request(sim: &Shared, headers: &hyper::HeaderMap) {
    let tp = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *sim.last_traceparent.write() = tp;
    *sim.last_request_id.write() = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let lines = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .flat_map(|h| {
                headers
                    .get_all(*h)
                    .iter()
                    .map(move |v| format!("{h}: {}", String::from_utf8_lossy(v.as_bytes())))
            })
            .collect()
    };
    *sim.last_credentials.write() = lines(&["authorization", "x-api-key", "proxy-authorization"]);
    *sim.last_forwarded.write() = lines(&["x-forwarded-for", "x-forwarded-proto"]);
}

/// `PUT /_sim/config` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigPatch {
    tokens_per_second: Option<f64>,
    max_concurrent: Option<usize>,
}

/// `GET /_sim/stats`, `PUT /_sim/faults`, `PUT /_sim/config`.
async fn control(sim: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/_sim/stats") => json(StatusCode::OK, "application/json", &sim.stats()),
        (&Method::GET, "/_sim/faults") => json(StatusCode::OK, "application/json", &sim.faults()),
        (&Method::PUT, "/_sim/faults") => match serde_json::from_slice::<Faults>(&body) {
            Ok(f) => {
                sim.set_faults(f);
                json(StatusCode::OK, "application/json", &sim.faults())
            }
            Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
        },
        (&Method::GET, "/_sim/pressure") => {
            json(StatusCode::OK, "application/json", &*sim.pressure.read())
        }
        (&Method::PUT, "/_sim/pressure") => {
            match serde_json::from_slice::<super::pressure::Pressure>(&body) {
                Ok(p) => {
                    *sim.pressure.write() = p;
                    json(StatusCode::OK, "application/json", &*sim.pressure.read())
                }
                Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
            }
        }
        (&Method::GET, "/_sim/gpu") => json(StatusCode::OK, "application/json", &sim.gpu()),
        (&Method::PUT, "/_sim/config") => match serde_json::from_slice::<ConfigPatch>(&body) {
            Ok(p) => {
                if let Some(t) = p.tokens_per_second {
                    sim.set_tps(t);
                }
                if let Some(m) = p.max_concurrent {
                    sim.sched.set_max(m);
                }
                #[derive(Serialize)]
                struct Now {
                    tokens_per_second: f64,
                    max_concurrent: usize,
                }
                let now = Now {
                    tokens_per_second: sim.tps(),
                    max_concurrent: sim.sched.max(),
                };
                json(StatusCode::OK, "application/json", &now)
            }
            Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "unknown /_sim endpoint",
        ),
    }
}

/// Reads a whole request body; no size limit (multi-MiB prompts are normal).
pub(crate) async fn read_body(b: Incoming) -> io::Result<Bytes> {
    b.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(io::Error::other)
}

/// A complete response with a fixed body.
pub(crate) fn full(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

/// A text response.
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    full(status, Some(content_type), body)
}

/// A compact JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(
    status: StatusCode,
    content_type: &'static str,
    v: &T,
) -> Response<Body> {
    // Serializing plain structs of strings and numbers cannot fail.
    let b = serde_json::to_vec(v).unwrap_or_default();
    full(status, Some(content_type), b)
}

/// A streaming response.
pub(crate) fn streaming(content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
