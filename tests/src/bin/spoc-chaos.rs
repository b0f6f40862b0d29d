//! `spoc-chaos`: a seeded chaos run of real `spoc-node` processes in Linux network
//! namespaces, with a checker of what the clients' acknowledged writes became.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p spoc-tests --bin spoc-chaos -- --nodes 7 --duration 120 --seed 1 --json
//! ```
//!
//! It needs root, `ip` and `iptables` (with the nat table); without them it says why it is
//! skipped and exits 0. It exits non-zero when an acknowledged write was lost, something
//! unwritten appeared, or the nodes did not converge. The code is in `tests/src/chaos/`.

#[path = "../chaos/mod.rs"]
mod chaos;

fn main() -> std::process::ExitCode {
    chaos::main()
}
