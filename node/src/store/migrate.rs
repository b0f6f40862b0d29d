//! Moves a store of an older format to the current one, in one transaction.
//!
//! The second format lacked the index of meeting dates, which `meeting_dates` adds from
//! the meetings' summaries.
//!
//! The first format kept each entry unsealed and checked every chain and signature at
//! every start. Its entries get that full check once more here, are replayed through a
//! fresh replica (which puts them in an order it accepts them in), and are written again
//! with their positions, indexes, summaries and seals; the old rows go in the same
//! transaction, so a crash leaves either store whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Error, Progress, Store, Writer, dberr, entry_key, tables};
use crate::charter::Charter;
use crate::log::{EquivocationProof, LogId, SignedEntry, Tip};
use crate::replica::{Limits, Replica};

const OLD_ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const OLD_SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// Adds the index rows of meeting dates to a store of the second format.
pub(super) fn meeting_dates(store: &Store) -> Result<(), Error> {
    let tx = store.db.begin_write().map_err(dberr)?;
    let mut added = 0;
    {
        let summaries = tx.open_table(tables::SUMMARIES).map_err(dberr)?;
        let mut list = tx.open_table(tables::LIST).map_err(dberr)?;
        let first = format!("{}/", crate::docs::Collection::Meetings.as_str());
        for row in summaries.range(first.as_str()..).map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let key = k.value();
            if !key.starts_with(first.as_str()) {
                break;
            }
            let id: crate::docs::DocId = key
                .parse()
                .map_err(|_| Error::Corrupt(format!("a summary key {key:?} is not an id")))?;
            let (_, summary) = store
                .sealer
                .open_row("summaries", id.as_str().as_bytes(), v.value())
                .and_then(super::reader::decode_summary)
                .ok_or_else(|| {
                    Error::Corrupt(format!("the summary of {id} does not match its seal"))
                })?;
            if let Some(key) = super::reader::date_keys(&id, &summary) {
                let sealed = store.sealer.seal("list", &key, &[]);
                list.insert(key.as_slice(), sealed.as_slice())
                    .map_err(dberr)?;
                added += 1;
            }
        }
        tx.open_table(tables::META)
            .map_err(dberr)?
            .insert("format", super::FORMAT_VERSION)
            .map_err(dberr)?;
    }
    tx.commit().map_err(dberr)?;
    tracing::info!(
        meetings = added,
        "store moved to format 3: meetings indexed by date"
    );
    Ok(())
}

pub(super) fn run(
    store: &Store,
    charter: &Arc<Charter>,
    progress: Progress<'_>,
) -> Result<(), Error> {
    tracing::info!("migrating the store from format 1");
    let (entries, proofs) = read(store, charter, progress)?;
    let mut replica = Replica::new(charter.clone(), Limits::unbounded());
    let mut report = replica.add_proofs(proofs.clone())?;
    let total = entries.len();
    let mut accepted = replica.ingest_verified(entries)?;
    if let Some((hash, invalid)) = accepted.rejected.first() {
        return Err(Error::Corrupt(format!("entry {hash}: {invalid}")));
    }
    if replica.pending_count() > 0 || accepted.accepted.len() != total {
        return Err(Error::Corrupt(format!(
            "{} entries lack their causal past",
            total - accepted.accepted.len()
        )));
    }
    report.accepted.append(&mut accepted.accepted);
    report.touched.append(&mut accepted.touched);
    report.rebuilt_docs = report.touched.clone();
    report.new_proofs = proofs;
    let tx = store.db.begin_write().map_err(dberr)?;
    {
        for t in [OLD_ENTRIES, tables::HASHES, tables::PROOFS] {
            tx.open_table(t)
                .map_err(dberr)?
                .retain(|_, _| false)
                .map_err(dberr)?;
        }
        tx.open_table(OLD_SNAPSHOTS)
            .map_err(dberr)?
            .retain(|_, _| false)
            .map_err(dberr)?;
        tx.open_table(tables::META)
            .map_err(dberr)?
            .retain(|_, _| false)
            .map_err(dberr)?;
        super::create_tables(&tx)?;
        let mut w = Writer::open(&tx, &store.sealer)?;
        w.meta_put("network", charter.network.as_bytes())?;
        let mut logs = BTreeMap::new();
        for e in &report.accepted {
            logs.insert(e.entry.log(), Tip::from(e));
            w.append_entry(e)?;
        }
        for (log, tip) in &logs {
            w.put_tip(log, Some(tip))?;
        }
        for id in &report.rebuilt_docs {
            w.save_doc(id, replica.doc(id))?;
            match replica.doc(id) {
                Some(doc) => w.put_summary(id, &crate::docs::view::summary(id, doc))?,
                None => w.drop_summary(id)?,
            }
        }
        for p in &report.new_proofs {
            w.put_proof(p)?;
        }
        w.finish()?;
        tx.open_table(tables::META)
            .map_err(dberr)?
            .insert("format", super::FORMAT_VERSION)
            .map_err(dberr)?;
    }
    tx.commit().map_err(dberr)?;
    tracing::info!(entries = total, "store migrated from format 1");
    Ok(())
}

/// Reads a first-format store with every check that format made at start: each entry
/// under its own key, whole chains, and every signature.
fn read(
    store: &Store,
    charter: &Charter,
    progress: Progress<'_>,
) -> Result<(Vec<SignedEntry>, Vec<EquivocationProof>), Error> {
    let tx = store.db.begin_read().map_err(dberr)?;
    let meta = tx.open_table(tables::META).map_err(dberr)?;
    if let Some(found) = meta.get("network").map_err(dberr)? {
        let found = String::from_utf8_lossy(found.value()).into_owned();
        if found != charter.network {
            return Err(Error::WrongNetwork {
                expected: charter.network.clone(),
                found,
            });
        }
    }
    let table = tx.open_table(OLD_ENTRIES).map_err(dberr)?;
    let mut entries: Vec<SignedEntry> = Vec::new();
    let mut prev: Option<(LogId, Tip)> = None;
    for row in table.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let e = SignedEntry::decode(v.value()).map_err(|err| {
            Error::Corrupt(format!("entry under key {}: {err}", hex::encode(k.value())))
        })?;
        let log = e.entry.log();
        if k.value() != entry_key(&log, e.entry.seq) {
            return Err(Error::Corrupt(format!(
                "entry {} is stored under another key",
                e.hash()
            )));
        }
        let expected = prev.filter(|(l, _)| *l == log).map(|(_, tip)| tip);
        crate::log::check_chain(&e.entry, expected.as_ref()).map_err(|err| {
            Error::Corrupt(format!(
                "log {} of {} breaks at seq {}: {err}",
                log.incarnation,
                log.author.short(),
                e.entry.seq
            ))
        })?;
        prev = Some((log, Tip::from(&e)));
        entries.push(e);
    }
    progress("reading entries", entries.len(), entries.len());
    for chunk in entries.chunks(1024) {
        super::check_signatures(chunk, &charter.scope())?;
    }
    // Proofs are kept the same way in both formats.
    let proofs = store.reader().proofs(charter)?;
    Ok((entries, proofs))
}
