//! The one HTTP client okome's components call each other and the engines with: HTTP/1 (plain,
//! or TLS with the caller's rustls settings), pooled, `TCP_NODELAY`, every call bounded in time
//! and in body size.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Answers larger than this are not read (a `/metrics` page or a policy snapshot is a few
/// hundred KiB at most).
pub const MAX_BODY: usize = 4 << 20;

/// Why a `GET` gave no usable answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GetError {
    /// The URL does not parse.
    #[error("{url}: not a URL: {message}")]
    Url {
        /// The URL.
        url: String,
        /// The parser's message.
        message: String,
    },
    /// Connecting or sending failed.
    #[error("GET {url}: {message}")]
    Request {
        /// The URL.
        url: String,
        /// The client's message.
        message: String,
    },
    /// A status other than 2xx.
    #[error("GET {url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: http::StatusCode,
    },
    /// The body could not be read (or was over [`MAX_BODY`]).
    #[error("GET {url}: reading body: {message}")]
    Body {
        /// The URL.
        url: String,
        /// The reader's message.
        message: String,
    },
    /// No whole answer in time.
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// A pooled HTTP/1 client; cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Plain(Hyper<HttpConnector, Empty<Bytes>>),
    Tls(Hyper<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>),
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with `TCP_NODELAY` that keeps idle connections for 30 s.
    pub fn new() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        Client {
            inner: Inner::Plain(
                Hyper::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(conn),
            ),
        }
    }

    /// A client for `https://` URLs (and plain ones) with these TLS settings (roots, client
    /// certificate); the server name sent as SNI and checked is `names[URL's host:port]`, else
    /// `default_name`, else the URL's host.
    pub fn with_tls(
        config: std::sync::Arc<rustls::ClientConfig>,
        names: std::collections::HashMap<String, rustls::pki_types::ServerName<'static>>,
        default_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(&config))
            .https_or_http();
        let builder = builder.with_server_name_resolver(ServerNames {
            names,
            default_name,
        });
        Client {
            inner: Inner::Tls(
                Hyper::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(builder.enable_http1().wrap_connector(conn)),
            ),
        }
    }

    /// `GET url`: the body when the status is 2xx, within `timeout`; `auth` is sent as
    /// `Authorization` (the callee's own key, never a client's).
    pub async fn get(
        &self,
        url: &str,
        auth: Option<&http::HeaderValue>,
        timeout: Duration,
    ) -> Result<Bytes, GetError> {
        match self.get_response(url, auth, timeout).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, _) => Err(GetError::Status {
                url: url.to_owned(),
                status,
            }),
        }
    }

    /// `GET url`: the status and body, whatever the status, within `timeout`.
    pub async fn get_response(
        &self,
        url: &str,
        auth: Option<&http::HeaderValue>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), GetError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| GetError::Url {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let fut = async {
            let mut req = http::Request::get(uri);
            if let Some(a) = auth {
                req = req.header(http::header::AUTHORIZATION, a.clone());
            }
            let req = req.body(Empty::new()).map_err(|e| GetError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
            let resp = match &self.inner {
                Inner::Plain(c) => c.request(req).await,
                Inner::Tls(c) => c.request(req).await,
            }
            .map_err(|e| GetError::Request {
                url: url.to_owned(),
                message: error_chain(&e),
            })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| GetError::Body {
                    url: url.to_owned(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| GetError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }
}

/// An error with its causes (hyper's own message hides a TLS failure's reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Which name a TLS connection checks: by `host:port`, then a default, then the URL's host.
struct ServerNames {
    names: std::collections::HashMap<String, rustls::pki_types::ServerName<'static>>,
    default_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl hyper_rustls::ResolveServerName for ServerNames {
    fn resolve(
        &self,
        uri: &http::Uri,
    ) -> Result<rustls::pki_types::ServerName<'static>, Box<dyn std::error::Error + Sync + Send>>
    {
        if let Some(n) = uri
            .authority()
            .and_then(|a| self.names.get(a.as_str()))
            .or(self.default_name.as_ref())
        {
            return Ok(n.clone());
        }
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(rustls::pki_types::ServerName::try_from(host.to_owned())?)
    }
}
