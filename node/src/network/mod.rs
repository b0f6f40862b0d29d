//! Peer-to-peer networking, the only module that touches libp2p.
//!
//! A private actor task owns the libp2p `Swarm`; the rest of the node talks
//! to it through a cloneable [`Handle`] and receives [`Event`]s on a bounded
//! channel. This file owns the public surface: [`Config`], [`Handle`],
//! [`Event`], [`Error`] and [`spawn`].

mod behaviour;
pub mod protocol;
pub mod slots;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub;
use libp2p::request_response::ResponseChannel;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use behaviour::Command;

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
pub use protocol::{PackError, SyncRequest, SyncResponse, pack, unpack};

/// Capacity of the command channel from handles to the actor.
const COMMAND_CAPACITY: usize = 256;

/// Capacity of the event channel from the actor to the owner.
const EVENT_CAPACITY: usize = 1024;

/// Decides whether a connected node belongs to the network, on its own clock.
pub trait Admit: Send + Sync + 'static {
    /// Admits a peer by the certificate it presents, or refuses it.
    fn admit(
        &self,
        peer: &PeerId,
        certificate: &[u8],
        charter_hash: &[u8; 32],
    ) -> Result<Admitted, Refusal>;

    /// The time admission decisions follow, in Unix milliseconds: an admitted peer is
    /// disconnected once it is past [`Admitted::until_ms`].
    fn now_ms(&self) -> u64;
}

/// What [`Admit::admit`] grants a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The participant the peer belongs to, such as a state code.
    pub state: String,
    /// The last millisecond of its certificate, on the [`Admit::now_ms`] clock.
    pub until_ms: u64,
}

/// Why [`Admit::admit`] refused a peer. The reason is one of a fixed set, never text a
/// peer sent: reasons become map keys and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    /// Whether the peer is deny-listed for [`DENY_DURATION`]. A refusal that only says the
    /// certificate's time is wrong does not, so that a fresh certificate gets in at once.
    pub deny: bool,
}

impl Refusal {
    /// A refusal that deny-lists the peer.
    pub const fn deny(reason: &'static str) -> Self {
        Self { reason, deny: true }
    }

    /// A refusal after which the peer may try again at once.
    pub const fn retry(reason: &'static str) -> Self {
        Self {
            reason,
            deny: false,
        }
    }
}

/// Everything the network actor needs to start.
#[derive(Clone)]
pub struct Config {
    /// The node key; its public half is our `PeerId`.
    pub keypair: Keypair,
    /// Addresses to listen on, such as `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// The charter's addresses of other nodes, dialled at start and re-dialled when lost.
    pub dial: Vec<Multiaddr>,
    /// Names the gossip topic `spocnet/{network_id}/entries/2`.
    pub network_id: String,
    /// Our own node certificate, presented to every peer.
    pub certificate: Vec<u8>,
    /// Verifies the certificates that peers present.
    pub admission: Arc<dyn Admit>,
    /// Hash of the charter; peers with another charter are refused.
    pub charter_hash: [u8; 32],
    /// Hash of the genesis charter: compared in place of `charter_hash` with a peer that
    /// gives one too, so that charters differing only in their addresses admit each other.
    pub genesis: Option<[u8; 32]>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Total number of established connections, incoming and outgoing.
    pub max_connections: u32,
    /// Established incoming connections: fewer than `max_connections`, so that the node's
    /// own dials always find a slot.
    pub max_incoming: u32,
    /// Established connections per peer.
    pub max_connections_per_peer: u32,
    /// Incoming connections still in their handshake (Noise, Yamux) from addresses that are
    /// not the charter's; more are refused at once, so a dial flood holds at most this many
    /// half-open connections. The charter's addresses have a pool of the same size of
    /// their own, for their handshakes and their connections not yet admitted.
    pub max_pending_incoming: u32,
    /// Established incoming connections not yet admitted, from addresses that are not the
    /// charter's.
    pub max_unadmitted: u32,
    /// Handshakes and incoming connections from one address (an IPv4 address or an IPv6
    /// /64) that is not the charter's.
    pub max_per_address: u32,
    /// Largest sync request or response, in bytes.
    pub max_frame_bytes: usize,
    /// Largest gossip message payload, in bytes.
    pub max_gossip_bytes: usize,
    /// Sync requests each peer may make per second; bursts may reach twice this.
    pub max_requests_per_second: u32,
    /// Seeds the jitter of re-dial backoff, so tests are deterministic.
    pub seed: u64,
}

impl Config {
    /// A configuration with default limits, no addresses and mDNS off.
    pub fn new(
        keypair: Keypair,
        network_id: impl Into<String>,
        certificate: Vec<u8>,
        charter_hash: [u8; 32],
        admission: Arc<dyn Admit>,
    ) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            dial: Vec::new(),
            network_id: network_id.into(),
            certificate,
            admission,
            charter_hash,
            genesis: None,
            mdns: false,
            max_connections: 128,
            max_incoming: 96,
            max_connections_per_peer: 2,
            max_pending_incoming: MAX_PENDING_INCOMING,
            max_unadmitted: 32,
            max_per_address: 8,
            max_frame_bytes: 8 * 1024 * 1024,
            max_gossip_bytes: 64 * 1024,
            max_requests_per_second: 20,
            seed: 0,
        }
    }

    /// The gossip topic of this network.
    pub fn topic(&self) -> String {
        // Version 2: anonymous messages. Nodes of version 1 signed theirs and refuse
        // unsigned ones, so the two meet only through pull sync, on another topic.
        format!("spocnet/{}/entries/2", self.network_id)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("peer", &self.keypair.public().to_peer_id())
            .field("listen", &self.listen)
            .field("dial", &self.dial)
            .field("network_id", &self.network_id)
            .field("charter_hash", &hex::encode(self.charter_hash))
            .field("mdns", &self.mdns)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("max_incoming", &self.max_incoming)
            .field("max_pending_incoming", &self.max_pending_incoming)
            .field("max_unadmitted", &self.max_unadmitted)
            .field("max_per_address", &self.max_per_address)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_gossip_bytes", &self.max_gossip_bytes)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .finish_non_exhaustive()
    }
}

/// The owner's verdict on a gossip message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid: deliver it and forward it to other peers.
    Accept,
    /// Invalid: drop it and penalise the peer that forwarded it.
    Reject,
    /// Drop it without penalty, such as a valid entry we cannot use yet.
    Ignore,
}

/// Identifies a gossip message, for [`Handle::report_gossip`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(gossipsub::MessageId);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connected peer, as returned by [`Handle::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// The state returned by [`Admit::admit`], once admitted.
    pub state: Option<String>,
    /// The remote address of the first connection.
    pub address: Option<Multiaddr>,
    /// When the first connection opened, in Unix milliseconds.
    pub connected_since_ms: u64,
    pub admitted: bool,
}

/// Counters kept by the actor since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Peers refused: failed admission, floods and explicit disconnects.
    pub refused_peers: u64,
    /// Peers cut off for flooding sync requests.
    pub flood_cutoffs: u64,
    /// Gossip messages dropped because the event channel was full.
    pub gossip_dropped: u64,
    /// Other events dropped because the event backlog was full.
    pub events_dropped: u64,
    /// Sync responses sent.
    pub requests_served: u64,
    /// Inbound sync requests refused: over the rate, not admitted, or answered
    /// with a response larger than `max_frame_bytes`.
    pub requests_refused: u64,
}

/// What the network tells its owner.
#[derive(Debug)]
pub enum Event {
    /// A listener is bound to this address.
    Listening { address: Multiaddr },
    /// A peer presented a valid certificate for our charter.
    PeerAdmitted { peer: PeerId, state: String },
    /// The last connection to an admitted peer closed.
    PeerGone { peer: PeerId },
    /// A peer was refused and disconnected. It is deny-listed for [`DENY_DURATION`] unless
    /// it only failed in time: a late admission, or a certificate expired or expiring too
    /// far ahead.
    /// The reason is one of a fixed set, never text a peer chose: it becomes a map key and
    /// a metric label.
    PeerRefused { peer: PeerId, reason: &'static str },
    /// Incoming connections refused before admission (`slots`), by reason, since the start:
    /// sent at most once a second, when a count changed.
    IncomingDenied { counts: Vec<(&'static str, u64)> },
    /// An admitted peer forwarded a gossip message; answer with [`Handle::report_gossip`].
    Gossip {
        source: PeerId,
        message_id: MessageId,
        data: Vec<u8>,
    },
    /// An admitted peer asks for entries; answer with [`Responder::send`].
    SyncRequested {
        peer: PeerId,
        state: String,
        request: SyncRequest,
        reply: Responder,
    },
}

/// Answers one [`Event::SyncRequested`]; dropping it refuses the request.
#[derive(Debug)]
pub struct Responder {
    peer: PeerId,
    channel: ResponseChannel<SyncResponse>,
    commands: mpsc::Sender<Command>,
}

impl Responder {
    /// The peer waiting for the response.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Sends the response; it is refused if it encodes to more than `max_frame_bytes`.
    pub async fn send(self, response: SyncResponse) {
        let command = Command::Respond {
            peer: self.peer,
            channel: self.channel,
            response,
        };
        if self.commands.send(command).await.is_err() {
            tracing::debug!(peer = %self.peer, "network stopped before the sync response was sent");
        }
    }
}

/// Errors of the network module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network actor has stopped")]
    Stopped,
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: Multiaddr, reason: String },
    #[error("peer {peer} is not admitted")]
    NotAdmitted { peer: PeerId },
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("sync request to {peer} timed out")]
    Timeout { peer: PeerId },
    #[error("sync request to {peer} failed: {reason}")]
    Sync { peer: PeerId, reason: String },
    #[error("gossip publish failed: {0}")]
    Publish(String),
}

/// A cloneable handle on the network actor.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl Handle {
    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        response.await.map_err(|_| Error::Stopped)
    }

    async fn tell(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Our own peer identity.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Gossips an encoded entry to admitted peers; having no peers is not an error.
    pub async fn publish(&self, entry: Vec<u8>) -> Result<(), Error> {
        self.call(|reply| Command::Publish { data: entry, reply })
            .await?
    }

    /// Asks an admitted peer for entries and waits for its response (at most 30 s).
    pub async fn sync(&self, peer: PeerId, request: SyncRequest) -> Result<SyncResponse, Error> {
        self.call(|reply| Command::Sync {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Reports the verdict on an [`Event::Gossip`] message.
    pub async fn report_gossip(
        &self,
        message_id: MessageId,
        source: PeerId,
        accept: Acceptance,
    ) -> Result<(), Error> {
        self.tell(Command::ReportGossip {
            message_id: message_id.0,
            source,
            acceptance: accept,
        })
        .await
    }

    /// Disconnects a peer and deny-lists it for a while; emits [`Event::PeerRefused`] with
    /// `reason`, one of a fixed set. `detail`, which may repeat what the peer sent, goes to
    /// the log only.
    pub async fn disconnect(
        &self,
        peer: PeerId,
        reason: &'static str,
        detail: String,
    ) -> Result<(), Error> {
        self.tell(Command::Disconnect {
            peer,
            reason,
            detail,
        })
        .await
    }

    /// Presents `certificate` (a renewal of ours) from now on: in every later admission,
    /// and at once to every connected peer, on its existing connection.
    pub async fn renew_certificate(&self, certificate: Vec<u8>) -> Result<(), Error> {
        self.tell(Command::Renew { certificate }).await
    }

    /// Dials `addresses` from now on, in place of those given before (the charter's, at
    /// start): the addresses the participants publish.
    pub async fn set_dials(&self, addresses: Vec<Multiaddr>) -> Result<(), Error> {
        self.tell(Command::SetDials { addresses }).await
    }

    /// The connected peers, admitted or not yet.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// The addresses we actually listen on, with resolved ports.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// The actor's counters.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Stops the actor; does nothing if it has already stopped.
    pub async fn shutdown(&self) {
        if self.commands.send(Command::Shutdown).await.is_err() {
            tracing::debug!("network already stopped");
        }
    }
}

/// How long a refused peer stays deny-listed.
pub const DENY_DURATION: Duration = Duration::from_secs(60);

/// How long a connected peer has to get admitted.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The default bound on incoming connections still in their handshake.
pub const MAX_PENDING_INCOMING: u32 = 32;

/// Builds the swarm, starts listening and spawns the actor on the current tokio runtime.
///
/// The actor stops on [`Handle::shutdown`], when `cancel` is cancelled, or
/// when every handle and responder has been dropped.
pub fn spawn(
    config: Config,
    cancel: CancellationToken,
) -> Result<(Handle, mpsc::Receiver<Event>, JoinHandle<()>), Error> {
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let local_peer_id = config.keypair.public().to_peer_id();
    let actor =
        behaviour::Actor::new(config, command_rx, command_tx.downgrade(), event_tx, cancel)?;
    let span = tracing::info_span!("network", local = %local_peer_id);
    let task = tokio::spawn(actor.run().instrument(span));
    Ok((
        Handle {
            commands: command_tx,
            local_peer_id,
        },
        event_rx,
        task,
    ))
}

/// The node key as a libp2p keypair, from its 32-byte ed25519 seed.
pub fn keypair_from_seed(seed: &[u8; 32]) -> Result<Keypair, Error> {
    let mut bytes = *seed;
    Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| Error::Config(e.to_string()))
}

/// Parses a multiaddr from the charter or the settings.
pub fn parse_addr(text: &str) -> Result<Multiaddr, Error> {
    text.parse()
        .map_err(|e| Error::Config(format!("bad address {text:?}: {e}")))
}
