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

/// Checks one file; returns a one-line summary of what it configures.
pub fn file(path: &Path) -> Result<String, CheckError> {
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
        ));
    }
    // A simulator file is the one with a top-level `engines:` list.
    if top("engines:") {
        let f = crate::sim::cli::load_file(path)?;
        return Ok(format!("simulator config, {} engine(s)", f.engines.len()));
    }
    // A control plane file is the one with top-level `tenants:`.
    if text.lines().any(|l| l.starts_with("tenants:")) {
        let p = crate::control::ControlPolicy::load(path)?;
        return Ok(format!(
            "control plane config, {} tenant(s), {} model route(s)",
            p.config.tenants.len(),
            p.config.routes.len()
        ));
    }
    let cfg = crate::config::parse(path, &text)?;
    Ok(format!(
        "edge config, {} listener(s), {} pool(s), {} route(s)",
        cfg.listeners.value.len(),
        cfg.pools.len(),
        cfg.routes.value.len()
    ))
}
