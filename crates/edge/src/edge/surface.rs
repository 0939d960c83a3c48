//! What a route exposes: which methods and paths of the engines' APIs clients may call.
//!
//! Closed by default: a route without `allow:` exposes only the inference and read-only listing
//! endpoints of the API a request speaks ([`defaults`]). Engines' model management (Ollama's
//! pull/push/create/copy/delete, vLLM's LoRA loading) is reachable only through a route whose
//! `allow:` names it. `deny:` rules are checked first.

use crate::api::Api;
use http::Method;
use okome_filters::Glob;

/// One `allow`/`deny` rule: `"POST /api/chat"`, `"GET|HEAD /api/tags"`, `"* /v1/models/*"`.
#[derive(Debug, Clone)]
pub struct EndpointRule {
    /// Methods it covers; empty = any.
    methods: Vec<Method>,
    /// Path glob (`*` matches any run of characters, `/` included).
    path: Glob,
    /// The path as written, for messages.
    pattern: String,
}

/// An entry of `allow:`: the API's defaults, or a rule.
#[derive(Debug, Clone)]
pub enum AllowEntry {
    /// `default`: the inference and listing endpoints of the request's API.
    Default,
    /// An explicit rule.
    Rule(EndpointRule),
}

/// Why a rule string does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// Not `METHODS /path`.
    #[error("{0:?} is not a rule: write `default` or `METHOD /path`, e.g. \"POST /api/chat\" or \"GET|HEAD /api/tags\"")]
    Shape(String),
    /// A method that is not an HTTP token.
    #[error("{0:?} is not an HTTP method")]
    Method(String),
}

impl EndpointRule {
    /// A rule for `methods` (empty = any) on a path glob.
    fn new(methods: &[Method], path: &str) -> Self {
        EndpointRule {
            methods: methods.to_vec(),
            path: Glob::new(path),
            pattern: path.to_owned(),
        }
    }

    /// Parses `"METHOD[|METHOD…] /path-glob"`; `*` as the method means any.
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        let (methods, path) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| RuleError::Shape(s.to_owned()))?;
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(RuleError::Shape(s.to_owned()));
        }
        let methods = if methods == "*" {
            Vec::new()
        } else {
            methods
                .split('|')
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| RuleError::Method(m.to_owned()))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(EndpointRule::new(&methods, path))
    }

    fn covers_path(&self, path: &str) -> bool {
        self.path.matches(path)
    }

    fn covers(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method)) && self.covers_path(path)
    }

    /// Whether this rule opens one of the engines' model-management endpoints.
    pub fn opens_model_management(&self) -> bool {
        MODEL_MANAGEMENT.iter().any(|p| {
            // A rule opens management when its glob covers a management path, or is one.
            self.covers_path(p) || Glob::new(p).matches(&self.pattern)
        })
    }
}

impl AllowEntry {
    /// Parses `default` or a rule.
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        if s.trim() == "default" {
            Ok(AllowEntry::Default)
        } else {
            EndpointRule::parse(s).map(AllowEntry::Rule)
        }
    }
}

/// Paths of the engines' model management (Ollama; vLLM's runtime LoRA loading).
const MODEL_MANAGEMENT: &[&str] = &[
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/*",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
];

const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
const POST: &[Method] = &[Method::POST];

/// The endpoints a route exposes by default for requests of `api`: inference and read-only
/// listing, nothing that changes an engine.
const DEFAULTS: [(Api, &[Method], &str); 24] = [
    (Api::OpenAi, POST, "/v1/chat/completions"),
    (Api::OpenAi, POST, "/v1/completions"),
    (Api::OpenAi, POST, "/v1/embeddings"),
    (Api::OpenAi, POST, "/v1/responses"),
    (Api::OpenAi, GET_HEAD, "/v1/models"),
    (Api::OpenAi, GET_HEAD, "/v1/models/*"),
    (Api::Ollama, POST, "/api/chat"),
    (Api::Ollama, POST, "/api/generate"),
    (Api::Ollama, POST, "/api/embed"),
    (Api::Ollama, POST, "/api/embeddings"),
    (Api::Ollama, POST, "/api/show"),
    (Api::Ollama, GET_HEAD, "/api/tags"),
    (Api::Ollama, GET_HEAD, "/api/ps"),
    (Api::Ollama, GET_HEAD, "/api/version"),
    // TF Serving: model status, versions, metadata; predict, classify, regress.
    (Api::TfServing, GET_HEAD, "/v1/models/*"),
    (Api::TfServing, POST, "/v1/models/*:predict"),
    (Api::TfServing, POST, "/v1/models/*:classify"),
    (Api::TfServing, POST, "/v1/models/*:regress"),
    // TF Serving gRPC: inference, metadata and model status (not HandleReloadConfigRequest).
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.PredictionService/Predict",
    ),
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.PredictionService/Classify",
    ),
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.PredictionService/Regress",
    ),
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.PredictionService/MultiInference",
    ),
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.PredictionService/GetModelMetadata",
    ),
    (
        Api::TfServingGrpc,
        POST,
        "/tensorflow.serving.ModelService/GetModelStatus",
    ),
];

/// [`DEFAULTS`] compiled once, per API.
static DEFAULT_RULES: std::sync::LazyLock<[(Api, Vec<EndpointRule>); 4]> =
    std::sync::LazyLock::new(|| {
        [Api::OpenAi, Api::Ollama, Api::TfServing, Api::TfServingGrpc].map(|api| {
            let rules = DEFAULTS
                .iter()
                .filter(|(a, _, _)| *a == api)
                .map(|(_, methods, path)| EndpointRule::new(methods, path))
                .collect();
            (api, rules)
        })
    });

/// The compiled default rules for requests of `api`.
fn defaults(api: Api) -> &'static [EndpointRule] {
    DEFAULT_RULES
        .iter()
        .find(|(a, _)| *a == api)
        .map_or(&[], |(_, rules)| rules.as_slice())
}

/// A route's compiled surface.
#[derive(Debug, Clone)]
pub struct Surface {
    allow: Vec<AllowEntry>,
    deny: Vec<EndpointRule>,
    /// Whether real WebSocket upgrades (GET + `Connection: upgrade`) may pass on this route.
    pub websocket: bool,
}

/// Why a request is outside a route's surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No rule exposes this path (404).
    Path,
    /// The path is exposed, but not for this method (405).
    Method,
}

impl Surface {
    /// A surface from parsed rules; `allow: None` means `[default]`.
    pub fn new(allow: Option<Vec<AllowEntry>>, deny: Vec<EndpointRule>, websocket: bool) -> Self {
        Surface {
            allow: allow.unwrap_or_else(|| vec![AllowEntry::Default]),
            deny,
            websocket,
        }
    }

    /// Whether any `allow` rule opens model management.
    pub fn opens_model_management(&self) -> bool {
        self.allow
            .iter()
            .any(|e| matches!(e, AllowEntry::Rule(r) if r.opens_model_management()))
    }

    /// Checks a request against the surface.
    pub fn check(&self, api: Api, method: &Method, path: &str) -> Result<(), Refusal> {
        if self.deny.iter().any(|r| r.covers(method, path)) {
            return Err(Refusal::Path);
        }
        let rules = self.allow.iter().flat_map(|entry| match entry {
            AllowEntry::Default => defaults(api),
            AllowEntry::Rule(r) => std::slice::from_ref(r),
        });
        let mut path_known = false;
        for r in rules {
            if r.covers(method, path) {
                return Ok(());
            }
            path_known |= r.covers_path(path);
        }
        Err(if path_known {
            Refusal::Method
        } else {
            Refusal::Path
        })
    }
}

/// Whether a request path is one the edge can route without ambiguity: absolute, no dot
/// segments, no empty segments, no percent-encoded `/`, `.` or `\`, no backslash. Engines and
/// their frameworks normalise such paths differently from a prefix match, so they are refused.
pub fn path_is_clean(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return false;
    }
    // Percent-encoded `/`, `.`, `\` or NUL, any case, found without allocating.
    let encoded_separator = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()],
                [b'2', b'f'] | [b'2', b'e'] | [b'5', b'c'] | [b'0', b'0']
            )
    });
    if encoded_separator {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// OpenAI's `models.retrieve` path with the id's `/` decoded: the official SDKs send
/// `GET /v1/models/Qwen%2FQwen3-8B` for the id `Qwen/Qwen3-8B` (one path segment). `None`
/// unless it is a GET or HEAD under `/v1/models/` whose only encoded separators are `%2F`.
/// The edge answers that path itself from the models it knows, so no engine has to agree on
/// the decoding; the caller still refuses it when the decoded path is not OpenAI's.
pub fn models_retrieve_path(method: &Method, path: &str) -> Option<String> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let id = path.strip_prefix("/v1/models/")?;
    if !id.contains("%2F") && !id.contains("%2f") {
        return None;
    }
    let decoded = format!("/v1/models/{}", id.replace("%2F", "/").replace("%2f", "/"));
    // A model id has no empty segment: `a%2F` is not `a/`'s id, it is no id.
    let whole_segments = !decoded.ends_with('/');
    (whole_segments && path_is_clean(&decoded)).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sdk_encoded_model_id_is_decoded_for_models_retrieve_only() {
        let get = Method::GET;
        assert_eq!(
            models_retrieve_path(&get, "/v1/models/Qwen%2FQwen3-8B").as_deref(),
            Some("/v1/models/Qwen/Qwen3-8B")
        );
        assert_eq!(models_retrieve_path(&get, "/v1/models/m"), None);
        assert_eq!(
            models_retrieve_path(&Method::POST, "/v1/models/a%2Fb"),
            None
        );
        assert_eq!(models_retrieve_path(&get, "/v1/chat%2Fcompletions"), None);
        assert_eq!(models_retrieve_path(&get, "/v1/models/a%2F..%2Fx"), None);
        assert_eq!(models_retrieve_path(&get, "/v1/models/a%2F%2e%2e"), None);
        assert_eq!(models_retrieve_path(&get, "/v1/models/a%2F"), None);
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Surface {
        Surface::new(
            Some(
                allow
                    .iter()
                    .map(|s| AllowEntry::parse(s).expect("rule"))
                    .collect(),
            ),
            deny.iter()
                .map(|s| EndpointRule::parse(s).expect("rule"))
                .collect(),
            false,
        )
    }

    #[test]
    fn defaults_expose_inference_and_listing_only() {
        let s = Surface::new(None, Vec::new(), false);
        let ok = |api, m: Method, p| s.check(api, &m, p);
        assert_eq!(ok(Api::Ollama, Method::POST, "/api/chat"), Ok(()));
        assert_eq!(ok(Api::Ollama, Method::GET, "/api/tags"), Ok(()));
        assert_eq!(
            ok(Api::Ollama, Method::DELETE, "/api/delete"),
            Err(Refusal::Path)
        );
        assert_eq!(
            ok(Api::Ollama, Method::POST, "/api/pull"),
            Err(Refusal::Path)
        );
        assert_eq!(
            ok(Api::Ollama, Method::GET, "/api/chat"),
            Err(Refusal::Method)
        );
        assert_eq!(
            ok(Api::OpenAi, Method::POST, "/v1/chat/completions"),
            Ok(())
        );
        assert_eq!(
            ok(Api::OpenAi, Method::POST, "/v1/load_lora_adapter"),
            Err(Refusal::Path)
        );
        assert_eq!(
            ok(
                Api::TfServing,
                Method::POST,
                "/v1/models/m/versions/2:predict"
            ),
            Ok(())
        );
        assert_eq!(ok(Api::TfServing, Method::GET, "/v1/models/m"), Ok(()));
        assert_eq!(
            ok(Api::TfServing, Method::DELETE, "/v1/models/m"),
            Err(Refusal::Method)
        );
        // TF Serving gRPC: inference, metadata, status; reloading the config is management.
        for m in [
            "PredictionService/Predict",
            "PredictionService/Classify",
            "PredictionService/Regress",
            "PredictionService/MultiInference",
            "PredictionService/GetModelMetadata",
            "ModelService/GetModelStatus",
        ] {
            let path = format!("/tensorflow.serving.{m}");
            assert_eq!(
                s.check(Api::TfServingGrpc, &Method::POST, &path),
                Ok(()),
                "{m}"
            );
        }
        let reload = "/tensorflow.serving.ModelService/HandleReloadConfigRequest";
        assert_eq!(
            ok(Api::TfServingGrpc, Method::POST, reload),
            Err(Refusal::Path)
        );
        let open = format!("POST {reload}");
        assert!(rules(&[open.as_str()], &[]).opens_model_management());
        assert_eq!(
            ok(
                Api::TfServingGrpc,
                Method::POST,
                "/grpc.health.v1.Health/Check"
            ),
            Err(Refusal::Path)
        );
    }

    #[test]
    fn explicit_rules_and_deny() {
        let s = rules(&["default", "POST /api/pull"], &["* /api/show"]);
        assert_eq!(s.check(Api::Ollama, &Method::POST, "/api/pull"), Ok(()));
        assert_eq!(
            s.check(Api::Ollama, &Method::POST, "/api/show"),
            Err(Refusal::Path)
        );
        assert!(s.opens_model_management());
        assert!(!Surface::new(None, Vec::new(), false).opens_model_management());
        assert!(rules(&["* /api/*"], &[]).opens_model_management());
        let any = rules(&["GET|HEAD /x/*"], &[]);
        assert_eq!(any.check(Api::OpenAi, &Method::HEAD, "/x/y"), Ok(()));
        assert!(EndpointRule::parse("POST api/chat").is_err());
        assert!(EndpointRule::parse("/api/chat").is_err());
        assert!(EndpointRule::parse("P()ST /x").is_err());
    }

    #[test]
    fn unclean_paths_are_refused() {
        for p in [
            "/v1/../v1/chat/completions",
            "/v1/%2e%2e/x",
            "/v1/chat%2Fcompletions",
            "/api//chat",
            "/api/./chat",
            "/api/chat/..",
            "/a\\b",
            "x",
        ] {
            assert!(!path_is_clean(p), "{p}");
        }
        for p in [
            "/v1/chat/completions",
            "/v1/models/m:predict",
            "/",
            "/api/tags",
        ] {
            assert!(path_is_clean(p), "{p}");
        }
    }
}
