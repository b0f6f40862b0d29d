//! The delaying TCP proxy of the slow node.
//!
//! The kernel here has no `netem`, so delay is made in user space. In the slow node's
//! namespace, NAT rules send every connection the node makes to a peer, and every
//! connection a peer makes to the node, to one of these proxies (see `lab`). Each proxy
//! accepts, dials the real destination from the namespace's second address (which the NAT
//! rules leave alone, so the proxy's own connections are not caught again), and copies the
//! bytes both ways, each chunk held back until `delay` after it was read. Order is kept and
//! throughput is not limited: the delay is added latency, as on a long link.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One proxy: where it listens, the address its connections come from, and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddr,
    pub source: std::net::IpAddr,
    pub target: SocketAddr,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}>{}>{}", self.listen, self.source, self.target)
    }
}

impl FromStr for Route {
    type Err = anyhow::Error;

    /// `LISTEN>SOURCE>TARGET`, as `Display` writes it.
    fn from_str(s: &str) -> Result<Route> {
        let mut parts = s.split('>');
        let (Some(listen), Some(source), Some(target), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(anyhow!("a route is LISTEN>SOURCE>TARGET, not {s:?}"));
        };
        Ok(Route {
            listen: listen.parse()?,
            source: source.parse()?,
            target: target.parse()?,
        })
    }
}

/// Serves one route until the task is aborted. Each accepted connection is reported as an
/// event, so the controller can show that the slow node's traffic really went through.
pub async fn serve(route: Route, delay: Duration, out: mpsc::Sender<String>) {
    let listener = match TcpListener::bind(route.listen).await {
        Ok(l) => l,
        Err(e) => {
            super::helper::send_event(&out, "error", &format!("proxy {route}: {e}")).await;
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, from)) = listener.accept().await else {
            continue;
        };
        super::helper::send_event(&out, "proxy", &format!("{from} via {route}")).await;
        connections.spawn(async move {
            if let Ok(outbound) = dial(route).await {
                relay(inbound, outbound, delay).await;
            }
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
}

async fn dial(route: Route) -> std::io::Result<TcpStream> {
    let socket = match route.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(route.source, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(route.target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn relay(inbound: TcpStream, outbound: TcpStream, delay: Duration) {
    let _ = inbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, delay),
        pump(out_read, in_write, delay)
    );
}

/// Copies one direction: a reader stamps each chunk with the time it may leave, a writer
/// holds it until then. The queue between them is bounded.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
