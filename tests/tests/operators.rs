//! The operators of one node, through the real `spoc` CLI: the head of `api.token` adds a
//! reader and a contributor, each may do what its role allows and is refused the rest
//! with one line, the local audit names who wrote what, and a revoked token is refused,
//! also after a restart. The CLI talks over the node's 0600 Unix socket, and over TCP it
//! gives its token to no process that cannot prove it knows it.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Result, ensure};
use serde_json::Value;
use spoc_tests::{Output, Proc, Testnet, spoc, spoc_with};

fn report(title: &str) -> Vec<String> {
    [
        "--json",
        "obstacle",
        "report",
        "--title",
        title,
        "--type",
        "pragmatic",
        "--description",
        "Requests wait in several queues.",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The one line a refused command prints, checked to be one line with exit status 1.
fn refused(out: &Output) -> Result<String> {
    ensure!(out.status == 1, "exit {}: {out:?}", out.status);
    let line = out.stderr.trim_end();
    ensure!(!line.is_empty() && !line.contains('\n'), "{:?}", out.stderr);
    Ok(line.to_owned())
}

/// An HTTP GET with a bearer token, for the status code itself.
fn status_code(api: &str, token: &str) -> Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .get(&format!("http://{api}/v1/status"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()?;
    Ok(r.status().as_u16())
}

/// Listens on `api` and answers the first request with a made-up proof; returns what it
/// was sent.
fn impostor(api: &str) -> Result<std::thread::JoinHandle<String>> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(api)?;
    Ok(std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return String::new();
        };
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            request.push_str(&line);
        }
        let body = format!("{{\"proof\": \"{}\"}}", "00".repeat(32));
        let _ = write!(
            reader.get_mut(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        request
    }))
}

#[test]
fn operators_act_by_their_role_and_a_revoked_token_is_refused() -> Result<()> {
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let dir = lt.data_dir.as_path();
    let mut node = Proc::start(lt)?;
    let tokens = tempfile::tempdir()?;

    // The head (the token of api.token) adds a reader and a contributor; each token is
    // printed once, on stdout.
    let add = |name: &str, role: &str| -> Result<(String, std::path::PathBuf)> {
        let out = spoc(Some(dir), &["operator", "add", name, "--role", role])?.ok()?;
        let token = out.stdout.trim().to_owned();
        ensure!(token.len() == 64, "{out:?}");
        let path = tokens.path().join(format!("{name}.token"));
        std::fs::write(&path, format!("{token}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok((token, path))
    };
    let (reader_token, reader_file) = add("rita", "reader")?;
    let (writer_token, _) = add("carl", "contributor")?;
    let reader_file = reader_file.to_string_lossy().into_owned();

    // The reader reads, and its write is refused with one line and exit status 1.
    spoc(Some(dir), &["--token-file", &reader_file, "status"])?.ok()?;
    let out = spoc(
        Some(dir),
        &[
            &["--token-file", reader_file.as_str()][..],
            &args(&report("By a reader")),
        ]
        .concat(),
    )?;
    let line = refused(&out)?;
    ensure!(
        line == "spoc: operator rita is a reader and may not write (it takes a contributor)",
        "{line}"
    );
    // The contributor writes (its token from SPOC_TOKEN), and may not add operators.
    let env = [("SPOC_TOKEN", writer_token.as_str())];
    let written = spoc_with(Some(dir), &env, &args(&report("By a contributor")))?
        .ok()?
        .json()?;
    let out = spoc_with(
        Some(dir),
        &env,
        &["operator", "add", "eve", "--role", "head"],
    )?;
    let line = refused(&out)?;
    ensure!(
        line.contains("carl is a contributor and may not add operators"),
        "{line}"
    );
    // Nor say where the state's nodes are dialled: that is the head's, as the charter was.
    let out = spoc_with(
        Some(dir),
        &env,
        &["address", "set", "/ip4/127.0.0.1/tcp/4999"],
    )?;
    let line = refused(&out)?;
    ensure!(
        line == "spoc: operator carl is a contributor and may not publish the nodes' addresses (it takes a head)",
        "{line}"
    );
    // The head writes too.
    let by_head = spoc(Some(dir), &args(&report("By the head")))?
        .ok()?
        .json()?;

    // The local audit names who wrote what.
    let log = spoc(Some(dir), &["log", "--operators", "--json"])?
        .ok()?
        .json()?;
    let operator_of = |hash: &Value| -> Option<String> {
        log.as_array()?
            .iter()
            .find(|e| e["hash"] == *hash)
            .and_then(|e| e["operator"].as_str().map(str::to_owned))
    };
    ensure!(
        operator_of(&written["entry"]).as_deref() == Some("carl"),
        "{log}"
    );
    ensure!(
        operator_of(&by_head["entry"]).as_deref() == Some("head"),
        "{log}"
    );
    let text = spoc(Some(dir), &["log", "--operators"])?.ok()?.stdout;
    ensure!(
        text.lines().next().is_some_and(|h| h.contains("OPERATOR")) && text.contains(" carl "),
        "{text}"
    );

    // The head revokes the contributor: its token gets 401, and the CLI says so in one line.
    spoc(Some(dir), &["operator", "revoke", "carl"])?.ok()?;
    ensure!(status_code(&lt.api, &writer_token)? == 401);
    let line = refused(&spoc_with(Some(dir), &env, &["status"])?)?;
    ensure!(
        line == "spoc: the node refused the API token (SPOC_TOKEN): unknown or revoked",
        "{line}"
    );
    let list = spoc(Some(dir), &["operator", "list", "--json"])?
        .ok()?
        .json()?;
    let carl = list
        .as_array()
        .and_then(|all| all.iter().find(|o| o["name"] == "carl"))
        .cloned()
        .unwrap_or_default();
    ensure!(
        carl["role"] == "contributor" && carl["revoked_ms"].is_u64(),
        "{list}"
    );
    // The last head cannot be revoked.
    let line = refused(&spoc(Some(dir), &["operator", "revoke", "head"])?)?;
    ensure!(line == "spoc: the last head cannot be revoked", "{line}");

    // The CLI reached the node over its Unix socket, which only the node's user may use.
    let socket = dir.join("api.sock");
    let mode = std::fs::metadata(&socket)?.permissions().mode();
    ensure!(mode & 0o777 == 0o600, "api.sock has mode {mode:o}");

    // While the node is down, an impostor holds its TCP port: the CLI, finding no socket,
    // asks it to prove it knows the token, and sends nothing when it cannot.
    node.terminate()?;
    ensure!(!socket.exists(), "the socket outlived the node");
    let seen = impostor(&lt.api)?;
    let line = refused(&spoc(Some(dir), &["status"])?)?;
    ensure!(
        line.starts_with(&format!(
            "spoc: the process at {} did not prove it knows the API token, so the token was not sent",
            lt.api
        )),
        "{line}"
    );
    let head_token = std::fs::read_to_string(dir.join("api.token"))?;
    let requests = seen
        .join()
        .map_err(|_| anyhow::anyhow!("the impostor panicked"))?;
    ensure!(requests.contains("GET /v1/hello?"), "{requests}");
    ensure!(
        !requests.contains(head_token.trim())
            && !requests.to_ascii_lowercase().contains("authorization"),
        "{requests}"
    );

    // After a restart, the operators and the audit are as they were.
    let _node = Proc::start(lt)?;
    ensure!(status_code(&lt.api, &writer_token)? == 401);
    ensure!(status_code(&lt.api, &reader_token)? == 200);
    let log = spoc(Some(dir), &["log", "--operators", "--json"])?
        .ok()?
        .json()?;
    ensure!(
        log.as_array()
            .is_some_and(|all| all.iter().any(|e| e["operator"] == "carl")),
        "{log}"
    );
    Ok(())
}
