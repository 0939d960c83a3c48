//! Stream ids: `<node tag>-<128 random bits>`, 8 + 1 + 32 hex digits. The random part makes the
//! id unguessable; the node tag names the stream node that holds the stream, so an ingress can
//! send a resume there (`pools.<name>.sticky.key: [stream_id]`) without any shared state.
//!
//! The tag is FNV-1a (32 bits) of the address the stream node was reached at, as `ip:port`: the
//! node reads it from its accepted socket and the ingress from its backend list, so both sides
//! compute it from the same text. It is a routing hint, not a secret and not a check: a resume
//! that lands elsewhere finds no stream there and gets 404.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Length of an id: 8 hex digits, `-`, 32 hex digits.
pub const LEN: usize = 41;

/// A stream id, as sent in `x-okome-stream-id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId(String);

impl StreamId {
    /// A fresh id for a stream held by the node reached at `local` (`None`: not a TCP socket;
    /// the tag is then 0 and an ingress falls back to its hash).
    pub fn new(local: Option<SocketAddr>) -> Self {
        let tag = local.map_or(0, node_tag);
        let mut s = String::with_capacity(LEN);
        // Writing to a String cannot fail.
        let _ = write!(s, "{tag:08x}-{:032x}", rand::random::<u128>());
        StreamId(s)
    }

    /// Parses an id from a client: exactly the shape [`StreamId::new`] makes, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == LEN
            && s.as_bytes()[8] == b'-'
            && s.bytes()
                .enumerate()
                .all(|(i, b)| i == 8 || matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| StreamId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The node tag of a stream id (its first 8 hex digits), when `id` has a stream id's shape.
pub fn tag_of(id: &[u8]) -> Option<u32> {
    if id.len() != LEN || id[8] != b'-' {
        return None;
    }
    std::str::from_utf8(&id[..8])
        .ok()
        .and_then(|t| u32::from_str_radix(t, 16).ok())
}

/// The tag of the node reached at `addr` (FNV-1a over `ip:port`).
pub fn node_tag(addr: SocketAddr) -> u32 {
    // A dual-stack listener reports IPv4 peers as `[::ffff:a.b.c.d]`; the ingress knows `a.b.c.d`.
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let mut text = String::with_capacity(48);
    // Writing to a String cannot fail.
    let _ = write!(text, "{addr}");
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_node_tag_and_parse_back() {
        let addr: SocketAddr = "10.78.0.3:8080".parse().unwrap();
        let a = StreamId::new(Some(addr));
        let b = StreamId::new(Some(addr));
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), LEN);
        assert_eq!(tag_of(a.as_str().as_bytes()), Some(node_tag(addr)));
        assert_eq!(StreamId::parse(a.as_str()), Some(a.clone()));
        assert_ne!(node_tag(addr), node_tag("10.78.0.4:8080".parse().unwrap()));
        assert_eq!(
            node_tag("[::ffff:10.78.0.3]:8080".parse().unwrap()),
            node_tag(addr)
        );
        for bad in [
            "",
            "x",
            &a.as_str().to_uppercase(),
            &a.as_str()[1..],
            &a.as_str().replace('-', "0"),
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }
}
