//! Draining that tells the truth. On SIGTERM (or SIGQUIT, handing the listeners to a new
//! process for an upgrade) `/readyz` turns 503 at once; Pingora stops accepting; the process
//! exits as soon as its last request ends rather than after the whole grace period; and a stream
//! still running near the end of the grace period is ended in its own format with a terminal
//! error event, logged and counted with outcome `shutdown`, instead of being cut silently.

use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The process's drain state, shared by every config generation.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    cut: AtomicBool,
    active: AtomicU64,
}

/// One request in flight; dropping it (the request's end) lets the drain finish.
#[derive(Debug)]
pub struct Active(Arc<Drain>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl Drain {
    /// A drain not started.
    pub fn new() -> Arc<Self> {
        Arc::new(Drain::default())
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Relaxed);
        Active(self.clone())
    }

    /// Whether the process is shutting down (`/readyz` answers 503).
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Whether running streams are to end now (the grace period is nearly over).
    pub fn cut(&self) -> bool {
        self.cut.load(Relaxed)
    }

    /// Requests in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Starts draining: `/readyz` answers 503 from now on (what SIGTERM does first).
    pub fn start(&self) {
        if !self.draining.swap(true, Relaxed) {
            log::info!(
                "draining: /readyz answers 503; {} request(s) in flight",
                self.active()
            );
        }
    }
}

/// The error a stream is ended with when the grace period runs out.
pub fn shutdown_error() -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::Custom(SHUTDOWN),
        "the edge is shutting down",
    )
}

/// Whether `e` is [`shutdown_error`].
pub fn is_shutdown(e: &pingora_error::Error) -> bool {
    matches!(e.etype(), pingora_error::ErrorType::Custom(SHUTDOWN))
}

const SHUTDOWN: &str = "shutdown";

/// Pingora's signal handling (SIGTERM graceful, SIGQUIT upgrade, SIGINT fast) that also marks
/// the drain at once.
#[derive(Debug)]
pub struct DrainSignals(pub Arc<Drain>);

#[async_trait]
impl ShutdownSignalWatch for DrainSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for SIGTERM/SIGQUIT/SIGINT; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                self.0.start();
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing the listeners to the new process (okome edge --upgrade)");
                self.0.start();
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Watches Pingora's shutdown phases on its own thread: once the listeners are closed and the
/// grace period runs, exits as soon as no request is in flight; shortly before the grace period
/// ends, tells running streams to end with a terminal error event.
pub fn watch(drain: Arc<Drain>, mut phases: broadcast::Receiver<ExecutionPhase>, grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("okome-drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(
                        ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::GracefulUpgradeTransferringFds,
                    ) => drain.start(),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let started = Instant::now();
            // Streams get this long to end in their own format before the process ends.
            let margin = (grace / 2).min(Duration::from_secs(1));
            loop {
                let active = drain.active();
                if active == 0 {
                    log::info!("drained after {:?}: exiting", started.elapsed());
                    std::process::exit(0);
                }
                if !drain.cut() && started.elapsed() + margin >= grace {
                    log::warn!(
                        "grace period ending: {active} stream(s) still running get a terminal error event"
                    );
                    drain.cut.store(true, Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the drain watcher ({e}): the grace period runs in full");
    }
}
