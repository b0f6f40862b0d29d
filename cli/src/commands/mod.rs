//! What each command does: local commands work on files, the others go through the node's
//! API. `run` dispatches a parsed command line.

pub mod charter;
pub mod demo;
pub mod local;
pub mod node;
pub mod work;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::args::{Cli, Cmd};
use crate::client::Client;
use crate::output;

/// A usage error found after parsing: it exits 2, as clap's own do.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The global options every command sees.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub json: bool,
    pub quiet: bool,
    pub data_dir: Option<std::path::PathBuf>,
    pub token_file: Option<std::path::PathBuf>,
}

impl Ctx {
    /// The data directory, which commands that talk to a node need.
    pub fn data_dir(&self) -> Result<&Path> {
        self.data_dir.as_deref().ok_or_else(|| {
            Usage("this command talks to a node: give --data-dir DIR or set SPOC_DATA_DIR".into())
                .into()
        })
    }

    /// A client of the node of the data directory.
    pub fn client(&self, timeout: Duration) -> Result<Client> {
        let source = crate::client::TokenSource::pick(
            self.token_file.as_deref(),
            std::env::var("SPOC_TOKEN").ok(),
        );
        Client::open(self.data_dir()?, source, timeout)
    }

    /// Whether to show progress and hints: not for machines, not when asked to be quiet.
    pub fn chatty(&self) -> bool {
        !self.json && !self.quiet
    }

    /// Prints a value as JSON.
    pub fn print_json(&self, v: &Value) -> Result<()> {
        self.print(&format!("{}\n", output::json(v)))
    }

    /// Prints text that already ends in a newline.
    pub fn print(&self, text: &str) -> Result<()> {
        output::stdout(text).map_err(anyhow::Error::from)
    }

    /// Prints one line.
    pub fn line(&self, text: &str) -> Result<()> {
        self.print(&format!("{text}\n"))
    }

    /// Prints a hint on stderr, so that the output stays what a script reads.
    pub fn note(&self, text: &str) -> Result<()> {
        output::stderr(&format!("{text}\n")).map_err(anyhow::Error::from)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        json: cli.json,
        quiet: cli.quiet,
        data_dir: cli.data_dir,
        token_file: cli.token_file,
    };
    match cli.command {
        Cmd::Keygen(args) => local::keygen(&ctx, &args),
        Cmd::Charter(cmd) => local::charter(&ctx, cmd),
        Cmd::Key(cmd) => charter::key(&ctx, cmd),
        Cmd::Testnet(args) => local::testnet(&ctx, &args),
        Cmd::Demo(args) => demo::demo(&ctx, &args),
        Cmd::Completions { shell } => local::completions(&ctx, shell),
        Cmd::Status => node::status(&ctx),
        Cmd::Meeting(cmd) => work::execute(&ctx, work::meeting(cmd)),
        Cmd::Obstacle(cmd) => work::execute(&ctx, work::obstacle(cmd)),
        Cmd::Practice(cmd) => work::execute(&ctx, work::practice(cmd)),
        Cmd::Factsheet(cmd) => work::execute(&ctx, work::factsheet(cmd)?),
        Cmd::Address(cmd) => work::execute(&ctx, work::address(cmd)),
        Cmd::Training(cmd) => work::execute(&ctx, work::training(cmd)),
        Cmd::Log(args) => node::log(&ctx, &args),
        Cmd::Operator(cmd) => node::operator(&ctx, cmd),
        Cmd::Verify => node::verify(&ctx),
        Cmd::Report(args) => node::report(&ctx, &args),
        Cmd::Export(args) => node::export(&ctx, &args),
        Cmd::Peers => node::peers(&ctx),
        Cmd::Wait(args) => node::wait(&ctx, &args),
    }
}
