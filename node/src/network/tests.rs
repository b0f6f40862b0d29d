//! Tests of the network actor with real swarms on 127.0.0.1.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::identity::{MAX_CERTIFICATE_VALIDITY_MS, NodeCertificate, SecretKey};
use crate::service::certificate::{Admission, CERTIFICATE_VALIDITY_MS, Certifier, renew};
use crate::service::{Clock, ManualClock};

const WAIT: Duration = Duration::from_secs(20);

/// Test certificates are state codes that never expire; `Some(reason)` refuses every peer.
struct Certificates(Option<&'static str>);

impl Admit for Certificates {
    fn admit(
        &self,
        _peer: &PeerId,
        certificate: &[u8],
        _charter_hash: &[u8; 32],
    ) -> Result<Admitted, Refusal> {
        if let Some(reason) = self.0 {
            return Err(Refusal::deny(reason));
        }
        let state = String::from_utf8(certificate.to_vec())
            .map_err(|_| Refusal::deny("unreadable certificate"))?;
        Ok(Admitted {
            state,
            until_ms: u64::MAX,
        })
    }

    fn now_ms(&self) -> u64 {
        0
    }
}

struct Node {
    handle: Handle,
    events: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
    address: Multiaddr,
    id: PeerId,
    cancel: CancellationToken,
}

fn config(state: &str, refuse: Option<&'static str>, dial: Option<&Node>) -> Config {
    let admission = Arc::new(Certificates(refuse));
    let mut config = Config::new(
        Keypair::generate_ed25519(),
        "test",
        state.as_bytes().to_vec(),
        [1; 32],
        admission,
    );
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid address")];
    config.dial = dial
        .map(|node| vec![node.address.clone()])
        .unwrap_or_default();
    config
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    timeout(WAIT, future).await.expect("timed out")
}

/// Waits for the first event `pick` accepts, dropping the others.
async fn next<T>(
    events: &mut mpsc::Receiver<Event>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    within(async {
        loop {
            if let Some(found) = pick(events.recv().await.expect("network running")) {
                return found;
            }
        }
    })
    .await
}

async fn start(config: Config) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let cancel = CancellationToken::new();
    let (handle, mut events, task) = spawn(config, cancel.clone()).expect("network starts");
    let address = next(&mut events, |event| match event {
        Event::Listening { address } => Some(address),
        _ => None,
    })
    .await;
    let id = handle.local_peer_id();
    Node {
        handle,
        events,
        task,
        address,
        id,
        cancel,
    }
}

async fn admitted(node: &mut Node, peer: PeerId) -> String {
    next(&mut node.events, |event| match event {
        Event::PeerAdmitted { peer: p, state } if p == peer => Some(state),
        _ => None,
    })
    .await
}

async fn refused(node: &mut Node, peer: PeerId) -> &'static str {
    next(&mut node.events, |event| match event {
        Event::PeerRefused { peer: p, reason } if p == peer => Some(reason),
        _ => None,
    })
    .await
}

/// Two admitted nodes: `b` dials `a`, and each admits the other as the state `states` gives.
async fn pair(a: Config, b: impl FnOnce(&Node) -> Config, states: [&str; 2]) -> (Node, Node) {
    let mut a = start(a).await;
    let mut b = start(b(&a)).await;
    assert_eq!(admitted(&mut a, b.id).await, states[1]);
    assert_eq!(admitted(&mut b, a.id).await, states[0]);
    (a, b)
}

/// Wanted logs in a request of `kib` KiB: each takes about a tenth of a KiB.
const WANTED_PER_KIB: usize = 10;

/// Answers every sync request: `max_entries` entries of as many KiB as the request.
fn serve(mut events: mpsc::Receiver<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::SyncRequested { request, reply, .. } = event {
                let kib = request.wanted.len() / WANTED_PER_KIB;
                let entry = ByteBuf::from(vec![7; 1024 * kib]);
                let count = usize::try_from(request.max_entries).expect("small");
                reply
                    .send(SyncResponse {
                        entries: vec![entry; count],
                        ..SyncResponse::default()
                    })
                    .await;
            }
        }
    })
}

/// A request of about `kib` KiB.
fn request(max_entries: u32, kib: usize) -> SyncRequest {
    let item = crate::reconcile::Item {
        log: crate::reconcile::Key([3; 36]),
        seq: 42,
        tip: [9; 32],
        proven: false,
    };
    SyncRequest {
        ranges: Vec::new(),
        wanted: vec![item; kib * WANTED_PER_KIB],
        max_entries,
        stream: None,
        time_ms: None,
    }
}

#[tokio::test]
async fn admitted_peers_sync_and_gossip() {
    let first = config("AA", None, None);
    let keypair = first.keypair.clone();
    let (mut a, mut b) = pair(first, |a| config("BB", None, Some(a)), ["AA", "BB"]).await;

    let sync = tokio::spawn({
        let handle = b.handle.clone();
        let a = a.id;
        async move { handle.sync(a, request(2, 1)).await }
    });
    let (state, asked, reply) = next(&mut a.events, |event| match event {
        Event::SyncRequested {
            peer,
            state,
            request,
            reply,
        } if peer == b.id => Some((state, request, reply)),
        _ => None,
    })
    .await;
    assert_eq!(state, "BB");
    assert_eq!(asked, request(2, 1));
    let answer = SyncResponse {
        entries: vec![ByteBuf::from(b"entry".to_vec())],
        more: true,
        ..SyncResponse::default()
    };
    reply.send(answer.clone()).await;
    assert_eq!(within(sync).await.expect("task").expect("sync"), answer);

    // Publishing before `a` has seen `b` subscribe gossips to nobody, so retry until it arrives.
    let entry = b"gossiped entry".to_vec();
    let mut delivered = None;
    for _ in 0..40 {
        a.handle.publish(entry.clone()).await.expect("publish");
        let gossip = next(&mut b.events, |event| match event {
            Event::Gossip {
                source,
                message_id,
                data,
            } => Some((source, message_id, data)),
            _ => None,
        });
        if let Ok(found) = timeout(Duration::from_millis(500), gossip).await {
            delivered = Some(found);
            break;
        }
    }
    let (source, message_id, data) = delivered.expect("gossip delivered");
    assert_eq!((source, data), (a.id, entry));
    b.handle
        .report_gossip(message_id, source, Acceptance::Accept)
        .await
        .expect("report");

    let peers = a.handle.peers().await.expect("peers");
    assert_eq!(peers.len(), 1);
    assert!(peers[0].admitted && peers[0].peer == b.id && peers[0].state.as_deref() == Some("BB"));
    assert!(peers[0].connected_since_ms > 0);
    let listening = a.handle.listen_addrs().await.expect("listen addresses");
    assert!(listening.contains(&a.address));
    assert_eq!(a.handle.stats().await.expect("stats").requests_served, 1);

    a.handle.shutdown().await;
    within(a.task).await.expect("actor joins");
    assert!(matches!(a.handle.peers().await, Err(Error::Stopped)));
    next(&mut b.events, |event| {
        matches!(event, Event::PeerGone { peer } if peer == a.id).then_some(())
    })
    .await;

    // `b` re-dials the charter address and admits `a` again once it is back.
    let mut again = config("AA", None, None);
    again.keypair = keypair;
    again.listen = vec![a.address.clone()];
    let mut a = start(again).await;
    assert_eq!(admitted(&mut b, a.id).await, "AA");
    assert_eq!(admitted(&mut a, b.id).await, "BB");
    b.handle.shutdown().await;
    within(b.task).await.expect("actor joins");
}

#[tokio::test]
async fn charters_that_differ_only_in_addresses_admit_each_other() {
    let of = |state: &str, genesis: u8, hash: u8, dial: Option<&Node>| {
        let mut config = config(state, None, dial);
        config.genesis = Some([genesis; 32]);
        config.charter_hash = [hash; 32];
        config
    };
    let mut a = start(of("AA", 7, 1, None)).await;
    // Another charter hash, the same genesis: a node whose charter moved an address.
    let moved = start(of("BB", 7, 2, Some(&a))).await;
    assert_eq!(admitted(&mut a, moved.id).await, "BB");
    // A node that gives no genesis is compared by its charter hash.
    let older = start(config("CC", None, Some(&a))).await;
    assert_eq!(admitted(&mut a, older.id).await, "CC");
    // Another genesis is another network, whatever its charter hash.
    let other = start(of("DD", 8, 1, Some(&a))).await;
    assert_eq!(refused(&mut a, other.id).await, "different charter hash");
}

#[tokio::test]
async fn refused_peers_get_nothing() {
    let mut a = start(config("AA", None, None)).await;
    let mut b = start(config("BB", Some("certificate revoked"), Some(&a))).await;
    let mut other_charter = config("CC", None, Some(&a));
    other_charter.charter_hash = [2; 32];
    let c = start(other_charter).await;

    assert_eq!(refused(&mut b, a.id).await, "certificate revoked");
    assert_eq!(refused(&mut a, c.id).await, "different charter hash");
    assert!(matches!(
        b.handle.sync(a.id, request(1, 0)).await,
        Err(Error::NotAdmitted { .. })
    ));
    // `a` may have admitted `b` already, but `b` refuses it and its requests.
    assert!(a.handle.sync(b.id, request(1, 0)).await.is_err());
    assert!(a.handle.stats().await.expect("stats").refused_peers >= 1);
    assert!(matches!(
        c.handle.sync(a.id, request(1, 0)).await,
        Err(Error::NotAdmitted { .. })
    ));

    // Refused peers stay out: `b` re-dials `a` and is dropped by its own deny list.
    let peers = b.handle.peers().await.expect("peers");
    assert!(peers.iter().all(|p| !p.admitted));
    // Cancelling the token stops the actor as well as a shutdown does.
    for node in [a, b, c] {
        node.cancel.cancel();
        within(node.task).await.expect("actor joins");
        assert!(matches!(node.handle.stats().await, Err(Error::Stopped)));
    }
}

#[tokio::test]
async fn request_flood_cuts_the_peer_off() {
    let mut slow = config("AA", None, None);
    slow.max_requests_per_second = 2;
    let (mut a, b) = pair(slow, |a| config("BB", None, Some(a)), ["AA", "BB"]).await;

    let flood: Vec<_> = (0..30)
        .map(|_| {
            let handle = b.handle.clone();
            let a = a.id;
            tokio::spawn(async move { handle.sync(a, request(1, 0)).await })
        })
        .collect();
    let reason = next(&mut a.events, |event| match event {
        Event::SyncRequested { .. } => None,
        Event::PeerRefused { peer, reason } if peer == b.id => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, "request flood");
    for request in flood {
        assert!(
            within(request).await.expect("task").is_err(),
            "unanswered requests fail"
        );
    }
    let stats = a.handle.stats().await.expect("stats");
    assert_eq!((stats.flood_cutoffs, stats.refused_peers), (1, 1));
    // The bucket holds two seconds of requests: the next two are refused over the rate,
    // and the third refusal in that second makes it a flood. The requests sent after it
    // may or may not reach the node before the connection closes.
    assert!(stats.requests_refused >= 3, "{stats:?}");
    assert!(matches!(
        b.handle.sync(a.id, request(1, 0)).await,
        Err(Error::NotAdmitted { .. })
    ));
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let mut small = config("AA", None, None);
    small.max_frame_bytes = 64 * 1024;
    let (a, b) = pair(
        small,
        |a| {
            let mut large = config("BB", None, Some(a));
            large.max_frame_bytes = 1024 * 1024;
            large
        },
        ["AA", "BB"],
    )
    .await;
    let server = serve(a.events);

    // A 100 KiB response exceeds the server's limit: it refuses to send it.
    let too_long = b.handle.sync(a.id, request(100, 1)).await;
    assert!(matches!(too_long, Err(Error::Sync { .. })), "{too_long:?}");
    // A 2 MiB request exceeds our own limit and is never sent.
    let local = b.handle.sync(a.id, request(1, 2048)).await;
    assert!(
        matches!(
            local,
            Err(Error::TooLarge {
                limit: 1_048_576,
                ..
            })
        ),
        "{local:?}"
    );
    let served = b
        .handle
        .sync(a.id, request(3, 2))
        .await
        .expect("served after refusals");
    assert_eq!(served.entries.len(), 3);
    assert_eq!(served.entries[0].len(), 2048);

    // A 100 KiB request passes our limit but not the server's: it cannot read it, and
    // cuts the sender off.
    let too_big = b.handle.sync(a.id, request(1, 100)).await;
    assert!(matches!(too_big, Err(Error::Sync { .. })), "{too_big:?}");
    let stats = a.handle.stats().await.expect("stats");
    assert_eq!(
        (
            stats.requests_served,
            stats.requests_refused,
            stats.refused_peers
        ),
        (1, 2, 1)
    );
    assert!(b.handle.sync(a.id, request(1, 0)).await.is_err());
    a.handle.shutdown().await;
    within(a.task).await.expect("actor joins");
    within(server).await.expect("server stops with the actor");
}

#[tokio::test]
async fn silent_peers_are_refused_after_the_admission_timeout() {
    use libp2p::futures::StreamExt as _;

    let mut a = start(config("AA", None, None)).await;
    // A bare libp2p node that connects but never speaks the admission protocol.
    let mut silent = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            Default::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("transport")
        .with_behaviour(|_| libp2p::ping::Behaviour::default())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(WAIT))
        .build();
    let id = *silent.local_peer_id();
    let (redial, mut dials) = mpsc::channel::<libp2p::Multiaddr>(1);
    silent.dial(a.address.clone()).expect("dial");
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = silent.select_next_some() => {}
                Some(address) = dials.recv() => {
                    silent.dial(address).expect("dial");
                }
            }
        }
    });
    assert_eq!(refused(&mut a, id).await, "no admission in time");
    let peers = a.handle.peers().await.expect("peers");
    assert!(peers.iter().all(|p| p.peer != id || !p.admitted));
    // A late admission is no sign of hostility: the peer is not deny-listed, so its next
    // connection is let in and given its own ten seconds (a deny-listed peer's connection
    // would be refused before any of that).
    redial.send(a.address.clone()).await.expect("driver");
    assert_eq!(refused(&mut a, id).await, "no admission in time");
    driver.abort();
}

const DAY_MS: u64 = 24 * 3600 * 1000;

/// How often the nodes of these tests check whether their certificate is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_millis(50);

/// That `by` admitted (or re-admitted) `peer` on a certificate that expires at `until_ms`.
#[derive(Debug, PartialEq, Eq)]
struct Verified {
    by: PeerId,
    peer: PeerId,
    until_ms: u64,
}

/// A node's real admission, which reports every certificate it admits to the test.
struct Watched {
    by: PeerId,
    admission: Admission,
    reports: mpsc::Sender<Verified>,
}

impl Admit for Watched {
    fn admit(
        &self,
        peer: &PeerId,
        certificate: &[u8],
        charter_hash: &[u8; 32],
    ) -> Result<Admitted, Refusal> {
        let verdict = self.admission.admit(peer, certificate, charter_hash);
        if let Ok(admitted) = &verdict {
            let report = Verified {
                by: self.by,
                peer: *peer,
                until_ms: admitted.until_ms,
            };
            // The test drains the reports as it waits; a lost one fails it, never passes it.
            let _ = self.reports.try_send(report);
        }
        verdict
    }

    fn now_ms(&self) -> u64 {
        self.admission.now_ms()
    }
}

/// A network of Ireland and Lithuania with real node certificates, on a clock that the
/// test moves.
struct Certified {
    charter: Arc<crate::charter::Charter>,
    keys: std::collections::BTreeMap<String, Arc<SecretKey>>,
    clock: Arc<ManualClock>,
    reports: mpsc::Sender<Verified>,
    verified: mpsc::Receiver<Verified>,
}

impl Certified {
    fn new() -> Self {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let today = time::macros::date!(2026 - 12 - 01);
        let (charter, keys) =
            crate::testnet::fixture(&["IE", "LT"], &["IE", "LT"], today, &mut rng)
                .expect("fixture");
        let (reports, verified) = mpsc::channel(256);
        Self {
            charter: Arc::new(charter),
            keys: keys.into_iter().map(|(c, k)| (c, Arc::new(k))).collect(),
            clock: Arc::new(ManualClock::new(1_796_083_200_000)),
            reports,
            verified,
        }
    }

    fn certifier(&self, state: &str, peer: &PeerId) -> Certifier {
        Certifier::new(
            tokio::sync::watch::channel(self.keys[state].clone()).1,
            &self.charter,
            peer,
        )
    }

    /// The configuration of a node of `state` that dials `dial`, with a certificate issued
    /// now and real admission.
    fn config_of(&self, state: &str, keypair: Keypair, dial: Option<&Node>) -> Config {
        let mut config = config(state, None, dial);
        config.keypair = keypair;
        let by = config.keypair.public().to_peer_id();
        config.certificate = self
            .certifier(state, &by)
            .issue(self.clock.now_ms())
            .encode();
        config.admission = Arc::new(Watched {
            by,
            admission: Admission {
                charter: tokio::sync::watch::channel(std::sync::Arc::new(
                    crate::service::certificate::Trust::of(self.charter.clone()),
                ))
                .1,
                clock: self.clock.clone(),
            },
            reports: self.reports.clone(),
        });
        config
    }

    /// Runs the certificate renewal of a node whose certificate expires at `until_ms`.
    fn keep_renewed(&self, node: &Node, state: &str, until_ms: u64) {
        tokio::spawn(renew(
            self.certifier(state, &node.id),
            node.handle.clone(),
            self.clock.clone(),
            until_ms,
            RENEWAL_CHECK,
            node.cancel.clone(),
        ));
    }

    /// Waits until `by` admits `peer` on a certificate that expires at `until_ms`.
    async fn verified(&mut self, by: PeerId, peer: PeerId, until_ms: u64) {
        let wanted = Verified { by, peer, until_ms };
        within(async { while self.verified.recv().await.expect("reports") != wanted {} }).await;
    }
}

/// `a` refuses `b` for `reason` without deny-listing it: `b` dials again at once and `a`
/// refuses that connection itself. Once `b` renews its certificate, `a` admits it.
async fn refused_until_renewed(net: &Certified, a: &mut Node, b: &Node, reason: &str) {
    assert_eq!(refused(a, b.id).await, reason);
    assert_eq!(refused(a, b.id).await, reason);
    let renewed = net.certifier("LT", &b.id).issue(net.clock.now_ms());
    b.handle
        .renew_certificate(renewed.encode())
        .await
        .expect("renew");
    assert_eq!(admitted(a, b.id).await, "LT");
}

#[tokio::test]
async fn a_node_running_past_thirty_days_keeps_its_peers() {
    let mut net = Certified::new();
    let start_ms = net.clock.now_ms();
    let b_keypair = Keypair::generate_ed25519();
    let (mut a, mut b) = pair(
        net.config_of("IE", Keypair::generate_ed25519(), None),
        |a| net.config_of("LT", b_keypair.clone(), Some(a)),
        ["IE", "LT"],
    )
    .await;
    for (node, state) in [(&a, "IE"), (&b, "LT")] {
        net.keep_renewed(node, state, start_ms + CERTIFICATE_VALIDITY_MS);
    }
    let since = |peers: Vec<PeerInfo>| -> Vec<(PeerId, bool, u64)> {
        peers
            .into_iter()
            .map(|p| (p.peer, p.admitted, p.connected_since_ms))
            .collect()
    };
    let before = [
        since(a.handle.peers().await.expect("peers")),
        since(b.handle.peers().await.expect("peers")),
    ];

    // Four times 25 days: each time both certificates have 5 days left, both nodes renew
    // theirs, and each peer takes the other's new one on the connection it has.
    for _ in 0..4 {
        let now = net.clock.advance(25 * DAY_MS);
        net.verified(a.id, b.id, now + CERTIFICATE_VALIDITY_MS)
            .await;
        net.verified(b.id, a.id, now + CERTIFICATE_VALIDITY_MS)
            .await;
    }
    let after = [
        since(a.handle.peers().await.expect("peers")),
        since(b.handle.peers().await.expect("peers")),
    ];
    assert_eq!(after, before, "the first connection stands");
    assert_eq!(after[0], vec![(b.id, true, before[0][0].2)]);
    for node in [&mut a, &mut b] {
        assert_eq!(node.handle.stats().await.expect("stats").refused_peers, 0);
        while let Ok(event) = node.events.try_recv() {
            assert!(
                !matches!(event, Event::PeerGone { .. } | Event::PeerRefused { .. }),
                "{event:?}"
            );
        }
    }

    // The connection is cut: `b` stops, starts again with the same identity and dials `a`.
    // `b` checks `a`'s certificate at day 100, so `a` presents one it renewed (its first ran
    // out at day 30).
    b.cancel.cancel();
    within(b.task).await.expect("actor joins");
    next(&mut a.events, |event| {
        matches!(event, Event::PeerGone { peer } if peer == b.id).then_some(())
    })
    .await;
    let mut b = start(net.config_of("LT", b_keypair, Some(&a))).await;
    assert_eq!(admitted(&mut a, b.id).await, "LT");
    assert_eq!(admitted(&mut b, a.id).await, "IE");
}

#[tokio::test]
async fn a_peer_whose_certificate_expires_is_cut_off_and_let_back_in_once_renewed() {
    let mut net = Certified::new();
    let start_ms = net.clock.now_ms();
    let (mut a, b) = pair(
        net.config_of("IE", Keypair::generate_ed25519(), None),
        |a| net.config_of("LT", Keypair::generate_ed25519(), Some(a)),
        ["IE", "LT"],
    )
    .await;
    // Only `a` renews its certificate.
    net.keep_renewed(&a, "IE", start_ms + CERTIFICATE_VALIDITY_MS);
    let now = net.clock.advance(25 * DAY_MS);
    net.verified(b.id, a.id, now + CERTIFICATE_VALIDITY_MS)
        .await;
    net.clock.advance(6 * DAY_MS);
    refused_until_renewed(&net, &mut a, &b, "certificate has expired").await;
}

#[tokio::test]
async fn a_certificate_expiring_too_far_ahead_is_refused() {
    let net = Certified::new();
    let mut a = start(net.config_of("IE", Keypair::generate_ed25519(), None)).await;
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let mut far = net.config_of("LT", keypair, Some(&a));
    far.certificate = NodeCertificate::issue(
        &net.keys["LT"],
        &net.charter.network,
        &net.charter.scope(),
        &peer.to_bytes(),
        net.clock.now_ms() + MAX_CERTIFICATE_VALIDITY_MS + 1,
    )
    .encode();
    let b = start(far).await;
    refused_until_renewed(&net, &mut a, &b, "certificate expires too far ahead").await;
}
