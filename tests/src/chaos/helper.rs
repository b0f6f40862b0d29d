//! The helper: one `spoc-chaos helper` process inside each node's network namespace.
//!
//! A node's API listens on 127.0.0.1 inside its namespace, out of the controller's reach,
//! so the controller talks to it through this helper: it writes one JSON request a line on
//! the helper's stdin, the helper makes the HTTP call to the node and writes one JSON reply
//! a line on its stdout, tagged with the request's id, so that many calls (a write and a
//! long poll) can be under way at once. In the namespace of the slow node the helper also
//! runs the delaying proxies (see `proxy`). The helper exits when its stdin closes, so it
//! never outlives the controller.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::proxy::{self, Route};

/// One HTTP call for the helper to make.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    method: String,
    path: String,
    body: Option<Value>,
    timeout_ms: u64,
}

/// What the helper writes on its stdout: a reply to a request, or a proxy event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Reply {
        id: u64,
        status: Option<u16>,
        body: Option<Value>,
        error: Option<String>,
    },
    Event {
        event: String,
        detail: String,
    },
}

/// The answer to one call: the node's HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// The helper's side: runs in the namespace until stdin closes.
pub fn serve(api: &str, token_file: &Path, routes: Vec<Route>, delay: Duration) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let api = api.to_owned();
    let token_file = token_file.to_owned();
    runtime.block_on(async move {
        let (out, mut lines_out) = tokio::sync::mpsc::channel::<String>(1024);
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(line) = lines_out.recv().await {
                if stdout.write_all(line.as_bytes()).await.is_err()
                    || stdout.write_all(b"\n").await.is_err()
                    || stdout.flush().await.is_err()
                {
                    break;
                }
            }
        });
        let mut proxies = tokio::task::JoinSet::new();
        for route in routes {
            proxies.spawn(proxy::serve(route, delay, out.clone()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            let request: Request = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    let _ = out
                        .send(event("error", &format!("unreadable request: {e}")))
                        .await;
                    continue;
                }
            };
            let (agent, api, token_file, out) =
                (agent.clone(), api.clone(), token_file.clone(), out.clone());
            tokio::task::spawn_blocking(move || {
                let id = request.id;
                let reply = match call(&agent, &api, &token_file, &request) {
                    Ok(r) => Line::Reply {
                        id,
                        status: Some(r.status),
                        body: Some(r.body),
                        error: None,
                    },
                    Err(e) => Line::Reply {
                        id,
                        status: None,
                        body: None,
                        error: Some(format!("{e:#}")),
                    },
                };
                if let Ok(text) = serde_json::to_string(&reply) {
                    let _ = out.blocking_send(text);
                }
            });
        }
        // The controller closed stdin: stop the proxies and flush what is left.
        proxies.abort_all();
        drop(out);
        let _ = writer.await;
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn event(event: &str, detail: &str) -> String {
    serde_json::to_string(&Line::Event {
        event: event.to_owned(),
        detail: detail.to_owned(),
    })
    .unwrap_or_default()
}

/// Sends a proxy event line (used by `proxy`).
pub(super) async fn send_event(out: &tokio::sync::mpsc::Sender<String>, kind: &str, detail: &str) {
    let _ = out.send(event(kind, detail)).await;
}

fn call(agent: &ureq::Agent, api: &str, token_file: &Path, r: &Request) -> Result<Reply> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let url = format!("http://{api}{}", r.path);
    let auth = format!("Bearer {}", token.trim());
    let timeout = Some(Duration::from_millis(r.timeout_ms));
    let mut response = match (r.method.as_str(), &r.body) {
        ("GET", _) => agent
            .get(&url)
            .config()
            .timeout_global(timeout)
            .build()
            .header("Authorization", &auth)
            .call()?,
        ("POST", body) => agent
            .post(&url)
            .config()
            .timeout_global(timeout)
            .build()
            .header("Authorization", &auth)
            .send_json(body.clone().unwrap_or(Value::Null))?,
        (m, _) => bail!("unknown method {m}"),
    };
    let status = response.status().as_u16();
    let body: Value = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_json()?;
    Ok(Reply { status, body })
}

type Waiters = Arc<Mutex<HashMap<u64, SyncSender<Result<Reply, String>>>>>;

/// The controller's side: a running helper and the calls waiting for its replies.
#[derive(Debug)]
pub struct Helper {
    child: Child,
    stdin: Mutex<ChildStdin>,
    waiters: Waiters,
    next: AtomicU64,
    events: Arc<Mutex<Vec<String>>>,
}

impl Helper {
    /// Starts `spoc-chaos helper` in namespace `ns` for the node whose API is `api`.
    pub fn start(
        ns: &str,
        api: &str,
        data_dir: &Path,
        routes: &[Route],
        delay: Duration,
    ) -> Result<Helper> {
        let exe: PathBuf = std::env::current_exe().context("locating spoc-chaos")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(exe)
            .arg("helper")
            .arg("--api")
            .arg(api)
            .arg("--token-file")
            .arg(data_dir.join("api.token"))
            .arg("--delay-ms")
            .arg(delay.as_millis().to_string());
        for r in routes {
            cmd.arg("--route").arg(r.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the helper")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let waiters: Waiters = Arc::default();
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let (w, e) = (waiters.clone(), events.clone());
        // The reader hands each reply to the call waiting for it, and keeps the events.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Reply {
                        id,
                        status,
                        body,
                        error,
                    }) => {
                        let waiter = w.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                        let reply = match (status, error) {
                            (Some(status), _) => Ok(Reply {
                                status,
                                body: body.unwrap_or(Value::Null),
                            }),
                            (None, e) => Err(e.unwrap_or_else(|| "no reply".into())),
                        };
                        if let Some(tx) = waiter {
                            let _ = tx.try_send(reply);
                        }
                    }
                    Ok(Line::Event { event, detail }) => e
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("{event}: {detail}")),
                    Err(_) => {}
                }
            }
            // The helper is gone: fail every call still waiting.
            w.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
        Ok(Helper {
            child,
            stdin: Mutex::new(stdin),
            waiters,
            next: AtomicU64::new(1),
            events,
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Receiver<Result<Reply, String>>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let request = Request {
            id,
            method: method.to_owned(),
            path: path.to_owned(),
            body,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut line = serde_json::to_string(&request)?;
        line.push('\n');
        self.stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(line.as_bytes())
            .context("the helper is gone")?;
        Ok(rx)
    }

    /// Makes one call and waits for its reply. `timeout` bounds the HTTP call; the reply is
    /// awaited a little longer, so that the helper's own timeout answers first.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Reply> {
        let rx = self.send(method, path, body, timeout)?;
        match rx.recv_timeout(timeout + Duration::from_secs(10)) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(anyhow!(e)),
            Err(_) => bail!("no reply from the helper within {timeout:?}"),
        }
    }

    pub fn get(&self, path: &str, timeout: Duration) -> Result<Reply> {
        self.call("GET", path, None, timeout)
    }

    pub fn post(&self, path: &str, body: Value, timeout: Duration) -> Result<Reply> {
        self.call("POST", path, Some(body), timeout)
    }

    /// A GET that must answer 200; returns its body.
    pub fn get_ok(&self, path: &str, timeout: Duration) -> Result<Value> {
        let r = self.get(path, timeout)?;
        if r.status != 200 {
            bail!("GET {path} answered {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Events the helper reported (proxy connections).
    pub fn events(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
