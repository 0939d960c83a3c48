//! TensorFlow Serving's REST API (port 8501, see `fixtures/tfserving_*`): model status,
//! `:predict` with deterministic half-plus-two outputs, and the Prometheus exporter.

use std::fmt::Write;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::gen::{self, Gen, GenRequest, Whole};
use super::server::{self, Body, Shared};

const JSON: &str = "application/json";
/// The only version each simulated model has.
const VERSION: &str = "1";

/// rapidjson PrettyWriter output of `{"error": msg}` (MakeJsonFromStatus).
fn error(status: StatusCode, msg: &str) -> Response<Body> {
    let body = format!("{{\n    \"error\": {}\n}}", Value::from(msg));
    server::text(status, JSON, body)
}

/// A parsed `/v1/models/...` path.
#[derive(Debug, PartialEq, Eq)]
struct ModelPath<'a> {
    name: &'a str,
    version: Option<&'a str>,
    /// `predict`, `classify`, `regress`, or `metadata`; `None` for a status request.
    verb: Option<&'a str>,
}

/// Parses `/v1/models/{name}[/versions/{v}][:verb | /metadata]` (prefixes matched case-insensitively).
fn parse_path(path: &str) -> Option<ModelPath<'_>> {
    let rest = path
        .get(..11)
        .filter(|p| p.eq_ignore_ascii_case("/v1/models/"))
        .map(|_| &path[11..])?;
    let (rest, verb) = match rest.rsplit_once(':') {
        Some((r, v)) => (r, Some(v)),
        None => match rest.strip_suffix("/metadata") {
            Some(r) => (r, Some("metadata")),
            None => (rest, None),
        },
    };
    let (name, version) = match rest.split_once('/') {
        Some((n, v)) => {
            let v = v
                .get(..9)
                .filter(|p| p.eq_ignore_ascii_case("versions/"))
                .map(|_| &v[9..])?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (n, Some(v))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return None;
    }
    Some(ModelPath {
        name,
        version,
        verb,
    })
}

/// Routes a request to the TF Serving REST API.
pub(crate) async fn route(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET && path == "/monitoring/prometheus/metrics" {
        return Ok(server::text(StatusCode::OK, "text/plain", prometheus(&sim)));
    }
    let malformed = || {
        error(
            StatusCode::NOT_FOUND,
            &format!("Malformed request: {method} {path}"),
        )
    };
    let Some(mp) = parse_path(&path) else {
        return Ok(malformed());
    };
    match (&method, mp.verb) {
        (&Method::GET, None) => Ok(status(&sim, &mp)),
        (&Method::POST, Some("predict")) => predict(sim.clone(), req, &mp).await,
        (&Method::POST, Some("classify" | "regress")) => Ok(error(
            StatusCode::BAD_REQUEST,
            "Expected classification or regression signature",
        )),
        _ => Ok(malformed()),
    }
}

/// `GET /v1/models/{name}[/versions/{v}]`: protobuf JSON with 1-space indent, version as a string.
fn status(sim: &Shared, mp: &ModelPath<'_>) -> Response<Body> {
    if !sim.has_model(mp.name) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("Could not find any versions of model {}", mp.name),
        );
    }
    if let Some(v) = mp.version.filter(|v| *v != VERSION) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("Could not find version {v} of model {}", mp.name),
        );
    }
    let body = format!(
        "{{\n \"model_version_status\": [\n  {{\n   \"version\": \"{VERSION}\",\n   \"state\": \"AVAILABLE\",\n   \"status\": {{\n    \"error_code\": \"OK\",\n    \"error_message\": \"\"\n   }}\n  }}\n ]\n}}\n"
    );
    server::text(StatusCode::OK, JSON, body)
}

/// `POST .../:predict`: instances → predictions (row), inputs → outputs (columnar); y = x/2 + 2.
async fn predict(
    sim: Arc<Shared>,
    req: Request<Incoming>,
    mp: &ModelPath<'_>,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let spec = match mp.version {
        Some(v) => format!("Specific({}, {v})", mp.name),
        None => format!("Latest({})", mp.name),
    };
    if !sim.has_model(mp.name) || mp.version.is_some_and(|v| v != VERSION) {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("Servable not found for request: {spec}"),
        ));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "JSON Parse error: Invalid value",
        ));
    };
    let (key, input) = match (v.get("instances"), v.get("inputs")) {
        (Some(i), None) => ("predictions", i),
        (None, Some(i)) => ("outputs", i),
        (Some(_), Some(_)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "Both 'instances' and 'inputs' keys present in request",
            ))
        }
        (None, None) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "Missing 'inputs' or 'instances' key",
            ))
        }
    };
    let out = match half_plus_two(input) {
        Ok(o) => o,
        Err(bad) => {
            let msg = format!(
                "JSON Value: {bad} Type: {} is not of expected type: float",
                json_type(&bad)
            );
            return Ok(error(StatusCode::BAD_REQUEST, &msg));
        }
    };
    if sim.faults.read().http_500 {
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal: simulated failure",
        ));
    }
    // A prediction is a one-token generation: it queues for a slot and takes the prefill time.
    let greq = GenRequest::new(&body, Some(1), 1);
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full",
        ));
    };
    match gen::run_whole(g).await {
        Whole::Done(..) => {
            let mut s = String::with_capacity(64);
            s.push_str("{\n    \"");
            s.push_str(key);
            s.push_str("\": ");
            write_single_line(&out, &mut s);
            s.push_str("\n}");
            Ok(server::text(StatusCode::OK, JSON, s))
        }
        Whole::Error => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal: simulated failure",
        )),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Bool",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    }
}

/// Maps every number x to x/2 + 2 (the `half_plus_two` test model), keeping the shape.
fn half_plus_two(v: &Value) -> Result<Value, Value> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            Ok(serde_json::Number::from_f64(x * 0.5 + 2.0)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        Value::Array(a) => a
            .iter()
            .map(half_plus_two)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| half_plus_two(v).map(|v| (k.clone(), v)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
        other => Err(other.clone()),
    }
}

/// rapidjson `kFormatSingleLineArray` style: `[2.5, 3.0]`, floats always with a fraction.
fn write_single_line(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_single_line(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{}: ", Value::from(k.as_str()));
                write_single_line(x, out);
            }
            out.push('}');
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let _ = write!(out, "{x:?}");
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The Prometheus exporter page (no HELP lines; `# TYPE` for every metric).
fn prometheus(sim: &Shared) -> String {
    let ok = sim.counters.completed.load(Relaxed);
    let mut o = String::new();
    let _ = writeln!(o, "# TYPE :tensorflow:serving:request_count counter");
    for m in &sim.cfg.models {
        let _ = writeln!(
            o,
            ":tensorflow:serving:request_count{{model_name=\"{m}\",status=\"OK\"}} {ok}"
        );
    }
    let _ = writeln!(o, "# TYPE :tensorflow:serving:request_latency histogram");
    let _ = writeln!(o, "# TYPE :tensorflow:serving:runtime_latency histogram");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/v1/models/half:predict"),
            Some(ModelPath {
                name: "half",
                version: None,
                verb: Some("predict")
            })
        );
        assert_eq!(
            parse_path("/V1/Models/m/versions/3:predict"),
            Some(ModelPath {
                name: "m",
                version: Some("3"),
                verb: Some("predict")
            })
        );
        assert_eq!(
            parse_path("/v1/models/m"),
            Some(ModelPath {
                name: "m",
                version: None,
                verb: None
            })
        );
        assert_eq!(parse_path("/v1/models/m/versions/x"), None);
        assert_eq!(parse_path("/v1/foo"), None);
    }

    #[test]
    fn predictions_row_format() {
        let out = half_plus_two(&serde_json::json!([1.0, 2.0, 5.0])).expect("numbers");
        let mut s = String::new();
        write_single_line(&out, &mut s);
        assert_eq!(s, "[2.5, 3.0, 4.5]");
        assert!(half_plus_two(&serde_json::json!(["a"])).is_err());
    }
}
