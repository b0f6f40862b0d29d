//! A node's settings: `DATA_DIR/node.toml`, overridden by `SPOC_*` environment variables.
//!
//! Paths in the file are relative to the data directory. The environment is passed in as a
//! function, so tests never touch the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The settings file inside a data directory.
pub const FILE: &str = "node.toml";
/// The API token file inside a data directory.
pub const TOKEN_FILE: &str = "api.token";
/// The API's Unix socket inside a data directory (0600).
pub const SOCKET_FILE: &str = "api.sock";
/// The store inside a data directory.
pub const STORE_FILE: &str = "store.redb";

/// A bad setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} line {line}: {message}")]
    At {
        path: String,
        line: usize,
        message: String,
    },
    #[error("bad setting {name}: {message}")]
    Value { name: String, message: String },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    state: Option<String>,
    listen: Option<Vec<String>>,
    api: Option<String>,
    charter: Option<PathBuf>,
    key: Option<PathBuf>,
    node_key: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<String>,
    mdns: Option<bool>,
    key_passphrase_file: Option<PathBuf>,
    cached_documents: Option<usize>,
    store_cache_mib: Option<usize>,
}

/// Documents a node keeps in memory, unless `cached_documents` says otherwise.
pub const CACHED_DOCUMENTS: usize = 1024;

/// MiB of the store file's pages a node keeps in memory, unless `store_cache_mib` says
/// otherwise.
pub const STORE_CACHE_MIB: usize = crate::store::CACHE_BYTES >> 20;

/// The settings of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The state this node serves; its national key must be the charter's key for it.
    pub state: Option<String>,
    pub listen: Vec<String>,
    pub api: SocketAddr,
    pub charter: PathBuf,
    pub key: PathBuf,
    pub node_key: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub mdns: bool,
    /// A file holding the national key's passphrase; `SPOC_KEY_PASSPHRASE` may give it too.
    pub key_passphrase_file: Option<PathBuf>,
    /// `SPOC_FAILPOINT`, for crash tests only: the store commit step at which the node
    /// holds until it is killed.
    pub failpoint: Option<crate::store::Failpoint>,
    /// `SPOC_CLOCK_OFFSET_MS`, for tests of time only: milliseconds added to the system
    /// clock (negative: taken from it), as a node whose clock is wrong would read it.
    pub clock_offset_ms: i64,
    /// Documents kept in memory (`cached_documents`, `SPOC_CACHED_DOCUMENTS`); the rest
    /// are read from the store when they are needed.
    pub cached_documents: usize,
    /// MiB of the store file's pages kept in memory (`store_cache_mib`,
    /// `SPOC_STORE_CACHE_MIB`); the kernel caches the rest of the file.
    pub store_cache_mib: usize,
}

/// The largest clock offset a test may set: ten years.
const MAX_CLOCK_OFFSET_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

fn value(name: &str, message: impl Into<String>) -> Error {
    Error::Value {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// A whole-number setting from 1 to `max`: the environment's `names.1`, else the file's
/// value or the default, `given`.
fn count(
    env: &dyn Fn(&str) -> Option<String>,
    names: (&str, &str),
    given: usize,
    unit: &str,
    max: usize,
) -> Result<usize, Error> {
    let n = match env(names.1) {
        Some(v) => v
            .parse()
            .map_err(|_| value(names.1, format!("{v:?} is not a number of {unit}")))?,
        None => given,
    };
    if !(1..=max).contains(&n) {
        let message = if max == usize::MAX {
            "must be at least 1".to_owned()
        } else {
            format!("must be between 1 and {max} {unit}")
        };
        return Err(value(names.0, message));
    }
    Ok(n)
}

impl Settings {
    /// Reads `data_dir/node.toml` (which must exist) and applies the environment.
    pub fn load(data_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, Error> {
        let path = data_dir.join(FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(data_dir, &shown, &text, env)
    }

    /// Parses settings text; `shown` names the file in errors.
    pub fn parse(
        data_dir: &Path,
        shown: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, Error> {
        let raw: Raw = toml::from_str(text).map_err(|e| Error::At {
            path: shown.to_owned(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        let listen = match env("SPOC_LISTEN") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => raw
                .listen
                .unwrap_or_else(|| vec!["/ip4/0.0.0.0/tcp/4101".into()]),
        };
        for l in &listen {
            if !l.starts_with('/') {
                return Err(value("listen", format!("{l:?} is not a multiaddr")));
            }
        }
        let api_text = env("SPOC_API")
            .or(raw.api)
            .unwrap_or_else(|| "127.0.0.1:8101".into());
        let api: SocketAddr = api_text.parse().map_err(|_| {
            value(
                "api",
                format!("{api_text:?} is not an address (127.0.0.1:PORT)"),
            )
        })?;
        if !api.ip().is_loopback() {
            return Err(value("api", format!("{api} is not a loopback address")));
        }
        let path = |env_name: &str, raw: Option<PathBuf>, default: &str| -> PathBuf {
            let p = env(env_name)
                .map(PathBuf::from)
                .or(raw)
                .unwrap_or_else(|| default.into());
            if p.is_absolute() { p } else { data_dir.join(p) }
        };
        let charter = path("SPOC_CHARTER", raw.charter, "charter.toml");
        let key = path("SPOC_KEY", raw.key, "national.key");
        let node_key = path("SPOC_NODE_KEY", raw.node_key, "node.key");
        let key_passphrase_file = raw
            .key_passphrase_file
            .map(|p| if p.is_absolute() { p } else { data_dir.join(p) });
        let log_level = env("SPOC_LOG_LEVEL")
            .or(raw.log_level)
            .unwrap_or_else(|| "info".into());
        if !is_log_filter(&log_level) {
            return Err(value(
                "log_level",
                format!("{log_level:?} is not a log filter"),
            ));
        }
        let log_format = match env("SPOC_LOG_FORMAT")
            .or(raw.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(value(
                    "log_format",
                    format!("{other:?} is not text or json"),
                ));
            }
        };
        let mdns = match env("SPOC_MDNS") {
            Some(v) => match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(value(
                        "SPOC_MDNS",
                        format!("{other:?} is not true or false"),
                    ));
                }
            },
            None => raw.mdns.unwrap_or(false),
        };
        let cached_documents = count(
            env,
            ("cached_documents", "SPOC_CACHED_DOCUMENTS"),
            raw.cached_documents.unwrap_or(CACHED_DOCUMENTS),
            "documents",
            usize::MAX,
        )?;
        let store_cache_mib = count(
            env,
            ("store_cache_mib", "SPOC_STORE_CACHE_MIB"),
            raw.store_cache_mib.unwrap_or(STORE_CACHE_MIB),
            "MiB",
            1 << 20,
        )?;
        let state = env("SPOC_STATE").or(raw.state);
        let failpoint = env("SPOC_FAILPOINT")
            .map(|f| f.parse().map_err(|e: String| value("SPOC_FAILPOINT", e)))
            .transpose()?;
        let clock_offset_ms = env("SPOC_CLOCK_OFFSET_MS")
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|ms| ms.unsigned_abs() <= MAX_CLOCK_OFFSET_MS)
                    .ok_or_else(|| {
                        value(
                            "SPOC_CLOCK_OFFSET_MS",
                            format!("{v:?} is not a whole number of milliseconds within ten years"),
                        )
                    })
            })
            .transpose()?
            .unwrap_or(0);
        Ok(Settings {
            data_dir: data_dir.to_owned(),
            state,
            listen,
            api,
            charter,
            key,
            node_key,
            log_level,
            log_format,
            cached_documents,
            store_cache_mib,
            clock_offset_ms,
            mdns,
            key_passphrase_file,
            failpoint,
        })
    }

    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join(TOKEN_FILE)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join(SOCKET_FILE)
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }
}

/// The longest log filter.
const MAX_LOG_FILTER: usize = 512;

/// Whether `filter` is a log filter that tracing reads without panicking or running out of
/// memory. Filters name modules and levels (`info,spoc_node::network=debug`):
/// tracing-subscriber 0.3 slices some strings inside a multi-byte character and panics, and
/// compiles span and field matchers (`[...]`, `{...}`) into regular expressions whose
/// automaton can take gigabytes (found by fuzzing), so only those names are accepted, and
/// a panic of the parser is caught as well.
fn is_log_filter(filter: &str) -> bool {
    filter.len() <= MAX_LOG_FILTER
        && filter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:,=.- ".contains(&b))
        && std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(filter).is_ok())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_paths_and_overrides() {
        let dir = Path::new("/data/ie");
        let s = Settings::parse(dir, "node.toml", "api = \"127.0.0.1:9000\"\n", &no_env).unwrap();
        assert_eq!(s.api.port(), 9000);
        assert_eq!(s.charter, dir.join("charter.toml"));
        assert_eq!(s.log_format, LogFormat::Text);
        let env = |k: &str| match k {
            "SPOC_API" => Some("127.0.0.1:9100".to_owned()),
            "SPOC_LOG_FORMAT" => Some("json".to_owned()),
            "SPOC_LISTEN" => Some("/ip4/127.0.0.1/tcp/1,/ip4/127.0.0.1/tcp/2".to_owned()),
            _ => None,
        };
        let s = Settings::parse(dir, "node.toml", "api = \"127.0.0.1:9000\"\n", &env).unwrap();
        assert_eq!(s.api.port(), 9100);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.listen.len(), 2);
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = Path::new("/d");
        let err = |t: &str| {
            Settings::parse(dir, "node.toml", t, &no_env)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("api = \"0.0.0.0:80\""),
            "bad setting api: 0.0.0.0:80 is not a loopback address"
        );
        assert!(err("api = 5").starts_with("node.toml line 1:"));
        assert!(err("\nlisten_on = []").starts_with("node.toml line 2:"));
        assert!(err("log_format = \"xml\"").contains("log_format"));
        assert!(err("listen = [\"tcp:80\"]").contains("not a multiaddr"));
    }

    #[test]
    fn a_log_filter_that_panics_the_parser_is_refused_in_one_line() {
        // Found by fuzzing: tracing-subscriber 0.3.23 slices it inside the two-byte `\u{798}`.
        let crashing = " pn\u{798}=nn";
        let dir = Path::new("/d");
        let from_file = format!("log_level = {crashing:?}");
        let env = |k: &str| (k == "SPOC_LOG_LEVEL").then(|| crashing.to_owned());
        for result in [
            Settings::parse(dir, "node.toml", &from_file, &no_env),
            Settings::parse(dir, "node.toml", "", &env),
        ] {
            let message = result.unwrap_err().to_string();
            assert!(message.starts_with("bad setting log_level: "), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        assert!(is_log_filter("info,spoc_node::service::sync=debug"));
        assert!(!is_log_filter("info,spoc_node=débug"));
        // Found by fuzzing too: span and field matchers that made the parser build an
        // automaton of more than a gigabyte.
        let matcher = format!(
            "logS[SSLlSyoguSS=e{{kkyey888S=g_S{}St={{}}Sn",
            ".".repeat(75)
        );
        assert!(!is_log_filter(&matcher));
        assert!(!is_log_filter(&"info,".repeat(200)));
    }

    #[test]
    fn the_store_cache_is_read_from_the_file_or_the_environment_and_bounded() {
        let dir = Path::new("/d");
        let parse = |t: &str, env: &dyn Fn(&str) -> Option<String>| {
            Settings::parse(dir, "node.toml", t, env).map(|s| s.store_cache_mib)
        };
        assert_eq!(parse("", &no_env).unwrap(), STORE_CACHE_MIB);
        assert_eq!(parse("store_cache_mib = 64", &no_env).unwrap(), 64);
        let env = |k: &str| (k == "SPOC_STORE_CACHE_MIB").then(|| "8".to_owned());
        assert_eq!(parse("store_cache_mib = 64", &env).unwrap(), 8);
        assert_eq!(
            parse("store_cache_mib = 0", &no_env)
                .unwrap_err()
                .to_string(),
            "bad setting store_cache_mib: must be between 1 and 1048576 MiB"
        );
        let bad = |k: &str| (k == "SPOC_STORE_CACHE_MIB").then(|| "lots".to_owned());
        assert_eq!(
            parse("", &bad).unwrap_err().to_string(),
            "bad setting SPOC_STORE_CACHE_MIB: \"lots\" is not a number of MiB"
        );
    }

    #[test]
    fn failpoints_parse_or_are_named() {
        use crate::store::{CommitStep, Failpoint};
        let dir = Path::new("/d");
        let with = |v: &'static str| move |k: &str| (k == "SPOC_FAILPOINT").then(|| v.to_owned());
        let s = Settings::parse(dir, "node.toml", "", &with("after-commit:3")).unwrap();
        assert_eq!(
            s.failpoint,
            Some(Failpoint {
                step: CommitStep::AfterCommit,
                at: 3
            })
        );
        assert_eq!(
            Settings::parse(dir, "node.toml", "", &no_env)
                .unwrap()
                .failpoint,
            None
        );
        for bad in [
            "in-commit:1",
            "before-commit:0",
            "before-commit",
            "after-commit:x",
        ] {
            let e = Settings::parse(dir, "node.toml", "", &with(bad)).unwrap_err();
            assert!(
                e.to_string().starts_with("bad setting SPOC_FAILPOINT: "),
                "{e}"
            );
        }
    }
}
