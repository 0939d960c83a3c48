//! Assembles and runs the edge: the Pingora proxy service on the client listeners, and a small
//! control runtime for the admin listener and the health probes.

use super::Edge;
use crate::config::compile::CompiledEdge;
use crate::metrics::Metrics;
use crate::upstream::{health, Upstreams};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use std::net::SocketAddr;

/// Read buffer per client connection (Pingora's default is 64 KiB).
const CLIENT_READ_BUFFER: usize = 4 * 1024;
use std::sync::Arc;

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
}

/// Starts the admin listener and health probes on `control`, then runs the proxy on this thread
/// until SIGINT/SIGTERM.
pub fn run(cfg: &CompiledEdge, control: &tokio::runtime::Runtime) -> Result<(), StartError> {
    for &address in &cfg.listeners {
        // Pingora reports a taken port only by exiting from a worker; check first so the
        // operator gets a clear message.
        std::net::TcpListener::bind(address).map_err(|source| StartError::Bind {
            addr: address,
            what: "client listener",
            source,
        })?;
    }
    let access_log =
        super::access_log::AccessLog::open(cfg.access_log.enabled, cfg.access_log.path.as_deref())
            .map_err(|source| StartError::AccessLog {
                path: cfg.access_log.path.clone().unwrap_or_default(),
                source,
            })?;
    let metrics = Metrics::new();
    let upstreams = Arc::new(Upstreams::new(cfg, &metrics));
    // Background work lives as long as the server: probes, arbiter feeds, policy watch.
    let supervisor = okome_core::supervisor::Supervisor::new(
        control.handle().clone(),
        Some(metrics.task_restarts.clone()),
    );

    let arbiters = cfg.arbiter.as_ref().map(|a| {
        let feeds =
            crate::upstream::arbiter::ArbiterFeeds::new(&a.addresses, a.max_age.0, metrics.clone());
        let (f, up) = (feeds.clone(), upstreams.clone());
        supervisor.spawn("arbiter feeds", move || f.clone().run(up.clone()));
        feeds
    });
    let admin = control
        .block_on(crate::admin::serve(
            cfg.admin,
            metrics.clone(),
            upstreams.clone(),
            arbiters.clone(),
        ))
        .map_err(|source| StartError::Bind {
            addr: cfg.admin,
            what: "admin listener",
            source,
        })?;
    control.block_on(health::bootstrap(&upstreams));
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
        let up = upstreams.clone();
        supervisor.spawn("health probes", move || health::run(up.clone()));
    }

    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(cfg.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        max_retries: cfg.retry.max_attempts as usize,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut env = okome_filters::FilterEnv::default();
    if let Some(c) = &cfg.control {
        let cache = control.block_on(crate::policy::PolicyCache::start(
            &c.config,
            c.token.clone(),
            metrics.clone(),
        ));
        let c = cache.clone();
        supervisor.spawn("policy watch", move || c.clone().watch());
        let c = cache.clone();
        supervisor.spawn("policy key writer", move || c.clone().write_keys());
        env.policy = cache;
    }
    let mut edge = Edge::new(cfg, metrics.clone(), upstreams.clone(), &env, access_log);
    edge.arbiters = arbiters;
    {
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
        metrics.init_series(&routes, &backends);
    }
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, edge);
    for l in &cfg.listeners {
        // Pingora buffers 64 KiB of reads per client connection for TLS's sake; a plaintext token
        // stream holds its connection for minutes and reads only the request, so that buffer was
        // most of the edge's memory per stream. Larger reads (request bodies) bypass it.
        svc.add_listener(
            ListenerConfig::tcp(l.to_string())
                .l4_buffer(L4BufferSettings::default().read(CLIENT_READ_BUFFER)),
        );
        log::info!("edge listening on {} ({} worker threads)", l, threads);
    }
    log::info!("admin listening on http://{admin} (/ /ui /metrics /healthz /readyz /status)");
    server.add_service(svc);
    log::info!("background tasks: {}", supervisor.names().join(", "));
    server.run(RunArgs::default());
    control.block_on(supervisor.shutdown());
    Ok(())
}
