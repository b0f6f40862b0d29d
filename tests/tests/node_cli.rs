//! One national node as a service, driven by the real `spoc` CLI: every kind of
//! contribution, the rule refusals, lists, a restart, verification, the report, the
//! export, and the start-up refusals.

use anyhow::Result;
use serde_json::Value;
use spoc_tests::{Proc, Testnet, refused_start, spoc};

fn id_of(out: spoc_tests::Output) -> Result<String> {
    Ok(out.ok()?.json()?["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no id"))?
        .to_owned())
}

fn list(dir: &std::path::Path, what: &str) -> Result<Value> {
    spoc(Some(dir), &[what, "list", "--json"])?.ok()?.json()
}

#[test]
fn a_non_presidency_node_contributes_refuses_restarts_and_verifies() -> Result<()> {
    let net = Testnet::new(2)?;
    // The second state is not the Presidency; only it runs.
    let lt = net.node("LT")?;
    assert_eq!(net.nodes[0].state, "IE");
    let dir = lt.data_dir.as_path();
    let mut node = Proc::start(lt)?;

    // One contribution of each kind.
    let obstacle = id_of(spoc(
        Some(dir),
        &[
            "--json",
            "obstacle",
            "report",
            "--title",
            "Replies to SIENA requests take weeks",
            "--type",
            "legal",
            "--description",
            "Art. 4 of the national act requires a court order.",
            "--instrument",
            "Directive (EU) 2023/977",
            "--states-concerned",
            "IE,EL",
            "--impact",
            "3",
        ],
    )?)?;
    assert!(obstacle.starts_with("obstacles/LT/"), "{obstacle}");
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "obstacle",
            "endorse",
            "--obstacle",
            &obstacle,
            "--stance",
            "support",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "obstacle",
            "comment",
            "--obstacle",
            &obstacle,
            "--text",
            "Seen in IE too.",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "obstacle",
            "status",
            "--obstacle",
            &obstacle,
            "--status",
            "withdrawn",
        ],
    )?)?;
    let practice = id_of(spoc(
        Some(dir),
        &[
            "--json",
            "practice",
            "share",
            "--title",
            "Single case-management system",
            "--problem",
            "Requests were lost between channels",
            "--practice",
            "One queue for all channels",
            "--contact",
            "spoc@police.example",
            "--tags",
            "channels,siena",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "practice",
            "endorse",
            "--practice",
            &practice,
            "--stance",
            "support",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "practice",
            "comment",
            "--practice",
            &practice,
            "--text",
            "Works well.",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "factsheet",
            "set",
            "--field",
            "composition=Police, customs, border guard",
            "--field",
            "availability_24_7=yes",
        ],
    )?)?;
    let expert = id_of(spoc(
        Some(dir),
        &[
            "--json",
            "training",
            "nominate",
            "--title",
            "SPOC trainer (senior)",
            "--expertise",
            "SIENA, PNR",
            "--languages",
            "en,lt",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "training",
            "assess",
            "--item",
            &expert,
            "--verdict",
            "assessed",
        ],
    )?)?;
    id_of(spoc(
        Some(dir),
        &[
            "--json",
            "training",
            "opportunity",
            "--title",
            "CEPOL SPOC course",
            "--date",
            "2027-03-01",
            "--description",
            "Residential course",
        ],
    )?)?;

    let status = spoc(Some(dir), &["status", "--json"])?.ok()?.json()?;
    let entries = status["entries"].as_u64().unwrap_or(0);
    assert_eq!(entries, 11, "{status}");
    assert_eq!(status["state"], "LT");
    assert_eq!(status["presidency"], "IE");
    for key in [
        "states",
        "digest",
        "entries",
        "pending",
        "equivocations",
        "rejected",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }

    // Refusals: one line, non-zero, nothing stored.
    let refusals: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "meeting",
                "convene",
                "--title",
                "Heads of SPOC",
                "--date",
                "2026-12-10",
                "--venue",
                "Vilnius",
            ],
            "only the Presidency (IE) may convene a meeting",
        ),
        (
            vec![
                "obstacle",
                "status",
                "--obstacle",
                &obstacle,
                "--status",
                "resolved",
            ],
            "only the Presidency (IE)",
        ),
        (
            vec![
                "obstacle",
                "report",
                "--title",
                "No description",
                "--type",
                "legal",
                "--description",
                "",
            ],
            "missing description",
        ),
        (
            vec![
                "obstacle",
                "endorse",
                "--obstacle",
                "obstacles/LT/01KBZZZZZZZZZZZZZZZZZZZZZZ",
                "--stance",
                "support",
            ],
            "no obstacle obstacles/LT/01KBZZZZZZZZZZZZZZZZZZZZZZ",
        ),
    ];
    for (args, expected) in &refusals {
        let out = spoc(Some(dir), args)?;
        assert_ne!(out.status, 0, "{args:?} was accepted");
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with("spoc: ") && line.contains(expected),
            "{args:?}: {line}"
        );
    }
    let token_path = dir.join("api.token");
    let token = std::fs::read_to_string(&token_path)?;
    std::fs::write(&token_path, "0".repeat(64))?;
    let out = spoc(Some(dir), &["status"])?;
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("refused the API token"),
        "{}",
        out.stderr
    );
    std::fs::write(&token_path, token)?;
    let after = spoc(Some(dir), &["status", "--json"])?.ok()?.json()?;
    assert_eq!(
        after["entries"].as_u64(),
        Some(entries),
        "a refusal stored something"
    );

    // Lists, with the documented fields.
    let obstacles = list(dir, "obstacle")?;
    let o = &obstacles[0];
    assert_eq!(o["id"], obstacle.as_str());
    assert_eq!(o["reporter"], "LT");
    assert_eq!(o["type"], "legal");
    assert_eq!(o["status"], "withdrawn");
    assert_eq!(o["endorsements"][0]["state"], "LT");
    let practices = list(dir, "practice")?;
    assert_eq!(practices[0]["author"], "LT");
    assert_eq!(practices[0]["title"], "Single case-management system");
    assert_eq!(list(dir, "meeting")?.as_array().map(Vec::len), Some(0));
    let log = spoc(Some(dir), &["log", "--json"])?.ok()?.json()?;
    assert_eq!(log.as_array().map(Vec::len), Some(11));
    for key in ["hash", "author", "seq", "doc", "timestamp", "summary"] {
        assert!(log[0].get(key).is_some(), "log lacks {key}");
    }

    // The export is a standard Automerge file.
    let export = net.dir.path().join("obstacle.automerge");
    spoc(
        Some(dir),
        &[
            "export",
            "--doc",
            &obstacle,
            "--out",
            export.to_str().unwrap_or_default(),
        ],
    )?
    .ok()?;
    let doc = automerge::Automerge::load(&std::fs::read(&export)?)?;
    assert!(!doc.get_heads().is_empty());

    let report = spoc(Some(dir), &["report", "--term", "2026-H2"])?.ok()?;
    assert!(
        report
            .stdout
            .contains("# European network of Heads of SPOC"),
        "{}",
        report.stdout
    );

    // A clean restart keeps everything.
    assert_eq!(node.terminate()?, 0, "SIGTERM must shut down cleanly");
    let before = (list(dir, "obstacle").err(), obstacles.clone());
    assert!(before.0.is_some(), "the node still answers after SIGTERM");
    let _node = Proc::start(lt)?;
    assert_eq!(list(dir, "obstacle")?, obstacles);
    assert_eq!(list(dir, "practice")?, practices);
    let verify = spoc(Some(dir), &["verify"])?.ok()?;
    assert!(verify.stdout.contains("ok"), "{}", verify.stdout);

    // A second process on the same data directory is refused.
    let line = refused_start(dir, &[])?;
    assert!(line.contains("in use by another process"), "{line}");
    Ok(())
}

#[test]
fn the_node_refuses_to_start_with_one_clear_line() -> Result<()> {
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let ie = net.node("IE")?;
    let dir = lt.data_dir.as_path();

    let line = refused_start(dir, &[("SPOC_API", "10.0.0.1:80")])?;
    assert!(line.contains("bad setting api"), "{line}");

    let ie_key = ie.data_dir.join("national.key");
    let line = refused_start(dir, &[("SPOC_KEY", ie_key.to_str().unwrap_or_default())])?;
    assert!(line.contains("not the charter's key for LT"), "{line}");

    let line = refused_start(dir, &[("SPOC_KEY", "/nonexistent/national.key")])?;
    assert!(
        line.contains("national key") && line.contains("/nonexistent/national.key"),
        "{line}"
    );

    std::fs::write(dir.join("node.toml"), "listen = 5\n")?;
    let line = refused_start(dir, &[])?;
    assert!(line.contains("node.toml line 1"), "{line}");
    Ok(())
}
