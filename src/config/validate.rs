//! Semantic checks on a parsed config: each problem names the line and key it is about.

use super::{EdgeConfig, PoolKind};
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::net::SocketAddr;

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file.
    pub line: u64,
    /// Dotted path of the key, e.g. `routes[1].fallback[0]`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

fn push(out: &mut Vec<Problem>, line: u64, key: String, message: String) {
    out.push(Problem { line, key, message });
}

fn at<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Checks a route's `allow`/`deny` rules, and that model management is opened only behind `auth`
/// when the edge has a control plane.
fn check_surface(r: &super::Route, key: &str, has_control: bool, out: &mut Vec<Problem>) {
    use crate::edge::surface::{AllowEntry, EndpointRule};
    let mut opens_management = None;
    for (j, rule) in r.allow.iter().flatten().enumerate() {
        match AllowEntry::parse(&rule.value) {
            Ok(AllowEntry::Rule(e)) if e.opens_model_management() => {
                opens_management.get_or_insert((at(rule), j));
            }
            Ok(_) => {}
            Err(e) => out.push(Problem {
                line: at(rule),
                key: format!("{key}.allow[{j}]"),
                message: e.to_string(),
            }),
        }
    }
    for (j, rule) in r.deny.iter().enumerate() {
        if let Err(e) = EndpointRule::parse(&rule.value) {
            out.push(Problem {
                line: at(rule),
                key: format!("{key}.deny[{j}]"),
                message: e.to_string(),
            });
        }
    }
    let has_auth = r
        .filters
        .iter()
        .any(|f| matches!(f.value, okome_filters::FilterSpec::Auth));
    if let Some((line, j)) = opens_management {
        if has_control && !has_auth {
            out.push(Problem {
                line,
                key: format!("{key}.allow[{j}]"),
                message: "this opens the engines' model management (pull, delete, …): \
                          the route needs `{type: auth}` when the edge has a control plane"
                    .into(),
            });
        }
    }
}

/// Reads the secrets the config names (control plane token, pools' API keys); `base` is the
/// config file's folder, for relative paths.
pub fn load_secrets(
    cfg: &EdgeConfig,
    base: Option<&std::path::Path>,
) -> (super::LoadedSecrets, Vec<Problem>) {
    let mut secrets = super::LoadedSecrets::default();
    let mut out = Vec::new();
    if let Some(c) = &cfg.control {
        if let Some(src) = &c.value.token {
            match src.load(base) {
                Ok(s) => secrets.control_token = Some(s),
                Err(e) => push(&mut out, at(c), "control.token".into(), e.to_string()),
            }
        }
    }
    for (name, pool) in &cfg.pools.value {
        if let Some(src) = &pool.value.api_key {
            match src.load(base) {
                Ok(s) => {
                    secrets.pool_keys.insert(name.clone(), s);
                }
                Err(e) => push(
                    &mut out,
                    at(pool),
                    format!("pools.{name}.api_key"),
                    e.to_string(),
                ),
            }
        }
    }
    (secrets, out)
}

/// Things that work but an operator should know about: printed by `okome check` and logged at
/// start.
pub fn warnings(cfg: &EdgeConfig) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(c) = &cfg.control {
        if c.value.token.is_none() {
            w.push(format!(
                "line {}: control.token is not set: the control plane's API (tenants, limits, key lookups) \
                 must then be open to anyone who can reach it; set `api_token` there and `token` here",
                at(c)
            ));
        }
    }
    w
}

/// Returns every problem found (empty when the config is usable).
pub fn validate(cfg: &EdgeConfig) -> Vec<Problem> {
    let mut out = Vec::new();

    if let Some(k) = cfg
        .kind
        .as_ref()
        .filter(|k| k.value != super::FileKind::Edge)
    {
        push(
            &mut out,
            at(k),
            "kind".into(),
            format!("this is an edge config, not `{}`", k.value.as_str()),
        );
    }
    if cfg.listeners.value.is_empty() {
        push(
            &mut out,
            at(&cfg.listeners),
            "listeners".into(),
            "at least one listener is needed, e.g. `- address: 0.0.0.0:8080`".into(),
        );
    }
    if cfg.retry.value.max_attempts == 0 {
        push(
            &mut out,
            at(&cfg.retry),
            "retry.max_attempts".into(),
            "must be at least 1 (1 means no retry)".into(),
        );
    }
    let ratio = cfg.retry.value.budget_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        push(
            &mut out,
            at(&cfg.retry),
            "retry.budget_ratio".into(),
            format!("{ratio} is not a fraction of requests between 0 and 1"),
        );
    }
    if cfg.limits.value.max_body.0 == 0 {
        push(
            &mut out,
            at(&cfg.limits),
            "limits.max_body".into(),
            "must be larger than 0".into(),
        );
    }
    if cfg.server.value.threads == Some(0) {
        push(
            &mut out,
            at(&cfg.server),
            "server.threads".into(),
            "must be at least 1".into(),
        );
    }
    let t = &cfg.timeouts.value;
    for (key, d) in [
        ("connect", t.connect),
        ("first_token", t.first_token),
        ("idle", t.idle),
    ] {
        if d.0 < std::time::Duration::from_millis(1) {
            push(
                &mut out,
                at(&cfg.timeouts),
                format!("timeouts.{key}"),
                format!("{d} would end every request at once: give it a length, e.g. 30s"),
            );
        }
    }
    if cfg.pools.value.is_empty() {
        push(
            &mut out,
            at(&cfg.pools),
            "pools".into(),
            "at least one pool is needed".into(),
        );
    }

    for (name, pool) in &cfg.pools.value {
        let key = format!("pools.{name}");
        if pool.value.backends.is_empty() {
            push(
                &mut out,
                at(pool),
                format!("{key}.backends"),
                "a pool needs at least one backend `IP:PORT`".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, b) in pool.value.backends.iter().enumerate() {
            match b.value.parse::<SocketAddr>() {
                Ok(addr) => {
                    if !seen.insert(addr) {
                        push(
                            &mut out,
                            at(b),
                            format!("{key}.backends[{i}]"),
                            format!("backend {addr} is listed twice"),
                        );
                    }
                }
                Err(_) => push(
                    &mut out,
                    at(b),
                    format!("{key}.backends[{i}]"),
                    format!(
                        "bad address {:?}: expected IP:PORT like 127.0.0.1:8000",
                        b.value
                    ),
                ),
            }
        }
        let hc = &pool.value.health_check;
        if hc.timeout > hc.interval {
            push(
                &mut out,
                at(pool),
                format!("{key}.health_check.timeout"),
                format!(
                    "timeout {} is longer than the interval {}",
                    hc.timeout, hc.interval
                ),
            );
        }
        if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
            push(
                &mut out,
                at(pool),
                format!("{key}.health_check"),
                "unhealthy_after and healthy_after must be at least 1".into(),
            );
        }
        if let Some(p) = &hc.path {
            if !p.starts_with('/') {
                push(
                    &mut out,
                    at(pool),
                    format!("{key}.health_check.path"),
                    format!("path {p:?} must start with '/'"),
                );
            }
        }
        if pool.value.kind == PoolKind::Tfserving
            && pool.value.models.is_empty()
            && hc.path.is_none()
        {
            push(
                &mut out,
                at(pool),
                format!("{key}.models"),
                "a tfserving pool must list its models (TF Serving has no model listing API)"
                    .into(),
            );
        }
    }

    let mut route_names = HashSet::new();
    for (i, route) in cfg.routes.value.iter().enumerate() {
        let r = &route.value;
        let key = format!("routes[{i}]");
        if !route_names.insert(r.name.value.as_str()) {
            push(
                &mut out,
                at(&r.name),
                format!("{key}.name"),
                format!("route name {:?} is used twice", r.name.value),
            );
        }
        let check_pool = |p: &Spanned<String>, k: String, out: &mut Vec<Problem>| {
            if !cfg.pools.value.contains_key(&p.value) {
                let known: Vec<&str> = cfg.pools.value.keys().map(String::as_str).collect();
                out.push(Problem {
                    line: at(p),
                    key: k,
                    message: format!("unknown pool {:?} (pools: {})", p.value, known.join(", ")),
                });
            }
        };
        if let Some(p) = &r.pool {
            check_pool(p, format!("{key}.pool"), &mut out);
            if !r.pools.is_empty() {
                out.push(Problem {
                    line: at(p),
                    key: format!("{key}.pools"),
                    message: "set either `pool` or `pools`, not both".into(),
                });
            }
        }
        for (j, p) in r.pools.iter().enumerate() {
            check_pool(p, format!("{key}.pools[{j}]"), &mut out);
        }
        for (j, p) in r.fallback.iter().enumerate() {
            check_pool(p, format!("{key}.fallback[{j}]"), &mut out);
            if r.pool.as_ref().is_some_and(|t| t.value == p.value) {
                out.push(Problem {
                    line: at(p),
                    key: format!("{key}.fallback[{j}]"),
                    message: format!("pool {:?} is both the target and a fallback", p.value),
                });
            }
        }
        if let Some(prefix) = &r.matches.path_prefix {
            if !prefix.starts_with('/') {
                out.push(Problem {
                    line: at(route),
                    key: format!("{key}.match.path_prefix"),
                    message: format!("{prefix:?} must start with '/'"),
                });
            }
        }
        for name in r.matches.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push(Problem {
                    line: at(route),
                    key: format!("{key}.match.headers.{name}"),
                    message: "not a valid header name".into(),
                });
            }
        }
        check_surface(r, &key, cfg.control.is_some(), &mut out);
        let mut auth_seen = false;
        for (j, f) in r.filters.iter().enumerate() {
            match &f.value {
                okome_filters::FilterSpec::Auth => auth_seen = true,
                okome_filters::FilterSpec::Policy | okome_filters::FilterSpec::Ratelimit { .. }
                    if !auth_seen =>
                {
                    out.push(Problem {
                        line: at(f),
                        key: format!("{key}.filters[{j}]"),
                        message: format!(
                            "`{}` needs the tenant that `auth` finds: put `{{type: auth}}` before it",
                            f.value.needs_control().unwrap_or("this filter")
                        ),
                    });
                }
                _ => {}
            }
            if let Some(name) = f.value.needs_control() {
                if cfg.control.is_none() {
                    out.push(Problem {
                        line: at(f),
                        key: format!("{key}.filters[{j}]"),
                        message: okome_filters::FilterError::NeedsControl(name).to_string(),
                    });
                }
                continue;
            }
            if let Err(e) = okome_filters::build(&f.value, &okome_filters::FilterEnv::default()) {
                out.push(Problem {
                    line: at(f),
                    key: format!("{key}.filters[{j}]"),
                    message: e.to_string(),
                });
            }
        }
    }
    if let Some(c) = &cfg.control {
        if c.value.negative_ttl > c.value.key_ttl {
            out.push(Problem {
                line: at(c),
                key: "control.negative_ttl".into(),
                message: format!(
                    "{} is longer than key_ttl {}",
                    c.value.negative_ttl, c.value.key_ttl
                ),
            });
        }
    }
    if let Some(a) = &cfg.arbiter {
        if a.value.addresses.is_empty() {
            push(
                &mut out,
                at(a),
                "arbiter.addresses".into(),
                "name at least one arbiter `IP:PORT`".into(),
            );
        }
        if a.value.max_age.0 < std::time::Duration::from_millis(200) {
            push(
                &mut out,
                at(a),
                "arbiter.max_age".into(),
                format!(
                    "{} is too short to confirm state by long-poll (min 200ms)",
                    a.value.max_age
                ),
            );
        }
    }
    if cfg.routes.value.is_empty() {
        out.push(Problem {
            line: at(&cfg.routes),
            key: "routes".into(),
            message: "at least one route is needed".into(),
        });
    }
    out
}
