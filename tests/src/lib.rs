//! The multi-node harness: real `spoc-node` processes on loopback, and the `spoc` CLI.
//!
//! A `Testnet` lays out data directories with `spoc testnet`; a `Proc` is one running
//! node, whose readiness is awaited on its own log line, never on a timer. Every process
//! is killed when its `Proc` is dropped, so a failing test leaves nothing behind.

pub mod history;
pub mod hostile;
pub mod silent;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// How long a node may take to start or stop before a test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory of the workspace's built binaries (next to the test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary, e.g. `spoc-node` or `spoc`.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --workspace` first",
            path.display()
        );
    }
    Ok(path)
}

/// The output of one `spoc` run.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {:?} (stderr {:?})", self.stdout, self.stderr))
    }

    pub fn ok(self) -> Result<Output> {
        if self.status != 0 {
            bail!("spoc exited {}: {}", self.status, self.stderr.trim());
        }
        Ok(self)
    }
}

/// Runs `spoc ARGS` with `--data-dir` set when given.
pub fn spoc(data_dir: Option<&Path>, args: &[&str]) -> Result<Output> {
    spoc_with(data_dir, &[], args)
}

/// Runs `spoc ARGS` with `--data-dir` set when given and extra environment variables.
pub fn spoc_with(data_dir: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(bin("spoc")?);
    if let Some(d) = data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    cmd.env_remove("SPOC_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
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

/// One node of a testnet, as `spoc testnet --json` describes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NodeInfo {
    pub state: String,
    pub data_dir: PathBuf,
    pub api: String,
    pub listen: String,
}

/// A testnet in a temporary directory.
#[derive(Debug)]
pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeInfo>,
}

impl Testnet {
    /// Lays out `n` nodes with `spoc testnet --nodes N --out DIR --json`.
    pub fn new(n: usize) -> Result<Testnet> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("net");
        let o = spoc(
            None,
            &[
                "testnet",
                "--nodes",
                &n.to_string(),
                "--out",
                out.to_str().ok_or_else(|| anyhow!("path"))?,
                "--json",
            ],
        )?
        .ok()?;
        let nodes: Vec<NodeInfo> = serde_json::from_str(&o.stdout)?;
        Ok(Testnet { dir, nodes })
    }

    pub fn node(&self, state: &str) -> Result<&NodeInfo> {
        self.nodes
            .iter()
            .find(|n| n.state == state)
            .ok_or_else(|| anyhow!("no node {state}"))
    }
}

/// A running `spoc-node` process.
#[derive(Debug)]
pub struct Proc {
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// The log's lines; in a mutex only so that threads may share a `&Proc` to write.
    log: std::sync::Mutex<mpsc::Receiver<String>>,
    pub api: String,
    token: String,
}

impl Proc {
    /// Starts a node and waits for its "node running" log line.
    pub fn start(info: &NodeInfo) -> Result<Proc> {
        Self::start_with(info, &[])
    }

    pub fn start_with(info: &NodeInfo, env: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(bin("spoc-node")?);
        cmd.arg("--data-dir")
            .arg(&info.data_dir)
            .env("SPOC_LOG_FORMAT", "text")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting spoc-node")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        // The reader thread ends when the process closes its stderr.
        let (tx, rx) = mpsc::sync_channel(4096);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.try_send(line).is_err() {
                    // A test that stops reading the log loses lines, never blocks the node.
                }
            }
        });
        let mut proc = Proc {
            data_dir: info.data_dir.clone(),
            child: Some(child),
            log: std::sync::Mutex::new(rx),
            api: info.api.clone(),
            token: String::new(),
        };
        proc.wait_log("node running", START_TIMEOUT)?;
        proc.token = std::fs::read_to_string(info.data_dir.join("api.token"))?
            .trim()
            .to_owned();
        Ok(proc)
    }

    /// Forgets the log lines read so far, so that the next wait sees only newer ones.
    pub fn skip_log(&mut self) {
        let log = self
            .log
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while log.try_recv().is_ok() {}
    }

    /// Waits for a log line containing `needle`; fails if the process exits first.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let log = self
                .log
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match log.recv_timeout(left) {
                Ok(line) => {
                    if line.contains(needle) {
                        return Ok(line);
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no log line {needle:?} within {timeout:?}; saw: {seen:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "node exited before {needle:?}; its log: {}",
                        seen.join("\n")
                    )
                }
            }
        }
    }

    /// Waits until every one of `needles` has appeared in a log line, in any order.
    pub fn wait_logs(&mut self, needles: &[&str], timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut left: Vec<&str> = needles.to_vec();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .wait_log("", wait)
                .with_context(|| format!("waiting for {left:?}"))?;
            left.retain(|needle| !line.contains(needle));
        }
        Ok(())
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// GET an API path, as text (such as `/metrics`).
    pub fn get_text(&self, path: &str) -> Result<(u16, String)> {
        let mut r = self
            .agent()
            .get(&format!("http://{}{path}", self.api))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string()?))
    }

    /// GET an API path, as JSON.
    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let (status, text) = self.get_text(path)?;
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("GET {path} answered {status} with no JSON: {text}"))?;
        Ok((status, body))
    }

    /// Every summary of a collection, page after page.
    pub fn list(&self, collection: &str) -> Result<Vec<Value>> {
        all_pages(
            |path| {
                let (status, body) = self.get(path)?;
                anyhow::ensure!(status == 200, "GET {path} answered {status}: {body}");
                Ok(body)
            },
            &format!("/v1/docs?collection={collection}&limit=1000"),
        )
    }

    /// POST JSON to an API path.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let mut r = self
            .agent()
            .post(&format!("http://{}{path}", self.api))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body)?;
        let status = r.status().as_u16();
        let body: Value = r.body_mut().read_json()?;
        Ok((status, body))
    }

    /// Waits until the node holds every entry of `hashes`; fails after `timeout`.
    pub fn wait_entries(&self, hashes: &[String], timeout: Duration) -> Result<()> {
        for chunk in hashes.chunks(100) {
            let (status, body) = self.get(&format!(
                "/v1/wait?entries={}&timeout_ms={}",
                chunk.join(","),
                timeout.as_millis()
            ))?;
            if status != 200 || body["present"] != Value::Bool(true) {
                bail!("{} lacks entries after {timeout:?}: {body}", self.api);
            }
        }
        Ok(())
    }

    /// Sends a write command; returns the answer (`id`, `entry`, `seq`).
    pub fn write(&self, command: &Value) -> Result<Value> {
        let (status, body) = self.post("/v1/commands", command)?;
        if status != 200 {
            bail!("write refused ({status}): {body}");
        }
        Ok(body)
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for the process to go.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, and wait for a clean exit; returns the exit code.
    /// Waits for the node to exit by itself, at most `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let mut c = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let waiter = std::thread::spawn(move || {
            let code = c.wait().map(|s| s.code().unwrap_or(-1));
            let _ = tx.send(());
            code
        });
        rx.recv_timeout(timeout)
            .map_err(|_| anyhow!("the node did not exit within {timeout:?}"))?;
        let code = waiter
            .join()
            .map_err(|_| anyhow!("the waiting thread panicked"))??;
        Ok(code)
    }

    pub fn terminate(&mut self) -> Result<i32> {
        let mut c = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(c.wait()?.code().unwrap_or(-1))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `spoc-node` expecting it to refuse to start; returns its one-line reason.
pub fn refused_start(data_dir: &Path, env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new(bin("spoc-node")?);
    cmd.arg("--data-dir").arg(data_dir).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if out.status.success() {
        bail!("spoc-node started and exited 0");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("spoc-node: "))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no one-line reason in {stderr:?}"))
}

/// A field of `/proc/PID/status` in KiB, such as `VmHWM` or `VmRSS`.
pub fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Every item of a paged API answer (`/v1/docs` or `/v1/log`), following `next` from
/// page to page: `get` answers one path.
pub fn all_pages(mut get: impl FnMut(&str) -> Result<Value>, path: &str) -> Result<Vec<Value>> {
    let (items, cursor) = if path.starts_with("/v1/log") {
        ("entries", "before")
    } else {
        ("items", "cursor")
    };
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..100_000 {
        let page = match &next {
            None => get(path)?,
            Some(n) => get(&format!("{path}&{cursor}={n}"))?,
        };
        out.extend(page[items].as_array().cloned().unwrap_or_default());
        next = match &page["next"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => return Ok(out),
        };
    }
    anyhow::bail!("{path} did not end after 100,000 pages")
}

/// Starts a node on a store that was tampered with where a start does not read, reads the
/// audit trail (which reaches every entry) and the obstacles' list (every summary) until
/// one read answers with the damage, and returns the reason the node gave: the node also
/// logs it and stops with a non-zero status.
pub fn stops_at_first_read(info: &NodeInfo) -> Result<String> {
    let mut node = Proc::start(info)?;
    let mut answers = Vec::new();
    for path in [
        "/v1/log?limit=1000",
        "/v1/docs?collection=obstacles&limit=1000",
    ] {
        let (status, body) = node.get(path)?;
        if status == 500 {
            answers.clear();
            answers.push(body);
            break;
        }
        answers.push(serde_json::json!({"path": path, "status": status}));
    }
    let [body] = answers.as_slice() else {
        anyhow::bail!("no read found the damage: {answers:?}");
    };
    let reason = body["error"].as_str().unwrap_or_default().to_owned();
    node.wait_log("the store is damaged; stopping", Duration::from_secs(10))?;
    let code = node.wait_exit(Duration::from_secs(10))?;
    anyhow::ensure!(
        code != 0,
        "the node exited 0 after finding its store damaged"
    );
    Ok(reason)
}
