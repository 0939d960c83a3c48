//! Pools with `grpc_port`: a backend is up only when its gRPC side answers too, probed with
//! TF Serving's `GetModelStatus` ([`okome_engine::grpc_probe`]), since gRPC calls go there.

use super::Pool;
use okome_engine::grpc_probe::{self, GrpcTarget};

/// The name asked about when the pool lists no model: TF Serving's NOT_FOUND for it still
/// proves the gRPC server is up.
const PROBE_MODEL: &str = "okome-probe";

/// Probes backend `i`'s gRPC port; `Ok` when the pool has none.
pub async fn check(pool: &Pool, i: usize) -> Result<(), String> {
    let Some(port) = pool.grpc_port else {
        return Ok(());
    };
    let b = &pool.backends[i];
    // The name checked is the one requests use (`edge::peer`): the pool's server name, else the
    // name the backend was resolved from, else its IP.
    let tls = match &pool.tls {
        None => None,
        Some(tls) => {
            let name = match (&tls.server_name, &b.name) {
                (Some(n), _) | (None, Some(n)) => n.clone(),
                (None, None) => b.addr.ip().to_string(),
            };
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| format!("gRPC TLS name: {e}"))?;
            Some((&tls.probe_config, name))
        }
    };
    let target = GrpcTarget {
        addr: std::net::SocketAddr::new(b.addr.ip(), port),
        tls,
        auth: pool.auth.as_ref(),
        model: pool
            .static_models
            .first()
            .map_or(PROBE_MODEL, String::as_str),
        timeout: pool.health.timeout.0,
    };
    grpc_probe::model_status(&target)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
