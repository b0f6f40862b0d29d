//! The service: wires settings, keys, charter, store, replica and API together, and owns
//! every task and thread it starts until shutdown.
//!
//! `Node::open` does every check that can refuse a start (settings, key, charter, the
//! store's verification, a data directory in use), so a node that starts is sound. `run`
//! takes its API listener and its shutdown signal from the caller, so tests can bind
//! `127.0.0.1:0` and stop it at will.

pub mod actor;
pub mod certificate;
pub mod report;
pub mod rotation;
pub mod sync;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::charter::Charter;
use crate::config::Settings;
use crate::identity::SecretKey;
use crate::operator::{self, Access, Role, Token};
use crate::store::Store;

pub use actor::{Failure, Handle, WriteAck};

/// The node's idea of the time; tests pass a fixed one.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The system clock moved by a fixed offset: a node whose clock is wrong, for tests of
/// time (`SPOC_CLOCK_OFFSET_MS`).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.0)
    }
}

/// A clock that stands still until it is advanced: tests move a node through days in an
/// instant.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Moves the clock on by `ms`; returns the new time.
    pub fn advance(&self, ms: u64) -> u64 {
        self.0
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst)
            .saturating_add(ms)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Why the node does not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("national key: {0}")]
    Key(crate::identity::Error),
    #[error("node key: {0}")]
    NodeKey(crate::identity::Error),
    #[error("cannot read charter {path}: {reason}")]
    CharterRead { path: String, reason: String },
    #[error("{path}: {source}")]
    Charter {
        path: String,
        #[source]
        source: crate::charter::Error,
    },
    #[error("the national key {0} is not any participant's key in the charter")]
    NotParticipant(String),
    #[error("the national key is not the charter's key for {state} (it is {owner}'s)")]
    WrongKey { state: String, owner: String },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("api token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("key passphrase file {path}: {reason}")]
    Passphrase { path: String, reason: String },
    #[error("api: {0}")]
    Api(String),
    #[error("network: {0}")]
    Network(String),
    #[error("node stopped: {0}")]
    Stopped(String),
}

/// A node that passed every start-up check, ready to `run`.
pub struct Node {
    pub settings: Settings,
    pub charter: Arc<Charter>,
    pub code: String,
    pub incarnation: u32,
    /// The operators whose tokens the API accepts.
    pub(crate) access: Arc<std::sync::RwLock<Access>>,
    pub(crate) handle: Handle,
    actor: std::thread::JoinHandle<Result<(), Failure>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Cancelled by the actor when it stops on a fatal error.
    pub(crate) fatal: CancellationToken,
    pub(crate) network: crate::network::Config,
    pub(crate) published: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub(crate) peers: sync::PeerTable,
    /// Renews the node certificate while the node runs.
    pub(crate) certifier: certificate::Certifier,
    /// When the certificate issued at start expires.
    pub(crate) certificate_until_ms: u64,
    /// The addresses of the other participants' nodes, which the network dials.
    pub(crate) dials: tokio::sync::watch::Receiver<Vec<String>>,
    /// Who may certify nodes, after each amendment or rotation.
    pub(crate) charters: tokio::sync::watch::Receiver<Arc<certificate::Trust>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("state", &self.code)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

fn read_passphrase(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Error> {
    if let Some(p) = env("SPOC_KEY_PASSPHRASE") {
        return Ok(Some(p));
    }
    let Some(path) = &settings.key_passphrase_file else {
        return Ok(None);
    };
    let err = |reason: String| Error::Passphrase {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "is readable by others (mode {mode:o}): chmod 600 it"
        )));
    }
    std::fs::read_to_string(path)
        .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
        .map_err(|e| err(e.to_string()))
}

/// The operators the API accepts. On the first start with operators, the token of
/// `api.token` becomes the first head, `head`; after that, `api.token` is a head's token only
/// while that operator is not revoked.
fn first_head(store: &Store, token: &str, now_ms: u64) -> Result<Access, Error> {
    let mut operators = store.operators()?;
    if operators.is_empty() {
        let token = Token::from_text(token);
        let head = operator::add(&[], operator::FIRST_HEAD, Role::Head, &token, now_ms)
            .map_err(|e| Error::Api(e.to_string()))?;
        store.put_operator(&head)?;
        tracing::info!(operator = %head.name, "the token of api.token is the first head");
        operators.push(head);
    }
    Ok(Access::new(&operators))
}

/// Reads the API token, creating it (0600) on the first start.
fn api_token(path: &Path) -> Result<String, Error> {
    let shown = path.display().to_string();
    let err = |reason: String| Error::Token {
        path: shown.clone(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "is readable by others (mode {mode:o}): chmod 600 it"
                )));
            }
            let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let token = token.trim().to_owned();
            if token.len() < 32 {
                return Err(err("is too short".into()));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let token = hex::encode(bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Node {
    /// Runs every start-up check and loads the store. The store is verified in full:
    /// chains, signatures, proofs and snapshots.
    pub fn open(
        settings: Settings,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, Error> {
        let passphrase = read_passphrase(&settings, env)?;
        rotation::recover(&settings.key)
            .map_err(|e| Error::Stopped(format!("finishing a key rotation failed: {e}")))?;
        let mut key =
            Arc::new(SecretKey::load(&settings.key, passphrase.as_deref()).map_err(Error::Key)?);
        let charter_text =
            std::fs::read_to_string(&settings.charter).map_err(|e| Error::CharterRead {
                path: settings.charter.display().to_string(),
                reason: e.to_string(),
            })?;
        let charter = Arc::new(
            Charter::parse(&charter_text).map_err(|source| Error::Charter {
                path: settings.charter.display().to_string(),
                source,
            })?,
        );
        let node_key = match SecretKey::load(&settings.node_key, None) {
            Ok(k) => k,
            Err(crate::identity::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let k = SecretKey::generate(&mut rand::rng());
                k.save(&settings.node_key, None).map_err(Error::NodeKey)?;
                k
            }
            Err(e) => return Err(Error::NodeKey(e)),
        };
        if let Some(failpoint) = settings.failpoint {
            tracing::warn!(
                ?failpoint,
                "SPOC_FAILPOINT is set: this node will hold at that commit until it is killed"
            );
        }
        let store = Store::open_with_cache(&settings.store_path(), settings.store_cache_mib << 20)?
            .with_failpoint(settings.failpoint);
        let token = api_token(&settings.token_path())?;
        let access = Arc::new(std::sync::RwLock::new(first_head(
            &store,
            &token,
            clock.now_ms(),
        )?));
        let replica = actor::load(&store, charter.clone(), settings.cached_documents)?;
        // The node's state is the one whose key it holds in the charter in force. A state
        // that an amendment adds starts from the genesis charter like every node, with
        // its code in `node.toml`, and writes once it holds the amendment.
        if let Some(next) =
            rotation::finish(&settings.key, passphrase.as_deref(), &key, &replica)
                .map_err(|e| Error::Stopped(format!("finishing a key rotation failed: {e}")))?
        {
            key = Arc::new(next);
        }
        if replica.keys().1.contains_key(&key.public()) {
            tracing::warn!(
                "this node's national key was rotated or revoked: it reads and relays, and writes nothing"
            );
        }
        let in_force = replica.charter().clone();
        let signer = replica
            .signer(in_force.version, &key.public())
            .map(|(p, _)| p);
        let code = match (signer, &settings.state) {
            (Some(p), Some(state)) if p.code != *state => {
                return Err(Error::WrongKey {
                    state: state.clone(),
                    owner: p.code.clone(),
                });
            }
            (Some(p), _) => p.code.clone(),
            (None, Some(state)) if in_force.participant(state).is_none() => {
                tracing::warn!(
                    state = %state,
                    version = in_force.version,
                    "this state is not in the charter in force: the node syncs, and writes once an amendment adds it"
                );
                state.clone()
            }
            (None, _) => return Err(Error::NotParticipant(key.public().to_string())),
        };
        // Every start is a new incarnation: a log never continues after a restart, so a
        // node restored from an old backup cannot sign a second entry for a seq it already
        // used.
        let incarnation = replica.fresh_incarnation(&key.public(), &mut rand::rng());
        tracing::info!(
            state = %code,
            incarnation,
            entries = replica.entry_count(),
            logs = replica.tips().len(),
            "store opened"
        );
        let fatal = CancellationToken::new();
        let keypair = crate::network::keypair_from_seed(&node_key.seed_bytes())
            .map_err(|e| Error::Network(e.to_string()))?;
        let peer_id = keypair.public().to_peer_id();
        let key_watch = tokio::sync::watch::Sender::new(key.clone());
        let certifier = certificate::Certifier::new(key_watch.subscribe(), &charter, &peer_id);
        let charter_watch = tokio::sync::watch::Sender::new(Arc::new(actor::trust(&replica)));
        let charters = charter_watch.subscribe();
        let certificate = certifier.issue(clock.now_ms());
        let mut network = crate::network::Config::new(
            keypair,
            charter.network.clone(),
            certificate.encode(),
            charter.hash(),
            Arc::new(certificate::Admission {
                charter: charter_watch.subscribe(),
                clock: clock.clone(),
            }),
        );
        network.listen = settings
            .listen
            .iter()
            .map(|a| crate::network::parse_addr(a))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Network(e.to_string()))?;
        let mut replica = replica;
        let dials = actor::dial_addresses(&in_force, &mut replica, &code)
            .map_err(|e| Error::Stopped(format!("reading the address records failed: {e}")))?;
        network.dial = dials
            .iter()
            .filter_map(|a| crate::network::parse_addr(a).ok())
            .collect();
        let dials_watch = tokio::sync::watch::Sender::new(dials);
        let dials = dials_watch.subscribe();
        network.genesis = Some(charter.genesis());
        network.mdns = settings.mdns;
        network.seed = u64::from(incarnation);
        let (publish, published) = tokio::sync::mpsc::channel(1024);
        let peers = sync::PeerTable::default();
        let table = peers.clone();
        let status_extra: actor::StatusExtra = Arc::new(move || sync::status_of(&table, &peer_id));
        let sync_set = actor::sync_set(&replica);
        let (handle, actor) = actor::spawn(
            actor::Actor {
                charter: in_force,
                charter_watch,
                key_watch,
                key_file: Some((settings.key.clone(), passphrase.clone())),
                replica,
                store,
                key,
                code: code.clone(),
                incarnation,
                clock: clock.clone(),
                status_extra,
                accepted_local: 0,
                fatal: fatal.clone(),
                publish: Some(publish),
                entries_watch: tokio::sync::watch::Sender::new(0),
                dials_watch,
                compact: std::collections::BTreeSet::new(),
                sync_set,
                access: access.clone(),
            },
            256,
        );
        Ok(Node {
            settings,
            charter,
            code,
            incarnation,
            access,
            handle,
            actor,
            clock,
            fatal,
            network,
            published,
            peers,
            certifier,
            certificate_until_ms: certificate.not_after_ms,
            dials,
            charters,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

/// Binds the API's Unix socket at `path`, readable and writable by the node's user alone
/// (0600). A socket left by a node that stopped without cleaning up is replaced; the store's
/// lock, taken before, already refused a second node on the same data directory.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    use std::os::unix::fs::FileTypeExt;
    let err = |reason: String| Error::Api(format!("cannot listen on {}: {reason}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
        }
        Ok(_) => return Err(err("it exists and is not a socket".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Serves the node until `shutdown` is cancelled or the node fails, then stops every task
/// and thread it started and waits for them. The API answers on `api_listener` and, when
/// given, on the Unix socket `api_socket`.
pub async fn run(
    node: Node,
    api_listener: tokio::net::TcpListener,
    api_socket: Option<tokio::net::UnixListener>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| Error::Api(e.to_string()))?;
    let (net, events, net_task) = crate::network::spawn(node.network, shutdown.child_token())
        .map_err(|e| Error::Network(e.to_string()))?;
    let renewal = tokio::spawn(certificate::renew(
        node.certifier,
        net.clone(),
        node.clock.clone(),
        node.certificate_until_ms,
        certificate::RENEWAL_CHECK,
        shutdown.clone(),
    ));
    let replication = tokio::spawn(sync::run(
        node.handle.clone(),
        net,
        sync::Feeds {
            events,
            published: node.published,
            dials: node.dials,
            charters: node.charters,
        },
        node.peers,
        node.clock.clone(),
        shutdown.clone(),
    ));
    let metrics = Arc::new(crate::api::Counters::default());
    let app = crate::api::router(node.handle.clone(), node.access.clone(), metrics);
    let stopping = {
        let (shutdown, fatal) = (shutdown.clone(), node.fatal.clone());
        move || {
            let (shutdown, fatal) = (shutdown.clone(), fatal.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = fatal.cancelled() => {}
                }
            }
        }
    };
    let socket_path = api_socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    let on_socket = api_socket.map(|listener| {
        let (app, stopping) = (app.clone(), stopping.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping())
                .await
        })
    });
    let api = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(stopping())
            .await
    });
    tracing::info!(
        state = %node.code,
        api = %api_addr,
        "node running"
    );
    let served = api.await;
    // The API has stopped, on shutdown or a fatal error: stop replication too.
    shutdown.cancel();
    if let Some(task) = on_socket
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "the API's socket stopped with an error");
    }
    if let Some(path) = socket_path
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::debug!(error = %e, "the API's socket was already gone");
    }
    let _ = renewal.await;
    let _ = replication.await;
    let _ = net_task.await;
    drop(node.handle);
    let actor = node.actor;
    let stopped = tokio::task::spawn_blocking(move || actor.join())
        .await
        .map_err(|e| Error::Stopped(e.to_string()))?;
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(f)) => return Err(Error::Stopped(f.to_string())),
        Err(_) => return Err(Error::Stopped("the node thread panicked".into())),
    }
    match served {
        Ok(Ok(())) => {
            tracing::info!("node stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Api(e.to_string())),
        Err(e) => Err(Error::Api(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_file_readable_by_others_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("passphrase");
        std::fs::write(&path, "correct horse\n")?;
        let settings = Settings::parse(
            dir.path(),
            "node.toml",
            "key_passphrase_file = \"passphrase\"",
            &|_| None,
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        let refused = read_passphrase(&settings, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            refused.ends_with("is readable by others (mode 640): chmod 600 it"),
            "{refused}"
        );
        assert!(!refused.contains("correct horse") && !refused.contains('\n'));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let read = read_passphrase(&settings, &|_| None)?;
        assert_eq!(read.as_deref(), Some("correct horse"));
        Ok(())
    }
}
