//! TF Serving's gRPC API (its port 8500): the messages okome reads or writes, and gRPC's unary
//! framing, status codes and `grpc-timeout`.
//!
//! The messages are declared by hand with `prost` derives, tags exactly as upstream; `proto/` at
//! the repository root holds the same subset as `.proto` files (the Python tests' stubs are
//! generated from those). Declaring them here keeps `protoc` and code generation out of the
//! build; fields okome does not use are left out, and protobuf decoders skip what they do not
//! know, so real clients and servers interoperate with these.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::time::Duration;

/// Path prefix of `tensorflow.serving.PredictionService` methods.
pub const PREDICTION_SERVICE: &str = "/tensorflow.serving.PredictionService/";
/// Path prefix of `tensorflow.serving.ModelService` methods.
pub const MODEL_SERVICE: &str = "/tensorflow.serving.ModelService/";
/// `PredictionService/Predict`.
pub const PREDICT: &str = "/tensorflow.serving.PredictionService/Predict";
/// `ModelService/GetModelStatus`.
pub const GET_MODEL_STATUS: &str = "/tensorflow.serving.ModelService/GetModelStatus";
/// `PredictionService/MultiInference`: its model specs sit one level deeper, in each task.
pub const MULTI_INFERENCE: &str = "/tensorflow.serving.PredictionService/MultiInference";

/// Methods whose request message carries a `ModelSpec` as field 1 (`model_spec`).
const SPEC_FIRST: [&str; 5] = [
    PREDICT,
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    GET_MODEL_STATUS,
];

/// `google.protobuf.Int64Value`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Int64Value {
    /// The value.
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// `tensorflow.serving.ModelSpec`: which model, version and signature a request is for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelSpec {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A version number or a version label; none = the latest.
    #[prost(oneof = "VersionChoice", tags = "2, 4")]
    pub version_choice: Option<VersionChoice>,
    /// Signature (`serving_default` when empty).
    #[prost(string, tag = "3")]
    pub signature_name: String,
}

/// `ModelSpec.version_choice`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum VersionChoice {
    /// A version number.
    #[prost(message, tag = "2")]
    Version(Int64Value),
    /// A version label (`stable`, `canary`).
    #[prost(string, tag = "4")]
    VersionLabel(String),
}

/// `tensorflow.DataType` values okome uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// `DT_INVALID`.
    DtInvalid = 0,
    /// `DT_FLOAT`.
    DtFloat = 1,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Size of the dimension.
    #[prost(int64, tag = "1")]
    pub size: i64,
    /// Optional name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    /// The rank is unknown.
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

/// `tensorflow.TensorProto`, float tensors.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Element type (`DataType`).
    #[prost(enumeration = "DataType", tag = "1")]
    pub dtype: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The elements as raw little-endian bytes (the alternative to the typed `*_val` fields).
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    /// `DT_FLOAT` elements.
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
}

/// `tensorflow.serving.PredictRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictRequest {
    /// Model to run.
    #[prost(message, optional, tag = "1")]
    pub model_spec: Option<ModelSpec>,
    /// Input tensors by signature input name.
    #[prost(btree_map = "string, message", tag = "2")]
    pub inputs: BTreeMap<String, TensorProto>,
    /// Outputs to return (empty = all).
    #[prost(string, repeated, tag = "3")]
    pub output_filter: Vec<String>,
}

/// `tensorflow.serving.PredictResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictResponse {
    /// Output tensors by signature output name.
    #[prost(btree_map = "string, message", tag = "1")]
    pub outputs: BTreeMap<String, TensorProto>,
    /// The model that answered, its version filled in.
    #[prost(message, optional, tag = "2")]
    pub model_spec: Option<ModelSpec>,
}

/// `tensorflow.serving.GetModelStatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetModelStatusRequest {
    /// Model (and optionally version) asked about.
    #[prost(message, optional, tag = "1")]
    pub model_spec: Option<ModelSpec>,
}

/// `tensorflow.serving.StatusProto` (`error_code` is a `tensorflow.error.Code`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusProto {
    /// `tensorflow.error.Code`; 0 = OK.
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    /// Message (empty when OK).
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `ModelVersionStatus.State` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum State {
    /// `UNKNOWN`.
    Unknown = 0,
    /// `START`.
    Start = 10,
    /// `LOADING`.
    Loading = 20,
    /// `AVAILABLE`: the version serves requests.
    Available = 30,
    /// `UNLOADING`.
    Unloading = 40,
    /// `END`.
    End = 50,
}

/// `tensorflow.serving.ModelVersionStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelVersionStatus {
    /// Version number.
    #[prost(int64, tag = "1")]
    pub version: i64,
    /// Its state.
    #[prost(enumeration = "State", tag = "2")]
    pub state: i32,
    /// How it got there.
    #[prost(message, optional, tag = "3")]
    pub status: Option<StatusProto>,
}

/// `tensorflow.serving.GetModelStatusResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetModelStatusResponse {
    /// One entry per version.
    #[prost(message, repeated, tag = "1")]
    pub model_version_status: Vec<ModelVersionStatus>,
}

/// A gRPC status code (`grpc-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 0.
    Ok = 0,
    /// 1.
    Cancelled = 1,
    /// 2.
    Unknown = 2,
    /// 3.
    InvalidArgument = 3,
    /// 4.
    DeadlineExceeded = 4,
    /// 5.
    NotFound = 5,
    /// 7.
    PermissionDenied = 7,
    /// 8.
    ResourceExhausted = 8,
    /// 9.
    FailedPrecondition = 9,
    /// 12.
    Unimplemented = 12,
    /// 13.
    Internal = 13,
    /// 14.
    Unavailable = 14,
    /// 16.
    Unauthenticated = 16,
}

impl Code {
    /// The code for an HTTP status an HTTP API would have answered with (gRPC's own mapping,
    /// `doc/http-grpc-status-mapping.md`, where it has one; request-shape errors are
    /// INVALID_ARGUMENT, a message over the limit RESOURCE_EXHAUSTED as in gRPC servers, an
    /// endpoint not exposed UNIMPLEMENTED).
    pub fn from_http(status: u16) -> Code {
        match status {
            400 | 411 | 422 | 431 => Code::InvalidArgument,
            413 => Code::ResourceExhausted,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            429 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    /// The `grpc-status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "0",
            Code::Cancelled => "1",
            Code::Unknown => "2",
            Code::InvalidArgument => "3",
            Code::DeadlineExceeded => "4",
            Code::NotFound => "5",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::FailedPrecondition => "9",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
            Code::Unauthenticated => "16",
        }
    }
}

/// Why a unary gRPC body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the 5-byte prefix announces.
    #[error("the gRPC message is cut short")]
    Short,
    /// More than one message in a unary call.
    #[error("a unary gRPC call carries one message, this carries more")]
    Trailing,
    /// A compressed message (okome reads only uncompressed ones).
    #[error("the gRPC message is compressed")]
    Compressed,
    /// Not a valid message of the expected type.
    #[error("the gRPC message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Frames one message: the compressed flag (0), its length (big-endian u32), its bytes.
pub fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    // A message over 4 GiB cannot be built in practice; gRPC's own limit is far below.
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut b);
    b.freeze()
}

/// The one message of a unary gRPC body (uncompressed).
pub fn unframe(body: &[u8]) -> Result<&[u8], FrameError> {
    let (head, rest) = body.split_at_checked(5).ok_or(FrameError::Short)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let msg = rest.get(..len).ok_or(FrameError::Short)?;
    if rest.len() > len {
        return Err(FrameError::Trailing);
    }
    if head[0] != 0 {
        return Err(FrameError::Compressed);
    }
    Ok(msg)
}

/// Decodes the one message of a unary gRPC body.
pub fn decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    Ok(M::decode(unframe(body)?)?)
}

/// Parses `grpc-timeout`: 1–8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encodes a `grpc-message` value as gRPC's HTTP/2 protocol spec says: bytes outside
/// space..`~`, and `%`, as `%XX`.
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message` (invalid escapes are kept as they are).
pub fn decode_message(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits: at most 0xFF.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Only the name of a `ModelSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct SpecName {
    #[prost(string, tag = "1")]
    name: String,
}

/// Only the `model_spec` (field 1) of a request, or of a MultiInference task.
#[derive(Clone, PartialEq, prost::Message)]
struct WithSpec {
    #[prost(message, optional, tag = "1")]
    model_spec: Option<SpecName>,
}

/// Only the tasks of a `MultiInferenceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct Tasks {
    #[prost(message, repeated, tag = "1")]
    tasks: Vec<WithSpec>,
}

/// Why a request's model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The body is not one readable gRPC message.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A MultiInference request whose tasks name different models.
    #[error("all ModelSpecs in a MultiInferenceRequest must access the same model name")]
    Mixed,
}

/// The model a TF Serving gRPC request names (`model_spec.name`), read from its unary body
/// without decoding the rest; `None` for a method without one or an empty name.
pub fn request_model(path: &str, body: &[u8]) -> Result<Option<String>, ModelError> {
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    if SPEC_FIRST.contains(&path) {
        let m: WithSpec = decode(body)?;
        return Ok(m.model_spec.and_then(|s| nonempty(s.name)));
    }
    if path == MULTI_INFERENCE {
        let m: Tasks = decode(body)?;
        let mut names = m
            .tasks
            .into_iter()
            .map(|t| t.model_spec.unwrap_or_default().name);
        let first = names.next();
        if let Some(f) = &first {
            if names.any(|n| n != *f) {
                return Err(ModelError::Mixed);
            }
        }
        return Ok(first.and_then(nonempty));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn spec(name: &str) -> Option<ModelSpec> {
        Some(ModelSpec {
            name: name.into(),
            version_choice: Some(VersionChoice::Version(Int64Value { value: 3 })),
            signature_name: "serving_default".into(),
        })
    }

    #[test]
    fn the_model_is_read_from_field_one() {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "x".to_owned(),
            TensorProto {
                dtype: DataType::DtFloat as i32,
                float_val: vec![1.0, 2.0],
                ..Default::default()
            },
        );
        let req = PredictRequest {
            model_spec: spec("half_plus_two"),
            inputs,
            output_filter: vec![],
        };
        let body = frame(&req);
        assert_eq!(
            request_model(PREDICT, &body).ok().flatten().as_deref(),
            Some("half_plus_two")
        );
        assert_eq!(decode::<PredictRequest>(&body).ok(), Some(req));
        let body = frame(&GetModelStatusRequest { model_spec: None });
        assert_eq!(request_model(GET_MODEL_STATUS, &body).ok().flatten(), None);
        // A method without a model spec is not decoded at all.
        assert_eq!(request_model("/x.Y/Z", b"junk").ok().flatten(), None);
    }

    #[test]
    fn multi_inference_tasks_name_one_model() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Task {
            #[prost(message, optional, tag = "1")]
            model_spec: Option<ModelSpec>,
            #[prost(string, tag = "2")]
            method_name: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Multi {
            #[prost(message, repeated, tag = "1")]
            tasks: Vec<Task>,
        }
        let task = |n: &str| Task {
            model_spec: spec(n),
            method_name: "tensorflow/serving/classify".into(),
        };
        let one = frame(&Multi {
            tasks: vec![task("m"), task("m")],
        });
        assert_eq!(
            request_model(MULTI_INFERENCE, &one)
                .ok()
                .flatten()
                .as_deref(),
            Some("m")
        );
        let mixed = frame(&Multi {
            tasks: vec![task("m"), task("n")],
        });
        assert!(matches!(
            request_model(MULTI_INFERENCE, &mixed),
            Err(ModelError::Mixed)
        ));
    }

    #[test]
    fn framing_is_checked() {
        let msg = GetModelStatusRequest {
            model_spec: spec("m"),
        };
        let body = frame(&msg);
        assert_eq!(body[0], 0);
        assert_eq!(body.len(), 5 + msg.encoded_len());
        assert!(matches!(
            unframe(&body[..body.len() - 1]),
            Err(FrameError::Short)
        ));
        let mut two = body.to_vec();
        two.extend_from_slice(&body);
        assert!(matches!(unframe(&two), Err(FrameError::Trailing)));
        let mut z = body.to_vec();
        z[0] = 1;
        assert!(matches!(unframe(&z), Err(FrameError::Compressed)));
        assert!(matches!(unframe(b"\0\0"), Err(FrameError::Short)));
    }

    #[test]
    fn timeouts_and_messages() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("123456789S"), None);
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout(""), None);
        let m = "model `é` 100% gone\n";
        assert_eq!(encode_message(m), "model `%C3%A9` 100%25 gone%0A");
        assert_eq!(decode_message(&encode_message(m)), m);
        assert_eq!(Code::from_http(401).as_str(), "16");
        assert_eq!(Code::from_http(429), Code::ResourceExhausted);
    }
}
