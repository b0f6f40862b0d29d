//! `spoc-bench [--quick] [--json]`: spocnet against plain Automerge, redb and libp2p.
//!
//! It generates a realistic history from a seed (meetings with agendas, obstacles with
//! endorsements, comments and long edits, practices, fact sheets, training), then measures
//! five scenarios: ingest, publish, propagation, catch-up and cold start; the sixth, the
//! iroh-docs peer, only with the `peer-iroh` feature; the seventh, hostile, an honest
//! node's API under a sustained flood against the same node without it; and the eighth,
//! decade, a node after ten years of a 31-state network against the same node after five
//! weeks (its stores are kept under `target/spoc-bench-cache`). Every figure is a ratio against a baseline measured in the same run on
//! the same data, with the absolute times beside it. It prints a table for people, or with `--json` one JSON object with one
//! key per scenario. Real `spoc-node` processes are started through the test harness,
//! which kills each one when it is dropped. It exits non-zero only when a scenario could
//! not be measured, never for a missed target.

// A benchmark reports by printing: the table or JSON on stdout, progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use clap::{Parser, Subcommand};
use rand::SeedableRng;
use serde_json::{Map, Value, json};
use spoc_node::charter::Charter;
use spoc_node::identity::SecretKey;

use bench::report::Outcome;
use bench::{Context, Plan, data, procs};

/// spocnet's benchmark: each scenario against a baseline measured in the same run.
#[derive(Parser, Debug)]
#[command(name = "spoc-bench")]
struct Cli {
    /// The short run (under 3 minutes): 1k and 10k entries, 5 nodes.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object, one key per scenario, instead of the table.
    #[arg(long)]
    json: bool,
    /// Run only these scenarios: ingest, publish, cold_start, propagation, catch_up, peer_iroh,
    /// hostile, decade.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Replace the sizes (entries) of ingest, publish, cold start and catch-up.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Replace the network sizes of the propagation scenario.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Replace the repetitions of the in-process measures (the median is kept).
    #[arg(long)]
    reps: Option<usize>,
    /// Replace the sizes (entries) of the decade scenario: the reference, then the decade.
    #[arg(long, value_delimiter = ',')]
    decade_sizes: Vec<usize>,
    /// The seed of the generated data.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Loads the documents of FILE, holds them and prints this process's memory (the
    /// cold-start RSS baseline runs it as a child).
    #[command(hide = true)]
    HoldDocs { file: PathBuf },
}

const SCENARIOS: [&str; 8] = [
    "ingest",
    "publish",
    "cold_start",
    "propagation",
    "catch_up",
    "peer_iroh",
    "hostile",
    "decade",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::HoldDocs { file }) = &cli.command {
        return match bench::publish::hold_docs(file) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hold-docs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("spoc-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(started: Instant, message: &str) {
    eprintln!("[{:>6.1} s] {message}", started.elapsed().as_secs_f64());
}

/// Runs the selected scenarios; returns whether every one of them could be measured.
fn run(cli: &Cli) -> Result<bool> {
    let started = Instant::now();
    let load_at_start = load_average();
    if load_at_start.parse::<f64>().is_ok_and(|l| l > 0.5) {
        progress(
            started,
            &format!(
                "the machine is busy (load average {load_at_start}): figures will be perturbed"
            ),
        );
    }
    for s in &cli.only {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(anyhow!(
                "unknown scenario {s:?} (one of {})",
                SCENARIOS.join(", ")
            ));
        }
    }
    let wanted = |s: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == s);
    let mut plan = Plan::new(cli.quick, cli.seed);
    if !cli.sizes.is_empty() {
        plan.sizes = cli.sizes.clone();
        plan.catchup_sizes = cli.sizes.clone();
    }
    if !cli.nodes.is_empty() {
        plan.propagation_nodes = cli.nodes.clone();
    }
    if !cli.decade_sizes.is_empty() {
        plan.decade_sizes = cli.decade_sizes.clone();
    }
    plan.reps = cli.reps;
    // Data and stores are made only for what runs. The iroh-docs peer, when built, measures
    // spocnet's catch-up beside it.
    let peer = wanted("peer_iroh") && cfg!(feature = "peer-iroh");
    if !wanted("catch_up") && !peer {
        plan.catchup_sizes.clear();
    }
    if !(wanted("ingest") || wanted("publish") || wanted("cold_start")) {
        plan.sizes.clear();
    }
    let processes = peer
        || [
            "publish",
            "cold_start",
            "propagation",
            "catch_up",
            "hostile",
            "decade",
        ]
        .iter()
        .any(|s| wanted(s));
    if processes {
        procs::ensure_node_binary()?;
    }

    // The five-state testnet whose keys write the data, and whose nodes serve publish,
    // cold start and catch-up. The first state holds today's Presidency.
    let root = tempfile::tempdir()?;
    let today = time::OffsetDateTime::now_utc().date();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(plan.seed);
    let mut nodes = spoc_node::testnet::generate(&root.path().join("net"), 5, today, &mut rng)?;
    procs::relocate_ports(&root.path().join("net"), &mut nodes)?;
    let charter_text = std::fs::read_to_string(root.path().join("net/charter.toml"))?;
    let charter = Arc::new(Charter::parse(&charter_text)?);
    let mut authors = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        authors.push(data::Author {
            code: node.state.clone(),
            key: SecretKey::load(&node.data_dir.join("national.key"), None)
                .with_context(|| format!("the key of {}", node.state))?,
            incarnation: 1_000 + i as u32,
        });
    }
    // A fixed clock: today's midnight (UTC), one entry every 50 ms from there.
    let base_ms = u64::try_from(today.midnight().assume_utc().unix_timestamp())? * 1_000;
    let needed = plan.entries_needed();
    progress(
        started,
        &format!("generating {needed} entries (seed {})", plan.seed),
    );
    let history = root.path().join("history");
    std::fs::create_dir_all(&history)?;
    let setup = data::Setup {
        charter,
        authors: &authors,
        today,
        base_ms,
        seed: plan.seed,
    };
    let work = data::generate(&setup, needed, &plan.boundaries(), &history)?;
    progress(
        started,
        &format!("generated {} entries", work.entries.len()),
    );
    let ctx = Context {
        plan,
        today,
        work,
        nodes,
    };

    let mut outcomes: Vec<(Outcome, f64)> = Vec::new();
    let mut timed = |name: &str, f: &mut dyn FnMut() -> Vec<Outcome>| {
        progress(started, &format!("{name}: running"));
        let t = Instant::now();
        let results = f();
        let secs = t.elapsed().as_secs_f64();
        progress(started, &format!("{name}: done in {secs:.1} s"));
        for o in results {
            outcomes.push((o, secs));
        }
    };
    if wanted("ingest") {
        timed("ingest", &mut || {
            vec![
                bench::ingest::run(&ctx.plan, &ctx.work.charter, &ctx.work.entries)
                    .unwrap_or_else(|e| Outcome::failure("ingest", "1. ingest", &e)),
            ]
        });
    }
    if wanted("publish") || wanted("cold_start") {
        timed(
            "publish and cold start",
            &mut || match bench::publish::run(&ctx) {
                Ok((p, c)) => vec![p, c],
                Err(e) => vec![
                    Outcome::failure("publish", "2. publish", &e),
                    Outcome::failure("cold_start", "5. cold start", &e),
                ],
            },
        );
    }
    if wanted("propagation") {
        timed("propagation", &mut || {
            vec![
                bench::propagation::run(&ctx)
                    .unwrap_or_else(|e| Outcome::failure("propagation", "3. propagation", &e)),
            ]
        });
    }
    if wanted("catch_up") {
        timed("catch-up", &mut || {
            vec![
                bench::catchup::run(&ctx)
                    .unwrap_or_else(|e| Outcome::failure("catch_up", "4. catch-up", &e)),
            ]
        });
    }
    if wanted("hostile") {
        timed("hostile", &mut || {
            vec![
                bench::hostile::run(ctx.plan.quick)
                    .unwrap_or_else(|e| Outcome::failure("hostile", bench::hostile::TITLE, &e)),
            ]
        });
    }
    if wanted("decade") {
        timed("decade", &mut || {
            let mut say = |m: &str| progress(started, m);
            vec![
                bench::decade::run(
                    &ctx.plan.decade_sizes,
                    ctx.plan.seed,
                    bench::decade::Effort::new(ctx.plan.quick),
                    &mut say,
                )
                .unwrap_or_else(|e| Outcome::failure("decade", bench::decade::TITLE, &e)),
            ]
        });
    }
    if wanted("peer_iroh") {
        // The catch-up's figures of this run, when it ran, serve as spocnet's side.
        let catch_up = outcomes
            .iter()
            .find(|(o, _)| o.key == "catch_up" && !o.failed)
            .map(|(o, _)| o.json.clone());
        progress(started, "peer: running");
        let t = Instant::now();
        let o = peer_iroh(&ctx, catch_up.as_ref());
        let secs = t.elapsed().as_secs_f64();
        progress(started, &format!("peer: done in {secs:.1} s"));
        outcomes.push((o, secs));
    }
    // The scenarios in their numbered order.
    outcomes.sort_by_key(|(o, _)| o.title.chars().next().unwrap_or('9'));

    let ok = outcomes.iter().all(|(o, _)| !o.failed);
    let list: Vec<&Outcome> = outcomes.iter().map(|(o, _)| o).collect();
    let table = bench::report::table(&list);
    if cli.json {
        // The table goes to stderr, for the people reading a CI log.
        eprint!("{table}");
        let mut all = Map::new();
        for (o, secs) in &outcomes {
            let mut v = o.json.clone();
            if let Value::Object(m) = &mut v {
                m.insert("title".into(), json!(o.title));
                m.insert("wall_s".into(), json!(bench::stats::round3(*secs)));
                m.insert("notes".into(), json!(o.notes));
                m.entry("target_met")
                    .or_insert_with(|| json!(o.target_met()));
            }
            all.insert(o.key.into(), v);
        }
        println!("{}", Value::Object(all));
    } else {
        println!(
            "spoc-bench {} (seed {}): spocnet / baseline, both measured in this run; load \
             average {load_at_start} at the start, {} at the end",
            if ctx.plan.quick {
                "--quick"
            } else {
                "full run"
            },
            ctx.plan.seed,
            load_average()
        );
        print!("{table}");
        let mix = ctx.work.mix(ctx.work.entries.len());
        let parts: Vec<String> = mix
            .iter()
            .map(|(k, (count, mean))| format!("{k} {count} ({mean} B)"))
            .collect();
        println!(
            "\ndata: {} entries by {} states, mean entry size by command: {}",
            ctx.work.entries.len(),
            ctx.nodes.len(),
            parts.join(", ")
        );
    }
    progress(started, "finished");
    Ok(ok)
}

/// The one-minute load average, as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Scenario 6: the iroh-docs peer, built only with the `peer-iroh` feature. `catch_up` is
/// the catch-up's JSON when it ran in this run.
#[cfg(feature = "peer-iroh")]
fn peer_iroh(ctx: &Context, catch_up: Option<&Value>) -> Outcome {
    bench::peer::run(ctx, catch_up)
        .unwrap_or_else(|e| Outcome::failure("peer_iroh", bench::peer::TITLE, &e))
}

/// Scenario 6: the iroh-docs peer, not part of this build.
#[cfg(not(feature = "peer-iroh"))]
fn peer_iroh(_ctx: &Context, _catch_up: Option<&Value>) -> Outcome {
    let mut o = Outcome::new("peer_iroh", "6. peer: iroh-docs");
    let why = "not measured: the iroh-docs peer is behind the `peer-iroh` feature, which is off \
               (see BENCHMARKS.md)";
    o.json = json!({"measured": false, "why": why, "target_met": Value::Null});
    o.notes.push(why.into());
    o
}
