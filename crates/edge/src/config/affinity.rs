//! `pools.<name>.pick` and `pools.<name>.prefix_affinity`: how a pool picks its backend, and the
//! tuning of prefix-affinity picks (see `upstream::affinity`).

use super::compile::Problem;
use super::PoolKind;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// How a pool picks a backend (`pools.<name>.pick`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// The less loaded of two random eligible backends (in-flight + the engine's queue).
    #[default]
    LeastLoaded,
    /// The backend that served the longest prefix of the prompt, while its load is bounded;
    /// else least loaded.
    PrefixAffinity,
}

/// `pools.<name>.prefix_affinity`, as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PrefixAffinity {
    /// Rendered prompt bytes matched, from the start (default 4096).
    #[serde(default)]
    pub bytes: Option<Spanned<usize>>,
    /// Bytes per block: prefixes match in whole blocks (default 256).
    #[serde(default)]
    pub block: Option<Spanned<usize>>,
    /// A backend takes its prefixes while its load is at most this times the pool's mean
    /// (rounded up, counting the request; plus `load_slack`; default 1.25).
    #[serde(default)]
    pub load_factor: Option<Spanned<f64>>,
    /// In-flight requests a backend may have above the bound before it counts as overloaded
    /// (default 2): at small loads the bound alone would move conversations for one request.
    #[serde(default)]
    pub load_slack: Option<Spanned<usize>>,
    /// The least share (0..1) of the prompt's blocks a backend must have served to be preferred
    /// (default 0.5); below it the pick is least loaded.
    #[serde(default)]
    pub min_match: Option<Spanned<f64>>,
    /// Blocks remembered per pool (default 100000).
    #[serde(default)]
    pub entries: Option<Spanned<usize>>,
}

/// Prefix-affinity settings of one pool, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinitySettings {
    /// Rendered prompt bytes matched, from the start.
    pub bytes: usize,
    /// Bytes per block.
    pub block: usize,
    /// Load bound, as a multiple of the pool's mean load.
    pub load_factor: f64,
    /// In-flight requests allowed above the bound.
    pub load_slack: usize,
    /// Least share of the prompt's blocks matched for a backend to be preferred.
    pub min_match: f64,
    /// Blocks remembered.
    pub entries: usize,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        AffinitySettings {
            bytes: 4096,
            block: 256,
            load_factor: 1.25,
            load_slack: 2,
            min_match: 0.5,
            entries: 100_000,
        }
    }
}

/// The most blocks one request hashes: bounds the work per pick.
pub const MAX_BLOCKS: usize = 1024;
/// The smallest block: a shorter one would match on little more than the chat template.
pub const MIN_BLOCK: usize = 16;

/// Checks a pool's `pick` and `prefix_affinity`; `Some` when the pool picks by prefix.
pub fn compile(
    key: &str,
    kind: PoolKind,
    pick: Option<&Spanned<Pick>>,
    tuning: Option<&Spanned<PrefixAffinity>>,
    sticky: bool,
    out: &mut Vec<Problem>,
) -> Option<AffinitySettings> {
    let mut problem = |line: u64, k: String, message: String| {
        out.push(Problem {
            line,
            key: k,
            message,
        })
    };
    let on = pick.is_some_and(|p| p.value == Pick::PrefixAffinity);
    if let (Some(t), false) = (tuning, on) {
        problem(
            t.referenced.line(),
            format!("{key}.prefix_affinity"),
            "set `pick: prefix_affinity` to use it (or remove it)".into(),
        );
    }
    let pick = pick.filter(|_| on)?;
    let line = pick.referenced.line();
    if sticky {
        problem(
            line,
            format!("{key}.pick"),
            "a sticky pool picks by its key: use `sticky` or `pick: prefix_affinity`, not both"
                .into(),
        );
    }
    if !kind.speaks_openai() {
        problem(
            line,
            format!("{key}.pick"),
            format!(
                "a {} pool has no prompt prefix cache to reuse; prefix_affinity is for vllm, \
                 openai and ollama pools",
                kind.as_str()
            ),
        );
    }
    let d = AffinitySettings::default();
    let Some(t) = tuning else {
        return Some(d);
    };
    let t = &t.value;
    let get = |v: &Option<Spanned<usize>>, default: usize| v.as_ref().map_or(default, |s| s.value);
    let s = AffinitySettings {
        bytes: get(&t.bytes, d.bytes),
        block: get(&t.block, d.block),
        load_factor: t.load_factor.as_ref().map_or(d.load_factor, |s| s.value),
        load_slack: get(&t.load_slack, d.load_slack),
        min_match: t.min_match.as_ref().map_or(d.min_match, |s| s.value),
        entries: get(&t.entries, d.entries),
    };
    let line_of = |v: Option<u64>| v.unwrap_or(line);
    if s.block < MIN_BLOCK {
        problem(
            line_of(t.block.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.block"),
            format!(
                "{} bytes is too small a block: at least {MIN_BLOCK}",
                s.block
            ),
        );
    } else if s.bytes < s.block || s.bytes / s.block > MAX_BLOCKS {
        problem(
            line_of(t.bytes.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.bytes"),
            format!(
                "{} bytes must hold 1 to {MAX_BLOCKS} blocks of {} bytes",
                s.bytes, s.block
            ),
        );
    }
    if !(s.load_factor.is_finite() && (1.0..=100.0).contains(&s.load_factor)) {
        problem(
            line_of(t.load_factor.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.load_factor"),
            format!(
                "{} must be between 1 (strictly balanced) and 100",
                s.load_factor
            ),
        );
    }
    if s.load_slack > 10_000 {
        problem(
            line_of(t.load_slack.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.load_slack"),
            format!(
                "{} requests is no bound at all: at most 10000",
                s.load_slack
            ),
        );
    }
    if !(s.min_match.is_finite() && (0.0..=1.0).contains(&s.min_match)) {
        problem(
            line_of(t.min_match.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.min_match"),
            format!("{} must be a share between 0 and 1", s.min_match),
        );
    }
    if !(64..=100_000_000).contains(&s.entries) {
        problem(
            line_of(t.entries.as_ref().map(|b| b.referenced.line())),
            format!("{key}.prefix_affinity.entries"),
            format!("{} must be between 64 and 100000000", s.entries),
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::compile::{compile, CompiledEdge};
    use crate::config::EdgeConfig;

    fn compile_pool(pool: &str) -> Result<CompiledEdge, Vec<Problem>> {
        let text = format!(
            "listeners: [{{address: 127.0.0.1:8080}}]\npools:\n  p:\n{pool}routes: [{{name: r, pool: p}}]\n"
        );
        let cfg: EdgeConfig = serde_saphyr::from_str(&text).unwrap();
        compile(
            &cfg,
            &|_| Err(crate::config::secret::SecretError::Empty("test".into())),
            &|p| std::fs::read(p),
        )
    }

    fn problems(pool: &str) -> Vec<(u64, String)> {
        compile_pool(pool)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.line, p.key))
            .collect()
    }

    #[test]
    fn defaults_tuning_and_off() {
        let vllm = "    kind: vllm\n    backends: [127.0.0.1:9001]\n";
        let c = compile_pool(&format!("{vllm}    pick: prefix_affinity\n")).unwrap();
        assert_eq!(c.pools[0].affinity, Some(AffinitySettings::default()));
        let c = compile_pool(&format!(
            "{vllm}    pick: prefix_affinity\n    prefix_affinity: {{bytes: 8192, block: 64, load_factor: 1.5, entries: 5000}}\n"
        ))
        .unwrap();
        assert_eq!(
            c.pools[0].affinity,
            Some(AffinitySettings {
                bytes: 8192,
                block: 64,
                load_factor: 1.5,
                load_slack: 2,
                min_match: 0.5,
                entries: 5000
            })
        );
        for off in ["", "    pick: least_loaded\n"] {
            let c = compile_pool(&format!("{vllm}{off}")).unwrap();
            assert_eq!(c.pools[0].affinity, None);
        }
    }

    #[test]
    fn problems_are_reported_at_their_line_and_key() {
        let vllm = "    kind: vllm\n    backends: [127.0.0.1:9001]\n";
        assert_eq!(
            problems(&format!(
                "{vllm}    pick: prefix_affinity\n    prefix_affinity:\n      block: 8\n      load_factor: 0.5\n      entries: 1\n"
            )),
            [
                (8, "pools.p.prefix_affinity.block".to_string()),
                (9, "pools.p.prefix_affinity.load_factor".to_string()),
                (10, "pools.p.prefix_affinity.entries".to_string()),
            ]
        );
        assert_eq!(
            problems(&format!(
                "{vllm}    pick: prefix_affinity\n    prefix_affinity: {{bytes: 100, block: 256}}\n"
            )),
            [(7, "pools.p.prefix_affinity.bytes".to_string())]
        );
        assert_eq!(
            problems(&format!("{vllm}    prefix_affinity: {{bytes: 1024}}\n")),
            [(6, "pools.p.prefix_affinity".to_string())]
        );
        assert_eq!(
            problems(&format!(
                "{vllm}    pick: prefix_affinity\n    sticky: {{key: [api_key]}}\n"
            )),
            [(6, "pools.p.pick".to_string())]
        );
        assert_eq!(
            problems(
                "    kind: tfserving\n    models: [m]\n    backends: [127.0.0.1:9001]\n    pick: prefix_affinity\n"
            ),
            [(7, "pools.p.pick".to_string())]
        );
        let bad: Result<EdgeConfig, _> = serde_saphyr::from_str(
            "listeners: [{address: 127.0.0.1:8080}]\npools:\n  p:\n    kind: vllm\n    backends: [127.0.0.1:9001]\n    pick: round_robin\nroutes: [{name: r, pool: p}]\n",
        );
        assert!(bad.is_err(), "an unknown pick is a parse error");
    }
}
