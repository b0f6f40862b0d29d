//! Runs the built `spoc` binary for the commands that need no node, and for a work command
//! whose node is not running.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `spoc` with `args`, with no settings from the environment.
fn spoc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spoc"))
        .args(args)
        .env_remove("SPOC_DATA_DIR")
        .env_remove("SPOC_API")
        .output()
        .expect("spoc runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts that a run failed with `code` and exactly one `spoc: ` line on stderr; returns it.
fn failed(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("spoc: "), "{err}");
    err.trim_end().to_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn keygen_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("national.key");
    let o = spoc(&["keygen", "--out", path(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let public = stdout(&o);
    assert_eq!(public.lines().count(), 1);
    assert!(
        public.starts_with("ed25519:") && public.trim_end().len() == 8 + 64,
        "{public}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();

    let err = failed(&spoc(&["keygen", "--out", path(&key)]), 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "never overwrites");

    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let sealed = dir.path().join("sealed.key");
    let o = spoc(&[
        "keygen",
        "--out",
        path(&sealed),
        "--passphrase-file",
        path(&pass),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["public_key"].as_str().unwrap().starts_with("ed25519:"));
    assert!(!std::fs::read_to_string(&sealed).unwrap().contains("plain"));
}

#[test]
fn charter_new_then_verify() {
    let dir = tempfile::tempdir().unwrap();
    let charter = dir.path().join("charter.toml");
    let o = spoc(&["charter", "new", "--out", path(&charter)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = spoc(&["charter", "verify", path(&charter)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let hash = line.trim_end().strip_prefix("ok ").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));

    let err = failed(&spoc(&["charter", "new", "--out", path(&charter)]), 1);
    assert!(err.contains("cannot create"), "{err}");

    let o = spoc(&["charter", "new"]);
    assert!(stdout(&o).contains("rules_version = 3"));

    let o = spoc(&["charter", "show", path(&charter), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hash"], hash);
}

#[test]
fn a_broken_charter_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let charter = dir.path().join("broken.toml");
    let mut text = spoc_template();
    let line = text.lines().count() + 1;
    text.push_str("this is not toml\n");
    std::fs::write(&charter, text).unwrap();
    let err = failed(&spoc(&["charter", "verify", path(&charter)]), 1);
    assert!(err.contains(&format!("line {line}")), "{err}");
}

/// The template, as `spoc charter new` prints it.
fn spoc_template() -> String {
    let o = spoc(&["charter", "new"]);
    assert!(o.status.success());
    stdout(&o)
}

#[test]
fn testnet_lays_out_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let o = spoc(&["testnet", "--nodes", "3", "--out", path(&out), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let nodes: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        let data_dir = Path::new(n["data_dir"].as_str().unwrap());
        assert!(data_dir.join("node.toml").is_file(), "{data_dir:?}");
        assert!(n["api"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(
            n["listen"]
                .as_str()
                .unwrap()
                .starts_with("/ip4/127.0.0.1/tcp/")
        );
        assert!(n["state"].as_str().is_some());
    }

    // The node of the first data directory is not running.
    let first = nodes[0]["data_dir"].as_str().unwrap();
    let api = nodes[0]["api"].as_str().unwrap();
    let err = failed(&spoc(&["--data-dir", first, "obstacle", "list"]), 1);
    assert_eq!(
        err,
        format!("spoc: no node answers at {api} (is spoc-node running with --data-dir {first}?)")
    );
    let err = failed(
        &spoc(&[
            "obstacle",
            "endorse",
            "x",
            "--stance",
            "support",
            "--data-dir",
            first,
        ]),
        1,
    );
    assert!(err.starts_with("spoc: no node answers at "), "{err}");

    let err = failed(&spoc(&["testnet", "--nodes", "3", "--out", path(&out)]), 1);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let err = failed(&spoc(&["status"]), 2);
    assert!(err.contains("--data-dir"), "{err}");
    let err = failed(&spoc(&["obstacle", "endorse", "--stance", "maybe", "x"]), 2);
    assert!(err.contains("maybe"), "{err}");
    let o = spoc(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("meeting"));
    let o = spoc(&["completions", "bash"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("spoc"));
}
