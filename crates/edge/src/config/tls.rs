//! Compiling the TLS parts of the config: listeners' certificates (read, parsed and checked
//! here, so a bad file refuses the config with its line and key) and pools' TLS to backends.

use super::compile::{CompiledListener, Problem};
use super::{BackendTls, Listener};
use crate::tls::{self, CertSet, ReadFile, TlsError};
use pingora_core::utils::tls::{CertKey, WrappedX509};
use serde_saphyr::Spanned;
use std::sync::Arc;

fn problem(line: u64, key: String, message: String) -> Problem {
    Problem { line, key, message }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A listener with its certificates loaded; `line` is where the `listeners` list starts.
pub fn compile_listener(
    i: usize,
    l: &Listener,
    line: u64,
    read_file: ReadFile<'_>,
    out: &mut Vec<Problem>,
) -> Option<CompiledListener> {
    let key = format!("listeners[{i}]");
    if l.max_connections == Some(0) {
        out.push(problem(
            line,
            format!("{key}.max_connections"),
            "0 would refuse every connection; leave it out for no limit".into(),
        ));
    }
    let certs = match &l.tls {
        None => None,
        Some(t) if t.value.certificates.is_empty() => {
            out.push(problem(
                t.referenced.line(),
                format!("{key}.tls.certificates"),
                "a TLS listener needs at least one certificate (`- cert: …, key: …`)".into(),
            ));
            return None;
        }
        Some(t) => {
            let now = now();
            let mut loaded = Vec::new();
            for (j, c) in t.value.certificates.iter().enumerate() {
                match tls::load_cert(read_file, &c.value.cert, &c.value.key, now) {
                    Ok(cert) => loaded.push(cert),
                    Err(e) => {
                        let field = match e {
                            TlsError::NoKey(_) | TlsError::BadKey { .. } => "key",
                            TlsError::Read { ref path, .. } if *path == c.value.key => "key",
                            _ => "cert",
                        };
                        out.push(problem(
                            c.referenced.line(),
                            format!("{key}.tls.certificates[{j}].{field}"),
                            e.to_string(),
                        ));
                    }
                }
            }
            let client_ca = match &t.value.client_ca {
                None => None,
                Some(path) => {
                    match tls::load_chain(read_file, path).and_then(|roots| {
                        tls::ClientCa::verifier(roots).map_err(|message| TlsError::BadCertificate {
                            path: path.clone(),
                            message,
                        })
                    }) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            out.push(problem(
                                t.referenced.line(),
                                format!("{key}.tls.client_ca"),
                                e.to_string(),
                            ));
                            return None;
                        }
                    }
                }
            };
            if loaded.len() != t.value.certificates.len() {
                return None;
            }
            CertSet::new(loaded).map(|set| tls::ListenerTls {
                certs: Arc::new(set),
                client_ca,
            })
        }
    };
    if certs.is_none() && l.http2 == Some(true) && l.max_connections.is_some() {
        out.push(problem(
            line,
            format!("{key}.max_connections"),
            "a connection cap cannot be kept on an h2c listener yet (one connection carries many \
             requests): leave out `max_connections` or `http2`"
                .into(),
        ));
    }
    if certs.is_some() && l.max_connections.is_some() && l.http2 != Some(false) {
        out.push(problem(
            line,
            format!("{key}.max_connections"),
            "a connection cap cannot be kept over HTTP/2 yet (one connection carries many \
             requests): set `http2: false` on this listener or leave out `max_connections`"
                .into(),
        ));
    }
    Some(CompiledListener {
        address: l.address,
        max_connections: l.max_connections,
        http2: l.http2.unwrap_or(certs.is_some()),
        tls: certs,
    })
}

/// TLS to a pool's backends, compiled: what Pingora's connector and the health probes use.
#[derive(Debug)]
pub struct UpstreamTls {
    /// CA certificates the backends must chain to (`None`: the system's roots).
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The client certificate and key presented (mTLS).
    pub client_cert: Option<Arc<CertKey>>,
    /// SNI and the name checked (`None`: the backend's host or IP).
    pub server_name: Option<String>,
    /// Check the backend's certificate.
    pub verify: bool,
    /// The same settings as a rustls client config, for the health probes.
    pub probe_config: Arc<rustls::ClientConfig>,
}

/// Compiles `pools.<name>.tls`; `None` with problems pushed when it cannot be built.
pub fn compile_backend_tls(
    pool: &str,
    t: &Spanned<BackendTls>,
    read_file: ReadFile<'_>,
    out: &mut Vec<Problem>,
) -> Option<UpstreamTls> {
    let key = format!("pools.{pool}.tls");
    let line = t.referenced.line();
    let c = &t.value;
    let before = out.len();
    let mut roots = rustls::RootCertStore::empty();
    let ca = match &c.ca {
        None => {
            let found = rustls_native_roots(&mut roots);
            if found == 0 && c.verify {
                out.push(problem(
                    line,
                    format!("{key}.ca"),
                    "the system has no CA certificates to check backends with: set `ca`".into(),
                ));
            }
            None
        }
        Some(path) => match tls::load_chain(read_file, path) {
            Ok(chain) => {
                let mut wrapped = Vec::with_capacity(chain.len());
                for der in chain {
                    if let Err(e) = roots.add(der.clone()) {
                        out.push(problem(line, format!("{key}.ca"), format!("{e}")));
                    }
                    wrapped.push(WrappedX509::new(der.to_vec(), |raw: &Vec<u8>| {
                        pingora_core::utils::tls::parse_x509(raw)
                    }));
                }
                Some(Arc::from(wrapped))
            }
            Err(e) => {
                out.push(problem(line, format!("{key}.ca"), e.to_string()));
                None
            }
        },
    };
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| out.push(problem(line, key.clone(), e.to_string())))
        .ok()?
        .with_root_certificates(roots);
    let (client_cert, probe_config) = match (&c.cert, &c.key) {
        (None, None) => (None, builder.with_no_client_auth()),
        (Some(cert), Some(keyfile)) => {
            let loaded = tls::load_chain(read_file, cert)
                .map_err(|e| (format!("{key}.cert"), e.to_string()))
                .and_then(|chain| {
                    tls::load_key(read_file, keyfile)
                        .map(|k| (chain, k))
                        .map_err(|e| (format!("{key}.key"), e.to_string()))
                });
            let (chain, private) = match loaded {
                Ok(l) => l,
                Err((k, message)) => {
                    out.push(problem(line, k, message));
                    return None;
                }
            };
            let ck = CertKey::new(
                chain.iter().map(|d| d.to_vec()).collect(),
                private.secret_der().to_vec(),
            );
            match builder.with_client_auth_cert(chain, private) {
                Ok(cfg) => (Some(Arc::new(ck)), cfg),
                Err(e) => {
                    out.push(problem(line, format!("{key}.key"), e.to_string()));
                    return None;
                }
            }
        }
        _ => {
            out.push(problem(
                line,
                key.clone(),
                "a client certificate needs both `cert` and `key`".into(),
            ));
            return None;
        }
    };
    let mut probe_config = probe_config;
    if !c.verify {
        probe_config
            .dangerous()
            .set_certificate_verifier(Arc::new(tls::NoVerify(tls::provider())));
    }
    if let Some(name) = &c.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            out.push(problem(
                line,
                format!("{key}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            ));
        }
    }
    if out.len() != before {
        return None;
    }
    Some(UpstreamTls {
        ca,
        client_cert,
        server_name: c.server_name.clone(),
        verify: c.verify,
        probe_config: Arc::new(probe_config),
    })
}

/// Adds the system's CA certificates (Debian's `/etc/ssl/certs`); how many were added.
fn rustls_native_roots(roots: &mut rustls::RootCertStore) -> usize {
    match rustls_native_certs::load_native_certs() {
        Ok(certs) => roots.add_parsable_certificates(certs).0,
        Err(e) => {
            log::warn!("cannot read the system's CA certificates: {e}");
            0
        }
    }
}
