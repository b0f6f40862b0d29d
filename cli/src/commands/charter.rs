//! The charter as the network amends it: the version in force on the node, proposals of
//! the next one, and the member states' signatures. The node's answers are the typed
//! `spoc_node::docs::amendments` records.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_node::docs::amendments::{ProposalStatus, Status, Version};
use spoc_node::docs::command::Command;

use super::Ctx;
use super::local::{charter_json, load_charter};
use crate::args::KeyCmd;
use crate::client::{Client, TIMEOUT};
use crate::output::{self, Table};

fn in_force(client: &Client, version: Option<u32>) -> Result<(Version, Charter)> {
    let query: Vec<(&str, String)> = version
        .map(|v| ("version", v.to_string()))
        .into_iter()
        .collect();
    let record: Version = client.get_json("/v1/charter", &query)?;
    let charter = Charter::parse(&record.toml)
        .map_err(|e| anyhow!("the node's charter does not read back: {e}"))?;
    Ok((record, charter))
}

/// `spoc charter show [--version V]`: the node's charter as TOML, or as JSON with its
/// version.
pub fn show(ctx: &Ctx, version: Option<u32>) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    let (record, charter) = in_force(&client, version)?;
    if ctx.json {
        let mut v = charter_json(&charter);
        v["version"] = json!(record.version);
        v["genesis"] = json!(record.genesis);
        v["required_signatures"] = json!(record.required_signatures);
        ctx.print_json(&v)?;
    } else {
        if ctx.chatty() {
            ctx.note(&format!(
                "# version {} of the charter ({}); edit it and `spoc charter propose --file`",
                record.version,
                output::short(&record.hash, 12)
            ))?;
        }
        ctx.print(&record.toml)?;
    }
    Ok(())
}

/// What a proposal changes, line by line: `- ` for a line it removes, `+ ` for one it
/// adds, in the order of the texts.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // The longest common subsequence of lines, by dynamic programming from the ends.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

/// The longest charter a proposal may hold: what fits in one entry.
const MAX_CHARTER_BYTES: u64 = 48 * 1024;

/// `spoc charter propose --file CHARTER.toml`.
pub fn propose(ctx: &Ctx, file: &Path) -> Result<()> {
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    if size > MAX_CHARTER_BYTES {
        bail!(
            "{} is {size} bytes, over the {MAX_CHARTER_BYTES} a proposal holds",
            file.display()
        );
    }
    let mut proposed = load_charter(file)?;
    let client = ctx.client(TIMEOUT)?;
    let (record, current) = in_force(&client, None)?;
    retire_leaving_keys(&client, &current, &mut proposed)?;
    propose_charter(
        ctx,
        &client,
        &record,
        &proposed,
        &file.display().to_string(),
    )
}

/// A key that leaves the charter (its state removed, or given another key) would still
/// sign under the versions before: the proposal revokes it after everything the node
/// holds of it, so that it signs nothing more once the amendment is in force.
fn retire_leaving_keys(client: &Client, current: &Charter, proposed: &mut Charter) -> Result<()> {
    for p in &current.participants {
        let Some(key) = p.key else { continue };
        if proposed.participant_by_key(&key).is_some()
            || proposed.revoked.iter().any(|r| r.key == key)
        {
            continue;
        }
        let revocation: Value =
            client.get_json("/v1/charter/revocation", &[("state", p.code.clone())])?;
        let keep = revocation["keep"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| anyhow!("the node's points: {e}"))?;
        proposed
            .revoked
            .push(spoc_node::charter::Revoked { key, keep });
    }
    *proposed = Charter::parse(&proposed.to_toml())
        .map_err(|e| anyhow!("the proposal makes no valid charter: {e}"))?;
    Ok(())
}

/// Proposes `proposed` as the next version after `record`, printing what it changes.
fn propose_charter(
    ctx: &Ctx,
    client: &Client,
    record: &Version,
    proposed: &Charter,
    what: &str,
) -> Result<()> {
    // The canonical text: what the file says, whatever its layout and comments.
    let text = proposed.to_toml();
    let changes = diff(&record.toml, &text);
    if changes.is_empty() {
        bail!(
            "{what} is the charter in force (version {})",
            record.version
        );
    }
    let answer: Value = client.post_json("/v1/commands", &Command::AmendmentPropose { text })?;
    let id = answer
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the node's answer names no id: {answer}"))?
        .to_owned();
    if ctx.json {
        ctx.print_json(&json!({
            "id": id,
            "entry": answer.get("entry"),
            "amends": record.version,
            "version": record.version + 1,
            "diff": changes,
        }))?;
    } else {
        ctx.print(&format!("{}\n", changes.join("\n")))?;
        ctx.line(&format!(
            "proposed {id}: version {} once {} member states sign it",
            record.version + 1,
            record.required_signatures
        ))?;
    }
    Ok(())
}

/// The pending proposal `what` names: its id, or the version it would make.
fn pick<'a>(status: &'a Status, what: &str) -> Result<&'a ProposalStatus> {
    if let Ok(version) = what.parse::<u32>() {
        if version != status.version + 1 {
            bail!(
                "version {} is in force: a proposal now makes version {}",
                status.version,
                status.version + 1
            );
        }
        let pending: Vec<&ProposalStatus> = status
            .proposals
            .iter()
            .filter(|p| p.state == "pending")
            .collect();
        return match pending.as_slice() {
            [one] => Ok(one),
            [] => bail!("no proposal would make version {version}"),
            many => bail!(
                "{} proposals would make version {version}: sign one by its id ({})",
                many.len(),
                many.iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    status
        .proposals
        .iter()
        .find(|p| p.id == what)
        .ok_or_else(|| anyhow!("the node holds no amendment {what}"))
}

/// `spoc charter sign ID|VERSION`.
pub fn sign(ctx: &Ctx, what: &str) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    let status: Status = client.get_json("/v1/charter/amendments", &[])?;
    let id = pick(&status, what)?.id.clone();
    let answer: Value = client.post_json(
        "/v1/commands",
        &Command::AmendmentSign {
            amendment: id.clone(),
        },
    )?;
    let after: Status = client.get_json("/v1/charter/amendments", &[])?;
    let signed = after.proposals.iter().find(|p| p.id == id);
    if ctx.json {
        ctx.print_json(&json!({
            "id": id,
            "entry": answer.get("entry"),
            "counted": signed.map(|p| p.counted),
            "required": signed.map(|p| p.required),
            "version": after.version,
        }))?;
    } else {
        let tally = signed.map_or_else(String::new, |p| {
            format!(": {} of {} signatures", p.counted, p.required)
        });
        ctx.line(&format!(
            "signed {id}{tally}; version {} is in force",
            after.version
        ))?;
    }
    Ok(())
}

/// `spoc charter status`.
pub fn status(ctx: &Ctx) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    let status: Status = client.get_json("/v1/charter/amendments", &[])?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&status)?)?;
        return Ok(());
    }
    let mut text = output::pairs(&[
        (
            "in force",
            format!(
                "version {} ({})",
                status.version,
                output::short(&status.hash, 12)
            ),
        ),
        (
            "amending",
            format!(
                "takes {} member states' signatures",
                status.required_signatures
            ),
        ),
    ]);
    if status.proposals.is_empty() {
        text.push_str("no proposals\n");
    } else {
        let mut table = Table::new(&["ID", "BY", "AMENDS", "SIGNED", "STATE", "SIGNATURES"]);
        for p in &status.proposals {
            table.row(vec![
                p.id.clone(),
                p.by.clone(),
                p.amends.to_string(),
                format!("{}/{}", p.counted, p.required),
                p.state.clone(),
                p.signatures.iter().cloned().collect::<Vec<_>>().join(","),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    ctx.print(&text)?;
    Ok(())
}

/// `spoc key rotate|revoke`.
pub fn key(ctx: &Ctx, cmd: KeyCmd) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    match cmd {
        KeyCmd::Rotate => {
            let rotated: Value = client.post_empty("/v1/key/rotate")?;
            if ctx.json {
                ctx.print_json(&rotated)?;
            } else {
                ctx.line(rotated["key"].as_str().unwrap_or_default())?;
            }
            Ok(())
        }
        KeyCmd::RevokeNode { peer } => {
            let answer: Value = client.post_json("/v1/commands", &Command::NodeRevoke { peer })?;
            if ctx.json {
                ctx.print_json(&answer)?;
            } else {
                ctx.line(&format!(
                    "revoked {}",
                    answer["id"].as_str().unwrap_or_default()
                ))?;
            }
            Ok(())
        }
        KeyCmd::Revoke { state, from, key } => {
            let new: spoc_node::identity::PublicKey = key
                .parse()
                .map_err(|_| anyhow!("{key:?} is not a public key (ed25519:...)"))?;
            let revocation: Value =
                client.get_json("/v1/charter/revocation", &[("from", from.clone())])?;
            let state = state.to_uppercase();
            if revocation["state"] != state.as_str() {
                bail!(
                    "entry {from} is signed by {}, not {state}",
                    revocation["state"].as_str().unwrap_or("an unknown key")
                );
            }
            let old: spoc_node::identity::PublicKey = revocation["key"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|_| anyhow!("the node named no key: {revocation}"))?;
            let keep = revocation["keep"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e: String| anyhow!("the node's points: {e}"))?;
            let (record, mut charter) = in_force(&client, None)?;
            let participant = charter
                .participants
                .iter_mut()
                .find(|p| p.code == state)
                .ok_or_else(|| anyhow!("{state} is not a participant of the charter in force"))?;
            participant.key = Some(new);
            charter
                .revoked
                .push(spoc_node::charter::Revoked { key: old, keep });
            let charter = Charter::parse(&charter.to_toml())
                .map_err(|e| anyhow!("the revocation makes no valid charter: {e}"))?;
            propose_charter(ctx, &client, &record, &charter, "the revocation")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_names_the_lines_removed_and_added_in_order() {
        let old = "a\nb\nc\nd\n";
        let new = "a\nc\nx\nd\ny\n";
        assert_eq!(diff(old, new), vec!["- b", "+ x", "+ y"]);
        // A changed line reads as its removal, then its replacement.
        assert_eq!(diff("a\nb\n", "a\nc\n"), vec!["- b", "+ c"]);
        assert!(diff(old, old).is_empty());
        assert_eq!(diff("", "z\n"), vec!["+ z"]);
    }
}
