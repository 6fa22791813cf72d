//! The gRPC port's connections, plaintext or TLS, for both transports. TLS
//! handshakes run in tasks of their own (bounded by a timeout), so a slow
//! or silent client never holds up accepting the next one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::{Connected, TcpIncoming};

use super::acceptor::ReloadingTls;
use super::identity::client_identity;

/// A client that connects and does not finish the TLS handshake in this
/// long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// Who is on the other end of a connection; every request on it carries
/// this in its extensions (on both transports).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The verified client certificate's identity (mutual TLS only).
    pub identity: Option<Arc<str>>,
}

/// One accepted connection.
pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Arc<str>),
}

impl ServerIo {
    pub fn peer(&self) -> Peer {
        let tcp = match self {
            ServerIo::Plain(tcp) => tcp,
            ServerIo::Tls(tls, _) => tls.get_ref().0,
        };
        Peer {
            remote: tcp.peer_addr().ok(),
            local: tcp.local_addr().ok(),
            identity: match self {
                ServerIo::Tls(_, identity) if !identity.is_empty() => Some(identity.clone()),
                _ => None,
            },
        }
    }
}

impl Connected for ServerIo {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<ServerIo>> + Send>>;

/// The connections of `listener`: as they come without TLS; after their
/// handshake with it. Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    keepalive: Duration,
    tls: Option<Arc<ReloadingTls>>,
) -> Incoming {
    let tcp = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(keepalive));
    let Some(tls) = tls else {
        return Box::pin(tcp.map(|accepted| accepted.map(ServerIo::Plain)));
    };
    let (ready, taken) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_with_tls(tcp, tls, ready));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(taken))
}

async fn accept_with_tls(
    mut tcp: TcpIncoming,
    tls: Arc<ReloadingTls>,
    ready: mpsc::Sender<io::Result<ServerIo>>,
) {
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            next = tcp.next() => match next {
                Some(accepted) => accepted,
                None => return,
            },
        };
        let socket = match accepted {
            Ok(socket) => socket,
            Err(e) => {
                if ready.send(Err(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let acceptor = tls.acceptor();
        let tls = tls.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let peer = socket.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(client_identity)
                        .unwrap_or_default();
                    let _ = ready
                        .send(Ok(ServerIo::Tls(Box::new(stream), identity.into())))
                        .await;
                }
                Ok(Err(e)) => {
                    tls.handshake_failed();
                    tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tls.handshake_failed();
                    tracing::debug!(peer = ?peer, "TLS handshake timed out");
                }
            }
        });
    }
}
