//! Who the client is, across an ingress: `X-Forwarded-For` and `X-Forwarded-Proto`.
//!
//! - Upstream, every request carries the client's address appended to `X-Forwarded-For`
//!   (created when absent) and `X-Forwarded-Proto` (the scheme the client used, kept from a
//!   trusted proxy that set it), so a stream node behind an ingress and the engine behind it
//!   both learn who asked.
//! - Downstream, an `X-Forwarded-For` is believed only from a peer inside `trusted_proxies`;
//!   the client is then the rightmost forwarded address that is not itself trusted (entries to
//!   its left were written by whoever the client is, and are not believed). From any other peer
//!   the client is the peer, whatever it claims.
//!
//! RFC 7239 `Forwarded` is not emitted: the engines and the stream nodes read
//! `X-Forwarded-For`, and two headers saying the same thing could disagree. A `Forwarded` from
//! a peer that is not a trusted proxy is removed (an engine or a log that reads it would believe
//! the client's claim); `X-Real-IP`, which nginx-style backends read, is set to the client the
//! edge determined, whatever the request said.

use super::ctx::RequestInfo;
use ipnet::IpNet;
use pingora_http::RequestHeader;
use std::net::{IpAddr, SocketAddr};

/// `X-Forwarded-For`.
pub const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const XFP: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
/// `X-Real-IP`.
pub const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");

/// Whether `ip` is inside one of `trusted`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d; match it as IPv4.
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry as an address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
        .map(canonical)
}

/// The client's address for a request from `peer` carrying `xff` (the `X-Forwarded-For` field
/// lines, in order): `peer` unless it is trusted; from a trusted peer, the rightmost forwarded
/// address that is not trusted. All trusted: the leftmost (the farthest hop known). An entry
/// that is not an address ends the walk at the last trusted hop: nothing left of it is believed.
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let mut client = canonical(peer);
    if !is_trusted(client, trusted) {
        return client;
    }
    for line in xff.rev() {
        for entry in line.rsplit(',') {
            match parse_entry(entry) {
                Some(ip) if is_trusted(ip, trusted) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
    }
    client
}

/// Who the client is for a request from `peer`: `(forwarded client, peer is a trusted proxy)`.
/// The client is `None` when it is the peer itself (no trusted proxy, or nothing forwarded).
pub fn resolve(req: &RequestHeader, peer: SocketAddr, trusted: &[IpNet]) -> (Option<IpAddr>, bool) {
    if trusted.is_empty() || !is_trusted(peer.ip(), trusted) {
        return (None, false);
    }
    let lines = req
        .headers
        .get_all(XFF)
        .into_iter()
        .filter_map(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), lines, trusted);
    ((ip != canonical(peer.ip())).then_some(ip), true)
}

/// Sets the forwarding headers on the upstream request: the TCP peer appended to
/// `X-Forwarded-For` (what a trusted peer forwarded stays on its left; so does an untrusted
/// peer's claim, which the next hop will not believe either since our address is to its right),
/// and `X-Forwarded-Proto` (a trusted proxy's, else the scheme of our listener).
pub fn apply(req: &mut RequestHeader, info: &RequestInfo) -> pingora_error::Result<()> {
    if let Some(peer) = info.peer {
        let ip = canonical(peer.ip());
        let mut prior = req
            .headers
            .get_all(XFF)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .peekable();
        let value = if prior.peek().is_some() {
            let mut v = prior.collect::<Vec<_>>().join(", ");
            v.push_str(", ");
            v.push_str(&ip.to_string());
            v
        } else {
            ip.to_string()
        };
        req.remove_header(&XFF);
        // The name as a static string: Pingora copies a `HeaderName` it does not know to keep
        // its case; this spelling is the same on the wire.
        req.insert_header("x-forwarded-for", value)?;
    }
    if !info.proxied {
        req.remove_header(&http::header::FORWARDED);
    }
    match info.client.or(info.peer.map(|p| p.ip())) {
        Some(client) => {
            req.insert_header("x-real-ip", canonical(client).to_string())?;
        }
        None => {
            req.remove_header(&X_REAL_IP);
        }
    }
    let keep_proto = info.proxied
        && req
            .headers
            .get(XFP)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v, "http" | "https"));
    if !keep_proto {
        let scheme = match info.scheme {
            "https" => http::HeaderValue::from_static("https"),
            _ => http::HeaderValue::from_static("http"),
        };
        req.insert_header("x-forwarded-proto", scheme)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rightmost_untrusted_from_a_trusted_peer() {
        let t = nets(&["10.77.0.0/24", "127.0.0.1/32"]);
        // The ingress (trusted) appended the client; the client's own claim is left of it.
        assert_eq!(
            client_ip(ip("10.77.0.2"), ["6.6.6.6, 203.0.113.9"].into_iter(), &t),
            ip("203.0.113.9")
        );
        // Two trusted hops: skip both.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                ["203.0.113.9, 10.77.0.3", "10.77.0.2"].into_iter(),
                &t
            ),
            ip("203.0.113.9")
        );
        // Ports and brackets, IPv6.
        assert_eq!(
            client_ip(ip("10.77.0.2"), ["[2001:db8::7]:4711"].into_iter(), &t),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(ip("10.77.0.2"), ["198.51.100.4:999"].into_iter(), &t),
            ip("198.51.100.4")
        );
        // No header from a trusted peer: the peer is the client.
        assert_eq!(
            client_ip(ip("10.77.0.2"), std::iter::empty(), &t),
            ip("10.77.0.2")
        );
        // All trusted: the leftmost known hop.
        assert_eq!(
            client_ip(ip("10.77.0.2"), ["10.77.0.7, 10.77.0.3"].into_iter(), &t),
            ip("10.77.0.7")
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client_ip(
                ip("10.77.0.2"),
                ["1.1.1.1, unknown, 10.77.0.3"].into_iter(),
                &t
            ),
            ip("10.77.0.3")
        );
    }

    #[test]
    fn resolve_believes_only_trusted_peers() {
        let t = nets(&["127.0.0.1/32"]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header(XFF, "6.6.6.6, 127.0.0.9").unwrap();
        let from = |p: &str| resolve(&req, p.parse().unwrap(), &t);
        assert_eq!(from("127.0.0.1:4000"), (Some(ip("127.0.0.9")), true));
        assert_eq!(from("127.0.0.5:4000"), (None, false));
        assert_eq!(
            resolve(&req, "127.0.0.1:1".parse().unwrap(), &[]),
            (None, false)
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = nets(&["10.77.0.0/24"]);
        assert_eq!(
            client_ip(ip("198.51.100.4"), ["10.77.0.9, 1.2.3.4"].into_iter(), &t),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(ip("10.77.0.2"), ["1.2.3.4"].into_iter(), &[]),
            ip("10.77.0.2")
        );
        // A v4-mapped IPv6 peer is matched as the IPv4 address it is.
        assert!(is_trusted(ip("::ffff:10.77.0.2"), &t));
        assert_eq!(
            client_ip(ip("::ffff:10.77.0.2"), ["1.2.3.4"].into_iter(), &t),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn appends_to_forwarded_for_and_sets_proto() {
        let mut info = RequestInfo::new();
        info.peer = Some("198.51.100.4:5555".parse().unwrap());
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        apply(&mut req, &info).unwrap();
        assert_eq!(req.headers.get(XFF).unwrap(), "198.51.100.4");
        assert_eq!(req.headers.get(XFP).unwrap(), "http");

        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.append_header(XFF, "1.1.1.1").unwrap();
        req.append_header(XFF, "2.2.2.2, 3.3.3.3").unwrap();
        req.insert_header(XFP, "https").unwrap();
        apply(&mut req, &info).unwrap();
        assert_eq!(
            req.headers.get(XFF).unwrap(),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 198.51.100.4"
        );
        // An untrusted peer's proto is not passed on.
        assert_eq!(req.headers.get(XFP).unwrap(), "http");
        info.proxied = true;
        req.insert_header(XFP, "https").unwrap();
        apply(&mut req, &info).unwrap();
        assert_eq!(req.headers.get(XFP).unwrap(), "https");
    }

    /// The reproduction (security round three, 8): `X-Real-IP` and `Forwarded` from an untrusted
    /// client reached the engine unchanged.
    #[test]
    fn real_ip_and_forwarded_are_not_the_client_s_to_set() {
        let mut info = RequestInfo::new();
        info.peer = Some("198.51.100.4:5555".parse().unwrap());
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header(X_REAL_IP, "10.0.0.1").unwrap();
        req.insert_header(http::header::FORWARDED, "for=10.0.0.1")
            .unwrap();
        apply(&mut req, &info).unwrap();
        assert_eq!(req.headers.get(X_REAL_IP).unwrap(), "198.51.100.4");
        assert!(req.headers.get(http::header::FORWARDED).is_none());
        // Behind a trusted proxy: the client it forwarded, and its `Forwarded` kept.
        info.proxied = true;
        info.client = Some(ip("203.0.113.9"));
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header(X_REAL_IP, "10.0.0.1").unwrap();
        req.insert_header(http::header::FORWARDED, "for=203.0.113.9")
            .unwrap();
        apply(&mut req, &info).unwrap();
        assert_eq!(req.headers.get(X_REAL_IP).unwrap(), "203.0.113.9");
        assert_eq!(
            req.headers.get(http::header::FORWARDED).unwrap(),
            "for=203.0.113.9"
        );
    }
}
