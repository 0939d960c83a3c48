//! `arbiter.yaml`: schema, defaults, parsing and validation.
//!
//! Parse errors carry the parser's line and column; semantic problems are reported as
//! `file:line: key: problem`, one per line, with the numbers that do not fit.

use super::error::{ArbiterError, Problem};
use okome_core::config::{ByteSize, Dur};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole `arbiter.yaml` (`okome arbiter -c FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArbiterConfig {
    /// `kind: arbiter` (optional): says which component this file configures.
    #[serde(default)]
    pub kind: Option<okome_core::config::FileKind>,
    /// Where `/v1/state`, `/healthz` and `/metrics` listen (default `127.0.0.1:7080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Probe period for engines and the GPU (default `500ms`).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Longest one probe may take before it counts as failed (default `2s`).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Where GPU signals come from and the memory kept free.
    #[serde(default)]
    pub gpu: GpuConfig,
    /// `shared` (Mode A: budgets on one GPU) or `partitioned` (Mode B: devices per engine).
    #[serde(default)]
    pub mode: Mode,
    /// GPUs known without NVML (uuid and total memory); NVML's totals win when it is there.
    #[serde(default)]
    pub gpus: Vec<Spanned<GpuSpec>>,
    /// The engines on this node.
    #[serde(default)]
    pub engines: Vec<Spanned<EngineSpec>>,
    /// Decision rules and hysteresis.
    #[serde(default)]
    pub rules: Rules,
    /// The file this was read from (for messages and relative `pid_file`s).
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7080))
}
fn default_interval() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

/// Where GPU signals come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSourceKind {
    /// NVML (`libnvidia-ml.so.1`, loaded at run time); missing → engine signals only.
    #[default]
    Nvml,
    /// A simulator's `GET /_sim/gpu` (tests and the demo).
    Fake,
    /// No GPU signals at all.
    None,
}

impl GpuSourceKind {
    /// Lower-case name, as in YAML and `/v1/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuSourceKind::Nvml => "nvml",
            GpuSourceKind::Fake => "fake",
            GpuSourceKind::None => "none",
        }
    }
}

/// The `gpu:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// `nvml` (default), `fake` or `none`.
    #[serde(default)]
    pub source: GpuSourceKind,
    /// For `fake`: one URL of a sim's `/_sim/gpu`; absent = each engine's own
    /// `http://{address}/_sim/gpu`, its processes mapped to that engine.
    #[serde(default)]
    pub fake_url: Option<String>,
    /// Memory every GPU keeps free (default `4GiB`): the plan leaves it out of the budgets, and
    /// a GPU with less free memory makes its engines shed.
    #[serde(default = "default_reserve")]
    pub reserve: Spanned<ByteSize>,
    /// Path of the NVML library (default: the loader's `libnvidia-ml.so.1`).
    #[serde(default)]
    pub nvml_library: Option<String>,
}

fn default_reserve() -> Spanned<ByteSize> {
    // A defaulted value has no place in the file.
    Spanned::new(ByteSize(4 << 30), Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            source: GpuSourceKind::default(),
            fake_url: None,
            reserve: default_reserve(),
            nvml_library: None,
        }
    }
}

/// Memory discipline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Mode A: engines share a GPU, each with a memory budget.
    #[default]
    Shared,
    /// Mode B: each engine owns GPUs or MIG devices, named by UUID.
    Partitioned,
}

/// A GPU named in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// `GPU-…` or `MIG-…` UUID.
    pub uuid: String,
    /// Total memory, when NVML cannot tell.
    #[serde(default)]
    pub memory: Option<ByteSize>,
}

/// Engine kind: the engine client's (`openai` and `okome` are refused: nothing to plan or watch).
pub use okome_engine::EngineKind;

/// An engine's memory budget: bytes (`40GiB`, `40.5GiB`) or a fraction of the GPU (`0.5`, `50%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Bytes.
    Bytes(u64),
    /// Fraction of the GPU's total memory, in (0, 1].
    Fraction(f64),
}

impl Budget {
    /// Parses `40GiB`, `1.5 GiB`, `0.5`, `50%`.
    pub fn parse(s: &str) -> Result<Budget, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad budget {s:?}: expected a percentage like \"50%\""))?;
            return Budget::fraction(v / 100.0, s);
        }
        if let Ok(v) = s.parse::<f64>() {
            return if v <= 1.0 {
                Budget::fraction(v, s)
            } else {
                // A bare number above 1 is a byte count.
                Ok(Budget::Bytes(v as u64))
            };
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("bad budget {s:?}: write a size like \"40GiB\" or a fraction like 0.5")
        })?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 1.0,
            "kib" | "k" => 1024.0,
            "mib" | "m" => 1024.0 * 1024.0,
            "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            other => {
                return Err(format!(
                    "bad budget {s:?}: unknown unit {other:?} (use GiB, MiB, GB, MB, or a fraction)"
                ))
            }
        };
        Ok(Budget::Bytes((n * mult).round() as u64))
    }

    fn fraction(v: f64, s: &str) -> Result<Budget, String> {
        if v.is_finite() && v > 0.0 && v <= 1.0 {
            Ok(Budget::Fraction(v))
        } else {
            Err(format!(
                "bad budget {s:?}: a fraction must be in (0, 1] of the GPU's memory"
            ))
        }
    }

    /// The budget in bytes on a GPU of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Fraction(f) => (total as f64 * f) as u64,
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Bytes(b) => write!(f, "{}", gib(*b)),
            Budget::Fraction(v) => write!(f, "{v}"),
        }
    }
}

/// Bytes as `12.34 GiB`, the unit every message uses.
pub fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Budget::parse(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::S(s) => Budget::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// How to find an engine's processes among NVML's: any one that matches counts (the port
/// defaults to the port of `address`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessMatch {
    /// A file holding the engine's main PID (its children count too: vLLM's EngineCore).
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// A substring of the command line of the process or one of its parents.
    #[serde(default)]
    pub name: Option<String>,
    /// The TCP port the engine listens on (default: the port of `address`).
    #[serde(default)]
    pub port: Option<u16>,
}

/// One engine on the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Unique name: env files, metrics labels and `/v1/state` use it.
    pub name: String,
    /// `vllm`, `ollama` or `tfserving`.
    pub kind: EngineKind,
    /// `IP:PORT` the arbiter probes (TF Serving: the REST port).
    pub address: String,
    /// `IP:PORT` edges know it by (default: `address`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Mode A: memory budget (`40GiB` or a fraction of the GPU like `0.5`).
    #[serde(default)]
    pub budget: Option<Spanned<Budget>>,
    /// Mode B: the GPUs / MIG devices it owns, by UUID; Mode A: the GPU it shares (default the first).
    #[serde(default)]
    pub devices: Vec<Spanned<String>>,
    /// Sequences at once (vLLM `--max-num-seqs`, Ollama `OLLAMA_NUM_PARALLEL`).
    #[serde(default)]
    pub max_num_seqs: Option<u32>,
    /// How NVML processes are matched to this engine.
    #[serde(default)]
    pub process: ProcessMatch,
    /// TF Serving: the models whose status is probed (`/v1/models/{name}`).
    #[serde(default)]
    pub models: Vec<String>,
    /// TF Serving: its Prometheus path, when `--monitoring_config_file` enables it.
    #[serde(default)]
    pub metrics_path: Option<String>,
    /// Position in the start order (lower first; default: vLLM, then TF Serving, then Ollama).
    #[serde(default)]
    pub start_order: Option<u32>,
    /// The systemd unit the drop-in is for (default `<name>.service`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Ollama: `OLLAMA_MAX_LOADED_MODELS` (default 1).
    #[serde(default)]
    pub max_loaded_models: Option<u32>,
    /// Ollama: `OLLAMA_MAX_QUEUE` (default 512).
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// Ollama: `OLLAMA_KEEP_ALIVE` (default `5m`).
    #[serde(default)]
    pub keep_alive: Option<String>,
    /// TF Serving: let TF grow into its fraction instead of taking it at start (default false).
    #[serde(default)]
    pub allow_growth: Option<bool>,
}

impl EngineSpec {
    /// How edges name this backend.
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.address)
    }

    /// The port of `address`, when it has one.
    pub fn port(&self) -> Option<u16> {
        self.address.rsplit(':').next()?.parse().ok()
    }
}

/// Thresholds of one rule: a signal at or above `pressured` / `shedding` enters that state.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Enter `pressured` at or above this (absent: never).
    #[serde(default)]
    pub pressured: Option<f64>,
    /// Enter `shedding` at or above this (absent: never).
    #[serde(default)]
    pub shedding: Option<f64>,
    /// Overrides `hysteresis.leave_ratio` for this rule.
    #[serde(default)]
    pub leave_ratio: Option<f64>,
    /// `false` turns the rule off.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Thresholds {
    fn new(pressured: Option<f64>, shedding: Option<f64>, leave_ratio: Option<f64>) -> Self {
        Thresholds {
            pressured,
            shedding,
            leave_ratio,
            enabled: true,
        }
    }
}

/// Hysteresis: how a state is left.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hysteresis {
    /// Leave a state only when its signal is below threshold × this (default 0.8).
    #[serde(default = "default_leave_ratio")]
    pub leave_ratio: f64,
    /// Keep a state at least this long before going to a better one (default `3s`).
    #[serde(default = "default_min_hold")]
    pub min_hold: Dur,
}

fn default_leave_ratio() -> f64 {
    0.8
}
fn default_min_hold() -> Dur {
    Dur(Duration::from_secs(3))
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            leave_ratio: default_leave_ratio(),
            min_hold: default_min_hold(),
        }
    }
}

/// The `rules:` section. Signals: `queue_depth` (waiting requests), `kv_cache` (0..1),
/// `gpu_headroom` (GPU used / (total − reserve): 1.0 = the reserve is being eaten),
/// `over_budget` (engine's GPU memory / its budget).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Waiting requests (default pressured 8, shedding 32).
    #[serde(default = "default_queue")]
    pub queue_depth: Thresholds,
    /// KV-cache use (default pressured 0.85, shedding 0.95).
    #[serde(default = "default_kv")]
    pub kv_cache: Thresholds,
    /// GPU used over what the reserve leaves (default shedding 1.0, leave_ratio 0.97).
    #[serde(default = "default_headroom")]
    pub gpu_headroom: Thresholds,
    /// Engine memory over its budget (default shedding 1.0, leave_ratio 0.97).
    #[serde(default = "default_over_budget")]
    pub over_budget: Thresholds,
    /// Leave ratio and minimum hold.
    #[serde(default)]
    pub hysteresis: Hysteresis,
    /// Consecutive failed health probes before `down` (default 2).
    #[serde(default = "default_down_after")]
    pub down_after: u32,
}

fn default_queue() -> Thresholds {
    Thresholds::new(Some(8.0), Some(32.0), None)
}
fn default_kv() -> Thresholds {
    Thresholds::new(Some(0.85), Some(0.95), None)
}
// Memory signals move in steps, not noise, and vLLM holds its whole budget from start: the
// global 0.8 band would pin an engine that touched its budget in `shedding` for good.
fn default_headroom() -> Thresholds {
    Thresholds::new(None, Some(1.0), Some(0.97))
}
fn default_over_budget() -> Thresholds {
    Thresholds::new(None, Some(1.0), Some(0.97))
}
fn default_down_after() -> u32 {
    2
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            queue_depth: default_queue(),
            kv_cache: default_kv(),
            gpu_headroom: default_headroom(),
            over_budget: default_over_budget(),
            hysteresis: Hysteresis::default(),
            down_after: default_down_after(),
        }
    }
}

fn parse_yaml(file: &Path, text: &str) -> Result<ArbiterConfig, ArbiterError> {
    let mut cfg: ArbiterConfig =
        okome_core::config::from_yaml(file, text).map_err(|message| ArbiterError::Parse {
            file: file.to_path_buf(),
            message,
        })?;
    cfg.path = file.to_path_buf();
    Ok(cfg)
}

impl ArbiterConfig {
    /// Reads, parses and validates `arbiter.yaml`.
    pub fn load(path: &Path) -> Result<ArbiterConfig, ArbiterError> {
        let text = okome_core::config::read_text(path, okome_core::config::MAX_CONFIG_FILE)
            .map_err(|source| ArbiterError::Read {
                file: path.to_path_buf(),
                source,
            })?;
        Self::from_str(&path.display().to_string(), &text)
    }

    /// Parses and validates config text held in memory; `name` is used in messages.
    pub fn from_str(name: &str, text: &str) -> Result<ArbiterConfig, ArbiterError> {
        let cfg = parse_yaml(Path::new(name), text)?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ArbiterError::Invalid { problems })
        }
    }

    /// A problem at `line` about `key`.
    pub(crate) fn problem(&self, line: u64, key: impl Into<String>, msg: String) -> Problem {
        Problem {
            file: self.path.clone(),
            line: line.max(1),
            key: key.into(),
            message: msg,
        }
    }

    /// Structural problems (names, addresses, thresholds); memory arithmetic is the plan's.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.interval.0.is_zero() {
            out.push(self.problem(1, "interval", "must be above 0".into()));
        }
        if self.gpu.source == GpuSourceKind::Fake {
            if let Some(u) = &self.gpu.fake_url {
                if u.parse::<http::Uri>().is_err() {
                    out.push(self.problem(1, "gpu.fake_url", format!("not a URL: {u:?}")));
                }
            }
        }
        let mut names: HashMap<&str, u64> = HashMap::new();
        for (i, e) in self.engines.iter().enumerate() {
            let line = e.referenced.line();
            let e = &e.value;
            if e.name.trim().is_empty() {
                out.push(self.problem(
                    line,
                    format!("engines[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if let Some(first) = names.get(e.name.as_str()) {
                out.push(self.problem(
                    line,
                    format!("engines[{i}].name"),
                    format!("duplicate engine name {:?} (first on line {first})", e.name),
                ));
            } else {
                names.insert(&e.name, line);
            }
            if e.address.parse::<SocketAddr>().is_err() && e.port().is_none() {
                out.push(self.problem(
                    line,
                    format!("engines[{i}].address"),
                    format!("expected HOST:PORT, got {:?}", e.address),
                ));
            }
            if e.kind == EngineKind::Openai {
                out.push(
                    self.problem(
                        line,
                        format!("engines[{i}].kind"),
                        "the arbiter plans and watches vllm, ollama and tfserving engines; \
                     a generic OpenAI server has no GPU settings or signals to read"
                            .into(),
                    ),
                );
            }
            if e.kind == EngineKind::Okome {
                out.push(
                    self.problem(
                        line,
                        format!("engines[{i}].kind"),
                        "the arbiter plans and watches vllm, ollama and tfserving engines; \
                     an okome edge is a proxy, not a GPU engine: list the engines behind it"
                            .into(),
                    ),
                );
            }
            if e.kind == EngineKind::Tfserving && e.models.is_empty() {
                out.push(self.problem(
                    line,
                    format!("engines[{i}].models"),
                    "a tfserving engine needs at least one model name to probe /v1/models/{name}"
                        .into(),
                ));
            }
        }
        let r = &self.rules;
        for (key, t) in [
            ("queue_depth", r.queue_depth),
            ("kv_cache", r.kv_cache),
            ("gpu_headroom", r.gpu_headroom),
            ("over_budget", r.over_budget),
        ] {
            if let (Some(p), Some(s)) = (t.pressured, t.shedding) {
                if p > s {
                    out.push(self.problem(
                        1,
                        format!("rules.{key}"),
                        format!("pressured ({p}) must not be above shedding ({s})"),
                    ));
                }
            }
            if let Some(l) = t.leave_ratio {
                if !(l > 0.0 && l <= 1.0) {
                    out.push(self.problem(
                        1,
                        format!("rules.{key}.leave_ratio"),
                        format!("must be in (0, 1], got {l}"),
                    ));
                }
            }
        }
        let l = r.hysteresis.leave_ratio;
        if !(l > 0.0 && l <= 1.0) {
            out.push(self.problem(
                1,
                "rules.hysteresis.leave_ratio",
                format!("must be in (0, 1], got {l}"),
            ));
        }
        out
    }
}
