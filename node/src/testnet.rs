//! Ready-made local networks: the states, keys, charter and data directories of a testnet.
//!
//! `spoc testnet` and the test harness use this to lay out one data directory per state,
//! each with its national key (0600), its node key, a copy of the shared charter and a
//! `node.toml` on free loopback ports. The first state is today's Presidency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::RngCore;
use time::Date;

use crate::charter::{self, Charter, Kind};
use crate::identity::SecretKey;

/// A testnet that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a testnet has 1 to 31 states, not {0}")]
    Size(usize),
    #[error("{path} already exists and is not empty")]
    NotEmpty { path: String },
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Charter(#[from] charter::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
}

/// The states of a testnet of `n`, in the order the reference calendar gives them from
/// `today`: the Presidency of today first, then the next Presidencies, then the other
/// member states, then the Schengen associated states.
pub fn states(n: usize, today: Date) -> Result<Vec<String>, Error> {
    if !(1..=31).contains(&n) {
        return Err(Error::Size(n));
    }
    let reference = Charter::parse(&Charter::template())?;
    let mut order: Vec<String> = reference
        .presidency
        .iter()
        .filter(|t| t.to >= today)
        .map(|t| t.state.clone())
        .collect();
    for kind in [Kind::MemberState, Kind::SchengenAssociated] {
        for p in reference.participants.iter().filter(|p| p.kind == kind) {
            order.push(p.code.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    order.retain(|c| seen.insert(c.clone()));
    order.truncate(n);
    Ok(order)
}

/// An in-memory network for tests: a charter and every participant's national key.
pub fn fixture(
    codes: &[&str],
    core_group: &[&str],
    today: Date,
    rng: &mut dyn RngCore,
) -> Result<(Charter, BTreeMap<String, SecretKey>), Error> {
    let mut keys = BTreeMap::new();
    let mut states = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let key = SecretKey::generate(rng);
        states.push((
            code.to_string(),
            key.public(),
            vec![format!("/ip4/127.0.0.1/tcp/{}", 40000 + i)],
        ));
        keys.insert(code.to_string(), key);
    }
    let core: Vec<String> = core_group.iter().map(|c| c.to_string()).collect();
    let charter = Charter::for_testnet("testnet", &states, &core, today)?;
    Ok((charter, keys))
}

/// One node of a generated testnet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    pub state: String,
    pub data_dir: PathBuf,
    pub api: String,
    pub listen: String,
}

/// Picks a free loopback TCP port by binding port 0.
pub fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a testnet of `n` states under `out`: `out/charter.toml` and one data directory
/// per state, `out/<code in lower case>`.
pub fn generate(
    out: &Path,
    n: usize,
    today: Date,
    rng: &mut dyn RngCore,
) -> Result<Vec<Node>, Error> {
    let codes = states(n, today)?;
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(Error::NotEmpty {
            path: out.display().to_string(),
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut nodes = Vec::new();
    let mut states = Vec::new();
    let mut keys = Vec::new();
    for code in &codes {
        let key = SecretKey::generate(rng);
        let listen_port = free_port()?;
        let api_port = free_port()?;
        let listen = format!("/ip4/127.0.0.1/tcp/{listen_port}");
        states.push((code.clone(), key.public(), vec![listen.clone()]));
        nodes.push(Node {
            state: code.clone(),
            data_dir: out.join(code.to_lowercase()),
            api: format!("127.0.0.1:{api_port}"),
            listen,
        });
        keys.push(key);
    }
    // The first three member states form the training core group.
    let core: Vec<String> = codes.iter().take(3).cloned().collect();
    let charter = Charter::for_testnet("testnet", &states, &core, today)?;
    let text = charter.to_toml();
    let shared = out.join("charter.toml");
    std::fs::write(&shared, &text).map_err(io(&shared))?;
    for (node, key) in nodes.iter().zip(&keys) {
        let dir = &node.data_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::write(dir.join("charter.toml"), &text).map_err(io(dir))?;
        key.save(&dir.join("national.key"), None)?;
        SecretKey::generate(rng).save(&dir.join("node.key"), None)?;
        let settings = format!(
            "# spocnet node settings; SPOC_* environment variables override them.\n\
             state = \"{}\"\nlisten = [\"{}\"]\napi = \"{}\"\ncharter = \"charter.toml\"\nkey = \"national.key\"\n\
             node_key = \"node.key\"\nlog_level = \"info\"\nlog_format = \"text\"\nmdns = false\n",
            node.state, node.listen, node.api
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, settings).map_err(io(&path))?;
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn states_follow_the_calendar() {
        let s = states(5, date!(2026 - 12 - 01)).unwrap();
        assert_eq!(s, ["IE", "LT", "EL", "IT", "LV"]);
        assert_eq!(states(31, date!(2026 - 12 - 01)).unwrap().len(), 31);
        assert!(states(0, date!(2026 - 12 - 01)).is_err());
        assert!(states(32, date!(2026 - 12 - 01)).is_err());
    }

    #[test]
    fn generate_lays_out_data_dirs() {
        use rand::SeedableRng;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("net");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let nodes = generate(&out, 2, date!(2026 - 12 - 01), &mut rng).unwrap();
        assert_eq!(nodes[0].state, "IE");
        assert_eq!(nodes[1].data_dir, out.join("lt"));
        let charter =
            Charter::parse(&std::fs::read_to_string(out.join("lt/charter.toml")).unwrap()).unwrap();
        assert_eq!(
            charter.presidency_at(date!(2026 - 12 - 01)).unwrap().state,
            "IE"
        );
        let key = SecretKey::load(&out.join("lt/national.key"), None).unwrap();
        assert_eq!(charter.participant("LT").unwrap().key, Some(key.public()));
        assert!(generate(&out, 2, date!(2026 - 12 - 01), &mut rng).is_err());
    }
}
