//! `spoc-node --data-dir DIR`: one national node, in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs one national spocnet node as a service.
#[derive(Parser, Debug)]
#[command(name = "spoc-node", version, about)]
struct Args {
    /// The node's data directory, holding node.toml, its keys, its charter and its store.
    #[arg(long, env = "SPOC_DATA_DIR")]
    data_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match spoc_node::daemon::run(&args.data_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            spoc_node::daemon::report_fatal(&e);
            ExitCode::FAILURE
        }
    }
}
