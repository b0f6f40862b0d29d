//! Silent outsiders: connections that complete the Noise and Yamux handshakes, each with a
//! fresh peer id, from many loopback addresses (127.0.1.x), never present a certificate,
//! and connect again as soon as they are dropped, or after 10 s.
//!
//! libp2p's TCP transport picks the source address itself, so the outsiders dial through
//! [`FromAddress`], a transport that binds each socket to a chosen address first; the
//! upgrades on top are libp2p's own.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures::future::{BoxFuture, FutureExt};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt};
use libp2p::core::transport::{
    DialOpts, ListenerId, PortUse, Transport, TransportError, TransportEvent,
};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::{noise, yamux};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::hostile::fresh_keypair;

/// How long an outsider holds a connection that the node has not closed.
pub const HOLD: Duration = Duration::from_secs(10);
/// The pause after a connection the node refused, before the next one.
const RETRY: Duration = Duration::from_millis(500);

/// A TCP transport that dials from `source`.
struct FromAddress {
    source: IpAddr,
}

impl Transport for FromAddress {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, io::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn listen_on(
        &mut self,
        _id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(target) = socket_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.source;
        Ok(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Poll::Pending
    }
}

fn socket_of(addr: &Multiaddr) -> Option<SocketAddr> {
    use libp2p::core::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// What the outsiders did so far.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Connections that completed both handshakes, each with a fresh peer id.
    pub connected: u64,
    /// Of those, the ones the node closed before the outsider let go.
    pub closed_by_node: u64,
    /// Attempts the node refused before or during the handshakes.
    pub refused: u64,
}

/// Outsiders running on a runtime; [`Silent::stop`] ends them and joins every task.
#[allow(missing_debug_implementations)]
pub struct Silent {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    progress: Arc<watch::Sender<Progress>>,
}

impl Silent {
    /// Starts `lanes` outsiders against `target`, spread over `addresses` source addresses
    /// 127.0.1.1, 127.0.1.2, ...
    pub fn start(rt: &Runtime, target: Multiaddr, lanes: usize, addresses: u8) -> Silent {
        let (stop, stopped) = watch::channel(false);
        let progress = Arc::new(watch::Sender::new(Progress::default()));
        let mut tasks = JoinSet::new();
        for lane in 0..lanes {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1,
                1 + (lane % usize::from(addresses.max(1))) as u8,
            ));
            let (target, stopped, progress) = (target.clone(), stopped.clone(), progress.clone());
            tasks.spawn_on(outsider(source, target, stopped, progress), rt.handle());
        }
        Silent {
            stop,
            tasks,
            progress,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until the progress satisfies `done`, or fails after `timeout`.
    pub fn wait_for(
        &self,
        rt: &Runtime,
        timeout: Duration,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<Progress> {
        let mut progress = self.progress.subscribe();
        rt.block_on(async {
            match tokio::time::timeout(timeout, progress.wait_for(|p| done(p))).await {
                Ok(Ok(p)) => Ok(p.clone()),
                _ => bail!(
                    "the outsiders did not get there within {timeout:?}: {:?}",
                    self.progress()
                ),
            }
        })
    }

    /// Stops the outsiders and waits for them.
    pub fn stop(mut self, rt: &Runtime) -> Result<Progress> {
        let _ = self.stop.send(true);
        rt.block_on(async {
            while let Some(done) = self.tasks.join_next().await {
                done.map_err(|e| anyhow!("an outsider panicked: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(self.progress())
    }
}

/// One outsider: connection after connection, until told to stop.
async fn outsider(
    source: IpAddr,
    target: Multiaddr,
    mut stopped: watch::Receiver<bool>,
    progress: Arc<watch::Sender<Progress>>,
) {
    // Attempts after a refusal are paced, not awaited: an outsider tries again every
    // `RETRY` at most.
    let mut pace = tokio::time::interval(RETRY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stopped.borrow() {
        let muxer = tokio::select! {
            _ = stopped.changed() => break,
            connected = connect(source, target.clone()) => connected,
        };
        let Ok(mut muxer) = muxer else {
            progress.send_modify(|p| p.refused += 1);
            tokio::select! {
                _ = stopped.changed() => break,
                _ = pace.tick() => continue,
            }
        };
        progress.send_modify(|p| p.connected += 1);
        // Silent: it opens no stream and answers none (the muxer drops the node's), and
        // only notices when the node closes the connection.
        let closed = futures::future::poll_fn(|cx| {
            loop {
                match muxer.poll_unpin(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        // The node closing the connection ends the hold; otherwise the outsider lets go
        // after `HOLD` and comes back.
        tokio::select! {
            _ = stopped.changed() => break,
            held = tokio::time::timeout(HOLD, closed) => {
                if held.is_ok() {
                    progress.send_modify(|p| p.closed_by_node += 1);
                }
            }
        }
    }
}

/// Dials `target` from `source` and completes Noise and Yamux with a fresh peer id.
async fn connect(source: IpAddr, target: Multiaddr) -> Result<StreamMuxerBox> {
    let keypair = fresh_keypair()?;
    let mut transport = FromAddress { source }
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(&keypair)?)
        .multiplex(yamux::Config::default())
        .timeout(HOLD)
        .boxed();
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let (_, muxer) = transport.dial(target, opts)?.await?;
    Ok(muxer)
}
