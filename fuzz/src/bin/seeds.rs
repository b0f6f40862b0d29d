//! Writes the seed corpus of the `entry` target, or with `--check` checks it: entries of
//! the fuzz fixture's network, made through `Replica::prepare` as a node makes them, so
//! that the fuzzer starts from entries that pass every check. The seeds are signed for the
//! fixture's genesis charter, so a change of what that hash covers (the charter's format
//! or its rules version) makes them stale; `--check` then fails, and a run without it
//! writes them again.

use std::collections::BTreeMap;
use std::path::Path;

use spoc_node::docs::command::Command;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica};

/// What separates the entries of one input of the `entry` target.
const SEPARATOR: u8 = 0xfe;

fn commands(obstacle: &str) -> Vec<(&'static str, Command)> {
    vec![
        (
            "IE",
            Command::MeetingConvene {
                title: "Plenary".into(),
                date: "2026-12-10".into(),
                venue: "Dublin".into(),
                format: None,
                end_date: None,
                number: None,
            },
        ),
        (
            "LT",
            Command::ObstacleReport {
                title: "Slow replies".into(),
                kind: "legal".into(),
                description: "Replies to requests take months".into(),
                subtype: None,
                instrument: Some("Directive 2014/41/EU".into()),
                article: None,
                channel: None,
                states_concerned: vec!["IE".into()],
                impact: Some(2),
                solution: None,
            },
        ),
        (
            "EL",
            Command::ObstacleEndorse {
                obstacle: obstacle.to_owned(),
                stance: "support".into(),
                note: Some("the same here".into()),
            },
        ),
        (
            "IE",
            Command::FactsheetSet {
                fields: BTreeMap::from([("notes".to_owned(), "Garda SPOC".to_owned())]),
            },
        ),
        (
            "LT",
            Command::TrainingNominate {
                title: "Digital evidence".into(),
                expertise: "cybercrime".into(),
                languages: vec!["en".into(), "lt".into()],
            },
        ),
        (
            "EL",
            Command::AddressSet {
                addresses: vec!["/ip4/10.0.0.3/tcp/4001".into(), "/dns/spoc.example.gr/tcp/443".into()],
            },
        ),
    ]
}

/// The seeds, by file name: one entry each, then all of them in one input.
fn seeds() -> Result<Vec<(String, Vec<u8>)>, String> {
    let (charter, keys) = spoc_fuzz::fixture();
    let mut replica = Replica::new(charter.clone(), Limits::default());
    let mut entries: Vec<SignedEntry> = Vec::new();
    let mut obstacle = String::new();
    let steps = commands("").len();
    for (i, step) in (0..steps).enumerate() {
        let (code, command) = commands(&obstacle).swap_remove(step);
        let ulid = ulid::Ulid::from_parts(spoc_fuzz::NOW_MS, i as u128 + 1);
        let (entry, id) = replica
            .prepare(&keys[code], 1, &command, spoc_fuzz::NOW_MS, ulid)
            .map_err(|e| format!("seed {i} refused: {e}"))?;
        let report = replica.ingest(vec![entry.clone()]).map_err(|e| e.to_string())?;
        if report.accepted.len() != 1 {
            return Err(format!("seed {i} was not accepted: {:?}", report.rejected));
        }
        if step == 1 {
            obstacle = id;
        }
        entries.push(entry);
    }
    let mut out: Vec<(String, Vec<u8>)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("seed{i}"), e.bytes().to_vec()))
        .collect();
    let batch = entries
        .iter()
        .map(|e| e.bytes().to_vec())
        .collect::<Vec<_>>()
        .join(&SEPARATOR);
    out.push(("seed-batch".into(), batch));
    Ok(out)
}

/// Checks that every seed on disk decodes, and that together they are all accepted.
fn check(dir: &Path, names: &[String]) -> Result<(), String> {
    let mut entries = Vec::new();
    for name in names.iter().filter(|n| n.starts_with("seed") && n.as_str() != "seed-batch") {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        entries.push(SignedEntry::decode(&bytes).map_err(|e| format!("{name}: {e}"))?);
    }
    let (charter, _) = spoc_fuzz::fixture();
    let mut replica = Replica::new(charter.clone(), Limits::default());
    let report = replica.ingest(entries.clone()).map_err(|e| e.to_string())?;
    if report.accepted.len() != entries.len() {
        return Err(format!(
            "the entry seeds are stale: {} of {} accepted ({:?}); run `cargo run --bin seeds` in fuzz/",
            report.accepted.len(),
            entries.len(),
            report.rejected.first().map(|(_, why)| why.to_string())
        ));
    }
    Ok(())
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/entry");
    let result = seeds().and_then(|seeds| {
        if std::env::args().any(|a| a == "--check") {
            let names: Vec<String> = seeds.into_iter().map(|(n, _)| n).collect();
            return check(&dir, &names);
        }
        for (name, bytes) in seeds {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("seeds: {e}");
        std::process::exit(1);
    }
}
