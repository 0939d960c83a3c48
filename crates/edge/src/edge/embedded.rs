//! The edge inside another process (tests, benchmarks): the same proxy and background work as
//! `okome edge`, served on a listener this process binds (port 0 works: the address is read
//! back), on its own runtime, stopped when the handle is dropped. Pingora's own server is for
//! `okome edge`: it owns signals, worker runtimes and (later) graceful upgrade, none of which a
//! test wants. Connections are driven as Pingora's listening service drives them
//! (`ServerApp::process_new` until the connection is not reused).

use super::drain::Drain;
use super::reload::Reloader;
use super::server::{assemble, server_conf, StartError};
use crate::config::compile::CompiledEdge;
use pingora_core::apps::ServerApp;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// A running embedded edge; dropping it stops it (listeners close, streams are cut).
#[derive(Debug)]
pub struct Embedded {
    /// The client listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// Applies new configs to it (what SIGHUP does to `okome edge`).
    pub reloader: Arc<Reloader>,
    /// Its drain state: [`Drain::start`] turns `/readyz` 503 as SIGTERM does (requests are
    /// still served: an embedded edge has no listener to close).
    pub drain: Arc<Drain>,
    stop: watch::Sender<bool>,
}

impl Embedded {
    /// Starts an edge for `cfg` on its own thread and runtime; its client listener binds the
    /// config's first listener address (e.g. `127.0.0.1:0`), its admin listener `cfg.admin`.
    /// Returns once both accept connections and the first health round is done.
    pub async fn start(cfg: CompiledEdge) -> Result<Embedded, StartError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("okome-embedded-edge".into())
            .spawn(move || serve(cfg, ready_tx, stopped))
            .map_err(StartError::Runtime)?;
        match ready_rx.await {
            Ok(Ok((addr, admin, reloader, drain))) => Ok(Embedded {
                addr,
                admin,
                reloader,
                drain,
                stop,
            }),
            Ok(Err(e)) => Err(e),
            // The thread ended without a word: it panicked; say so rather than hang.
            Err(_) => {
                let why = match thread.join() {
                    Err(p) => p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default(),
                    Ok(()) => String::new(),
                };
                Err(StartError::Runtime(std::io::Error::other(format!(
                    "the embedded edge's thread ended during start {why}"
                ))))
            }
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type Ready =
    oneshot::Sender<Result<(SocketAddr, SocketAddr, Arc<Reloader>, Arc<Drain>), StartError>>;

/// The embedded edge's thread: a runtime of its own for the proxy and the background work.
fn serve(cfg: CompiledEdge, ready: Ready, mut stopped: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("okome-embedded")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StartError::Runtime(e)));
            return;
        }
    };
    rt.block_on(async move {
        let client_head = cfg.timeouts.client_head.0;
        let (listen, http2) = cfg
            .listeners
            .first()
            .map_or((SocketAddr::from(([127, 0, 0, 1], 0)), false), |l| {
                (l.address, l.http2)
            });
        let bound = tokio::net::TcpListener::bind(listen)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)));
        let (addr, listener) = match bound {
            Ok(b) => b,
            Err(source) => {
                let _ = ready.send(Err(StartError::Bind {
                    addr: listen,
                    what: "client listener",
                    source,
                }));
                return;
            }
        };
        let conf = Arc::new(server_conf(&cfg));
        let assembled = match assemble(cfg, None, tokio::runtime::Handle::current()).await {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // Pingora's listener sets what a session knows of its socket (the client's address).
        let listener = pingora_core::protocols::l4::listener::Listener::from(listener);
        let mut proxy = pingora_proxy::http_proxy(&conf, assembled.proxy);
        if http2 {
            proxy.server_options = Some(super::server::h2_options(client_head));
        }
        // TLS as `okome edge` serves it: the same settings, built into an acceptor here.
        let tls = match assembled.certs.first().cloned().flatten() {
            Some(certs) => match super::server::tls_settings(certs, http2) {
                Ok(settings) => Some(Arc::new(settings.build())),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            },
            None => None,
        };
        let proxy = Arc::new(proxy);
        let reloader = assembled.reloader.clone();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let _ = ready.send(Ok((
            addr,
            assembled.admin,
            reloader,
            assembled.drain.clone(),
        )));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok(mut stream) = accepted else { continue };
                    let _ = stream.set_nodelay();
                    let (app, shutdown, tls) = (proxy.clone(), shutdown.clone(), tls.clone());
                    tokio::spawn(async move {
                        let stream: pingora_core::protocols::Stream = match tls {
                            Some(acceptor) => match acceptor.tls_handshake(stream).await {
                                Ok(s) => Box::new(s),
                                Err(e) => {
                                    log::debug!("TLS handshake failed: {e}");
                                    return;
                                }
                            },
                            None => Box::new(stream),
                        };
                        let mut next = app.process_new(stream, &shutdown).await;
                        while let Some(reused) = next {
                            next = app.process_new(reused, &shutdown).await;
                        }
                    });
                }
                _ = stopped.changed() => break,
            }
        }
        let _ = shutdown_tx.send(true);
        assembled.supervisor.shutdown().await;
    });
    // Streams still open are cut: a stopped test edge does not linger.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
}
