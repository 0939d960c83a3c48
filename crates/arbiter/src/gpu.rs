//! GPU signals: NVML on a real node, a simulator's `/_sim/gpu` in tests and the demo, or none.
//!
//! NVML enumerates every GPU of the machine whatever `CUDA_VISIBLE_DEVICES` says, and its
//! indices need not match CUDA's: everything here is keyed by UUID.

use super::model::{GpuSource, GpuStatus};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A process holding GPU memory.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProcess {
    /// Process id (in NVML's PID namespace: the host's).
    pub pid: u32,
    /// Bytes it holds on this device.
    pub used_bytes: u64,
    /// The engine it belongs to, when the source already knows (the fake source does).
    pub engine: Option<String>,
}

/// One device and its processes.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// Totals and utilization.
    pub status: GpuStatus,
    /// MIG parent's UUID, for a MIG device.
    pub parent: Option<String>,
    /// Processes on it.
    pub processes: Vec<GpuProcess>,
}

/// A source of GPU readings.
#[async_trait]
pub trait GpuProbe: Send + Sync {
    /// What `/v1/state` says about the source (kind and why, e.g. NVML missing).
    fn source(&self) -> GpuSource;
    /// Reads every device; an error leaves the GPU signals out of this round.
    async fn read(&self) -> Result<Vec<GpuReading>, String>;
}

/// No GPU signals.
#[derive(Debug)]
pub struct NoProbe {
    /// Why there are none.
    pub message: String,
}

#[async_trait]
impl GpuProbe for NoProbe {
    fn source(&self) -> GpuSource {
        GpuSource {
            kind: "none".into(),
            message: self.message.clone(),
        }
    }
    async fn read(&self) -> Result<Vec<GpuReading>, String> {
        Ok(Vec::new())
    }
}

/// Reads `GET /_sim/gpu` of simulators: one URL, or one per engine.
#[derive(Debug)]
pub struct FakeProbe {
    /// `(url, engine)`: the engine owns the processes the URL reports.
    pub urls: Vec<(String, Option<String>)>,
    /// Per-request timeout.
    pub timeout: Duration,
    client: okome_engine::Client,
}

impl FakeProbe {
    /// A probe over `urls`, each `(url, engine owning its processes)`.
    pub fn new(urls: Vec<(String, Option<String>)>, timeout: Duration) -> FakeProbe {
        FakeProbe {
            urls,
            timeout,
            client: okome_engine::Client::new(),
        }
    }
}

#[derive(serde::Deserialize)]
struct SimGpuWire {
    uuid: String,
    name: String,
    memory_total_bytes: u64,
    memory_used_bytes: u64,
    memory_free_bytes: u64,
    #[serde(default)]
    utilization_percent: Option<u32>,
    #[serde(default)]
    processes: Vec<SimProcWire>,
}

#[derive(serde::Deserialize)]
struct SimProcWire {
    pid: u32,
    used_bytes: u64,
}

#[async_trait]
impl GpuProbe for FakeProbe {
    fn source(&self) -> GpuSource {
        let urls: Vec<&str> = self.urls.iter().map(|(u, _)| u.as_str()).collect();
        GpuSource {
            kind: "fake".into(),
            message: format!("simulated GPU from {}", urls.join(", ")),
        }
    }

    async fn read(&self) -> Result<Vec<GpuReading>, String> {
        let reads = self.urls.iter().map(|(url, engine)| async move {
            let body = self
                .client
                .get(url, None, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            let g: SimGpuWire =
                serde_json::from_slice(&body).map_err(|e| format!("{url}: not a sim GPU: {e}"))?;
            Ok::<_, String>(GpuReading {
                status: GpuStatus {
                    uuid: g.uuid,
                    name: g.name,
                    memory_total_bytes: g.memory_total_bytes,
                    memory_used_bytes: g.memory_used_bytes,
                    memory_free_bytes: g.memory_free_bytes,
                    utilization_percent: g.utilization_percent,
                },
                parent: None,
                processes: g
                    .processes
                    .into_iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        used_bytes: p.used_bytes,
                        engine: engine.clone(),
                    })
                    .collect(),
            })
        });
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for r in futures::future::join_all(reads).await {
            match r {
                Ok(g) => out.push(g),
                Err(e) => errors.push(e),
            }
        }
        if out.is_empty() && !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(out)
    }
}

/// NVML, loaded at run time. Construct with [`NvmlProbe::open`], which never fails: a missing
/// library yields a probe that reads nothing and says why.
pub struct NvmlProbe {
    nvml: Option<Arc<nvml_wrapper::Nvml>>,
    message: String,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("loaded", &self.nvml.is_some())
            .field("message", &self.message)
            .finish()
    }
}

impl NvmlProbe {
    /// Loads NVML (from `library`, or the loader's `libnvidia-ml.so.1`); logs once when it is not there.
    pub fn open(library: Option<&str>) -> NvmlProbe {
        let init = match library {
            Some(p) => nvml_wrapper::Nvml::builder()
                .lib_path(std::ffi::OsStr::new(p))
                .init(),
            None => nvml_wrapper::Nvml::init(),
        };
        match init {
            Ok(nvml) => {
                let n = nvml.device_count().unwrap_or(0);
                let drv = nvml.sys_driver_version().unwrap_or_default();
                let message = format!("NVML loaded: {n} device(s), driver {drv}");
                log::info!("arbiter: {message}");
                NvmlProbe {
                    nvml: Some(Arc::new(nvml)),
                    message,
                }
            }
            Err(e) => {
                let message = format!(
                    "NVML not available ({e}); deciding on engine signals only (no GPU memory rules)"
                );
                log::warn!("arbiter: {message}");
                NvmlProbe {
                    nvml: None,
                    message,
                }
            }
        }
    }

    /// Whether the library loaded.
    pub fn loaded(&self) -> bool {
        self.nvml.is_some()
    }

    /// Reads every device on the calling thread (for `plan`, outside any runtime).
    pub fn read_blocking(&self) -> Result<Vec<GpuReading>, String> {
        match &self.nvml {
            Some(n) => read_nvml(n),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl GpuProbe for NvmlProbe {
    fn source(&self) -> GpuSource {
        GpuSource {
            kind: if self.nvml.is_some() { "nvml" } else { "none" }.into(),
            message: self.message.clone(),
        }
    }

    async fn read(&self) -> Result<Vec<GpuReading>, String> {
        let Some(nvml) = self.nvml.clone() else {
            return Ok(Vec::new());
        };
        // NVML calls block (and can take tens of ms with many processes): keep them off the runtime.
        tokio::task::spawn_blocking(move || read_nvml(&nvml))
            .await
            .map_err(|e| format!("NVML reader panicked: {e}"))?
    }
}

fn device_reading(
    d: &nvml_wrapper::Device<'_>,
    parent: Option<String>,
) -> Result<GpuReading, String> {
    use nvml_wrapper::enums::device::UsedGpuMemory;
    let uuid = d.uuid().map_err(|e| format!("NVML uuid: {e}"))?;
    let mem = d
        .memory_info()
        .map_err(|e| format!("NVML memory of {uuid}: {e}"))?;
    // v2 splits driver-reserved memory out of `used`; total − free counts it, like nvidia-smi.
    let used = mem.total.saturating_sub(mem.free);
    let util = d.utilization_rates().ok().map(|u| u.gpu);
    let mut processes = Vec::new();
    if let Ok(ps) = d.running_compute_processes() {
        for p in ps {
            let used_bytes = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => b,
                UsedGpuMemory::Unavailable => 0,
            };
            processes.push(GpuProcess {
                pid: p.pid,
                used_bytes,
                engine: None,
            });
        }
    }
    Ok(GpuReading {
        status: GpuStatus {
            uuid,
            name: d.name().unwrap_or_default(),
            memory_total_bytes: mem.total,
            memory_used_bytes: used,
            memory_free_bytes: mem.free,
            utilization_percent: util,
        },
        parent,
        processes,
    })
}

fn read_nvml(nvml: &nvml_wrapper::Nvml) -> Result<Vec<GpuReading>, String> {
    let n = nvml
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    let mut out = Vec::new();
    for i in 0..n {
        let d = nvml
            .device_by_index(i)
            .map_err(|e| format!("NVML device {i}: {e}"))?;
        let parent = device_reading(&d, None)?;
        let parent_uuid = parent.status.uuid.clone();
        out.push(parent);
        // MIG devices are reported with their own UUID (`MIG-…`), which is what engines pin to.
        let mig_on = d.mig_mode().map(|m| m.current == 1).unwrap_or(false);
        if mig_on {
            let count = d.mig_device_count().unwrap_or(0);
            for j in 0..count {
                if let Ok(m) = d.mig_device_by_index(j) {
                    if let Ok(r) = device_reading(&m, Some(parent_uuid.clone())) {
                        out.push(r);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Maps NVML PIDs to engines through `/proc`: a PID file (the process or a descendant), a
/// command-line substring (the process or a parent), or the owner of a listening port.
pub mod procs {
    use std::collections::HashSet;

    /// The parent PID of `pid`, from `/proc/PID/stat`.
    pub fn ppid(pid: u32) -> Option<u32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold spaces: parse after the last ')'.
        let rest = &s[s.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    /// `pid` and its ancestors up to init (bounded, in case of a cycle while processes churn).
    pub fn lineage(pid: u32) -> Vec<u32> {
        let mut out = vec![pid];
        let mut p = pid;
        for _ in 0..64 {
            match ppid(p) {
                Some(q) if q > 1 && !out.contains(&q) => {
                    out.push(q);
                    p = q;
                }
                _ => break,
            }
        }
        out
    }

    /// The command line of `pid`, arguments joined by spaces.
    pub fn cmdline(pid: u32) -> Option<String> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    /// Socket inodes listening on TCP `port` (IPv4 and IPv6).
    fn listening_inodes(port: u16) -> HashSet<u64> {
        let mut out = HashSet::new();
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is column 9.
                if cols.len() < 10 || cols[3] != "0A" {
                    continue;
                }
                let Some(p) = cols[1].rsplit(':').next() else {
                    continue;
                };
                if u16::from_str_radix(p, 16).ok() == Some(port) {
                    if let Ok(inode) = cols[9].parse() {
                        out.insert(inode);
                    }
                }
            }
        }
        out
    }

    /// PIDs owning a socket listening on `port` (needs permission to read their fds).
    pub fn port_owners(port: u16) -> Vec<u32> {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for ent in dir.flatten() {
            let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let t = target.to_string_lossy();
                if let Some(n) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    if inodes.contains(&n) {
                        out.push(pid);
                        break;
                    }
                }
            }
        }
        out
    }

    /// The PID written in `file`.
    pub fn pid_file(file: &std::path::Path) -> Option<u32> {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}
