//! Node certificates: the node's own, issued at start and renewed while it runs, and the
//! admission of peers by theirs.
//!
//! A certificate is valid for 30 days. The node checks its own on a timer and, once less
//! than a third of that is left, issues a new one and hands it to the network, which
//! presents it to every peer on the connection it already has. Both the renewal and the
//! admission follow the injected [`Clock`], never the wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::charter::Charter;
use crate::identity::{NodeCertificate, PublicKey, Scope, SecretKey};
use crate::network::{self, Admit, Admitted, PeerId, Refusal};

use super::Clock;

/// How long a node certificate is valid from its issue.
pub const CERTIFICATE_VALIDITY_MS: u64 = 30 * 24 * 3600 * 1000;

/// How often a running node checks whether its certificate is due for renewal.
pub const RENEWAL_CHECK: Duration = Duration::from_secs(60);

/// Whether a certificate that expires at `not_after_ms` is due for renewal at `now_ms`:
/// once less than a third of its validity is left, which leaves ten days for it to reach
/// every peer.
pub fn renewal_due(not_after_ms: u64, now_ms: u64) -> bool {
    not_after_ms.saturating_sub(now_ms) < CERTIFICATE_VALIDITY_MS / 3
}

/// Issues this node's certificates with the national key: the key the node signs with
/// now, which a rotation replaces.
pub(crate) struct Certifier {
    key: tokio::sync::watch::Receiver<Arc<SecretKey>>,
    network: String,
    scope: Scope,
    peer_id: Vec<u8>,
}

impl Certifier {
    pub(crate) fn new(
        key: tokio::sync::watch::Receiver<Arc<SecretKey>>,
        charter: &Charter,
        peer: &PeerId,
    ) -> Self {
        Self {
            key,
            network: charter.network.clone(),
            scope: charter.scope(),
            peer_id: peer.to_bytes(),
        }
    }

    /// A certificate valid for [`CERTIFICATE_VALIDITY_MS`] from `now_ms`.
    pub(crate) fn issue(&self, now_ms: u64) -> NodeCertificate {
        let key = self.key.borrow().clone();
        NodeCertificate::issue(
            &key,
            &self.network,
            &self.scope,
            &self.peer_id,
            now_ms.saturating_add(CERTIFICATE_VALIDITY_MS),
        )
    }
}

impl std::fmt::Debug for Certifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certifier")
            .field("issuer", &self.key.borrow().public())
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// Renews the node certificate, which expires at `not_after_ms`, whenever a check every
/// `every` finds it due; runs until `shutdown` or until the network stops.
pub(crate) async fn renew(
    certifier: Certifier,
    net: network::Handle,
    clock: Arc<dyn Clock>,
    mut not_after_ms: u64,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut check = tokio::time::interval(every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = check.tick() => {
                let now = clock.now_ms();
                if !renewal_due(not_after_ms, now) {
                    continue;
                }
                let certificate = certifier.issue(now);
                if net.renew_certificate(certificate.encode()).await.is_err() {
                    break;
                }
                tracing::info!(
                    old_until_ms = not_after_ms,
                    until_ms = certificate.not_after_ms,
                    "node certificate renewed"
                );
                not_after_ms = certificate.not_after_ms;
            }
        }
    }
}

/// Who may certify nodes, as the actor last told it: the participants of the charter in
/// force by their keys, the keys rotations gave them, and the keys revoked.
#[derive(Debug)]
pub struct Trust {
    pub(crate) charter: Arc<Charter>,
    /// Keys that rotations introduced, with their state.
    pub(crate) rotated: BTreeMap<PublicKey, String>,
    /// Keys that an amendment revoked: their certificates admit no one.
    pub(crate) revoked: BTreeSet<PublicKey>,
    /// Nodes (peer ids) whose certificates these states revoked.
    pub(crate) revoked_nodes: BTreeMap<String, BTreeSet<String>>,
}

impl Trust {
    /// Trust in the participants of `charter` by their keys alone.
    #[cfg(test)]
    pub(crate) fn of(charter: Arc<Charter>) -> Trust {
        Trust {
            charter,
            rotated: BTreeMap::new(),
            revoked: BTreeSet::new(),
            revoked_nodes: BTreeMap::new(),
        }
    }

    /// Whether `state` revoked the certificates it issued to `peer`.
    pub(crate) fn node_revoked(&self, peer: &str, state: &str) -> bool {
        self.revoked_nodes
            .get(peer)
            .is_some_and(|states| states.contains(state))
    }

    /// The state that `issuer` certifies for.
    fn state_of(&self, issuer: &PublicKey) -> Option<&str> {
        self.charter
            .participant_by_key(issuer)
            .or_else(|| self.charter.participant(self.rotated.get(issuer)?))
            .map(|p| p.code.as_str())
    }
}

/// Admits peers whose node certificate is signed by a participant of the charter in
/// force, with its key or one a rotation gave it, unless that key is revoked.
pub(crate) struct Admission {
    pub(crate) charter: tokio::sync::watch::Receiver<Arc<Trust>>,
    pub(crate) clock: Arc<dyn Clock>,
}

const MALFORMED: Refusal = Refusal::deny("malformed node certificate");
/// Not deny-listed: a state that an amendment adds dials nodes that may not hold the
/// amendment yet, and must get in once they do. The refusal costs a lookup.
const REVOKED: Refusal = Refusal::deny("certificate issuer's key is revoked");
const NODE_REVOKED: Refusal = Refusal::deny("its state revoked this node's certificates");
const STRANGER: Refusal = Refusal::retry("certificate issuer is not a participant of the charter");

impl Admit for Admission {
    fn admit(
        &self,
        peer: &PeerId,
        certificate: &[u8],
        _charter_hash: &[u8; 32],
    ) -> Result<Admitted, Refusal> {
        let cert = NodeCertificate::decode(certificate).map_err(|_| MALFORMED)?;
        let trust = self.charter.borrow().clone();
        if trust.revoked.contains(&cert.issuer) {
            return Err(REVOKED);
        }
        // An issuer outside the charter is refused before any signature is checked: the
        // lookup costs nothing, and its key is compared with the charter's, not echoed.
        let state = trust.state_of(&cert.issuer).ok_or(STRANGER)?.to_owned();
        // A state revokes the certificates it issued to one node; it cannot touch another
        // state's nodes.
        if trust.node_revoked(&peer.to_string(), &state) {
            return Err(NODE_REVOKED);
        }
        let charter = &trust.charter;
        cert.verify(
            &charter.network,
            &charter.scope(),
            &peer.to_bytes(),
            self.now_ms(),
        )
        .map_err(|fault| {
            if fault.is_about_time() {
                Refusal::retry(fault.reason())
            } else {
                Refusal::deny(fault.reason())
            }
        })?;
        Ok(Admitted {
            state,
            until_ms: cert.not_after_ms,
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;

    use super::*;
    use crate::service::ManualClock;

    #[test]
    fn ten_thousand_bogus_network_names_make_a_handful_of_refusal_reasons() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(10);
        let member = SecretKey::generate(&mut rng);
        let stranger = SecretKey::generate(&mut rng);
        let today = time::macros::date!(2026 - 12 - 03);
        let states = [("LT".to_owned(), member.public(), Vec::new())];
        let charter = Charter::for_testnet("spocnet-test", &states, &[], today).expect("charter");
        let scope = charter.scope();
        let now_ms = 1_796_256_000_000;
        let admission = Admission {
            charter: tokio::sync::watch::channel(Arc::new(Trust::of(Arc::new(charter)))).1,
            clock: Arc::new(ManualClock::new(now_ms)),
        };
        let peer = PeerId::random();
        let mut reasons = BTreeSet::new();
        for i in 0..10_000 {
            let name = format!("bogus network {i} \u{1b}[31m");
            let issuer = if i % 2 == 0 { &member } else { &stranger };
            let mut cert =
                NodeCertificate::issue(issuer, &name, &scope, &peer.to_bytes(), now_ms + 1_000);
            if i % 3 == 0 {
                // Its signature no longer holds.
                cert.not_after_ms += 1;
            }
            let refused = admission
                .admit(&peer, &cert.encode(), &[0; 32])
                .expect_err("a bogus network is refused");
            assert!(!refused.reason.contains("bogus"), "{}", refused.reason);
            reasons.insert(refused.reason);
        }
        let genuine = NodeCertificate::issue(
            &member,
            "spocnet-test",
            &scope,
            &peer.to_bytes(),
            now_ms + 1_000,
        );
        assert!(admission.admit(&peer, &genuine.encode(), &[0; 32]).is_ok());
        // The same participant's certificate for a network of the same name with another
        // genesis charter (a staging network beside production) is refused.
        let staging = Charter::for_testnet("spocnet-test", &states, &["LT".to_owned()], today)
            .expect("charter");
        assert_ne!(staging.scope(), scope);
        let replayed = NodeCertificate::issue(
            &member,
            "spocnet-test",
            &staging.scope(),
            &peer.to_bytes(),
            now_ms + 1_000,
        );
        let refused = admission
            .admit(&peer, &replayed.encode(), &[0; 32])
            .expect_err("a certificate for another genesis is refused");
        assert_eq!(refused.reason, "certificate signature does not verify");
        assert_eq!(
            reasons,
            BTreeSet::from([
                "certificate is for another network",
                "certificate issuer is not a participant of the charter",
                "certificate signature does not verify",
            ])
        );
    }

    #[test]
    fn a_node_is_refused_when_its_own_state_revokes_it_or_its_key_is_revoked_and_not_otherwise() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let (lt, ie, rotated) = (
            SecretKey::generate(&mut rng),
            SecretKey::generate(&mut rng),
            SecretKey::generate(&mut rng),
        );
        let today = time::macros::date!(2026 - 12 - 03);
        let states = [
            ("LT".to_owned(), lt.public(), Vec::new()),
            ("IE".to_owned(), ie.public(), Vec::new()),
        ];
        let charter = Arc::new(Charter::for_testnet("net", &states, &[], today).expect("charter"));
        let now_ms = 1_796_256_000_000;
        let peer = PeerId::random();
        let cert = |key: &SecretKey| {
            NodeCertificate::issue(
                key,
                "net",
                &charter.scope(),
                &peer.to_bytes(),
                now_ms + 1_000,
            )
            .encode()
        };
        let admit = |trust: Trust, key: &SecretKey| {
            let admission = Admission {
                charter: tokio::sync::watch::channel(Arc::new(trust)).1,
                clock: Arc::new(ManualClock::new(now_ms)),
            };
            admission.admit(&peer, &cert(key), &[0; 32])
        };
        let trust = |revoked_by: &str| {
            let mut t = Trust::of(charter.clone());
            t.revoked_nodes
                .insert(peer.to_string(), BTreeSet::from([revoked_by.to_owned()]));
            t
        };
        // Another state's revocation does not touch LT's node.
        assert_eq!(admit(trust("IE"), &lt).expect("admitted").state, "LT");
        let refused = admit(trust("LT"), &lt).expect_err("LT revoked its node");
        assert!(refused.deny, "{}", refused.reason);
        // A key a rotation gave LT certifies for LT, until an amendment revokes it.
        let mut t = Trust::of(charter.clone());
        t.rotated.insert(rotated.public(), "LT".to_owned());
        assert_eq!(admit(t, &rotated).expect("admitted").state, "LT");
        let mut t = Trust::of(charter.clone());
        t.rotated.insert(rotated.public(), "LT".to_owned());
        t.revoked.insert(rotated.public());
        let refused = admit(t, &rotated).expect_err("a revoked key certifies no one");
        assert_eq!(refused.reason, "certificate issuer's key is revoked");
    }

    #[test]
    fn renewal_is_due_once_a_third_of_the_validity_is_left() {
        let issued = 1_796_083_200_000;
        let expiry = issued + CERTIFICATE_VALIDITY_MS;
        let twenty_days = 20 * 24 * 3600 * 1000;
        assert!(!renewal_due(expiry, issued));
        assert!(!renewal_due(expiry, issued + twenty_days));
        assert!(renewal_due(expiry, issued + twenty_days + 1));
        assert!(renewal_due(expiry, expiry + 1), "an expired one is due too");
    }
}
