//! `control.yaml` and its keys file: schema, parsing and validation.
//!
//! Parsing reports the file, line and column (from the YAML parser); validation reports
//! `file:line: key: problem` for each semantic problem (unknown tenant in a key, duplicate
//! tenant ids or key hashes, a hash that is not 64 lowercase hex digits, `edges: 0`).

use super::error::{ControlError, Problem};
use super::store::Published;
use okome_core::config::ByteSize;
use okome_wire::control::{ModelRoute, OnLimitsUnavailable, Priority, Snapshot, TenantPolicy};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole `control.yaml` (`okome control -c FILE`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `kind: control` (optional): says which component this file configures.
    #[serde(default)]
    pub kind: Option<okome_core::config::FileKind>,
    /// Where the control API listens; edges reach it here.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Number of edges sharing each tenant's cluster-wide limits.
    #[serde(default = "default_edges")]
    pub edges: Spanned<u32>,
    /// The keys file, relative to this file; it holds only SHA-256 hashes.
    #[serde(default)]
    pub keys_file: Option<Spanned<String>>,
    /// Tenants and their limits.
    #[serde(default)]
    pub tenants: Vec<Spanned<TenantSpec>>,
    /// Model routes, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Inline keys, same shape as the keys file's entries.
    #[serde(default)]
    pub keys: Vec<Spanned<KeyEntry>>,
    /// The shared token edges and operators must present (`Authorization: Bearer …`) to read
    /// snapshots and look up keys: `{ file: PATH }` (relative to this file) or `{ env: VAR }`.
    /// Without it the API is open to anyone who can reach it (`okome check` warns).
    #[serde(default)]
    pub api_token: Option<Spanned<okome_core::config::SecretSource>>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}

fn default_edges() -> Spanned<u32> {
    // A defaulted value has no place in the file; it is 1, which is always valid.
    Spanned::new(1, Location::UNKNOWN, Location::UNKNOWN)
}

fn all_models() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A model route as written in `control.yaml` (strict: a typo is an error here, while the wire
/// form edges receive tolerates new fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Model glob.
    pub model: String,
    /// Target pool (a pool name of the edge config).
    pub pool: String,
    /// Pools tried in order when the target has no backend left.
    #[serde(default)]
    pub fallback: Vec<String>,
}

impl RouteSpec {
    /// The wire form edges receive.
    pub fn route(&self) -> ModelRoute {
        ModelRoute {
            model: self.model.clone(),
            pool: self.pool.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

/// A tenant as written in `control.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Tenant id, unique.
    pub id: Spanned<String>,
    /// Shedding class: `critical`, `standard` (default) or `sheddable`.
    #[serde(default)]
    pub priority: Priority,
    /// Model globs the tenant may use (default `["*"]`).
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    /// Requests per minute, cluster-wide; absent = unlimited.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Generated tokens per minute, cluster-wide; absent = unlimited.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Streams open at once, cluster-wide; absent = unlimited.
    #[serde(default)]
    pub max_concurrent_streams: Option<u64>,
    /// Largest request body (`4MiB`); absent = the edge's own limit.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// While an edge's shared limit store (Redis) is slow or down: `open` (default; the edge's
    /// local share of the limits) or `closed` (503 `limits_unavailable`).
    #[serde(default)]
    pub on_limits_unavailable: OnLimitsUnavailable,
}

impl TenantSpec {
    /// The wire form edges receive.
    pub fn policy(&self) -> TenantPolicy {
        TenantPolicy {
            id: self.id.value.clone(),
            priority: self.priority,
            models: self.models.clone(),
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            max_concurrent_streams: self.max_concurrent_streams,
            max_body_bytes: self.max_body.map(|b| b.0),
            on_limits_unavailable: self.on_limits_unavailable,
        }
    }
}

/// One API key: its SHA-256 hash (never the key) and the tenant it belongs to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Lowercase hex SHA-256 of the key (see [`super::keys::hash_key`]).
    pub sha256: Spanned<String>,
    /// The tenant id.
    pub tenant: Spanned<String>,
}

/// A validated control config together with the keys read from its keys file.
#[derive(Debug)]
pub struct ControlPolicy {
    /// `control.yaml` as parsed.
    pub config: ControlConfig,
    /// Where it was read from (used in messages and to resolve `keys_file`).
    pub path: PathBuf,
    /// The keys file, resolved against `path`'s folder, when one is set.
    pub keys_path: Option<PathBuf>,
    /// Entries of the keys file (empty when it is absent or not yet created).
    pub file_keys: Vec<Spanned<KeyEntry>>,
    /// The API token, read from where `api_token` says (checked by validation).
    pub api_token: Option<okome_core::config::Secret>,
}

/// True when `s` is 64 lowercase hex digits, the only form stored and looked up.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses YAML text; the parser's `<input>` label is replaced by the real file name.
fn parse_yaml<T: for<'de> Deserialize<'de>>(file: &Path, text: &str) -> Result<T, ControlError> {
    okome_core::config::from_yaml(file, text).map_err(|message| ControlError::Parse {
        file: file.to_path_buf(),
        message,
    })
}

/// Parses a keys file's text; a file with nothing but comments and blank lines holds no keys.
pub fn parse_keys(file: &Path, text: &str) -> Result<Vec<Spanned<KeyEntry>>, ControlError> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        return Ok(Vec::new());
    }
    parse_yaml(file, text)
}

fn read(file: &Path) -> Result<String, ControlError> {
    okome_core::config::read_text(file, okome_core::config::MAX_CONFIG_FILE).map_err(|source| {
        ControlError::Read {
            file: file.to_path_buf(),
            source,
        }
    })
}

impl ControlPolicy {
    /// Reads, parses and validates `control.yaml` and its keys file (a missing keys file
    /// holds no keys yet: `add-key` creates it).
    pub fn load(path: &Path) -> Result<ControlPolicy, ControlError> {
        let text = read(path)?;
        let config: ControlConfig = parse_yaml(path, &text)?;
        let keys_path = config.keys_file.as_ref().map(|k| {
            let dir = path.parent().unwrap_or_else(|| Path::new(""));
            dir.join(&k.value)
        });
        let file_keys = match &keys_path {
            Some(kp) => {
                match okome_core::config::read_text(kp, okome_core::config::MAX_CONFIG_FILE) {
                    Ok(t) => parse_keys(kp, &t)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(source) => {
                        return Err(ControlError::Read {
                            file: kp.clone(),
                            source,
                        })
                    }
                }
            }
            None => Vec::new(),
        };
        Self::validated(ControlPolicy {
            config,
            path: path.to_path_buf(),
            keys_path,
            file_keys,
            api_token: None,
        })
    }

    /// Parses and validates config text held in memory (the demo's); `keys_file` is not read,
    /// only inline `keys:` count. `name` is used in messages.
    pub fn from_str(name: &str, text: &str) -> Result<ControlPolicy, ControlError> {
        let path = PathBuf::from(name);
        let config: ControlConfig = parse_yaml(&path, text)?;
        Self::validated(ControlPolicy {
            config,
            path,
            keys_path: None,
            file_keys: Vec::new(),
            api_token: None,
        })
    }

    fn validated(mut p: ControlPolicy) -> Result<ControlPolicy, ControlError> {
        let mut problems = p.validate();
        if let Some(src) = &p.config.api_token {
            match src.value.load(p.path.parent()) {
                Ok(t) => p.api_token = Some(t),
                Err(e) => problems.push(Problem {
                    file: p.path.clone(),
                    line: src.referenced.line(),
                    key: "api_token".into(),
                    message: e.to_string(),
                }),
            }
        }
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(ControlError::Invalid { problems })
        }
    }

    /// Every problem found (empty when usable).
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let cfg = &self.config;
        let mut problem = |file: &Path, line: u64, key: String, message: String| {
            out.push(Problem {
                file: file.to_path_buf(),
                line,
                key,
                message,
            })
        };

        if cfg.edges.value == 0 {
            problem(
                &self.path,
                cfg.edges.referenced.line().max(1),
                "edges".into(),
                "must be at least 1 (the number of edges sharing each tenant's limits)".into(),
            );
        }

        let mut tenant_at: HashMap<&str, u64> = HashMap::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            let id = &t.value.id;
            if id.value.trim().is_empty() {
                problem(
                    &self.path,
                    id.referenced.line(),
                    format!("tenants[{i}].id"),
                    "must not be empty".into(),
                );
            }
            if let Some(first) = tenant_at.insert(&id.value, id.referenced.line()) {
                // Keep the first definition as the reference the message points back to.
                tenant_at.insert(&id.value, first);
                problem(
                    &self.path,
                    id.referenced.line(),
                    format!("tenants[{i}].id"),
                    format!(
                        "duplicate tenant id {:?} (first defined on line {first})",
                        id.value
                    ),
                );
            }
        }

        let all_keys = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (self.path.as_path(), i, k))
            .chain(self.file_keys.iter().enumerate().map(|(i, k)| {
                let file = self.keys_path.as_deref().unwrap_or(self.path.as_path());
                (file, i, k)
            }));
        let mut hash_at: HashMap<&str, (&Path, u64)> = HashMap::new();
        for (file, i, k) in all_keys {
            let k = &k.value;
            if !is_sha256_hex(&k.sha256.value) {
                // The value may be a pasted key rather than its hash: never echo it.
                problem(
                    file,
                    k.sha256.referenced.line(),
                    format!("keys[{i}].sha256"),
                    format!(
                        "must be a SHA-256 hash: 64 lowercase hex digits (got {} characters); store hashes, never keys — `okome control add-key --tenant T` writes one",
                        k.sha256.value.chars().count()
                    ),
                );
            } else if let Some((f0, l0)) = hash_at.get(k.sha256.value.as_str()) {
                problem(
                    file,
                    k.sha256.referenced.line(),
                    format!("keys[{i}].sha256"),
                    format!(
                        "duplicate key hash (already bound at {}:{l0})",
                        f0.display()
                    ),
                );
            } else {
                hash_at.insert(&k.sha256.value, (file, k.sha256.referenced.line()));
            }
            if !tenant_at.contains_key(k.tenant.value.as_str()) {
                problem(
                    file,
                    k.tenant.referenced.line(),
                    format!("keys[{i}].tenant"),
                    format!(
                        "unknown tenant {:?} (tenants: {})",
                        k.tenant.value,
                        self.tenant_ids().join(", ")
                    ),
                );
            }
        }
        out
    }

    /// Tenant ids in config order.
    pub fn tenant_ids(&self) -> Vec<String> {
        self.config
            .tenants
            .iter()
            .map(|t| t.value.id.value.clone())
            .collect()
    }

    /// What the store serves for this policy at `version`.
    pub fn publish(&self, version: u64) -> Published {
        let tenants: Vec<TenantPolicy> = self
            .config
            .tenants
            .iter()
            .map(|t| t.value.policy())
            .collect();
        let keys = self
            .config
            .keys
            .iter()
            .chain(self.file_keys.iter())
            .map(|k| (k.value.sha256.value.clone(), k.value.tenant.value.clone()))
            .collect();
        Published {
            snapshot: Snapshot {
                version,
                published_at: unix_now(),
                edges: self.config.edges.value,
                routes: self.config.routes.iter().map(RouteSpec::route).collect(),
                tenants: tenants.clone(),
            },
            keys,
            tenants: tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
