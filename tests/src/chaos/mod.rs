//! `spoc-chaos`: real `spoc-node` processes, each in its own Linux network namespace on a
//! private bridged network, under a seeded schedule of faults (partitions, packet loss,
//! `kill -9`, SIGSTOP, a node behind a delaying proxy) while clients write through every
//! node's API; then a checker that every acknowledged contribution is on every node,
//! nothing is there that was never written, and every node holds the same logs and lists.
//!
//! The modules: `lab` (namespaces, firewall, processes), `helper` (the process in each
//! namespace that carries API calls and runs the proxies), `proxy` (the delay),
//! `schedule` (the faults), `workload` (the writers and their ledger) and `check` (the
//! convergence measurements and the final verdict).

mod check;
mod helper;
mod lab;
mod proxy;
mod schedule;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use serde_json::json;

use check::Summary;
use lab::Lab;
use schedule::{Fault, Round, Schedule};
use workload::{Shared, Stop};

/// A seeded chaos run of real spocnet nodes in network namespaces.
#[derive(Debug, Parser)]
#[command(name = "spoc-chaos", args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// How many nodes (2 to 31).
    #[arg(long, default_value_t = 7)]
    nodes: usize,
    /// How long to inject faults, in seconds; the final heal and check come after.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// The seed of the fault schedule, the writers and the testnet keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prints one JSON object with the figures on stdout.
    #[arg(long)]
    json: bool,
    /// The added one-way latency of the slow node's links, in ms (0: no slow node).
    #[arg(long, default_value_t = 150)]
    delay_ms: u64,
    /// The mean time between two writes of one client, in ms.
    #[arg(long, default_value_t = 500)]
    write_pace_ms: u64,
    /// The longest a fault is held, in seconds.
    #[arg(long, default_value_t = 20)]
    max_hold: u64,
    /// How long the nodes may take to converge after a heal, in seconds.
    #[arg(long, default_value_t = 120)]
    reach: u64,
    /// Keeps the testnet and the node logs in this directory instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: the helper run inside a node's namespace (see `helper`).
    #[command(hide = true)]
    Helper {
        #[arg(long)]
        api: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        #[arg(long)]
        route: Vec<proxy::Route>,
    },
}

/// The entry point of the binary.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Helper {
        api,
        token_file,
        delay_ms,
        route,
    }) = args.command
    {
        return match helper::serve(&api, &token_file, route, Duration::from_millis(delay_ms)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spoc-chaos helper: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !(2..=31).contains(&args.nodes) {
        eprintln!("spoc-chaos: --nodes must be 2 to 31");
        return ExitCode::from(2);
    }
    if let Some(why) = lab::unsupported() {
        if args.json {
            println!("{}", json!({ "skipped": why }));
        }
        eprintln!("spoc-chaos skipped: {why}");
        return ExitCode::SUCCESS;
    }
    lab::reap_stale();
    let stop = Arc::new(Stop::default());
    watch_signals(stop.clone());
    match run(&args, &stop) {
        Ok(summary) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&summary).unwrap_or_else(|e| e.to_string())
                );
            } else {
                println!("{}", summary.text());
            }
            if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("spoc-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM end the run early (and cleanly: the lab is dropped).
fn watch_signals(stop: Arc<Stop>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        stop.stop();
    });
}

/// Progress lines on stderr (stdout is kept for the result), with the time since the
/// start.
#[allow(clippy::print_stderr)]
fn progress(start: Instant, line: &str) {
    eprintln!("[{:>7.1}s] {line}", start.elapsed().as_secs_f64());
}

/// Moves a generated testnet onto the lab's network: every state listens on its
/// namespace address, and the charter (the same text in every data dir) says so.
fn relocate(out: &std::path::Path, nodes: &[spoc_node::testnet::Node]) -> Result<()> {
    let shared = out.join("charter.toml");
    let mut charter = std::fs::read_to_string(&shared)?;
    for (i, n) in nodes.iter().enumerate() {
        let (old, new) = (
            format!("\"{}\"", n.listen),
            format!("\"/ip4/{}/tcp/{}\"", lab::address(i), lab::P2P_PORT),
        );
        if charter.matches(&old).count() != 1 {
            bail!("the charter does not list {old} exactly once");
        }
        charter = charter.replace(&old, &new);
        let settings_path = n.data_dir.join("node.toml");
        let settings = std::fs::read_to_string(&settings_path)?;
        let line = format!("listen = [{old}]");
        if !settings.contains(&line) {
            bail!("{} has no line {line}", settings_path.display());
        }
        std::fs::write(
            &settings_path,
            settings.replace(&line, &format!("listen = [{new}]")),
        )?;
    }
    std::fs::write(&shared, &charter)?;
    for n in nodes {
        std::fs::write(n.data_dir.join("charter.toml"), &charter)?;
    }
    Ok(())
}

fn run(args: &Args, stop: &Arc<Stop>) -> Result<Summary> {
    let start = Instant::now();
    let say = |line: &str| progress(start, line);
    let spoc_node = spoc_tests::bin("spoc-node").context(
        "spoc-chaos runs the spoc-node built next to it: `cargo build --release --workspace --bins`",
    )?;
    let temp = tempfile::tempdir()?;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let out = root.join("net");
    let today = time::OffsetDateTime::now_utc().date();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(args.seed);
    let layout = spoc_node::testnet::generate(&out, args.nodes, today, &mut rng)
        .with_context(|| format!("laying out a testnet in {}", out.display()))?;
    relocate(&out, &layout)?;
    let slow = (args.delay_ms > 0).then(|| rng.random_range(0..args.nodes));
    let delay = Duration::from_millis(args.delay_ms);

    let mut lab = Lab::new();
    let spec: Vec<_> = layout
        .iter()
        .map(|n| (n.state.clone(), n.data_dir.clone(), n.api.clone()))
        .collect();
    lab.build(&spec, slow, delay)?;
    say(&format!(
        "{} nodes in namespaces on 10.217.0.0/24{}; data in {}",
        args.nodes,
        slow.map(|s| format!(
            ", {} behind a {} ms delaying proxy",
            layout[s].state, args.delay_ms
        ))
        .unwrap_or_default(),
        root.display()
    ));
    for i in 0..lab.nodes.len() {
        lab.nodes[i].start(&spoc_node)?;
    }
    let result = chaos(args, stop, &mut lab, &spoc_node, slow, start);
    if result.as_ref().map_or(true, |s| !s.ok()) {
        lab.dump_logs(25);
        if args.keep.is_none() {
            // Keep the evidence of a failed run.
            let kept = temp.keep();
            progress(
                start,
                &format!(
                    "the failed run's data and logs are kept in {}",
                    kept.display()
                ),
            );
        }
    }
    drop(lab);
    result
}

fn chaos(
    args: &Args,
    stop: &Arc<Stop>,
    lab: &mut Lab,
    spoc_node: &std::path::Path,
    slow: Option<usize>,
    start: Instant,
) -> Result<Summary> {
    let say = |line: &str| progress(start, line);
    let n = lab.nodes.len();
    let reach = Duration::from_secs(args.reach);
    let mut summary = Summary::new(
        args.nodes,
        args.seed,
        args.duration,
        slow.map(|s| lab.nodes[s].state.clone()),
        args.delay_ms,
    );
    let ledger: Shared = Arc::default();

    // Round zero: every node is up and connected; the clients start writing, and the first
    // convergence is measured from here.
    let writers_stop = Arc::new(Stop::default());
    let faults_started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        for node in &lab.nodes {
            let (ledger, writers_stop) = (&ledger, &writers_stop);
            let helper = node.helper()?;
            let state = node.state.clone();
            let (index, seed, pace) = (
                node.index,
                args.seed,
                Duration::from_millis(args.write_pace_ms),
            );
            scope.spawn(move || {
                workload::writer(index, state, &helper, ledger, writers_stop, seed, pace);
            });
        }
        let outcome = (|| -> Result<()> {
            let mut schedule =
                Schedule::new(args.seed, n, Duration::from_secs(args.max_hold.max(4)));
            while faults_started.elapsed() < Duration::from_secs(args.duration)
                && !stop.is_stopped()
            {
                let round = schedule.next_round();
                say(&format!(
                    "round {}: {} for {:.1} s",
                    round.index,
                    round.label(),
                    round.hold.as_secs_f64()
                ));
                apply_round(lab, &round, spoc_node, stop, &mut summary)?;
                let healed = heal(lab, spoc_node, &mut summary)?;
                if stop.is_stopped() {
                    break;
                }
                let c = check::converge_round(lab, &ledger, healed, reach)?;
                say(&format!(
                    "round {}: healed; {} nodes converged in {} ms{}",
                    round.index,
                    c.per_node_ms.iter().flatten().count(),
                    c.max_ms().map_or("-".into(), |m| m.to_string()),
                    if c.converged() {
                        String::new()
                    } else {
                        format!(", NOT CONVERGED: {}", c.missing_summary())
                    }
                ));
                summary.record_round(&round, &c, lab);
            }
            Ok(())
        })();
        writers_stop.stop();
        outcome
    })?;
    summary.fault_seconds = faults_started.elapsed().as_secs_f64();
    if stop.is_stopped() {
        summary.interrupted = true;
    }
    for node in &lab.nodes {
        summary.proxy_connections += node
            .helper()?
            .events()
            .iter()
            .filter(|e| e.starts_with("proxy:"))
            .count() as u64;
    }
    if summary.interrupted {
        say("interrupted: no final check");
        return Ok(summary);
    }
    say("faults over, writers stopped; final check");
    check::final_check(lab, &ledger, reach, &mut summary)?;
    Ok(summary)
}

/// Applies a round's fault, holds it, and returns with the fault still in place (the
/// caller heals).
fn apply_round(
    lab: &mut Lab,
    round: &Round,
    spoc_node: &std::path::Path,
    stop: &Stop,
    summary: &mut Summary,
) -> Result<()> {
    let n = lab.nodes.len();
    lab.set_faults(&round.blocked(n), &round.loss(n))?;
    let began = Instant::now();
    // The timed actions of the round, in order: (ms after the start, node, restart at once).
    let mut actions: Vec<(u64, usize, bool)> = match &round.fault {
        Fault::Kill { nodes, at_ms } => nodes
            .iter()
            .zip(at_ms)
            .map(|(&i, &t)| (t, i, false))
            .collect(),
        Fault::CrashLoop { node, at_ms } => at_ms.iter().map(|&t| (t, *node, true)).collect(),
        Fault::IsolateAndKill { node, at_ms } => vec![(*at_ms, *node, false)],
        Fault::Stop { nodes } => {
            for &i in nodes {
                lab.nodes[i].stop()?;
                summary.stops += 1;
            }
            Vec::new()
        }
        _ => Vec::new(),
    };
    actions.sort_unstable();
    for (at, i, restart) in actions {
        let due = began + Duration::from_millis(at);
        if stop.pause(due.saturating_duration_since(Instant::now())) {
            return Ok(());
        }
        lab.nodes[i].kill9()?;
        summary.kills += 1;
        if restart {
            let took = lab.nodes[i].start(spoc_node)?;
            summary.restart_ms.push(took.as_millis() as u64);
        }
    }
    stop.pause((began + round.hold).saturating_duration_since(Instant::now()));
    Ok(())
}

/// Heals everything: the firewall rules go, stopped nodes continue, killed nodes restart.
/// A node that exited by itself is a failure, recorded and restarted. Returns the instant
/// of the heal, from which convergence is measured.
fn heal(lab: &mut Lab, spoc_node: &std::path::Path, summary: &mut Summary) -> Result<Instant> {
    lab.heal_network()?;
    let healed = Instant::now();
    for i in 0..lab.nodes.len() {
        lab.nodes[i].cont()?;
        if let Some(status) = lab.nodes[i].exited() {
            summary.unexpected_exits.push(format!(
                "{} exited by itself ({status}):\n{}",
                lab.nodes[i].state,
                lab::tail(&lab.nodes[i].log_path, 20)
            ));
        }
        if !lab.nodes[i].running() {
            let took = lab.nodes[i].start(spoc_node)?;
            summary.restart_ms.push(took.as_millis() as u64);
        }
    }
    Ok(healed)
}
