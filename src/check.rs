//! `okome check`: validate a config file without starting anything.

use std::path::Path;

/// Why a file did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// An edge config problem (with file, line and key).
    #[error(transparent)]
    Edge(#[from] crate::config::ConfigError),
    /// A simulator config: checked by the `okome` binary (the simulator is its own crate).
    #[error("{0}: a simulator config (kind: sim); check it with `okome check`")]
    Sim(String),
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

/// Which component `text` configures: its `kind:` key, else its top-level sections (`tenants`:
/// control plane; `engines` with `rules`, `gpu`, `gpus` or `mode`: arbiter; `engines`:
/// simulator; anything else: edge). The YAML is parsed for this, not scanned line by line.
pub fn kind_of(text: &str) -> crate::config::FileKind {
    use crate::config::FileKind;
    let top: std::collections::BTreeMap<String, serde_json::Value> =
        serde_saphyr::from_str(text).unwrap_or_default();
    if let Some(k) = top
        .get("kind")
        .and_then(|k| serde_json::from_value::<FileKind>(k.clone()).ok())
    {
        return k;
    }
    let has = |k: &str| top.contains_key(k);
    if has("tenants") {
        FileKind::Control
    } else if has("engines") && ["rules", "gpu", "gpus", "mode"].iter().any(|k| has(k)) {
        FileKind::Arbiter
    } else if has("engines") {
        FileKind::Sim
    } else {
        FileKind::Edge
    }
}

/// Checks one file; returns what it configures and any warnings.
pub fn file(path: &Path) -> Result<Report, CheckError> {
    use crate::config::FileKind;
    let text = okome_core::config::read_text(path, okome_core::config::MAX_CONFIG_FILE)
        .map_err(|e| CheckError::Read(path.display().to_string(), e))?;
    let kind = kind_of(&text);
    if kind == FileKind::Arbiter {
        let cfg = crate::arbiter::ArbiterConfig::load(path)?;
        let plan = crate::arbiter::plan::plan(&cfg, None)?;
        return Ok(format!(
            "arbiter config, {} engine(s); memory plan fits",
            plan.engines.len()
        )
        .into());
    }
    if kind == FileKind::Sim {
        return Err(CheckError::Sim(path.display().to_string()));
    }
    if kind == FileKind::Control {
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
    let tls: Vec<String> = cfg
        .listeners
        .iter()
        .filter_map(|l| {
            let set = &l.tls.as_ref()?.certs;
            let names: Vec<String> = set
                .loaded
                .iter()
                .map(|(_, names, _)| names.join(" "))
                .collect();
            Some(format!("{} serves {}", l.address, names.join(", ")))
        })
        .collect();
    Ok(Report {
        summary: format!(
            "edge config, {} listener(s), {} pool(s), {} route(s){}",
            cfg.listeners.len(),
            cfg.pools.len(),
            cfg.routes.len(),
            if tls.is_empty() {
                String::new()
            } else {
                format!("; TLS: {}", tls.join("; "))
            }
        ),
        warnings: cfg.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::kind_of;
    use crate::config::FileKind;

    #[test]
    fn files_say_what_they_are_or_their_sections_do() {
        assert_eq!(
            kind_of("kind: sim\nengines: []\nrules: {}\n"),
            FileKind::Sim
        );
        assert_eq!(kind_of("kind: edge\n"), FileKind::Edge);
        assert_eq!(kind_of("tenants: []\n"), FileKind::Control);
        assert_eq!(kind_of("engines: []\nmode: shared\n"), FileKind::Arbiter);
        assert_eq!(kind_of("engines: []\n"), FileKind::Sim);
        // A comment or an indented key that looks like a section is not one.
        assert_eq!(
            kind_of("# tenants: are elsewhere\nlisteners: []\nx:\n  tenants: 1\n"),
            FileKind::Edge
        );
        assert_eq!(kind_of("not: [valid"), FileKind::Edge);
    }
}
