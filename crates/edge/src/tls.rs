//! TLS: certificates for client listeners, chosen by SNI and swapped on reload without touching
//! open connections, and the client side of TLS to backends (CA, client certificate).
//!
//! Certificates are read and checked when the config is compiled (a key that does not match its
//! certificate, an empty file or an expired chain refuses the config with its line and key);
//! what the listener serves is a [`ServerCerts`], one per TLS listener for the life of the
//! process, whose certificate set a reload replaces.

use arc_swap::ArcSwap;
use pingora_rustls::ResolvesServerCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why certificate material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No PEM certificate in the file.
    #[error("{0}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate(PathBuf),
    /// A certificate does not parse.
    #[error("{path}: certificate does not parse: {message}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// No PEM private key in the file.
    #[error("{0}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey(PathBuf),
    /// The key is of a kind TLS cannot sign with here.
    #[error("{path}: unusable private key: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The key is not the certificate's.
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate has expired.
    #[error("{path}: the certificate expired at {not_after}")]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its `notAfter`, as the certificate says it.
        not_after: String,
    },
}

/// One certificate chain with its key, and the names it is served for.
#[derive(Debug)]
pub struct LoadedCert {
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (`*.example.com` for wildcards).
    pub names: Vec<String>,
    /// When the leaf expires (Unix seconds).
    pub not_after: i64,
    /// The certificate file, for messages and `/status`.
    pub path: PathBuf,
}

/// Reads a file through the config's reader.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

fn read(read_file: ReadFile<'_>, path: &Path) -> Result<Vec<u8>, TlsError> {
    read_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every PEM certificate of a file.
pub fn load_chain(
    read_file: ReadFile<'_>,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(read_file, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(chain)
}

/// Reads the first PEM private key of a file.
pub fn load_key(read_file: ReadFile<'_>, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(read_file, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_path_buf()),
        other => TlsError::BadKey {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// The crypto provider okome's TLS uses (the one Pingora's rustls backend is built with).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key: they must parse, match, and the leaf must
/// not have expired at `now` (Unix seconds).
pub fn load_cert(
    read_file: ReadFile<'_>,
    cert: &Path,
    key: &Path,
    now: i64,
) -> Result<LoadedCert, TlsError> {
    let chain = load_chain(read_file, cert)?;
    let private = load_key(read_file, key)?;
    let (names, not_after, not_after_text) =
        leaf_facts(&chain[0]).map_err(|message| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            message,
        })?;
    if not_after < now {
        return Err(TlsError::Expired {
            path: cert.to_path_buf(),
            not_after: not_after_text,
        });
    }
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        other => TlsError::BadKey {
            path: key.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        path: cert.to_path_buf(),
    })
}

/// The leaf's DNS names (subjectAltName, else the subject's CN) and expiry.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, String), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = x509.validity();
    Ok((
        names,
        validity.not_after.timestamp(),
        validity.not_after.to_string(),
    ))
}

/// The certificates of one listener, by the name they serve.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// What is loaded, for `/status`: file, names, expiry.
    pub loaded: Vec<(PathBuf, Vec<String>, i64)>,
}

impl CertSet {
    /// A set from loaded certificates, the first being the default; `None` when empty. Where two
    /// certificates name the same host, the first listed serves it.
    pub fn new(certs: Vec<LoadedCert>) -> Option<Self> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in &certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            default,
            loaded: certs
                .into_iter()
                .map(|c| (c.path, c.names, c.not_after))
                .collect(),
        })
    }

    /// The certificate for a client that asked for `sni` (or for none).
    pub fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// What a TLS listener serves: its current certificate set, replaced whole by a reload while
/// handshakes go on.
#[derive(Debug)]
pub struct ServerCerts(ArcSwap<CertSet>);

impl ServerCerts {
    /// Serves `set` until [`ServerCerts::replace`].
    pub fn new(set: Arc<CertSet>) -> Arc<Self> {
        Arc::new(ServerCerts(ArcSwap::new(set)))
    }

    /// New handshakes get `set`; connections already up keep theirs.
    pub fn replace(&self, set: Arc<CertSet>) {
        self.0.store(set);
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().choose(hello.server_name()))
    }
}

/// Accepts any server certificate (a pool's `tls.verify: false`, for testing); signatures are
/// still checked, so the handshake itself is sound.
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CAs a TLS listener requires client certificates from (mTLS), replaced whole by a reload.
#[derive(Debug)]
pub struct ClientCa(ArcSwap<Arc<dyn rustls::server::danger::ClientCertVerifier>>);

impl ClientCa {
    /// A verifier requiring a client certificate that chains to one of `roots`.
    pub fn verifier(
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r).map_err(|e| e.to_string())?;
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| e.to_string())
    }

    /// Requires certificates `verifier` accepts until [`ClientCa::replace`].
    pub fn new(verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>) -> Arc<Self> {
        Arc::new(ClientCa(ArcSwap::from_pointee(verifier)))
    }

    /// New handshakes are checked by `verifier`.
    pub fn replace(&self, verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>) {
        self.0.store(Arc::new(verifier));
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The hints are optional; they cannot borrow from a verifier a reload may replace.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

/// A listener's TLS material from one config: its certificates and the client CAs it requires.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Certificates by SNI.
    pub certs: Arc<CertSet>,
    /// Client certificates must chain to these (mTLS); `None`: none asked for.
    pub client_ca: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// What a TLS listener serves for the life of the process; a reload replaces the contents.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its certificates.
    pub certs: Arc<ServerCerts>,
    /// Its client-certificate check.
    pub client_ca: Option<Arc<ClientCa>>,
}

impl Served {
    /// Serves `tls` until [`Served::replace`].
    pub fn new(tls: &ListenerTls) -> Self {
        Served {
            certs: ServerCerts::new(tls.certs.clone()),
            client_ca: tls.client_ca.clone().map(ClientCa::new),
        }
    }

    /// New handshakes get `tls` (whether a client CA is required cannot change: a reload that
    /// would change it is refused as needing a restart).
    pub fn replace(&self, tls: &ListenerTls) {
        self.certs.replace(tls.certs.clone());
        if let (Some(served), Some(v)) = (&self.client_ca, &tls.client_ca) {
            served.replace(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cert(names: &[&str], expired: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let c = params.self_signed(&key).unwrap();
        let (cp, kp) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        (dir, cp, kp)
    }

    fn load(names: &[&str]) -> LoadedCert {
        let (_d, c, k) = cert(names, false);
        load_cert(&|p| std::fs::read(p), &c, &k, now()).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let a = load(&["api.example.com"]);
        let b = load(&["*.internal.example.com", "other.example.com"]);
        let (ka, kb) = (a.key.clone(), b.key.clone());
        let set = CertSet::new(vec![a, b]).unwrap();
        assert!(Arc::ptr_eq(&set.choose(Some("api.example.com")), &ka));
        assert!(Arc::ptr_eq(&set.choose(Some("API.Example.COM")), &ka));
        assert!(Arc::ptr_eq(
            &set.choose(Some("n1.internal.example.com")),
            &kb
        ));
        assert!(Arc::ptr_eq(&set.choose(Some("other.example.com")), &kb));
        // A wildcard covers one label only; unknown names and no SNI get the first.
        assert!(Arc::ptr_eq(
            &set.choose(Some("a.b.internal.example.com")),
            &ka
        ));
        assert!(Arc::ptr_eq(&set.choose(Some("nobody.test")), &ka));
        assert!(Arc::ptr_eq(&set.choose(None), &ka));
        assert!(CertSet::new(Vec::new()).is_none());
    }

    #[test]
    fn expired_or_mismatched_material_is_refused() {
        let (_d, c, k) = cert(&["old.example.com"], true);
        let err = load_cert(&|p| std::fs::read(p), &c, &k, now()).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        let (_d1, c1, _) = cert(&["a.example.com"], false);
        let (_d2, _, k2) = cert(&["b.example.com"], false);
        let err = load_cert(&|p| std::fs::read(p), &c1, &k2, now()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let err = load_cert(&|p| std::fs::read(p), &k2, &k2, now()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");
    }
}
