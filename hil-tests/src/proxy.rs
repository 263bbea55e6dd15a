//! A TCP proxy on loopback that plays the network between a client and a server, and the
//! ways it fails: the test switches it between [`LinkMode::Pass`], [`LinkMode::Drop`] and
//! [`LinkMode::BlackHole`] at any time.
//!
//! - **Pass**: bytes flow both ways; each accepted connection gets its own connection to the
//!   upstream server.
//! - **Drop**: every open connection is closed at once (both sides see the close) and new
//!   ones are closed as soon as they are accepted: a router that went away and answers
//!   with resets.
//! - **BlackHole**: connections stay open but every byte is discarded, both ways, and
//!   nobody is told: a cable pulled two hops away, or a NAT that forgot the flow. New
//!   connections are accepted and black-holed too (the client's connect succeeds; its
//!   first packet is never answered). Only a protocol-level timeout (MQTT keep-alive)
//!   notices.
//!
//! Healing ([`LinkMode::Pass`] again) lets new connections through. A connection that was
//! black-holed stays black-holed until one of its ends closes it: bytes were lost in the
//! middle of its stream, so carrying on with it would hand the peer a corrupt stream, which
//! no real network does (TCP would have retransmitted them). A client that never notices a
//! black hole therefore never recovers, which is what a test of that should find out.
//!
//! [`LinkProxy::accepted`] counts the connections accepted, so a test can see a client
//! try again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does with traffic, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes flow both ways.
    Pass,
    /// Every connection is closed, and new ones are closed on accept.
    Drop,
    /// Connections stay open, bytes are silently discarded both ways.
    BlackHole,
}

/// The proxy. Stops (closing every connection) when dropped.
pub struct LinkProxy {
    port: u16,
    mode: watch::Sender<LinkMode>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// How much one read moves; MQTT packets of the tests are far smaller.
const CHUNK: usize = 16 * 1024;

impl LinkProxy {
    /// Listen on a loopback port the OS picks and relay to `upstream`, passing traffic.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, watch) = watch::channel(LinkMode::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = inbound.set_nodelay(true);
                let mode = watch.clone();
                tokio::spawn(relay(inbound, upstream, mode));
            }
        });
        Ok(LinkProxy {
            port,
            mode,
            accepted,
            task,
        })
    }

    /// The port clients connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switch the link to `mode`; open connections follow at once.
    pub fn set(&self, mode: LinkMode) {
        let _ = self.mode.send(mode);
    }

    /// Connections accepted since the start, passed or not.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // No more accepts; every relay ends on Drop (or when the watch closes right after).
        self.task.abort();
        let _ = self.mode.send(LinkMode::Drop);
    }
}

/// Relay one accepted connection until either end closes it or the link drops it.
async fn relay(inbound: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<LinkMode>) {
    let start = *mode.borrow_and_update();
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let mut server: Option<(OwnedReadHalf, OwnedWriteHalf)> = match start {
        LinkMode::Drop => return,
        LinkMode::BlackHole => None,
        LinkMode::Pass => match TcpStream::connect(upstream).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Some(s.into_split())
            }
            // The server is down: the client sees its connection closed.
            Err(_) => return,
        },
    };
    let mut holed = start == LinkMode::BlackHole;
    let mut from_client = vec![0u8; CHUNK];
    let mut from_server = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            read = client_rx.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) if !holed => {
                    let Some((_, server_tx)) = server.as_mut() else { return };
                    if server_tx.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {} // discarded
            },
            read = read_server(&mut server, &mut from_server) => match read {
                // In a black hole the client must not hear that the server hung up.
                Ok(0) | Err(_) if holed => server = None,
                Ok(0) | Err(_) => return,
                Ok(n) if !holed => {
                    if client_tx.write_all(&from_server[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {} // discarded
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                match *mode.borrow_and_update() {
                    LinkMode::Drop => return,
                    LinkMode::BlackHole => holed = true,
                    // A black-holed stream stays broken (see the module docs).
                    LinkMode::Pass => {}
                }
            }
        }
    }
}

/// Read from the server side, or wait forever when there is none (black-holed from the
/// start, or the server hung up inside a black hole).
async fn read_server(
    server: &mut Option<(OwnedReadHalf, OwnedWriteHalf)>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match server.as_mut() {
        Some((server_rx, _)) => server_rx.read(buf).await,
        None => std::future::pending().await,
    }
}
