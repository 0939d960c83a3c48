//! Per-listener caps on client connections (`listeners[].max_connections`). A connection holds a
//! slot from its first request until it closes: the slot rides from request to request on
//! Pingora's per-connection context (`persist_connection_context` / `on_connection_reuse`) and
//! is released when the connection, and with it that context, is dropped. A connection over the
//! cap gets a clear 503 on its first request and is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The caps of every capped listener (shared by every config generation).
#[derive(Debug, Default)]
pub struct ConnectionLimits {
    caps: Vec<Cap>,
}

#[derive(Debug)]
struct Cap {
    listener: SocketAddr,
    max: usize,
    open: Arc<AtomicUsize>,
}

/// One connection's place under its listener's cap; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A connection the cap refuses.
#[derive(Debug, Clone, Copy)]
pub struct Full {
    /// The listener's cap.
    pub max: usize,
}

impl ConnectionLimits {
    /// Caps for `(listener address, max connections)` pairs.
    pub fn new(caps: &[(SocketAddr, usize)]) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            caps: caps
                .iter()
                .map(|&(listener, max)| Cap {
                    listener,
                    max,
                    open: Arc::new(AtomicUsize::new(0)),
                })
                .collect(),
        })
    }

    /// A slot for a new connection accepted on `local`: `Ok(None)` when its listener has no
    /// cap, `Err` when the cap is reached.
    pub fn admit(&self, local: Option<SocketAddr>) -> Result<Option<Arc<Slot>>, Full> {
        let Some(local) = local else { return Ok(None) };
        let Some(cap) = self.caps.iter().find(|c| serves(c.listener, local)) else {
            return Ok(None);
        };
        let mut open = cap.open.load(Relaxed);
        loop {
            if open >= cap.max {
                return Err(Full { max: cap.max });
            }
            match cap
                .open
                .compare_exchange_weak(open, open + 1, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(Some(Arc::new(Slot(cap.open.clone())))),
                Err(now) => open = now,
            }
        }
    }
}

/// Whether a listener configured as `listener` accepted a connection on `local` (an
/// unspecified IP or port 0 in the config matches any).
fn serves(listener: SocketAddr, local: SocketAddr) -> bool {
    (listener.ip().is_unspecified() || listener.ip() == local.ip())
        && (listener.port() == 0 || listener.port() == local.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn slots_are_counted_per_listener_and_released_on_drop() {
        let a: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let limits = ConnectionLimits::new(&[(a, 2)]);
        let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let other: SocketAddr = "10.0.0.1:8081".parse().unwrap();
        let s1 = limits.admit(Some(local)).unwrap();
        let s2 = limits.admit(Some(local)).unwrap();
        assert!(s1.is_some() && s2.is_some());
        assert_eq!(limits.admit(Some(local)).unwrap_err().max, 2);
        assert!(limits.admit(Some(other)).unwrap().is_none(), "uncapped");
        drop(s1);
        assert!(limits.admit(Some(local)).unwrap().is_some());
    }
}
