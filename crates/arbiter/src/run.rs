//! The arbiter's loop: every `interval`, read the GPU and probe every engine at once, feed the
//! rules, and publish a new [`ArbiterState`] (new version when a decision changed).

use super::config::{ArbiterConfig, EngineSpec, GpuSourceKind, Mode};
use super::gpu::{procs, FakeProbe, GpuProbe, GpuReading, NoProbe, NvmlProbe};
use super::model::{ArbiterState, BackendState, BackendStatus};
use super::rules::{Decider, Inputs, Rule, Signal};
use super::signals::{self, EngineSignals};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How far back the drain rate looks.
const DRAIN_WINDOW: Duration = Duration::from_secs(10);
/// How often the listening-port owner of an engine is looked up again (it scans `/proc`).
const PORT_OWNER_TTL: Duration = Duration::from_secs(10);

/// The arbiter's Prometheus collectors (one registry per arbiter, no globals).
#[derive(Clone)]
pub struct ArbiterMetrics {
    registry: Registry,
    /// `okome_arbiter_backend_state{backend,engine}`: 0 ok, 1 pressured, 2 shedding, 3 down.
    pub backend_state: IntGaugeVec,
    /// `okome_arbiter_gpu_memory_bytes{uuid,kind}`, kind = total | used | free.
    pub gpu_memory: IntGaugeVec,
    /// `okome_arbiter_engine_gpu_memory_bytes{engine}`: memory mapped to the engine.
    pub engine_memory: IntGaugeVec,
    /// `okome_arbiter_decisions_total{engine,state,rule}`: state changes by the rule that made them.
    pub decisions: IntCounterVec,
    /// `okome_arbiter_state_version`: the version served.
    pub version: IntGauge,
}

impl std::fmt::Debug for ArbiterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArbiterMetrics")
    }
}

impl ArbiterMetrics {
    /// Creates and registers every collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = (|| -> prometheus::Result<ArbiterMetrics> {
            let backend_state = IntGaugeVec::new(
                Opts::new(
                    "okome_arbiter_backend_state",
                    "Arbiter decision per backend: 0 ok, 1 pressured, 2 shedding, 3 down.",
                ),
                &["backend", "engine"],
            )?;
            let gpu_memory = IntGaugeVec::new(
                Opts::new(
                    "okome_arbiter_gpu_memory_bytes",
                    "GPU memory by device UUID and kind (total, used, free).",
                ),
                &["uuid", "kind"],
            )?;
            let engine_memory = IntGaugeVec::new(
                Opts::new(
                    "okome_arbiter_engine_gpu_memory_bytes",
                    "GPU memory held by an engine's processes.",
                ),
                &["engine"],
            )?;
            let decisions = IntCounterVec::new(
                Opts::new(
                    "okome_arbiter_decisions_total",
                    "State changes per engine, by new state and the rule that decided.",
                ),
                &["engine", "state", "rule"],
            )?;
            let version = IntGauge::new(
                "okome_arbiter_state_version",
                "Version of the published arbiter state.",
            )?;
            registry.register(Box::new(backend_state.clone()))?;
            registry.register(Box::new(gpu_memory.clone()))?;
            okome_core::metrics::register_process_metrics(&registry);
            registry.register(Box::new(engine_memory.clone()))?;
            registry.register(Box::new(decisions.clone()))?;
            registry.register(Box::new(version.clone()))?;
            Ok(ArbiterMetrics {
                registry: registry.clone(),
                backend_state,
                gpu_memory,
                engine_memory,
                decisions,
                version,
            })
        })();
        // Registration only fails on duplicate or malformed names, fixed at compile time here.
        #[allow(clippy::expect_used)]
        m.expect("metric definitions are static and valid")
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        okome_core::metrics::render(&self.registry)
    }
}

impl Default for ArbiterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds the GPU source the config asks for; never fails (NVML missing → engine signals only).
pub fn probe_for(cfg: &ArbiterConfig) -> Arc<dyn GpuProbe> {
    let timeout = cfg.timeout.0;
    match cfg.gpu.source {
        GpuSourceKind::Nvml => Arc::new(NvmlProbe::open(cfg.gpu.nvml_library.as_deref())),
        GpuSourceKind::Fake => {
            let urls = match &cfg.gpu.fake_url {
                Some(u) => {
                    // One simulated GPU: its processes belong to the engine on the URL's port.
                    let port = u.parse::<http::Uri>().ok().and_then(|u| u.port_u16());
                    let owner = cfg
                        .engines
                        .iter()
                        .find(|e| port.is_some() && e.value.port() == port)
                        .map(|e| e.value.name.clone());
                    vec![(u.clone(), owner)]
                }
                None => cfg
                    .engines
                    .iter()
                    .map(|e| {
                        (
                            format!("http://{}/_sim/gpu", e.value.address),
                            Some(e.value.name.clone()),
                        )
                    })
                    .collect(),
            };
            Arc::new(FakeProbe::new(urls, timeout))
        }
        GpuSourceKind::None => Arc::new(NoProbe {
            message: "gpu.source is none: deciding on engine signals only".into(),
        }),
    }
}

/// Finished-request counter samples; the drain rate is their slope.
#[derive(Debug, Default)]
struct Drain {
    samples: VecDeque<(Instant, f64)>,
}

impl Drain {
    fn push(&mut self, now: Instant, total: f64) {
        if let Some(&(_, last)) = self.samples.back() {
            if total < last {
                self.samples.clear(); // The engine restarted: its counter did too.
            }
        }
        self.samples.push_back((now, total));
        while let Some(&(t, _)) = self.samples.front() {
            if now.saturating_duration_since(t) > DRAIN_WINDOW && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    fn per_sec(&self) -> Option<f64> {
        let (t0, v0) = *self.samples.front()?;
        let (t1, v1) = *self.samples.back()?;
        let dt = t1.saturating_duration_since(t0).as_secs_f64();
        (dt >= 0.5).then(|| (v1 - v0).max(0.0) / dt)
    }
}

/// Suggested Retry-After: queue over drain rate (or over running sequences, ~1 s each when the
/// rate is not known yet), clamped to [1, 60] s; `fallback` when there is no queue to go by.
pub fn retry_after(
    queue: Option<u64>,
    drain_per_sec: Option<f64>,
    running: Option<u64>,
    fallback: u64,
) -> u64 {
    let secs = match queue {
        Some(q) if q > 0 => match (drain_per_sec, running) {
            (Some(d), _) if d > 0.0 => (q as f64 / d).ceil() as u64,
            (_, Some(r)) if r > 0 => q.div_ceil(r),
            // A queue and nothing draining it: tell clients to stay away as long as allowed.
            _ => 60,
        },
        _ => fallback,
    };
    secs.clamp(1, 60)
}

struct Engine {
    spec: EngineSpec,
    decider: Decider,
    drain: Drain,
    since_ms: u64,
    port_owners: (Instant, Vec<u32>),
}

impl Engine {
    /// Whether NVML process `pid` belongs to this engine.
    fn owns(&mut self, pid: u32, cfg_dir: &std::path::Path, now: Instant) -> bool {
        let m = &self.spec.process;
        let lineage = procs::lineage(pid);
        if let Some(f) = &m.pid_file {
            let f = if f.is_relative() {
                cfg_dir.join(f)
            } else {
                f.clone()
            };
            if let Some(p) = procs::pid_file(&f) {
                if lineage.contains(&p) {
                    return true;
                }
            }
        }
        if let Some(name) = &m.name {
            if lineage
                .iter()
                .any(|p| procs::cmdline(*p).is_some_and(|c| c.contains(name.as_str())))
            {
                return true;
            }
        }
        if let Some(port) = m.port.or_else(|| self.spec.port()) {
            if now.saturating_duration_since(self.port_owners.0) > PORT_OWNER_TTL
                || self.port_owners.1.is_empty()
            {
                self.port_owners = (now, procs::port_owners(port));
            }
            if lineage.iter().any(|p| self.port_owners.1.contains(p)) {
                return true;
            }
        }
        false
    }
}

/// The loop's state.
pub(crate) struct Arbiter {
    cfg: ArbiterConfig,
    probe: Arc<dyn GpuProbe>,
    client: okome_engine::Client,
    engines: Vec<Engine>,
    metrics: ArbiterMetrics,
    version: u64,
    last_key: Vec<(BackendState, Rule, u64)>,
}

impl Arbiter {
    pub(crate) fn new(
        cfg: ArbiterConfig,
        probe: Arc<dyn GpuProbe>,
        metrics: ArbiterMetrics,
    ) -> Self {
        let now = Instant::now();
        let engines = cfg
            .engines
            .iter()
            .map(|e| Engine {
                spec: e.value.clone(),
                decider: Decider::new(cfg.rules, now),
                drain: Drain::default(),
                since_ms: now_ms(),
                port_owners: (now, Vec::new()),
            })
            .collect();
        Arbiter {
            cfg,
            probe,
            client: okome_engine::Client::new(),
            engines,
            metrics,
            version: 0,
            last_key: Vec::new(),
        }
    }

    /// The state before any probe ran: every backend `ok`, version 0.
    pub(crate) fn initial(&self) -> ArbiterState {
        ArbiterState {
            version: 0,
            generated_at_ms: now_ms(),
            gpu_source: self.probe.source(),
            gpus: Vec::new(),
            backends: Vec::new(),
        }
    }

    /// One round: probe, decide, return the state to publish.
    pub(crate) async fn round(&mut self) -> ArbiterState {
        let timeout = self.cfg.timeout.0;
        let probe = self.probe.clone();
        let gpu_fut = probe.read();
        let client = &self.client;
        let eng_fut = futures::future::join_all(
            self.engines
                .iter()
                .map(|e| signals::probe(client, &e.spec, timeout)),
        );
        let (gpu, sigs) = tokio::join!(gpu_fut, eng_fut);
        let mut source = self.probe.source();
        let gpus: Vec<GpuReading> = match gpu {
            Ok(g) => g,
            Err(e) => {
                log::debug!("arbiter: GPU read failed: {e}");
                source.message = format!("{} (last read failed: {e})", source.message);
                Vec::new()
            }
        };
        let now = Instant::now();
        let ms = now_ms();
        for g in &gpus {
            let s = &g.status;
            for (k, v) in [
                ("total", s.memory_total_bytes),
                ("used", s.memory_used_bytes),
                ("free", s.memory_free_bytes),
            ] {
                self.metrics
                    .gpu_memory
                    .with_label_values(&[s.uuid.as_str(), k])
                    .set(v as i64);
            }
        }
        let cfg_dir = self
            .cfg
            .path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let reserve = self.cfg.gpu.reserve.value.0;
        let mut backends = Vec::with_capacity(self.engines.len());
        let mut key = Vec::with_capacity(self.engines.len());
        for (e, s) in self.engines.iter_mut().zip(sigs) {
            let (inputs, mem) = engine_inputs(&self.cfg, e, &s, &gpus, &cfg_dir, reserve, now);
            if let Some(f) = s.finished_total {
                e.drain.push(now, f);
            }
            let d = e.decider.update(now, &inputs);
            if d.changed {
                e.since_ms = ms;
                self.metrics
                    .decisions
                    .with_label_values(&[e.spec.name.as_str(), d.state.as_str(), d.rule.as_str()])
                    .inc();
                log::info!(
                    "arbiter: {} ({}) -> {}: {}",
                    e.spec.name,
                    e.spec.advertised(),
                    d.state.as_str(),
                    d.reason
                );
            }
            let drain = e.drain.per_sec();
            let fallback = self.cfg.rules.hysteresis.min_hold.0.as_secs().max(1);
            let retry = if d.state == BackendState::Ok {
                0
            } else {
                retry_after(s.queue_depth, drain, s.running, fallback)
            };
            self.metrics
                .backend_state
                .with_label_values(&[e.spec.advertised(), e.spec.name.as_str()])
                .set(d.state.level());
            if let Some(m) = mem {
                self.metrics
                    .engine_memory
                    .with_label_values(&[e.spec.name.as_str()])
                    .set(m as i64);
            }
            key.push((d.state, d.rule, retry));
            backends.push(BackendStatus {
                backend: e.spec.advertised().to_string(),
                engine: e.spec.name.clone(),
                kind: e.spec.kind.as_str().to_string(),
                state: d.state,
                reason: d.reason,
                rule: d.rule.as_str().to_string(),
                retry_after_secs: retry,
                queue_depth: s.queue_depth,
                drain_per_sec: drain,
                kv_cache_usage: s.kv_cache_usage,
                gpu_memory_bytes: mem,
                since_ms: e.since_ms,
            });
        }
        // A new version whenever an edge would act differently: state, rule or Retry-After.
        if key != self.last_key || self.version == 0 {
            self.version += 1;
            self.last_key = key;
        }
        self.metrics.version.set(self.version as i64);
        ArbiterState {
            version: self.version,
            generated_at_ms: ms,
            gpu_source: source,
            gpus: gpus.into_iter().map(|g| g.status).collect(),
            backends,
        }
    }
}

/// The rule inputs of one engine and the GPU memory mapped to it.
fn engine_inputs(
    cfg: &ArbiterConfig,
    e: &mut Engine,
    s: &EngineSignals,
    gpus: &[GpuReading],
    cfg_dir: &std::path::Path,
    reserve: u64,
    now: Instant,
) -> (Inputs, Option<u64>) {
    let mut signals = Vec::new();
    if let Some(q) = s.queue_depth {
        signals.push(Signal {
            rule: Rule::QueueDepth,
            value: q as f64,
        });
    }
    if let Some(k) = s.kv_cache_usage {
        signals.push(Signal {
            rule: Rule::KvCache,
            value: k,
        });
    }
    // The GPUs this engine lives on, and the memory its processes hold there.
    let mut mine: Vec<&GpuReading> = Vec::new();
    let mut mem: Option<u64> = None;
    for g in gpus {
        let mut held = 0u64;
        let mut any = false;
        for p in &g.processes {
            let owned = match &p.engine {
                Some(name) => *name == e.spec.name,
                None => e.owns(p.pid, cfg_dir, now),
            };
            if owned {
                held += p.used_bytes;
                any = true;
            }
        }
        let listed = e.spec.devices.iter().any(|d| d.value == g.status.uuid);
        if listed || any {
            mine.push(g);
        }
        if any {
            mem = Some(mem.unwrap_or(0) + held);
        }
    }
    if mine.is_empty() && cfg.mode == Mode::Shared && e.spec.devices.is_empty() {
        // Mode A without `devices`: the engine shares the first GPU (the configured one if named).
        let first = cfg
            .gpus
            .first()
            .and_then(|spec| gpus.iter().find(|g| g.status.uuid == spec.value.uuid))
            .or_else(|| gpus.first());
        mine.extend(first);
    }
    if mem.is_none() && !s.loaded_models.is_empty() {
        // Ollama reports what its runners hold even when NVML cannot map its processes.
        mem = s.vram_bytes;
    }
    for g in &mine {
        let usable = g.status.memory_total_bytes.saturating_sub(reserve);
        if usable > 0 {
            signals.push(Signal {
                rule: Rule::GpuHeadroom,
                value: g.status.memory_used_bytes as f64 / usable as f64,
            });
        }
    }
    if let (Some(b), Some(m)) = (&e.spec.budget, mem) {
        let total = mine
            .first()
            .map(|g| g.status.memory_total_bytes)
            .or_else(|| cfg.gpus.first().and_then(|g| g.value.memory.map(|m| m.0)));
        if let Some(total) = total {
            let budget = b.value.bytes(total);
            if budget > 0 {
                signals.push(Signal {
                    rule: Rule::OverBudget,
                    value: m as f64 / budget as f64,
                });
            }
        }
    }
    (
        Inputs {
            healthy: s.healthy,
            health_error: s.health_error.clone(),
            signals,
        },
        mem,
    )
}

/// Runs rounds every `interval` until `stop` turns true, publishing each state on `tx`.
pub(crate) async fn run_loop(
    mut arb: Arbiter,
    tx: watch::Sender<Arc<ArbiterState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(arb.cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = okome_longpoll::stopped(&mut stop) => return,
        }
        let state = tokio::select! {
            s = arb.round() => s,
            _ = okome_longpoll::stopped(&mut stop) => return,
        };
        tx.send_replace(Arc::new(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_queue_over_drain_clamped() {
        assert_eq!(retry_after(Some(40), Some(4.0), None, 3), 10);
        assert_eq!(retry_after(Some(40), Some(0.1), None, 3), 60);
        assert_eq!(retry_after(Some(1), Some(100.0), None, 3), 1);
        assert_eq!(retry_after(Some(40), None, Some(8), 3), 5);
        assert_eq!(retry_after(Some(40), None, None, 3), 60);
        assert_eq!(retry_after(None, None, None, 3), 3);
    }
}
