//! Connecting to gantry: an HTTP/2 channel with a default deadline, retried
//! with exponential backoff while the server is not reachable yet; or, for a
//! list of addresses or a `dns:///` name, lazily connected channels to every
//! replica ([`Replicas`]).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::replicas::Replicas;

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
    fn config(&self, default_name: Option<&str>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = self.server_name.as_deref().or(default_name) {
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
    let endpoint = endpoint(addr, tls, None)?;
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

/// The endpoint for `addr` (`host:port` or a URL), over TLS when `tls` is
/// given, the certificate checked for `name` unless `tls` names another.
fn endpoint(addr: &str, tls: Option<&Tls>, name: Option<&str>) -> Result<Endpoint, ConnectError> {
    let bare = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
        .map_err(|e| ConnectError::InvalidAddress(format!("{addr}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config(name))
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
    }
    Ok(endpoint)
}

/// The replicas `target` names: one address (connected as [`connect_with`]
/// does, waiting up to `patience`), a comma-separated list of `host:port`
/// (each resolved once), or `dns:///host:port` (resolved again every 30 s).
/// Lists and names connect lazily: a replica that is down is left out.
pub async fn connect_replicas(
    target: &str,
    patience: Duration,
    tls: Option<&Tls>,
) -> Result<Replicas, ConnectError> {
    if let Some(host_port) = target.strip_prefix("dns:///") {
        let addrs = resolve(host_port).await?;
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, _)| h)
            .to_string();
        let tls = tls.cloned();
        return Replicas::resolving(host_port.to_string(), &addrs, move |a| {
            endpoint(&a.to_string(), tls.as_ref(), Some(&host)).map_err(|e| e.to_string())
        })
        .map_err(ConnectError::InvalidAddress);
    }
    let parts: Vec<&str> = target
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [] => Err(ConnectError::InvalidAddress("no address given".into())),
        [one] => Ok(Replicas::single(connect_with(one, patience, tls).await?)),
        many => {
            let mut addrs = Vec::new();
            for part in many {
                addrs.extend(resolve(part).await?);
            }
            let first = many[0].rsplit_once(':').map(|(h, _)| h.to_string());
            Replicas::lazy(&addrs, &|a| {
                endpoint(&a.to_string(), tls, first.as_deref()).map_err(|e| e.to_string())
            })
            .map_err(ConnectError::InvalidAddress)
        }
    }
}

async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, ConnectError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| ConnectError::InvalidAddress(format!("{host_port}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::InvalidAddress(format!(
            "{host_port} resolves to no address"
        )));
    }
    Ok(addrs)
}
