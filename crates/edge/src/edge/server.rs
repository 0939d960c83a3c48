//! Assembles and runs the edge: [`assemble`] builds the proxy state and starts the background
//! work (admin listener, health probes, arbiter feeds, policy watch, DNS resolver) on a small control runtime;
//! [`run`] serves it with Pingora's server on the configured listeners until SIGINT/SIGTERM;
//! [`super::embedded`] serves it inside another process (tests, benchmarks).

use super::connections::ConnectionLimits;
use super::drain::{Drain, DrainSignals};
use super::proxy::Proxy;
use super::reload::{self, ReloadStatus, Reloader};
use super::{Edge, Shared};
use crate::config::compile::CompiledEdge;
use crate::metrics::Metrics;
use crate::upstream::dns::{self, Dns};
use crate::upstream::{health, Upstreams};
use arc_swap::ArcSwap;
use okome_core::supervisor::Supervisor;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Read buffer per client connection (Pingora's default is 64 KiB).
const CLIENT_READ_BUFFER: usize = 4 * 1024;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address is taken or not allowed.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log file cannot be opened for appending.
    #[error("access_log.path {path}: {source}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS listener could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The shared limit store could not be set up.
    #[error("limits.redis: {0}")]
    Limits(#[from] okome_limits::LimitsError),
    /// A metric could not be registered (a duplicate name: a bug).
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The runtime for the background work could not be built.
    #[error("cannot start the edge's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The edge's proxy with its background work running.
#[derive(Debug)]
pub struct Assembled {
    /// What Pingora serves: the current edge, swapped whole by a reload.
    pub proxy: Proxy,
    /// Applies new configs.
    pub reloader: Arc<Reloader>,
    /// The background tasks; stop them with [`Supervisor::shutdown`].
    pub supervisor: Supervisor,
    /// Where the admin listener listens.
    pub admin: SocketAddr,
    /// The drain state (`/readyz`, shutdown).
    pub drain: Arc<Drain>,
    /// Each listener's certificates (`None`: plaintext), by listener index.
    pub certs: Vec<Option<crate::tls::Served>>,
}

/// Builds the edge from a compiled config: opens the access log, resolves the pools' names,
/// starts the admin listener and runs the first health round (so the first request sees real
/// health), then supervises the probes, arbiter feeds, policy watch, the DNS resolver and (with
/// a `path` to watch) config reloads on `background`.
pub async fn assemble(
    cfg: CompiledEdge,
    path: Option<std::path::PathBuf>,
    background: tokio::runtime::Handle,
) -> Result<Assembled, StartError> {
    let access_log =
        super::access_log::AccessLog::open(cfg.access_log.enabled, cfg.access_log.path.as_deref())
            .map_err(|source| StartError::AccessLog {
                path: cfg.access_log.path.clone().unwrap_or_default(),
                source,
            })?;
    let access_log = Arc::new(access_log);
    let metrics = Metrics::new();
    // Names are resolved once before anything is built; one that does not resolve gives its
    // pool no backend for now (logged), and the resolver task keeps trying.
    let dns = Dns::new(metrics.clone());
    dns.resolve_config(&cfg, false).await;
    let upstreams = Arc::new(Upstreams::new(&cfg, &metrics, &dns.resolved()));
    let (publish_upstreams, current_upstreams) = watch::channel(upstreams.clone());
    let supervisor = Supervisor::new(background, Some(metrics.task_restarts.clone()));
    let drain = Drain::new();
    let reload_status = Arc::new(ArcSwap::from_pointee(ReloadStatus {
        version: 1,
        ..ReloadStatus::default()
    }));

    let arbiters = cfg.arbiter.as_ref().map(|a| {
        let feeds =
            crate::upstream::arbiter::ArbiterFeeds::new(&a.addresses, a.max_age.0, metrics.clone());
        let (f, up) = (feeds.clone(), current_upstreams.clone());
        supervisor.spawn("arbiter feeds", move || f.clone().run(up.clone()));
        feeds
    });
    let admin = crate::admin::serve(
        cfg.admin,
        metrics.clone(),
        current_upstreams.clone(),
        arbiters.clone(),
        reload_status.clone(),
        drain.clone(),
        dns.clone(),
    )
    .await
    .map_err(|source| StartError::Bind {
        addr: cfg.admin,
        what: "admin listener",
        source,
    })?;
    health::bootstrap(&upstreams).await;
    for p in &upstreams.pools {
        let healthy = p.backends.iter().filter(|b| b.eligible()).count();
        if healthy == 0 {
            log::warn!(
                "pool {} ({}): no healthy backend yet; requests get 503 until one passes its check",
                p.name,
                p.kind.as_str()
            );
        } else {
            log::info!(
                "pool {} ({}): {healthy}/{} backends healthy",
                p.name,
                p.kind.as_str(),
                p.backends.len()
            );
        }
    }
    {
        let up = current_upstreams.clone();
        supervisor.spawn("health probes", move || health::run(up.clone()));
    }
    let mut env = okome_filters::FilterEnv::default();
    if let Some(c) = &cfg.control {
        let cache =
            crate::policy::PolicyCache::start(&c.config, c.token.clone(), metrics.clone()).await;
        let c = cache.clone();
        supervisor.spawn("policy watch", move || c.clone().watch());
        let c = cache.clone();
        supervisor.spawn("policy key writer", move || c.clone().write_keys());
        env.policy = cache;
    }
    if let crate::config::compile::LimitStoreConfig::Redis(settings) = &cfg.limit_store {
        // Connects lazily: the edge starts (and fails open or closed per tenant) while Redis
        // is down.
        let store = okome_limits::RedisLimits::new(settings.clone(), metrics.limits.clone())?;
        log::info!(
            "tenant limits shared in Redis at {} (timeout {:?}, lease {:?})",
            settings.url,
            settings.timeout,
            settings.lease
        );
        let s = store.clone();
        supervisor.spawn("limits lease renewal", move || s.clone().renew_leases());
        env.limits = Arc::new(store);
    }
    let streams = Arc::new(crate::resume::Streams::new(
        cfg.resumable_budget,
        crate::resume::ResumeMetrics::new(metrics.registry())?,
    ));
    {
        let s = streams.clone();
        supervisor.spawn("resumable streams sweeper", move || s.clone().sweeper());
    }
    let shared = Shared {
        streams,
        metrics: metrics.clone(),
        env,
        access_log,
        arbiters,
        drain: drain.clone(),
        connections: ConnectionLimits::new(
            &cfg.listeners
                .iter()
                .filter_map(|l| Some((l.address, l.max_connections?)))
                .collect::<Vec<_>>(),
        ),
        certs: cfg
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(crate::tls::Served::new))
            .collect(),
    };
    let certs = shared.certs.clone();
    let edge = Edge::new(&cfg, upstreams, &shared, 1);
    init_series(&edge);
    metrics.config_version.set(1);
    metrics.set_certificates(&cfg.listeners);
    let current = Arc::new(ArcSwap::from_pointee(edge));
    let watch_file = path.is_some();
    let reloader = Reloader::new(reload::Parts {
        path,
        applied: cfg,
        current: current.clone(),
        upstreams: publish_upstreams,
        shared,
        status: reload_status,
        dns: dns.clone(),
    });
    {
        // Always running (it idles without names): a reload may bring the first name.
        let (d, r, up) = (dns, reloader.clone(), current_upstreams.clone());
        supervisor.spawn("dns resolver", move || {
            dns::run(d.clone(), r.clone(), up.clone())
        });
    }
    if watch_file {
        let r = reloader.clone();
        supervisor.spawn("config reload", move || r.clone().watch());
    }
    Ok(Assembled {
        proxy: Proxy::new(current),
        reloader,
        supervisor,
        admin,
        drain,
        certs,
    })
}

/// Creates every route's and backend's series at zero, so dashboards see them from the start.
pub(crate) fn init_series(edge: &Edge) {
    let routes: Vec<(&str, Vec<&str>)> = edge
        .routes
        .routes
        .iter()
        .map(|r| {
            let pools = (0..edge.upstreams.pools.len())
                .filter(|&i| r.may_use_pool(i))
                .map(|i| edge.upstreams.pools[i].name.as_str())
                .collect();
            (r.name.as_str(), pools)
        })
        .collect();
    let backends: Vec<(&str, &str)> = edge
        .upstreams
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| (p.name.as_str(), b.id.as_str())))
        .collect();
    edge.metrics.init_series(&routes, &backends);
    for r in edge.routes.routes.iter().filter(|r| r.mid_stream_failover) {
        edge.metrics.init_failover_series(&r.name);
    }
}

/// Pingora's server settings for a compiled config.
pub fn server_conf(cfg: &CompiledEdge) -> ServerConf {
    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    ServerConf {
        threads,
        grace_period_seconds: Some(cfg.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        // The retry core caps attempts per config generation; this is only Pingora's backstop,
        // at the most compile allows, so a reload may raise `retry.max_attempts`.
        max_retries: crate::config::compile::MAX_ATTEMPTS as usize,
        upgrade_sock: cfg.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    }
}

/// Pingora's TLS settings for a listener serving `certs` (chosen per handshake by SNI, swapped
/// by reloads), offering HTTP/2 by ALPN when `http2`.
pub fn tls_settings(
    served: crate::tls::Served,
    http2: bool,
) -> Result<pingora_core::listeners::tls::TlsSettings, StartError> {
    // The paths are ignored once a certificate resolver is set.
    let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate("", "")
        .map_err(|e| StartError::Tls(e.to_string()))?;
    settings.set_cert_resolver(served.certs);
    if let Some(ca) = served.client_ca {
        settings.set_client_cert_verifier(ca);
    }
    if http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

/// The server options of an HTTP/2 listener: h2c with prior knowledge next to HTTP/1.1 when
/// plaintext (Pingora ignores it under TLS, where ALPN decides), and an HTTP/2 connection with
/// no stream open for `idle` is closed (the request-head deadline covers HTTP/1.1 only).
pub fn h2_options(idle: std::time::Duration) -> pingora_core::apps::HttpServerOptions {
    let mut o = pingora_core::apps::HttpServerOptions::default();
    o.h2c = true;
    o.h2_idle_timeout = Some(idle);
    o
}

/// Starts the background work on `control`, then runs the proxy on this thread until
/// SIGINT/SIGTERM; SIGHUP or an edit of `path` (the file it was loaded from) reloads the config.
///
/// With `upgrade`, the listening sockets come from the edge running now (Pingora's upgrade
/// socket, `server.upgrade_sock`), which hands them over on SIGQUIT and drains.
pub fn run(
    cfg: CompiledEdge,
    path: Option<&std::path::Path>,
    control: &tokio::runtime::Runtime,
    upgrade: bool,
) -> Result<(), StartError> {
    for address in cfg.listeners.iter().filter(|_| !upgrade).map(|l| l.address) {
        // Pingora reports a taken port only by exiting from a worker; check first so the
        // operator gets a clear message.
        std::net::TcpListener::bind(address).map_err(|source| StartError::Bind {
            addr: address,
            what: "client listener",
            source,
        })?;
    }
    let conf = server_conf(&cfg);
    let conf_grace = cfg.grace_period.as_secs();
    let client_head = cfg.timeouts.client_head.0;
    let listeners: Vec<(SocketAddr, bool)> =
        cfg.listeners.iter().map(|l| (l.address, l.http2)).collect();
    let assembled = control.block_on(assemble(
        cfg,
        path.map(std::path::Path::to_path_buf),
        control.handle().clone(),
    ))?;
    let threads = conf.threads;
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        log::info!(
            "upgrade: waiting for the running edge's listeners on {} (send it SIGQUIT)",
            server.configuration.upgrade_sock
        );
    }
    server.bootstrap();
    for (i, &(address, http2)) in listeners.iter().enumerate() {
        let certs = assembled.certs.get(i).cloned().flatten();
        let mut svc = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            assembled.proxy.clone(),
            &format!("okome edge {address}"),
        );
        // Pingora buffers 64 KiB of reads per client connection for TLS's sake; a plaintext token
        // stream holds its connection for minutes and reads only the request, so that buffer was
        // most of the edge's memory per stream. Larger reads (request bodies) bypass it.
        let mut listener = ListenerConfig::tcp(address.to_string())
            .l4_buffer(L4BufferSettings::default().read(CLIENT_READ_BUFFER));
        let what = match certs {
            Some(certs) => {
                listener = listener.tls(tls_settings(certs, http2)?);
                if http2 {
                    "TLS, HTTP/2 and HTTP/1.1 by ALPN"
                } else {
                    "TLS, HTTP/1.1"
                }
            }
            None if http2 => "plaintext, HTTP/1.1 and h2c",
            None => "plaintext, HTTP/1.1",
        };
        if http2 {
            if let Some(app) = svc.app_logic_mut() {
                app.server_options = Some(h2_options(client_head));
            }
        }
        svc.add_listener(listener);
        log::info!("edge listening on {address} ({what}; {threads} worker threads)");
        server.add_service(svc);
    }
    log::info!(
        "admin listening on http://{} (/ /ui /metrics /healthz /readyz /status)",
        assembled.admin
    );
    log::info!(
        "background tasks: {}",
        assembled.supervisor.names().join(", ")
    );
    super::drain::watch(
        assembled.drain.clone(),
        server.watch_execution_phase(),
        std::time::Duration::from_secs(conf_grace),
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainSignals(assembled.drain.clone())),
    });
    control.block_on(assembled.supervisor.shutdown());
    Ok(())
}
