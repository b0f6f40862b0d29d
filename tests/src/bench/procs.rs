//! Real processes: the `spoc-node` binary, a node's HTTP API, the bytes each
//! process moves over TCP, and its memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use spoc_node::log::SignedEntry;
use spoc_tests::{NodeInfo, Proc};

/// Builds `spoc-node` next to this binary when run through cargo (so the benchmark never
/// measures a stale node), and returns its path.
pub fn ensure_node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("the benchmark binary has no directory"))?
        .to_path_buf();
    let node = dir.join("spoc-node");
    if let Ok(cargo) = std::env::var("CARGO") {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target = dir
            .parent()
            .ok_or_else(|| anyhow!("no target directory above {}", dir.display()))?;
        // Both packages are named so that features unify as in the build of this binary:
        // building spoc-node alone would rebuild libp2p and others with other features.
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "spoc-node",
            "-p",
            "spoc-tests",
            "--bin",
            "spoc-node",
        ])
        .env("CARGO_TARGET_DIR", target)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // `cargo run` sets the package's variables for this binary; a build script that
        // watches one (ring's watches CARGO_MANIFEST_DIR) would rebuild half the tree.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                ]
                .contains(&key)
            {
                cmd.env_remove(key);
            }
        }
        match profile.as_str() {
            "release" => {
                cmd.arg("--release");
            }
            "debug" => {}
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().context("running cargo build for spoc-node")?;
        if !status.success() {
            bail!("cargo build -p spoc-node failed ({status})");
        }
    }
    if !node.exists() {
        bail!(
            "{} is missing: run the benchmark with `cargo run --release -p spoc-tests --bin spoc-bench`, or build spoc-node first",
            node.display()
        );
    }
    Ok(node)
}

/// The harness's view of a node laid out by `spoc_node::testnet::generate`.
pub fn info(node: &spoc_node::testnet::Node) -> NodeInfo {
    NodeInfo {
        state: node.state.clone(),
        data_dir: node.data_dir.clone(),
        api: node.api.clone(),
        listen: node.listen.clone(),
    }
}

/// Starts the node `reps` times (at least once), each time from the spawn until its API
/// answers a status that `check` accepts; returns each start's time, and the last start's
/// process and client, left running.
pub fn cold_starts(
    node: &spoc_node::testnet::Node,
    reps: usize,
    check: impl Fn(&Value) -> Result<()>,
) -> Result<(Vec<Duration>, Proc, Api)> {
    let mut times = Vec::new();
    let mut running: Option<(Proc, Api)> = None;
    for _ in 0..reps.max(1) {
        // Stopped as a service manager stops it for an upgrade: a process killed instead
        // leaves a store that the next start repairs, reading the whole file.
        if let Some((mut p, _)) = running.take() {
            p.terminate()?;
        }
        let t = Instant::now();
        let p = Proc::start(&info(node))?;
        let api = Api::of(&p)?;
        let status = api.status()?;
        times.push(t.elapsed());
        check(&status)?;
        running = Some((p, api));
    }
    let (p, api) = running.ok_or_else(|| anyhow!("no node started"))?;
    Ok((times, p, api))
}

/// A client of one node's API that keeps its connection open between calls.
#[derive(Debug, Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    /// A client for the node at `api`, with the token of `data_dir`.
    pub fn new(api: &str, data_dir: &Path) -> Result<Api> {
        let token = std::fs::read_to_string(data_dir.join(spoc_node::config::TOKEN_FILE))
            .context("reading the API token")?;
        Ok(Api {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(130)))
                .http_status_as_error(false)
                .build()
                .into(),
            base: format!("http://{api}"),
            auth: format!("Bearer {}", token.trim()),
        })
    }

    /// A client for a running node.
    pub fn of(p: &Proc) -> Result<Api> {
        Api::new(&p.api, &p.data_dir)
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let mut r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_json()?))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .send_json(body)?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_json()?))
    }

    /// Writes a command; returns the hash of the signed, durable entry.
    pub fn write(&self, command: &Value) -> Result<String> {
        let (status, body) = self.post("/v1/commands", command)?;
        if status != 200 {
            bail!("write refused ({status}): {body}");
        }
        body["entry"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no entry hash in {body}"))
    }

    /// Long-polls until the node holds every entry of `hashes`; returns whether it does.
    pub fn wait(&self, hashes: &[String], timeout: Duration) -> Result<bool> {
        for chunk in hashes.chunks(100) {
            let (status, body) = self.get(&format!(
                "/v1/wait?entries={}&timeout_ms={}",
                chunk.join(","),
                timeout.as_millis()
            ))?;
            if status != 200 {
                bail!("/v1/wait answered {status}: {body}");
            }
            if body["present"] != Value::Bool(true) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The node's status.
    pub fn status(&self) -> Result<Value> {
        let (status, body) = self.get("/v1/status")?;
        if status != 200 {
            bail!("/v1/status answered {status}: {body}");
        }
        Ok(body)
    }
}

/// Waits until the node has admitted `peers` peers: on each "peer admitted" line of its log,
/// the status says how many it holds.
pub fn await_admitted(p: &mut Proc, api: &Api, peers: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = api.status()?;
        let admitted = status["peers"].as_array().map_or(0, Vec::len);
        if admitted >= peers {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        p.wait_log("peer admitted", left)
            .with_context(|| format!("{} admitted {admitted} of {peers} peers", p.api))?;
    }
}

pub use spoc_tests::vm_kib;

/// TCP payload bytes (sent, received) of each of `pids` over its open sockets, from the
/// kernel's per-socket counters (`ss -tinp`), leaving out sockets on `skip_ports` (the
/// API). Returns `None` when `ss` is missing.
pub fn tcp_bytes(
    pids: &[u32],
    skip_ports: &HashSet<u16>,
) -> Result<Option<HashMap<u32, (u64, u64)>>> {
    let out = match Command::new("ss")
        .args(["-tinpH"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => out,
        _ => return Ok(None),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted: HashSet<u32> = pids.iter().copied().collect();
    let mut bytes: HashMap<u32, (u64, u64)> = pids.iter().map(|p| (*p, (0, 0))).collect();
    let port = |addr: Option<&&str>| {
        addr.and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
    };
    let mut current: Option<u32> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let skip = [port(cols.get(3)), port(cols.get(4))]
                .into_iter()
                .flatten()
                .any(|p| skip_ports.contains(&p));
            let pid = line.find("pid=").and_then(|i| {
                line[i + 4..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u32>()
                    .ok()
            });
            current = pid.filter(|p| wanted.contains(p) && !skip);
        } else if let Some(pid) = current.take() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|t| t.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let sent = field("bytes_sent:")
                .or_else(|| field("bytes_acked:"))
                .unwrap_or(0);
            let received = field("bytes_received:").unwrap_or(0);
            if let Some(b) = bytes.get_mut(&pid) {
                b.0 += sent;
                b.1 += received;
            }
        }
    }
    Ok(Some(bytes))
}

/// The tip of every log among `entries`: holding these means holding all of them, since a
/// log is accepted only in order.
pub fn tips(entries: &[SignedEntry]) -> Vec<String> {
    let mut last = HashMap::new();
    for e in entries {
        last.insert(e.entry.log(), e.hash());
    }
    let tips: BTreeSet<String> = last.values().map(|h| h.to_string()).collect();
    tips.into_iter().collect()
}

/// The API port of a node, to leave its sockets out of the network's bytes.
pub fn api_port(api: &str) -> Result<u16> {
    api.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {api}"))
}

/// Moves the ports of a testnet laid out by `spoc_node::testnet::generate` below the
/// kernel's ephemeral range, rewriting the charter (every copy, identically) and each
/// `node.toml`. `generate` picks free ports from the ephemeral range, where the outgoing
/// connections of the nodes started first can take a later node's port before it binds
/// it: with 31 nodes that happens in most runs.
pub fn relocate_ports(out: &Path, nodes: &mut [spoc_node::testnet::Node]) -> Result<()> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // A start that differs between processes, so that two runs side by side rarely meet.
    let mut next = 10_000 + (std::process::id() % 1_000) as u16 * 8;
    let mut take = || -> Result<u16> {
        while next < low {
            let port = next;
            next += 1;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("no free port below the ephemeral range ({low})")
    };
    let mut swaps: Vec<(String, String)> = Vec::new();
    for node in nodes.iter_mut() {
        let listen_port = node
            .listen
            .rsplit('/')
            .next()
            .ok_or_else(|| anyhow!("no port in {}", node.listen))?
            .to_owned();
        let new_listen = take()?;
        swaps.push((
            format!("/tcp/{listen_port}\""),
            format!("/tcp/{new_listen}\""),
        ));
        node.listen = format!("/ip4/127.0.0.1/tcp/{new_listen}");
        let new_api = take()?;
        swaps.push((format!("{}\"", node.api), format!("127.0.0.1:{new_api}\"")));
        node.api = format!("127.0.0.1:{new_api}");
    }
    let rewrite = |path: &Path| -> Result<()> {
        let mut text = std::fs::read_to_string(path)?;
        for (old, new) in &swaps {
            text = text.replace(old, new);
        }
        std::fs::write(path, text)?;
        Ok(())
    };
    rewrite(&out.join("charter.toml"))?;
    for node in nodes.iter() {
        rewrite(&node.data_dir.join("charter.toml"))?;
        rewrite(&node.data_dir.join(spoc_node::config::FILE))?;
    }
    Ok(())
}
