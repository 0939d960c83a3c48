//! `upstream_request_filter`: what the engine is sent. The client's credentials never reach an
//! engine (a pool may send its own key), the framing is one the engine cannot read two ways, the
//! target is origin-form, and the client's address and scheme go along ([`super::forwarded`]).
//!
//! A stream node (pool kind `okome`) is another okome edge, not an engine: it gets the client's
//! `Host` and credentials as they came, since it routes and authenticates them itself.

use super::{ctx::RequestCtx, Edge};
use pingora_error::Result;
use pingora_http::RequestHeader;

/// Headers that carry a client's credentials; removed from every upstream request.
const CLIENT_CREDENTIALS: [http::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::HeaderName::from_static("x-api-key"),
];

/// Rewrites the upstream request of the current attempt.
pub fn prepare(edge: &Edge, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let stream_node = ctx
        .attempt
        .current
        .is_some_and(|(pi, _)| edge.upstreams.pools[pi].kind == crate::config::PoolKind::Okome);
    // Engines bound to loopback (Ollama) refuse foreign Host headers: speak as a local client.
    if let Some((pi, bi)) = ctx.attempt.current.filter(|_| !stream_node) {
        let id = &edge.upstreams.pools[pi].backends[bi].id;
        req.insert_header(http::header::HOST, id.as_str())?;
    }
    if !stream_node {
        for name in &CLIENT_CREDENTIALS {
            req.remove_header(name);
        }
    }
    super::forwarded::apply(req, &ctx.req)?;
    if let Some(auth) = ctx
        .attempt
        .current
        .and_then(|(pi, _)| edge.upstreams.pools[pi].auth.as_ref())
    {
        req.insert_header(http::header::AUTHORIZATION, auth.clone())?;
    }
    // Absolute-form targets (Pingora checked their authority against Host) go out origin-form.
    // Pingora keeps the scheme and authority only in the raw target, not in `uri`.
    if !req.raw_path().starts_with(b"/") && req.method != http::Method::OPTIONS {
        let origin = req
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_owned();
        if let Ok(uri) = origin.parse::<http::Uri>() {
            req.set_uri(uri);
        }
    }
    // One Content-Length, the length of what is actually sent (the pre-read body, possibly
    // rewritten), instead of the client's duplicates or list.
    if !req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        if let Some(b) = &ctx.req.body {
            // Usually the client's one header already says it, in plain digits: leave it then.
            let mut sent = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
            let exact = match (sent.next(), sent.next()) {
                (Some(v), None) => is_decimal(v.as_bytes(), b.len()),
                _ => false,
            };
            if !exact {
                req.remove_header(&http::header::CONTENT_LENGTH);
                req.insert_header(http::header::CONTENT_LENGTH, b.len().to_string())?;
            }
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&ctx.req.request_id) {
        req.insert_header(super::request::REQUEST_ID, v)?;
    }
    for name in &ctx.effects.remove_headers {
        req.remove_header(name);
    }
    for (name, value) in &ctx.effects.set_headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Whether `v` is `n` written in plain decimal digits, no sign, space or leading zero.
fn is_decimal(v: &[u8], n: usize) -> bool {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut rest = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    v == &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::is_decimal;

    #[test]
    fn only_the_plain_length_is_kept() {
        assert!(is_decimal(b"110", 110));
        assert!(is_decimal(b"0", 0));
        assert!(is_decimal(b"18446744073709551615", usize::MAX));
        for bad in [
            &b"+110"[..],
            b"0110",
            b" 110",
            b"110 ",
            b"111",
            b"",
            b"1_10",
        ] {
            assert!(!is_decimal(bad, 110), "{bad:?}");
        }
    }
}
