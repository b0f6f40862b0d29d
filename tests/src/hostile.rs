//! The hostile peer: a real libp2p node built on `spoc_node::network`, with a valid node
//! certificate of a compromised participant, against real `spoc-node` processes.
//!
//! `Net` lays out a three-state testnet and starts the nodes of the first two states (A,
//! the Presidency, and B). The third state's node stays down; its national key issues
//! certificates for as many hostile peer ids as a scenario wants. A `Hostile` speaks
//! admission, gossip and pull sync exactly as a node does, and answers pulls as the
//! scenario says: with canned entries, or not at all. `tests/hostile.rs` and the `hostile`
//! scenario of `spoc-bench` use it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::RngCore;
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_node::docs::command::Command;
use spoc_node::identity::{NodeCertificate, SecretKey};
use spoc_node::log::SignedEntry;
use spoc_node::network::{
    self, Acceptance, Admit, Admitted, Config, Event, Keypair, Multiaddr, PeerId, Refusal,
    SyncRequest, SyncResponse,
};
use spoc_node::reconcile;
use spoc_node::replica::{Limits, Replica};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{NodeInfo, Proc, Testnet};

/// How long any one awaited outcome may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// Pulls a withholding peer holds unanswered at once; older ones are dropped (refused).
const MAX_WITHHELD: usize = 256;

/// How a hostile peer answers a node's pull: `None` withholds the answer.
pub type Answer = Arc<dyn Fn(&PeerId) -> Option<SyncResponse> + Send + Sync>;

pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The entries of a sync answer, plain or packed.
pub fn entries_of(r: &SyncResponse) -> Result<Vec<Vec<u8>>> {
    let mut all: Vec<Vec<u8>> = r.entries.iter().map(|e| e.to_vec()).collect();
    if let Some(packed) = &r.packed {
        all.extend(spoc_node::network::unpack(packed, 500, 8 << 20)?);
    }
    Ok(all)
}

pub fn hash(ack: &Value) -> String {
    ack["entry"].as_str().unwrap_or_default().to_owned()
}

pub fn report(title: &str) -> Value {
    json!({
        "command": "obstacle_report",
        "title": title,
        "type": "pragmatic",
        "description": "Requests wait in several queues.",
    })
}

pub fn fresh_keypair() -> Result<Keypair> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    Ok(network::keypair_from_seed(&seed)?)
}

pub fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

/// A counter of `/v1/status`, such as `rejected.bad_signature`; 0 when absent.
pub fn count(status: &Value, map: &str, key: &str) -> u64 {
    status[map][key].as_u64().unwrap_or(0)
}

pub fn peer_id(node: &Proc) -> Result<PeerId> {
    let s = status(node)?;
    let text = s["peer_id"].as_str().context("status has no peer_id")?;
    Ok(text.parse()?)
}

/// Whether the node lists `peer` among its admitted peers.
pub fn lists(status: &Value, peer: &PeerId) -> bool {
    let id = peer.to_string();
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["peer_id"].as_str() == Some(id.as_str()))
}

/// Whether the node holds the entry, answered at once.
pub fn holds(node: &Proc, entry: &str) -> Result<bool> {
    let (code, body) = node.get(&format!("/v1/wait?entries={entry}&timeout_ms=0"))?;
    ensure!(code == 200, "wait answered {code}: {body}");
    Ok(body["present"] == Value::Bool(true))
}

/// Waits for the node's log lines saying it refused and disconnected `peer`, and checks
/// the reason it gives; returns the network's line, which holds the details. The node
/// counts the refusal in its status right after the second line.
pub fn refused_log(node: &mut Proc, peer: &PeerId, reason: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    let id = peer.to_string();
    let mut first = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node
            .wait_log("peer refused", left)
            .with_context(|| format!("{} never refused {id}", node.api))?;
        if !line.contains(&id) {
            continue;
        }
        if !line.contains("peer refused and disconnected") {
            first.get_or_insert(line);
            continue;
        }
        let detailed = first.unwrap_or(line);
        ensure!(
            detailed.contains(reason),
            "refused for another reason than {reason:?}: {detailed}"
        );
        return Ok(detailed);
    }
}

/// Follows the node's log about `peer` until the node refuses it (returns the line that
/// reports the refusal) or the connection closes before (returns `None`). Needs the
/// network module's debug lines.
pub fn admission_outcome(node: &mut Proc, peer: &PeerId) -> Result<Option<String>> {
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
pub enum Seen {
    Admitted(PeerId),
    Gone(PeerId),
    Refused(PeerId, String),
    Gossip(PeerId, Vec<u8>),
    /// A node pulled from us, and got our canned answer.
    Served(PeerId),
    /// A node pulled from us, and got no answer.
    Withheld(PeerId),
}

/// Admits every node: the hostile peer wants in, it keeps nobody out.
#[derive(Debug)]
pub struct AdmitAll;

impl Admit for AdmitAll {
    fn admit(&self, _: &PeerId, _: &[u8], _: &[u8; 32]) -> Result<Admitted, Refusal> {
        Ok(Admitted {
            state: "node".to_owned(),
            until_ms: u64::MAX,
        })
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A hostile libp2p peer running on the test's runtime.
#[allow(missing_debug_implementations)]
pub struct Hostile {
    pub net: network::Handle,
    pub id: PeerId,
    pub seen: mpsc::Receiver<Seen>,
    pub history: Vec<Seen>,
    pub tasks: Vec<JoinHandle<()>>,
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
    pub fn wait(&mut self, rt: &Runtime, what: &str, pick: impl Fn(&Seen) -> bool) -> Result<()> {
        self.wait_within(rt, what, WAIT, pick)
    }

    /// The same, giving up after `timeout`.
    pub fn wait_within(
        &mut self,
        rt: &Runtime,
        what: &str,
        timeout: Duration,
        pick: impl Fn(&Seen) -> bool,
    ) -> Result<()> {
        if self.history.iter().any(&pick) {
            return Ok(());
        }
        let seen = &mut self.seen;
        let history = &mut self.history;
        rt.block_on(async {
            tokio::time::timeout(timeout, async {
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
            .map_err(|_| anyhow!("hostile peer: no {what} within {timeout:?}"))?
        })
        .with_context(|| format!("seen so far: {:?}", self.history))
    }

    /// Takes in what was seen so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(s) = self.seen.try_recv() {
            self.history.push(s);
        }
    }

    /// How many things seen so far `pick` accepts.
    pub fn history_of(&mut self, pick: impl Fn(&Seen) -> bool) -> usize {
        self.drain();
        self.history.iter().filter(|s| pick(s)).count()
    }

    pub fn gossip_from(&mut self, node: &PeerId) -> usize {
        self.history_of(|s| matches!(s, Seen::Gossip(p, _) if p == node))
    }

    /// Waits until `node` has admitted us: it pulls from every peer it admits.
    pub fn wait_admitted_by(&mut self, rt: &Runtime, node: &PeerId) -> Result<()> {
        self.wait(
            rt,
            "admission",
            |s| matches!(s, Seen::Admitted(p) if p == node),
        )?;
        self.wait(
            rt,
            "pull",
            |s| matches!(s, Seen::Served(p) | Seen::Withheld(p) if p == node),
        )
    }

    pub fn wait_gone(&mut self, rt: &Runtime, node: &PeerId) -> Result<()> {
        self.wait(
            rt,
            "disconnection",
            |s| matches!(s, Seen::Gone(p) if p == node),
        )
    }

    pub fn sync(&self, rt: &Runtime, node: PeerId, request: SyncRequest) -> Result<SyncResponse> {
        let net = self.net.clone();
        rt.block_on(async move {
            tokio::time::timeout(WAIT + Duration::from_secs(10), net.sync(node, request))
                .await
                .map_err(|_| anyhow!("sync did not end"))?
                .map_err(anyhow::Error::from)
        })
    }

    /// Pulls from `node` as a node that holds nothing would: reconciles, then asks for
    /// every log; returns the first batch of entries of each request.
    pub fn pull(&self, rt: &Runtime, node: PeerId) -> Result<Vec<Vec<u8>>> {
        let nothing = reconcile::Set::default();
        let mut session = reconcile::Session::new();
        let (mut entries, mut answers) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            session.receive(&nothing, &answers, true)?;
            let Some(ask) = session.ask(&nothing) else {
                return Ok(entries);
            };
            let response = self.sync(rt, node, spoc_node::service::sync::request_of(ask))?;
            entries.extend(entries_of(&response)?);
            answers = response.ranges;
        }
        bail!("the pull from {node} did not end")
    }

    pub fn publish(&self, rt: &Runtime, data: Vec<u8>) -> Result<()> {
        Ok(rt.block_on(self.net.publish(data))?)
    }
}

/// A running testnet: nodes A and B of three states, and what the hostile peer knows.
#[allow(missing_debug_implementations)]
pub struct Net {
    pub a: Proc,
    pub b: Proc,
    pub a_id: PeerId,
    pub b_id: PeerId,
    pub charter: Arc<Charter>,
    /// The third state, whose node is not started, and its national key.
    pub rogue: String,
    pub rogue_key: SecretKey,
    pub rt: Runtime,
    pub testnet: Testnet,
}

impl Net {
    /// Lays out the testnet, starts A and B, and waits until an entry written on A
    /// reaches B, so they are connected before any hostile peer shows up.
    pub fn start() -> Result<Net> {
        Net::start_with(&[])
    }

    /// The same, with extra environment variables for the nodes.
    pub fn start_with(env: &[(&str, &str)]) -> Result<Net> {
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
    pub fn certify(&self, keypair: &Keypair) -> Vec<u8> {
        NodeCertificate::issue(
            &self.rogue_key,
            &self.charter.network,
            &self.charter.scope(),
            &keypair.public().to_peer_id().to_bytes(),
            now_ms() + 3_600_000,
        )
        .encode()
    }

    /// A peer configuration for this network that dials the given nodes (0 is A, 1 is B).
    pub fn config(&self, keypair: Keypair, certificate: Vec<u8>, dial: &[usize]) -> Result<Config> {
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
    pub fn rogue_config(&self, dial: &[usize]) -> Result<Config> {
        let keypair = fresh_keypair()?;
        let certificate = self.certify(&keypair);
        self.config(keypair, certificate, dial)
    }

    /// Starts a hostile peer that answers every pull with `answer`.
    pub fn spawn(&self, config: Config, answer: SyncResponse) -> Result<Hostile> {
        self.spawn_with(config, Arc::new(move |_: &PeerId| Some(answer.clone())))
    }

    /// Starts a hostile peer that answers each node's pulls as `answer` says for that
    /// node; `None` withholds: the pull is held unanswered until the node gives up on it.
    pub fn spawn_with(&self, config: Config, answer: Answer) -> Result<Hostile> {
        let _runtime = self.rt.enter();
        let (net, mut events, actor) = network::spawn(config, Default::default())?;
        let id = net.local_peer_id();
        let (tx, seen) = mpsc::channel(4096);
        let reporter = net.clone();
        let pump = self.rt.spawn(async move {
            let mut withheld = std::collections::VecDeque::new();
            while let Some(event) = events.recv().await {
                let seen = match event {
                    Event::Listening { .. } | Event::IncomingDenied { .. } => continue,
                    Event::PeerAdmitted { peer, .. } => Seen::Admitted(peer),
                    Event::PeerGone { peer } => Seen::Gone(peer),
                    Event::PeerRefused { peer, reason } => Seen::Refused(peer, reason.to_owned()),
                    Event::Gossip {
                        source,
                        message_id,
                        data,
                    } => {
                        // Ignored, so never forwarded: this peer relays nothing.
                        let _ = reporter
                            .report_gossip(message_id, source, Acceptance::Ignore)
                            .await;
                        Seen::Gossip(source, data)
                    }
                    Event::SyncRequested { peer, reply, .. } => match answer(&peer) {
                        Some(response) => {
                            reply.send(response).await;
                            Seen::Served(peer)
                        }
                        None => {
                            if withheld.len() == MAX_WITHHELD {
                                withheld.pop_front();
                            }
                            withheld.push_back(reply);
                            Seen::Withheld(peer)
                        }
                    },
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
    pub fn forge(&self, title: &str) -> Result<SignedEntry> {
        let mut chain = self.forge_chain(title, 1)?;
        chain.pop().ok_or_else(|| anyhow!("nothing forged"))
    }

    /// `n` valid entries of one fresh rogue log (seq 1 to `n`), each an obstacle report.
    pub fn forge_chain(&self, title: &str, n: usize) -> Result<Vec<SignedEntry>> {
        let mut replica = Replica::new(self.charter.clone(), Limits::default());
        let incarnation = rand::random::<u32>() | 1;
        let mut chain = Vec::with_capacity(n);
        for i in 0..n {
            let command: Command = serde_json::from_value(report(&format!("{title} {i}")))?;
            let ulid = (u128::from(now_ms()) << 80) | u128::from(rand::random::<u64>());
            let (entry, _) = replica.prepare(
                &self.rogue_key,
                incarnation,
                &command,
                now_ms(),
                ulid.into(),
            )?;
            let taken = replica.ingest(vec![entry.clone()])?;
            ensure!(taken.accepted.len() == 1, "forged entry {i} not accepted");
            chain.push(entry);
        }
        Ok(chain)
    }

    /// A forged entry whose signature does not verify.
    pub fn bad_signature(&self, title: &str) -> Result<SignedEntry> {
        let mut bytes = self.forge(title)?.bytes().to_vec();
        let r = bytes.len() - 64;
        bytes[r] ^= 0x01;
        Ok(SignedEntry::decode(&bytes)?)
    }

    /// A well signed entry that breaks a rule: the rogue state's change, creating an
    /// obstacle, put in a document that A's state owns ("only A may create ...").
    pub fn foreign_owner(&self, title: &str) -> Result<SignedEntry> {
        let forged = self.forge(title)?;
        let mut entry = forged.entry.clone();
        let owner = &self.testnet.nodes[0].state;
        entry.doc = entry
            .doc
            .as_str()
            .replacen(&format!("/{}/", self.rogue), &format!("/{owner}/"), 1)
            .parse()?;
        ensure!(entry.doc.owner() == owner.as_str(), "doc id not rewritten");
        Ok(entry.sign(&self.rogue_key, &self.charter.scope()))
    }
}

/// What a sustained flood did to node A.
#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    /// Fresh certified identities that were admitted and then flooded.
    pub flooders: u64,
    /// Flooders that answered A's pull with invalid entries.
    pub invalid_answers: u64,
    /// Invalid entries sent in those answers.
    pub invalid_sent: u64,
    /// Sync requests fired by the request flooders.
    pub requests: u64,
    /// Of those, the ones A answered before it cut the flooder off.
    pub answered: u64,
    /// For each flooder, from its first hostile act until A disconnected it.
    pub cut_off: Vec<Duration>,
    /// Flooders that never got in: A had no slot for their handshake, or never pulled.
    pub starved: u64,
    /// Raw TCP connections opened to A's network port.
    pub dials: u64,
    /// Of those, the ones A closed while the flood lasted.
    pub dials_closed: u64,
}

/// What a flood needs to know, taken from a running [`Net`].
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct FloodPlan {
    network: String,
    charter_hash: [u8; 32],
    scope: spoc_node::identity::Scope,
    rogue_key: Arc<SecretKey>,
    target: PeerId,
    target_addr: Multiaddr,
    target_socket: std::net::SocketAddr,
    /// Entries with bad signatures and broken rules, for the invalid answers.
    invalid: Vec<Vec<u8>>,
}

/// How long a flooder tries to get admitted by A before the next one takes its place.
pub const FLOODER_ADMISSION: Duration = Duration::from_secs(5);

/// Sync requests each request flooder fires at once.
pub const FLOOD_REQUESTS: usize = 200;

/// Raw TCP connections the dial flood holds open at once.
pub const FLOOD_OPEN_DIALS: usize = 256;

impl Net {
    /// The plan of a flood against node A.
    pub fn flood_plan(&self) -> Result<FloodPlan> {
        let invalid = vec![
            self.bad_signature("Flooded, forged")?.bytes().to_vec(),
            self.foreign_owner("Flooded, for another owner")?
                .bytes()
                .to_vec(),
        ];
        let addr = &self.testnet.nodes[0].listen;
        let port: u16 = addr
            .rsplit('/')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in {addr}"))?;
        let key = SecretKey::load(&self.testnet.nodes[2].data_dir.join("national.key"), None)?;
        Ok(FloodPlan {
            network: self.charter.network.clone(),
            charter_hash: self.charter.hash(),
            scope: self.charter.scope(),
            rogue_key: Arc::new(key),
            target: self.a_id,
            target_addr: network::parse_addr(addr)?,
            target_socket: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            invalid,
        })
    }

    /// Starts a sustained flood against A on the net's runtime: `lanes` flooders at a
    /// time, each a fresh identity with a valid certificate that either floods sync
    /// requests or answers A's pull with invalid entries, and the next one as soon as A
    /// has cut it off; beside them a dial flood of raw TCP connections. It runs until
    /// [`Flood::stop`].
    pub fn flood(&self, lanes: usize) -> Result<Flood> {
        let plan = self.flood_plan()?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let progress = Arc::new(tokio::sync::watch::Sender::new(FloodReport::default()));
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let (plan, stop, progress) = (plan.clone(), stop.clone(), progress.clone());
            tasks.spawn_on(flood_lane(plan, lane, stop, progress), self.rt.handle());
        }
        tasks.spawn_on(
            dial_flood(plan.target_socket, stop, progress.clone()),
            self.rt.handle(),
        );
        Ok(Flood {
            stop: stop_tx,
            tasks,
            progress,
        })
    }
}

/// A running flood; [`Flood::stop`] ends it and joins every task.
#[allow(missing_debug_implementations)]
pub struct Flood {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<Result<()>>,
    progress: Arc<tokio::sync::watch::Sender<FloodReport>>,
}

impl Flood {
    /// What the flood has done so far.
    pub fn progress(&self) -> FloodReport {
        self.progress.borrow().clone()
    }

    /// Waits until what the flood has done satisfies `done`, or fails after `timeout`.
    pub fn wait_for(
        &mut self,
        rt: &Runtime,
        timeout: Duration,
        done: impl Fn(&FloodReport) -> bool,
    ) -> Result<FloodReport> {
        let mut progress = self.progress.subscribe();
        let tasks = &mut self.tasks;
        rt.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(timeout, progress.wait_for(|p| done(p))) => match r {
                    Ok(Ok(p)) => Ok(p.clone()),
                    _ => bail!("the flood did not get there within {timeout:?}"),
                },
                // A task that fails or panics ends the wait with its error.
                Some(done) = tasks.join_next() => match done {
                    Ok(Ok(())) => bail!("a flood task ended before it was stopped"),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow!("a flood task panicked: {e}")),
                },
            }
        })
        .with_context(|| format!("flood so far: {:?}", self.progress()))
    }

    /// Stops the flood, waits for its tasks, and sums up what it did.
    pub fn stop(mut self, rt: &Runtime) -> Result<FloodReport> {
        let _ = self.stop.send(true);
        rt.block_on(async {
            while let Some(task) = self.tasks.join_next().await {
                task??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(self.progress())
    }
}

/// One lane of the flood: flooder after flooder until told to stop.
async fn flood_lane(
    plan: FloodPlan,
    lane: usize,
    stop: tokio::sync::watch::Receiver<bool>,
    progress: Arc<tokio::sync::watch::Sender<FloodReport>>,
) -> Result<()> {
    // Each lane alternates the two kinds, starting with its own: even lanes flood
    // requests first, odd lanes answer with invalid entries first.
    let mut round = lane;
    while !*stop.borrow() {
        flood_once(&plan, round % 2 == 1, &progress)
            .await
            .with_context(|| format!("flooder {round} of lane {lane}"))?;
        round += 1;
    }
    Ok(())
}

/// One flooder, from its admission by A until A cuts it off.
async fn flood_once(
    plan: &FloodPlan,
    invalid: bool,
    progress: &tokio::sync::watch::Sender<FloodReport>,
) -> Result<()> {
    let keypair = fresh_keypair()?;
    let certificate = NodeCertificate::issue(
        &plan.rogue_key,
        &plan.network,
        &plan.scope,
        &keypair.public().to_peer_id().to_bytes(),
        now_ms() + 3_600_000,
    )
    .encode();
    let mut config = Config::new(
        keypair,
        plan.network.clone(),
        certificate,
        plan.charter_hash,
        Arc::new(AdmitAll),
    );
    config.dial = vec![plan.target_addr.clone()];
    let (net, mut events, actor) = network::spawn(config, Default::default())?;
    let target = plan.target;
    let answer = if invalid {
        SyncResponse {
            entries: plan.invalid.iter().cloned().map(Into::into).collect(),
            ..SyncResponse::default()
        }
    } else {
        SyncResponse::default()
    };
    let mut fired: Option<Instant> = None;
    let admit_by = tokio::time::Instant::now() + FLOODER_ADMISSION;
    let outcome = async {
        let mut requests = tokio::task::JoinSet::new();
        loop {
            // Until A pulls from it, the flooder waits for admission; then for its cut-off.
            let deadline = fired.map_or(admit_by, |f| tokio::time::Instant::from_std(f) + WAIT);
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => bail!("the flooder's network stopped"),
                Err(_) => return Ok(None),
            };
            match event {
                // A pulls from every peer it admits: its first pull says the flood can
                // start (requests sent before A's admission would only be refused).
                Event::SyncRequested { peer, reply, .. } => {
                    reply.send(answer.clone()).await;
                    if peer != target || fired.is_some() {
                        continue;
                    }
                    fired = Some(Instant::now());
                    if invalid {
                        progress.send_modify(|p| {
                            p.invalid_answers += 1;
                            p.invalid_sent += plan.invalid.len() as u64;
                        });
                    } else {
                        for _ in 0..FLOOD_REQUESTS {
                            let net = net.clone();
                            requests.spawn(async move {
                                net.sync(target, SyncRequest::default()).await.is_ok()
                            });
                        }
                        progress.send_modify(|p| p.requests += FLOOD_REQUESTS as u64);
                    }
                }
                Event::Gossip {
                    source, message_id, ..
                } => {
                    let _ = net
                        .report_gossip(message_id, source, Acceptance::Ignore)
                        .await;
                }
                Event::PeerGone { peer } | Event::PeerRefused { peer, .. } if peer == target => {
                    let Some(fired) = fired else {
                        bail!("A let the flooder go before it flooded");
                    };
                    let cut_off = fired.elapsed();
                    let answered = requests.join_all().await;
                    let answered = answered.into_iter().filter(|ok| *ok).count() as u64;
                    return Ok(Some((cut_off, answered)));
                }
                _ => {}
            }
        }
    }
    .await;
    net.shutdown().await;
    let _ = actor.await;
    let (cut_off, answered) = match outcome? {
        Some(done) => done,
        // The dial flood holds A's slots for incoming handshakes: a flooder that could not
        // get in before its deadline never flooded.
        None if fired.is_none() => {
            progress.send_modify(|p| p.starved += 1);
            return Ok(());
        }
        None => bail!("A did not cut the flooder off within {WAIT:?}"),
    };
    progress.send_modify(|p| {
        p.flooders += 1;
        p.answered += answered;
        p.cut_off.push(cut_off);
    });
    Ok(())
}

/// Opens raw TCP connections to `target` and holds up to [`FLOOD_OPEN_DIALS`] of them,
/// each sending a few garbage bytes where a Noise handshake should be; a connection the
/// node closes is replaced.
async fn dial_flood(
    target: std::net::SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
    progress: Arc<tokio::sync::watch::Sender<FloodReport>>,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut open = tokio::task::JoinSet::new();
    // Paced, so that the flood does not use up the machine's ephemeral ports.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(done) = open.join_next(), if !open.is_empty() => {
                if done.unwrap_or(false) {
                    progress.send_modify(|p| p.dials_closed += 1);
                }
            }
            _ = pace.tick(), if open.len() < FLOOD_OPEN_DIALS => {
                let Ok(mut socket) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                progress.send_modify(|p| p.dials += 1);
                open.spawn(async move {
                    let _ = socket.write_all(&[0x5a; 64]).await;
                    let mut buf = [0u8; 256];
                    // The node closing the connection ends the read: 0 bytes or an error.
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return true,
                            Ok(_) => {}
                        }
                    }
                });
            }
        }
    }
    open.shutdown().await;
    Ok(())
}
