//! The node actor: the one owner of the replica and the store.
//!
//! It runs on its own thread, so that a durable commit (an fsync) never blocks the async
//! runtime, and takes requests one at a time from a bounded channel. Callers hold a
//! cloneable `Handle`; each request carries a oneshot for its answer.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::charter::Charter;
use crate::docs::command::{Command, Refused};
use crate::docs::{Collection, DocId, view};
use crate::identity::SecretKey;
use crate::log::{EquivocationProof, LogId, SignedEntry};
use crate::operator::{self, Access, Operator, Role, Token};
use crate::reconcile::{self, Answer, Ask, Item, Session};
use crate::replica::{Limits, Replica, Report};
use crate::store::{ListFilter, ListPage, Reader, Store};

use super::sync::{BATCH_BYTES, BATCH_PROOF_BYTES, BATCH_PROOFS};
use super::{Clock, report};

/// Why a request failed, as the API reports it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Failure {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
    /// A read found the store damaged: the node answers, then stops.
    #[error("{0}")]
    Corrupt(String),
}

impl From<crate::replica::Error> for Failure {
    fn from(e: crate::replica::Error) -> Self {
        match e {
            crate::replica::Error::Backing(b) => Failure::Corrupt(b.0),
            e => Failure::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Corrupt(_) => Failure::Corrupt(e.to_string()),
            e => Failure::Internal(e.to_string()),
        }
    }
}

/// Sends an answer. A read that found the store damaged stops the node once it has
/// answered: nothing the damaged rows hold is served, and the operator learns why.
fn answer<T>(reply: Reply<T>, result: Result<T, Failure>) -> Result<(), Failure> {
    let corrupt = match &result {
        Err(Failure::Corrupt(m)) => Some(m.clone()),
        _ => None,
    };
    let _ = reply.send(result);
    corrupt.map_or(Ok(()), |m| Err(Failure::Corrupt(m)))
}

impl From<operator::Error> for Failure {
    fn from(e: operator::Error) -> Self {
        use operator::Error as E;
        match e {
            E::BadName | E::BadRole(_) => Failure::BadRequest(e.to_string()),
            E::Unknown(_) => Failure::NotFound(e.to_string()),
            E::Exists(_) | E::Revoked(_) | E::Full | E::LastHead => Failure::Refused(e.to_string()),
            E::Malformed => Failure::Corrupt(e.to_string()),
        }
    }
}

impl From<Refused> for Failure {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Invalid(m) => Failure::BadRequest(m),
            Refused::NotFound { .. } => Failure::NotFound(r.to_string()),
            Refused::Rule(m) => Failure::Refused(m),
        }
    }
}

/// The answer to a write, once it is signed and durable.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteAck {
    pub id: String,
    pub entry: String,
    pub seq: u64,
}

/// What the network glue learns from an ingest.
#[derive(Debug, Default, Clone)]
pub struct IngestSummary {
    pub accepted: Vec<SignedEntry>,
    pub rejected: usize,
    /// Entries this node already held.
    pub duplicates: usize,
    pub new_proofs: Vec<EquivocationProof>,
    /// Logs with entries waiting for a predecessor that has not arrived.
    pub gaps: bool,
}

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// The requests the actor serves.
pub(crate) enum Request {
    /// A write by the named operator.
    Write(Command, String, Reply<WriteAck>),
    Operators(Reply<Vec<Operator>>),
    AddOperator {
        name: String,
        role: Role,
        reply: Reply<(Operator, Token)>,
    },
    RevokeOperator {
        name: String,
        reply: Reply<Operator>,
    },
    Status(Reply<Value>),
    List {
        collection: Collection,
        filter: ListFilter,
        cursor: Option<String>,
        limit: usize,
        reply: Reply<ListPage>,
    },
    Doc(DocId, Reply<Value>),
    Export(DocId, Reply<Vec<u8>>),
    Log {
        query: AuditQuery,
        reply: Reply<Value>,
    },
    Verify(Reply<Value>),
    /// What a read beside the actor needs: the charter and a reader of the store.
    Snapshot(Reply<(Arc<Charter>, Reader)>),
    /// A read beside the actor found the store damaged: the node stops as if the actor
    /// had read it.
    Damaged(String),
    Metrics(Reply<String>),
    Ingest {
        entries: Vec<SignedEntry>,
        proofs: Vec<EquivocationProof>,
        reply: Reply<IngestSummary>,
    },
    /// One step of a pull: takes in the peer's answers, returns the next request.
    Reconcile {
        session: Box<Session>,
        answers: Vec<Answer>,
        served: bool,
        reply: Reply<(Box<Session>, Option<Ask>)>,
    },
    /// A peer's pull.
    Serve {
        ask: Ask,
        max: usize,
        reply: Reply<Served>,
    },
    Missing(
        Vec<crate::log::EntryHash>,
        Reply<Vec<crate::log::EntryHash>>,
    ),
    /// Tells the replica the time, so that entries whose time has come are taken in.
    Tick(Reply<usize>),
    /// Where each peer's stream goes on, as the store keeps it.
    Streams(Reply<Vec<(String, u64)>>),
    /// Keeps or forgets where a peer's stream goes on.
    Stream(String, Option<u64>, Reply<()>),
    /// A version of the charter (the one in force when none is named).
    Charter(Option<u32>, Reply<crate::docs::amendments::Version>),
    /// Where amending the charter stands.
    Amendments(Reply<crate::docs::amendments::Status>),
    /// Rotates the national key, by the named operator.
    RotateKey(String, Reply<KeyRotated>),
    /// Where a revocation keeps the logs of a key.
    Revocation(RevokeFrom, Reply<Revocation>),
}

/// From where a revocation refuses a key's entries.
#[derive(Debug, Clone)]
pub enum RevokeFrom {
    /// From this entry on, of the key that signed it.
    Entry(crate::log::EntryHash),
    /// After everything this node holds, of the key of this state in the charter in force.
    Now(String),
}

/// What an amendment that revokes a key from an entry on would say of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// The state whose key signed the entry.
    pub state: String,
    pub key: String,
    /// Each log of the key and its last entry that stays valid (`docs::keys::Keep`).
    pub keep: String,
}

/// A rotation done: the new public key, and the entry that signed it with the old.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyRotated {
    pub key: String,
    pub entry: String,
}

/// What a page of the audit trail asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// A state code.
    pub author: Option<String>,
    /// A document id.
    pub doc: Option<String>,
    pub limit: Option<usize>,
    /// The `next` of the page after this one (entries accepted before it).
    pub before: Option<u64>,
}

/// Items per page of a list or of the audit trail, unless the caller asks for fewer.
pub const PAGE: usize = 100;
/// The most items a caller may ask for in one page.
pub const MAX_PAGE: usize = 1000;

/// What the node answers to a peer's pull.
#[derive(Debug, Default, Clone)]
pub struct Served {
    /// Answers to the peer's ranges whose fingerprints differ from ours.
    pub answers: Vec<Answer>,
    /// Encoded entries of the wanted logs, in the order the node accepted them, preceded
    /// by our entry at any height where the peer holds another: the evidence of a fork.
    pub entries: Vec<Vec<u8>>,
    /// Encoded proofs of wanted logs that the peer lacks.
    pub proofs: Vec<Vec<u8>>,
    /// Whether more remains of the wanted logs than one answer holds.
    pub more: bool,
    /// How many entries of the wanted logs the peer lacked; for a stream, about how many
    /// of this node's entries are at or after the peer's place in it (positions of cut
    /// entries are not reused).
    pub behind: u64,
    /// Where the stream goes on, when the peer asked for it and more remains.
    pub next: Option<u64>,
}

/// A cloneable handle on the node actor.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    /// The number of accepted entries, updated after each durable commit.
    entries: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

macro_rules! ask {
    ($self:ident, $variant:ident $(, $arg:expr)*) => {
        $self.call(|reply| Request::$variant($($arg,)* reply)).await
    };
}

impl Handle {
    /// Sends a request to the actor and waits for its answer.
    async fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, Failure> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(request(reply))
            .await
            .map_err(|_| Failure::Internal("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| Failure::Internal("the node is shutting down".into()))?
    }
    /// Makes a write for the state, on behalf of the operator `operator`.
    pub async fn write(&self, command: Command, operator: &str) -> Result<WriteAck, Failure> {
        ask!(self, Write, command, operator.to_owned())
    }
    /// The places in peers' streams that catch-ups left in the middle, by peer id.
    pub async fn streams(&self) -> Result<Vec<(String, u64)>, Failure> {
        ask!(self, Streams)
    }

    /// A version of the charter, the one in force when `version` is `None`.
    pub async fn charter(
        &self,
        version: Option<u32>,
    ) -> Result<crate::docs::amendments::Version, Failure> {
        ask!(self, Charter, version)
    }

    /// Where amending the charter stands.
    pub async fn amendments(&self) -> Result<crate::docs::amendments::Status, Failure> {
        ask!(self, Amendments)
    }

    /// Where a revocation from the entry `from` on keeps the logs of the key that signed
    /// it.
    pub async fn revocation(&self, from: RevokeFrom) -> Result<Revocation, Failure> {
        ask!(self, Revocation, from)
    }

    /// Rotates the national key: a new key in the data directory, the rotation signed
    /// with the old one, and the node signing with the new one from then on.
    pub async fn rotate_key(&self, operator: String) -> Result<KeyRotated, Failure> {
        ask!(self, RotateKey, operator)
    }

    /// Keeps where `peer`'s stream goes on (`None`: the stream was taken to its end), so
    /// that a catch-up goes on from there after a restart.
    pub async fn remember_stream(
        &self,
        peer: String,
        position: Option<u64>,
    ) -> Result<(), Failure> {
        ask!(self, Stream, peer, position)
    }

    /// Every operator, revoked ones included.
    pub async fn operators(&self) -> Result<Vec<Operator>, Failure> {
        ask!(self, Operators)
    }
    /// Adds an operator; its token is in the answer, and nowhere else.
    pub async fn add_operator(
        &self,
        name: String,
        role: Role,
    ) -> Result<(Operator, Token), Failure> {
        self.call(|reply| Request::AddOperator { name, role, reply })
            .await
    }
    /// Revokes an operator: its token is refused from now on.
    pub async fn revoke_operator(&self, name: String) -> Result<Operator, Failure> {
        self.call(|reply| Request::RevokeOperator { name, reply })
            .await
    }
    pub async fn status(&self) -> Result<Value, Failure> {
        ask!(self, Status)
    }
    pub async fn list(
        &self,
        collection: Collection,
        filter: ListFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<ListPage, Failure> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::List {
                collection,
                filter,
                cursor,
                limit,
                reply,
            })
            .await
            .map_err(|_| Failure::Internal("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| Failure::Internal("the node is shutting down".into()))?
    }
    pub async fn doc(&self, id: DocId) -> Result<Value, Failure> {
        ask!(self, Doc, id)
    }
    pub async fn export(&self, id: DocId) -> Result<Vec<u8>, Failure> {
        ask!(self, Export, id)
    }
    pub async fn verify(&self) -> Result<Value, Failure> {
        ask!(self, Verify)
    }
    /// Drafts the report of a term on a blocking thread beside the actor, so that the
    /// node keeps answering while it reads the term's entries.
    pub async fn report(&self, term: String) -> Result<Value, Failure> {
        let (charter, reader) = ask!(self, Snapshot)?;
        let drafted = tokio::task::spawn_blocking(move || report::draft(&charter, &reader, &term))
            .await
            .map_err(|e| Failure::Internal(format!("the report's thread failed: {e}")))?;
        if let Err(Failure::Corrupt(reason)) = &drafted {
            // The actor stops the node; if it has stopped already, there is nobody to tell.
            let _ = self.tx.send(Request::Damaged(reason.clone())).await;
        }
        drafted
    }
    pub async fn metrics(&self) -> Result<String, Failure> {
        ask!(self, Metrics)
    }
    /// Takes in a peer's answers to the session's last request (all it had of the wanted
    /// logs, or all it could give for now, when `served`); returns the session and its next
    /// request, or `None` when the pull is over.
    pub async fn reconcile(
        &self,
        session: Box<Session>,
        answers: Vec<Answer>,
        served: bool,
    ) -> Result<(Box<Session>, Option<Ask>), Failure> {
        self.call(|reply| Request::Reconcile {
            session,
            answers,
            served,
            reply,
        })
        .await
    }
    /// Answers a peer's pull with at most `max` entries.
    pub async fn serve_pull(&self, ask: Ask, max: usize) -> Result<Served, Failure> {
        self.call(|reply| Request::Serve { ask, max, reply }).await
    }
    /// Tells the node the time has moved on; returns how many entries that waited for
    /// their time it took in.
    pub async fn tick(&self) -> Result<usize, Failure> {
        ask!(self, Tick)
    }

    /// The entries of `hashes` that the node does not hold.
    pub async fn missing(
        &self,
        hashes: Vec<crate::log::EntryHash>,
    ) -> Result<Vec<crate::log::EntryHash>, Failure> {
        ask!(self, Missing, hashes)
    }

    /// Waits until the node holds every entry of `hashes`, or `timeout` passes; returns
    /// the entries still missing.
    pub async fn wait_for(
        &self,
        hashes: Vec<crate::log::EntryHash>,
        timeout: std::time::Duration,
    ) -> Result<Vec<crate::log::EntryHash>, Failure> {
        let mut changes = self.entries.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.mark_unchanged();
            let missing = self.missing(hashes.clone()).await?;
            if missing.is_empty() {
                return Ok(missing);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.missing(hashes).await,
            }
        }
    }
    pub async fn log(&self, query: AuditQuery) -> Result<Value, Failure> {
        self.call(|reply| Request::Log { query, reply }).await
    }
    pub async fn ingest(
        &self,
        entries: Vec<SignedEntry>,
        proofs: Vec<EquivocationProof>,
    ) -> Result<IngestSummary, Failure> {
        self.call(|reply| Request::Ingest {
            entries,
            proofs,
            reply,
        })
        .await
    }
}

/// The entries of a report refused for a fault of the peer that sent them.
fn blamed(report: &Report) -> usize {
    report
        .rejected
        .iter()
        .filter(|(_, i)| i.blames_sender())
        .count()
}

/// Extra facts for the status, set by the service.
pub(crate) type StatusExtra = Arc<dyn Fn() -> Value + Send + Sync>;

/// The state the actor owns.
pub(crate) struct Actor {
    /// The charter in force, as the replica holds it after the last commit.
    pub charter: Arc<Charter>,
    /// Tells admission who may certify nodes.
    pub charter_watch: tokio::sync::watch::Sender<Arc<super::certificate::Trust>>,
    /// Tells the certifier the key the node signs with.
    pub key_watch: tokio::sync::watch::Sender<Arc<SecretKey>>,
    /// The national key's file and passphrase, which a rotation replaces.
    pub key_file: Option<(std::path::PathBuf, Option<String>)>,
    pub replica: Replica<Reader>,
    pub store: Store,
    pub key: Arc<SecretKey>,
    pub code: String,
    pub incarnation: u32,
    pub clock: Arc<dyn Clock>,
    pub status_extra: StatusExtra,
    pub accepted_local: u64,
    pub fatal: tokio_util::sync::CancellationToken,
    /// Local writes to publish on the gossip topic; a full queue drops them, and pull sync
    /// delivers them instead.
    pub publish: Option<mpsc::Sender<Vec<u8>>>,
    pub entries_watch: tokio::sync::watch::Sender<u64>,
    /// The addresses of the other participants' nodes, as [`dial_addresses`] finds them
    /// after each commit that changes an address record.
    pub dials_watch: tokio::sync::watch::Sender<Vec<String>>,
    /// Documents touched since they were last considered for compaction, bounded.
    pub compact: std::collections::BTreeSet<DocId>,
    /// What the node holds of each log, for reconciliation with peers; see [`sync_set`].
    pub sync_set: reconcile::Set,
    /// The operators the API accepts, which the actor replaces after each change.
    pub access: Arc<std::sync::RwLock<Access>>,
}

/// Documents waiting to be considered for compaction; past it, the rest wait until they
/// are touched again.
const MAX_COMPACT_QUEUE: usize = 4096;

/// Starts the actor thread; it stops when every handle is dropped, and the returned join
/// handle gives back any fatal error (a failed durable commit).
pub(crate) fn spawn(
    actor: Actor,
    capacity: usize,
) -> (Handle, std::thread::JoinHandle<Result<(), Failure>>) {
    let (tx, rx) = mpsc::channel(capacity);
    let entries = actor.entries_watch.subscribe();
    let join = std::thread::Builder::new()
        .name("spoc-node-actor".into())
        .spawn(move || actor.run(rx));
    match join {
        Ok(join) => (Handle { tx, entries }, join),
        // Without a thread there is no node; the handle's requests then fail.
        Err(e) => {
            let message = format!("cannot start the node thread: {e}");
            let join = std::thread::spawn(move || Err(Failure::Internal(message)));
            (Handle { tx, entries }, join)
        }
    }
}

/// Who may certify nodes, as `replica` holds the charter and the keys now.
pub(crate) fn trust<B: crate::replica::Backing>(replica: &Replica<B>) -> super::certificate::Trust {
    let (rotated, _) = replica.keys();
    super::certificate::Trust {
        charter: replica.charter().clone(),
        rotated: rotated.clone(),
        revoked: replica
            .charters()
            .iter()
            .flat_map(|c| c.revoked.iter().map(|r| r.key))
            .collect(),
        revoked_nodes: replica.revoked_nodes().clone(),
    }
}

/// The state whose key signs `log`: in the latest version of the charter that names the
/// key (a state an amendment removed keeps its code for its past), or the state a
/// rotation gave it to.
fn code_of<B: crate::replica::Backing>(replica: &Replica<B>, log: &LogId) -> String {
    replica
        .charters()
        .iter()
        .rev()
        .find_map(|c| c.participant_by_key(&log.author))
        .map(|p| p.code.clone())
        .or_else(|| replica.keys().0.get(&log.author).cloned())
        .unwrap_or_else(|| log.author.short())
}

impl Actor {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) -> Result<(), Failure> {
        let _span = tracing::info_span!("node", state = %self.code, incarnation = self.incarnation)
            .entered();
        loop {
            // Idle time goes to compaction, one document at a time, so a request never
            // waits behind more than one.
            let request = match rx.try_recv() {
                Ok(request) => request,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if let Some(id) = self.compact.pop_first() {
                        if let Err(e) = self.store.compact(&id) {
                            tracing::error!(error = %e, doc = %id, "compaction failed; stopping");
                            self.fatal.cancel();
                            return Err(Failure::Internal(format!("compaction failed: {e}")));
                        }
                        continue;
                    }
                    match rx.blocking_recv() {
                        Some(request) => request,
                        None => return Ok(()),
                    }
                }
            };
            if let Err(f) = self.serve(request) {
                if let Failure::Corrupt(reason) = &f {
                    tracing::error!(%reason, "the store is damaged; stopping");
                }
                self.fatal.cancel();
                return Err(f);
            }
        }
    }

    /// Commits an ingest durably; a failed commit is fatal, since memory and disk would
    /// then disagree.
    fn commit(&mut self, report: &Report) -> Result<(), Failure> {
        self.commit_by(report, None)
    }

    /// Commits, recording `operator` as the maker of the accepted entries when given.
    fn commit_by(&mut self, report: &Report, operator: Option<&str>) -> Result<(), Failure> {
        let committed = match operator {
            Some(name) => self.store.commit_local(&self.replica, report, name),
            None => self.store.commit(&self.replica, report),
        };
        committed.map_err(|e| {
            tracing::error!(error = %e, "durable commit failed; stopping");
            Failure::Internal(format!("durable commit failed: {e}"))
        })?;
        self.replica.flush();
        for id in &report.touched {
            if self.compact.len() < MAX_COMPACT_QUEUE {
                self.compact.insert(id.clone());
            }
        }
        self.entries_watch
            .send_replace(self.replica.entry_count() as u64);
        self.track(report);
        let amended = self.replica.charter().version != self.charter.version;
        if amended {
            self.charter = self.replica.charter().clone();
            tracing::info!(
                version = self.charter.version,
                hash = %self.charter.hash_hex(),
                "the charter in force changed"
            );
        }
        if amended
            || report
                .touched
                .iter()
                .any(|id| id.collection() == crate::docs::Collection::Keys)
        {
            self.charter_watch
                .send_replace(Arc::new(trust(&self.replica)));
        }
        if amended
            || report
                .touched
                .iter()
                .any(|id| id.collection() == crate::docs::Collection::Addresses)
        {
            let dials = dial_addresses(&self.charter, &mut self.replica, &self.code)?;
            self.dials_watch.send_if_modified(|old| {
                let changed = *old != dials;
                *old = dials;
                changed
            });
        }
        Ok(())
    }

    fn serve(&mut self, request: Request) -> Result<(), Failure> {
        match request {
            Request::Write(command, operator, reply) => {
                let result = self.write(&command, &operator);
                let fatal = matches!(result, Err(Failure::Internal(_) | Failure::Corrupt(_)));
                let _ = reply.send(result.clone());
                if fatal {
                    return result.map(|_| ());
                }
            }
            Request::Ingest {
                entries,
                proofs,
                reply,
            } => {
                let mut reply = Some(reply);
                let result = self.ingest(entries, proofs, &mut reply);
                let fatal = result.as_ref().err().cloned();
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                if let Some(f) = fatal {
                    return Err(f);
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Request::Operators(reply) => {
                answer(reply, self.store.operators().map_err(Failure::from))?;
            }
            Request::Streams(reply) => {
                answer(reply, self.store.streams().map_err(Failure::from))?;
            }
            Request::Charter(version, reply) => {
                let charters = self.replica.charters();
                let found = match version {
                    None => Ok(self.replica.charter()),
                    Some(v) => charters.get(v as usize).ok_or_else(|| {
                        Failure::NotFound(format!(
                            "no version {v} of the charter: version {} is in force",
                            charters.len() - 1
                        ))
                    }),
                };
                let _ = reply.send(found.map(|c| crate::docs::amendments::Version::of(c)));
            }
            Request::RotateKey(operator, reply) => {
                let result = self.rotate_key(&operator);
                let fatal = matches!(result, Err(Failure::Internal(_) | Failure::Corrupt(_)));
                let _ = reply.send(result.clone());
                if fatal {
                    return result.map(|_| ());
                }
            }
            Request::Revocation(RevokeFrom::Now(state), reply) => {
                let result = match self.charter.participant(&state).and_then(|p| p.key) {
                    Some(key) => Ok(Revocation {
                        state,
                        key: key.to_string(),
                        keep: self.replica.keep_all(&key).to_string(),
                    }),
                    None => Err(Failure::NotFound(format!(
                        "{state} has no key in the charter in force"
                    ))),
                };
                answer(reply, result)?;
            }
            Request::Revocation(RevokeFrom::Entry(from), reply) => {
                let result = match self.replica.keep_before(&from) {
                    Ok(Some((key, keep))) => Ok(Revocation {
                        state: code_of(
                            &self.replica,
                            &LogId {
                                author: key,
                                incarnation: 0,
                            },
                        ),
                        key: key.to_string(),
                        keep: keep.to_string(),
                    }),
                    Ok(None) => Err(Failure::NotFound(format!("no entry {from}"))),
                    Err(e) => Err(Failure::from(e)),
                };
                answer(reply, result)?;
            }
            Request::Amendments(reply) => {
                let status = self.replica.proposals().map(|proposals| {
                    crate::docs::amendments::Status::of(self.replica.charters(), &proposals)
                });
                answer(reply, status.map_err(Failure::from))?;
            }
            Request::Stream(peer, position, reply) => {
                let result = self.store.put_stream(&peer, position);
                answer(reply, result.map_err(Failure::from))?;
            }
            Request::AddOperator { name, role, reply } => {
                let result = self.add_operator(&name, role);
                answer(reply, result)?;
            }
            Request::RevokeOperator { name, reply } => {
                let result = self.revoke_operator(&name);
                answer(reply, result)?;
            }
            Request::List {
                collection,
                filter,
                cursor,
                limit,
                reply,
            } => {
                let page = self
                    .store
                    .reader()
                    .list(
                        collection,
                        &filter,
                        cursor.as_deref(),
                        limit.clamp(1, MAX_PAGE),
                    )
                    .map_err(|e| match e {
                        crate::store::Error::Corrupt(m) if m.contains("cursor") => {
                            Failure::BadRequest(m)
                        }
                        e => Failure::from(e),
                    });
                answer(reply, page)?;
            }
            Request::Doc(id, reply) => {
                let result = self.with_doc(&id, |doc| view::document(&id, doc));
                answer(reply, result)?;
            }
            Request::Export(id, reply) => {
                let result = self.with_doc(&id, automerge::Automerge::save);
                answer(reply, result)?;
            }
            Request::Log { query, reply } => {
                answer(reply, self.audit(query))?;
            }
            Request::Verify(reply) => {
                let _ = reply.send(Ok(self.verify()));
            }
            Request::Snapshot(reply) => {
                let _ = reply.send(Ok((self.charter.clone(), self.store.reader())));
            }
            Request::Damaged(reason) => return Err(Failure::Corrupt(reason)),
            Request::Metrics(reply) => {
                let _ = reply.send(Ok(self.metrics()));
            }
            Request::Reconcile {
                mut session,
                answers,
                served,
                reply,
            } => {
                let result = session
                    .receive(&self.sync_set, &answers, served)
                    .map(|_| {
                        let ask = session.ask(&self.sync_set);
                        (session, ask)
                    })
                    .map_err(|e| Failure::BadRequest(e.to_string()));
                let _ = reply.send(result);
            }
            Request::Serve { ask, max, reply } => {
                answer(reply, self.serve_pull(ask, max))?;
            }
            Request::Tick(reply) => {
                let result = self.tick();
                let fatal = result.as_ref().err().cloned();
                let _ = reply.send(result);
                if let Some(f) = fatal {
                    return Err(f);
                }
            }
            Request::Missing(hashes, reply) => {
                let mut missing = Vec::new();
                let mut failed = None;
                for h in hashes {
                    match self.replica.contains(&h) {
                        Ok(true) => {}
                        Ok(false) => missing.push(h),
                        Err(e) => {
                            failed = Some(Failure::from(e));
                            break;
                        }
                    }
                }
                answer(reply, failed.map_or(Ok(missing), Err))?;
            }
        }
        Ok(())
    }

    fn add_operator(&mut self, name: &str, role: Role) -> Result<(Operator, Token), Failure> {
        let operators = self.store.operators()?;
        let token = Token::generate(&mut rand::rng());
        let op = operator::add(&operators, name, role, &token, self.clock.now_ms())
            .map_err(Failure::from)?;
        self.store.put_operator(&op)?;
        self.refresh_access()?;
        tracing::info!(operator = %op.name, role = %op.role, "operator added");
        Ok((op, token))
    }

    fn revoke_operator(&mut self, name: &str) -> Result<Operator, Failure> {
        let operators = self.store.operators()?;
        let op = operator::revoke(&operators, name, self.clock.now_ms()).map_err(Failure::from)?;
        self.store.put_operator(&op)?;
        self.refresh_access()?;
        tracing::info!(operator = %op.name, "operator revoked");
        Ok(op)
    }

    /// Hands the API the operators as the store now holds them.
    fn refresh_access(&self) -> Result<(), Failure> {
        let access = Access::new(&self.store.operators()?);
        if let Ok(mut shared) = self.access.write() {
            *shared = access;
        }
        Ok(())
    }

    /// Tells the replica the time, and makes durable what that took in: the entries that
    /// waited for their time. Returns how many were accepted.
    fn tick(&mut self) -> Result<usize, Failure> {
        let report = self
            .replica
            .advance(self.clock.now_ms())
            .map_err(Failure::from)?;
        if report.accepted.is_empty() && report.removed.is_empty() && report.rejected.is_empty() {
            return Ok(0);
        }
        self.commit(&report)?;
        for (hash, invalid) in &report.rejected {
            tracing::warn!(entry = %hash, reason = %invalid, "entry refused once its time came");
        }
        Ok(report.accepted.len())
    }

    fn write(&mut self, command: &Command, operator: &str) -> Result<WriteAck, Failure> {
        self.tick()?;
        let now = self.clock.now_ms();
        let (entry, id) =
            self.replica
                .prepare(&self.key, self.incarnation, command, now, ulid::Ulid::new())?;
        let hash = entry.hash();
        let seq = entry.entry.seq;
        // The entry was signed just now with this node's own key: its signature needs no
        // second check.
        let report = self
            .replica
            .ingest_verified(vec![entry])
            .map_err(Failure::from)?;
        // Other entries may be refused by what this one carries (a revocation cuts the
        // key's later entries), but not this one: the rules passed before signing, so
        // that would be a bug, and nothing is stored.
        if let Some((_, invalid)) = report.rejected.iter().find(|(h, _)| *h == hash) {
            return Err(Failure::Refused(invalid.to_string()));
        }
        self.commit_by(&report, Some(operator))?;
        self.accepted_local += 1;
        if let (Some(publish), Some(entry)) = (&self.publish, report.accepted.first())
            && publish.try_send(entry.bytes().to_vec()).is_err()
        {
            tracing::debug!("publish queue full; pull sync will deliver the entry");
        }
        tracing::info!(doc = %id, seq, entry = %hash, %operator, "write committed");
        Ok(WriteAck {
            id,
            entry: hash.to_string(),
            seq,
        })
    }

    /// See [`Handle::rotate_key`] and `service::rotation` for the steps.
    fn rotate_key(&mut self, operator: &str) -> Result<KeyRotated, Failure> {
        let (path, passphrase) = self
            .key_file
            .clone()
            .ok_or_else(|| Failure::BadRequest("this node has no key file to rotate".into()))?;
        let old = self.key.public();
        if self.replica.keys().1.contains_key(&old) {
            return Err(Failure::BadRequest(
                "this node's key was rotated or revoked already".into(),
            ));
        }
        let new = super::rotation::begin(&path, passphrase.as_deref())
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
        let command = self.replica.rotation(&old, self.incarnation, &new.public());
        let ack = match self.write(&command, operator) {
            Ok(ack) => ack,
            Err(e) => {
                // Nothing was committed: the new key goes.
                let _ = std::fs::remove_file(super::rotation::next_path(&path));
                return Err(e);
            }
        };
        // The rotation is durable: from here a failure leaves `KEY.next`, which the next
        // start puts in place.
        super::rotation::complete(&path, &old)
            .map_err(|e| Failure::Internal(format!("the rotation is committed, but {e}")))?;
        self.key = Arc::new(new);
        self.key_watch.send_replace(self.key.clone());
        tracing::info!(key = %self.key.public(), %operator, "the national key was rotated");
        Ok(KeyRotated {
            key: self.key.public().to_string(),
            entry: ack.entry,
        })
    }

    /// Takes in a peer's entries and proofs. When only entries came, `reply` is answered
    /// once they are checked, before their commit: gossip then relays an entry while
    /// this node writes it to disk, and a pull sends its next request meanwhile. Nothing
    /// is lost to the network if the commit fails, since the node stops and its peers
    /// hold what it relayed; an entry written here is acknowledged only once durable.
    fn ingest(
        &mut self,
        entries: Vec<SignedEntry>,
        proofs: Vec<EquivocationProof>,
        reply: &mut Option<Reply<IngestSummary>>,
    ) -> Result<IngestSummary, Failure> {
        let mut summary = IngestSummary::default();
        let only_entries = proofs.is_empty();
        self.tick()?;
        if !proofs.is_empty() {
            let report = self.replica.add_proofs(proofs).map_err(Failure::from)?;
            self.commit(&report)?;
            for p in &report.new_proofs {
                tracing::warn!(
                    author = %code_of(&self.replica, &p.log()),
                    seq = p.seq(),
                    "equivocation proof received from a peer"
                );
            }
            summary.new_proofs.extend(report.new_proofs);
        }
        if !entries.is_empty() {
            let waiting = self.replica.waiting_for_time_count();
            let report = self.replica.ingest(entries).map_err(Failure::from)?;
            if only_entries && let Some(reply) = reply.take() {
                let _ = reply.send(Ok(self.summarize(&report)));
            }
            self.commit(&report)?;
            let more = self
                .replica
                .waiting_for_time_count()
                .saturating_sub(waiting);
            if more > 0 {
                tracing::info!(
                    entries = more,
                    "entries dated ahead of this node's clock wait for their time"
                );
            }
            for (hash, invalid) in &report.rejected {
                tracing::warn!(entry = %hash, reason = %invalid, "entry refused");
            }
            for p in &report.new_proofs {
                tracing::warn!(
                    author = %code_of(&self.replica, &p.log()),
                    seq = p.seq(),
                    "equivocation: two entries for one log and seq"
                );
            }
            summary.rejected = blamed(&report);
            summary.accepted = report.accepted;
            summary.duplicates = report.duplicates;
            summary.new_proofs.extend(report.new_proofs);
        }
        // Entries that wait for their time are not a gap that a pull could fill.
        summary.gaps = self.replica.pending_count() > self.replica.waiting_for_time_count();
        Ok(summary)
    }

    /// What a peer learns of the entries it sent: counted from the checks, before the
    /// commit.
    fn summarize(&self, report: &Report) -> IngestSummary {
        IngestSummary {
            rejected: blamed(report),
            accepted: report.accepted.clone(),
            duplicates: report.duplicates,
            new_proofs: report.new_proofs.clone(),
            gaps: self.replica.pending_count() > self.replica.waiting_for_time_count(),
        }
    }

    /// Reads a document, loading it into the cache when it is not in memory.
    fn with_doc<T>(
        &mut self,
        id: &DocId,
        f: impl FnOnce(&automerge::Automerge) -> T,
    ) -> Result<T, Failure> {
        match self.replica.load_doc(id) {
            Ok(Some(doc)) => Ok(f(doc)),
            Ok(None) => Err(Failure::NotFound(format!("no document {id}"))),
            Err(e) => Err(Failure::from(e)),
        }
    }

    /// The status: every figure is kept as it changes, so its cost does not grow with
    /// the history.
    fn status(&self) -> Value {
        let today = crate::docs::rules::date_of_ms(self.clock.now_ms());
        let presidency = today
            .and_then(|d| self.charter.presidency_at(d))
            .map(|t| t.state.clone());
        // A state whose key was rotated has logs under each of its keys.
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (author, (logs, entries)) in self.replica.authors() {
            let code = code_of(
                &self.replica,
                &LogId {
                    author: *author,
                    incarnation: 0,
                },
            );
            let total = totals.entry(code).or_default();
            total.0 += logs;
            total.1 += entries;
        }
        let states: BTreeMap<String, Value> = totals
            .into_iter()
            .map(|(code, (logs, entries))| (code, json!({"logs": logs, "entries": entries})))
            .collect();
        let equivocations: Vec<Value> = self
            .replica
            .proofs()
            .map(|p| {
                json!({
                    "state": code_of(&self.replica, &p.log()),
                    "incarnation": p.log().incarnation,
                    "seq": p.seq(),
                })
            })
            .collect();
        let mut status = json!({
            "state": self.code,
            "network": self.charter.network,
            "charter_hash": self.charter.hash_hex(),
            "charter_version": self.charter.version,
            "presidency": presidency,
            "incarnation": self.incarnation,
            "states": states,
            "logs": self.replica.tips().len(),
            "digest": hex::encode(self.replica.digest()),
            "entries": self.replica.entry_count(),
            "pending": self.replica.pending_count(),
            "waiting_for_time": self.replica.waiting_for_time_count(),
            "equivocations": equivocations,
            "rejected": self.replica.rejected_counts(),
            "documents": self.store.reader().doc_count().unwrap_or(0),
            "cached_documents": self.replica.cached_docs(),
            "store_bytes": self.store.size_bytes(),
        });
        if let (Value::Object(s), Value::Object(extra)) = (&mut status, (self.status_extra)()) {
            s.extend(extra);
        }
        status
    }

    /// One page of the audit trail, by arrival, served from the store's indexes.
    fn audit(&self, query: AuditQuery) -> Result<Value, Failure> {
        let author = match &query.author {
            None => None,
            Some(code) => Some(
                self.charter
                    .participant(code)
                    .and_then(|p| p.key)
                    .ok_or_else(|| {
                        Failure::BadRequest(format!("no state {code:?} with a key in the charter"))
                    })?,
            ),
        };
        let doc: Option<DocId> = query
            .doc
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: crate::docs::DocIdError| Failure::BadRequest(e.to_string()))?;
        let limit = query.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
        let page = self
            .store
            .reader()
            .audit(query.before, limit, author.as_ref(), doc.as_ref())?;
        let hashes: Vec<_> = page.entries.iter().map(|(_, e)| e.hash()).collect();
        let operators = self.store.reader().written_by(&hashes)?;
        let entries: Vec<Value> = page
            .entries
            .iter()
            .zip(operators)
            .map(|((position, e), operator)| {
                let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(e.entry.timestamp_ms) * 1_000_000,
                )
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
                json!({
                    "position": position,
                    "hash": e.hash().to_string(),
                    "author": code_of(&self.replica, &e.entry.log()),
                    "incarnation": e.entry.incarnation,
                    "seq": e.entry.seq,
                    "doc": e.entry.doc.as_str(),
                    "timestamp": timestamp,
                    "summary": view::change_summary(&e.entry.change),
                    "operator": operator,
                })
            })
            .collect();
        Ok(json!({"entries": entries, "next": page.next}))
    }

    /// Re-checks everything from the store: signatures, chains, snapshots, and every
    /// rule, by replaying all entries into a fresh replica.
    fn verify(&self) -> Value {
        match self.store.verify(self.charter.clone(), &mut |_, _, _| {}) {
            Ok((entries, documents)) => {
                json!({"ok": true, "entries": entries, "documents": documents})
            }
            Err(e) => {
                json!({"ok": false, "entries": self.replica.entry_count(), "error": e.to_string()})
            }
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge(
            "spoc_entries",
            "Accepted entries.",
            self.replica.entry_count().to_string(),
        );
        gauge(
            "spoc_documents",
            "Documents held.",
            self.store.reader().doc_count().unwrap_or(0).to_string(),
        );
        gauge(
            "spoc_pending",
            "Entries waiting for their causal past.",
            self.replica.pending_count().to_string(),
        );
        gauge(
            "spoc_waiting_for_time",
            "Entries dated ahead of this node's clock, waiting for their time.",
            self.replica.waiting_for_time_count().to_string(),
        );
        gauge(
            "spoc_equivocations",
            "Logs cut by an equivocation proof.",
            self.replica.proofs().count().to_string(),
        );
        gauge(
            "spoc_store_bytes",
            "Size of the store file.",
            self.store.size_bytes().to_string(),
        );
        gauge(
            "spoc_local_writes",
            "Writes made through this node since it started.",
            self.accepted_local.to_string(),
        );
        let network = (self.status_extra)();
        out.push_str(&format!(
            "# HELP spoc_peers Admitted peers.\n# TYPE spoc_peers gauge\nspoc_peers {}\n",
            network["peers"].as_array().map_or(0, Vec::len)
        ));
        out.push_str(&format!(
            "# HELP spoc_invalid_from_peers_total Peers cut off for sending invalid entries.\n# TYPE spoc_invalid_from_peers_total counter\nspoc_invalid_from_peers_total {}\n",
            network["invalid_from_peers"].as_u64().unwrap_or(0)
        ));
        let clock = &network["clock"];
        if let Some(offset) = clock["offset_ms"].as_i64() {
            out.push_str(&format!(
                "# HELP spoc_clock_offset_seconds How far this node's clock is ahead of its peers' (the median of their offsets).\n# TYPE spoc_clock_offset_seconds gauge\nspoc_clock_offset_seconds {:.3}\n",
                offset as f64 / 1000.0
            ));
        }
        out.push_str(&format!(
            "# HELP spoc_clock_skewed Whether this node's clock is off its peers' by more than the tolerance.\n# TYPE spoc_clock_skewed gauge\nspoc_clock_skewed {}\n",
            u8::from(clock["skewed"].as_bool().unwrap_or(false))
        ));
        out.push_str("# HELP spoc_peer_refusals_total Peers refused and disconnected, by reason.\n# TYPE spoc_peer_refusals_total counter\n");
        for (reason, n) in network["refused_peers"].as_object().into_iter().flatten() {
            let reason = reason.replace(['"', '\\', '\n'], " ");
            out.push_str(&format!(
                "spoc_peer_refusals_total{{reason=\"{reason}\"}} {}\n",
                n.as_u64().unwrap_or(0)
            ));
        }
        out.push_str("# HELP spoc_incoming_denied_total Incoming connections refused before admission, by reason.\n# TYPE spoc_incoming_denied_total counter\n");
        for (reason, n) in network["denied_incoming"].as_object().into_iter().flatten() {
            out.push_str(&format!(
                "spoc_incoming_denied_total{{reason=\"{reason}\"}} {}\n",
                n.as_u64().unwrap_or(0)
            ));
        }
        out.push_str("# HELP spoc_rejected_total Entries refused, by reason.\n# TYPE spoc_rejected_total counter\n");
        for (reason, n) in self.replica.rejected_counts() {
            out.push_str(&format!("spoc_rejected_total{{reason=\"{reason}\"}} {n}\n"));
        }
        out
    }
}

/// The addresses of every other participant's nodes: those its address record publishes,
/// or the charter's while it has published none.
pub(crate) fn dial_addresses<B: crate::replica::Backing>(
    charter: &Charter,
    replica: &mut Replica<B>,
    own: &str,
) -> Result<Vec<String>, crate::replica::Error> {
    let mut out = Vec::new();
    for p in charter.participants.iter().filter(|p| p.code != own) {
        let published = replica
            .load_doc(&DocId::addresses(&p.code))?
            .map(crate::docs::addresses::of)
            .unwrap_or_default();
        if published.is_empty() {
            out.extend(p.addresses.iter().cloned());
        } else {
            out.extend(published);
        }
    }
    Ok(out)
}

/// The reconciliation items of every log the replica holds entries or a proof of.
pub(crate) fn sync_set<B: crate::replica::Backing>(replica: &Replica<B>) -> reconcile::Set {
    let mut set = reconcile::Set::default();
    for (log, tip) in replica.tips() {
        set.insert(*log, tip.seq, Some(tip.hash), false);
    }
    for p in replica.proofs() {
        set.prove(p.log());
    }
    set
}

impl Actor {
    /// Keeps the reconciliation set up to date after a commit.
    fn track(&mut self, report: &Report) {
        if report.rebuilt || !report.new_proofs.is_empty() {
            self.sync_set = sync_set(&self.replica);
        } else {
            for e in &report.accepted {
                self.sync_set.advance(e.entry.log(), e.entry.seq, e.hash());
            }
        }
    }

    /// Answers a peer's pull: its ranges, then what it lacks of the logs it wants, in the
    /// order this node accepted them, and the proofs of those logs that it lacks.
    fn serve_pull(&self, ask: Ask, max: usize) -> Result<Served, Failure> {
        if let Some(stream) = ask.stream {
            return self.serve_stream(stream, max);
        }
        let mut served = Served {
            answers: self.sync_set.answer(&ask.ranges),
            ..Served::default()
        };
        let wanted: Vec<(LogId, Item, Item)> = ask
            .wanted
            .iter()
            .take(reconcile::MAX_WANTED)
            .filter_map(|theirs| {
                let (log, ours) = self.sync_set.log(&theirs.log)?;
                Some((log, *theirs, ours))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(served);
        }
        served.behind = wanted
            .iter()
            .map(|(_, theirs, ours)| ours.seq.saturating_sub(theirs.seq))
            .sum();
        let mut bytes = 0;
        for (log, theirs, _) in &wanted {
            let Some(ours) = self
                .replica
                .entry(log, theirs.seq)?
                .filter(|e| e.hash().0 != theirs.tip)
            else {
                continue;
            };
            let len = ours.bytes().len();
            if served.entries.len() == max || (bytes > 0 && bytes + len > BATCH_BYTES) {
                served.more = true;
                break;
            }
            bytes += len;
            served.entries.push(ours.bytes().to_vec());
        }
        served.more |= served.entries.len() == max;
        if !served.more {
            // Only the wanted logs, from the first entry the peer lacks in each.
            let from: Vec<(LogId, u64)> = wanted
                .iter()
                .filter(|(_, theirs, ours)| ours.seq > theirs.seq)
                .map(|(log, theirs, _)| (*log, theirs.seq + 1))
                .collect();
            let room = max - served.entries.len();
            let budget = BATCH_BYTES.saturating_sub(bytes);
            let (after, more) = self.replica.entries_from(&from, room, budget)?;
            served.more |= more;
            served
                .entries
                .extend(after.into_iter().map(|e| e.bytes().to_vec()));
        }
        let proven = wanted
            .iter()
            .filter(|(_, theirs, ours)| ours.proven && !theirs.proven)
            .map(|(log, _, _)| *log)
            .collect::<HashSet<LogId>>();
        let mut proof_bytes = 0;
        for p in self.replica.proofs().filter(|p| proven.contains(&p.log())) {
            let encoded = p.encode();
            if served.proofs.len() == BATCH_PROOFS
                || proof_bytes + encoded.len() > BATCH_PROOF_BYTES
            {
                served.more = true;
                break;
            }
            proof_bytes += encoded.len();
            served.proofs.push(encoded);
        }
        Ok(served)
    }
}

impl Actor {
    /// Answers a peer's pull for this node's stream: its entries of every log, in the
    /// order it accepted them, from `stream`'s place. Entries still in memory only, and
    /// proofs, are left to the reconciliation that follows the stream.
    fn serve_stream(&self, stream: reconcile::Stream, max: usize) -> Result<Served, Failure> {
        let from = match stream {
            reconcile::Stream::From(position) => position,
            reconcile::Stream::Start => 0,
        };
        let (entries, next) = self.replica.entries_since(from, max, BATCH_BYTES)?;
        let held = u64::try_from(self.replica.entry_count()).unwrap_or(u64::MAX);
        Ok(Served {
            behind: held.saturating_sub(from),
            more: next.is_some(),
            entries: entries.iter().map(|e| e.bytes().to_vec()).collect(),
            next,
            ..Served::default()
        })
    }
}

/// Opens the replica from the store, for the service start.
pub(crate) fn load(
    store: &Store,
    charter: Arc<Charter>,
    cached_docs: usize,
) -> Result<Replica<Reader>, crate::store::Error> {
    let limits = Limits {
        max_cached_docs: cached_docs,
        ..Limits::default()
    };
    store.load(charter, limits, &mut |_, _, _| {})
}
