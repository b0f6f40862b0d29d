//! Hostile peers against real `spoc-node` processes.
//!
//! Each test lays out a three-state testnet and starts the nodes of the first two states
//! (A, the Presidency, and B). The hostile peer is a real libp2p node in the test process,
//! built on `spoc_node::network`, so it speaks admission, gossip and pull sync exactly as a
//! node does. When it needs a valid node certificate it issues one with the third state's
//! national key while that state's own node stays down: a compromised participant.
//!
//! The scenarios: a peer with another charter, peers without a valid certificate, invalid
//! entries pushed by gossip and served to the nodes' pulls, an oversized sync request, and a
//! flood of sync requests. Every wait is on an event, a log line or `/v1/wait`, with a
//! timeout. The tests run one at a time, so that timings are not skewed by each other.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::RngCore;
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_node::docs::command::Command;
use spoc_node::identity::{NodeCertificate, SecretKey};
use spoc_node::log::SignedEntry;
use spoc_node::network::{
    self, Acceptance, Admit, Config, Event, Keypair, LogHeight, Multiaddr, PeerId, SyncRequest,
    SyncResponse,
};
use spoc_node::replica::{Limits, Replica};
use spoc_tests::{NodeInfo, Proc, Testnet};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any one awaited outcome may take.
const WAIT: Duration = Duration::from_secs(30);

/// The nodes' sync frame limit (`network::Config::new`'s default).
const NODE_FRAME_BYTES: usize = 8 * 1024 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The entries of a sync answer, plain or packed.
fn entries_of(r: &SyncResponse) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = r.entries.iter().map(|e| e.to_vec()).collect();
    if let Some(packed) = &r.packed {
        all.extend(spoc_node::network::unpack(packed, 500, 8 << 20).unwrap_or_default());
    }
    all
}

fn hash(ack: &Value) -> String {
    ack["entry"].as_str().unwrap_or_default().to_owned()
}

fn report(title: &str) -> Value {
    json!({
        "command": "obstacle_report",
        "title": title,
        "type": "pragmatic",
        "description": "Requests wait in several queues.",
    })
}

fn fresh_keypair() -> Result<Keypair> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    Ok(network::keypair_from_seed(&seed)?)
}

fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

/// A counter of `/v1/status`, such as `rejected.bad_signature`; 0 when absent.
fn count(status: &Value, map: &str, key: &str) -> u64 {
    status[map][key].as_u64().unwrap_or(0)
}

fn peer_id(node: &Proc) -> Result<PeerId> {
    let s = status(node)?;
    let text = s["peer_id"].as_str().context("status has no peer_id")?;
    Ok(text.parse()?)
}

/// Whether the node lists `peer` among its admitted peers.
fn lists(status: &Value, peer: &PeerId) -> bool {
    let id = peer.to_string();
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["peer_id"].as_str() == Some(id.as_str()))
}

/// Whether the node holds the entry, answered at once.
fn holds(node: &Proc, entry: &str) -> Result<bool> {
    let (code, body) = node.get(&format!("/v1/wait?entries={entry}&timeout_ms=0"))?;
    ensure!(code == 200, "wait answered {code}: {body}");
    Ok(body["present"] == Value::Bool(true))
}

/// Waits for the node's log line saying it refused and disconnected `peer`, and checks
/// the reason it gives. The node counts the refusal in its status right after this line.
fn refused_log(node: &mut Proc, peer: &PeerId, reason: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    let id = peer.to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node
            .wait_log("peer refused and disconnected", left)
            .with_context(|| format!("{} never refused {id}", node.api))?;
        if line.contains(&id) {
            ensure!(
                line.contains(reason),
                "refused for another reason than {reason:?}: {line}"
            );
            return Ok(line);
        }
    }
}

/// Follows the node's log about `peer` until the node refuses it (returns the line that
/// reports the refusal) or the connection closes before (returns `None`). Needs the
/// network module's debug lines.
fn admission_outcome(node: &mut Proc, peer: &PeerId) -> Result<Option<String>> {
    let deadline = Instant::now() + WAIT;
    let id = peer.to_string();
    let mut refusing = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node.wait_log(&id, left)?;
        ensure!(!line.contains("peer admitted"), "admitted: {line}");
        if line.contains("peer refused and disconnected") {
            return Ok(Some(line));
        }
        if line.contains("peer refused") {
            refusing = true;
        } else if line.contains("disconnected") && !refusing {
            return Ok(None);
        }
    }
}

/// What the hostile peer's event pump saw.
#[derive(Debug)]
enum Seen {
    Admitted(PeerId),
    Gone(PeerId),
    Refused(PeerId, String),
    Gossip(PeerId, Vec<u8>),
    /// A node pulled from us, and got our canned answer.
    Served(PeerId),
}

/// Admits every node: the hostile peer wants in, it keeps nobody out.
struct AdmitAll;

impl Admit for AdmitAll {
    fn admit(&self, _: &PeerId, _: &[u8], _: &[u8; 32]) -> Result<String, String> {
        Ok("node".to_owned())
    }
}

/// A hostile libp2p peer running on the test's runtime.
struct Hostile {
    net: network::Handle,
    id: PeerId,
    seen: mpsc::Receiver<Seen>,
    history: Vec<Seen>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Hostile {
    /// Waits until the peer sees something `pick` accepts; keeps everything seen.
    fn wait(&mut self, rt: &Runtime, what: &str, pick: impl Fn(&Seen) -> bool) -> Result<()> {
        if self.history.iter().any(&pick) {
            return Ok(());
        }
        let seen = &mut self.seen;
        let history = &mut self.history;
        rt.block_on(async {
            tokio::time::timeout(WAIT, async {
                while let Some(s) = seen.recv().await {
                    let hit = pick(&s);
                    history.push(s);
                    if hit {
                        return Ok(());
                    }
                }
                bail!("the hostile peer stopped")
            })
            .await
            .map_err(|_| anyhow!("hostile peer: no {what} within {WAIT:?}"))?
        })
        .with_context(|| format!("seen so far: {:?}", self.history))
    }

    /// Takes in what was seen so far without waiting.
    fn drain(&mut self) {
        while let Ok(s) = self.seen.try_recv() {
            self.history.push(s);
        }
    }

    /// How many things seen so far `pick` accepts.
    fn history_of(&mut self, pick: impl Fn(&Seen) -> bool) -> usize {
        self.drain();
        self.history.iter().filter(|s| pick(s)).count()
    }

    fn gossip_from(&mut self, node: &PeerId) -> usize {
        self.history_of(|s| matches!(s, Seen::Gossip(p, _) if p == node))
    }

    /// Waits until `node` has admitted us: it pulls from every peer it admits.
    fn wait_admitted_by(&mut self, rt: &Runtime, node: &PeerId) -> Result<()> {
        self.wait(
            rt,
            "admission",
            |s| matches!(s, Seen::Admitted(p) if p == node),
        )?;
        self.wait(rt, "pull", |s| matches!(s, Seen::Served(p) if p == node))
    }

    fn wait_gone(&mut self, rt: &Runtime, node: &PeerId) -> Result<()> {
        self.wait(
            rt,
            "disconnection",
            |s| matches!(s, Seen::Gone(p) if p == node),
        )
    }

    fn sync(&self, rt: &Runtime, node: PeerId, request: SyncRequest) -> Result<SyncResponse> {
        let net = self.net.clone();
        rt.block_on(async move {
            tokio::time::timeout(WAIT + Duration::from_secs(10), net.sync(node, request))
                .await
                .map_err(|_| anyhow!("sync did not end"))?
                .map_err(anyhow::Error::from)
        })
    }

    fn publish(&self, rt: &Runtime, data: Vec<u8>) -> Result<()> {
        Ok(rt.block_on(self.net.publish(data))?)
    }
}

/// A running testnet: nodes A and B of three states, and what the hostile peer knows.
struct Net {
    a: Proc,
    b: Proc,
    a_id: PeerId,
    b_id: PeerId,
    charter: Arc<Charter>,
    /// The third state, whose node is not started, and its national key.
    rogue: String,
    rogue_key: SecretKey,
    rt: Runtime,
    testnet: Testnet,
}

impl Net {
    /// Lays out the testnet, starts A and B, and waits until an entry written on A
    /// reaches B, so they are connected before any hostile peer shows up.
    fn start() -> Result<Net> {
        Net::start_with(&[])
    }

    /// The same, with extra environment variables for the nodes.
    fn start_with(env: &[(&str, &str)]) -> Result<Net> {
        let dir = tempfile::tempdir()?;
        let today = time::OffsetDateTime::now_utc().date();
        let nodes =
            spoc_node::testnet::generate(&dir.path().join("net"), 3, today, &mut rand::rng())?;
        let nodes: Vec<NodeInfo> = nodes
            .into_iter()
            .map(|n| NodeInfo {
                state: n.state,
                data_dir: n.data_dir,
                api: n.api,
                listen: n.listen,
            })
            .collect();
        let testnet = Testnet { dir, nodes };
        let text = std::fs::read_to_string(testnet.nodes[0].data_dir.join("charter.toml"))?;
        let charter = Arc::new(Charter::parse(&text)?);
        let rogue = testnet.nodes[2].state.clone();
        let rogue_key = SecretKey::load(&testnet.nodes[2].data_dir.join("national.key"), None)?;
        let a = Proc::start_with(&testnet.nodes[0], env)?;
        let b = Proc::start_with(&testnet.nodes[1], env)?;
        let ack = a.write(&report("Baseline"))?;
        b.wait_entries(&[hash(&ack)], WAIT)?;
        let (a_id, b_id) = (peer_id(&a)?, peer_id(&b)?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Net {
            a,
            b,
            a_id,
            b_id,
            charter,
            rogue,
            rogue_key,
            rt,
            testnet,
        })
    }

    /// A certificate for `keypair`'s peer id, signed by the rogue state's national key.
    fn certify(&self, keypair: &Keypair) -> Vec<u8> {
        NodeCertificate::issue(
            &self.rogue_key,
            &self.charter.network,
            &keypair.public().to_peer_id().to_bytes(),
            now_ms() + 3_600_000,
        )
        .encode()
    }

    /// A peer configuration for this network that dials the given nodes (0 is A, 1 is B).
    fn config(&self, keypair: Keypair, certificate: Vec<u8>, dial: &[usize]) -> Result<Config> {
        let mut config = Config::new(
            keypair,
            self.charter.network.clone(),
            certificate,
            self.charter.hash(),
            Arc::new(AdmitAll),
        );
        config.dial = dial
            .iter()
            .map(|i| network::parse_addr(&self.testnet.nodes[*i].listen))
            .collect::<Result<Vec<Multiaddr>, _>>()?;
        Ok(config)
    }

    /// A fresh peer holding a valid certificate of the rogue state.
    fn rogue_config(&self, dial: &[usize]) -> Result<Config> {
        let keypair = fresh_keypair()?;
        let certificate = self.certify(&keypair);
        self.config(keypair, certificate, dial)
    }

    /// Starts a hostile peer that answers every pull with `answer`.
    fn spawn(&self, config: Config, answer: SyncResponse) -> Result<Hostile> {
        let _runtime = self.rt.enter();
        let (net, mut events, actor) = network::spawn(config, Default::default())?;
        let id = net.local_peer_id();
        let (tx, seen) = mpsc::channel(4096);
        let reporter = net.clone();
        let pump = self.rt.spawn(async move {
            while let Some(event) = events.recv().await {
                let seen = match event {
                    Event::Listening { .. } => continue,
                    Event::PeerAdmitted { peer, .. } => Seen::Admitted(peer),
                    Event::PeerGone { peer } => Seen::Gone(peer),
                    Event::PeerRefused { peer, reason } => Seen::Refused(peer, reason),
                    Event::Gossip {
                        source,
                        message_id,
                        data,
                    } => {
                        let _ = reporter
                            .report_gossip(message_id, source, Acceptance::Ignore)
                            .await;
                        Seen::Gossip(source, data)
                    }
                    Event::SyncRequested { peer, reply, .. } => {
                        reply.send(answer.clone()).await;
                        Seen::Served(peer)
                    }
                };
                if tx.send(seen).await.is_err() {
                    break;
                }
            }
        });
        Ok(Hostile {
            net,
            id,
            seen,
            history: Vec::new(),
            tasks: vec![actor, pump],
        })
    }

    /// A valid entry of the rogue state, in a fresh log: an obstacle report it owns.
    fn forge(&self, title: &str) -> Result<SignedEntry> {
        let replica = Replica::new(self.charter.clone(), Limits::default());
        let command: Command = serde_json::from_value(report(title))?;
        let incarnation = rand::random::<u32>() | 1;
        let ulid = (u128::from(now_ms()) << 80) | u128::from(rand::random::<u64>());
        let (entry, _) = replica.prepare(
            &self.rogue_key,
            incarnation,
            &command,
            now_ms(),
            ulid.into(),
        )?;
        Ok(entry)
    }

    /// A forged entry whose signature does not verify.
    fn bad_signature(&self, title: &str) -> Result<SignedEntry> {
        let mut bytes = self.forge(title)?.bytes().to_vec();
        let r = bytes.len() - 64;
        bytes[r] ^= 0x01;
        Ok(SignedEntry::decode(&bytes)?)
    }

    /// A well signed entry that breaks a rule: the rogue state's change, creating an
    /// obstacle, put in a document that A's state owns ("only A may create ...").
    fn foreign_owner(&self, title: &str) -> Result<SignedEntry> {
        let forged = self.forge(title)?;
        let mut entry = forged.entry.clone();
        let owner = &self.testnet.nodes[0].state;
        entry.doc = entry
            .doc
            .as_str()
            .replacen(&format!("/{}/", self.rogue), &format!("/{owner}/"), 1)
            .parse()?;
        ensure!(entry.doc.owner() == owner.as_str(), "doc id not rewritten");
        Ok(entry.sign(&self.rogue_key))
    }
}

#[test]
fn a_peer_with_another_charter_gets_nothing_and_is_refused() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    // The network module's debug lines show each connection opening and closing.
    let mut net = Net::start_with(&[("SPOC_LOG_LEVEL", "info,spoc_node::network=debug")])?;

    // Peers running an amended charter (one core group member fewer), with an otherwise
    // valid certificate.
    let mut amended = Charter::parse(&net.charter.to_toml())?;
    amended.training_core_group.pop();
    let other = Charter::parse(&amended.to_toml())?.hash();
    ensure!(
        other != net.charter.hash(),
        "the amended charter has the same hash"
    );
    // Both sides check the charter hash, and the first to read the other's hangs up: when
    // the peer is first, the node never reads its hash and has nothing to refuse. So fresh
    // peers try until each node has refused one itself.
    let mut peers = Vec::new();
    let mut refusals = [0u64; 2];
    let mut hung_up = 0;
    for (i, node_id) in [net.a_id, net.b_id].into_iter().enumerate() {
        for _ in 0..10 {
            let mut config = net.rogue_config(&[i])?;
            config.charter_hash = other;
            let h = net.spawn(config, SyncResponse::default())?;
            let node = if i == 0 { &mut net.a } else { &mut net.b };
            match admission_outcome(node, &h.id)? {
                Some(line) => {
                    ensure!(line.contains("different charter hash"), "{line}");
                    refusals[i] += 1;
                }
                None => hung_up += 1,
            }
            let pulled = h.sync(&net.rt, node_id, SyncRequest::default());
            assert!(
                pulled.is_err(),
                "a peer of another charter synced: {pulled:?}"
            );
            peers.push(h);
            if refusals[i] > 0 {
                break;
            }
        }
    }
    for (i, node) in [&net.a, &net.b].into_iter().enumerate() {
        let s = status(node)?;
        assert_eq!(
            refusals[i],
            count(&s, "refused_peers", "different charter hash")
        );
        assert!(refusals[i] > 0, "the node never refused a peer itself: {s}");
        assert!(
            peers.iter().all(|h| !lists(&s, &h.id)),
            "a peer is listed: {s}"
        );
    }

    // An entry written after the refusals reaches B, and none of the refused peers.
    let ack = net.a.write(&report("After the refusal"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;
    let mut own = 0;
    for h in &mut peers {
        assert_eq!(h.gossip_from(&net.a_id) + h.gossip_from(&net.b_id), 0);
        own += h.history_of(|s| {
            matches!(s, Seen::Refused(p, r) if [net.a_id, net.b_id].contains(p) && r.contains("charter"))
        });
    }
    eprintln!(
        "another charter: {} peers; refused by A {}, by B {}; hung up first {hung_up}; the peers refused the nodes {own} times; {:?}",
        peers.len(),
        refusals[0],
        refusals[1],
        started.elapsed()
    );
    Ok(())
}

#[test]
fn peers_without_a_valid_certificate_get_nothing_and_are_refused() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let stranger = SecretKey::generate(&mut rand::rng());
    let mut peers = Vec::new();
    for case in ["garbage", "stranger", "stolen"] {
        let keypair = fresh_keypair()?;
        let own = keypair.public().to_peer_id().to_bytes();
        let (certificate, reason) = match case {
            "garbage" => (
                b"not a node certificate".to_vec(),
                "malformed node certificate",
            ),
            // Signed by a key that is no participant's.
            "stranger" => (
                NodeCertificate::issue(&stranger, &net.charter.network, &own, now_ms() + 3_600_000)
                    .encode(),
                "certificate issuer is not a participant of the charter",
            ),
            // A participant's genuine certificate, issued for another peer id.
            _ => (
                net.certify(&fresh_keypair()?),
                "certificate names another peer id",
            ),
        };
        let config = net.config(keypair, certificate, &[0, 1])?;
        let h = net.spawn(config, SyncResponse::default())?;
        refused_log(&mut net.a, &h.id, reason)?;
        refused_log(&mut net.b, &h.id, reason)?;
        for (node, id) in [(&net.a, net.a_id), (&net.b, net.b_id)] {
            let s = status(node)?;
            let refusals: u64 = s["refused_peers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(r, _)| r.contains(reason))
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            assert_eq!(refusals, 1, "{case}: {s}");
            assert!(!lists(&s, &h.id), "{case}: the refused peer is listed: {s}");
            let pulled = h.sync(&net.rt, id, SyncRequest::default());
            assert!(pulled.is_err(), "{case}: synced: {pulled:?}");
        }
        peers.push((case, h));
    }

    // The nodes still replicate with each other, and none of the refused peers got an entry.
    let ack = net.a.write(&report("After the refusals"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;
    for (case, h) in &mut peers {
        assert_eq!(
            h.gossip_from(&net.a_id) + h.gossip_from(&net.b_id),
            0,
            "{case}: got gossip"
        );
    }
    eprintln!(
        "no valid certificate: 3 peers refused by A and B in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn invalid_entries_are_refused_by_every_node_and_relayed_by_none() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    let before = [status(&net.a)?, status(&net.b)?];

    // H1, connected to A only, pushes an entry with a bad signature by gossip.
    let bad_gossip = net.bad_signature("Forged by gossip")?;
    let mut h1 = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    h1.wait_admitted_by(&net.rt, &a_id)?;
    // Gossip flows both ways once A's gossip reaches H1.
    let ack = net.a.write(&report("Before the gossip"))?;
    let honest = hash(&ack);
    h1.wait(&net.rt, "gossip from A", |s| {
        matches!(s, Seen::Gossip(p, data) if *p == a_id
            && SignedEntry::decode(data).is_ok_and(|e| e.hash().to_string() == honest))
    })?;
    h1.publish(&net.rt, bad_gossip.bytes().to_vec())?;
    h1.wait_gone(&net.rt, &a_id)?;
    refused_log(&mut net.a, &h1.id, "relayed an invalid entry")?;

    // H2, connected to A and B, answers their pulls with a rule-breaking entry and one
    // with a bad signature.
    let bad_rule = net.foreign_owner("Forged for another owner")?;
    let bad_pulled = net.bad_signature("Forged for pulls")?;
    let answer = SyncResponse {
        entries: vec![
            bad_rule.bytes().to_vec().into(),
            bad_pulled.bytes().to_vec().into(),
        ],
        proofs: Vec::new(),
        more: false,
        packed: None,
    };
    let mut h2 = net.spawn(net.rogue_config(&[0, 1])?, answer)?;
    h2.wait_gone(&net.rt, &a_id)?;
    h2.wait_gone(&net.rt, &b_id)?;
    refused_log(&mut net.a, &h2.id, "sent 2 invalid entries")?;
    refused_log(&mut net.b, &h2.id, "sent 2 invalid entries")?;

    // An honest entry written afterwards on A reaches B: propagation happened.
    let ack = net.a.write(&report("After the forgeries"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;

    let bad = [&bad_gossip, &bad_rule, &bad_pulled];
    let mut accepted = 0;
    for node in [&net.a, &net.b] {
        for e in bad {
            if holds(node, &e.hash().to_string())? {
                accepted += 1;
            }
        }
    }
    let after = [status(&net.a)?, status(&net.b)?];
    let delta = |i: usize, reason: &str| {
        count(&after[i], "rejected", reason) - count(&before[i], "rejected", reason)
    };
    eprintln!(
        "invalid entries: accepted {accepted} of 6 deliveries; rejected on A {} bad signature + {} rule, on B {} + {}; {:?}",
        delta(0, "bad_signature"),
        delta(0, "rule"),
        delta(1, "bad_signature"),
        delta(1, "rule"),
        started.elapsed()
    );
    assert_eq!(accepted, 0, "invalid entries were accepted");
    // A refused the gossiped one and both pulled ones; B only the pulled ones, so A did
    // not relay the gossiped entry (B would have refused it, and cut A off).
    assert_eq!((delta(0, "bad_signature"), delta(0, "rule")), (2, 1));
    assert_eq!((delta(1, "bad_signature"), delta(1, "rule")), (1, 1));
    assert_eq!(
        count(&after[0], "refused_peers", "relayed an invalid entry"),
        1
    );
    assert_eq!(
        count(&after[1], "refused_peers", "relayed an invalid entry"),
        0
    );
    for (i, s) in after.iter().enumerate() {
        assert_eq!(
            count(s, "refused_peers", "sent 2 invalid entries"),
            1,
            "{s}"
        );
        assert!(!lists(s, &h1.id) && !lists(s, &h2.id), "{s}");
        assert!(lists(s, [&b_id, &a_id][i]), "A and B no longer peers: {s}");
        assert_eq!(s["pending"], 0, "{s}");
    }
    Ok(())
}

#[test]
fn an_oversized_sync_request_is_refused_and_the_node_keeps_serving() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    let mut config = net.rogue_config(&[0])?;
    config.max_frame_bytes = 8 * NODE_FRAME_BYTES;
    let mut h = net.spawn(config, SyncResponse::default())?;
    h.wait_admitted_by(&net.rt, &a_id)?;

    let height = LogHeight {
        author: [7; 32],
        incarnation: 1,
        seq: 1,
        tip: None,
    };
    let big = SyncRequest {
        heights: vec![height; 200_000],
        max_entries: 500,
        proofs: Vec::new(),
    };
    let size = big.encoded_len();
    assert!(size > NODE_FRAME_BYTES, "{size} bytes is not oversized");
    let sent = Instant::now();
    let refused = h.sync(&net.rt, a_id, big);
    let took = sent.elapsed();
    assert!(refused.is_err(), "an oversized request was answered");

    // The node cuts the sender off: an unreadable frame is a protocol violation.
    let refusals = |s: &Value| s["refused_peers"]["oversized sync frame"].as_u64();
    net.a.wait_log("oversized sync frame", WAIT)?;
    assert_eq!(refusals(&status(&net.a)?), Some(1));
    // And it still serves the others: A and B replicate both ways, and A answers a fresh
    // peer's ordinary pull with what it holds.
    let from_a = net.a.write(&report("After the big frame, from A"))?;
    net.b.wait_entries(&[hash(&from_a)], WAIT)?;
    let from_b = net.b.write(&report("After the big frame, from B"))?;
    net.a.wait_entries(&[hash(&from_b)], WAIT)?;
    let mut fresh = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    fresh.wait_admitted_by(&net.rt, &a_id)?;
    let pulled = fresh.sync(&net.rt, a_id, SyncRequest::default())?;
    assert!(
        !entries_of(&pulled).is_empty(),
        "A answered with no entries"
    );
    eprintln!(
        "oversized frame: {size} bytes refused in {took:?} ({}), sender cut off; a fresh peer then pulled {} entries; {:?}",
        refused.err().map(|e| e.to_string()).unwrap_or_default(),
        entries_of(&pulled).len(),
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_sync_request_flood_is_cut_off() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    let mut h = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    h.wait_admitted_by(&net.rt, &a_id)?;
    let ordinary = h.sync(&net.rt, a_id, SyncRequest::default())?;
    assert!(
        !entries_of(&ordinary).is_empty(),
        "A answered with no entries"
    );

    const FLOOD: usize = 200;
    let fired = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    {
        let _runtime = net.rt.enter();
        for _ in 0..FLOOD {
            let peer = h.net.clone();
            requests.spawn(async move { peer.sync(a_id, SyncRequest::default()).await });
        }
    }
    h.wait_gone(&net.rt, &a_id)?;
    let cut_off = fired.elapsed();
    refused_log(&mut net.a, &h.id, "request flood")?;
    let results = net.rt.block_on(requests.join_all());
    let answered = results.iter().filter(|r| r.is_ok()).count();

    let s = status(&net.a)?;
    assert_eq!(count(&s, "refused_peers", "request flood"), 1, "{s}");
    assert!(!lists(&s, &h.id), "the flooder is still listed: {s}");
    assert!(answered < FLOOD, "every flooded request was answered");

    // A still serves its API, B, and a newly admitted peer.
    let from_b = net.b.write(&report("After the flood, from B"))?;
    net.a.wait_entries(&[hash(&from_b)], WAIT)?;
    let from_a = net.a.write(&report("After the flood, from A"))?;
    net.b.wait_entries(&[hash(&from_a)], WAIT)?;
    let mut fresh = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    fresh.wait_admitted_by(&net.rt, &a_id)?;
    let pulled = fresh.sync(&net.rt, a_id, SyncRequest::default())?;
    assert!(
        !entries_of(&pulled).is_empty(),
        "A answered the new peer with no entries"
    );
    eprintln!(
        "flood: {FLOOD} concurrent sync requests, {answered} answered, flooder cut off after {cut_off:?}; {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn an_equivocation_sent_to_two_nodes_ends_with_both_holding_the_proof() -> Result<()> {
    let _serial = serial();
    let mut net = Net::start()?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    // Two entries of one log (same key, same incarnation) with the same seq.
    let incarnation = rand::random::<u32>() | 1;
    let fork = |title: &str| -> Result<SignedEntry> {
        let replica = Replica::new(net.charter.clone(), Limits::default());
        let command: Command = serde_json::from_value(report(title))?;
        let ulid = (u128::from(now_ms()) << 80) | u128::from(rand::random::<u64>());
        Ok(replica
            .prepare(&net.rogue_key, incarnation, &command, now_ms(), ulid.into())?
            .0)
    };
    let (one, two) = (fork("First branch")?, fork("Second branch")?);
    assert_eq!((one.entry.seq, two.entry.seq), (1, 1));
    assert_ne!(one.hash(), two.hash());
    // Each node pulls one branch from a peer that only it is connected to.
    let answer = |e: &SignedEntry| SyncResponse {
        entries: vec![serde_bytes::ByteBuf::from(e.bytes().to_vec())],
        proofs: Vec::new(),
        more: false,
        packed: None,
    };
    let mut to_a = net.spawn(net.rogue_config(&[0])?, answer(&one))?;
    let mut to_b = net.spawn(net.rogue_config(&[1])?, answer(&two))?;
    to_a.wait_admitted_by(&net.rt, &a_id)?;
    to_b.wait_admitted_by(&net.rt, &b_id)?;
    // A and B find the fork when they next sync with each other, and exchange the proof.
    net.a.wait_log("equivocation", Duration::from_secs(60))?;
    net.b.wait_log("equivocation", Duration::from_secs(60))?;
    for node in [&net.a, &net.b] {
        let s = status(node)?;
        let listed = s["equivocations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["state"] == net.rogue.as_str() && e["incarnation"] == incarnation && e["seq"] == 1
            });
        assert!(listed, "{} does not report {}: {s}", s["state"], net.rogue);
        // Neither branch counts.
        assert!(!holds(node, &one.hash().to_string())?);
        assert!(!holds(node, &two.hash().to_string())?);
    }
    eprintln!("equivocation by {} reported by both nodes", net.rogue);
    Ok(())
}

#[test]
fn a_sync_answer_over_the_batch_limit_cuts_the_peer_off() -> Result<()> {
    let _serial = serial();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    // 501 entries, one over the batch limit; the node counts them before decoding any.
    let answer = SyncResponse {
        entries: vec![serde_bytes::ByteBuf::from(vec![1u8; 8]); 501],
        proofs: Vec::new(),
        more: false,
        packed: None,
    };
    let mut h = net.spawn(net.rogue_config(&[0])?, answer)?;
    h.wait_admitted_by(&net.rt, &a_id)?;
    let line = refused_log(&mut net.a, &h.id, "sync batch over the limit")?;
    assert!(line.contains("sync batch over the limit"), "{line}");
    let s = status(&net.a)?;
    assert_eq!(
        count(&s, "refused_peers", "sync batch over the limit"),
        1,
        "{s}"
    );
    // The node goes on serving the others.
    let ack = net.b.write(&report("After the oversized batch"))?;
    net.a.wait_entries(&[hash(&ack)], WAIT)?;
    Ok(())
}
