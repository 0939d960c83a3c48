//! Ollama's model listings (`GET /api/tags`, `/api/ps`) on a route whose filters restrict
//! models (`policy`, `allow_models`): the engine's answer is read whole (it is small) and only
//! the models the caller may use are relayed, as `GET /v1/models` is answered from the edge.
//! Without this a tenant restricted to one model saw every model the engine holds.

use super::ctx::RequestCtx;
use super::Edge;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use serde_json::Value;

/// The most of a listing read; a larger answer is refused rather than relayed unfiltered.
const MAX_LISTING: usize = 8 * 1024 * 1024;

/// Whether a request is a listing to filter: Ollama's `GET|HEAD /api/tags` or `/api/ps` on a
/// model-restricted route.
pub fn wanted(edge: &Edge, ctx: &RequestCtx, method: &http::Method, path: &str) -> bool {
    ctx.req.api == crate::api::Api::Ollama
        && matches!(*method, http::Method::GET | http::Method::HEAD)
        && matches!(path, "/api/tags" | "/api/ps")
        && ctx
            .req
            .route
            .is_some_and(|r| edge.routes.routes[r].restricts_models())
}

/// `response_filter`: a listing being filtered is relayed without the engine's length (the
/// filtered body is shorter).
pub fn on_response_header(
    session: &pingora_proxy::Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) {
    if ctx.reply.listing.is_none() {
        return;
    }
    if resp.status != http::StatusCode::OK {
        // An error from the engine lists nothing: relayed as it is.
        ctx.reply.listing = None;
        return;
    }
    super::response::relay_chunked(session, resp);
}

/// `response_body_filter`: holds the listing back until it ends, then relays it filtered.
pub fn on_body(
    edge: &Edge,
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    let Some(buf) = ctx.reply.listing.as_mut() else {
        return Ok(());
    };
    if let Some(chunk) = body.take() {
        if buf.len() + chunk.len() > MAX_LISTING {
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "the engine's model listing is larger than the edge filters",
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    if !end {
        return Ok(());
    }
    let listing = std::mem::take(buf);
    let (Some(ri), effects) = (ctx.req.route, &ctx.effects) else {
        return Ok(());
    };
    if listing.is_empty() {
        // HEAD, or an empty answer: nothing to list.
        return Ok(());
    }
    let route = &edge.routes.routes[ri];
    match filter(&listing, |m| route.allows_model(m, effects)) {
        Some(filtered) => *body = Some(Bytes::from(filtered)),
        None => {
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "the engine's model listing is not Ollama's JSON: not relayed unfiltered",
            ))
        }
    }
    Ok(())
}

/// The listing with only the models `allowed` lets through (by `name`, `model`, or the name
/// without Ollama's `:latest`); every other field as the engine wrote it. `None` when it is not
/// a JSON object with a `models` array.
pub fn filter(listing: &[u8], allowed: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(listing).ok()?;
    let models = v.get_mut("models")?.as_array_mut()?;
    models.retain(|m| {
        ["name", "model"]
            .iter()
            .filter_map(|k| m.get(*k).and_then(Value::as_str))
            .any(|n| allowed(n) || n.strip_suffix(":latest").is_some_and(&allowed))
    });
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_models_are_listed() {
        let tags = br#"{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":1},{"name":"secret:latest","model":"secret:latest","size":2},{"name":"qwen3:8b","model":"qwen3:8b"}]}"#;
        let out = filter(tags, |m| m == "llama3.2" || m == "qwen3:8b").unwrap_or_default();
        let v: Value = serde_json::from_slice(&out).unwrap_or_default();
        let names: Vec<&str> = v["models"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["llama3.2:latest", "qwen3:8b"]);
        assert_eq!(v["models"][0]["size"], 1);
        assert!(filter(b"not json", |_| true).is_none());
        assert!(filter(br#"{"models":7}"#, |_| true).is_none());
    }
}
