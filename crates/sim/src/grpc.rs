//! TF Serving's gRPC API (its port 8500) on the simulator's `grpc_listen`: h2c, unary
//! `PredictionService/Predict` (half-plus-two, the REST side's math) and
//! `ModelService/GetModelStatus`, with TF Serving's statuses and messages (unknown model
//! NOT_FOUND, a `grpc-timeout` shorter than the prediction DEADLINE_EXCEEDED).
//!
//! gRPC's unary framing is five bytes and a trailer block, so this is a plain hyper HTTP/2
//! service over `okome_engine::tfs_grpc`'s messages rather than a generated tonic server.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use okome_engine::tfs_grpc::{self as g, Code};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::gen::{self, Gen, GenRequest, Whole};
use super::server::{self, Body, Shared};

const GRPC: &str = "application/grpc";
/// The only version each simulated model has.
const VERSION: i64 = 1;

/// Accepts h2c connections on the gRPC listener until the simulator shuts down.
pub(crate) async fn accept_loop(
    sim: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let conns = shutdown.clone();
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(sim.clone(), stream, conns.clone()));
                }
                Err(e) => log::debug!("sim grpc accept: {e}"),
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_conn(
    sim: Arc<Shared>,
    stream: tokio::net::TcpStream,
    mut shutdown: watch::Receiver<bool>,
) {
    let svc = hyper::service::service_fn(move |req| handle(sim.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => if let Err(e) = r { log::debug!("sim grpc connection: {e}") },
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// A gRPC error: trailers-only (one HEADERS frame that ends the stream).
fn status(code: Code, message: &str) -> Response<Body> {
    let mut r = server::full(StatusCode::OK, Some(GRPC), Bytes::new());
    let h = r.headers_mut();
    h.insert("grpc-status", HeaderValue::from_static(code.as_str()));
    if let Ok(v) = HeaderValue::from_str(&g::encode_message(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// A successful unary answer: the framed message, then `grpc-status: 0` as trailers.
fn ok(msg: &impl prost::Message) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(Code::Ok.as_str()));
    let frames: [io::Result<Frame<Bytes>>; 2] = [
        Ok(Frame::data(g::frame(msg))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(GRPC));
    r
}

async fn handle(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let is_grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(GRPC.as_bytes()));
    if !is_grpc {
        // What gRPC servers answer a request that is not gRPC.
        return Ok(server::full(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("text/plain"),
            "invalid gRPC request content-type",
        ));
    }
    server::record_request(&sim, req.headers());
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(g::parse_timeout);
    let path = req.uri().path().to_owned();
    let body = server::read_body(req.into_body()).await?;
    let answer = async {
        match path.as_str() {
            g::PREDICT => predict(&sim, &body).await,
            g::GET_MODEL_STATUS => Ok(model_status(&sim, &body)),
            _ => Ok(status(Code::Unimplemented, "")),
        }
    };
    match deadline {
        None => answer.await,
        Some(d) => match tokio::time::timeout(d, answer).await {
            Ok(r) => r,
            // gRPC's own answer once a call's deadline passes on the server.
            Err(_) => Ok(status(Code::DeadlineExceeded, "Deadline Exceeded")),
        },
    }
}

/// Whether the servable a spec asks for exists here; TF Serving's status when it does not.
fn servable(sim: &Shared, spec: &g::ModelSpec) -> Result<(), (Code, String)> {
    let version = match &spec.version_choice {
        None => None,
        Some(g::VersionChoice::Version(v)) => Some(v.value),
        Some(g::VersionChoice::VersionLabel(l)) => {
            return Err((
                Code::InvalidArgument,
                format!("Unrecognized servable version label: {l}"),
            ))
        }
    };
    if sim.has_model(&spec.name) && version.is_none_or(|v| v == VERSION) {
        return Ok(());
    }
    let request = match version {
        Some(v) => format!("Specific({}, {v})", spec.name),
        None => format!("Latest({})", spec.name),
    };
    Err((
        Code::NotFound,
        format!("Servable not found for request: {request}"),
    ))
}

/// `Predict`: y = x/2 + 2 on the float input (`x`, or the only one), as output `y`; it queues
/// and takes the prefill time like a one-token generation.
async fn predict(sim: &Arc<Shared>, body: &[u8]) -> io::Result<Response<Body>> {
    // Predictions are counted, as on the REST side; status calls (probes) are not.
    sim.counters.record_body(body);
    let req: g::PredictRequest = match g::decode(body) {
        Ok(r) => r,
        Err(e) => return Ok(status(Code::InvalidArgument, &e.to_string())),
    };
    let spec = req.model_spec.clone().unwrap_or_default();
    if spec.name.is_empty() {
        return Ok(status(Code::InvalidArgument, "Missing ModelSpec"));
    }
    if let Err((code, message)) = servable(sim, &spec) {
        return Ok(status(code, &message));
    }
    let input = req.inputs.get("x").or_else(|| {
        (req.inputs.len() == 1)
            .then(|| req.inputs.values().next())
            .flatten()
    });
    let Some(x) = input else {
        return Ok(status(
            Code::InvalidArgument,
            "input size does not match signature: the signature takes one input, x",
        ));
    };
    if x.dtype != g::DataType::DtFloat as i32 {
        return Ok(status(
            Code::InvalidArgument,
            "Expects arg[0] to be float but another type is provided",
        ));
    }
    let values: Vec<f32> = if x.float_val.is_empty() {
        x.tensor_content
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        x.float_val.clone()
    };
    if sim.faults.read().http_500 {
        return Ok(status(Code::Internal, "simulated failure"));
    }
    let Ok(gen) = Gen::admit(sim, GenRequest::new(body, Some(1), 1)) else {
        return Ok(status(
            Code::Unavailable,
            "The batch scheduling queue to which this task was submitted is full",
        ));
    };
    match gen::run_whole(gen).await {
        Whole::Done(..) => {}
        Whole::Error => return Ok(status(Code::Internal, "simulated failure")),
        Whole::Drop => return Err(io::Error::other("sim: drop_after_tokens")),
    }
    let y = g::TensorProto {
        dtype: g::DataType::DtFloat as i32,
        tensor_shape: x.tensor_shape.clone(),
        tensor_content: Vec::new(),
        float_val: values.iter().map(|v| v / 2.0 + 2.0).collect(),
    };
    let resp = g::PredictResponse {
        outputs: [("y".to_owned(), y)].into_iter().collect(),
        model_spec: Some(g::ModelSpec {
            name: spec.name,
            version_choice: Some(g::VersionChoice::Version(g::Int64Value { value: VERSION })),
            signature_name: if spec.signature_name.is_empty() {
                "serving_default".to_owned()
            } else {
                spec.signature_name
            },
        }),
    };
    Ok(ok(&resp))
}

/// `GetModelStatus`: the one version, AVAILABLE; TF Serving's NOT_FOUND messages otherwise.
fn model_status(sim: &Shared, body: &[u8]) -> Response<Body> {
    let req: g::GetModelStatusRequest = match g::decode(body) {
        Ok(r) => r,
        Err(e) => return status(Code::InvalidArgument, &e.to_string()),
    };
    let spec = req.model_spec.unwrap_or_default();
    if spec.name.is_empty() {
        return status(Code::InvalidArgument, "Missing ModelSpec");
    }
    if !sim.has_model(&spec.name) {
        return status(
            Code::NotFound,
            &format!("Could not find any versions of model {}", spec.name),
        );
    }
    if let Some(g::VersionChoice::Version(v)) = &spec.version_choice {
        if v.value != VERSION {
            return status(
                Code::NotFound,
                &format!("Could not find version {} of model {}", v.value, spec.name),
            );
        }
    }
    ok(&g::GetModelStatusResponse {
        model_version_status: vec![g::ModelVersionStatus {
            version: VERSION,
            state: g::State::Available as i32,
            status: Some(g::StatusProto::default()),
        }],
    })
}
