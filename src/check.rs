//! `okome check`: validate a config file without starting anything.

use std::path::Path;

/// Why a file did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// An edge config problem (with file, line and key).
    #[error(transparent)]
    Edge(#[from] crate::config::ConfigError),
    /// A simulator config problem.
    #[error(transparent)]
    Sim(#[from] crate::sim::SimError),
    /// An arbiter config problem.
    #[error(transparent)]
    Arbiter(#[from] crate::arbiter::ArbiterError),
    /// A control plane config problem.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// Unreadable file.
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
}

/// What a file that passed configures, and what its operator should know.
#[derive(Debug)]
pub struct Report {
    /// One line: what kind of file, how much it configures.
    pub summary: String,
    /// Things that work but are risky (e.g. an unauthenticated control plane API).
    pub warnings: Vec<String>,
}

impl From<String> for Report {
    fn from(summary: String) -> Self {
        Report {
            summary,
            warnings: Vec::new(),
        }
    }
}

/// Checks one file; returns what it configures and any warnings.
pub fn file(path: &Path) -> Result<Report, CheckError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CheckError::Read(path.display().to_string(), e))?;
    let top = |key: &str| text.lines().any(|l| l.starts_with(key));
    // An arbiter file lists engines and says how to judge them or the GPU.
    if top("engines:") && (top("rules:") || top("gpu:") || top("mode:") || top("gpus:")) {
        let cfg = crate::arbiter::ArbiterConfig::load(path)?;
        let plan = crate::arbiter::plan::plan(&cfg, None)?;
        return Ok(format!(
            "arbiter config, {} engine(s); memory plan fits",
            plan.engines.len()
        )
        .into());
    }
    // A simulator file is the one with a top-level `engines:` list.
    if top("engines:") {
        let f = crate::sim::cli::load_file(path)?;
        return Ok(format!("simulator config, {} engine(s)", f.engines.len()).into());
    }
    // A control plane file is the one with top-level `tenants:`.
    if text.lines().any(|l| l.starts_with("tenants:")) {
        let p = crate::control::ControlPolicy::load(path)?;
        let mut warnings = Vec::new();
        if p.config.api_token.is_none() {
            warnings.push(
                "api_token is not set: anyone who can reach the control API can read every tenant, \
                 its limits and look up keys; set `api_token: { file: control.token }` and give edges \
                 the same token (`control.token`)"
                    .to_owned(),
            );
        }
        return Ok(Report {
            summary: format!(
                "control plane config, {} tenant(s), {} model route(s)",
                p.config.tenants.len(),
                p.config.routes.len()
            ),
            warnings,
        });
    }
    let cfg = crate::config::parse(path, &text)?;
    Ok(Report {
        summary: format!(
            "edge config, {} listener(s), {} pool(s), {} route(s)",
            cfg.listeners.value.len(),
            cfg.pools.value.len(),
            cfg.routes.value.len()
        ),
        warnings: crate::config::validate::warnings(&cfg),
    })
}
