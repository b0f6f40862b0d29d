//! The node itself: status, audit trail, verification, reports, exports and peers.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;

use super::Ctx;
use crate::args::{ExportArgs, LogArgs, OperatorCmd, ReportArgs};
use crate::client::{TIMEOUT, VERIFY_TIMEOUT};
use crate::output::{self, Spinner, Table, field};

/// `spoc status`.
pub fn status(ctx: &Ctx) -> Result<()> {
    let status: Value = ctx.client(TIMEOUT)?.get_json("/v1/status", &[])?;
    if ctx.json {
        ctx.print_json(&status)?;
    } else {
        ctx.print(&status_text(&status))?;
    }
    Ok(())
}

/// The human summary of `/v1/status`.
pub fn status_text(s: &Value) -> String {
    let number = |k: &str| s.get(k).and_then(Value::as_u64);
    let presidency = match s.get("presidency") {
        Some(Value::String(p)) => p.clone(),
        _ => "none (outside the calendar)".into(),
    };
    let rejected = match s.get("rejected").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    };
    let equivocations = match s.get("equivocations").and_then(Value::as_array) {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|e| {
                format!(
                    "{}/{} at seq {}",
                    field(e, "state"),
                    field(e, "incarnation"),
                    field(e, "seq")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    };
    let peers = s.get("peers").and_then(Value::as_array).map_or(0, Vec::len);
    let waiting = match s.get("waiting_for_time").and_then(Value::as_u64) {
        Some(n) if n > 0 => format!(", {n} dated ahead of this clock"),
        _ => String::new(),
    };
    let mut text = output::pairs(&[
        ("state", field(s, "state")),
        ("network", field(s, "network")),
        ("presidency", presidency),
        (
            "charter",
            format!(
                "version {} ({})",
                field(s, "charter_version"),
                output::short(&field(s, "charter_hash"), 12)
            ),
        ),
        ("peer id", field(s, "peer_id")),
        ("incarnation", field(s, "incarnation")),
        (
            "entries",
            format!(
                "{} ({} pending{waiting})",
                field(s, "entries"),
                field(s, "pending")
            ),
        ),
        ("clock", clock_text(&s["clock"])),
        ("documents", field(s, "documents")),
        (
            "store",
            number("store_bytes").map_or_else(|| "-".into(), output::bytes),
        ),
        ("peers", peers.to_string()),
        ("rejected", rejected),
        ("equivocations", equivocations),
    ]);
    if let Some(states) = s.get("states").and_then(Value::as_object)
        && !states.is_empty()
    {
        let mut table = Table::new(&["STATE", "LOGS", "ENTRIES"]);
        for (state, n) in states {
            table.row(vec![
                state.clone(),
                output::cell(&n["logs"]),
                output::cell(&n["entries"]),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    // The per-peer sync state, as `spoc peers` shows it.
    if let Some(peers) = s.get("peers").and_then(Value::as_array)
        && !peers.is_empty()
    {
        text.push('\n');
        text.push_str(&peers_table(peers).render());
    }
    text
}

/// The clock line of the status: how far this node's clock is from its peers'.
fn clock_text(clock: &Value) -> String {
    let Some(offset) = clock["offset_ms"].as_i64() else {
        return "not compared with any peer yet".into();
    };
    let seconds = offset.unsigned_abs() / 1000;
    let side = if offset >= 0 { "ahead of" } else { "behind" };
    if clock["skewed"].as_bool() == Some(true) {
        let tolerance = clock["tolerance_ms"].as_u64().unwrap_or(0) / 1000;
        format!(
            "OFF: {seconds} s {side} its peers' (tolerance {tolerance} s): entries this node signs wait on theirs; fix the clock"
        )
    } else {
        format!("ok ({seconds} s {side} its peers')")
    }
}

/// `spoc log`.
pub fn log(ctx: &Ctx, args: &LogArgs) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    let mut query = Vec::new();
    if let Some(a) = &args.author {
        query.push(("author", a.to_uppercase()));
    }
    if let Some(d) = &args.doc {
        query.push(("doc", d.clone()));
    }
    if let Some(n) = args.limit {
        query.push(("limit", n.to_string()));
    }
    if let Some(before) = args.before {
        query.push(("before", before.to_string()));
    }
    let page: Value = {
        let _spinner = Spinner::start(ctx.chatty(), "reading the log");
        client.get_json("/v1/log", &query)?
    };
    let entries: Vec<Value> = page["entries"].as_array().cloned().unwrap_or_default();
    if let Some(next) = page["next"].as_u64()
        && !ctx.quiet
    {
        ctx.note(&format!("older: add --before {next}"))?;
    }
    if ctx.json {
        ctx.print_json(&Value::Array(entries))?;
    } else if entries.is_empty() {
        if !ctx.quiet {
            ctx.line("no entries")?;
        }
    } else {
        ctx.print(&log_table(&entries, args.operators).render())?;
    }
    Ok(())
}

/// The table of audit trail entries; with `operators`, the operator of each local write
/// ("-" for a peer's entry).
pub fn log_table(entries: &[Value], operators: bool) -> Table {
    let mut headers = vec!["HASH", "AUTHOR", "SEQ", "DOC", "TIME"];
    if operators {
        headers.push("OPERATOR");
    }
    headers.push("SUMMARY");
    let mut table = Table::new(&headers);
    for e in entries {
        let mut row = vec![
            output::short(&field(e, "hash"), 12),
            field(e, "author"),
            field(e, "seq"),
            field(e, "doc"),
            field(e, "timestamp"),
        ];
        if operators {
            row.push(field(e, "operator"));
        }
        row.push(field(e, "summary"));
        table.row(row);
    }
    table
}

/// `spoc operator ...`.
pub fn operator(ctx: &Ctx, cmd: OperatorCmd) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    match cmd {
        OperatorCmd::Add { name, role } => {
            let added: Value =
                client.post_json("/v1/operators", &json!({"name": name, "role": role}))?;
            if ctx.json {
                ctx.print_json(&added)?;
            } else {
                ctx.line(&field(&added, "token"))?;
                if ctx.chatty() {
                    ctx.note(&format!(
                        "operator {} ({}) added; the line above is its token, shown only now: \
                         hand it over, and keep it in a 0600 file for --token-file or in SPOC_TOKEN",
                        field(&added, "name"),
                        field(&added, "role")
                    ))?;
                }
            }
        }
        OperatorCmd::List => {
            let all: Vec<Value> = client.get_json("/v1/operators", &[])?;
            if ctx.json {
                ctx.print_json(&Value::Array(all))?;
            } else {
                let mut table = Table::new(&["NAME", "ROLE", "ADDED", "REVOKED"]);
                for op in &all {
                    let at = |k: &str| {
                        op[k]
                            .as_u64()
                            .and_then(|ms| output::format_ms(i64::try_from(ms).ok()?))
                            .unwrap_or_else(|| "-".to_owned())
                    };
                    table.row(vec![
                        field(op, "name"),
                        field(op, "role"),
                        at("added_ms"),
                        at("revoked_ms"),
                    ]);
                }
                ctx.print(&table.render())?;
            }
        }
        OperatorCmd::Revoke { name } => {
            let revoked: Value =
                client.post_json("/v1/operators/revoke", &json!({"name": name}))?;
            if ctx.json {
                ctx.print_json(&revoked)?;
            } else if !ctx.quiet {
                ctx.line(&format!("operator {} revoked", field(&revoked, "name")))?;
            }
        }
    }
    Ok(())
}

/// `spoc verify`.
pub fn verify(ctx: &Ctx) -> Result<()> {
    let client = ctx.client(VERIFY_TIMEOUT)?;
    let answer: Value = {
        let _spinner = Spinner::start(ctx.chatty(), "verifying every entry from scratch");
        client.post_empty("/v1/verify")?
    };
    if ctx.json {
        ctx.print_json(&answer)?;
    }
    let line = verdict(&answer)?;
    if ctx.chatty() {
        ctx.line(&line)?;
    }
    Ok(())
}

/// The line of a successful verification, or the error of a failed one.
pub fn verdict(answer: &Value) -> Result<String> {
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(format!(
            "ok: {} entries, {} documents verified",
            field(answer, "entries"),
            field(answer, "documents")
        ))
    } else {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the node gave no reason");
        Err(anyhow!("verify failed: {error}"))
    }
}

/// Writes what the node gave into a new file that only its owner can read. It never
/// follows a symbolic link, and replaces an existing file only with `force`.
fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("{shown} is a symbolic link: name the file itself")
        }
        Ok(meta) if !meta.is_file() => bail!("{shown} exists and is not a file"),
        Ok(_) if !force => bail!("{shown} exists: pass --force to replace it"),
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("cannot replace {shown}"))?,
        Err(_) => {}
    }
    // `create_new` fails on anything that appeared at the path since, a link included.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {shown}"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {shown}"))
}

/// `spoc report`.
pub fn report(ctx: &Ctx, args: &ReportArgs) -> Result<()> {
    let answer: Value = ctx
        .client(TIMEOUT)?
        .get_json("/v1/report", &[("term", args.term.clone())])?;
    let Some(markdown) = answer.get("markdown").and_then(Value::as_str) else {
        bail!("the node's report has no markdown");
    };
    match &args.out {
        Some(path) => {
            write_private(path, markdown.as_bytes(), args.force)?;
            if ctx.json {
                ctx.print_json(&answer)?;
            } else if !ctx.quiet {
                ctx.line(&format!(
                    "wrote {} bytes to {}",
                    markdown.len(),
                    path.display()
                ))?;
            }
        }
        None if ctx.json => ctx.print_json(&answer)?,
        None if markdown.ends_with('\n') => ctx.print(markdown)?,
        None => ctx.line(markdown)?,
    }
    Ok(())
}

/// `spoc export`.
pub fn export(ctx: &Ctx, args: &ExportArgs) -> Result<()> {
    let bytes = ctx
        .client(TIMEOUT)?
        .get_bytes("/v1/export", &[("id", args.doc.clone())])?;
    write_private(&args.out, &bytes, args.force)?;
    if ctx.json {
        ctx.print_json(&json!({
            "id": args.doc,
            "out": args.out.display().to_string(),
            "bytes": bytes.len(),
        }))?;
    } else if !ctx.quiet {
        ctx.line(&format!(
            "wrote {} bytes to {}",
            bytes.len(),
            args.out.display()
        ))?;
    }
    Ok(())
}

/// `spoc peers`.
pub fn peers(ctx: &Ctx) -> Result<()> {
    let peers: Vec<Value> = ctx.client(TIMEOUT)?.get_json("/v1/peers", &[])?;
    if ctx.json {
        ctx.print_json(&Value::Array(peers))?;
    } else if peers.is_empty() {
        if !ctx.quiet {
            ctx.line("no peers")?;
        }
    } else {
        ctx.print(&peers_table(&peers).render())?;
    }
    Ok(())
}

/// `spoc wait`: holds until the node has every entry, through the API's long poll.
pub fn wait(ctx: &Ctx, args: &crate::args::WaitArgs) -> Result<()> {
    let timeout = std::time::Duration::from_millis(args.timeout_ms.min(120_000));
    let client = ctx.client(timeout + std::time::Duration::from_secs(10))?;
    let answer: Value = client.get_json(
        "/v1/wait",
        &[
            ("entries", args.entries.join(",")),
            ("timeout_ms", timeout.as_millis().to_string()),
        ],
    )?;
    if ctx.json {
        ctx.print_json(&answer)?;
    }
    if answer["present"] != Value::Bool(true) {
        anyhow::bail!(
            "{} of {} entries missing after {} ms",
            answer["missing"].as_array().map_or(0, Vec::len),
            args.entries.len(),
            timeout.as_millis()
        );
    }
    if ctx.chatty() {
        ctx.line(&format!("all {} entries present", args.entries.len()))?;
    }
    Ok(())
}

/// A peer id short enough for a table: its start and its end.
pub fn short_peer(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 16 {
        return id.to_owned();
    }
    let start: String = chars[..4].iter().collect();
    let end: String = chars[chars.len() - 8..].iter().collect();
    format!("{start}…{end}")
}

/// A time that the API may give as RFC 3339 text or as milliseconds.
fn time_cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(output::format_ms)
            .unwrap_or_else(|| n.to_string()),
        _ => field(v, key),
    }
}

/// The table of `/v1/peers`.
pub fn peers_table(peers: &[Value]) -> Table {
    let mut table = Table::new(&[
        "PEER",
        "STATE",
        "ADDRESS",
        "CONNECTED SINCE",
        "LAST SYNC",
        "BEHIND",
    ]);
    for p in peers {
        table.row(vec![
            short_peer(&field(p, "peer_id")),
            field(p, "state"),
            field(p, "address"),
            time_cell(p, "connected_since"),
            time_cell(p, "last_sync"),
            field(p, "entries_behind"),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_written_file_is_private_new_and_never_a_link() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("report.md");
        super::write_private(&out, b"first", false)?;
        let mode = std::fs::metadata(&out)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let refused = super::write_private(&out, b"second", false).unwrap_err();
        assert!(
            refused
                .to_string()
                .ends_with("exists: pass --force to replace it")
        );
        assert_eq!(std::fs::read(&out)?, b"first");
        super::write_private(&out, b"second", true)?;
        assert_eq!(std::fs::read(&out)?, b"second");
        // A link, even with --force, is refused, and what it points at is left alone.
        let link = dir.path().join("link.md");
        std::os::unix::fs::symlink(&out, &link)?;
        let refused = super::write_private(&link, b"third", true).unwrap_err();
        assert!(
            refused.to_string().contains("is a symbolic link"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&out)?, b"second");
        Ok(())
    }

    use super::*;

    #[test]
    fn status_is_summarised() {
        let s = json!({
            "state": "LT", "network": "testnet", "charter_hash": "0123456789abcdef0123", "charter_version": 2,
            "presidency": null, "incarnation": 123456, "peer_id": "12D3KooWabc",
            "states": {"IE": {"logs": 1, "entries": 4}, "LT": {"logs": 1, "entries": 2}},
            "entries": 6, "pending": 0,
            "equivocations": [{"state": "EL", "incarnation": 7, "seq": 3}],
            "rejected": {"bad_signature": 1},
            "documents": 5, "store_bytes": 1581056, "peers": [], "waiting_for_time": 1,
            "clock": {"offset_ms": 3_600_250, "tolerance_ms": 300_000, "skewed": true}
        });
        let text = status_text(&s);
        for line in [
            "state          LT\n",
            "presidency     none (outside the calendar)\n",
            "charter        version 2 (0123456789ab)\n",
            "entries        6 (0 pending, 1 dated ahead of this clock)\n",
            "clock          OFF: 3600 s ahead of its peers' (tolerance 300 s): entries this node signs wait on theirs; fix the clock\n",
            "store          1.5 MiB\n",
            "rejected       1 bad_signature\n",
            "equivocations  EL/7 at seq 3\n",
            "STATE  LOGS  ENTRIES\nIE     1     4\nLT     1     2\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn verify_answers() {
        assert_eq!(
            verdict(&json!({"ok": true, "entries": 120, "documents": 14})).unwrap(),
            "ok: 120 entries, 14 documents verified"
        );
        let err =
            verdict(&json!({"ok": false, "entries": 120, "error": "entry ab12 of LT/7: rule: x"}))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "verify failed: entry ab12 of LT/7: rule: x"
        );
    }

    #[test]
    fn log_and_peer_tables() {
        let text = log_table(
            &[json!({
                "hash": "00112233445566778899aabbccddeeff", "author": "LT", "incarnation": 7,
                "seq": 3, "doc": "obstacles/LT/1", "timestamp": "2026-10-01T10:00:00Z",
                "summary": "put status=resolved"
            })],
            false,
        )
        .render();
        assert_eq!(
            text.lines().nth(1),
            Some(
                "001122334455  LT      3    obstacles/LT/1  2026-10-01T10:00:00Z  put status=resolved"
            )
        );
        let text = log_table(
            &[json!({
                "hash": "00112233445566778899aabbccddeeff", "author": "LT", "seq": 3,
                "doc": "obstacles/LT/1", "timestamp": "2026-10-01T10:00:00Z", "operator": "alice",
                "summary": "put status=resolved"
            })],
            true,
        )
        .render();
        assert!(
            text.lines().next().is_some_and(|h| h.contains("OPERATOR")),
            "{text}"
        );
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains("  alice  ")),
            "{text}"
        );
        assert_eq!(short_peer("12D3KooWAbCdEfGhIjKlMn"), "12D3…GhIjKlMn");
        assert_eq!(short_peer("short"), "short");
        let text = peers_table(&[json!({
            "peer_id": "12D3KooWAbCdEfGhIjKlMn", "state": "IE", "address": "/ip4/127.0.0.1/tcp/1",
            "connected_since": 0, "last_sync": null, "entries_behind": 0
        })])
        .render();
        assert!(
            text.contains(
                "12D3…GhIjKlMn  IE     /ip4/127.0.0.1/tcp/1  1970-01-01T00:00:00Z  -          0"
            ),
            "{text}"
        );
    }
}
