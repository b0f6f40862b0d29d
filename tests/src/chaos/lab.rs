//! The lab: a hub namespace holding a bridge, one namespace per node linked to it by a veth
//! pair, the firewall rules that make the faults, and the node processes.
//!
//! Addresses are in 10.217.0.0/24 and exist only inside these namespaces: node `i` is
//! `10.217.0.(i+1)`, and the slow node also holds `SLOW_SOURCE`, the address its proxies
//! dial from. Every namespace has a `CHAOS` chain hooked into INPUT and OUTPUT; a fault is
//! the content of those chains, replaced atomically with `iptables-restore --noflush`, and
//! a heal empties them. Dropping the lab kills every process it started and deletes every
//! namespace it made (with their links and rules).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::helper::Helper;
use super::proxy::Route;

/// The first three octets of the lab's private network.
pub const SUBNET: [u8; 3] = [10, 217, 0];
/// The port every node listens on, each at its own address.
pub const P2P_PORT: u16 = 4101;
/// The address the slow node's proxies dial from.
pub const SLOW_SOURCE: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 200);
/// The port of the proxy for connections made to the slow node.
const INBOUND_PROXY_PORT: u16 = 4199;
/// The ports of the proxies for connections the slow node makes: this plus the peer's index.
const OUTBOUND_PROXY_BASE: u16 = 5000;
/// How long a node may take to start (it loads and verifies its whole store first).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The address of node `i`.
pub fn address(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i + 1).unwrap_or(u8::MAX);
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

/// Runs a command to completion; fails with its stderr when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why this machine cannot run the lab, if it cannot.
pub fn unsupported() -> Option<String> {
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
    let probe = format!("sc{}-probe", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e:#}"));
    }
    let nat = run(
        "ip",
        &["netns", "exec", &probe, "iptables", "-w", "-t", "nat", "-S"],
    );
    let _ = run("ip", &["netns", "del", &probe]);
    if let Err(e) = nat {
        return Some(format!("iptables has no nat table in a namespace: {e:#}"));
    }
    None
}

/// Deletes the namespaces that an earlier run left behind when it was killed outright
/// (names `sc<PID>-...` whose process is gone), with the processes still inside them.
pub fn reap_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("sc")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = run("ip", &["netns", "pids", name]) {
            for p in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// One node: its namespace, data directory, helper and (while it runs) its process.
#[derive(Debug)]
pub struct Node {
    pub index: usize,
    pub state: String,
    pub ns: String,
    pub dev: String,
    pub data_dir: PathBuf,
    pub api: String,
    pub helper: Option<Arc<Helper>>,
    child: Option<Child>,
    pub stopped: bool,
    pub starts: usize,
    pub log_path: PathBuf,
}

impl Node {
    pub fn helper(&self) -> Result<Arc<Helper>> {
        self.helper
            .clone()
            .ok_or_else(|| anyhow!("{} has no helper", self.state))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process exited by itself; takes it out of the running state if so, and
    /// returns its exit status.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// The resident memory of the node process in MiB, from `/proc`.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.state))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)?;
        self.stopped = true;
        Ok(())
    }

    pub fn cont(&mut self) -> Result<()> {
        if self.stopped {
            self.signal(nix::sys::signal::Signal::SIGCONT)?;
            self.stopped = false;
        }
        Ok(())
    }

    /// `kill -9`, and wait for the process to go.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        self.stopped = false;
        Ok(())
    }

    /// Starts `spoc-node` in the node's namespace and waits for its "node running" line.
    /// Its log is appended to `log_path`.
    pub fn start(&mut self, spoc_node: &Path) -> Result<Duration> {
        if self.child.is_some() {
            bail!("{} is already running", self.state);
        }
        let started = Instant::now();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        writeln!(log, "=== start {} ===", self.starts + 1)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(spoc_node)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("SPOC_LOG_FORMAT", "text")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting spoc-node")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        // `ip netns exec` execs the node, so this child is the node itself.
        self.child = Some(child);
        self.starts += 1;
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
                "{} did not log \"node running\" within {START_TIMEOUT:?}:\n{}",
                self.state,
                tail(&self.log_path, 30)
            )
        })?;
        Ok(started.elapsed())
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The namespaces, links, rules and processes of one run.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hub: String,
    namespaces: Vec<String>,
    pub nodes: Vec<Node>,
    /// The index of the node behind the delaying proxy, if any.
    pub slow: Option<usize>,
}

impl Lab {
    pub fn new() -> Lab {
        let prefix = format!("sc{}", std::process::id());
        Lab {
            hub: format!("{prefix}-hub"),
            prefix,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            slow: None,
        }
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Builds the network for `layout` (one entry per node: state, data dir, API address),
    /// with node `slow` (if any) behind delaying proxies, and starts every node's helper.
    pub fn build(
        &mut self,
        layout: &[(String, PathBuf, String)],
        slow: Option<usize>,
        delay: Duration,
    ) -> Result<()> {
        let hub = self.hub.clone();
        self.add_namespace(&hub)?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, (state, data_dir, api)) in layout.iter().enumerate() {
            let ns = format!("{}-n{i}", self.prefix);
            let (dev, port) = (
                format!("{}v{i}", self.prefix),
                format!("{}h{i}", self.prefix),
            );
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
            let cidr = format!("{}/24", address(i));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", &dev])?;
            if slow == Some(i) {
                let second = format!("{SLOW_SOURCE}/24");
                run("ip", &["-n", &ns, "addr", "add", &second, "dev", &dev])?;
            }
            run("ip", &["-n", &ns, "link", "set", &dev, "up"])?;
            let hooks = "*filter\n:CHAOS - [0:0]\n-A INPUT -j CHAOS\n-A OUTPUT -j CHAOS\nCOMMIT\n";
            run_with_input(
                "ip",
                &["netns", "exec", &ns, "iptables-restore", "-w", "--noflush"],
                Some(hooks),
            )?;
            self.nodes.push(Node {
                index: i,
                state: state.clone(),
                ns,
                dev,
                data_dir: data_dir.clone(),
                api: api.clone(),
                helper: None,
                child: None,
                stopped: false,
                starts: 0,
                log_path: data_dir.join("node.log"),
            });
        }
        self.slow = slow;
        let n = self.nodes.len();
        for i in 0..n {
            let routes = if slow == Some(i) {
                self.slow_routes(i)?
            } else {
                Vec::new()
            };
            let node = &self.nodes[i];
            let helper = Helper::start(&node.ns, &node.api, &node.data_dir, &routes, delay)?;
            self.nodes[i].helper = Some(Arc::new(helper));
        }
        Ok(())
    }

    /// The NAT rules and proxies that put every connection of node `s` behind a delay: its
    /// dials to each peer go to a local proxy for that peer, and dials to it go to one
    /// inbound proxy. The proxies dial from `SLOW_SOURCE`, which the rules do not match.
    fn slow_routes(&self, s: usize) -> Result<Vec<Route>> {
        let me = address(s);
        let mut rules = String::from("*nat\n");
        let mut routes = Vec::new();
        for j in (0..self.nodes.len()).filter(|&j| j != s) {
            let port = OUTBOUND_PROXY_BASE + u16::try_from(j)?;
            rules.push_str(&format!(
                "-A OUTPUT -s {me} -d {} -p tcp --dport {P2P_PORT} -j DNAT --to-destination {me}:{port}\n",
                address(j)
            ));
            routes.push(Route {
                listen: SocketAddr::new(IpAddr::V4(me), port),
                source: IpAddr::V4(SLOW_SOURCE),
                target: SocketAddr::new(IpAddr::V4(address(j)), P2P_PORT),
            });
        }
        rules.push_str(&format!(
            "-A PREROUTING -d {me} -p tcp --dport {P2P_PORT} -j REDIRECT --to-ports {INBOUND_PROXY_PORT}\nCOMMIT\n"
        ));
        routes.push(Route {
            listen: SocketAddr::new(IpAddr::V4(me), INBOUND_PROXY_PORT),
            source: IpAddr::V4(SLOW_SOURCE),
            target: SocketAddr::new(IpAddr::V4(me), P2P_PORT),
        });
        run_with_input(
            "ip",
            &[
                "netns",
                "exec",
                &self.nodes[s].ns,
                "iptables-restore",
                "-w",
                "--noflush",
            ],
            Some(&rules),
        )?;
        Ok(routes)
    }

    /// Every address node `i`'s traffic can come from.
    fn addresses_of(&self, i: usize) -> Vec<Ipv4Addr> {
        let mut a = vec![address(i)];
        if self.slow == Some(i) {
            a.push(SLOW_SOURCE);
        }
        a
    }

    /// Replaces every namespace's fault rules: node `i` drops all traffic with the nodes
    /// `blocked[i]`, and drops `loss[i]` of the packets it receives.
    pub fn set_faults(&self, blocked: &[Vec<usize>], loss: &[f64]) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let mut rules = String::from("*filter\n-F CHAOS\n");
            for &j in blocked.get(i).map(Vec::as_slice).unwrap_or_default() {
                for a in self.addresses_of(j) {
                    rules.push_str(&format!(
                        "-A CHAOS -s {a} -j DROP\n-A CHAOS -d {a} -j DROP\n"
                    ));
                }
            }
            if let Some(&p) = loss.get(i).filter(|p| **p > 0.0) {
                rules.push_str(&format!(
                    "-A CHAOS -i {} -m statistic --mode random --probability {p:.3} -j DROP\n",
                    node.dev
                ));
            }
            rules.push_str("COMMIT\n");
            run_with_input(
                "ip",
                &[
                    "netns",
                    "exec",
                    &node.ns,
                    "iptables-restore",
                    "-w",
                    "--noflush",
                ],
                Some(&rules),
            )?;
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub fn heal_network(&self) -> Result<()> {
        self.set_faults(&[], &[])
    }

    /// Prints the end of every node's log, to explain a failure.
    #[allow(clippy::print_stderr)]
    pub fn dump_logs(&self, lines: usize) {
        for n in &self.nodes {
            eprintln!(
                "--- {} ({}) log tail:\n{}",
                n.state,
                n.ns,
                tail(&n.log_path, lines)
            );
        }
    }
}

impl Drop for Lab {
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill9();
            n.helper = None;
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("spoc-chaos: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}
