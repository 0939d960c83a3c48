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
//!
//! A stream id (`resume::id`) names the stream node that made it by a tag of the node's
//! address: a resume goes straight to the backend with that tag, wherever the id hashes to,
//! because the request that created the stream was routed by another key. Only when no usable
//! backend has the tag (it is out, or a NAT changed the address) is the id hashed.

use super::Backend;
use crate::resume::id::{node_tag, tag_of};
use pingora_ketama::{Bucket, Continuum};
use std::net::SocketAddr;
use std::sync::Arc;

/// The header a resumable stream will be resumed by: a client (or an ingress) that sends the
/// same `x-okome-stream-id` lands on the stream node that holds the stream.
pub const STREAM_ID: http::HeaderName = http::HeaderName::from_static("x-okome-stream-id");

/// The path a stream is resumed (`GET`) or cancelled (`DELETE`) at: `/v1/okome/streams/<id>`.
pub const STREAM_PATH: &str = "/v1/okome/streams/";

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
    /// `stream_id`: the `x-okome-stream-id` header, else the id in a `/v1/okome/streams/<id>`
    /// path (the id a resumable stream is resumed or cancelled by).
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

    /// This source's key in the request (`headers`, `path`), when present and not empty.
    fn find<'h>(&self, headers: &'h http::HeaderMap, path: &'h str) -> Option<&'h [u8]> {
        let v = match self {
            KeySource::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            KeySource::StreamId => headers
                .get(STREAM_ID)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .or_else(|| stream_in_path(path)),
            KeySource::ApiKey => okome_filters::presented_key(headers).map(str::as_bytes),
        }?;
        (!v.is_empty()).then_some(v)
    }
}

/// The `<id>` of a `/v1/okome/streams/<id>` path (one segment, nothing after it).
fn stream_in_path(path: &str) -> Option<&[u8]> {
    path.strip_prefix(STREAM_PATH)
        .filter(|id| !id.contains('/'))
        .map(str::as_bytes)
}

/// How a sticky pick went (`okome_sticky_picks_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyPick {
    /// The key's own backend took the request (for a stream id: the node its tag names).
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
    /// Each backend's node tag (`resume::id::node_tag`), in pool order, for stream ids.
    tags: Vec<u32>,
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
            tags: backends.iter().map(|&a| node_tag(a)).collect(),
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

    /// The request's key: the first source present in its `headers` or `path`.
    pub fn key<'h>(&self, headers: &'h http::HeaderMap, path: &'h str) -> Option<&'h [u8]> {
        self.sources.iter().find_map(|s| s.find(headers, path))
    }

    /// The backend for `key`: for a stream id, the backend its tag names when that one is
    /// eligible and not `skip`ped; else the first on the ring from the key's point that is.
    /// `None` when no backend is.
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
        if let Some(tag) = tag_of(key) {
            // Two backends of a pool sharing a tag is a 32-bit hash collision: take the first
            // usable one.
            let tagged = (0..self.tags.len()).find(|&i| self.tags[i] == tag && ok(i));
            if let Some(i) = tagged {
                return Some(StickyPick::Hit(i));
            }
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
        let p = "/v1/chat/completions";
        assert_eq!(s.key(&h, p), None, "no key: power of two choices decides");
        h.insert(STREAM_ID, "s-1".parse().unwrap());
        assert_eq!(s.key(&h, p), Some(&b"s-1"[..]));
        h.insert("authorization", "Bearer sk-abc".parse().unwrap());
        assert_eq!(s.key(&h, p), Some(&b"sk-abc"[..]));
        h.insert("x-conversation-id", "".parse().unwrap());
        assert_eq!(
            s.key(&h, p),
            Some(&b"sk-abc"[..]),
            "an empty value is no key"
        );
        h.insert("x-conversation-id", "c-9".parse().unwrap());
        assert_eq!(s.key(&h, p), Some(&b"c-9"[..]));
    }

    /// A stream id made by the node reached at `addr`, with `tail` as its random part.
    fn id_of(addr: SocketAddr, tail: u128) -> String {
        format!("{:08x}-{tail:032x}", node_tag(addr))
    }

    /// The index of the first backend on the ring from `key`'s point that is not `except`.
    fn ring_first(s: &Sticky, key: &[u8], except: Option<usize>) -> usize {
        s.ring
            .node_iter(key)
            .map(|a| s.addrs.iter().position(|b| b == a).unwrap())
            .find(|&i| Some(i) != except)
            .unwrap()
    }

    #[test]
    fn a_stream_id_goes_to_the_node_its_tag_names() {
        let (b, addrs) = pool(4);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        for (i, &addr) in addrs.iter().enumerate() {
            // Tag routing is what puts it there: the ring alone would send most of these ids
            // (which share the tag, not the rest) elsewhere.
            let mut elsewhere = 0;
            for tail in 0..64u128 {
                let id = id_of(addr, tail * 0x9e37_79b9_7f4a_7c15);
                assert_eq!(
                    s.pick(&b, id.as_bytes(), |_| false),
                    Some(StickyPick::Hit(i)),
                    "{id}"
                );
                if ring_first(&s, id.as_bytes(), None) != i {
                    elsewhere += 1;
                }
            }
            assert!(
                elsewhere > 16,
                "backend {i}: only {elsewhere} of 64 hash elsewhere"
            );
        }
    }

    #[test]
    fn a_stream_id_in_the_path_is_the_key() {
        let (b, addrs) = pool(3);
        let s = Sticky::new(
            vec![
                KeySource::parse("stream_id").unwrap(),
                KeySource::parse("api_key").unwrap(),
            ],
            &addrs,
        );
        let mut h = http::HeaderMap::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let id = id_of(addr, 7);
            let path = format!("{STREAM_PATH}{id}");
            let key = s.key(&h, &path).unwrap();
            assert_eq!(key, id.as_bytes());
            assert_eq!(s.pick(&b, key, |_| false), Some(StickyPick::Hit(i)));
        }
        // Not the form: no key from the path (the next source decides).
        for path in [
            "/v1/okome/streams/",
            "/v1/okome/streams/a/b",
            "/v1/okome/stream/x",
            "/v1/chat/completions",
        ] {
            assert_eq!(s.key(&h, path), None, "{path}");
        }
        h.insert("authorization", "Bearer sk-abc".parse().unwrap());
        assert_eq!(s.key(&h, "/v1/okome/streams/"), Some(&b"sk-abc"[..]));
        // The header wins over the path (an empty one does not count).
        let id = id_of(addrs[0], 1);
        let path = format!("{STREAM_PATH}{id}");
        h.insert(STREAM_ID, "".parse().unwrap());
        assert_eq!(s.key(&h, &path), Some(id.as_bytes()));
        h.insert(STREAM_ID, "s-2".parse().unwrap());
        assert_eq!(s.key(&h, &path), Some(&b"s-2"[..]));
    }

    #[test]
    fn a_stream_id_whose_node_is_out_is_hashed() {
        let (b, addrs) = pool(4);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        // Ids of backend 1 whose ring point is on another backend, and one whose is on 1.
        let ids: Vec<String> = (0..64u128).map(|t| id_of(addrs[1], t << 64 | t)).collect();
        let off = ids
            .iter()
            .find(|id| ring_first(&s, id.as_bytes(), None) != 1)
            .unwrap();
        let on = ids
            .iter()
            .find(|id| ring_first(&s, id.as_bytes(), None) == 1)
            .unwrap();
        // Excluded for this request (already tried, shedding): the ring decides.
        let skip1 = |i| i == 1;
        assert_eq!(
            s.pick(&b, off.as_bytes(), skip1),
            Some(StickyPick::Hit(ring_first(&s, off.as_bytes(), None)))
        );
        assert_eq!(
            s.pick(&b, on.as_bytes(), skip1),
            Some(StickyPick::Moved(ring_first(&s, on.as_bytes(), Some(1))))
        );
        // Unhealthy: the same.
        b[1].probe_result(false, 1, 1, "down");
        for id in &ids {
            let p = s.pick(&b, id.as_bytes(), |_| false).unwrap();
            assert_eq!(p.index(), ring_first(&s, id.as_bytes(), Some(1)), "{id}");
        }
        b[1].probe_result(true, 1, 1, "");
        assert_eq!(
            s.pick(&b, off.as_bytes(), |_| false),
            Some(StickyPick::Hit(1))
        );
    }

    #[test]
    fn a_stream_id_with_an_unknown_tag_or_no_tag_is_hashed() {
        let (b, addrs) = pool(4);
        let s = Sticky::new(vec![KeySource::StreamId], &addrs);
        // Reached through a NAT: the node's own address is none of the ingress's backends.
        let behind_nat: SocketAddr = "192.168.5.5:8080".parse().unwrap();
        assert!(!s.tags.contains(&node_tag(behind_nat)));
        let mut per = [0usize; 4];
        for tail in 0..256u128 {
            let id = id_of(behind_nat, tail);
            let p = s.pick(&b, id.as_bytes(), |_| false).unwrap();
            assert_eq!(p, StickyPick::Hit(ring_first(&s, id.as_bytes(), None)));
            per[p.index()] += 1;
        }
        assert!(
            per.iter().all(|&n| n > 0),
            "one tag, hashed: spread {per:?}"
        );
        // Not a stream id's shape (a tag of backend 2, but too short): hashed as ever.
        let id = id_of(addrs[2], 5);
        let short = &id.as_bytes()[..id.len() - 1];
        assert_eq!(tag_of(short), None);
        assert_eq!(
            s.pick(&b, short, |_| false),
            Some(StickyPick::Hit(ring_first(&s, short, None)))
        );
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
