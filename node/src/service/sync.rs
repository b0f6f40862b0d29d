//! Replication: the task between the network actor and the node actor.
//!
//! Push: each local write is published on the network's gossip topic. Pull: on admission,
//! when an entry arrives whose past is missing, and every ten seconds, the node reconciles
//! its logs with each peer's (see `reconcile`) and asks for the entries of the logs the peer
//! holds more of, in bounded batches, until it has caught up. Every entry goes through the
//! node actor's full validation before it is stored or relayed; a peer that sends an
//! invalid one, or a malformed answer, is cut off. The task owns every sub-task it starts,
//! in one `JoinSet`, and stops them all on shutdown.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::log::{EquivocationProof, SignedEntry};
use crate::network::{self, Acceptance, Event, PeerId, SyncRequest, SyncResponse};
use crate::reconcile::{self, Ask, Session};

use super::{Clock, Handle};
use crate::replica::MAX_AHEAD_MS;

/// Entries per sync batch.
pub const BATCH_ENTRIES: usize = 500;
/// Bytes of entries per sync batch, well under the network's frame limit.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The most a packed batch may inflate to: a full batch and its length prefixes.
const MAX_PACKED_BYTES: usize = BATCH_BYTES + 64 * 1024 + BATCH_ENTRIES * 4;
/// Proofs per sync response, and their bytes: with a full batch of entries, a response
/// stays well within the frame limit.
pub const BATCH_PROOFS: usize = 64;
pub const BATCH_PROOF_BYTES: usize = 2 * 1024 * 1024;
/// Rounds of one pull before it yields to the next anti-entropy tick.
const MAX_ROUNDS: usize = 400;
/// Sync sub-tasks in flight at once; requests beyond it are refused.
const MAX_TASKS: usize = 64;
/// Places in peers' streams kept at once, as in the store.
const MAX_STREAMS: usize = crate::store::MAX_STREAMS as usize;
/// Pulls in flight at once. Any peer can bring a node up to date, so pulling the same
/// entries from every peer at once would only multiply the bytes; the other peers wait
/// their turn and then answer with what the first ones lacked, usually nothing. A pull
/// on admission or on a gap starts only when no other pull runs; the anti-entropy tick
/// starts a second one when the running pulls brought nothing since the last tick, so
/// that a stalled peer cannot hold every pull back.
const MAX_PULLS: usize = 2;
/// How long a running pull may bring nothing before a waiting one starts beside it.
const STALL: Duration = Duration::from_secs(2);
/// Anti-entropy period.
pub const ANTI_ENTROPY: Duration = Duration::from_secs(10);

/// What the node knows of one admitted peer.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub state: String,
    pub address: Option<String>,
    pub connected_since_ms: u64,
    pub last_sync_ms: Option<u64>,
    /// How many entries the peer lacked that we hold, of the logs it asked for at its last
    /// request to us.
    pub entries_behind: u64,
    /// The size of its last sync request to us, in bytes (an upper bound of its encoding).
    pub last_request_bytes: u64,
    /// How far the peer's clock is ahead of ours (negative: behind), as last measured in a
    /// sync exchange.
    pub clock_offset_ms: Option<i64>,
}

impl PeerState {
    fn new(state: String, now_ms: u64) -> PeerState {
        PeerState {
            state,
            address: None,
            connected_since_ms: now_ms,
            last_sync_ms: None,
            entries_behind: 0,
            last_request_bytes: 0,
            clock_offset_ms: None,
        }
    }
}

/// The peers and the refusals, shared with the status and metrics.
#[derive(Debug, Default)]
pub struct Peers {
    pub admitted: BTreeMap<PeerId, PeerState>,
    pub refused: BTreeMap<String, u64>,
    /// Incoming connections refused before admission, by reason (`network::slots`).
    pub denied_incoming: Vec<(&'static str, u64)>,
    pub invalid_from_peers: u64,
    /// Whether this node's clock was off its peers' by more than the tolerance at the
    /// last measure.
    pub clock_skewed: bool,
}

impl Peers {
    /// How far this node's clock is ahead of its peers' (negative: behind), or nothing
    /// before the first measure: the median of the peers' offsets, and of two middle ones
    /// the nearer to agreement, so that one wrong clock among two peers does not make this
    /// node's look wrong.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        let mut offsets: Vec<i64> = self
            .admitted
            .values()
            .filter_map(|p| p.clock_offset_ms)
            .collect();
        offsets.sort_unstable();
        let n = offsets.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => offsets[n / 2],
            _ => {
                let (low, high) = (offsets[n / 2 - 1], offsets[n / 2]);
                if low.unsigned_abs() <= high.unsigned_abs() {
                    low
                } else {
                    high
                }
            }
        };
        Some(-median)
    }

    /// Records a peer's clock offset; returns this node's offset when it has just crossed
    /// the tolerance, one way or the other.
    fn measured(&mut self, peer: &PeerId, offset_ms: i64) -> Option<(bool, i64)> {
        let state = self.admitted.get_mut(peer)?;
        if state.clock_offset_ms.is_none() {
            tracing::debug!(%peer, offset_ms, "first measure of a peer's clock");
        }
        state.clock_offset_ms = Some(offset_ms);
        let ours = self.clock_offset_ms()?;
        let skewed = ours.unsigned_abs() > MAX_AHEAD_MS;
        if skewed == self.clock_skewed {
            return None;
        }
        self.clock_skewed = skewed;
        Some((skewed, ours))
    }
}

pub type PeerTable = Arc<Mutex<Peers>>;

/// Records a peer's clock offset, and says in the log when this node's clock crosses the
/// tolerance.
fn record_offset(peers: &PeerTable, peer: &PeerId, offset_ms: i64) {
    let Ok(mut p) = peers.lock() else {
        return;
    };
    match p.measured(peer, offset_ms) {
        Some((true, ours)) => tracing::warn!(
            offset_s = ours / 1000,
            tolerance_s = MAX_AHEAD_MS / 1000,
            "this node's clock is off its peers' by more than the tolerance: entries it signs wait on their nodes, and theirs may wait here"
        ),
        Some((false, ours)) => tracing::info!(
            offset_s = ours / 1000,
            "this node's clock agrees with its peers' again"
        ),
        None => {}
    }
}

/// The offset of a peer's clock from ours, measured by a request sent at `sent_ms` and
/// answered at `peer_ms` by the peer, received at `received_ms`: the peer's time against
/// the middle of the round trip.
fn offset_of(sent_ms: u64, peer_ms: u64, received_ms: u64) -> i64 {
    let middle = sent_ms / 2 + received_ms / 2;
    i64::try_from(i128::from(peer_ms) - i128::from(middle)).unwrap_or(0)
}

/// The status and metrics facts of the peer table.
pub fn status_of(table: &PeerTable, local: &PeerId) -> Value {
    let Ok(p) = table.lock() else {
        return json!({});
    };
    let peers: Vec<Value> = p
        .admitted
        .iter()
        .map(|(id, s)| {
            json!({
                "peer_id": id.to_string(),
                "state": s.state,
                "address": s.address,
                "connected_since": rfc3339(s.connected_since_ms),
                "last_sync": s.last_sync_ms.map(rfc3339),
                "entries_behind": s.entries_behind,
                "last_request_bytes": s.last_request_bytes,
                "clock_offset_ms": s.clock_offset_ms,
            })
        })
        .collect();
    let offset = p.clock_offset_ms();
    json!({
        "peer_id": local.to_string(),
        "peers": peers,
        "refused_peers": p.refused,
        "denied_incoming": p.denied_incoming.iter().copied().collect::<BTreeMap<_, _>>(),
        "invalid_from_peers": p.invalid_from_peers,
        "clock": {
            "offset_ms": offset,
            "tolerance_ms": MAX_AHEAD_MS,
            "skewed": offset.is_some_and(|o| o.unsigned_abs() > MAX_AHEAD_MS),
        },
    })
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

enum Done {
    Pulled {
        peer: PeerId,
        result: Result<Pulled, String>,
    },
    Served {
        peer: PeerId,
        behind: u64,
        bytes: u64,
    },
    Gossiped {
        source: PeerId,
        gaps: bool,
    },
    /// The node took in the entries whose time had come.
    Ticked(Result<usize, String>),
}

/// What the replication task listens to.
#[derive(Debug)]
pub struct Feeds {
    /// The network's events.
    pub events: mpsc::Receiver<Event>,
    /// The node's own writes, to gossip.
    pub published: mpsc::Receiver<Vec<u8>>,
    /// The addresses of the other participants' nodes, for the network to dial.
    pub dials: tokio::sync::watch::Receiver<Vec<String>>,
    /// Who may certify nodes: a peer whose state an amendment removes is let go.
    pub charters: tokio::sync::watch::Receiver<Arc<super::certificate::Trust>>,
}

/// The replication task: runs until `shutdown`, then stops its sub-tasks.
pub async fn run(
    node: Handle,
    net: network::Handle,
    feeds: Feeds,
    peers: PeerTable,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let Feeds {
        mut events,
        mut published,
        mut dials,
        mut charters,
    } = feeds;
    let mut trusted = charters.borrow_and_update().clone();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut pulling: HashSet<PeerId> = HashSet::new();
    // Peers waiting for a free pull slot, at most one place per admitted peer.
    let mut wanted: BTreeSet<PeerId> = BTreeSet::new();
    let mut tick = tokio::time::interval(ANTI_ENTROPY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rounds of pulls that brought entries, and their count at the last tick: a second
    // pull starts only when the running ones brought nothing since then.
    let rounds = Arc::new(AtomicU64::new(0));
    let mut rounds_at_tick = 0;
    // A waiting pull gets the second slot sooner when the running one brought nothing for a
    // whole stall period (a stopped or cut-off peer holds a pull until its timeout).
    let mut stall = tokio::time::interval(STALL);
    stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds_at_stall = 0;
    // Where each peer's stream goes on, for a pull that ended in the middle of one, or a
    // catch-up that a restart cut short (the store keeps the places): at most
    // one place per admitted peer.
    let mut streams: HashMap<PeerId, u64> = match node.streams().await {
        Ok(saved) => saved
            .into_iter()
            .filter_map(|(peer, position)| Some((peer.parse().ok()?, position)))
            .take(MAX_STREAMS)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the places in peers' streams cannot be read");
            HashMap::new()
        }
    };
    let pull = |tasks: &mut JoinSet<Done>,
                pulling: &mut HashSet<PeerId>,
                wanted: &mut BTreeSet<PeerId>,
                streams: &mut HashMap<PeerId, u64>,
                peer: PeerId,
                limit: usize| {
        if pulling.contains(&peer) {
            return;
        }
        if pulling.len() >= limit.min(MAX_PULLS) || tasks.len() >= MAX_TASKS {
            wanted.insert(peer);
            return;
        }
        wanted.remove(&peer);
        if pulling.insert(peer) {
            let (node, net, rounds) = (node.clone(), net.clone(), rounds.clone());
            let (peers, clock) = (peers.clone(), clock.clone());
            let resume = streams.remove(&peer);
            tasks.spawn(async move {
                let span = tracing::debug_span!("pull", %peer, ?resume);
                let pulled =
                    pull_from((&node, &net, &peers, clock.as_ref()), peer, &rounds, resume);
                let result = tracing::Instrument::instrument(pulled, span).await;
                Done::Pulled { peer, result }
            });
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Ok(()) = dials.changed() => {
                let addresses = dials
                    .borrow_and_update()
                    .iter()
                    .filter_map(|a| network::parse_addr(a).ok())
                    .collect();
                if let Err(e) = net.set_dials(addresses).await {
                    tracing::warn!(error = %e, "cannot change the addresses to dial");
                }
            }
            Ok(()) = charters.changed() => {
                let trust = charters.borrow_and_update().clone();
                let before = std::mem::replace(&mut trusted, trust.clone());
                let charter = &trust.charter;
                // The states whose certifying key an amendment revoked since: their nodes
                // hold certificates of that key.
                let revoked: HashSet<String> = trust
                    .revoked
                    .difference(&before.revoked)
                    .filter_map(|key| {
                        before
                            .charter
                            .participant_by_key(key)
                            .map(|p| p.code.clone())
                            .or_else(|| before.rotated.get(key).cloned())
                    })
                    .collect();
                let peers = net.peers().await.unwrap_or_default();
                for p in peers {
                    let Some(state) = p.state else { continue };
                    let why = if charter.participant(&state).is_none() {
                        tracing::info!(peer = %p.peer, %state, "a peer's state left the charter; disconnecting");
                        "not a participant"
                    } else if revoked.contains(&state) {
                        tracing::info!(peer = %p.peer, %state, "a peer's certifying key was revoked; disconnecting");
                        "certifying key revoked"
                    } else if trust.node_revoked(&p.peer.to_string(), &state) {
                        tracing::info!(peer = %p.peer, %state, "its state revoked a peer's certificates; disconnecting");
                        "node revoked by its state"
                    } else {
                        continue;
                    };
                    let detail = format!("{state}: {why} in version {} of the charter", charter.version);
                    if let Err(e) = net.disconnect(p.peer, why, detail).await {
                        tracing::warn!(error = %e, "cannot disconnect a peer");
                    }
                }
            }
            Some(bytes) = published.recv() => {
                if let Err(e) = net.publish(bytes).await {
                    tracing::debug!(error = %e, "gossip publish failed; pull sync will deliver");
                }
            }
            Some(event) = events.recv() => match event {
                Event::Listening { address } => tracing::info!(%address, "listening"),
                Event::PeerAdmitted { peer, state } => {
                    tracing::info!(%peer, %state, "peer admitted");
                    if let Ok(mut p) = peers.lock() {
                        p.admitted.insert(peer, PeerState::new(state, clock.now_ms()));
                    }
                    refresh_addresses(&net, &peers).await;
                    pull(&mut tasks, &mut pulling, &mut wanted, &mut streams, peer, 1);
                }
                Event::PeerGone { peer } => {
                    // Its place in a stream stays, for when it comes back.
                    tracing::info!(%peer, "peer gone");
                    wanted.remove(&peer);
                    if let Ok(mut p) = peers.lock() {
                        p.admitted.remove(&peer);
                    }
                }
                Event::PeerRefused { peer, reason } => {
                    wanted.remove(&peer);
                    if streams.remove(&peer).is_some() {
                        let _ = node.remember_stream(peer.to_string(), None).await;
                    }
                    if let Ok(mut p) = peers.lock() {
                        p.admitted.remove(&peer);
                        *p.refused.entry(reason.to_owned()).or_default() += 1;
                    }
                    tracing::warn!(%peer, %reason, "peer refused and disconnected");
                }
                Event::IncomingDenied { counts } => {
                    tracing::warn!(?counts, "incoming connections refused before admission, since the start");
                    if let Ok(mut p) = peers.lock() {
                        p.denied_incoming = counts;
                    }
                }
                Event::Gossip { source, message_id, data } => {
                    if tasks.len() >= MAX_TASKS {
                        let _ = net.report_gossip(message_id, source, Acceptance::Ignore).await;
                        continue;
                    }
                    let (node, net, peers) = (node.clone(), net.clone(), peers.clone());
                    tasks.spawn(async move {
                        let gaps = on_gossip(&node, &net, &peers, source, message_id, data).await;
                        Done::Gossiped { source, gaps }
                    });
                }
                Event::SyncRequested { peer, state, request, reply } => {
                    if tasks.len() >= MAX_TASKS {
                        tracing::debug!(%peer, "busy: sync request refused");
                        continue;
                    }
                    let node = node.clone();
                    let bytes = request.encoded_len() as u64;
                    let now = clock.now_ms();
                    // One way of the trip is left in the offset: on the networks the
                    // nodes run on, milliseconds against a tolerance of minutes.
                    if let Some(sent) = request.time_ms {
                        record_offset(&peers, &peer, offset_of(now, sent, now));
                    }
                    tasks.spawn(async move {
                        let span = tracing::debug_span!("serve", %peer, %state, bytes);
                        let (response, behind) =
                            tracing::Instrument::instrument(serve(&node, request, now), span).await;
                        reply.send(response).await;
                        Done::Served { peer, behind, bytes }
                    });
                }
            },
            _ = stall.tick() => {
                let now = rounds.load(Ordering::Relaxed);
                if now == rounds_at_stall
                    && let Some(next) = wanted.pop_first()
                {
                    pull(&mut tasks, &mut pulling, &mut wanted, &mut streams, next, MAX_PULLS);
                }
                rounds_at_stall = now;
            }
            _ = tick.tick() => {
                if tasks.len() < MAX_TASKS {
                    let node = node.clone();
                    tasks.spawn(async move { Done::Ticked(node.tick().await.map_err(|e| e.to_string())) });
                }
                refresh_addresses(&net, &peers).await;
                let admitted: Vec<PeerId> = peers
                    .lock()
                    .map(|p| p.admitted.keys().copied().collect())
                    .unwrap_or_default();
                let now = rounds.load(Ordering::Relaxed);
                let limit = if now == rounds_at_tick { MAX_PULLS } else { 1 };
                rounds_at_tick = now;
                for peer in admitted {
                    pull(&mut tasks, &mut pulling, &mut wanted, &mut streams, peer, limit);
                }
            }
            Some(done) = tasks.join_next() => match done {
                Ok(Done::Pulled { peer, result }) => {
                    pulling.remove(&peer);
                    match result {
                        Ok(Pulled { accepted: n, streamed, resume }) => {
                            if let Some(position) = resume
                                && (streams.len() < MAX_STREAMS || streams.contains_key(&peer))
                            {
                                streams.insert(peer, position);
                            }
                            if n > 0 {
                                tracing::info!(%peer, entries = n, streamed, "caught up");
                            }
                            tracing::debug!(%peer, entries = n, "pull done");
                            if let Ok(mut p) = peers.lock()
                                && let Some(s) = p.admitted.get_mut(&peer) {
                                    s.last_sync_ms = Some(clock.now_ms());
                                }
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "pull failed"),
                    }
                    if let Some(next) = wanted.pop_first() {
                        pull(&mut tasks, &mut pulling, &mut wanted, &mut streams, next, MAX_PULLS);
                    }
                }
                Ok(Done::Served { peer, behind, bytes }) => {
                    if let Ok(mut p) = peers.lock()
                        && let Some(s) = p.admitted.get_mut(&peer) {
                            s.entries_behind = behind;
                            s.last_request_bytes = bytes;
                        }
                }
                Ok(Done::Gossiped { source, gaps }) => {
                    if gaps {
                        pull(&mut tasks, &mut pulling, &mut wanted, &mut streams, source, 1);
                    }
                }
                Ok(Done::Ticked(Ok(n))) if n > 0 => {
                    tracing::info!(entries = n, "took in entries whose time came");
                }
                Ok(Done::Ticked(Ok(_))) => {}
                Ok(Done::Ticked(Err(e))) => tracing::warn!(error = %e, "tick failed"),
                Err(e) => tracing::warn!(error = %e, "sync task failed"),
            },
        }
    }
    tasks.shutdown().await;
}

async fn refresh_addresses(net: &network::Handle, peers: &PeerTable) {
    let Ok(infos) = net.peers().await else {
        return;
    };
    if let Ok(mut p) = peers.lock() {
        for info in infos {
            if let Some(s) = p.admitted.get_mut(&info.peer) {
                s.address = info.address.map(|a| a.to_string());
            }
        }
    }
}

async fn cut_off(
    net: &network::Handle,
    peers: &PeerTable,
    peer: PeerId,
    reason: &'static str,
    detail: String,
) {
    tracing::warn!(%peer, reason, "cutting off peer");
    if let Ok(mut p) = peers.lock() {
        p.invalid_from_peers += 1;
    }
    let _ = net.disconnect(peer, reason, detail).await;
}

/// Takes in one gossiped entry; returns whether the node now waits for a missing past.
async fn on_gossip(
    node: &Handle,
    net: &network::Handle,
    peers: &PeerTable,
    source: PeerId,
    message_id: network::MessageId,
    data: Vec<u8>,
) -> bool {
    let entry = match SignedEntry::decode(&data) {
        Ok(e) => e,
        Err(e) => {
            let _ = net
                .report_gossip(message_id, source, Acceptance::Reject)
                .await;
            cut_off(net, peers, source, "malformed gossip entry", e.to_string()).await;
            return false;
        }
    };
    match node.ingest(vec![entry], Vec::new()).await {
        Ok(summary) => {
            let verdict = if summary.rejected > 0 {
                Acceptance::Reject
            } else if summary.accepted.is_empty() {
                if summary.duplicates > 0 {
                    tracing::debug!(%source, "gossiped entry already held, not relayed");
                }
                Acceptance::Ignore
            } else {
                Acceptance::Accept
            };
            let _ = net.report_gossip(message_id, source, verdict).await;
            if summary.rejected > 0 {
                cut_off(
                    net,
                    peers,
                    source,
                    "relayed an invalid entry",
                    String::new(),
                )
                .await;
            }
            summary.gaps
        }
        Err(e) => {
            tracing::warn!(error = %e, "ingest failed");
            let _ = net
                .report_gossip(message_id, source, Acceptance::Ignore)
                .await;
            false
        }
    }
}

/// The request of one pull round.
pub fn request_of(ask: Ask) -> SyncRequest {
    SyncRequest {
        ranges: ask.ranges,
        wanted: ask.wanted,
        max_entries: u32::try_from(BATCH_ENTRIES).unwrap_or(u32::MAX),
        stream: ask.stream,
        time_ms: None,
    }
}

/// Checks a peer's answer to a pull against the limits and the session's request, before
/// anything of it is decoded.
fn check_answer(response: &SyncResponse, session: &Session) -> Result<(), String> {
    if response.entries.len() > BATCH_ENTRIES
        || response.proofs.len() > BATCH_PROOFS
        || response.ranges.len() > reconcile::MAX_ASKED
    {
        return Err("sync batch over the limit".into());
    }
    session
        .check(&response.ranges)
        .map_err(|e| format!("malformed range answer: {e}"))
}

/// What one pull took in.
#[derive(Clone, Copy, Debug, Default)]
struct Pulled {
    /// Entries accepted.
    accepted: usize,
    /// Entries the peer sent from its stream, accepted or not.
    streamed: usize,
    /// Where the peer's stream goes on, when the pull ended in the middle of it: the next
    /// pull from that peer resumes there.
    resume: Option<u64>,
}

/// Pulls from one peer: reconciles, then asks for the logs it holds more of, or for its
/// stream when it holds more logs than one request can name, until nothing is left to
/// ask.
async fn pull_from(
    (node, net, peers, clock): (&Handle, &network::Handle, &PeerTable, &dyn Clock),
    peer: PeerId,
    rounds: &AtomicU64,
    resume: Option<u64>,
) -> Result<Pulled, String> {
    tracing::debug!("pull started");
    let (mut accepted, mut streamed) = (0, 0);
    let mut saved = resume;
    let mut session = Box::new(resume.map_or_else(Session::new, Session::resume));
    let (mut answers, mut served) = (Vec::new(), false);
    for _ in 0..MAX_ROUNDS {
        let (next, ask) = node
            .reconcile(session, answers, served)
            .await
            .map_err(|e| e.to_string())?;
        session = next;
        let Some(ask) = ask else {
            return Ok(Pulled {
                accepted,
                streamed,
                resume: None,
            });
        };
        let mut request = request_of(ask);
        let sent = clock.now_ms();
        request.time_ms = Some(sent);
        let response = net.sync(peer, request).await.map_err(|e| e.to_string())?;
        if let Some(peer_ms) = response.time_ms {
            record_offset(peers, &peer, offset_of(sent, peer_ms, clock.now_ms()));
        }
        if let Err(detail) = check_answer(&response, &session) {
            let _ = net
                .disconnect(peer, "malformed sync answer", detail.clone())
                .await;
            return Err(detail);
        }
        let (received, entries, proofs) = take(node, net, peer, &response).await?;
        if session.is_streaming() {
            streamed += received;
        }
        session.streamed(response.next);
        // The place is kept at every step, so that a restart goes on from here.
        let place = session.stream_position();
        if place != saved {
            node.remember_stream(peer.to_string(), place)
                .await
                .map_err(|e| e.to_string())?;
            saved = place;
        }
        accepted += entries;
        if entries > 0 {
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        // Wanted logs that brought nothing new wait for the next pull: what they lack may
        // depend on logs not asked for yet.
        served = !response.more || entries + proofs == 0;
        answers = response.ranges;
    }
    Ok(Pulled {
        accepted,
        streamed,
        resume: session.stream_position(),
    })
}

/// Takes in the entries and proofs of a pull answer; returns how many entries it held, how
/// many were accepted and how many proofs were new. A peer that sent anything malformed or invalid
/// is cut off.
async fn take(
    node: &Handle,
    net: &network::Handle,
    peer: PeerId,
    response: &SyncResponse,
) -> Result<(usize, usize, usize), String> {
    let unpacked = match &response.packed {
        Some(packed) => match network::unpack(packed, BATCH_ENTRIES, MAX_PACKED_BYTES) {
            Ok(u) => u,
            Err(e) => return Err(refuse(net, peer, "malformed packed batch", e.to_string()).await),
        },
        None => Vec::new(),
    };
    if !unpacked.is_empty() && !response.entries.is_empty() {
        let detail = "sync answer holds both packed and plain entries".to_owned();
        return Err(refuse(net, peer, "malformed sync answer", detail).await);
    }
    let plain = response.entries.iter().map(|b| b.as_slice());
    let mut entries = Vec::with_capacity(response.entries.len() + unpacked.len());
    for bytes in plain.chain(unpacked.iter().map(Vec::as_slice)) {
        match SignedEntry::decode(bytes) {
            Ok(e) => entries.push(e),
            Err(e) => return Err(refuse(net, peer, "malformed entry", e.to_string()).await),
        }
    }
    let mut new_proofs = Vec::new();
    for bytes in &response.proofs {
        match EquivocationProof::decode(bytes) {
            Ok(p) => new_proofs.push(p),
            Err(e) => return Err(refuse(net, peer, "malformed proof", e.to_string()).await),
        }
    }
    let received = entries.len();
    if entries.is_empty() && new_proofs.is_empty() {
        return Ok((0, 0, 0));
    }
    let summary = node
        .ingest(entries, new_proofs)
        .await
        .map_err(|e| e.to_string())?;
    if summary.rejected > 0 {
        let detail = format!("sent {} invalid entries", summary.rejected);
        return Err(refuse(net, peer, "sent invalid entries", detail).await);
    }
    Ok((received, summary.accepted.len(), summary.new_proofs.len()))
}

/// Cuts a peer off for `reason`, one of a fixed set; returns `detail`, which may repeat
/// what the peer sent, for the log.
async fn refuse(
    net: &network::Handle,
    peer: PeerId,
    reason: &'static str,
    detail: String,
) -> String {
    let _ = net.disconnect(peer, reason, detail.clone()).await;
    detail
}

/// Answers a peer's pull: its ranges, and the entries of the logs it wants after its
/// heights, bounded, in the order this node accepted them, with the proofs it lacks of
/// those logs. Also returns how many entries of those logs the peer lacked.
async fn serve(node: &Handle, request: SyncRequest, now_ms: u64) -> (SyncResponse, u64) {
    let max = usize::try_from(request.max_entries)
        .unwrap_or(BATCH_ENTRIES)
        .clamp(1, BATCH_ENTRIES);
    let ask = Ask {
        ranges: request.ranges,
        wanted: request.wanted,
        stream: request.stream,
    };
    let served = node.serve_pull(ask, max).await.unwrap_or_default();
    let packed = (!served.entries.is_empty())
        .then(|| serde_bytes::ByteBuf::from(network::pack(&served.entries)));
    let response = SyncResponse {
        ranges: served.answers,
        entries: Vec::new(),
        proofs: served.proofs.into_iter().map(Into::into).collect(),
        more: served.more,
        packed,
        next: served.next,
        time_ms: Some(now_ms),
    };
    (response, served.behind)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::identity::SecretKey;
    use crate::log::{EntryHash, LogId};
    use crate::network::protocol::{SyncFrame, encode_sync_frame};

    fn peers_with_offsets(offsets: &[i64]) -> Peers {
        let mut peers = Peers::default();
        for offset in offsets {
            let mut state = PeerState::new("XX".into(), 0);
            state.clock_offset_ms = Some(*offset);
            peers.admitted.insert(PeerId::random(), state);
        }
        peers
    }

    #[test]
    fn a_clock_is_judged_against_the_median_of_its_peers() {
        const HOUR: i64 = 3_600_000;
        assert_eq!(peers_with_offsets(&[]).clock_offset_ms(), None);
        // This node's clock is an hour ahead of both its peers'.
        assert_eq!(
            peers_with_offsets(&[-HOUR, -HOUR - 40]).clock_offset_ms(),
            Some(HOUR)
        );
        // One peer of two is an hour ahead: this node's clock is not the one to blame.
        assert_eq!(peers_with_offsets(&[HOUR, 25]).clock_offset_ms(), Some(-25));
        assert_eq!(
            peers_with_offsets(&[HOUR, 3, -7]).clock_offset_ms(),
            Some(-3)
        );
        // Crossing the tolerance is said once each way.
        let mut peers = peers_with_offsets(&[]);
        let peer = PeerId::random();
        peers.admitted.insert(peer, PeerState::new("XX".into(), 0));
        assert_eq!(peers.measured(&peer, -HOUR), Some((true, HOUR)));
        assert_eq!(peers.measured(&peer, -HOUR + 5), None);
        assert_eq!(peers.measured(&peer, 10), Some((false, -10)));
        assert_eq!(peers.measured(&PeerId::random(), -HOUR), None);
    }

    #[test]
    fn a_clock_offset_is_taken_against_the_middle_of_the_round_trip() {
        assert_eq!(offset_of(1_000, 3_601_050, 1_100), 3_600_000);
        assert_eq!(offset_of(5_000, 4_000, 5_000), -1_000);
    }

    #[test]
    fn an_in_sync_pull_is_one_small_round_whatever_the_number_of_logs() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let authors: Vec<_> = (0..31)
            .map(|_| SecretKey::generate(&mut rng).public())
            .collect();
        let mut sizes = Vec::new();
        for logs in [10u32, 10_000, 100_000] {
            let mut set = reconcile::Set::default();
            for i in 0..logs {
                let log = LogId {
                    author: authors[i as usize % authors.len()],
                    incarnation: i,
                };
                let tip = EntryHash(*blake3::hash(&i.to_be_bytes()).as_bytes());
                set.insert(log, 7, Some(tip), false);
            }
            let mut session = Session::new();
            let ask = session.ask(&set).expect("a first request");
            let answers = set.answer(&ask.ranges);
            assert!(answers.is_empty());
            let request = encode_sync_frame(&SyncFrame::Request(request_of(ask))).expect("ok");
            let response = SyncResponse {
                ranges: answers.clone(),
                ..SyncResponse::default()
            };
            let response = encode_sync_frame(&SyncFrame::Response(response)).expect("ok");
            assert_eq!(session.receive(&set, &answers, true), Ok(0));
            assert!(session.ask(&set).is_none(), "a second round at {logs} logs");
            eprintln!(
                "in sync at {logs} logs: a request of {} bytes, a response of {} bytes",
                request.len(),
                response.len()
            );
            sizes.push((request.len(), response.len()));
        }
        // Only the count in the one fingerprint grows, by a byte or two of CBOR integer.
        for (request, response) in &sizes {
            assert!(*request <= sizes[0].0 + 8 && *request < 256, "{sizes:?}");
            assert!(*response == sizes[0].1 && *response < 64, "{sizes:?}");
        }
    }
}
