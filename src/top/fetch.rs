//! `GET /status.json` from a metrics port, over plain TCP or TLS (the port's
//! `[telemetry.metrics_tls]`), with the port's bearer token when it needs one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The largest answer read (a snapshot of 1,000 limits, namespaces and
/// endpoints is well under it).
const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

/// Where and how to ask.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the port answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the answer is not the status JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Target {
    fn tls(&self) -> Result<bool, FetchError> {
        match self.url.scheme_str() {
            Some("http") | None => Ok(false),
            Some("https") => Ok(true),
            Some(other) => Err(FetchError::Usage(format!(
                "--url must be http:// or https://, not {other}://"
            ))),
        }
    }

    fn authority(&self) -> Result<(String, u16), FetchError> {
        let host = self
            .url
            .host()
            .ok_or_else(|| FetchError::Usage(format!("--url {} has no host", self.url)))?;
        let default_port = if self.tls()? { 443 } else { 80 };
        Ok((
            host.trim_matches(['[', ']']).to_string(),
            self.url.port_u16().unwrap_or(default_port),
        ))
    }

    /// One snapshot, within the timeout.
    pub async fn fetch(&self, window: &str) -> Result<serde_json::Value, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_unbounded(window))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn fetch_unbounded(&self, window: &str) -> Result<serde_json::Value, FetchError> {
        let (host, port) = self.authority()?;
        let addr = format!("{host}:{port}");
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| FetchError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let path = format!("/status.json?window={window}");
        let mut request = http::Request::get(path).header(http::header::HOST, addr.as_str());
        if let Some(file) = &self.token_file {
            let token = std::fs::read_to_string(file).map_err(|e| {
                FetchError::Usage(format!("cannot read --token-file {}: {e}", file.display()))
            })?;
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let (status, body) = if self.tls()? {
            let tls = self.connector()?;
            let name = rustls_pki_types::ServerName::try_from(
                self.server_name.clone().unwrap_or_else(|| host.clone()),
            )
            .map_err(|e| FetchError::Tls(format!("server name: {e}")))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Tls(e.to_string()))?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if status != 200 {
            let body = String::from_utf8_lossy(&body).trim().to_string();
            return Err(FetchError::Status { status, body });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    fn connector(&self) -> Result<tokio_rustls::TlsConnector, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(file) => {
                let pem = std::fs::read(file).map_err(|e| {
                    FetchError::Usage(format!("cannot read --ca-file {}: {e}", file.display()))
                })?;
                use rustls_pki_types::pem::PemObject;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| FetchError::Tls(format!("--ca-file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| FetchError::Tls(format!("--ca-file: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

async fn send<IO>(
    io: TokioIo<IO>,
    request: http::Request<Empty<Bytes>>,
) -> Result<(u16, Bytes), FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    // A snapshot is tens of KiB; whatever answers at the URL may not send
    // more than this.
    let body = http_body_util::Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
