//! Sticky routing by consistent hashing (`pools.<name>.sticky`): requests that carry the same
//! key (a conversation id, the caller's API key, a stream id) go to the same backend, so
//! conversations and resumed streams land where their state is.
//!
//! The ring (`pingora-ketama`, nginx's consistent hash) is built once per pool generation over
//! **all** of the pool's backends, healthy or not: a backend that goes unhealthy, is ejected or
//! drains stays on the ring and is only skipped at pick time, so losing it moves only the keys
//! that were on it (to the next backend on the ring), and every other key stays where it was.
//! Per request the work is one CRC32 of the key and a short walk of the ring; nothing is
//! allocated.

use super::Backend;
use pingora_ketama::{Bucket, Continuum};
use std::net::SocketAddr;
use std::sync::Arc;

/// The header a resumable stream will be resumed by: a client (or an ingress) that sends the
/// same `x-okome-stream-id` lands on the stream node that holds the stream.
pub const STREAM_ID: http::HeaderName = http::HeaderName::from_static("x-okome-stream-id");

/// Ring points per backend (`pingora-ketama`'s V1 ring, nginx-compatible): bounds a walk of the
/// whole ring.
const POINTS_PER_BACKEND: usize = 160;

/// Where a request's sticky key comes from (`pools.<name>.sticky.key[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `header:<name>`: the value of that request header.
    Header(http::HeaderName),
    /// `api_key`: the caller's key (`Authorization: Bearer …` or `x-api-key`). Only its CRC32
    /// is ever computed from it; the key is neither kept nor logged.
    ApiKey,
    /// `stream_id`: the `x-okome-stream-id` header (the id a resumable stream is resumed by).
    StreamId,
}

/// Why a key source does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySourceError {
    /// Not one of the known forms.
    #[error("unknown key source {0:?}: use `header:<name>`, `api_key` or `stream_id`")]
    Unknown(String),
    /// `header:` with a name that is not a header name.
    #[error("{0:?} is not a valid header name")]
    BadHeader(String),
}

impl KeySource {
    /// Parses `header:<name>`, `api_key` or `stream_id`.
    pub fn parse(s: &str) -> Result<Self, KeySourceError> {
        match s.trim() {
            "api_key" => Ok(KeySource::ApiKey),
            "stream_id" => Ok(KeySource::StreamId),
            other => match other.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeySource::Header)
                    .map_err(|_| KeySourceError::BadHeader(name.to_owned())),
                None => Err(KeySourceError::Unknown(other.to_owned())),
            },
        }
    }

    /// This source's key in `headers`, when present and not empty.
    fn find<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
        let v = match self {
            KeySource::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            KeySource::StreamId => headers.get(STREAM_ID).map(|v| v.as_bytes()),
            KeySource::ApiKey => okome_filters::presented_key(headers).map(str::as_bytes),
        }?;
        (!v.is_empty()).then_some(v)
    }
}

/// How a sticky pick went (`okome_sticky_picks_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyPick {
    /// The key's own backend took the request.
    Hit(usize),
    /// The key's own backend could not (unhealthy, ejected, shedding, already tried): the next
    /// one on the ring did.
    Moved(usize),
}

impl StickyPick {
    /// The backend index picked.
    pub fn index(self) -> usize {
        match self {
            StickyPick::Hit(i) | StickyPick::Moved(i) => i,
        }
    }
}

/// One pool's ring and key sources, built with the pool.
pub struct Sticky {
    ring: Continuum,
    sources: Vec<KeySource>,
    /// The ring's backends in pool order, to map a ring node back to its index.
    addrs: Vec<SocketAddr>,
    /// `okome_sticky_picks_total{pool, result}`, resolved once per pool.
    counters: Option<Counters>,
}

/// The pool's three result series.
#[derive(Debug)]
struct Counters {
    hit: prometheus::IntCounter,
    moved: prometheus::IntCounter,
    no_key: prometheus::IntCounter,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("sources", &self.sources)
            .field("backends", &self.addrs.len())
            .finish()
    }
}

impl Sticky {
    /// The ring over `backends` (every backend of the pool, in pool order, weight 1).
    pub fn new(sources: Vec<KeySource>, backends: &[SocketAddr]) -> Self {
        let buckets: Vec<Bucket> = backends.iter().map(|&a| Bucket::new(a, 1)).collect();
        Sticky {
            ring: Continuum::new(&buckets),
            sources,
            addrs: backends.to_vec(),
            counters: None,
        }
    }

    /// Counts picks in `okome_sticky_picks_total{pool=pool}`.
    pub fn counted(mut self, metrics: &crate::metrics::Metrics, pool: &str) -> Self {
        let c = |r: &str| metrics.sticky_picks.with_label_values(&[pool, r]);
        self.counters = Some(Counters {
            hit: c("hit"),
            moved: c("moved"),
            no_key: c("no_key"),
        });
        self
    }

    /// The request's key: the first source present in `headers`.
    pub fn key<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
        self.sources.iter().find_map(|s| s.find(headers))
    }

    /// The backend for `key`: the first on the ring from the key's point that is eligible and
    /// not `skip`ped. `None` when no backend is.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        key: &[u8],
        skip: impl Fn(usize) -> bool,
    ) -> Option<StickyPick> {
        let ok = |i: usize| backends.get(i).is_some_and(|b| b.eligible()) && !skip(i);
        // Nothing takes it: say so without walking the whole ring.
        if !(0..backends.len()).any(ok) {
            return None;
        }
        let bound = self.addrs.len() * POINTS_PER_BACKEND + 1;
        let mut first = None;
        for addr in self.ring.node_iter(key).take(bound) {
            let i = self.addrs.iter().position(|a| a == addr)?;
            let first = *first.get_or_insert(i);
            if ok(i) {
                return Some(if i == first {
                    StickyPick::Hit(i)
                } else {
                    StickyPick::Moved(i)
                });
            }
        }
        None
    }

    /// Counts one pick (`None`: the request had no key).
    pub fn count(&self, pick: Option<StickyPick>) {
        if let Some(c) = &self.counters {
            match pick {
                Some(StickyPick::Hit(_)) => c.hit.inc(),
                Some(StickyPick::Moved(_)) => c.moved.inc(),
                None => c.no_key.inc(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pool(n: usize) -> (Vec<Arc<Backend>>, Vec<SocketAddr>) {
        let m = crate::metrics::Metrics::new();
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([10, 77, 0, 10 + i as u8], 8080)))
            .collect();
        let backends = addrs
            .iter()
            .map(|&a| {
                let b = Arc::new(Backend::new("p", a, m.clone()));
                b.probe_result(true, 1, 1, "");
                b
            })
            .collect();
        (backends, addrs)
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("conversation-{i}"))
    }

    fn assign(s: &Sticky, b: &[Arc<Backend>], skip: impl Fn(usize) -> bool) -> Vec<usize> {
        keys()
            .map(|k| s.pick(b, k.as_bytes(), &skip).unwrap().index())
            .collect()
    }

    #[test]
    fn same_key_same_backend_and_keys_spread() {
        let (b, addrs) = pool(4);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        let first = assign(&s, &b, |_| false);
        assert_eq!(first, assign(&s, &b, |_| false), "deterministic");
        // A ring built again from the same addresses (a reload, another ingress) agrees.
        let again = Sticky::new(vec![KeySource::StreamId], &addrs);
        assert_eq!(first, assign(&again, &b, |_| false));
        let mut per = [0usize; 4];
        for i in &first {
            per[*i] += 1;
        }
        // 10,000 keys over 4 backends: each gets a fair share (25 % ± 10 points).
        assert!(per.iter().all(|&n| (1_500..3_500).contains(&n)), "{per:?}");
        assert!(matches!(
            s.pick(&b, b"conversation-1", |_| false),
            Some(StickyPick::Hit(_))
        ));
    }

    #[test]
    fn losing_one_backend_moves_only_its_keys() {
        let (b, addrs) = pool(5);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        let before = assign(&s, &b, |_| false);
        // Backend 2 goes unhealthy (it stays on the ring).
        b[2].probe_result(false, 1, 1, "down");
        let after = assign(&s, &b, |_| false);
        let mut moved = 0;
        for (x, y) in before.iter().zip(&after) {
            if x == y {
                continue;
            }
            moved += 1;
            assert_eq!(*x, 2, "a key not on the lost backend moved: {x} -> {y}");
        }
        let on_lost = before.iter().filter(|&&i| i == 2).count();
        assert_eq!(moved, on_lost);
        assert!(after.iter().all(|&i| i != 2));
        // Its keys spread over the others rather than all landing on one.
        let mut to = std::collections::BTreeSet::new();
        for (x, y) in before.iter().zip(&after) {
            if *x == 2 {
                to.insert(*y);
            }
        }
        assert!(to.len() >= 2, "{to:?}");
        // The same holds for a per-request exclusion (already tried, shedding): moved, counted.
        let k = keys().zip(&before).find(|(_, &i)| i == 0).unwrap().0;
        b[2].probe_result(true, 1, 1, "");
        assert_eq!(
            s.pick(&b, k.as_bytes(), |_| false),
            Some(StickyPick::Hit(0))
        );
        assert!(matches!(
            s.pick(&b, k.as_bytes(), |i| i == 0),
            Some(StickyPick::Moved(i)) if i != 0
        ));
        assert_eq!(s.pick(&b, k.as_bytes(), |_| true), None);
    }

    #[test]
    fn removing_a_backend_from_the_config_moves_only_its_keys() {
        let (b, addrs) = pool(5);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        let before = assign(&s, &b, |_| false);
        // A reload without backend 4: the ring is rebuilt over the other four.
        let kept: Vec<Arc<Backend>> = b[..4].to_vec();
        let s2 = Sticky::new(vec![KeySource::StreamId], &addrs[..4]);
        let after = assign(&s2, &kept, |_| false);
        for (x, y) in before.iter().zip(&after) {
            if *x != 4 {
                assert_eq!(x, y);
            }
        }
    }

    #[test]
    fn key_sources_in_order_and_no_key() {
        let s = Sticky::new(
            vec![
                KeySource::parse("header:x-conversation-id").unwrap(),
                KeySource::parse("api_key").unwrap(),
                KeySource::parse("stream_id").unwrap(),
            ],
            &pool(2).1,
        );
        let mut h = http::HeaderMap::new();
        assert_eq!(s.key(&h), None, "no key: power of two choices decides");
        h.insert(STREAM_ID, "s-1".parse().unwrap());
        assert_eq!(s.key(&h), Some(&b"s-1"[..]));
        h.insert("authorization", "Bearer sk-abc".parse().unwrap());
        assert_eq!(s.key(&h), Some(&b"sk-abc"[..]));
        h.insert("x-conversation-id", "".parse().unwrap());
        assert_eq!(s.key(&h), Some(&b"sk-abc"[..]), "an empty value is no key");
        h.insert("x-conversation-id", "c-9".parse().unwrap());
        assert_eq!(s.key(&h), Some(&b"c-9"[..]));
    }

    #[test]
    fn key_sources_parse() {
        assert_eq!(
            KeySource::parse("header:X-Conversation-Id"),
            Ok(KeySource::Header(http::HeaderName::from_static(
                "x-conversation-id"
            )))
        );
        assert!(matches!(
            KeySource::parse("cookie:x"),
            Err(KeySourceError::Unknown(_))
        ));
        assert!(matches!(
            KeySource::parse("header:bad header"),
            Err(KeySourceError::BadHeader(_))
        ));
        assert!(matches!(
            KeySource::parse("header:"),
            Err(KeySourceError::BadHeader(_))
        ));
    }
}
