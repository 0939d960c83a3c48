//! Active health probes of every pool, queue-depth scraping and model discovery, each at the
//! pool's interval. What a probe asks each engine kind is `okome_engine::probe`'s.

use super::{Pool, Upstreams};
use crate::config::PoolKind;
use okome_engine::probe::{self, Engine};
use okome_engine::{prom, Client};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;

/// Models are rediscovered every this many probe rounds.
const DISCOVERY_EVERY: u64 = 5;

/// Runs one round of probes and discovery for every pool; used at start-up so the first
/// request already sees real health.
pub async fn bootstrap(up: &Upstreams) {
    let plain = Client::new();
    let rounds = up
        .pools
        .iter()
        .map(|p| async { round(&client_for(p, &plain), p, true).await });
    futures::future::join_all(rounds).await;
}

/// Probes every pool of the current config forever, each at its own interval, starting over
/// with the new pools when a reload publishes them (a supervised task: see
/// [`okome_core::supervisor`]).
pub async fn run(mut current: watch::Receiver<Arc<Upstreams>>) {
    loop {
        let up = current.borrow_and_update().clone();
        tokio::select! {
            _ = run_pools(up) => {}
            changed = current.changed() => if changed.is_err() { return },
        }
    }
}

/// Probes the pools of one config forever.
async fn run_pools(up: Arc<Upstreams>) {
    let loops = up.pools.iter().cloned().map(|pool| async move {
        let c = client_for(&pool, &Client::new());
        let mut tick = tokio::time::interval(pool.health.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the bootstrap round (at start or reload) just ran
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            round(&c, &pool, n % DISCOVERY_EVERY == 0).await;
        }
    });
    futures::future::join_all(loops).await;
}

/// The client that probes `pool`: `plain`, or one with the pool's TLS settings.
fn client_for(pool: &Pool, plain: &Client) -> Client {
    match &pool.tls {
        None => plain.clone(),
        Some(tls) => {
            // As on requests (`edge::peer`): the pool's server name, else the name a backend
            // was resolved from, else its IP.
            let names = pool
                .backends
                .iter()
                .filter(|_| tls.server_name.is_none())
                .filter_map(|b| {
                    let name = rustls::pki_types::ServerName::try_from(b.name.clone()?).ok()?;
                    Some((b.addr.to_string(), name))
                })
                .collect();
            Client::with_tls(
                tls.probe_config.clone(),
                names,
                tls.server_name
                    .as_deref()
                    .and_then(|n| rustls::pki_types::ServerName::try_from(n.to_owned()).ok()),
            )
        }
    }
}

/// How the engine client sees backend `i` of a pool.
fn engine(pool: &Pool, i: usize) -> Engine<'_> {
    Engine {
        kind: pool.kind,
        base: &pool.probe_bases[i],
        auth: pool.auth.as_ref(),
        health_path: pool.health.path.as_deref(),
        // The edge asks TF Serving about the pool's first configured model (else a reserved
        // name): any answer in TF Serving's shape means it is up.
        models: pool.static_models.get(..1).unwrap_or_default(),
        timeout: pool.health.timeout.0,
    }
}

async fn round(c: &Client, pool: &Pool, discover: bool) {
    let probes = (0..pool.backends.len()).map(|i| probe(c, pool, i));
    futures::future::join_all(probes).await;
    if discover && pool.kind == PoolKind::Tfserving {
        discover_tf(c, pool).await;
    }
    // TF Serving has no listing; stream nodes are routed to by pool name.
    if discover && !matches!(pool.kind, PoolKind::Tfserving | PoolKind::Okome) {
        let mut models = BTreeSet::new();
        let mut any = false;
        for i in (0..pool.backends.len()).filter(|&i| pool.backends[i].healthy()) {
            if let Some(ms) = probe::models(c, &engine(pool, i)).await {
                any = true;
                models.extend(ms);
            }
        }
        if any {
            pool.set_learned(models);
        }
    }
}

/// TF Serving cannot list its models: the candidates are the configured ones and those
/// learned from traffic ([`Pool::learn_tf_model`]); each is asked for on the healthy backends
/// and the learned set becomes those with an `AVAILABLE` version on one of them. A backend
/// that does not answer keeps what was known (a blip must not forget models).
async fn discover_tf(c: &Client, pool: &Pool) {
    let mut candidates: BTreeSet<String> = pool.learned().as_ref().clone();
    candidates.extend(pool.static_models.iter().cloned());
    let healthy = pool.backends.iter().any(|b| b.healthy());
    if candidates.is_empty() || !healthy {
        return;
    }
    let mut available = BTreeSet::new();
    for i in (0..pool.backends.len()).filter(|&i| pool.backends[i].healthy()) {
        let e = engine(pool, i);
        for m in &candidates {
            if available.contains(m) {
                continue;
            }
            match probe::tf_model_available(c, &e, m).await {
                Some(true) => {
                    available.insert(m.clone());
                }
                Some(false) => {}
                None => return,
            }
        }
    }
    pool.set_learned(available);
}

async fn probe(c: &Client, pool: &Pool, i: usize) {
    let b = &pool.backends[i];
    let e = engine(pool, i);
    let mut result = probe::health(c, &e).await.map_err(|e| e.to_string());
    if result.is_ok() {
        result = super::grpc_health::check(pool, i).await;
    }
    match result {
        Ok(()) => {
            b.probe_result(
                true,
                pool.health.healthy_after,
                pool.health.unhealthy_after,
                "",
            );
        }
        // Bytes of a response came from it since the last round: alive, whatever the probe
        // says (an engine may answer probes only between generations).
        Err(why) if b.progressed_within(pool.health.interval.0 + pool.health.timeout.0) => {
            b.probe_busy(&why);
        }
        Err(why) => {
            b.probe_result(
                false,
                pool.health.healthy_after,
                pool.health.unhealthy_after,
                &why,
            );
            return;
        }
    }
    if let Some(m) = probe::metrics(c, &e).await {
        b.set_queue_depth(m.waiting.map_or(0, prom::count));
        b.set_prefix_cache(
            m.prefix_cache_queries.map(prom::count),
            m.prefix_cache_hits.map(prom::count),
        );
    }
}
