//! The command line: every command, option and argument of `spoc`, as clap derive types.
//!
//! Values that the document rules restrict (stances, statuses, verdicts) take their
//! possible values from `spoc_node::docs`, so the CLI offers exactly what the node accepts.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use spoc_node::docs::rules::{
    AGENDA_STATUSES, EXPERT_STATUSES, MEETING_STATUSES, OBSTACLE_STATUSES, STANCES,
};

/// The operator CLI of a spocnet node.
#[derive(Parser, Debug)]
#[command(name = "spoc", version, propagate_version = true)]
pub struct Cli {
    /// The node's data directory (node.toml, api.token); commands that talk to the node
    /// need it.
    #[arg(long, global = true, env = "SPOC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A file holding the operator's API token. Without it, the token is read from the
    /// SPOC_TOKEN environment variable, and otherwise from the data directory's api.token
    /// (the first head's).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only results: no progress, hints or confirmations.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The top-level commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a national key and print its public key.
    Keygen(KeygenArgs),
    /// Write, show or check a charter; propose and sign amendments of it.
    #[command(subcommand)]
    Charter(CharterCmd),
    /// Rotate the national key, or propose the revocation of a compromised one.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Lay out the data directories of a local test network.
    Testnet(TestnetArgs),
    /// Start a local network of real nodes, contribute from several states, and show
    /// the contributions converge.
    Demo(DemoArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
    /// Show the node's state, logs and peers.
    Status,
    /// Meetings: convene, agenda, decisions, attendance, minutes.
    #[command(subcommand)]
    Meeting(MeetingCmd),
    /// Obstacles to cooperation: report, endorse, discuss, resolve.
    #[command(subcommand)]
    Obstacle(ObstacleCmd),
    /// Good practices: share, endorse, discuss.
    #[command(subcommand)]
    Practice(PracticeCmd),
    /// The fact sheet of a SPOC.
    #[command(subcommand)]
    Factsheet(FactsheetCmd),
    /// Training: expert nominations and opportunities.
    #[command(subcommand)]
    Training(TrainingCmd),
    /// Where this state's nodes listen: the addresses its peers dial.
    #[command(subcommand)]
    Address(AddressCmd),
    /// Show the audit trail of signed changes.
    Log(LogArgs),
    /// The node's operators: who may read, write, or also manage operators (a head).
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Re-check every signature, chain and rule in the node's store.
    Verify,
    /// Draft the Presidency's note for a term.
    Report(ReportArgs),
    /// Export a document as a standard Automerge file.
    Export(ExportArgs),
    /// Show the peers the node is connected to.
    Peers,
    /// Wait until the node holds the given entries (by hash); exit 1 if it does not in time.
    Wait(WaitArgs),
}

/// `spoc keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The key file to create (mode 0600); an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Protect the key with the passphrase held in this file.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `spoc charter ...`.
#[derive(Subcommand, Debug)]
pub enum CharterCmd {
    /// Write the template charter: the reference participants and Presidency calendar.
    New {
        /// The file to create; stdout if absent.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the charter in force on the node as TOML (which `propose --file` takes once
    /// edited), or show a charter file's participants, calendar and hash.
    #[command(disable_version_flag = true)]
    Show {
        /// A charter file to show in place of the node's charter.
        file: Option<PathBuf>,
        /// The version to print, of those the node holds; the one in force if absent.
        #[arg(long, value_name = "V", conflicts_with = "file")]
        version: Option<u32>,
    },
    /// Check a charter and print its hash.
    Verify {
        /// The charter file.
        file: PathBuf,
    },
    /// Propose a charter as the next version: prints what it changes, and signs it for
    /// this state (a head operator's act).
    Propose {
        /// The whole charter proposed: `spoc charter show`'s output, edited.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Sign a proposed amendment for this state, by its id or by the version it would
    /// make (a head operator's act).
    Sign {
        /// An amendment id (`amendments/STATE/ULID`), or the version it would make.
        amendment: String,
    },
    /// The version in force, and each proposal with its signatures so far.
    Status,
}

/// `spoc key ...`.
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Make a new national key in the data directory (the old one is kept aside, 0600),
    /// sign its rotation with the old one, and sign with the new one from then on; prints
    /// the new public key (a head operator's act).
    Rotate,
    /// Propose an amendment that revokes the key that signed an entry, from that entry on,
    /// and gives its state a new key; other member states sign it (a head operator's act).
    Revoke {
        /// The state whose key is revoked.
        #[arg(long, value_name = "XX")]
        state: String,
        /// The first entry (its hash) that the key signed after it was compromised: it,
        /// the entries after it in its log, and the key's entries in its other logs dated
        /// from it on are refused.
        #[arg(long, value_name = "ENTRY")]
        from: String,
        /// The state's new public key, which it made with `spoc keygen`.
        #[arg(long, value_name = "KEY")]
        key: String,
    },
    /// Revoke the certificates this state issued to one of its nodes (by its peer id, as
    /// `spoc status` prints it): every node refuses it from then on (a head operator's
    /// act).
    RevokeNode {
        /// The node's peer id.
        peer: String,
    },
}

/// `spoc wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Entry hashes, as writes print them with --json, separated by commas.
    #[arg(long, value_name = "HASH,...", value_delimiter = ',', required = true)]
    pub entries: Vec<String>,
    /// How long to wait, in milliseconds (at most 120000).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
}

/// `spoc demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many nodes (2 to 31).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub nodes: usize,
    /// Leave the network running until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

/// `spoc testnet`.
#[derive(Args, Debug)]
pub struct TestnetArgs {
    /// How many states (1 to 31), today's Presidency first.
    #[arg(long, value_name = "N")]
    pub nodes: usize,
    /// The directory to lay out; it must be empty or absent.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Declares the argument group that names the document a command writes to: a positional
/// id or the equivalent flag, exactly one of the two.
macro_rules! target {
    ($name:ident, $flag:literal, $value:literal, $what:literal) => {
        #[doc = concat!("The ", $what, " a command writes to.")]
        #[derive(Args, Debug, Clone)]
        #[group(required = true, multiple = false)]
        pub struct $name {
            #[doc = concat!("The ", $what, " (its document id).")]
            #[arg(value_name = $value)]
            pub positional: Option<String>,
            #[doc = concat!("The ", $what, " (its document id).")]
            #[arg(long = $flag, value_name = "ID")]
            pub flag: Option<String>,
        }

        impl $name {
            /// The id, from whichever form was given.
            pub fn id(&self) -> String {
                self.flag
                    .clone()
                    .or_else(|| self.positional.clone())
                    .unwrap_or_default()
            }
        }
    };
}

target!(MeetingRef, "meeting", "MEETING", "meeting");
target!(ObstacleRef, "obstacle", "OBSTACLE", "obstacle");
target!(PracticeRef, "practice", "PRACTICE", "practice");
target!(TrainingRef, "item", "ITEM", "training item");

/// `spoc meeting ...`.
#[derive(Subcommand, Debug)]
pub enum MeetingCmd {
    /// Convene a meeting (the Presidency only).
    Convene {
        #[arg(long)]
        title: String,
        /// The first day, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        #[arg(long)]
        venue: String,
        #[arg(long, value_parser = ["physical", "hybrid", "virtual"])]
        format: Option<String>,
        /// The last day, YYYY-MM-DD, for a meeting of several days.
        #[arg(long)]
        end_date: Option<String>,
        /// The meeting's number in the series.
        #[arg(long)]
        number: Option<u64>,
    },
    /// Propose an agenda item.
    Propose {
        #[command(flatten)]
        meeting: MeetingRef,
        #[arg(long)]
        title: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Decide on an agenda item (the Presidency only).
    Decide {
        #[command(flatten)]
        meeting: MeetingRef,
        /// The agenda item key.
        #[arg(long, value_name = "KEY")]
        item: String,
        #[arg(long, value_parser = PossibleValuesParser::new(AGENDA_STATUSES[1..].iter().copied()))]
        decision: String,
        /// Why; required to reject.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Record the own state's attendance: present unless --absent.
    Attend {
        #[command(flatten)]
        meeting: MeetingRef,
        #[arg(long)]
        absent: bool,
        /// How many delegates attend.
        #[arg(long, value_name = "N")]
        delegates: Option<u32>,
    },
    /// Write the minutes of the meeting, or of one agenda item.
    Minutes {
        #[command(flatten)]
        meeting: MeetingRef,
        #[arg(long)]
        text: String,
        /// The agenda item key.
        #[arg(long, value_name = "KEY")]
        item: Option<String>,
    },
    /// Move the meeting to its next status.
    Status {
        #[command(flatten)]
        meeting: MeetingRef,
        #[arg(long, value_parser = MEETING_STATUSES)]
        status: String,
    },
    /// Comment on the meeting, or on one agenda item.
    Comment {
        #[command(flatten)]
        meeting: MeetingRef,
        #[arg(long)]
        text: String,
        /// The agenda item key.
        #[arg(long, value_name = "KEY")]
        item: Option<String>,
    },
    /// List the meetings, a page at a time.
    List(ListArgs),
    /// Show one meeting.
    Show {
        /// The meeting's document id.
        id: String,
    },
}

/// `spoc obstacle ...`.
#[derive(Subcommand, Debug)]
pub enum ObstacleCmd {
    /// Report an obstacle.
    Report {
        #[arg(long)]
        title: String,
        #[arg(long = "type", value_name = "TYPE", value_parser = ["legal", "pragmatic"])]
        kind: String,
        #[arg(long)]
        description: String,
        #[arg(long)]
        subtype: Option<String>,
        /// The legal instrument concerned.
        #[arg(long)]
        instrument: Option<String>,
        #[arg(long)]
        article: Option<String>,
        /// The cooperation channel concerned.
        #[arg(long)]
        channel: Option<String>,
        /// The states concerned, by code: FI,SE.
        #[arg(long, value_name = "CODES", value_delimiter = ',')]
        states_concerned: Vec<String>,
        /// The impact, from 1 to 4.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
        impact: Option<u8>,
        /// A proposed solution.
        #[arg(long)]
        solution: Option<String>,
    },
    /// Edit an obstacle the own state reported.
    Edit {
        #[command(flatten)]
        obstacle: ObstacleRef,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        solution: Option<String>,
    },
    /// Support, object to or abstain on an obstacle.
    Endorse {
        #[command(flatten)]
        obstacle: ObstacleRef,
        #[arg(long, value_parser = STANCES)]
        stance: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Comment on an obstacle.
    Comment {
        #[command(flatten)]
        obstacle: ObstacleRef,
        #[arg(long)]
        text: String,
    },
    /// Move an obstacle to another status.
    Status {
        #[command(flatten)]
        obstacle: ObstacleRef,
        #[arg(long, value_parser = OBSTACLE_STATUSES)]
        status: String,
        /// The decision behind it, meetings/STATE/ID#ITEM; required to resolve or close.
        #[arg(long)]
        reference: Option<String>,
    },
    /// List the obstacles, a page at a time.
    List(ListArgs),
    /// Show one obstacle.
    Show {
        /// The obstacle's document id.
        id: String,
    },
}

/// `spoc practice ...`.
#[derive(Subcommand, Debug)]
pub enum PracticeCmd {
    /// Share a good practice.
    Share {
        #[arg(long)]
        title: String,
        /// The problem it solves.
        #[arg(long)]
        problem: String,
        /// The practice itself.
        #[arg(long)]
        practice: String,
        #[arg(long)]
        prerequisites: Option<String>,
        #[arg(long)]
        results: Option<String>,
        #[arg(long)]
        transferability: Option<String>,
        /// A functional mailbox, never a person's address.
        #[arg(long, value_name = "MAILBOX")]
        contact: Option<String>,
        #[arg(long, value_name = "TAGS", value_delimiter = ',')]
        tags: Vec<String>,
        /// Obstacles it answers, by document id: ID,ID.
        #[arg(long, value_name = "IDS", value_delimiter = ',')]
        related_obstacles: Vec<String>,
    },
    /// Support, object to or abstain on a practice.
    Endorse {
        #[command(flatten)]
        practice: PracticeRef,
        #[arg(long, value_parser = STANCES)]
        stance: String,
    },
    /// Comment on a practice.
    Comment {
        #[command(flatten)]
        practice: PracticeRef,
        #[arg(long)]
        text: String,
    },
    /// List the practices, a page at a time.
    List(ListArgs),
    /// Show one practice.
    Show {
        /// The practice's document id.
        id: String,
    },
}

/// `spoc address ...`.
#[derive(Subcommand, Debug)]
pub enum AddressCmd {
    /// Publish the addresses of this state's nodes, in place of those published before
    /// (or of the charter's); peers dial them from then on, with no charter change.
    Set {
        /// Up to 8 addresses: /ip4/A.B.C.D/tcp/PORT, /ip6/ADDR/tcp/PORT or
        /// /dns/NAME/tcp/PORT.
        #[arg(required = true, num_args = 1..)]
        addresses: Vec<String>,
    },
    /// Show the addresses a state publishes.
    Show {
        /// The state code; the node's own state if absent.
        state: Option<String>,
    },
    /// List every state's published addresses.
    List(ListArgs),
}

/// `spoc factsheet ...`.
#[derive(Subcommand, Debug)]
pub enum FactsheetCmd {
    /// Set fields of the own state's fact sheet.
    Set(FactsheetSetArgs),
    /// Show a state's fact sheet.
    Show {
        /// The state code; the node's own state if absent.
        state: Option<String>,
    },
}

/// `spoc factsheet set`: fields by `--field KEY=VALUE` or by their own flags.
#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("fields")
        .required(true)
        .multiple(true)
        .args(["field", "composition", "availability_24_7", "languages",
               "judicial_authorisation", "contacts", "notes"])
))]
pub struct FactsheetSetArgs {
    /// A field to set, KEY=VALUE; repeat for more.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_field)]
    pub field: Vec<(String, String)>,
    #[arg(long)]
    pub composition: Option<String>,
    #[arg(long = "availability-24-7", value_name = "AVAILABILITY")]
    pub availability_24_7: Option<String>,
    #[arg(long)]
    pub languages: Option<String>,
    #[arg(long)]
    pub judicial_authorisation: Option<String>,
    /// Functional contacts, never a person's details.
    #[arg(long)]
    pub contacts: Option<String>,
    #[arg(long)]
    pub notes: Option<String>,
}

/// Parses `KEY=VALUE`, with a key the fact sheet holds.
pub fn parse_field(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let key = key.trim();
    if !spoc_node::docs::command::FACTSHEET_FIELDS.contains(&key) {
        return Err(format!(
            "unknown field {key:?} (one of {})",
            spoc_node::docs::command::FACTSHEET_FIELDS.join(", ")
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// `spoc training ...`.
#[derive(Subcommand, Debug)]
pub enum TrainingCmd {
    /// Nominate an expert, by role (no personal data).
    Nominate {
        /// The expert's role.
        #[arg(long)]
        title: String,
        #[arg(long)]
        expertise: String,
        #[arg(long, value_name = "CODES", value_delimiter = ',')]
        languages: Vec<String>,
    },
    /// Announce a training opportunity.
    Opportunity {
        #[arg(long)]
        title: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        date: String,
        #[arg(long)]
        description: String,
    },
    /// Assess a nominated expert (the training core group only).
    Assess {
        #[command(flatten)]
        item: TrainingRef,
        #[arg(long, value_parser = PossibleValuesParser::new(EXPERT_STATUSES[1..].iter().copied()))]
        verdict: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// List the training items, a page at a time.
    List(ListArgs),
    /// Show one training item.
    Show {
        /// The training item's document id.
        id: String,
    },
}

/// `spoc log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Only the changes of this state.
    #[arg(long, value_name = "CODE")]
    pub author: Option<String>,
    /// Only the changes of this document.
    #[arg(long, value_name = "ID")]
    pub doc: Option<String>,
    /// At most this many changes (the newest; 100 unless given).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// The changes accepted before this position: the cursor a previous page printed.
    #[arg(long, value_name = "POSITION")]
    pub before: Option<u64>,
    /// Show which operator of this node made each local write (a local record, not
    /// replicated).
    #[arg(long)]
    pub operators: bool,
}

/// `spoc operator ...`: a head's commands.
#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Add an operator and print its token, once: hand it over, it is not kept.
    Add {
        /// A name of a-z, 0-9, '.', '_' and '-', at most 32 characters.
        name: String,
        /// What the operator may do.
        #[arg(long, value_parser = PossibleValuesParser::new(["reader", "contributor", "head"]))]
        role: String,
    },
    /// List the operators, revoked ones included.
    List,
    /// Revoke an operator: its token is refused from now on.
    Revoke { name: String },
}

/// The filters and the page of a list.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ListArgs {
    /// Only items with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only items of this state (the one that created them).
    #[arg(long, value_name = "CODE")]
    pub state: Option<String>,
    /// Only items of this kind: an obstacle's type, a training item's kind, a meeting's
    /// format.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only items changed since this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// At most this many items (100 unless given).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// The page after the one that printed this cursor.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `spoc report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The half-year, YYYY-H1 or YYYY-H2.
    #[arg(long, value_parser = parse_term)]
    pub term: String,
    /// Write the markdown to this file (0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace the file of --out if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// Checks a half-year label.
pub fn parse_term(text: &str) -> Result<String, String> {
    match spoc_node::charter::parse_half_year(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(format!("{text:?} is not a half-year (YYYY-H1 or YYYY-H2)")),
    }
}

/// `spoc export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The document id.
    #[arg(long, value_name = "ID")]
    pub doc: String,
    /// The file to write (0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ids_come_as_flag_or_positional() {
        for line in [
            "spoc obstacle comment X --text t",
            "spoc obstacle comment --obstacle X --text t",
        ] {
            let cli = Cli::try_parse_from(line.split(' ')).unwrap();
            let Cmd::Obstacle(ObstacleCmd::Comment { obstacle, .. }) = cli.command else {
                panic!("{line}");
            };
            assert_eq!(obstacle.id(), "X");
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli =
            Cli::try_parse_from(["spoc", "peers", "--json", "--data-dir", "/d", "-q"]).unwrap();
        assert!(cli.json && cli.quiet);
        assert_eq!(cli.data_dir, Some(PathBuf::from("/d")));
        assert!(parse_term("2026-H2").is_ok());
        assert!(parse_term("2026-H3").is_err());
        assert_eq!(parse_field("notes=a=b"), Ok(("notes".into(), "a=b".into())));
    }
}
