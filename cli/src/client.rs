//! The client of a node's local API (docs/api.md): bearer token, JSON in and out, and
//! every failure turned into one sentence an operator can act on.
//!
//! It reaches the node over the Unix socket of the data directory when it can, and
//! otherwise over TCP; over TCP it sends its token only once the node has proved that it
//! knows it (`/v1/hello`), so a process that holds the port while the node is down never
//! gets the token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::http::Response;
use ureq::{Agent, Body, RequestBuilder};

/// How long an ordinary call may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long `verify`, which re-checks the whole store, may take.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest exported document the CLI reads into memory.
const MAX_BYTES: u64 = 1 << 30;

/// Where the operator's token comes from: `--token-file`, then `SPOC_TOKEN`, then the data
/// directory's `api.token` (the first head's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    /// The token itself, from the environment.
    Env(String),
    DataDir,
}

impl TokenSource {
    pub fn pick(file: Option<&Path>, env: Option<String>) -> TokenSource {
        match (file, env) {
            (Some(path), _) => TokenSource::File(path.to_owned()),
            (None, Some(token)) if !token.trim().is_empty() => TokenSource::Env(token),
            _ => TokenSource::DataDir,
        }
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// A client of one node's API. Its `Debug` shows where the token comes from, never the
/// token.
pub struct Client {
    agent: Agent,
    base: String,
    /// The token, or why it could not be read: a node that answers tells which.
    token: Result<String, String>,
    /// Where the token comes from, for messages: a file, or `SPOC_TOKEN`.
    token_path: String,
    api: String,
    data_dir: PathBuf,
    timeout: Duration,
    /// Over TCP, the outcome of the node's proof that it knows the token, once asked.
    proof: Option<std::sync::OnceLock<Result<(), String>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field(
                "token",
                &self
                    .token
                    .as_ref()
                    .map(|_| "<hidden>")
                    .map_err(|e| e.as_str()),
            )
            .field("token_path", &self.token_path)
            .field("data_dir", &self.data_dir)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct ApiError {
    error: String,
}

impl Client {
    /// A client of the node whose settings are in `data_dir`, with the token of `source`.
    pub fn open(data_dir: &Path, source: TokenSource, timeout: Duration) -> Result<Client> {
        let settings = spoc_node::config::Settings::load(data_dir, &|k| std::env::var(k).ok())
            .map_err(|e| match e {
                spoc_node::config::Error::Read { .. } => anyhow!(
                    "{e} (is {} the data directory of a node?)",
                    data_dir.display()
                ),
                other => anyhow!(other),
            })?;
        let (token, token_path) = match source {
            TokenSource::File(path) => (read_token(&path), path.display().to_string()),
            TokenSource::Env(token) => (Ok(token.trim().to_owned()), "SPOC_TOKEN".to_owned()),
            TokenSource::DataDir => {
                let path = settings.token_path();
                (read_token(&path), path.display().to_string())
            }
        };
        let socket = settings.socket_path();
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Client::over_socket(
                socket,
                token,
                token_path,
                data_dir.to_owned(),
                timeout,
            ));
        }
        let mut client = Client::new(
            settings.api,
            token,
            token_path,
            data_dir.to_owned(),
            timeout,
        );
        client.proof = Some(std::sync::OnceLock::new());
        Ok(client)
    }

    fn config(timeout: Duration) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
        Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // The API is local: never through a proxy from the environment.
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("spoc/", env!("CARGO_PKG_VERSION")))
    }

    /// A client of the node's Unix socket at `socket`.
    pub fn over_socket(
        socket: PathBuf,
        token: Result<String, String>,
        token_path: String,
        data_dir: PathBuf,
        timeout: Duration,
    ) -> Client {
        let agent = Agent::with_parts(
            Client::config(timeout).build(),
            crate::unix::UnixConnector {
                path: socket.clone(),
            },
            ureq::unversioned::resolver::DefaultResolver::default(),
        );
        Client {
            agent,
            // The socket is the address; the URL only names the routes.
            base: "http://127.0.0.1".to_owned(),
            token,
            token_path,
            api: socket.display().to_string(),
            data_dir,
            timeout,
            proof: None,
        }
    }

    /// Asks the node to prove it knows the token, once; over the socket nothing is asked.
    fn proven(&self) -> Result<()> {
        let (Some(proof), Ok(token)) = (&self.proof, &self.token) else {
            return Ok(());
        };
        proof
            .get_or_init(|| self.hello(token))
            .clone()
            .map_err(|e| anyhow!(e))
    }

    fn hello(&self, token: &str) -> Result<(), String> {
        use rand::RngCore;
        let hash = spoc_node::operator::Token::from_text(token).hash();
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        let refused = || {
            format!(
                "the process at {} did not prove it knows the API token, so the token was not sent \
                 (is it the node of {}?)",
                self.api,
                self.data_dir.display()
            )
        };
        let mut response = self
            .agent
            .get(format!("{}/v1/hello", self.base))
            .query("id", hex::encode(hash.hello_id()))
            .query("nonce", hex::encode(nonce))
            .call()
            .map_err(|e| self.transport(e).to_string())?;
        if response.status().as_u16() == 401 {
            return Err(format!(
                "the node refused the API token ({}): unknown or revoked",
                self.token_path
            ));
        }
        let answer: serde_json::Value = response.body_mut().read_json().map_err(|_| refused())?;
        let want = hex::encode(hash.hello_proof(&nonce));
        if answer["proof"].as_str() == Some(want.as_str()) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// A client of the API at `api`, with a token (or why there is none).
    pub fn new(
        api: SocketAddr,
        token: Result<String, String>,
        token_path: String,
        data_dir: PathBuf,
        timeout: Duration,
    ) -> Client {
        let agent: Agent = Client::config(timeout).build().into();
        Client {
            agent,
            base: format!("http://{api}"),
            token,
            token_path,
            api: api.to_string(),
            data_dir,
            timeout,
            proof: None,
        }
    }

    fn auth<B>(&self, request: RequestBuilder<B>) -> Result<RequestBuilder<B>> {
        self.proven()?;
        Ok(match &self.token {
            Ok(token) => request.header("Authorization", format!("Bearer {token}")),
            Err(_) => request,
        })
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Response<Body>> {
        let mut request = self.auth(self.agent.get(format!("{}{path}", self.base)))?;
        for (k, v) in query {
            request = request.query(k, v);
        }
        let response = request.call().map_err(|e| self.transport(e))?;
        self.check(response)
    }

    /// GETs `path` with a query and parses the JSON answer.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let response = self.get(path, query)?;
        self.parse(response)
    }

    /// POSTs a JSON body to `path` and parses the JSON answer.
    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let request = self.auth(self.agent.post(format!("{}{path}", self.base)))?;
        let response = request.send_json(body).map_err(|e| self.transport(e))?;
        let response = self.check(response)?;
        self.parse(response)
    }

    /// POSTs an empty body to `path` and parses the JSON answer.
    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self.auth(self.agent.post(format!("{}{path}", self.base)))?;
        let response = request.send_empty().map_err(|e| self.transport(e))?;
        let response = self.check(response)?;
        self.parse(response)
    }

    /// GETs `path` with a query and returns the body's bytes.
    pub fn get_bytes(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<u8>> {
        let mut response = self.get(path, query)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(e))
    }

    fn parse<T: DeserializeOwned>(&self, mut response: Response<Body>) -> Result<T> {
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "the node at {} gave an answer this CLI does not understand: {e}",
                self.api
            )
        })
    }

    /// Passes a successful answer through and turns any other into its error.
    fn check(&self, mut response: Response<Body>) -> Result<Response<Body>> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Err(self.status_error(status, &body))
    }

    /// The error of a non-2xx answer: the API's own message where it gives one.
    pub fn status_error(&self, status: u16, body: &str) -> anyhow::Error {
        if status == 401 {
            return match &self.token {
                Ok(_) => anyhow!(
                    "the node refused the API token ({}): unknown or revoked",
                    self.token_path
                ),
                Err(reason) => anyhow!("cannot read the API token {}: {reason}", self.token_path),
            };
        }
        match serde_json::from_str::<ApiError>(body) {
            Ok(e) => anyhow!(e.error),
            Err(_) => anyhow!("the node at {} answered HTTP {status}", self.api),
        }
    }

    /// The error of a request that got no answer.
    pub fn transport(&self, error: ureq::Error) -> anyhow::Error {
        use std::io::ErrorKind::*;
        let no_node = || {
            anyhow!(
                "no node answers at {} (is spoc-node running with --data-dir {}?)",
                self.api,
                self.data_dir.display()
            )
        };
        match error {
            ureq::Error::ConnectionFailed => no_node(),
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | NotConnected
                        | AddrNotAvailable
                        | UnexpectedEof
                ) =>
            {
                no_node()
            }
            ureq::Error::Timeout(_) => anyhow!(
                "the node at {} did not answer within {} s",
                self.api,
                self.timeout.as_secs()
            ),
            other => anyhow!("request to the node at {} failed: {other}", self.api),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Serves one canned HTTP answer and hands back the request it got.
    fn serve_once(status: &str, body: &str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            request
        });
        (addr, handle)
    }

    fn client(addr: SocketAddr, token: Result<String, String>) -> Client {
        Client::new(
            addr,
            token,
            "/d/api.token".to_owned(),
            PathBuf::from("/d"),
            TIMEOUT,
        )
    }

    #[test]
    fn a_client_shows_where_its_token_comes_from_and_never_the_token() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let shown = format!("{:?}", client(addr, Ok("s3cr3t-token-bytes".into())));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("<hidden>") && shown.contains("/d/api.token"),
            "{shown}"
        );
        let missing = format!("{:?}", client(addr, Err("no such file".into())));
        assert!(missing.contains("no such file"), "{missing}");
    }

    #[test]
    fn posts_json_with_the_token() {
        let (addr, server) = serve_once("200 OK", r#"{"id": "obstacles/LT/1", "seq": 3}"#);
        let c = client(addr, Ok("secret".into()));
        let answer: serde_json::Value = c
            .post_json("/v1/commands", &serde_json::json!({"command": "x"}))
            .unwrap();
        assert_eq!(answer["id"], "obstacles/LT/1");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/commands HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer secret\r\n")
        );
        let (_, body) = request.split_once("\r\n\r\n").unwrap();
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, serde_json::json!({"command": "x"}));
    }

    #[test]
    fn queries_are_encoded() {
        let (addr, server) = serve_once("200 OK", "[]");
        let c = client(addr, Ok("t".into()));
        let _: serde_json::Value = c
            .get_json("/v1/log", &[("doc", "obstacles/LT/1 x".into())])
            .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/log?doc=obstacles%2FLT%2F1%20x ")
                || request.starts_with("GET /v1/log?doc=obstacles/LT/1%20x "),
            "{request}"
        );
    }

    #[test]
    fn api_errors_become_their_message() {
        let (addr, server) = serve_once(
            "409 Conflict",
            r#"{"error": "only the Presidency (IE) may convene a meeting"}"#,
        );
        let c = client(addr, Ok("t".into()));
        let err = c.get_json::<serde_json::Value>("/v1/x", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "only the Presidency (IE) may convene a meeting"
        );
        server.join().unwrap();

        let (addr, server) = serve_once("401 Unauthorized", r#"{"error": "missing"}"#);
        let err = client(addr, Ok("t".into()))
            .get_json::<serde_json::Value>("/v1/status", &[])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the node refused the API token (/d/api.token): unknown or revoked"
        );
        server.join().unwrap();

        let c = client(addr, Err("No such file".into()));
        assert_eq!(
            c.status_error(401, "").to_string(),
            "cannot read the API token /d/api.token: No such file"
        );
        assert!(
            c.status_error(502, "<html>")
                .to_string()
                .ends_with("answered HTTP 502")
        );
    }

    #[test]
    fn a_silent_port_means_no_node() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = client(addr, Ok("t".into()))
            .get_json::<serde_json::Value>("/v1/status", &[])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no node answers at {addr} (is spoc-node running with --data-dir /d?)")
        );
    }
}
