//! The composed libp2p behaviour and the actor task that owns the `Swarm`.
//!
//! The actor admits peers, rate-limits their sync requests, re-dials the
//! charter's addresses with backoff, and turns swarm events into
//! [`Event`]s and handle commands into swarm calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::core::ConnectedPoint;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, PublishError};
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, identify, mdns, noise, ping,
    tcp, yamux,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::protocol::{
    self, AdmitBehaviour, AdmitRequest, AdmitResponse, SyncBehaviour, SyncRequest, SyncResponse,
};
use super::slots;
use super::{
    ADMISSION_TIMEOUT, Acceptance, Admit, Admitted, Config, DENY_DURATION, Error, Event, MessageId,
    PeerInfo, Refusal, Responder, Stats,
};

const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DIAL_BACKOFF_START: Duration = Duration::from_millis(500);
const DIAL_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Dial failures of one address logged at debug level before they are logged at info.
const QUIET_DIAL_FAILURES: u32 = 3;
/// Room for the signature, key and framing around a gossip payload.
const GOSSIP_OVERHEAD: usize = 1024;
/// Events kept while the owner's channel is full; gossip is never kept.
const MAX_BACKLOG: usize = 4096;
/// Application score of peers not (or no longer) admitted: below gossipsub's
/// graylist threshold, so we neither send them messages nor process theirs.
const UNADMITTED_SCORE: f64 = -1000.0;
const FLOOD_SECONDS: u32 = 3;
const FLOOD_FACTOR: u32 = 5;
/// An admitted peer whose certificate runs out is cut off without being deny-listed: a
/// renewed certificate lets it in again at once.
const EXPIRED: Refusal = Refusal::retry("certificate has expired");
const OTHER_CHARTER: Refusal = Refusal::deny("different charter hash");
const OTHER_PARTICIPANT: Refusal = Refusal::deny("renewed certificate names another participant");
/// A peer that did not finish its admission within [`ADMISSION_TIMEOUT`].
const LATE: &str = "no admission in time";

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    slots: slots::Behaviour,
    deny: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    admit: AdmitBehaviour,
    sync: SyncBehaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Requests from a [`super::Handle`] or a [`Responder`] to the actor.
pub(super) enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Sync {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, Error>>,
    },
    Respond {
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    },
    ReportGossip {
        message_id: gossipsub::MessageId,
        source: PeerId,
        acceptance: Acceptance,
    },
    Disconnect {
        peer: PeerId,
        reason: &'static str,
        detail: String,
    },
    Renew {
        certificate: Vec<u8>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    SetDials {
        addresses: Vec<Multiaddr>,
    },
    Shutdown,
}

/// A token bucket with per-second accounting to detect floods.
struct Bucket {
    tokens: f64,
    updated: Instant,
    window_start: Instant,
    window_requests: u32,
    window_refused: u32,
    streak: u32,
}

enum Verdict {
    Serve,
    Refuse,
    Flood,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            tokens: 2.0 * f64::from(rate),
            updated: now,
            window_start: now,
            window_requests: 0,
            window_refused: 0,
            streak: 0,
        }
    }

    fn take(&mut self, rate: u32, now: Instant) -> Verdict {
        let per_second = f64::from(rate);
        let refill = now.saturating_duration_since(self.updated).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(2.0 * per_second);
        self.updated = now;
        let since = now.saturating_duration_since(self.window_start);
        if since >= Duration::from_secs(1) {
            // A second with refusals extends the streak only if it directly precedes this one.
            self.streak = match (self.window_refused > 0, since < Duration::from_secs(2)) {
                (true, true) => self.streak + 1,
                (true, false) => 1,
                (false, _) => 0,
            };
            self.window_start = now;
            self.window_requests = 0;
            self.window_refused = 0;
        }
        self.window_requests += 1;
        if self.streak >= FLOOD_SECONDS || self.window_requests > FLOOD_FACTOR.saturating_mul(rate)
        {
            return Verdict::Flood;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Serve
        } else {
            self.window_refused += 1;
            // More refusals in one second than the rate allows requests: a flood, even when
            // it arrives spread out too thinly to trip the per-second request limit.
            if self.window_refused > rate {
                Verdict::Flood
            } else {
                Verdict::Refuse
            }
        }
    }
}

struct Peer {
    /// The admission and its certificate's expiry; `None` until admitted and after a refusal.
    admitted: Option<Admitted>,
    /// Refused: its admission messages still in flight are ignored while it disconnects.
    refused: bool,
    /// Whether the owner was told of its admission, and so must hear it is gone.
    announced: bool,
    address: Multiaddr,
    connected_since_ms: u64,
    deadline: Instant,
    bucket: Bucket,
}

/// One charter address we keep connected.
struct Dial {
    address: Multiaddr,
    peer: Option<PeerId>,
    attempt: u32,
    next: Option<Instant>,
    pending: Option<ConnectionId>,
}

pub(super) struct Actor {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// Lends senders to responders without keeping the actor alive by itself.
    responders: mpsc::WeakSender<Command>,
    events: mpsc::Sender<Event>,
    backlog: VecDeque<Event>,
    cancel: CancellationToken,
    topic: IdentTopic,
    admission: Arc<dyn Admit>,
    certificate: Vec<u8>,
    charter_hash: [u8; 32],
    genesis: Option<[u8; 32]>,
    rate: u32,
    max_frame_bytes: usize,
    max_gossip_bytes: usize,
    peers: HashMap<PeerId, Peer>,
    denied: HashMap<PeerId, Instant>,
    pending: HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<SyncResponse, Error>>)>,
    dials: Vec<Dial>,
    rng: StdRng,
    stats: Stats,
    /// The counts of `slots` last sent in [`Event::IncomingDenied`].
    denied_incoming: Vec<(&'static str, u64)>,
}

fn peer_span(peer: &PeerId) -> tracing::Span {
    tracing::info_span!("peer", %peer)
}

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Exponential backoff with jitter: a random delay between three quarters and all of
/// `500 ms * 2^attempt`, capped at 30 s.
fn backoff(rng: &mut StdRng, attempt: u32) -> Duration {
    let base = DIAL_BACKOFF_START
        .saturating_mul(1 << attempt.min(16))
        .min(DIAL_BACKOFF_CAP);
    base.mul_f64(rng.random_range(0.75..=1.0))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn build_swarm(config: &Config, topic: &IdentTopic) -> Result<Swarm<Behaviour>, Error> {
    // Gossip carries signed entries between certified peers, so gossipsub's own envelope
    // (author, sequence number, signature) would prove nothing more and cost a check per
    // copy: messages are anonymous, and named by the hash of the entry they carry.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(config.max_gossip_bytes.saturating_add(GOSSIP_OVERHEAD))
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&message.data).as_bytes())
        })
        .build()
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config)
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let score = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    gossipsub
        .with_peer_score(score, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| Error::Config(format!("gossipsub scoring: {e}")))?;
    gossipsub
        .subscribe(topic)
        .map_err(|e| Error::Config(format!("gossipsub subscription: {e}")))?;

    let mdns = if config.mdns {
        let peer = config.keypair.public().to_peer_id();
        let mdns = mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
            .map_err(|e| Error::Transport(format!("mdns: {e}")))?;
        Some(mdns)
    } else {
        None
    };
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_incoming(Some(config.max_incoming))
        .with_max_established_per_peer(Some(config.max_connections_per_peer));
    let slots = slots::State::new(
        slots::Limits {
            pending: config.max_pending_incoming,
            unadmitted: config.max_unadmitted,
            per_address: config.max_per_address,
            reserved: config.max_pending_incoming,
        },
        config.dial.iter().filter_map(slots::ip_of),
    );
    let behaviour = Behaviour {
        slots: slots::Behaviour { state: slots },
        deny: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(limits),
        ping: ping::Behaviour::default(),
        identify: identify::Behaviour::new(identify::Config::new(
            format!("/spocnet/{}/1", config.network_id),
            config.keypair.public(),
        )),
        gossipsub,
        admit: protocol::admit_behaviour(),
        sync: protocol::sync_behaviour(config.max_frame_bytes),
        mdns: Toggle::from(mdns),
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

impl Actor {
    pub(super) fn new(
        config: Config,
        commands: mpsc::Receiver<Command>,
        responders: mpsc::WeakSender<Command>,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let topic = IdentTopic::new(config.topic());
        let mut swarm = build_swarm(&config, &topic)?;
        for address in &config.listen {
            swarm
                .listen_on(address.clone())
                .map_err(|e| Error::Listen {
                    address: address.clone(),
                    reason: e.to_string(),
                })?;
        }
        let now = Instant::now();
        let dials = config
            .dial
            .iter()
            .filter(|address| !config.listen.contains(address))
            .map(|address| Dial {
                address: address.clone(),
                peer: None,
                attempt: 0,
                next: Some(now),
                pending: None,
            })
            .collect();
        Ok(Self {
            swarm,
            commands,
            responders,
            events,
            backlog: VecDeque::new(),
            cancel,
            topic,
            admission: config.admission,
            certificate: config.certificate,
            charter_hash: config.charter_hash,
            genesis: config.genesis,
            rate: config.max_requests_per_second.max(1),
            max_frame_bytes: config.max_frame_bytes,
            max_gossip_bytes: config.max_gossip_bytes,
            peers: HashMap::new(),
            denied: HashMap::new(),
            pending: HashMap::new(),
            dials,
            rng: StdRng::seed_from_u64(config.seed),
            stats: Stats::default(),
            denied_incoming: Vec::new(),
        })
    }

    pub(super) async fn run(mut self) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A permit borrows its sender, so the backlog drains through a clone.
        let events = self.events.clone();
        info!(peer = %self.swarm.local_peer_id(), topic = %self.topic, "network started");
        loop {
            let next_dial = self.dials.iter().filter_map(|dial| dial.next).min();
            tokio::select! {
                () = self.cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.on_command(command),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                permit = events.reserve(), if !self.backlog.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.backlog.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => self.backlog.clear(),
                },
                _ = housekeeping.tick() => self.housekeeping(),
                () = sleep_until(next_dial) => self.dial_due(),
            }
        }
        info!("network stopped");
    }

    /// Sends an event to the owner without blocking; events wait in a bounded backlog.
    fn emit(&mut self, event: Event) {
        if self.backlog.is_empty() {
            match self.events.try_send(event) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(event)) => self.backlog.push_back(event),
            }
        } else if self.backlog.len() < MAX_BACKLOG {
            self.backlog.push_back(event);
        } else {
            self.stats.events_dropped += 1;
            warn!(?event, "event backlog full, event dropped");
        }
    }

    fn is_admitted(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.admitted.is_some())
    }

    /// Disconnects a peer, deny-lists it and tells the owner why.
    fn refuse(&mut self, peer: PeerId, reason: &'static str) {
        self.refuse_as(peer, reason, "", true);
    }

    fn refuse_with(&mut self, peer: PeerId, refusal: Refusal) {
        self.refuse_as(peer, refusal.reason, "", refusal.deny);
    }

    /// Disconnects a peer and tells the owner why; with `deny`, also deny-lists it for
    /// `DENY_DURATION`. A peer that only failed in time is not deny-listed: one that did not
    /// finish its admission in time (loss, a partition, a stopped process) or whose
    /// certificate has expired may be an honest node, and its next connection gets a fresh
    /// chance.
    fn refuse_as(&mut self, peer: PeerId, reason: &'static str, detail: &str, deny: bool) {
        let _span = peer_span(&peer).entered();
        if self.denied.contains_key(&peer) {
            return;
        }
        warn!(reason, detail = %detail.escape_debug(), deny, "peer refused");
        self.stats.refused_peers += 1;
        if deny {
            self.denied.insert(peer, Instant::now() + DENY_DURATION);
            self.swarm.behaviour_mut().deny.block_peer(peer);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.admitted = None;
            p.refused = true;
        }
        let behaviour = self.swarm.behaviour_mut();
        behaviour
            .gossipsub
            .set_application_score(&peer, UNADMITTED_SCORE);
        behaviour.slots.state.gone(&peer);
        if self.swarm.disconnect_peer_id(peer).is_err() {
            debug!("refused peer was not connected");
        }
        self.emit(Event::PeerRefused { peer, reason });
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .denied
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            debug!(%peer, "deny listing expired");
            self.denied.remove(&peer);
            self.swarm.behaviour_mut().deny.unblock_peer(peer);
        }
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, p)| {
                p.admitted.is_none()
                    && !p.refused
                    && p.deadline <= now
                    && !self.denied.contains_key(peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            self.refuse_as(peer, LATE, "", false);
        }
        let now_ms = self.admission.now_ms();
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.admitted.as_ref().is_some_and(|a| a.until_ms < now_ms))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.refuse_with(peer, EXPIRED);
        }
        let denied = self.swarm.behaviour().slots.state.denied();
        if denied != self.denied_incoming {
            self.denied_incoming.clone_from(&denied);
            self.emit(Event::IncomingDenied { counts: denied });
        }
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        for dial in self
            .dials
            .iter_mut()
            .filter(|dial| dial.next.is_some_and(|next| next <= now))
        {
            dial.next = None;
            if dial.pending.is_some()
                || dial.peer.is_some_and(|peer| self.swarm.is_connected(&peer))
            {
                continue;
            }
            // A fresh local port for every dial: reusing the listening port would give a
            // node restarted at once the 4-tuple of its last life's connection, which the
            // kernel may still hold in TIME_WAIT, and its dials would fail for a minute.
            let opts = DialOpts::unknown_peer_id()
                .address(dial.address.clone())
                .allocate_new_port()
                .build();
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => dial.pending = Some(connection),
                Err(error) => {
                    debug!(address = %dial.address, %error, "dial failed");
                    dial.next = Some(now + backoff(&mut self.rng, dial.attempt));
                    dial.attempt = dial.attempt.saturating_add(1);
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { data, reply } => {
                let result = self.publish(data);
                let _ = reply.send(result);
            }
            Command::Sync {
                peer,
                request,
                reply,
            } => {
                let size = request.encoded_len();
                if size > self.max_frame_bytes {
                    let _ = reply.send(Err(Error::TooLarge {
                        size,
                        limit: self.max_frame_bytes,
                    }));
                } else if !self.is_admitted(&peer) {
                    let _ = reply.send(Err(Error::NotAdmitted { peer }));
                } else {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, protocol::Inbound::Request(request));
                    self.pending.insert(id, (peer, reply));
                }
            }
            Command::Respond {
                peer,
                channel,
                response,
            } => {
                let _span = peer_span(&peer).entered();
                let size = response.encoded_len();
                if size > self.max_frame_bytes {
                    self.stats.requests_refused += 1;
                    warn!(
                        size,
                        limit = self.max_frame_bytes,
                        "sync response too large, request refused"
                    );
                } else if self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("sync request gone before its response");
                }
            }
            Command::ReportGossip {
                message_id,
                source,
                acceptance,
            } => {
                let acceptance = match acceptance {
                    Acceptance::Accept => MessageAcceptance::Accept,
                    Acceptance::Reject => MessageAcceptance::Reject,
                    Acceptance::Ignore => MessageAcceptance::Ignore,
                };
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                if !gossipsub.report_message_validation_result(&message_id, &source, acceptance) {
                    debug!(%message_id, "gossip message no longer cached");
                }
            }
            Command::Disconnect {
                peer,
                reason,
                detail,
            } => self.refuse_as(peer, reason, &detail, true),
            Command::Renew { certificate } => self.renew(certificate),
            Command::Peers { reply } => {
                let peers = self
                    .peers
                    .iter()
                    .map(|(peer, p)| PeerInfo {
                        peer: *peer,
                        state: p.admitted.as_ref().map(|a| a.state.clone()),
                        address: Some(p.address.clone()),
                        connected_since_ms: p.connected_since_ms,
                        admitted: p.admitted.is_some(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats);
            }
            Command::SetDials { addresses } => self.set_dials(addresses),
            // The run loop stops on shutdown before dispatching commands here.
            Command::Shutdown => {}
        }
    }

    fn publish(&mut self, data: Vec<u8>) -> Result<(), Error> {
        if data.len() > self.max_gossip_bytes {
            return Err(Error::TooLarge {
                size: data.len(),
                limit: self.max_gossip_bytes,
            });
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data)
        {
            Ok(message_id) => debug!(%message_id, "entry gossiped"),
            Err(PublishError::NoPeersSubscribedToTopic) => {
                debug!("no admitted peer subscribed, entry not gossiped")
            }
            Err(PublishError::Duplicate) => debug!("entry already gossiped"),
            Err(PublishError::MessageTooLarge) => {
                return Err(Error::TooLarge {
                    size: self.max_gossip_bytes,
                    limit: self.max_gossip_bytes,
                });
            }
            Err(PublishError::AllQueuesFull(peers)) => {
                return Err(Error::Publish(format!(
                    "queues of all {peers} peers are full"
                )));
            }
            Err(PublishError::SigningError(e)) => {
                return Err(Error::Publish(format!("signing failed: {e}")));
            }
            Err(PublishError::TransformFailed(e)) => {
                return Err(Error::Publish(format!("transform failed: {e}")));
            }
        }
        Ok(())
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.dials.retain(|dial| dial.address != address);
                self.emit(Event::Listening { address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                let _span = peer_span(&peer_id).entered();
                debug!(?cause, "disconnected");
                self.on_disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => self.on_dial_failed(connection_id, &error),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(address = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => trace!(?other, "swarm event"),
        }
    }

    /// Dials `addresses` from now on in place of the addresses dialled so far: those that
    /// stay keep their state (their peer and backoff), new ones are dialled at once, and
    /// the charter's pool of reserved connection slots follows them.
    fn set_dials(&mut self, addresses: Vec<Multiaddr>) {
        let own: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let now = Instant::now();
        let mut dials: Vec<Dial> = Vec::with_capacity(addresses.len());
        let mut added = 0;
        for address in addresses {
            if own.contains(&address) || dials.iter().any(|d| d.address == address) {
                continue;
            }
            match self.dials.iter().position(|d| d.address == address) {
                Some(i) => dials.push(self.dials.swap_remove(i)),
                None => {
                    added += 1;
                    dials.push(Dial {
                        address,
                        peer: None,
                        attempt: 0,
                        next: Some(now),
                        pending: None,
                    });
                }
            }
        }
        let removed = self.dials.len();
        self.dials = dials;
        let reserved = self.dials.iter().filter_map(|d| slots::ip_of(&d.address));
        self.swarm
            .behaviour_mut()
            .slots
            .state
            .set_reserved(reserved);
        if added + removed > 0 {
            info!(added, removed, "the addresses to dial changed");
        }
    }

    fn on_connected(&mut self, peer: PeerId, connection: ConnectionId, endpoint: &ConnectedPoint) {
        let _span = peer_span(&peer).entered();
        if let Some(dial) = self
            .dials
            .iter_mut()
            .find(|dial| dial.pending == Some(connection))
        {
            if dial.peer.is_none() {
                debug!(address = %dial.address, "dialled address reached");
            }
            dial.peer = Some(peer);
            dial.attempt = 0;
            dial.pending = None;
        }
        // A second connection shares the first one's admission; but a connection that
        // arrives while a refused peer's last one closes is a fresh attempt.
        if self.peers.get(&peer).is_some_and(|p| !p.refused) {
            return;
        }
        debug!(address = %endpoint.get_remote_address(), "connected, requesting admission");
        let now = Instant::now();
        self.peers.insert(
            peer,
            Peer {
                admitted: None,
                refused: false,
                announced: false,
                address: endpoint.get_remote_address().clone(),
                connected_since_ms: unix_ms(),
                deadline: now + ADMISSION_TIMEOUT,
                bucket: Bucket::new(self.rate, now),
            },
        );
        let behaviour = self.swarm.behaviour_mut();
        behaviour
            .gossipsub
            .set_application_score(&peer, UNADMITTED_SCORE);
        let request = AdmitRequest {
            charter_hash: self.charter_hash,
            certificate: self.certificate.clone(),
            genesis: self.genesis.map(serde_bytes::ByteArray::new),
        };
        behaviour.admit.send_request(&peer, request);
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        self.swarm.behaviour_mut().slots.state.gone(&peer);
        if self.peers.remove(&peer).is_some_and(|p| p.announced) {
            self.emit(Event::PeerGone { peer });
        }
        let now = Instant::now();
        for dial in self
            .dials
            .iter_mut()
            .filter(|dial| dial.peer == Some(peer) && dial.pending.is_none())
        {
            dial.next = Some(now + backoff(&mut self.rng, dial.attempt));
            dial.attempt = dial.attempt.saturating_add(1);
        }
    }

    fn on_dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        if let DialError::LocalPeerId { address } = error {
            debug!(%address, "charter address is our own, not dialling it again");
            self.dials.retain(|dial| dial.pending != Some(connection));
            return;
        }
        let pending = self
            .dials
            .iter_mut()
            .find(|dial| dial.pending == Some(connection));
        let Some(dial) = pending else {
            debug!(%error, "dial failed");
            return;
        };
        let delay = backoff(&mut self.rng, dial.attempt);
        // The first failures are a peer still starting; later ones an operator should see.
        if dial.attempt >= QUIET_DIAL_FAILURES {
            info!(address = %dial.address, %error, ?delay, "dial failed, retrying");
        } else {
            debug!(address = %dial.address, %error, ?delay, "dial failed, retrying");
        }
        dial.pending = None;
        dial.next = Some(Instant::now() + delay);
        dial.attempt = dial.attempt.saturating_add(1);
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip(event),
            BehaviourEvent::Admit(event) => self.on_admit(event),
            BehaviourEvent::Sync(event) => self.on_sync(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    if self.denied.contains_key(&peer) || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    if let Err(error) = self.swarm.dial(
                        DialOpts::peer_id(peer)
                            .addresses(vec![address])
                            .allocate_new_port()
                            .build(),
                    ) {
                        debug!(%peer, %error, "dialling discovered peer failed");
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => {
                // A silent partition leaves TCP connections open: a failed ping closes the
                // connection, so the peer list is honest and redialling starts.
                if let Err(error) = result {
                    debug!(%peer, %error, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                debug!(
                    peer = %peer_id,
                    agent = %info.agent_version,
                    protocol = %info.protocol_version,
                    "identified"
                );
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Deny(never) | BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source: source,
                message_id,
                message,
            } => {
                if !self.is_admitted(&source) {
                    let _span = peer_span(&source).entered();
                    debug!(%message_id, "gossip from a peer not admitted rejected");
                    let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                    gossipsub.report_message_validation_result(
                        &message_id,
                        &source,
                        MessageAcceptance::Reject,
                    );
                    return;
                }
                let event = Event::Gossip {
                    source,
                    message_id: MessageId(message_id.clone()),
                    data: message.data,
                };
                let delivered = self.backlog.is_empty()
                    && matches!(
                        self.events.try_send(event),
                        Ok(()) | Err(TrySendError::Closed(_))
                    );
                if !delivered {
                    self.stats.gossip_dropped += 1;
                    warn!(%source, %message_id, "event channel full, gossip dropped");
                    let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                    gossipsub.report_message_validation_result(
                        &message_id,
                        &source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer subscribed")
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer unsubscribed")
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                debug!(peer = %peer_id, "peer does not support gossipsub")
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                warn!(peer = %peer_id, ?failed_messages, "peer is too slow for gossip");
            }
        }
    }

    fn on_admit(&mut self, event: request_response::Event<AdmitRequest, AdmitResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = AdmitResponse {
                        charter_hash: self.charter_hash,
                        certificate: self.certificate.clone(),
                        genesis: self.genesis.map(serde_bytes::ByteArray::new),
                    };
                    if self
                        .swarm
                        .behaviour_mut()
                        .admit
                        .send_response(channel, response)
                        .is_err()
                    {
                        debug!(%peer, "admission request gone before its response");
                    }
                    let genesis = request.genesis.map(serde_bytes::ByteArray::into_array);
                    self.verify(peer, (&request.charter_hash, genesis), &request.certificate);
                }
                request_response::Message::Response { response, .. } => {
                    let genesis = response.genesis.map(serde_bytes::ByteArray::into_array);
                    self.verify(
                        peer,
                        (&response.charter_hash, genesis),
                        &response.certificate,
                    );
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "admission request failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "admission response failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Admits a connected peer once it presents a valid certificate for our charter. An
    /// admitted peer presents one again when it renews it (and in the answer to our own
    /// renewal): a valid one for the same participant extends its admission, on the same
    /// connection. One refused only for its time is a stale or skewed copy, and changes
    /// nothing: the peer keeps the certificate it holds until that one expires.
    fn verify(
        &mut self,
        peer: PeerId,
        (charter_hash, genesis): (&[u8; 32], Option<[u8; 32]>),
        certificate: &[u8],
    ) {
        let _span = peer_span(&peer).entered();
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.refused || self.denied.contains_key(&peer) {
            return;
        }
        let held = p.admitted.clone();
        let same_network = match (genesis, self.genesis) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => *charter_hash == self.charter_hash,
        };
        let verdict = if !same_network {
            Err(OTHER_CHARTER)
        } else {
            self.admission.admit(&peer, certificate, charter_hash)
        };
        match (verdict, held) {
            (Ok(admitted), None) => {
                info!(state = %admitted.state, until_ms = admitted.until_ms, "peer admitted");
                let state = admitted.state.clone();
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.admitted = Some(admitted);
                    p.announced = true;
                }
                let behaviour = self.swarm.behaviour_mut();
                behaviour.gossipsub.set_application_score(&peer, 0.0);
                behaviour.slots.state.admitted(peer);
                self.emit(Event::PeerAdmitted { peer, state });
            }
            (Ok(admitted), Some(held)) if admitted.state == held.state => {
                if admitted.until_ms > held.until_ms {
                    info!(until_ms = admitted.until_ms, "peer renewed its certificate");
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.admitted = Some(admitted);
                    }
                }
            }
            (Ok(_), Some(_)) => self.refuse_with(peer, OTHER_PARTICIPANT),
            (Err(refusal), Some(held)) if !refusal.deny => {
                debug!(
                    reason = refusal.reason,
                    until_ms = held.until_ms,
                    "certificate ignored, the one held stays"
                );
            }
            (Err(refusal), _) => self.refuse_with(peer, refusal),
        }
    }

    /// Presents a renewed certificate from now on, and at once to every connected peer.
    fn renew(&mut self, certificate: Vec<u8>) {
        self.certificate = certificate;
        let request = AdmitRequest {
            charter_hash: self.charter_hash,
            certificate: self.certificate.clone(),
            genesis: self.genesis.map(serde_bytes::ByteArray::new),
        };
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, p)| !p.refused && !self.denied.contains_key(peer))
            .map(|(peer, _)| *peer)
            .collect();
        info!(
            peers = peers.len(),
            "certificate renewed, presenting it to connected peers"
        );
        for peer in peers {
            self.swarm
                .behaviour_mut()
                .admit
                .send_request(&peer, request.clone());
        }
    }

    fn on_sync(&mut self, event: request_response::Event<protocol::Inbound, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: protocol::Inbound::Request(request),
                    channel,
                    ..
                } => self.on_sync_request(peer, request, channel),
                // A request over the frame limit is a protocol violation: its sender is cut
                // off, so that large frames cost it its connection and not only our memory.
                request_response::Message::Request {
                    request: protocol::Inbound::Oversized(reason),
                    ..
                } => {
                    self.stats.requests_refused += 1;
                    warn!(%peer, %reason, "oversized sync request");
                    self.refuse(peer, "oversized sync frame");
                }
                request_response::Message::Request {
                    request: protocol::Inbound::Unreadable(reason),
                    ..
                } => {
                    self.stats.requests_refused += 1;
                    debug!(%peer, %reason, "unreadable sync request dropped");
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, reply)) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let _span = peer_span(&peer).entered();
                debug!(%error, "sync request failed");
                if let Some((peer, reply)) = self.pending.remove(&request_id) {
                    let error = match error {
                        OutboundFailure::Timeout => Error::Timeout { peer },
                        OutboundFailure::DialFailure => Error::Sync {
                            peer,
                            reason: "dial failure".to_owned(),
                        },
                        OutboundFailure::ConnectionClosed => Error::Sync {
                            peer,
                            reason: "connection closed".to_owned(),
                        },
                        OutboundFailure::UnsupportedProtocols => Error::Sync {
                            peer,
                            reason: "protocol not supported".to_owned(),
                        },
                        OutboundFailure::Io(e) => Error::Sync {
                            peer,
                            reason: format!("refused or unreadable response: {e}"),
                        },
                    };
                    let _ = reply.send(Err(error));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => self.stats.requests_served += 1,
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let _span = peer_span(&peer).entered();
        let Some(p) = self
            .peers
            .get_mut(&peer)
            .filter(|_| !self.denied.contains_key(&peer))
        else {
            self.stats.requests_refused += 1;
            return;
        };
        match p.bucket.take(self.rate, Instant::now()) {
            Verdict::Serve => {}
            Verdict::Refuse => {
                self.stats.requests_refused += 1;
                debug!("sync request over the rate refused");
                return;
            }
            Verdict::Flood => {
                self.stats.requests_refused += 1;
                self.stats.flood_cutoffs += 1;
                self.refuse(peer, "request flood");
                return;
            }
        }
        let Some(state) = p.admitted.as_ref().map(|a| a.state.clone()) else {
            self.stats.requests_refused += 1;
            debug!("sync request from a peer not admitted refused");
            return;
        };
        let Some(commands) = self.responders.upgrade() else {
            return;
        };
        self.emit(Event::SyncRequested {
            peer,
            state,
            request,
            reply: Responder {
                peer,
                channel,
                commands,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `count` requests evenly over `over`; returns the index of the one that made
    /// the bucket call it a flood.
    fn flood_at(rate: u32, count: u32, over: Duration) -> Option<u32> {
        let start = Instant::now();
        let mut bucket = Bucket::new(rate, start);
        (0..count).find(|i| {
            let at = start + over.mul_f64(f64::from(*i) / f64::from(count));
            matches!(bucket.take(rate, at), Verdict::Flood)
        })
    }

    #[test]
    fn a_burst_is_a_flood_at_the_first_refusal_over_the_rate() {
        // 40 served from the full bucket, then the 21st refusal.
        assert_eq!(flood_at(20, 200, Duration::from_millis(10)), Some(60));
    }

    #[test]
    fn a_flood_spread_over_two_seconds_is_a_flood() {
        // 100 requests a second: never more than 5 x 20 in a second, and two seconds are too
        // short for a streak of refusals, but 40 or so are refused in the first second.
        let at = flood_at(20, 200, Duration::from_secs(2));
        assert!(at.is_some_and(|i| i < 100), "{at:?}");
    }

    #[test]
    fn a_peer_within_its_rate_is_served() {
        assert_eq!(flood_at(20, 200, Duration::from_secs(10)), None);
        assert_eq!(flood_at(20, 40, Duration::from_millis(1)), None);
    }
}
