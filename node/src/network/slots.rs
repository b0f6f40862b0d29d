//! Incoming connection slots: who may hold a connection to us before it is admitted.
//!
//! An outsider with no certificate can still complete the Noise handshake, with as many
//! peer ids as it likes, and stay silent until the admission timeout cuts it off. This
//! module keeps such connections from taking the slots that participants need:
//!
//! - Addresses of the charter (the IPs of the nodes we dial) are **reserved**: their
//!   handshakes and unadmitted connections count in a pool of their own, which no one else
//!   can fill.
//! - From any other address, at most `pending` handshakes and `unadmitted` connections
//!   not yet admitted are open at once, and at most `per_address` of both from one IPv4
//!   address or IPv6 /64 network.
//! - An address whose connections keep failing (a handshake that fails, a connection that
//!   closes before its admission) is refused outright, for a time that doubles with each
//!   failure after the first few, up to [`BAN_CAP`]. An admission from it clears its record.
//!
//! Admitted connections leave these pools; the total and incoming limits of
//! `connection_limits` bound them. `State` is IO-free and takes the time as an argument;
//! `Behaviour` plugs it into the swarm.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenError, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// Failures an address may have before it is refused.
const FREE_FAILURES: u32 = 3;
/// The first refusal of an address that keeps failing; each further failure doubles it.
pub const BAN_START: Duration = Duration::from_secs(10);
/// The longest refusal.
pub const BAN_CAP: Duration = Duration::from_secs(15 * 60);
/// An address with no failure for this long starts afresh.
const FORGET: Duration = Duration::from_secs(60 * 60);
/// Addresses whose failures are remembered at once.
const MAX_ADDRESSES: usize = 4096;

/// The slots, from [`super::Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes from unreserved addresses at once.
    pub pending: u32,
    /// Connections from unreserved addresses that are established but not yet admitted.
    pub unadmitted: u32,
    /// Handshakes and connections (admitted or not) from one unreserved address.
    pub per_address: u32,
    /// Handshakes and unadmitted connections from the reserved addresses together.
    pub reserved: u32,
}

/// Why an incoming connection was refused. The labels are a fixed set: they become keys of
/// the status and labels of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum Denial {
    #[error("address refused after repeated failures")]
    Banned,
    #[error("too many handshakes")]
    Handshakes,
    #[error("too many unadmitted connections")]
    Unadmitted,
    #[error("too many connections from one address")]
    PerAddress,
    #[error("too many connections from charter addresses")]
    Reserved,
}

impl Denial {
    pub const ALL: [Denial; 5] = [
        Denial::Banned,
        Denial::Handshakes,
        Denial::Unadmitted,
        Denial::PerAddress,
        Denial::Reserved,
    ];

    /// The label of the status and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Banned => "address refused after repeated failures",
            Denial::Handshakes => "too many handshakes",
            Denial::Unadmitted => "too many unadmitted connections",
            Denial::PerAddress => "too many connections from one address",
            Denial::Reserved => "too many connections from charter addresses",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Handshake,
    Unadmitted,
    Admitted,
    /// Refused once established; the swarm closes it.
    Refused,
}

#[derive(Debug)]
struct Connection {
    ip: IpAddr,
    reserved: bool,
    stage: Stage,
    peer: Option<PeerId>,
}

/// The failures of one address.
#[derive(Debug)]
struct Record {
    failures: u32,
    last: Instant,
    refused_until: Option<Instant>,
}

/// The slots' bookkeeping. Every map is bounded: connections by the swarm's own limits
/// and these, addresses by [`MAX_ADDRESSES`].
#[derive(Debug)]
pub struct State {
    limits: Limits,
    reserved: HashSet<IpAddr>,
    connections: HashMap<ConnectionId, Connection>,
    per_address: HashMap<IpAddr, u32>,
    handshakes: u32,
    unadmitted: u32,
    reserved_open: u32,
    admitted: HashSet<PeerId>,
    records: HashMap<IpAddr, Record>,
    denied: [u64; Denial::ALL.len()],
}

impl State {
    pub fn new(limits: Limits, reserved: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            limits,
            reserved: reserved.into_iter().collect(),
            connections: HashMap::new(),
            per_address: HashMap::new(),
            handshakes: 0,
            unadmitted: 0,
            reserved_open: 0,
            admitted: HashSet::new(),
            records: HashMap::new(),
            denied: [0; Denial::ALL.len()],
        }
    }

    /// Reserves the pool for `reserved` in place of the addresses reserved before; the
    /// connections open now stay in the pool they were counted in until they close.
    pub fn set_reserved(&mut self, reserved: impl IntoIterator<Item = IpAddr>) {
        self.reserved = reserved.into_iter().collect();
    }

    /// A handshake begins from `ip`.
    pub fn handshake(&mut self, id: ConnectionId, ip: IpAddr, now: Instant) -> Result<(), Denial> {
        let reserved = self.reserved.contains(&ip);
        let verdict = if reserved {
            if self.reserved_open < self.limits.reserved {
                Ok(())
            } else {
                Err(Denial::Reserved)
            }
        } else if self.is_refused(&ip, now) {
            Err(Denial::Banned)
        } else if self.per_address.get(&ip).copied().unwrap_or(0) >= self.limits.per_address {
            Err(Denial::PerAddress)
        } else if self.handshakes >= self.limits.pending {
            Err(Denial::Handshakes)
        } else if self.unadmitted >= self.limits.unadmitted {
            // Its handshake would be wasted work: refused before it begins.
            Err(Denial::Unadmitted)
        } else {
            Ok(())
        };
        if let Err(denial) = verdict {
            self.denied[denial as usize] += 1;
            return Err(denial);
        }
        if reserved {
            self.reserved_open += 1;
        } else {
            self.handshakes += 1;
            *self.per_address.entry(ip).or_default() += 1;
        }
        self.connections.insert(
            id,
            Connection {
                ip,
                reserved,
                stage: Stage::Handshake,
                peer: None,
            },
        );
        Ok(())
    }

    /// The handshake of `id` completed: the connection is established with `peer`.
    pub fn established(&mut self, id: ConnectionId, peer: PeerId) -> Result<(), Denial> {
        let admitted = self.admitted.contains(&peer);
        let unadmitted = self.unadmitted;
        let Some(c) = self.connections.get_mut(&id) else {
            // Not an address we count (no IP in it).
            return Ok(());
        };
        if c.stage != Stage::Handshake {
            return Ok(());
        }
        c.peer = Some(peer);
        if c.reserved {
            // Stays in the reserved pool until admitted.
            c.stage = Stage::Unadmitted;
            if admitted {
                c.stage = Stage::Admitted;
                self.reserved_open -= 1;
            }
            return Ok(());
        }
        self.handshakes -= 1;
        if admitted {
            c.stage = Stage::Admitted;
        } else if unadmitted >= self.limits.unadmitted {
            c.stage = Stage::Refused;
            self.denied[Denial::Unadmitted as usize] += 1;
            return Err(Denial::Unadmitted);
        } else {
            c.stage = Stage::Unadmitted;
            self.unadmitted += 1;
        }
        Ok(())
    }

    /// `peer` was admitted: its connections leave the unadmitted pools, its later ones skip
    /// them, and its address starts afresh.
    pub fn admitted(&mut self, peer: PeerId) {
        self.admitted.insert(peer);
        for c in self.connections.values_mut() {
            if c.peer != Some(peer) || c.stage != Stage::Unadmitted {
                continue;
            }
            c.stage = Stage::Admitted;
            if c.reserved {
                self.reserved_open -= 1;
            } else {
                self.unadmitted -= 1;
                self.records.remove(&c.ip);
            }
        }
    }

    /// `peer` is no longer admitted (refused, or its last connection closed).
    pub fn gone(&mut self, peer: &PeerId) {
        self.admitted.remove(peer);
    }

    /// The connection `id` closed or failed; `failure` says whether it counts against its
    /// address (a failed handshake, or a connection closed before its admission).
    pub fn closed(&mut self, id: ConnectionId, failure: bool, now: Instant) {
        let Some(c) = self.connections.remove(&id) else {
            return;
        };
        if c.reserved {
            if matches!(c.stage, Stage::Handshake | Stage::Unadmitted) {
                self.reserved_open -= 1;
            }
            return;
        }
        match c.stage {
            Stage::Handshake => self.handshakes -= 1,
            Stage::Unadmitted => self.unadmitted -= 1,
            Stage::Admitted | Stage::Refused => {}
        }
        if let Some(n) = self.per_address.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&c.ip);
            }
        }
        if failure && matches!(c.stage, Stage::Handshake | Stage::Unadmitted) {
            self.fail(c.ip, now);
        }
    }

    /// Counts a failure of `ip`, and refuses it for a while once it has too many.
    fn fail(&mut self, ip: IpAddr, now: Instant) {
        if !self.records.contains_key(&ip) && self.records.len() >= MAX_ADDRESSES {
            self.forget(now);
        }
        let record = self.records.entry(ip).or_insert(Record {
            failures: 0,
            last: now,
            refused_until: None,
        });
        if now.saturating_duration_since(record.last) > FORGET {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        if let Some(excess) = record.failures.checked_sub(FREE_FAILURES + 1) {
            let refusal = BAN_START.saturating_mul(1 << excess.min(16)).min(BAN_CAP);
            record.refused_until = Some(now + refusal);
        }
    }

    /// Makes room among the records: drops the stale ones, and if none is stale, the one
    /// whose last failure is the oldest.
    fn forget(&mut self, now: Instant) {
        self.records
            .retain(|_, r| now.saturating_duration_since(r.last) <= FORGET);
        if self.records.len() >= MAX_ADDRESSES {
            let oldest = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.records.remove(&ip);
            }
        }
    }

    fn is_refused(&self, ip: &IpAddr, now: Instant) -> bool {
        self.records
            .get(ip)
            .and_then(|r| r.refused_until)
            .is_some_and(|until| now < until)
    }

    /// How many incoming connections each reason refused, since the start.
    pub fn denied(&self) -> Vec<(&'static str, u64)> {
        Denial::ALL
            .into_iter()
            .map(|d| (d.as_str(), self.denied[d as usize]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Addresses whose failures are remembered.
    pub fn remembered(&self) -> usize {
        self.records.len()
    }
}

/// The address an address such as `/ip4/1.2.3.4/tcp/5` is counted under: its IPv4
/// address, or the /64 network of its IPv6 address (one host's usual allocation, in which
/// it can pick any address).
pub fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(Ipv6Addr::from(
            u128::from(ip) & !u128::from(u64::MAX),
        ))),
        _ => None,
    })
}

/// The slots as a swarm behaviour: it refuses handshakes and connections and tracks them;
/// the actor tells it of admissions.
#[derive(Debug)]
pub struct Behaviour {
    pub state: State,
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match ip_of(remote_addr) {
            Some(ip) => self
                .state
                .handshake(connection_id, ip, Instant::now())
                .map_err(ConnectionDenied::new),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.state
            .established(connection_id, peer)
            .map_err(ConnectionDenied::new)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let now = Instant::now();
        match event {
            FromSwarm::ConnectionClosed(closed) => {
                self.state.closed(closed.connection_id, true, now);
            }
            FromSwarm::ListenFailure(failure) => {
                // A refusal of our own already counted; any other failure (a handshake that
                // failed or timed out, a deny-listed peer) counts against the address.
                let ours = matches!(failure.error, ListenError::Denied { cause }
                    if cause.downcast_ref::<Denial>().is_some());
                self.state.closed(failure.connection_id, !ours, now);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LIMITS: Limits = Limits {
        pending: 4,
        unadmitted: 3,
        per_address: 2,
        reserved: 2,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    const CHARTER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));

    struct Slots {
        state: State,
        next: usize,
        now: Instant,
    }

    impl Slots {
        fn new() -> Self {
            Self {
                state: State::new(LIMITS, [CHARTER]),
                next: 0,
                now: Instant::now(),
            }
        }

        /// Opens a handshake and completes it with a fresh peer id.
        fn connect(&mut self, from: IpAddr) -> Result<(ConnectionId, PeerId), Denial> {
            let id = self.handshake(from)?;
            let peer = PeerId::random();
            self.state.established(id, peer).inspect_err(|_| {
                self.state.closed(id, false, self.now);
            })?;
            Ok((id, peer))
        }

        fn handshake(&mut self, from: IpAddr) -> Result<ConnectionId, Denial> {
            self.next += 1;
            let id = ConnectionId::new_unchecked(self.next);
            self.state.handshake(id, from, self.now)?;
            Ok(id)
        }

        /// Connects from `from` and lets the connection time out unadmitted.
        fn fail(&mut self, from: IpAddr) -> Result<(), Denial> {
            let (id, _) = self.connect(from)?;
            self.state.closed(id, true, self.now);
            Ok(())
        }
    }

    #[test]
    fn handshakes_are_bounded_in_all_and_per_address() {
        let mut s = Slots::new();
        let from_one: Vec<_> = (0..3).map(|_| s.handshake(ip(10)).err()).collect();
        assert_eq!(from_one, [None, None, Some(Denial::PerAddress)]);
        let others: Vec<_> = (20..24).map(|i| s.handshake(ip(i)).err()).collect();
        assert_eq!(
            others,
            [
                None,
                None,
                Some(Denial::Handshakes),
                Some(Denial::Handshakes)
            ]
        );
        // A charter address still gets its handshakes.
        s.handshake(CHARTER).expect("a reserved slot");
    }

    #[test]
    fn silent_connections_fill_only_the_unreserved_pools() {
        let mut s = Slots::new();
        for i in 0..3 {
            s.connect(ip(i)).expect("a slot");
        }
        // Refused before its handshake begins.
        assert_eq!(s.handshake(ip(3)), Err(Denial::Unadmitted));
        // Handshakes that began before the pool filled are refused once they complete.
        let mut s = Slots::new();
        let early: Vec<ConnectionId> = (0..4)
            .map(|i| s.handshake(ip(i)).expect("a slot"))
            .collect();
        let verdicts: Vec<_> = early
            .iter()
            .map(|id| s.state.established(*id, PeerId::random()).err())
            .collect();
        assert_eq!(verdicts, [None, None, None, Some(Denial::Unadmitted)]);
        s.state.closed(early[3], false, s.now);
        // A charter address still gets in, twice, whatever the others hold.
        let (first, peer) = s.connect(CHARTER).expect("a reserved slot");
        s.connect(CHARTER).expect("a second reserved slot");
        assert_eq!(s.handshake(CHARTER), Err(Denial::Reserved));
        // Once admitted, its connection leaves the pool and frees a reserved slot.
        s.state.admitted(peer);
        s.connect(CHARTER).expect("the freed slot");
        s.state.closed(first, true, s.now);
        assert_eq!(
            s.state.remembered(),
            0,
            "a charter address is never held against"
        );
        let denied: Vec<&str> = s.state.denied().into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            denied,
            [
                "too many unadmitted connections",
                "too many connections from charter addresses",
            ]
        );
    }

    #[test]
    fn an_admitted_peers_connections_leave_the_unadmitted_pool() {
        let mut s = Slots::new();
        let (_, peer) = s.connect(ip(1)).expect("a slot");
        s.connect(ip(2)).expect("a slot");
        s.connect(ip(3)).expect("a slot");
        assert_eq!(s.connect(ip(4)), Err(Denial::Unadmitted));
        s.state.admitted(peer);
        // Its second connection skips the pool, but counts for its address.
        let id = s.handshake(ip(1)).expect("a handshake");
        s.state.established(id, peer).expect("admitted already");
        s.connect(ip(4)).expect("the slot it freed");
        assert_eq!(s.handshake(ip(1)), Err(Denial::PerAddress));
    }

    #[test]
    fn an_address_that_keeps_failing_is_refused_for_longer_each_time() {
        let mut s = Slots::new();
        let bad = ip(7);
        for _ in 0..FREE_FAILURES {
            s.fail(bad).expect("free failures");
        }
        s.fail(bad).expect("the failure that starts the refusals");
        assert_eq!(s.handshake(bad), Err(Denial::Banned));
        // Other addresses are not affected.
        s.fail(ip(8)).expect("another address");
        let mut refusals = Vec::new();
        for _ in 0..12 {
            let start = s.now;
            while s.handshake(bad) == Err(Denial::Banned) {
                s.now += Duration::from_secs(1);
            }
            refusals.push((s.now - start).as_secs());
            s.state
                .closed(ConnectionId::new_unchecked(s.next), true, s.now);
        }
        assert_eq!(
            refusals,
            [10, 20, 40, 80, 160, 320, 640, 900, 900, 900, 900, 900]
        );
        // An admission from the address clears it.
        s.now += BAN_CAP;
        let (_, peer) = s.connect(bad).expect("let in after its refusal");
        s.state.admitted(peer);
        assert_eq!(s.state.remembered(), 1, "only 10.0.0.8 is remembered");
        for _ in 0..=FREE_FAILURES {
            s.fail(bad).expect("free failures again");
        }
    }

    #[test]
    fn failures_of_many_addresses_are_remembered_within_a_bound() {
        let mut s = Slots::new();
        for i in 0..(MAX_ADDRESSES as u32 + 1000) {
            let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            s.fail(from).expect("a slot");
        }
        assert_eq!(s.state.remembered(), MAX_ADDRESSES);
        // An address forgotten an hour later starts afresh.
        s.now += FORGET + Duration::from_secs(1);
        s.fail(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)))
            .expect("a slot");
        assert_eq!(s.state.remembered(), 1);
    }
}
