//! Connecting to gantry: an HTTP/2 channel with a default deadline, retried
//! with exponential backoff while the server is not reachable yet.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    #[error("gantry unreachable: {0}")]
    Unreachable(String),
    #[error("unusable TLS settings: {0}")]
    Tls(String),
}

/// TLS to gantry's `[server.tls]`, from PEM bytes (read the files yourself,
/// e.g. a mounted Secret).
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// CA certificates to trust; `None`: the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry; default: the host of the address.
    pub server_name: Option<String>,
}

impl Tls {
    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name);
        }
        config
    }
}

/// Connects to `addr` (`host:port` or a URL), retrying for up to `patience`.
pub async fn connect(addr: &str, patience: Duration) -> Result<Channel, ConnectError> {
    connect_with(addr, patience, None).await
}

/// [`connect`], over TLS when `tls` is given.
pub async fn connect_with(
    addr: &str,
    patience: Duration,
    tls: Option<&Tls>,
) -> Result<Channel, ConnectError> {
    let bare = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
        .map_err(|e| ConnectError::InvalidAddress(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(25);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if tokio::time::Instant::now() + backoff > deadline => {
                return Err(ConnectError::Unreachable(e.to_string()));
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
