//! Scenario 6, peer: iroh-docs, the nearest peer system (Rust, signed entries, range-based
//! set reconciliation), doing the job of the catch-up in the same run.
//!
//! Two iroh-docs nodes run in this process, each on its own thread and (current-thread)
//! tokio runtime as if it were its own process, on loopback with relays and address lookup off:
//! node A writes the N entries of the catch-up into one document (the key is the entry's
//! hash, the value its encoded bytes), then node B, empty, imports the document from a
//! ticket that names A's direct address and syncs until it holds every entry and every
//! value. Measured on B: the time from the import until the last entry and the last value
//! are there, and the UDP payload bytes its socket sent and received meanwhile (iroh's own
//! counters). Beside it, spocnet's catch-up of the same N entries (scenario 4's measure).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use futures::StreamExt as _;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::store::mem::MemStore;
use iroh_blobs::{BlobsProtocol, Hash};
use iroh_docs::api::protocol::{AddrInfoOptions, ShareMode};
use iroh_docs::engine::LiveEvent;
use iroh_docs::protocol::Docs;
use iroh_docs::store::Query;
use iroh_docs::{ContentStatus, DocTicket};
use iroh_gossip::net::Gossip;
use serde_json::{Value, json};
use spoc_node::log::SignedEntry;

use super::report::{Outcome, Row};
use super::stats::{human, human_bytes, human_ms, round3};
use super::{Context as Ctx, size_label};

/// The scenario's title in the table.
pub const TITLE: &str = "6. peer: iroh-docs brings an empty replica up to date with N entries";

/// Targets: spocnet's time and bytes over iroh-docs'.
const TIME_TARGET: f64 = 0.5;
const BYTES_TARGET: f64 = 1.0;

/// A wait this long without one event from node B means its sync has stalled.
const STALL: Duration = Duration::from_secs(30);

/// Writes in flight at once while node A fills its document (not measured).
const WRITES_IN_FLIGHT: usize = 64;

/// spocnet's catch-up of N entries, as scenario 4 measured it.
#[derive(Debug)]
struct Spoc {
    caught_up: bool,
    ms: f64,
    bytes: Option<u64>,
}

/// The figures of one iroh-docs sync.
#[derive(Debug)]
struct Iroh {
    n: usize,
    caught_up: bool,
    /// Entries and values node B had when the measure stopped.
    entries_held: usize,
    values_held: usize,
    /// Entries in B's document, counted by a query after the measure.
    entries_queried: usize,
    time: Duration,
    sent: u64,
    received: u64,
    /// Bytes over a relay, which must be none with relays off.
    relay: u64,
    /// What node A's socket sent and received, as a cross-check of B's counters.
    a_sent: u64,
    a_received: u64,
    sync_errors: Vec<String>,
    value_mean: f64,
    write_time: Duration,
}

impl Iroh {
    fn bytes(&self) -> u64 {
        self.sent + self.received
    }
}

/// Runs the scenario for each catch-up size of the plan. `catch_up` is scenario 4's JSON
/// when it ran in this run already; otherwise spocnet's catch-up is measured here first.
pub fn run(ctx: &Ctx, catch_up: Option<&Value>) -> Result<Outcome> {
    let sizes = ctx.plan.catchup_sizes.clone();
    if sizes.is_empty() {
        return Err(anyhow!("no catch-up sizes in the plan"));
    }
    let mut failures = Vec::new();
    let measured_here;
    let catch_up = match catch_up {
        Some(v) => v,
        None => {
            let o = super::catchup::run(ctx).context("spocnet's catch-up")?;
            failures.extend(
                o.notes
                    .iter()
                    .filter(|n| n.starts_with("FAILED"))
                    .map(|n| format!("spocnet catch-up: {n}")),
            );
            measured_here = o.json;
            &measured_here
        }
    };
    let base = ctx.plan.catchup_base;
    let mut pairs = Vec::new();
    for &n in &sizes {
        let entries = ctx
            .work
            .entries
            .get(base..base + n)
            .ok_or_else(|| anyhow!("the workload holds fewer than {} entries", base + n))?;
        let timeout = Duration::from_secs(60) + Duration::from_millis(5 * n as u64);
        // A failed size is reported, and the others are still measured.
        match measure(entries, timeout)
            .with_context(|| format!("iroh-docs, {} entries", size_label(n)))
        {
            Ok(m) => pairs.push((spoc_of(catch_up, n), m)),
            Err(e) => failures.push(format!("FAILED: {e:#}")),
        }
    }
    let mut o = outcome(ctx, &pairs);
    for (spoc, m) in &pairs {
        if spoc.is_none() {
            failures.push(format!(
                "FAILED: spocnet's catch-up has no figure for {} entries",
                size_label(m.n)
            ));
        }
        if !m.caught_up {
            failures.push(format!(
                "FAILED: after {} iroh-docs' node B held {} of {} entries and {} of their values{}",
                human(m.time),
                m.entries_held,
                m.n,
                m.values_held,
                if m.sync_errors.is_empty() {
                    String::new()
                } else {
                    format!(" (sync errors: {})", m.sync_errors.join("; "))
                }
            ));
        }
    }
    if !failures.is_empty() {
        o.failed = true;
        o.json["errors"] = json!(failures);
        o.notes.extend(failures);
    }
    Ok(o)
}

/// spocnet's figures for `n` new entries in scenario 4's JSON.
fn spoc_of(catch_up: &Value, n: usize) -> Option<Spoc> {
    let size = catch_up["sizes"]
        .as_array()?
        .iter()
        .find(|s| s["entries"].as_u64() == Some(n as u64))?;
    Some(Spoc {
        caught_up: size["caught_up"].as_bool().unwrap_or(false),
        ms: size["spoc_ms"].as_f64()?,
        bytes: size["spoc_bytes"].as_u64(),
    })
}

/// One iroh-docs node: an endpoint on 127.0.0.1 only, with relays and address lookup off,
/// and the blobs, gossip and docs protocols in memory.
#[derive(Debug)]
struct Node {
    endpoint: Endpoint,
    router: Router,
    docs: Docs,
}

impl Node {
    async fn start() -> Result<Node> {
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")
            .map_err(|e| anyhow!("iroh bind address: {e}"))?
            .bind()
            .await
            .map_err(|e| anyhow!("iroh endpoint: {e}"))?;
        let blobs = MemStore::new();
        let gossip = Gossip::builder().spawn(endpoint.clone());
        let docs = Docs::memory()
            .spawn(endpoint.clone(), (*blobs).clone(), gossip.clone())
            .await?;
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, BlobsProtocol::new(&blobs, None))
            .accept(iroh_gossip::ALPN, gossip)
            .accept(iroh_docs::ALPN, docs.clone())
            .spawn();
        Ok(Node {
            endpoint,
            router,
            docs,
        })
    }

    /// Its address on loopback, given directly (there is no lookup to find it).
    fn addr(&self) -> Result<EndpointAddr> {
        let socket: SocketAddr = self
            .endpoint
            .bound_sockets()
            .into_iter()
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow!("the iroh endpoint has no IPv4 socket"))?;
        Ok(EndpointAddr::new(self.endpoint.id()).with_ip_addr(socket))
    }

    async fn stop(self) {
        // A failed shutdown after the measure changes no figure.
        self.router.shutdown().await.ok();
    }
}

/// The UDP payload bytes an endpoint's socket sent and received, and those over a relay.
fn wire(endpoint: &Endpoint) -> (u64, u64, u64) {
    let s = &endpoint.metrics().socket;
    (
        s.send_ipv4.get() + s.send_ipv6.get(),
        s.recv_data_ipv4.get() + s.recv_data_ipv6.get(),
        s.send_relay.get() + s.recv_data_relay.get(),
    )
}

/// A node's own runtime, on its own thread, as if it were its own process. It is a
/// current-thread runtime, as in iroh-docs' own tests: with multi-thread runtimes, node B's
/// value downloads stalled for good in about one run in five of 10k entries and in each of
/// three runs of 100k (iroh-docs 0.101, iroh-blobs 0.103), while its entries had all arrived.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// What node A hands over once its document holds the entries.
#[derive(Debug)]
struct Source {
    ticket: DocTicket,
    /// A clone of its endpoint, whose counters the measure reads.
    endpoint: Endpoint,
    write_time: Duration,
}

/// Node A, on its own thread and runtime, writes `entries` and serves them until `stop`.
async fn source(
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    ready: std::sync::mpsc::SyncSender<Source>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let a = Node::start().await.context("node A")?;
    let written = Instant::now();
    let author = a.docs.author_create().await?;
    let doc = a.docs.create().await?;
    let mut writes = futures::stream::iter(
        entries
            .into_iter()
            .map(|(key, value)| doc.set_bytes(author, key, value)),
    )
    .buffer_unordered(WRITES_IN_FLIGHT);
    while let Some(w) = writes.next().await {
        w.context("writing on node A")?;
    }
    drop(writes);
    let write_time = written.elapsed();
    let shared = doc.share(ShareMode::Read, AddrInfoOptions::Id).await?;
    let ticket = DocTicket {
        capability: shared.capability,
        nodes: vec![a.addr()?],
    };
    ready
        .send(Source {
            ticket,
            endpoint: a.endpoint.clone(),
            write_time,
        })
        .map_err(|_| anyhow!("the measure stopped before node A was ready"))?;
    // A dropped sender also means stop.
    stop.await.ok();
    a.stop().await;
    Ok(())
}

/// Node A writes `entries`; node B, empty, syncs them. Each node has its own thread and
/// runtime.
fn measure(entries: &[SignedEntry], timeout: Duration) -> Result<Iroh> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let rt_a = runtime()?;
    // The key is the entry's hash, the value its encoded bytes.
    let owned = entries
        .iter()
        .map(|e| (e.hash().0.to_vec(), e.bytes().to_vec()))
        .collect();
    let a = std::thread::spawn(move || rt_a.block_on(source(owned, ready_tx, stop_rx)));
    let joined = |a: std::thread::JoinHandle<Result<()>>| -> Result<()> {
        a.join()
            .map_err(|_| anyhow!("node A's thread panicked"))?
            .context("node A")
    };
    let Ok(src) = ready_rx.recv() else {
        // Node A stopped before it was ready: its error says why.
        joined(a)?;
        return Err(anyhow!("node A stopped before it was ready"));
    };
    let rt_b = runtime()?;
    let result = rt_b.block_on(sync(entries, src, timeout));
    drop(rt_b);
    // The measure's error comes first; node A's shutdown changes no figure.
    stop_tx.send(()).ok();
    let stopped = joined(a);
    let m = result?;
    stopped?;
    Ok(m)
}

/// Node B, empty, imports the document and syncs until it holds every entry and value.
async fn sync(entries: &[SignedEntry], src: Source, timeout: Duration) -> Result<Iroh> {
    let n = entries.len();
    let mut missing_keys: HashSet<Vec<u8>> = entries.iter().map(|e| e.hash().0.to_vec()).collect();
    let mut missing_values: HashSet<Hash> = entries.iter().map(|e| Hash::new(e.bytes())).collect();
    let value_mean = entries.iter().map(|e| e.bytes().len()).sum::<usize>() as f64 / n as f64;

    let b = Node::start().await.context("node B")?;
    let (b0, a0) = (wire(&b.endpoint), wire(&src.endpoint));
    let start = Instant::now();
    let deadline = start + timeout;
    let (doc_b, mut events) = b.docs.import_and_subscribe(src.ticket).await?;
    let mut sync_errors = Vec::new();
    let mut caught_up = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = deadline.saturating_duration_since(now).min(STALL);
        let event = match tokio::time::timeout(wait, events.next()).await {
            Ok(Some(event)) => event?,
            // The stream ended, or no event came within the wait.
            Ok(None) | Err(_) => break,
        };
        match event {
            LiveEvent::InsertRemote {
                entry,
                content_status,
                ..
            } => {
                missing_keys.remove(entry.key());
                if matches!(content_status, ContentStatus::Complete) {
                    missing_values.remove(&entry.content_hash());
                }
            }
            LiveEvent::ContentReady { hash } => {
                missing_values.remove(&hash);
            }
            LiveEvent::SyncFinished(s) => {
                if let Err(e) = s.result {
                    sync_errors.push(e);
                }
            }
            _ => {}
        }
        if missing_keys.is_empty() && missing_values.is_empty() {
            caught_up = true;
            break;
        }
    }
    let time = start.elapsed();
    let (b1, a1) = (wire(&b.endpoint), wire(&src.endpoint));
    let entries_queried = doc_b.get_many(Query::all().build()).await?.count().await;
    b.stop().await;
    Ok(Iroh {
        n,
        caught_up,
        entries_held: n - missing_keys.len(),
        values_held: n - missing_values.len(),
        entries_queried,
        time,
        sent: b1.0 - b0.0,
        received: b1.1 - b0.1,
        relay: b1.2 - b0.2,
        a_sent: a1.0 - a0.0,
        a_received: a1.1 - a0.1,
        sync_errors,
        value_mean,
        write_time: src.write_time,
    })
}

fn outcome(ctx: &Ctx, pairs: &[(Option<Spoc>, Iroh)]) -> Outcome {
    let mut o = Outcome::new("peer_iroh", TITLE);
    let mut sizes = Vec::new();
    let mut met = true;
    for (spoc, m) in pairs {
        let case = format!("{} entries", size_label(m.n));
        let iroh_ms = m.time.as_secs_f64() * 1e3;
        let iroh_time = if m.caught_up {
            human(m.time)
        } else {
            format!("NOT caught up after {}", human(m.time))
        };
        let iroh_bytes = format!(
            "{} ({:.0} B/entry)",
            human_bytes(m.bytes() as f64),
            m.bytes() as f64 / m.n as f64
        );
        let ratio_time = spoc.as_ref().map(|s| s.ms / iroh_ms);
        let ratio_bytes = spoc
            .as_ref()
            .and_then(|s| s.bytes)
            .map(|b| b as f64 / m.bytes().max(1) as f64);
        let both = m.caught_up && spoc.as_ref().is_some_and(|s| s.caught_up);
        let ok = both
            && ratio_time.is_some_and(|r| r <= TIME_TARGET)
            && ratio_bytes.is_some_and(|r| r <= BYTES_TARGET);
        met &= ok;
        let spoc_time = match spoc {
            Some(s) if s.caught_up => human_ms(s.ms),
            Some(s) => format!("NOT caught up after {}", human_ms(s.ms)),
            None => "not measured".into(),
        };
        match ratio_time {
            Some(r) => o.rows.push(Row {
                met: Some(both && r <= TIME_TARGET),
                ..Row::ratio(
                    case.clone(),
                    "time",
                    spoc_time,
                    iroh_time,
                    r,
                    Some(TIME_TARGET),
                )
            }),
            None => o.rows.push(Row {
                met: Some(false),
                target: format!("≤ {TIME_TARGET}×"),
                ..Row::context(case.clone(), "time", spoc_time, iroh_time)
            }),
        }
        let spoc_bytes = spoc.as_ref().and_then(|s| s.bytes).map_or_else(
            || "not measured".into(),
            |b| {
                format!(
                    "{} ({:.0} B/entry)",
                    human_bytes(b as f64),
                    b as f64 / m.n as f64
                )
            },
        );
        match ratio_bytes {
            Some(r) => o.rows.push(Row {
                met: Some(both && r <= BYTES_TARGET),
                ..Row::ratio(
                    case.clone(),
                    "bytes on the wire",
                    spoc_bytes,
                    iroh_bytes,
                    r,
                    Some(BYTES_TARGET),
                )
            }),
            None => o.rows.push(Row {
                met: Some(false),
                target: format!("≤ {BYTES_TARGET}×"),
                ..Row::context(case.clone(), "bytes on the wire", spoc_bytes, iroh_bytes)
            }),
        }
        sizes.push(json!({
            "entries": m.n,
            "spoc_base_entries": ctx.plan.catchup_base,
            "spoc_caught_up": spoc.as_ref().map(|s| s.caught_up),
            "spoc_ms": spoc.as_ref().map(|s| round3(s.ms)),
            "spoc_bytes": spoc.as_ref().and_then(|s| s.bytes),
            "iroh_caught_up": m.caught_up,
            "iroh_entries_held": m.entries_held,
            "iroh_values_held": m.values_held,
            "iroh_entries_queried": m.entries_queried,
            "iroh_ms": round3(iroh_ms),
            "iroh_bytes_sent": m.sent,
            "iroh_bytes_received": m.received,
            "iroh_bytes": m.bytes(),
            "iroh_bytes_per_entry": round3(m.bytes() as f64 / m.n as f64),
            "iroh_relay_bytes": m.relay,
            "iroh_source_bytes_sent": m.a_sent,
            "iroh_source_bytes_received": m.a_received,
            "iroh_sync_errors": m.sync_errors,
            "iroh_value_mean_bytes": round3(m.value_mean),
            "iroh_write_ms": round3(m.write_time.as_secs_f64() * 1e3),
            "ratio_time": ratio_time.map(round3),
            "ratio_bytes": ratio_bytes.map(round3),
            "target_met": ok,
        }));
    }
    o.json = json!({
        "target": format!(
            "spocnet / iroh-docs: time <= {TIME_TARGET}, bytes <= {BYTES_TARGET}"
        ),
        "peer": "iroh 1, iroh-docs 0.101, iroh-blobs 0.103, iroh-gossip 0.101 (in-memory stores)",
        "sizes": sizes,
        "target_met": met,
    });
    o.notes.push(
        "iroh-docs: two nodes in this process, each on its own thread and current-thread tokio \
         runtime, on 127.0.0.1 (relays and address lookup off, the source's direct address in the \
         ticket); node A holds one document with the N \
         entries (key = entry hash, value = encoded entry), node B starts empty, imports it \
         read-only and syncs; time = from the import until B holds every entry and every value \
         (its insert and content-ready events); bytes = UDP payload (QUIC packets) B's socket \
         sent and received meanwhile, from iroh's socket counters"
            .into(),
    );
    o.notes.push(format!(
        "spocnet: scenario 4's catch-up of the same N entries (real processes; the returning \
         node already holds {} common entries, which its sync also compares); bytes = TCP \
         payload both ways",
        ctx.plan.catchup_base
    ));
    o
}
