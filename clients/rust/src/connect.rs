//! Connecting to gantry: an HTTP/2 channel with a default deadline, retried
//! with exponential backoff while the server is not reachable yet.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    #[error("gantry unreachable: {0}")]
    Unreachable(String),
}

/// Connects to `addr` (`host:port` or a URL), retrying for up to `patience`.
pub async fn connect(addr: &str, patience: Duration) -> Result<Channel, ConnectError> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| ConnectError::InvalidAddress(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
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
