//! Background work the edge owns: health probes, arbiter feeds, the policy watch and key writer.
//! Each runs as a named task that starts with the server and stops with it, and is restarted
//! (with backoff, logged and counted) if it panics or returns — no fire-and-forget spawns.

use parking_lot::Mutex;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First restart delay; doubles up to [`MAX_BACKOFF`] while a task keeps failing fast.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts over from [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Owns the background tasks.
#[derive(Debug)]
pub struct Supervisor {
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    restarts: Option<prometheus::IntCounterVec>,
}

impl Supervisor {
    /// A supervisor running tasks on `handle`; `restarts` counts restarts by task name.
    pub fn new(
        handle: tokio::runtime::Handle,
        restarts: Option<prometheus::IntCounterVec>,
    ) -> Self {
        Supervisor {
            handle,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            restarts,
        }
    }

    /// Runs the future `make` builds as task `name`, building and running a new one whenever it
    /// panics or returns, until [`shutdown`](Self::shutdown).
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut stop = self.stop.subscribe();
        let handle = self.handle.clone();
        let restarts = self.restarts.clone();
        if let Some(r) = &restarts {
            r.with_label_values(&[name]);
        }
        let task = self.handle.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = tokio::time::Instant::now();
                let mut run = handle.spawn(make());
                let outcome = tokio::select! {
                    r = &mut run => r,
                    _ = stop.wait_for(|s| *s) => {
                        run.abort();
                        return;
                    }
                };
                match outcome {
                    Err(e) if e.is_panic() => log::error!("task {name} panicked; restarting"),
                    _ => log::warn!("task {name} ended; restarting"),
                }
                if let Some(r) = &restarts {
                    r.with_label_values(&[name]).inc();
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        self.tasks.lock().push((name, task));
    }

    /// Names of the tasks started.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.lock().iter().map(|(n, _)| *n).collect()
    }

    /// Stops every task and waits until they are gone.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for (_, t) in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_all_stop_on_shutdown() {
        let counter =
            prometheus::IntCounterVec::new(prometheus::Opts::new("restarts", "test"), &["task"])
                .expect("counter");
        let sup = Supervisor::new(tokio::runtime::Handle::current(), Some(counter.clone()));
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move || {
            let r = r.clone();
            async move {
                // Panics on its first two runs, then runs until stopped.
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counter.with_label_values(&["flaky"]).get(), 2);
        assert_eq!(sup.names(), vec!["flaky"]);
        tokio::time::timeout(Duration::from_secs(2), sup.shutdown())
            .await
            .expect("shutdown is prompt");
    }
}
