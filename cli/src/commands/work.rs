//! The work of the network: meetings, obstacles, practices, fact sheets and training.
//!
//! Each subcommand becomes an `Action`: a typed `Command` to post, a collection to list or
//! a document to show. Writes are built as `spoc_node::docs::command::Command` values and
//! serialised, so the CLI sends exactly what the node parses.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};
use spoc_node::docs::Collection;
use spoc_node::docs::command::Command;

use super::{Ctx, Usage};
use crate::args::{
    AddressCmd, FactsheetCmd, ListArgs, MeetingCmd, ObstacleCmd, PracticeCmd, TrainingCmd,
};
use crate::client::{Client, TIMEOUT};
use crate::output::{self, Table, field};

/// What a work subcommand asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Post a write.
    Write(Command),
    /// List a collection's summaries, a page at a time.
    List(Collection, ListArgs),
    /// Show one document.
    Show(String),
    /// Show a state's fact sheet, the node's own when none is named.
    /// Shows a state's document of a collection that holds one per state; the node's own
    /// state when none is given.
    ShowOfState(Collection, Option<String>),
}

pub fn meeting(cmd: MeetingCmd) -> Action {
    Action::Write(match cmd {
        MeetingCmd::Convene {
            title,
            date,
            venue,
            format,
            end_date,
            number,
        } => Command::MeetingConvene {
            title,
            date,
            venue,
            format,
            end_date,
            number,
        },
        MeetingCmd::Propose {
            meeting,
            title,
            description,
        } => Command::MeetingPropose {
            meeting: meeting.id(),
            title,
            description,
        },
        MeetingCmd::Decide {
            meeting,
            item,
            decision,
            reason,
        } => Command::MeetingDecide {
            meeting: meeting.id(),
            item,
            decision,
            reason,
        },
        MeetingCmd::Attend {
            meeting,
            absent,
            delegates,
        } => Command::MeetingAttend {
            meeting: meeting.id(),
            present: !absent,
            delegates,
        },
        MeetingCmd::Minutes {
            meeting,
            text,
            item,
        } => Command::MeetingMinutes {
            meeting: meeting.id(),
            text,
            item,
        },
        MeetingCmd::Status { meeting, status } => Command::MeetingStatus {
            meeting: meeting.id(),
            status,
        },
        MeetingCmd::Comment {
            meeting,
            text,
            item,
        } => Command::MeetingComment {
            meeting: meeting.id(),
            text,
            item,
        },
        MeetingCmd::List(args) => return Action::List(Collection::Meetings, args),
        MeetingCmd::Show { id } => return Action::Show(id),
    })
}

pub fn obstacle(cmd: ObstacleCmd) -> Action {
    Action::Write(match cmd {
        ObstacleCmd::Report {
            title,
            kind,
            description,
            subtype,
            instrument,
            article,
            channel,
            states_concerned,
            impact,
            solution,
        } => Command::ObstacleReport {
            title,
            kind,
            description,
            subtype,
            instrument,
            article,
            channel,
            states_concerned: codes(states_concerned),
            impact,
            solution,
        },
        ObstacleCmd::Edit {
            obstacle,
            title,
            description,
            solution,
        } => Command::ObstacleEdit {
            obstacle: obstacle.id(),
            title,
            description,
            solution,
        },
        ObstacleCmd::Endorse {
            obstacle,
            stance,
            note,
        } => Command::ObstacleEndorse {
            obstacle: obstacle.id(),
            stance,
            note,
        },
        ObstacleCmd::Comment { obstacle, text } => Command::ObstacleComment {
            obstacle: obstacle.id(),
            text,
        },
        ObstacleCmd::Status {
            obstacle,
            status,
            reference,
        } => Command::ObstacleStatus {
            obstacle: obstacle.id(),
            status,
            reference,
        },
        ObstacleCmd::List(args) => return Action::List(Collection::Obstacles, args),
        ObstacleCmd::Show { id } => return Action::Show(id),
    })
}

pub fn practice(cmd: PracticeCmd) -> Action {
    Action::Write(match cmd {
        PracticeCmd::Share {
            title,
            problem,
            practice,
            prerequisites,
            results,
            transferability,
            contact,
            tags,
            related_obstacles,
        } => Command::PracticeShare {
            title,
            problem,
            practice,
            prerequisites,
            results,
            transferability,
            contact,
            tags: trimmed(tags),
            related_obstacles: trimmed(related_obstacles),
        },
        PracticeCmd::Endorse { practice, stance } => Command::PracticeEndorse {
            practice: practice.id(),
            stance,
        },
        PracticeCmd::Comment { practice, text } => Command::PracticeComment {
            practice: practice.id(),
            text,
        },
        PracticeCmd::List(args) => return Action::List(Collection::Practices, args),
        PracticeCmd::Show { id } => return Action::Show(id),
    })
}

pub fn factsheet(cmd: FactsheetCmd) -> Result<Action> {
    let args = match cmd {
        FactsheetCmd::Set(args) => args,
        FactsheetCmd::Show { state } => {
            return Ok(Action::ShowOfState(
                Collection::Factsheets,
                state.map(|s| s.to_uppercase()),
            ));
        }
    };
    let named = [
        ("composition", args.composition),
        ("availability_24_7", args.availability_24_7),
        ("languages", args.languages),
        ("judicial_authorisation", args.judicial_authorisation),
        ("contacts", args.contacts),
        ("notes", args.notes),
    ];
    let mut fields = BTreeMap::new();
    let given = args.field.into_iter().chain(
        named
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?))),
    );
    for (key, value) in given {
        if fields.insert(key.clone(), value).is_some() {
            return Err(Usage(format!("the fact sheet field {key} is given twice")).into());
        }
    }
    Ok(Action::Write(Command::FactsheetSet { fields }))
}

pub fn address(cmd: AddressCmd) -> Action {
    match cmd {
        AddressCmd::Set { addresses } => Action::Write(Command::AddressSet { addresses }),
        AddressCmd::Show { state } => {
            Action::ShowOfState(Collection::Addresses, state.map(|s| s.to_uppercase()))
        }
        AddressCmd::List(args) => Action::List(Collection::Addresses, args),
    }
}

pub fn training(cmd: TrainingCmd) -> Action {
    Action::Write(match cmd {
        TrainingCmd::Nominate {
            title,
            expertise,
            languages,
        } => Command::TrainingNominate {
            title,
            expertise,
            languages: trimmed(languages),
        },
        TrainingCmd::Opportunity {
            title,
            date,
            description,
        } => Command::TrainingOpportunity {
            title,
            date,
            description,
        },
        TrainingCmd::Assess {
            item,
            verdict,
            note,
        } => Command::TrainingAssess {
            item: item.id(),
            verdict,
            note,
        },
        TrainingCmd::List(args) => return Action::List(Collection::Training, args),
        TrainingCmd::Show { id } => return Action::Show(id),
    })
}

/// List items given as `a, b,c`: trimmed, empty ones dropped.
fn trimmed(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// State codes as the charter writes them.
fn codes(items: Vec<String>) -> Vec<String> {
    trimmed(items)
        .into_iter()
        .map(|s| s.to_uppercase())
        .collect()
}

/// Does what an action asks of the node and prints the result.
pub fn execute(ctx: &Ctx, action: Action) -> Result<()> {
    let client = ctx.client(TIMEOUT)?;
    match action {
        Action::Write(command) => {
            let answer: Value = client.post_json("/v1/commands", &command)?;
            let id = answer
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("the node's answer names no id: {answer}"))?;
            if ctx.json {
                ctx.print_json(&json!({
                    "id": id,
                    "entry": answer.get("entry"),
                    "seq": answer.get("seq"),
                }))?;
            } else {
                ctx.line(id)?;
            }
        }
        Action::List(collection, args) => {
            let mut query = vec![("collection", collection.as_str().to_owned())];
            for (name, value) in [
                ("status", &args.status),
                ("state", &args.state.as_ref().map(|s| s.to_uppercase())),
                ("kind", &args.kind),
                ("since", &args.since),
                ("cursor", &args.cursor),
                ("limit", &args.limit.map(|n| n.to_string())),
            ] {
                if let Some(v) = value {
                    query.push((name, v.clone()));
                }
            }
            let page: Value = client.get_json("/v1/docs", &query)?;
            let items: Vec<Value> = page["items"].as_array().cloned().unwrap_or_default();
            if let Some(next) = page["next"].as_str()
                && !ctx.quiet
            {
                ctx.note(&format!("more: add --cursor {next}"))?;
            }
            if ctx.json {
                ctx.print_json(&Value::Array(items))?;
            } else {
                let table = list_table(collection, &items);
                if table.is_empty() {
                    if !ctx.quiet {
                        ctx.line(&format!("no {} yet", collection.as_str()))?;
                    }
                } else {
                    ctx.print(&table.render())?;
                }
            }
        }
        Action::Show(id) => show(ctx, &client, &id)?,
        Action::ShowOfState(collection, state) => {
            let state = match state {
                Some(s) => s,
                None => own_state(&client)?,
            };
            show(ctx, &client, &format!("{}/{state}", collection.as_str()))?;
        }
    }
    Ok(())
}

fn own_state(client: &Client) -> Result<String> {
    let status: Value = client.get_json("/v1/status", &[])?;
    status
        .get("state")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the node's status names no state"))
}

fn show(ctx: &Ctx, client: &Client, id: &str) -> Result<()> {
    let doc: Value = client.get_json("/v1/doc", &[("id", id.to_owned())])?;
    if ctx.json {
        ctx.print_json(&doc)?;
    } else {
        ctx.print(&output::tree(&doc))?;
    }
    Ok(())
}

/// Endorsements as counts by stance: `2 support, 1 object`.
fn stances(v: &Value) -> String {
    let Some(items) = v.get("endorsements").and_then(Value::as_array) else {
        return "-".into();
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in items {
        let stance = e.get("stance").and_then(Value::as_str).unwrap_or("?");
        *counts.entry(stance.to_owned()).or_default() += 1;
    }
    let mut parts = Vec::new();
    for stance in spoc_node::docs::rules::STANCES {
        if let Some(n) = counts.remove(stance) {
            parts.push(format!("{n} {stance}"));
        }
    }
    parts.extend(counts.into_iter().map(|(s, n)| format!("{n} {s}")));
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// A count of an array field, or the field itself when it is already a number.
fn count(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Array(items)) => items.len().to_string(),
        Some(other) => output::cell(other),
        None => "-".into(),
    }
}

/// The human table of a collection's summaries (field names as in docs/api.md).
pub fn list_table(collection: Collection, items: &[Value]) -> Table {
    let mut table = match collection {
        Collection::Meetings => Table::new(&[
            "ID", "DATE", "STATUS", "AGENDA", "PRESENT", "VENUE", "TITLE",
        ]),
        Collection::Obstacles => Table::new(&[
            "ID",
            "TYPE",
            "STATUS",
            "IMPACT",
            "ENDORSEMENTS",
            "COMMENTS",
            "TITLE",
        ]),
        Collection::Practices => Table::new(&["ID", "ENDORSEMENTS", "COMMENTS", "TAGS", "TITLE"]),
        Collection::Factsheets => Table::new(&["ID", "STATE", "LAST REVIEWED"]),
        Collection::Addresses => Table::new(&["ID", "STATE", "UPDATED", "ADDRESSES"]),
        Collection::Amendments => Table::new(&["ID", "BY", "AMENDS", "SIGNATURES"]),
        Collection::Keys => Table::new(&["ID", "STATE", "ROTATIONS"]),
        Collection::Training => {
            Table::new(&["ID", "KIND", "STATUS", "DATE", "ASSESSMENTS", "TITLE"])
        }
    };
    for v in items {
        table.row(match collection {
            Collection::Meetings => vec![
                field(v, "id"),
                field(v, "date"),
                field(v, "status"),
                count(v, "agenda"),
                field(v, "attendance"),
                field(v, "venue"),
                field(v, "title"),
            ],
            Collection::Obstacles => vec![
                field(v, "id"),
                field(v, "type"),
                field(v, "status"),
                field(v, "impact"),
                stances(v),
                count(v, "comments"),
                field(v, "title"),
            ],
            Collection::Practices => vec![
                field(v, "id"),
                stances(v),
                count(v, "comments"),
                field(v, "tags"),
                field(v, "title"),
            ],
            Collection::Factsheets => {
                vec![field(v, "id"), field(v, "state"), field(v, "last_reviewed")]
            }
            Collection::Keys => vec![field(v, "id"), field(v, "state"), count(v, "rotations")],
            Collection::Amendments => vec![
                field(v, "id"),
                field(v, "by"),
                field(v, "amends"),
                count(v, "signatures"),
            ],
            Collection::Addresses => vec![
                field(v, "id"),
                field(v, "state"),
                field(v, "updated"),
                field(v, "addresses"),
            ],
            Collection::Training => vec![
                field(v, "id"),
                field(v, "kind"),
                field(v, "status"),
                field(v, "date"),
                count(v, "assessments"),
                field(v, "title"),
            ],
        });
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Cmd};
    use clap::Parser;

    /// Parses a command line and serialises the write it makes.
    fn write(line: &str) -> Value {
        let cli = Cli::try_parse_from(line.split(' ')).unwrap();
        let action = match cli.command {
            Cmd::Meeting(c) => meeting(c),
            Cmd::Obstacle(c) => obstacle(c),
            Cmd::Practice(c) => practice(c),
            Cmd::Factsheet(c) => factsheet(c).unwrap(),
            Cmd::Training(c) => training(c),
            other => panic!("not a work command: {other:?}"),
        };
        match action {
            Action::Write(c) => serde_json::to_value(&c).unwrap(),
            other => panic!("not a write: {other:?}"),
        }
    }

    const M: &str = "meetings/IE/01J9Z3Y6K0000000000000000A";
    const O: &str = "obstacles/LT/01J9Z3Y6K0000000000000000B";

    #[test]
    fn meeting_writes() {
        assert_eq!(
            write(
                "spoc meeting convene --title Plenary --date 2026-10-01 --venue Dublin --format hybrid --number 3"
            ),
            json!({"command": "meeting_convene", "title": "Plenary", "date": "2026-10-01",
                   "venue": "Dublin", "format": "hybrid", "end_date": null, "number": 3})
        );
        assert_eq!(
            write(&format!("spoc meeting propose --meeting {M} --title Item")),
            json!({"command": "meeting_propose", "meeting": M, "title": "Item", "description": null})
        );
        assert_eq!(
            write(&format!(
                "spoc meeting decide {M} --item IE-1 --decision rejected --reason late"
            )),
            json!({"command": "meeting_decide", "meeting": M, "item": "IE-1",
                   "decision": "rejected", "reason": "late"})
        );
        assert_eq!(
            write(&format!("spoc meeting attend --meeting {M}")),
            json!({"command": "meeting_attend", "meeting": M, "present": true, "delegates": null})
        );
        assert_eq!(
            write(&format!(
                "spoc meeting attend --meeting {M} --absent --delegates 0"
            )),
            json!({"command": "meeting_attend", "meeting": M, "present": false, "delegates": 0})
        );
        assert_eq!(
            write(&format!(
                "spoc meeting minutes --meeting {M} --text Done --item IE-1"
            )),
            json!({"command": "meeting_minutes", "meeting": M, "text": "Done", "item": "IE-1"})
        );
        assert_eq!(
            write(&format!(
                "spoc meeting status --meeting {M} --status agenda_frozen"
            )),
            json!({"command": "meeting_status", "meeting": M, "status": "agenda_frozen"})
        );
        assert_eq!(
            write(&format!("spoc meeting comment --meeting {M} --text Agreed")),
            json!({"command": "meeting_comment", "meeting": M, "text": "Agreed", "item": null})
        );
    }

    #[test]
    fn obstacle_writes() {
        assert_eq!(
            write(
                "spoc obstacle report --title Slow --type legal --description Replies --states-concerned fi,SE --impact 3 --instrument 2014/41/EU"
            ),
            json!({"command": "obstacle_report", "title": "Slow", "type": "legal",
                   "description": "Replies", "subtype": null, "instrument": "2014/41/EU",
                   "article": null, "channel": null, "states_concerned": ["FI", "SE"],
                   "impact": 3, "solution": null})
        );
        assert_eq!(
            write(&format!(
                "spoc obstacle edit --obstacle {O} --solution Train"
            )),
            json!({"command": "obstacle_edit", "obstacle": O, "title": null,
                   "description": null, "solution": "Train"})
        );
        assert_eq!(
            write(&format!("spoc obstacle endorse {O} --stance support")),
            json!({"command": "obstacle_endorse", "obstacle": O, "stance": "support", "note": null})
        );
        assert_eq!(
            write(&format!(
                "spoc obstacle endorse --obstacle {O} --stance object --note Why"
            )),
            json!({"command": "obstacle_endorse", "obstacle": O, "stance": "object", "note": "Why"})
        );
        assert_eq!(
            write(&format!("spoc obstacle comment {O} --text Same")),
            json!({"command": "obstacle_comment", "obstacle": O, "text": "Same"})
        );
        assert_eq!(
            write(&format!(
                "spoc obstacle status {O} --status resolved --reference {M}#IE-1"
            )),
            json!({"command": "obstacle_status", "obstacle": O, "status": "resolved",
                   "reference": format!("{M}#IE-1")})
        );
    }

    #[test]
    fn practice_factsheet_and_training_writes() {
        assert_eq!(
            write(&format!(
                "spoc practice share --title T --problem P --practice X --contact spoc@example.eu --tags a,b --related-obstacles {O}"
            )),
            json!({"command": "practice_share", "title": "T", "problem": "P", "practice": "X",
                   "prerequisites": null, "results": null, "transferability": null,
                   "contact": "spoc@example.eu", "tags": ["a", "b"], "related_obstacles": [O]})
        );
        let p = "practices/FI/01J9Z3Y6K0000000000000000C";
        assert_eq!(
            write(&format!(
                "spoc practice endorse --practice {p} --stance abstain"
            )),
            json!({"command": "practice_endorse", "practice": p, "stance": "abstain"})
        );
        assert_eq!(
            write(&format!("spoc practice comment {p} --text Nice")),
            json!({"command": "practice_comment", "practice": p, "text": "Nice"})
        );
        assert_eq!(
            write("spoc factsheet set --field notes=a=b --availability-24-7 yes --languages en"),
            json!({"command": "factsheet_set", "fields": {
                "notes": "a=b", "availability_24_7": "yes", "languages": "en"}})
        );
        assert_eq!(
            write("spoc training nominate --title Analyst --expertise OSINT --languages en,fr"),
            json!({"command": "training_nominate", "title": "Analyst", "expertise": "OSINT",
                   "languages": ["en", "fr"]})
        );
        assert_eq!(
            write("spoc training opportunity --title Course --date 2026-11-02 --description Two"),
            json!({"command": "training_opportunity", "title": "Course", "date": "2026-11-02",
                   "description": "Two"})
        );
        let t = "training/SE/01J9Z3Y6K0000000000000000D";
        assert_eq!(
            write(&format!("spoc training assess --item {t} --verdict listed")),
            json!({"command": "training_assess", "item": t, "verdict": "listed", "note": null})
        );
    }

    #[test]
    fn bad_work_lines_are_refused() {
        for line in [
            "spoc obstacle endorse --stance support",
            &format!("spoc obstacle endorse {O} --obstacle {O} --stance support"),
            &format!("spoc obstacle endorse {O} --stance maybe"),
            "spoc obstacle report --title T --type moral --description D",
            "spoc obstacle report --title T --type legal --description D --impact 5",
            &format!("spoc meeting decide {M} --item I --decision proposed"),
            "spoc factsheet set",
            "spoc factsheet set --field colour=blue",
            "spoc factsheet set --field notes",
        ] {
            assert!(Cli::try_parse_from(line.split(' ')).is_err(), "{line}");
        }
        let cli =
            Cli::try_parse_from("spoc factsheet set --notes a --field notes=b".split(' ')).unwrap();
        let Cmd::Factsheet(c) = cli.command else {
            panic!("not a fact sheet command")
        };
        assert!(
            factsheet(c)
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
    }

    #[test]
    fn reads_are_actions() {
        let action = |line: &str| match Cli::try_parse_from(line.split(' ')).unwrap().command {
            Cmd::Meeting(c) => meeting(c),
            Cmd::Factsheet(c) => factsheet(c).unwrap(),
            Cmd::Training(c) => training(c),
            Cmd::Address(c) => address(c),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            action("spoc meeting list"),
            Action::List(Collection::Meetings, ListArgs::default())
        );
        assert_eq!(
            action(&format!("spoc meeting show {M}")),
            Action::Show(M.into())
        );
        assert_eq!(
            action("spoc factsheet show fi"),
            Action::ShowOfState(Collection::Factsheets, Some("FI".into()))
        );
        assert_eq!(
            action("spoc factsheet show"),
            Action::ShowOfState(Collection::Factsheets, None)
        );
        assert_eq!(
            action("spoc address show lt"),
            Action::ShowOfState(Collection::Addresses, Some("LT".into()))
        );
        assert_eq!(
            action("spoc address set /ip4/10.0.0.7/tcp/4001 /dns/spoc.example.lt/tcp/443"),
            Action::Write(Command::AddressSet {
                addresses: vec![
                    "/ip4/10.0.0.7/tcp/4001".into(),
                    "/dns/spoc.example.lt/tcp/443".into()
                ]
            })
        );
        assert_eq!(
            action("spoc training list --status open --limit 5"),
            Action::List(
                Collection::Training,
                ListArgs {
                    status: Some("open".into()),
                    limit: Some(5),
                    ..ListArgs::default()
                }
            )
        );
    }

    #[test]
    fn list_tables_use_the_api_fields() {
        let items = vec![json!({
            "id": O, "title": "Slow replies", "type": "legal", "reporter": "LT",
            "status": "reported", "impact": 3, "states_concerned": ["FI"],
            "endorsements": [{"state": "FI", "stance": "support"},
                             {"state": "SE", "stance": "object"},
                             {"state": "NO", "stance": "support"}],
            "comments": 2
        })];
        let text = list_table(Collection::Obstacles, &items).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  "));
        assert!(
            lines[1]
                .ends_with("legal  reported  3       2 support, 1 object  2         Slow replies"),
            "{}",
            lines[1]
        );
        let meetings = vec![json!({"id": M, "title": "Plenary", "date": "2026-10-01",
            "venue": "Dublin", "status": "convened", "attendance": 4,
            "agenda": [{"id": "IE-1"}, {"id": "LT-2"}]})];
        let text = list_table(Collection::Meetings, &meetings).render();
        assert!(
            text.contains("2026-10-01  convened  2       4        Dublin  Plenary"),
            "{text}"
        );
    }
}
