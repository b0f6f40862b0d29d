//! `spoc`: the operator CLI of a spocnet node.
//!
//! Local commands work on key, charter and testnet files; every other command is a client
//! of the node's local API (docs/api.md). Any failure prints one line, `spoc: <reason>`, on
//! stderr and exits 1; usage errors exit 2.

// The CLI's job is to print: results on stdout, the error line on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod client;
mod commands;
mod output;
mod unix;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading, as `head` does, is no failure to report.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("{}", output::error_line(&e));
            if e.downcast_ref::<commands::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints help or version as clap does, and a usage error as one line.
fn usage(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(2);
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Nothing is left to report if the help itself cannot be printed.
            let _ = e.print();
        }
        _ => eprintln!("{}", output::usage_line(&e.render().to_string())),
    }
    ExitCode::from(code)
}
