//! Five `spoc-node` processes, each in its own Linux network namespace on a bridged
//! private network with 2% random packet loss, replicate every contribution; a node cut off
//! from the network by a silent partition receives nothing while cut off, and once healed
//! every node converges to identical heights and identical lists.
//!
//! It needs root, `ip` and `iptables`; without them it says why and passes as skipped. It
//! touches nothing outside the namespaces it creates, and removes them whatever happens.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use serde_json::Value;
use spoc_tests::{Output, START_TIMEOUT, bin};

/// The private network of the test; it exists only inside the test's namespaces.
const SUBNET: &str = "10.213.77";
/// The port every node listens on, each at its own address.
const P2P_PORT: u16 = 4101;
const NODES: usize = 5;
const LOSS: f64 = 0.02;
/// Long enough for an anti-entropy round (10 s) after the longest re-dial backoff (30 s).
const REACH_MS: u64 = 90_000;
/// How long a cut-off node is given to (wrongly) receive an entry.
const CUT_PROBE_MS: u64 = 3_000;

/// Runs a command to completion; fails with its stderr when it does not succeed.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    match run("id", &["-u"]) {
        Ok(uid) if uid.trim() == "0" => {}
        Ok(uid) => return Some(format!("not root (uid {})", uid.trim())),
        Err(e) => return Some(format!("cannot tell the user id: {e:#}")),
    }
    if let Err(e) = run("ip", &["-V"]) {
        return Some(format!("`ip` is unusable: {e:#}"));
    }
    if let Err(e) = run("iptables", &["--version"]) {
        return Some(format!("`iptables` is missing: {e:#}"));
    }
    None
}

/// A node running inside a namespace; its log goes to `DATA_DIR/node.log`.
#[derive(Debug)]
struct NsNode {
    ns: String,
    dev: String,
    state: String,
    data_dir: PathBuf,
    child: Child,
}

/// The namespaces, nodes and data directories of one run. Dropping it kills every node,
/// then deletes every namespace, and with them their links and firewall rules.
#[derive(Debug)]
struct Lab {
    dir: tempfile::TempDir,
    prefix: String,
    hub: String,
    namespaces: Vec<String>,
    nodes: Vec<NsNode>,
}

impl Lab {
    fn new() -> Result<Lab> {
        let prefix = format!("spoc{}", std::process::id());
        Ok(Lab {
            dir: tempfile::tempdir()?,
            hub: format!("{prefix}hub"),
            prefix,
            namespaces: Vec::new(),
            nodes: Vec::new(),
        })
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A bridge in the hub namespace (made by the caller), and one namespace per node,
    /// linked to the bridge by a veth pair, at `SUBNET.(i+1)/24`, dropping `LOSS` of what
    /// it receives.
    fn build(&mut self, n: usize) -> Result<()> {
        let hub = self.hub.clone();
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = self.ns(i);
            let (dev, port) = (self.dev(i), format!("{}p{i}", self.prefix));
            self.add_namespace(&ns)?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", &dev,
                    "netns", &ns,
                ],
            )?;
            run("ip", &["-n", &hub, "link", "set", &port, "master", "br0"])?;
            run("ip", &["-n", &hub, "link", "set", &port, "up"])?;
            let address = format!("{SUBNET}.{}/24", i + 1);
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", &dev])?;
            run("ip", &["-n", &ns, "link", "set", &dev, "up"])?;
            let loss = LOSS.to_string();
            iptables(
                &ns,
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    &dev,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &loss,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn dev(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }

    /// Starts `spoc-node` in node `i`'s namespace and waits for its "node running" line.
    fn start(&mut self, i: usize, state: &str, data_dir: &Path) -> Result<()> {
        let log_path = data_dir.join("node.log");
        let mut log = std::fs::File::create(&log_path)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(bin("spoc-node")?)
            .arg("--data-dir")
            .arg(data_dir)
            .env("SPOC_LOG_FORMAT", "text")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting spoc-node")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        // `ip netns exec` execs the node, so killing this child kills the node.
        self.nodes.push(NsNode {
            ns: self.ns(i),
            dev: self.dev(i),
            state: state.to_owned(),
            data_dir: data_dir.to_owned(),
            child,
        });
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
        ready_rx.recv_timeout(START_TIMEOUT).map_err(|_| {
            anyhow!(
                "{state} did not log \"node running\" within {START_TIMEOUT:?}:\n{}",
                tail(&log_path, 30)
            )
        })
    }

    /// Prints the end of every node's log, to explain a failure.
    #[allow(clippy::print_stderr)]
    fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!(
                "--- {} ({}) log tail:\n{}",
                n.state,
                n.ns,
                tail(&n.data_dir.join("node.log"), 40)
            );
        }
    }
}

impl Drop for Lab {
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("netns: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn iptables(ns: &str, rule: &[&str]) -> Result<String> {
    let mut args = vec!["netns", "exec", ns, "iptables", "-w"];
    args.extend_from_slice(rule);
    run("ip", &args)
}

/// How many packets the loss rule of a namespace has dropped.
fn lost(ns: &str) -> Result<u64> {
    let table = iptables(ns, &["-L", "INPUT", "-v", "-x", "-n"])?;
    let line = table
        .lines()
        .find(|l| l.contains("statistic"))
        .ok_or_else(|| anyhow!("no loss rule in {ns}: {table}"))?;
    let packets = line.split_whitespace().next().unwrap_or_default();
    packets
        .parse()
        .with_context(|| format!("packet count {packets:?}"))
}

/// Runs `spoc --data-dir DIR --json ARGS` inside the node's namespace, where its API is.
fn spoc(node: &NsNode, args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns])
        .arg(bin("spoc")?)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running spoc")?;
    Ok(Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Sends a write through the CLI; returns the hash of the entry it made. The CLI prints
/// only the item's id, so the hash comes from the audit trail of that new document.
fn write(node: &NsNode, args: &[&str]) -> Result<String> {
    let id = spoc(node, args)?.ok()?.json()?["id"]
        .as_str()
        .ok_or_else(|| anyhow!("{} wrote no id", node.state))?
        .to_owned();
    let log = spoc(node, &["log", "--doc", &id])?.ok()?.json()?;
    let entries = log.as_array().map(Vec::as_slice).unwrap_or_default();
    match entries {
        [entry] => Ok(entry["hash"]
            .as_str()
            .ok_or_else(|| anyhow!("no hash in {entry}"))?
            .to_owned()),
        _ => bail!("{id} should have one entry in {}'s log: {log}", node.state),
    }
}

fn report(node: &NsNode, title: &str) -> Result<String> {
    write(
        node,
        &[
            "obstacle",
            "report",
            "--title",
            title,
            "--type",
            "pragmatic",
            "--description",
            &format!("Reported by {} over a lossy network.", node.state),
        ],
    )
}

/// Whether the node holds every entry within `timeout_ms` (`spoc wait` exits 1 if not).
fn holds(node: &NsNode, hashes: &[String], timeout_ms: u64) -> Result<bool> {
    let out = spoc(
        node,
        &[
            "wait",
            "--entries",
            &hashes.join(","),
            "--timeout-ms",
            &timeout_ms.to_string(),
        ],
    )?;
    match out.status {
        0 => Ok(true),
        1 if out.stderr.contains("missing") => Ok(false),
        s => bail!(
            "spoc wait on {} exited {s}: {}",
            node.state,
            out.stderr.trim()
        ),
    }
}

fn await_all(nodes: &[&NsNode], hashes: &[String]) -> Result<()> {
    for n in nodes {
        if !holds(n, hashes, REACH_MS)? {
            bail!(
                "{} lacks some of {} entries after {REACH_MS} ms",
                n.state,
                hashes.len()
            );
        }
    }
    Ok(())
}

/// Asserts that every node shows the same output for `args`, and returns it.
fn same_everywhere(nodes: &[NsNode], args: &[&str], field: Option<&str>) -> Result<Value> {
    let mut first: Option<Value> = None;
    for n in nodes {
        let mut v = spoc(n, args)?.ok()?.json()?;
        if let Some(f) = field {
            v = v[f].take();
        }
        match &first {
            None => first = Some(v),
            Some(f) => assert_eq!(
                &v,
                f,
                "`spoc {}` differs between {} and {}",
                args.join(" "),
                n.state,
                nodes[0].state
            ),
        }
    }
    first.ok_or_else(|| anyhow!("no nodes"))
}

/// Moves a generated testnet onto the namespaces' network: every state listens on
/// `SUBNET.(i+1):P2P_PORT`, and the charter (the same text in every data dir) says so.
fn relocate(out: &Path, nodes: &[spoc_node::testnet::Node]) -> Result<()> {
    let shared = out.join("charter.toml");
    let mut charter = std::fs::read_to_string(&shared)?;
    for (i, n) in nodes.iter().enumerate() {
        let (old, new) = (
            format!("\"{}\"", n.listen),
            format!("\"/ip4/{SUBNET}.{}/tcp/{P2P_PORT}\"", i + 1),
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

#[test]
fn lossy_namespaced_network_converges_after_a_partition() -> Result<()> {
    if let Some(why) = unsupported() {
        eprintln!("netns test skipped: {why}");
        return Ok(());
    }
    let mut lab = Lab::new()?;
    let hub = lab.hub.clone();
    if let Err(e) = lab.add_namespace(&hub) {
        eprintln!("netns test skipped: cannot create a network namespace: {e:#}");
        return Ok(());
    }
    match scenario(&mut lab) {
        Ok(summary) => {
            eprintln!("{summary}");
            Ok(())
        }
        Err(e) => {
            lab.dump_logs();
            Err(e)
        }
    }
}

/// Runs the scenario; returns its summary line.
fn scenario(lab: &mut Lab) -> Result<String> {
    let out = lab.dir.path().join("net");
    let today = time::OffsetDateTime::now_utc().date();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x4e45_544e);
    let layout = spoc_node::testnet::generate(&out, NODES, today, &mut rng)?;
    relocate(&out, &layout)?;
    lab.build(NODES)?;
    for (i, n) in layout.iter().enumerate() {
        lab.start(i, &n.state, &n.data_dir)?;
    }
    let nodes = &lab.nodes;
    let everyone: Vec<&NsNode> = nodes.iter().collect();
    let mut hashes = Vec::new();

    // The Presidency of today convenes a meeting; every other state reports an obstacle.
    hashes.push(write(
        &nodes[0],
        &[
            "meeting",
            "convene",
            "--title",
            "Heads of SPOC over a lossy network",
            "--date",
            &today.to_string(),
            "--venue",
            "Dublin",
        ],
    )?);
    for n in &nodes[1..] {
        hashes.push(report(n, &format!("First obstacle of {}", n.state))?);
    }
    await_all(&everyone, &hashes)?;
    same_everywhere(nodes, &["status"], Some("digest"))?;

    // A silent partition: the last node's link drops everything, in and out, while its
    // loopback (and so its API) keeps working.
    let (cut, rest) = nodes.split_last().ok_or_else(|| anyhow!("no nodes"))?;
    let rest: Vec<&NsNode> = rest.iter().collect();
    let partition = |op: &str| -> Result<()> {
        iptables(&cut.ns, &[op, "INPUT", "-i", &cut.dev, "-j", "DROP"])?;
        iptables(&cut.ns, &[op, "OUTPUT", "-o", &cut.dev, "-j", "DROP"]).map(drop)
    };
    partition("-I")?;
    let mut while_cut = Vec::new();
    for n in &rest {
        while_cut.push(report(
            n,
            &format!("Obstacle of {} during the cut", n.state),
        )?);
    }
    let from_cut = report(cut, &format!("Obstacle of {} while cut off", cut.state))?;
    await_all(&rest, &while_cut)?;
    assert!(
        !holds(cut, &while_cut, CUT_PROBE_MS)?,
        "{} received entries while cut off",
        cut.state
    );
    assert!(
        !holds(rest[0], std::slice::from_ref(&from_cut), CUT_PROBE_MS)?,
        "{} received {}'s entry while it was cut off",
        rest[0].state,
        cut.state
    );
    hashes.extend(while_cut);
    hashes.push(from_cut);

    // Healed, every node ends up with every entry. The cut lasted a few seconds, less than
    // the sync timeout, so the nodes' connections outlive it.
    partition("-D")?;
    let healed = Instant::now();
    await_all(&everyone, &hashes)?;
    let converged = healed.elapsed();
    same_everywhere(nodes, &["status"], Some("digest"))?;
    let total = same_everywhere(nodes, &["status"], Some("entries"))?;
    assert_eq!(same_everywhere(nodes, &["status"], Some("pending"))?, 0);
    let obstacles = same_everywhere(nodes, &["obstacle", "list"], None)?;
    same_everywhere(nodes, &["meeting", "list"], None)?;
    assert_eq!(total.as_u64(), Some(hashes.len() as u64), "entries {total}");
    assert_eq!(
        obstacles.as_array().map(Vec::len),
        Some(2 * (NODES - 1) + 1),
        "obstacles {obstacles}"
    );
    let dropped: u64 = nodes.iter().map(|n| lost(&n.ns)).sum::<Result<_>>()?;
    Ok(format!(
        "netns: {NODES} nodes in namespaces, {}% loss ({dropped} packets dropped), {} entries, \
         {} cut off and healed, converged {:.1} s after the heal",
        LOSS * 100.0,
        hashes.len(),
        cut.state,
        converged.as_secs_f64(),
    ))
}
