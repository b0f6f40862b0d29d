//! `spoc demo`: a fresh local network of real `spoc-node` processes, real signed
//! contributions from several states, and how long each took to reach every node.
//!
//! Every node is a child process that the demo kills on the way out, whatever happens;
//! `--keep` leaves them running until Ctrl-C instead. Replication is awaited through the
//! nodes' `/v1/wait`, never with timers.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::args::DemoArgs;
use crate::client::Client;
use crate::output;

/// How long a node may take to start, or a contribution to reach every node.
const PATIENCE: Duration = Duration::from_secs(60);

/// The running nodes; dropping it stops them all.
struct Nodes {
    children: Vec<Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the spoc binary")?;
    let path = exe.with_file_name("spoc-node");
    if !path.exists() {
        bail!(
            "spoc-node is not next to spoc ({}): build the workspace first",
            path.display()
        );
    }
    Ok(path)
}

/// Starts one node; returns once it logs that it runs.
fn start(binary: &Path, data_dir: &Path) -> Result<Child> {
    let log_path = data_dir.join("node.log");
    let mut log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(binary)
        .arg("--data-dir")
        .arg(data_dir)
        .env("SPOC_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting spoc-node")?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    // The reader copies the node's log to its file until the node exits.
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.contains("node running")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
        }
    });
    match ready_rx.recv_timeout(PATIENCE) {
        Ok(()) => Ok(child),
        Err(_) => {
            let _ = child.kill();
            bail!(
                "the node in {} did not start; see {}",
                data_dir.display(),
                log_path.display()
            )
        }
    }
}

/// One contribution and when it reached each node.
struct Contribution {
    label: String,
    state: String,
    id: String,
    entry: String,
    reach_ms: Vec<(String, u128)>,
}

struct Demo<'a> {
    clients: Vec<Client>,
    states: Vec<String>,
    ctx: &'a Ctx,
    done: Vec<Contribution>,
}

impl Demo<'_> {
    /// Writes through node `i`, then waits on every other node for the entry.
    fn write(&mut self, i: usize, label: String, command: Value) -> Result<String> {
        let started = Instant::now();
        let ack: Value = self.clients[i].post_json("/v1/commands", &command)?;
        let entry = ack["entry"].as_str().unwrap_or_default().to_owned();
        let id = ack["id"].as_str().unwrap_or_default().to_owned();
        let reach_ms = std::thread::scope(|scope| {
            let waits: Vec<_> = self
                .clients
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, client)| {
                    let entry = entry.clone();
                    scope.spawn(move || -> Result<(usize, u128)> {
                        let answer: Value = client.get_json(
                            "/v1/wait",
                            &[
                                ("entries", entry.clone()),
                                ("timeout_ms", PATIENCE.as_millis().to_string()),
                            ],
                        )?;
                        if answer["present"] != Value::Bool(true) {
                            bail!("entry {entry} did not reach node {j} within {PATIENCE:?}");
                        }
                        Ok((j, started.elapsed().as_millis()))
                    })
                })
                .collect();
            waits
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow!("a wait panicked"))?)
                .collect::<Result<Vec<_>>>()
        })?;
        let reach_ms: Vec<(String, u128)> = reach_ms
            .into_iter()
            .map(|(j, ms)| (self.states[j].clone(), ms))
            .collect();
        if self.ctx.chatty() {
            let slowest = reach_ms.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
            self.ctx.line(&format!(
                "  {:<4} {:<52} reached all {} nodes in {slowest} ms",
                self.states[i],
                label,
                self.clients.len()
            ))?;
        }
        self.done.push(Contribution {
            label,
            state: self.states[i].clone(),
            id: id.clone(),
            entry,
            reach_ms,
        });
        Ok(id)
    }
}

const TOPICS: [(&str, &str, &str); 6] = [
    (
        "Replies to SIENA requests take weeks",
        "legal",
        "A court order is needed before personal data leaves the country.",
    ),
    (
        "No 24/7 contact for urgent requests",
        "pragmatic",
        "Out-of-hours requests wait until the next working day.",
    ),
    (
        "Languages accepted differ between SPOCs",
        "pragmatic",
        "Requests in English are sent back for translation.",
    ),
    (
        "Channel choice is unclear for PNR data",
        "legal",
        "Officers do not know whether SIENA or Interpol channels apply.",
    ),
    (
        "Case-management systems do not interoperate",
        "pragmatic",
        "Requests are re-keyed by hand between systems.",
    ),
    (
        "Time limits of Directive (EU) 2023/977 are missed",
        "legal",
        "Eight-hour deadlines for urgent requests are not tracked.",
    ),
];

const PRACTICES: [(&str, &str, &str); 6] = [
    (
        "One queue for every channel",
        "Requests were lost between SIENA, Interpol and SIRENE.",
        "A single case-management queue, triaged every hour.",
    ),
    (
        "Duty officer with decision rights",
        "Urgent requests waited for a senior officer.",
        "A 24/7 duty officer who may approve exchanges alone.",
    ),
    (
        "Request templates in English",
        "Incoming requests lacked the fields needed to act.",
        "Templates with mandatory fields, shared with all SPOCs.",
    ),
    (
        "Deadline dashboard",
        "Legal time limits were missed unnoticed.",
        "A dashboard that flags requests close to their deadline.",
    ),
    (
        "Joint training with CEPOL",
        "New staff did not know the channels.",
        "A two-week induction built on the CEPOL SPOC curriculum.",
    ),
    (
        "Liaison officer pool",
        "Complex cases stalled between SPOCs.",
        "A shared pool of liaison officers reachable by SIENA.",
    ),
];

/// Runs the demo.
pub fn demo(ctx: &Ctx, args: &DemoArgs) -> Result<()> {
    if !(2..=31).contains(&args.nodes) {
        bail!("a demo has 2 to 31 nodes, not {}", args.nodes);
    }
    let binary = node_binary()?;
    let root = std::env::temp_dir().join(format!("spocnet-demo-{}", std::process::id()));
    let result = run(ctx, args, &binary, &root);
    if result.is_err() || !args.keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn run(ctx: &Ctx, args: &DemoArgs, binary: &Path, root: &Path) -> Result<()> {
    let today = time::OffsetDateTime::now_utc().date();
    let net = root.join("net");
    let nodes = spoc_node::testnet::generate(&net, args.nodes, today, &mut rand::rng())?;
    if ctx.chatty() {
        ctx.line(&format!(
            "Starting {} nodes on loopback in {} ...",
            nodes.len(),
            net.display()
        ))?;
    }
    let mut running = Nodes {
        children: Vec::new(),
    };
    for n in &nodes {
        running.children.push(start(binary, &n.data_dir)?);
    }
    let clients = nodes
        .iter()
        .map(|n| {
            Client::open(
                &n.data_dir,
                crate::client::TokenSource::DataDir,
                PATIENCE + Duration::from_secs(10),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let states: Vec<String> = nodes.iter().map(|n| n.state.clone()).collect();
    let mut demo = Demo {
        clients,
        states: states.clone(),
        ctx,
        done: Vec::new(),
    };
    if ctx.chatty() {
        ctx.line(&format!(
            "Presidency: {}. Contributions, each awaited on every other node:",
            states[0]
        ))?;
    }

    let date = today
        .checked_add(time::Duration::days(14))
        .filter(|d| {
            d.year() == today.year() && (u8::from(d.month()) <= 6) == (u8::from(today.month()) <= 6)
        })
        .unwrap_or(today);
    let meeting = demo.write(
        0,
        "convenes the Heads of SPOC meeting".into(),
        json!({
            "command": "meeting_convene", "title": "Meeting of the Heads of SPOC",
            "date": date.to_string(), "venue": "Presidency capital", "format": "hybrid",
        }),
    )?;
    let mut obstacles = Vec::new();
    let mut practices = Vec::new();
    let mut items = Vec::new();
    for i in 1..states.len() {
        let (title, kind, description) = TOPICS[(i - 1) % TOPICS.len()];
        items.push(demo.write(
            i,
            format!("proposes \"{title}\""),
            json!({"command": "meeting_propose", "meeting": meeting, "title": title}),
        )?);
        obstacles.push(demo.write(
            i,
            "reports an obstacle".into(),
            json!({
                "command": "obstacle_report", "title": title, "type": kind,
                "description": description, "states_concerned": [states[0]], "impact": 3,
            }),
        )?);
        let (title, problem, practice) = PRACTICES[(i - 1) % PRACTICES.len()];
        practices.push(demo.write(
            i,
            format!("shares \"{title}\""),
            json!({
                "command": "practice_share", "title": title, "problem": problem,
                "practice": practice, "contact": format!("spoc@{}.example", states[i].to_lowercase()),
            }),
        )?);
    }
    for i in 1..states.len() {
        let next = i % obstacles.len();
        demo.write(
            i,
            format!("endorses {}'s obstacle", states[next + 1]),
            json!({"command": "obstacle_endorse", "obstacle": obstacles[next], "stance": "support"}),
        )?;
        demo.write(
            i,
            format!("endorses {}'s practice", states[next + 1]),
            json!({"command": "practice_endorse", "practice": practices[next], "stance": "support"}),
        )?;
    }
    for item in &items {
        demo.write(
            0,
            "accepts an agenda item".into(),
            json!({"command": "meeting_decide", "meeting": meeting, "item": item, "decision": "accepted"}),
        )?;
    }

    // What each node sees: the same logs (one digest of every log's tip) and the same
    // documents everywhere.
    let mut seen = Vec::new();
    for (i, client) in demo.clients.iter().enumerate() {
        let status: Value = client.get_json("/v1/status", &[])?;
        let count = |collection: &str| -> Result<usize> {
            let list: Value = client.get_json(
                "/v1/docs",
                &[
                    ("collection", collection.to_owned()),
                    ("limit", "1000".to_owned()),
                ],
            )?;
            Ok(list["items"].as_array().map_or(0, Vec::len))
        };
        seen.push(json!({
            "state": states[i],
            "api": nodes[i].api,
            "data_dir": nodes[i].data_dir,
            "entries": status["entries"],
            "peers": status["peers"].as_array().map_or(0, Vec::len),
            "meetings": count("meetings")?,
            "obstacles": count("obstacles")?,
            "practices": count("practices")?,
            "digest": status["digest"],
        }));
    }
    let converged = seen.iter().all(|s| s["digest"] == seen[0]["digest"]);
    let all: Vec<u128> = demo
        .done
        .iter()
        .filter_map(|c| c.reach_ms.iter().map(|(_, ms)| *ms).max())
        .collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let max = sorted.last().copied().unwrap_or(0);

    if ctx.json {
        ctx.print_json(&json!({
            "nodes": seen,
            "converged": converged,
            "contributions": demo.done.iter().map(|c| json!({
                "label": c.label, "state": c.state, "id": c.id, "entry": c.entry,
                "reach_ms": c.reach_ms.iter().map(|(s, ms)| (s.clone(), json!(ms))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "reach_all_p50_ms": p50,
            "reach_all_max_ms": max,
        }))?;
    } else {
        ctx.line("")?;
        ctx.line("What each node sees:")?;
        let mut table = output::Table::new(&[
            "STATE",
            "ENTRIES",
            "PEERS",
            "MEETINGS",
            "OBSTACLES",
            "PRACTICES",
        ]);
        for s in &seen {
            table.row(
                [
                    "state",
                    "entries",
                    "peers",
                    "meetings",
                    "obstacles",
                    "practices",
                ]
                .iter()
                .map(|k| output::field(s, k))
                .collect(),
            );
        }
        ctx.print(&table.render())?;
        ctx.line(&format!(
            "{} contributions; each reached every node in {p50} ms (median), {max} ms at most.",
            demo.done.len()
        ))?;
        ctx.line(if converged {
            "All nodes hold identical logs."
        } else {
            "The nodes do not hold identical logs."
        })?;
    }
    if !converged {
        bail!("the nodes did not converge");
    }
    if args.keep {
        if ctx.chatty() {
            ctx.line("")?;
            for n in &nodes {
                ctx.line(&format!(
                    "  {}: spoc --data-dir {} status",
                    n.state,
                    n.data_dir.display()
                ))?;
            }
            ctx.line("The network keeps running; press Ctrl-C to stop it.")?;
        }
        // Ctrl-C reaches the nodes too (same process group); they shut down cleanly.
        for c in &mut running.children {
            let _ = c.wait();
        }
    } else {
        for c in &mut running.children {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for c in &mut running.children {
            let _ = c.wait();
        }
        if ctx.chatty() {
            ctx.line("Stopped every node and removed the demo network.")?;
        }
    }
    Ok(())
}
