//! `okome arbiter plan`: validate the memory discipline and emit each engine's settings.
//!
//! - Mode A (`mode: shared`): engines share a GPU, each with a budget; budgets + `gpu.reserve`
//!   must fit the GPU's total. vLLM gets `--gpu-memory-utilization` = budget / total (vLLM reads
//!   it as a fraction of *total* memory and refuses to start unless that much is free, hence the
//!   start order: engines that take their memory at start go first, vLLM first of all), TF
//!   Serving `--per_process_gpu_memory_fraction` and `TF_FORCE_GPU_ALLOW_GROWTH`, Ollama
//!   `OLLAMA_GPU_OVERHEAD` = total − budget (Ollama leaves that much of each GPU alone) and its
//!   concurrency knobs.
//! - Mode B (`mode: partitioned`): engines own devices by UUID (`CUDA_VISIBLE_DEVICES=GPU-…`
//!   or `MIG-…`); no device (nor a MIG device and its parent) may be owned twice, and each must
//!   exist when NVML can tell.
//!
//! Output: a text summary, and with `--out DIR` `<engine>.env` and
//! `<engine>.service.d/okome.conf` (a systemd drop-in) per engine.

use super::config::{gib, ArbiterConfig, EngineKind, EngineSpec, Mode};
use super::error::{ArbiterError, Problem};
use super::gpu::GpuReading;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// vLLM's `--max-num-seqs` when the config names none (vLLM's own long-standing default).
pub const DEFAULT_VLLM_MAX_NUM_SEQS: u32 = 256;
/// `OLLAMA_NUM_PARALLEL` when the config names no `max_num_seqs`.
pub const DEFAULT_OLLAMA_NUM_PARALLEL: u32 = 4;
/// vLLM's `--gpu-memory-utilization` in Mode B when no budget is given (vLLM's default).
pub const DEFAULT_VLLM_UTILIZATION: f64 = 0.9;

/// A GPU as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedGpu {
    /// UUID (`GPU-…`/`MIG-…`; `(unnamed)` when only a total was given).
    pub uuid: String,
    /// Total memory, bytes.
    pub total_bytes: u64,
    /// Where the total came from: `nvml` or `config`.
    pub from: &'static str,
    /// Sum of the budgets placed on it (Mode A), bytes.
    pub budgets_bytes: u64,
}

/// One engine's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Engine name.
    pub name: String,
    /// Engine kind.
    pub kind: EngineKind,
    /// 1-based position in the start order.
    pub start_position: usize,
    /// Its budget in bytes, when it has one.
    pub budget_bytes: Option<u64>,
    /// The GPU(s) it runs on, by UUID.
    pub devices: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Command-line flags (vLLM, TF Serving), also exported as `OKOME_ENGINE_ARGS`.
    pub args: Vec<String>,
    /// The systemd unit the drop-in is for.
    pub unit: String,
    /// The unit started before it (`After=`).
    pub after: Option<String>,
    /// Free memory it needs when it starts (vLLM's check), bytes.
    pub needs_free_at_start: Option<u64>,
    /// Free memory expected when it starts, if every earlier engine holds its whole budget.
    pub expected_free_at_start: Option<u64>,
}

impl EngineSettings {
    /// The value of env var `k`, if set.
    pub fn env(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// The value following flag `flag` (`--flag V` or `--flag=V`).
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == flag {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
        None
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Mode A or B.
    pub mode: Mode,
    /// The reserve kept free per GPU, bytes.
    pub reserve_bytes: u64,
    /// GPUs involved.
    pub gpus: Vec<PlannedGpu>,
    /// Engines in start order.
    pub engines: Vec<EngineSettings>,
    /// Things an operator should know (e.g. device existence not checked).
    pub notes: Vec<String>,
}

/// Floors `v` to 4 decimals: a fraction rounded up could exceed the budget.
fn floor4(v: f64) -> f64 {
    (v * 10_000.0).floor() / 10_000.0
}

fn default_rank(k: EngineKind) -> u32 {
    // vLLM checks free memory at start and takes all of its share at once: start it first;
    // TF Serving takes its fraction at start; Ollama loads models lazily, so it goes last.
    match k {
        EngineKind::Vllm => 0,
        EngineKind::Tfserving => 1,
        EngineKind::Ollama => 2,
        EngineKind::Openai | EngineKind::Llamacpp | EngineKind::Okome => 3,
    }
}

/// Builds the plan for `cfg`; `nvml` is what NVML sees (None when it is not available).
pub fn plan(cfg: &ArbiterConfig, nvml: Option<&[GpuReading]>) -> Result<Plan, ArbiterError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut notes = Vec::new();
    let reserve = cfg.gpu.reserve.value.0;

    // GPUs: NVML's totals win; the config's fill in where NVML is not there.
    let mut gpus: Vec<PlannedGpu> = Vec::new();
    for (i, g) in cfg.gpus.iter().enumerate() {
        let seen = nvml.and_then(|n| n.iter().find(|r| r.status.uuid == g.value.uuid));
        match (seen, g.value.memory) {
            (Some(r), _) => gpus.push(PlannedGpu {
                uuid: g.value.uuid.clone(),
                total_bytes: r.status.memory_total_bytes,
                from: "nvml",
                budgets_bytes: 0,
            }),
            (None, Some(m)) => gpus.push(PlannedGpu {
                uuid: g.value.uuid.clone(),
                total_bytes: m.0,
                from: "config",
                budgets_bytes: 0,
            }),
            (None, None) => problems.push(cfg.problem(
                g.referenced.line(),
                format!("gpus[{i}].memory"),
                format!(
                    "{} is not seen by NVML{}: give its total memory (e.g. memory: 80GiB)",
                    g.value.uuid,
                    if nvml.is_none() {
                        " (NVML not available)"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
    if cfg.gpus.is_empty() {
        if let Some(n) = nvml {
            for r in n
                .iter()
                .filter(|r| r.parent.is_none() || cfg.mode == Mode::Partitioned)
            {
                gpus.push(PlannedGpu {
                    uuid: r.status.uuid.clone(),
                    total_bytes: r.status.memory_total_bytes,
                    from: "nvml",
                    budgets_bytes: 0,
                });
            }
        }
    }

    // Start order: explicit `start_order` first, then by kind, then as written.
    let mut order: Vec<usize> = (0..cfg.engines.len()).collect();
    order.sort_by_key(|&i| {
        let e = &cfg.engines[i].value;
        (e.start_order.unwrap_or(u32::MAX), default_rank(e.kind), i)
    });

    let mut settings: Vec<EngineSettings> = Vec::new();
    match cfg.mode {
        Mode::Shared => {
            if gpus.is_empty() && problems.is_empty() {
                problems.push(cfg.problem(
                    1,
                    "gpus",
                    "mode shared needs the GPU's total memory: list gpus: [{uuid: GPU-…, memory: 80GiB}] or run where NVML is available".into(),
                ));
            }
            let mut placed: Vec<(usize, usize, u64)> = Vec::new(); // (engine, gpu, bytes)
            for &i in &order {
                let spanned = &cfg.engines[i];
                let e = &spanned.value;
                let line = spanned.referenced.line();
                let gi = match e.devices.first() {
                    Some(d) => match gpus.iter().position(|g| g.uuid == d.value) {
                        Some(gi) => Some(gi),
                        None => {
                            problems.push(cfg.problem(
                                d.referenced.line().max(line),
                                format!("engines[{i}].devices[0]"),
                                format!("{} is not a known GPU (known: {})", d.value, known(&gpus)),
                            ));
                            None
                        }
                    },
                    None => (!gpus.is_empty()).then_some(0),
                };
                let Some(b) = &e.budget else {
                    problems.push(cfg.problem(
                        line,
                        format!("engines[{i}].budget"),
                        format!(
                            "mode shared needs a memory budget for {:?} (e.g. budget: 40GiB or budget: 0.5)",
                            e.name
                        ),
                    ));
                    continue;
                };
                let Some(gi) = gi else { continue };
                let total = gpus[gi].total_bytes;
                let bytes = b.value.bytes(total);
                let bline = b.referenced.line().max(line);
                if bytes + reserve > total {
                    problems.push(cfg.problem(
                        bline,
                        format!("engines[{i}].budget"),
                        format!(
                            "{} ({}) + reserve {} = {} does not fit {} ({} total); at most {} fits",
                            e.name,
                            gib(bytes),
                            gib(reserve),
                            gib(bytes + reserve),
                            gpus[gi].uuid,
                            gib(total),
                            gib(total.saturating_sub(reserve))
                        ),
                    ));
                    continue;
                }
                let before = gpus[gi].budgets_bytes;
                if before + bytes + reserve > total {
                    let parts: Vec<String> = placed
                        .iter()
                        .filter(|p| p.1 == gi)
                        .map(|p| format!("{} {}", cfg.engines[p.0].value.name, gib(p.2)))
                        .chain(std::iter::once(format!("{} {}", e.name, gib(bytes))))
                        .collect();
                    problems.push(cfg.problem(
                        bline,
                        format!("engines[{i}].budget"),
                        format!(
                            "budgets on {} do not fit: {} + reserve {} = {} > total {} (over by {})",
                            gpus[gi].uuid,
                            parts.join(" + "),
                            gib(reserve),
                            gib(before + bytes + reserve),
                            gib(total),
                            gib(before + bytes + reserve - total)
                        ),
                    ));
                    continue;
                }
                gpus[gi].budgets_bytes += bytes;
                placed.push((i, gi, bytes));
                let uuid = (!gpus[gi].uuid.starts_with('(')).then(|| gpus[gi].uuid.clone());
                let mut s = settings_for(e, Some(bytes), Some(total), uuid.into_iter().collect());
                s.needs_free_at_start = (e.kind == EngineKind::Vllm).then_some(bytes);
                s.expected_free_at_start = Some(total - before);
                settings.push(s);
            }
        }
        Mode::Partitioned => {
            let check_against: Option<Vec<&str>> = match nvml {
                Some(n) => Some(n.iter().map(|r| r.status.uuid.as_str()).collect()),
                None if !cfg.gpus.is_empty() => {
                    Some(cfg.gpus.iter().map(|g| g.value.uuid.as_str()).collect())
                }
                None => None,
            };
            if check_against.is_none() {
                notes.push(
                    "device existence not checked: NVML not available and no gpus: listed".into(),
                );
            }
            let parent_of: HashMap<&str, &str> = nvml
                .map(|n| {
                    n.iter()
                        .filter_map(|r| Some((r.status.uuid.as_str(), r.parent.as_deref()?)))
                        .collect()
                })
                .unwrap_or_default();
            let mut owner: HashMap<String, (usize, String)> = HashMap::new();
            for &i in &order {
                let spanned = &cfg.engines[i];
                let e = &spanned.value;
                let line = spanned.referenced.line();
                if e.devices.is_empty() {
                    problems.push(cfg.problem(
                        line,
                        format!("engines[{i}].devices"),
                        format!(
                            "mode partitioned needs the GPUs or MIG devices {:?} owns, by UUID (GPU-…/MIG-…)",
                            e.name
                        ),
                    ));
                    continue;
                }
                let mut ok = true;
                for (j, d) in e.devices.iter().enumerate() {
                    let key = format!("engines[{i}].devices[{j}]");
                    let dline = d.referenced.line().max(line);
                    let u = d.value.as_str();
                    if !(u.starts_with("GPU-") || u.starts_with("MIG-")) {
                        problems.push(cfg.problem(
                            dline,
                            key.clone(),
                            format!("{u:?} is not a UUID: use GPU-… or MIG-… (nvidia-smi -L lists them); indices change with CUDA_VISIBLE_DEVICES, UUIDs do not"),
                        ));
                        ok = false;
                    }
                    if let Some(known) = &check_against {
                        if !known.contains(&u) {
                            problems.push(cfg.problem(
                                dline,
                                key.clone(),
                                format!(
                                    "{u} does not exist on this machine (devices: {})",
                                    known.join(", ")
                                ),
                            ));
                            ok = false;
                        }
                    }
                    // A MIG device overlaps its parent GPU: both count as taken.
                    let mut claims = vec![u.to_string()];
                    if let Some(p) = parent_of.get(u) {
                        claims.push((*p).to_string());
                    }
                    for c in claims {
                        if let Some((oi, oname)) = owner.get(&c) {
                            if *oi != i {
                                problems.push(cfg.problem(
                                    dline,
                                    key.clone(),
                                    format!(
                                        "{u} overlaps {c} already owned by engine {oname:?} (engines[{oi}]): 2 engines on 1 device"
                                    ),
                                ));
                                ok = false;
                            }
                        } else {
                            owner.insert(c, (i, e.name.clone()));
                        }
                    }
                }
                // A parent GPU claimed after one of its MIG devices overlaps too.
                for (j, d) in e.devices.iter().enumerate() {
                    for (child, parent) in &parent_of {
                        if *parent == d.value {
                            if let Some((oi, oname)) = owner.get(*child) {
                                if *oi != i {
                                    problems.push(cfg.problem(
                                        d.referenced.line().max(line),
                                        format!("engines[{i}].devices[{j}]"),
                                        format!("{} holds {child} already owned by engine {oname:?} (engines[{oi}])", d.value),
                                    ));
                                    ok = false;
                                }
                            }
                        }
                    }
                }
                if !ok {
                    continue;
                }
                let total = nvml.and_then(|n| {
                    n.iter()
                        .find(|r| r.status.uuid == e.devices[0].value)
                        .map(|r| r.status.memory_total_bytes)
                });
                let total = total.or_else(|| {
                    gpus.iter()
                        .find(|g| g.uuid == e.devices[0].value)
                        .map(|g| g.total_bytes)
                });
                let budget = match (&e.budget, total) {
                    (Some(b), Some(t)) => Some(b.value.bytes(t)),
                    (Some(b), None) => match b.value {
                        super::config::Budget::Bytes(x) => Some(x),
                        super::config::Budget::Fraction(_) => None,
                    },
                    (None, _) => None,
                };
                if let (Some(b), Some(t)) = (budget, total) {
                    if b > t {
                        problems.push(cfg.problem(
                            line,
                            format!("engines[{i}].budget"),
                            format!(
                                "{} is more than {} ({} total)",
                                gib(b),
                                e.devices[0].value,
                                gib(t)
                            ),
                        ));
                        continue;
                    }
                }
                let devs = e.devices.iter().map(|d| d.value.clone()).collect();
                let mut s = settings_for(e, budget, total, devs);
                if let (Some(b), Some(t)) = (budget, total) {
                    s.needs_free_at_start = (e.kind == EngineKind::Vllm).then_some(b);
                    s.expected_free_at_start = Some(t);
                }
                settings.push(s);
            }
        }
    }

    if !problems.is_empty() {
        return Err(ArbiterError::Invalid { problems });
    }
    for (n, s) in settings.iter_mut().enumerate() {
        s.start_position = n + 1;
    }
    for n in 1..settings.len() {
        let prev = settings[n - 1].unit.clone();
        settings[n].after = Some(prev);
    }
    Ok(Plan {
        mode: cfg.mode,
        reserve_bytes: reserve,
        gpus,
        engines: settings,
        notes,
    })
}

fn known(gpus: &[PlannedGpu]) -> String {
    if gpus.is_empty() {
        "none".into()
    } else {
        gpus.iter()
            .map(|g| g.uuid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The settings for one engine given its budget and its GPU's total.
fn settings_for(
    e: &EngineSpec,
    budget: Option<u64>,
    total: Option<u64>,
    devices: Vec<String>,
) -> EngineSettings {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if !devices.is_empty() {
        // CUDA honours UUIDs here, and they do not shift when other devices are hidden.
        env.push(("CUDA_VISIBLE_DEVICES".into(), devices.join(",")));
    }
    let fraction = match (budget, total) {
        (Some(b), Some(t)) if t > 0 => Some(floor4(b as f64 / t as f64)),
        _ => None,
    };
    match e.kind {
        EngineKind::Vllm => {
            let util = fraction.unwrap_or(DEFAULT_VLLM_UTILIZATION);
            args.push("--gpu-memory-utilization".into());
            args.push(format!("{util:.4}"));
            args.push("--max-num-seqs".into());
            args.push(
                e.max_num_seqs
                    .unwrap_or(DEFAULT_VLLM_MAX_NUM_SEQS)
                    .to_string(),
            );
            if devices.len() > 1 && devices.iter().all(|d| d.starts_with("GPU-")) {
                args.push("--tensor-parallel-size".into());
                args.push(devices.len().to_string());
            }
        }
        EngineKind::Tfserving => {
            if let Some(f) = fraction {
                args.push(format!("--per_process_gpu_memory_fraction={f:.4}"));
            }
            // false: TF takes its fraction at start, so the budget is claimed before later
            // engines start and nothing can grow into it.
            env.push((
                "TF_FORCE_GPU_ALLOW_GROWTH".into(),
                e.allow_growth.unwrap_or(false).to_string(),
            ));
        }
        EngineKind::Ollama => {
            if let (Some(b), Some(t)) = (budget, total) {
                // Ollama keeps OLLAMA_GPU_OVERHEAD bytes of each GPU unused: total − budget.
                env.push((
                    "OLLAMA_GPU_OVERHEAD".into(),
                    t.saturating_sub(b).to_string(),
                ));
            }
            env.push((
                "OLLAMA_MAX_LOADED_MODELS".into(),
                e.max_loaded_models.unwrap_or(1).to_string(),
            ));
            env.push((
                "OLLAMA_NUM_PARALLEL".into(),
                e.max_num_seqs
                    .unwrap_or(DEFAULT_OLLAMA_NUM_PARALLEL)
                    .to_string(),
            ));
            env.push((
                "OLLAMA_MAX_QUEUE".into(),
                e.max_queue.unwrap_or(512).to_string(),
            ));
            env.push((
                "OLLAMA_KEEP_ALIVE".into(),
                e.keep_alive.clone().unwrap_or_else(|| "5m".into()),
            ));
        }
        // llama.cpp sizes itself by its flags (`-ngl`, `-c`, `-np`): no setting is derived.
        EngineKind::Llamacpp => {}
        // Refused by the config: no settings to give.
        EngineKind::Openai | EngineKind::Okome => {}
    }
    if !args.is_empty() {
        env.push(("OKOME_ENGINE_ARGS".into(), args.join(" ")));
    }
    EngineSettings {
        name: e.name.clone(),
        kind: e.kind,
        start_position: 0,
        budget_bytes: budget,
        devices,
        env,
        args,
        unit: e
            .unit
            .clone()
            .unwrap_or_else(|| format!("{}.service", e.name)),
        after: None,
        needs_free_at_start: None,
        expected_free_at_start: None,
    }
}

impl Plan {
    /// The human summary `okome arbiter plan` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mode = match self.mode {
            Mode::Shared => "A (shared GPU, per-engine budgets)",
            Mode::Partitioned => "B (partitioned: devices per engine)",
        };
        let _ = writeln!(
            o,
            "mode {mode}; reserve {} per GPU",
            gib(self.reserve_bytes)
        );
        for g in &self.gpus {
            let _ = write!(
                o,
                "gpu {}: {} total ({})",
                g.uuid,
                gib(g.total_bytes),
                g.from
            );
            if self.mode == Mode::Shared {
                let _ = write!(
                    o,
                    ", budgets {} + reserve {} = {}, {} unassigned",
                    gib(g.budgets_bytes),
                    gib(self.reserve_bytes),
                    gib(g.budgets_bytes + self.reserve_bytes),
                    gib(g
                        .total_bytes
                        .saturating_sub(g.budgets_bytes + self.reserve_bytes))
                );
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "start order:");
        for s in &self.engines {
            let _ = write!(o, "  {}. {} ({})", s.start_position, s.name, s.kind);
            if let Some(b) = s.budget_bytes {
                let _ = write!(o, " budget {}", gib(b));
            }
            if let (Some(n), Some(f)) = (s.needs_free_at_start, s.expected_free_at_start) {
                let _ = write!(o, "; needs {} free at start, expects {}", gib(n), gib(f));
            }
            let _ = writeln!(o);
            if !s.args.is_empty() {
                let _ = writeln!(o, "     args: {}", s.args.join(" "));
            }
            for (k, v) in &s.env {
                if k != "OKOME_ENGINE_ARGS" {
                    let _ = writeln!(o, "     {k}={v}");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(o, "note: {n}");
        }
        o
    }

    /// Writes `<engine>.env` and `<engine>.service.d/okome.conf` under `dir`; returns the paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ArbiterError> {
        let mut out = Vec::new();
        let w = |path: PathBuf, text: String, out: &mut Vec<PathBuf>| {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(|source| ArbiterError::Write {
                    file: p.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| ArbiterError::Write {
                file: path.clone(),
                source,
            })?;
            out.push(path);
            Ok::<(), ArbiterError>(())
        };
        for s in &self.engines {
            let mut env = format!(
                "# {} ({}): written by `okome arbiter plan`; start position {}\n",
                s.name, s.kind, s.start_position
            );
            for (k, v) in &s.env {
                let _ = writeln!(env, "{k}={}", shell_quote(v));
            }
            w(dir.join(format!("{}.env", s.name)), env, &mut out)?;

            let mut unit = format!(
                "# {} ({}): written by `okome arbiter plan`.\n",
                s.name, s.kind
            );
            if !s.args.is_empty() {
                let _ = writeln!(
                    unit,
                    "# Put $OKOME_ENGINE_ARGS (unquoted: systemd splits it into words) on the engine's ExecStart."
                );
            }
            let _ = writeln!(unit, "[Unit]");
            if let Some(a) = &s.after {
                // Start order: vLLM checks free memory at start, so earlier engines come first.
                let _ = writeln!(unit, "After={a}");
            }
            let _ = writeln!(unit, "\n[Service]");
            for (k, v) in &s.env {
                let _ = writeln!(unit, "Environment=\"{k}={v}\"");
            }
            w(
                dir.join(format!("{}.service.d", s.name)).join("okome.conf"),
                unit,
                &mut out,
            )?;
        }
        Ok(out)
    }
}

/// Quotes a value for an env file when it holds spaces.
fn shell_quote(v: &str) -> String {
    if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}
