//! `json_style: spaced`: every JSON body and JSON stream line rewritten the way Python's
//! `json.dumps` writes by default (llama-cpp-python's server and Python gateways do): `", "`
//! and `": "` separators, non-ASCII and control characters as `\uXXXX` escapes (`ensure_ascii`),
//! floats as Python's `repr`, and every object's keys in the reverse of the engine's order, so
//! that a reader relying on spacing, escapes or key order breaks.
//!
//! It is one pass over the finished response, not a change to any endpoint: a body with a
//! known length (a whole JSON document) is re-serialized as a whole; a streamed body is
//! rewritten frame by frame, line by line (`data: {...}` SSE lines and NDJSON lines; other
//! lines, `data: [DONE]` included, pass unchanged).

use std::fmt::Write as _;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Body as _, Frame};
use hyper::header::CONTENT_TYPE;
use hyper::Response;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::config::JsonStyle;
use super::server::Body;

/// A JSON value that keeps its object keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(x) => s.serialize_str(x),
            Node::Arr(a) => {
                let mut q = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    q.serialize_element(x)?;
                }
                q.end()
            }
            Node::Obj(o) => {
                let mut m = s.serialize_map(Some(o.len()))?;
                for (k, x) in o {
                    m.serialize_entry(k, x)?;
                }
                m.end()
            }
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element()? {
            v.push(x);
        }
        Ok(Node::Arr(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some((k, x)) = a.next_entry::<String, Node>()? {
            v.push((k, x));
        }
        Ok(Node::Obj(v))
    }
}

/// `text` as Python's `json.dumps(json.loads(text))` would write it, keys reversed; `None`
/// when `text` is not one JSON document.
pub(crate) fn respace(text: &[u8]) -> Option<String> {
    let node: Node = serde_json::from_slice(text).ok()?;
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    write_node(&node, &mut out);
    Some(out)
}

fn write_node(n: &Node, out: &mut String) {
    match n {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Node::Float(f) => out.push_str(&py_float(*f)),
        Node::Str(s) => write_str(s, out),
        Node::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_node(x, out);
            }
            out.push(']');
        }
        Node::Obj(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().rev().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write_node(x, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string with Python's `ensure_ascii` escapes.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -4..16,
/// else `d.ddde+XX`; always a `.0` or an exponent, so it reads back as a float.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // `{:e}` prints the shortest round-trip digits: "1.2345e2", "1e-5".
    let s = format!("{:e}", x.abs());
    let Some((m, e)) = s.split_once('e') else {
        return s;
    };
    let e: i32 = e.parse().unwrap_or(0);
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&e) {
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if e < 0 { '-' } else { '+' };
        return format!("{sign}{mant}e{es}{:02}", e.unsigned_abs());
    }
    if e < 0 {
        let zeros = "0".repeat(e.unsigned_abs() as usize - 1);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = e as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// Rewrites the JSON lines of one chunk of a stream: `data: <json>` and `<json>` lines; any
/// other line (and a line cut by the chunk's end) is kept as it is.
pub(crate) fn respace_lines(chunk: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 4);
    for line in chunk.split_inclusive(|b| *b == b'\n') {
        let (body, end): (&[u8], &[u8]) = match line.strip_suffix(b"\n") {
            Some(b) => (b, b"\n"),
            None => (line, b""),
        };
        let (prefix, json): (&[u8], &[u8]) = match body.strip_prefix(b"data: ") {
            Some(j) => (b"data: ", j),
            None => (b"", body),
        };
        let looks_json = matches!(json.first(), Some(b'{' | b'['));
        match looks_json.then(|| respace(json)).flatten() {
            Some(s) => {
                out.extend_from_slice(prefix);
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(end);
            }
            None => out.extend_from_slice(line),
        }
    }
    out.into()
}

/// Whether a response of this content type carries JSON (a document, SSE or NDJSON).
fn is_json_type(ct: &str) -> bool {
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("application/json")
        || ct.starts_with("text/event-stream")
        || ct.starts_with("application/x-ndjson")
}

/// Applies `style` to a finished response (compact: the response as it is).
pub(crate) async fn apply(style: JsonStyle, resp: Response<Body>) -> Response<Body> {
    if style == JsonStyle::Compact {
        return resp;
    }
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_type);
    if !json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    if body.size_hint().exact().is_some() {
        // A whole document (its length is known): rewrite it whole, keep a fixed length.
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let new = respace_lines(&bytes);
        let body = Full::new(new)
            .map_err(|e: std::convert::Infallible| match e {})
            .boxed_unsync();
        return Response::from_parts(parts, body);
    }
    let frames = BodyStream::new(body).map(|f| {
        f.map(|frame| match frame.into_data() {
            Ok(d) => Frame::data(respace_lines(&d)),
            Err(other) => other,
        })
    });
    Response::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (33.61474, "33.61474"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn spaced_like_json_dumps() {
        let s =
            respace(br#"{"a":1,"b":[true,null,"x\u00e9\ud83d\ude00\n"],"c":{},"d":[],"e":0.5}"#)
                .expect("valid");
        assert_eq!(
            s,
            r#"{"e": 0.5, "d": [], "c": {}, "b": [true, null, "x\u00e9\ud83d\ude00\n"], "a": 1}"#
        );
        assert_eq!(respace(b"not json"), None);
    }

    #[test]
    fn lines_keep_framing() {
        let chunk = b"data: {\"a\":\"b\",\"n\":2}\n\ndata: [DONE]\n\n: ping\n{\"x\":1}\n";
        let out = respace_lines(chunk);
        assert_eq!(
            &out[..],
            &b"data: {\"n\": 2, \"a\": \"b\"}\n\ndata: [DONE]\n\n: ping\n{\"x\": 1}\n"[..]
        );
    }
}
