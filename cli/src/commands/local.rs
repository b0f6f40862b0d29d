//! Commands that need no node: keys, charters, testnet layouts and shell completions.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use clap::CommandFactory;
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_node::identity::SecretKey;

use super::Ctx;
use crate::args::{CharterCmd, Cli, KeygenArgs, TestnetArgs};
use crate::output::{self, Table};

/// `spoc keygen`.
pub fn keygen(ctx: &Ctx, args: &KeygenArgs) -> Result<()> {
    let passphrase = match &args.passphrase_file {
        Some(path) => Some(read_passphrase(path)?),
        None => None,
    };
    if args.out.exists() {
        bail!(
            "{} already exists: spoc never overwrites a key",
            args.out.display()
        );
    }
    let key = SecretKey::generate(&mut rand::rng());
    key.save(&args.out, passphrase.as_deref())?;
    let public = key.public().to_string();
    if ctx.json {
        ctx.print_json(&json!({ "public_key": public }))?;
    } else {
        ctx.line(&public)?;
    }
    Ok(())
}

/// A passphrase file's content, without its final line break.
fn read_passphrase(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    let passphrase = text.trim_end_matches(['\n', '\r']).to_owned();
    if passphrase.is_empty() {
        bail!("the passphrase file {} is empty", path.display());
    }
    Ok(passphrase)
}

/// `spoc charter ...`.
pub fn charter(ctx: &Ctx, cmd: CharterCmd) -> Result<()> {
    match cmd {
        CharterCmd::New { out } => charter_new(ctx, out.as_deref()),
        CharterCmd::Show {
            file: None,
            version,
        } => super::charter::show(ctx, version),
        CharterCmd::Propose { file } => super::charter::propose(ctx, &file),
        CharterCmd::Sign { amendment } => super::charter::sign(ctx, &amendment),
        CharterCmd::Status => super::charter::status(ctx),
        CharterCmd::Show {
            file: Some(path), ..
        } => {
            let charter = load_charter(&path)?;
            if ctx.json {
                ctx.print_json(&charter_json(&charter))?;
            } else {
                ctx.print(&charter_text(&charter, today()))?;
            }
            Ok(())
        }
        CharterCmd::Verify { file } => {
            let charter = load_charter(&file);
            if ctx.json {
                ctx.print_json(&match &charter {
                    Ok(c) => json!({"ok": true, "hash": c.hash_hex(), "network": c.network}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                })?;
            }
            let charter = charter?;
            if !ctx.json {
                ctx.line(&format!("ok {}", charter.hash_hex()))?;
            }
            Ok(())
        }
    }
}

fn charter_new(ctx: &Ctx, out: Option<&Path>) -> Result<()> {
    let text = Charter::template();
    let Some(path) = out else {
        if ctx.json {
            ctx.print_json(&json!({ "charter": text }))?;
        } else {
            ctx.print(&text)?;
        }
        return Ok(());
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if ctx.json {
        ctx.print_json(&json!({ "out": path.display().to_string() }))?;
    } else if !ctx.quiet {
        ctx.line(&format!("wrote {}", path.display()))?;
    }
    Ok(())
}

/// Reads and validates a charter; errors name the file.
pub fn load_charter(path: &Path) -> Result<Charter> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Charter::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// A charter as JSON: dates as YYYY-MM-DD, keys in their text form.
pub fn charter_json(c: &Charter) -> Value {
    json!({
        "network": c.network,
        "rules_version": c.rules_version,
        "hash": c.hash_hex(),
        "training_core_group": c.training_core_group,
        "participants": c.participants,
        "presidency": c.presidency.iter().map(|t| json!({
            "state": t.state,
            "from": t.from.to_string(),
            "to": t.to.to_string(),
            "term": t.label(),
        })).collect::<Vec<_>>(),
    })
}

/// A charter for people: its identity, its participants and its Presidency calendar.
pub fn charter_text(c: &Charter, today: time::Date) -> String {
    let current = c.presidency_at(today).map_or_else(
        || "none today".into(),
        |t| format!("{} ({} to {})", t.state, t.from, t.to),
    );
    let core = if c.training_core_group.is_empty() {
        "-".into()
    } else {
        c.training_core_group.join(", ")
    };
    let mut text = output::pairs(&[
        ("network", c.network.clone()),
        ("rules version", c.rules_version.to_string()),
        ("hash", c.hash_hex()),
        ("presidency", current),
        ("core group", core),
    ]);
    let mut participants = Table::new(&["CODE", "NAME", "KIND", "KEY", "ADDRESSES"]);
    for p in &c.participants {
        participants.row(vec![
            p.code.clone(),
            p.name.clone(),
            p.kind.to_string(),
            p.key.map_or_else(|| "none".into(), |k| k.short()),
            if p.addresses.is_empty() {
                "-".into()
            } else {
                p.addresses.join(", ")
            },
        ]);
    }
    text.push('\n');
    text.push_str(&participants.render());
    let mut calendar = Table::new(&["TERM", "PRESIDENCY", "FROM", "TO", ""]);
    for t in &c.presidency {
        calendar.row(vec![
            t.label(),
            t.state.clone(),
            t.from.to_string(),
            t.to.to_string(),
            if t.contains(today) { "<- today" } else { "" }.into(),
        ]);
    }
    if !calendar.is_empty() {
        text.push('\n');
        text.push_str(&calendar.render());
    }
    text
}

/// `spoc testnet`.
pub fn testnet(ctx: &Ctx, args: &TestnetArgs) -> Result<()> {
    let nodes = spoc_node::testnet::generate(&args.out, args.nodes, today(), &mut rand::rng())?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&nodes)?)?;
        return Ok(());
    }
    let mut table = Table::new(&["STATE", "DATA DIR", "API", "LISTEN"]);
    for n in &nodes {
        table.row(vec![
            n.state.clone(),
            n.data_dir.display().to_string(),
            n.api.clone(),
            n.listen.clone(),
        ]);
    }
    ctx.print(&table.render())?;
    if let (Some(first), false) = (nodes.first(), ctx.quiet) {
        ctx.line(&format!(
            "\nstart each node with: spoc-node --data-dir {} (one per data directory)",
            first.data_dir.display()
        ))?;
    }
    Ok(())
}

/// `spoc completions`.
pub fn completions(ctx: &Ctx, shell: clap_complete::Shell) -> Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "spoc", &mut script);
    ctx.print(&String::from_utf8_lossy(&script))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn the_template_charter_shows_its_calendar() {
        let c = Charter::parse(&Charter::template()).unwrap();
        let text = charter_text(&c, date!(2026 - 12 - 01));
        assert!(
            text.contains("presidency     IE (2026-07-01 to 2026-12-31)\n"),
            "{text}"
        );
        assert!(text.contains("\nCODE  "));
        assert!(
            text.contains("2026-H2  IE          2026-07-01  2026-12-31  <- today\n"),
            "{text}"
        );
        let v = charter_json(&c);
        assert_eq!(v["hash"], c.hash_hex());
        assert_eq!(
            v["participants"].as_array().unwrap().len(),
            c.participants.len()
        );
        assert!(v["presidency"][0]["from"].as_str().unwrap().len() == 10);
    }
}
