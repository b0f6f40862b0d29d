//! The benchmark's data: a realistic history of the network, generated from a seed.
//!
//! Several states write through `Replica::prepare` with a fixed clock, as their nodes
//! would: the Presidency convenes meetings and moves them through their lifecycle, the
//! states propose agenda items, attend and comment; they report obstacles, endorse and
//! comment on each other's, and edit their own with long descriptions; they share and
//! endorse practices, keep their fact sheets and nominate trainers. Each write is checked
//! by the same rules as on a node and ingested before the next one is prepared, so every
//! entry is valid and every prefix of the history is causally closed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use spoc_node::charter::Charter;
use spoc_node::docs::command::{Command, Refused};
use spoc_node::identity::SecretKey;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::store::Store;

/// The time between two consecutive entries of the history.
pub const STEP_MS: u64 = 50;

/// One writing state.
#[derive(Debug)]
pub struct Author {
    pub code: String,
    pub key: SecretKey,
    pub incarnation: u32,
}

/// A generated history.
#[derive(Debug)]
pub struct Workload {
    pub charter: Arc<Charter>,
    /// The entries in the order they were written (a causal order).
    pub entries: Vec<SignedEntry>,
    /// The command that made each entry.
    pub kinds: Vec<&'static str>,
    /// Obstacles, with the index of the entry that reported each.
    pub obstacles: Vec<(usize, String)>,
    /// Commands that the rules refused while generating (none is expected).
    pub refused: usize,
    /// The state after the first N entries, for each N asked for.
    pub snapshots: BTreeMap<usize, Snapshot>,
}

/// The state of the network after a prefix of the history.
#[derive(Debug)]
pub struct Snapshot {
    /// A store file holding exactly the prefix, as a node would have committed it.
    pub store: PathBuf,
    /// Every document's `save()`, by document id.
    pub docs: BTreeMap<String, Vec<u8>>,
}

impl Workload {
    /// The state after the first `n` entries.
    pub fn snapshot(&self, n: usize) -> anyhow::Result<&Snapshot> {
        self.snapshots
            .get(&n)
            .ok_or_else(|| anyhow::anyhow!("no snapshot of the first {n} entries was made"))
    }
}

impl Workload {
    /// The obstacles reported within the first `n` entries.
    pub fn obstacles_within(&self, n: usize) -> Vec<&str> {
        self.obstacles
            .iter()
            .filter(|(i, _)| *i < n)
            .map(|(_, id)| id.as_str())
            .collect()
    }

    /// Count and mean encoded size of the entries of each command, within the first `n`.
    pub fn mix(&self, n: usize) -> BTreeMap<&'static str, (usize, usize)> {
        let mut mix: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for (e, kind) in self.entries.iter().zip(&self.kinds).take(n) {
            let m = mix.entry(kind).or_default();
            m.0 += 1;
            m.1 += e.bytes().len();
        }
        for m in mix.values_mut() {
            m.1 /= m.0.max(1);
        }
        mix
    }
}

/// Copies a store file with the key that seals its rows (`store::key_path`, which keeps
/// its 0600 mode), so that the copy opens like the original. Returns the store's bytes.
pub fn copy_store(from: &Path, to: &Path) -> Result<u64> {
    let bytes = std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::copy(
        spoc_node::store::key_path(from),
        spoc_node::store::key_path(to),
    )
    .with_context(|| format!("copying the key of {}", from.display()))?;
    Ok(bytes)
}

/// Plain words of the trade, for titles, comments and long descriptions.
const WORDS: &[&str] = &[
    "request",
    "channel",
    "SIENA",
    "Interpol",
    "liaison",
    "officer",
    "court",
    "order",
    "prosecutor",
    "delay",
    "data",
    "protection",
    "authority",
    "cross-border",
    "cooperation",
    "hit",
    "follow-up",
    "Pruem",
    "fingerprint",
    "DNA",
    "vehicle",
    "registration",
    "translation",
    "language",
    "24/7",
    "contact",
    "point",
    "SPOC",
    "national",
    "law",
    "article",
    "framework",
    "decision",
    "Swedish",
    "initiative",
    "reply",
    "deadline",
    "urgent",
    "case",
    "handling",
    "system",
    "workflow",
    "queue",
    "staff",
    "training",
    "manual",
    "template",
    "form",
    "consent",
    "judicial",
    "authorisation",
    "police",
    "customs",
    "border",
    "guard",
    "Europol",
    "exchange",
    "information",
    "secure",
    "mailbox",
    "priority",
    "weekend",
    "escalation",
    "statistics",
    "backlog",
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
    "for",
    "with",
    "before",
    "after",
    "is",
    "are",
    "takes",
    "requires",
    "weeks",
    "days",
    "hours",
];

const VENUES: &[&str] = &[
    "Dublin",
    "Brussels",
    "The Hague",
    "Vilnius",
    "Athens",
    "Lyon",
];

fn sentence(rng: &mut ChaCha20Rng) -> String {
    let n = rng.random_range(6..18);
    let mut s = String::new();
    for i in 0..n {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        if i == 0 {
            let mut chars = w.chars();
            if let Some(first) = chars.next() {
                s.extend(first.to_uppercase());
                s.push_str(chars.as_str());
            }
        } else {
            s.push(' ');
            s.push_str(w);
        }
    }
    s.push_str(". ");
    s
}

/// Plain text of at least `min_len` bytes.
pub fn text(rng: &mut ChaCha20Rng, min_len: usize) -> String {
    let mut t = String::new();
    while t.len() < min_len {
        t.push_str(&sentence(rng));
    }
    t.trim_end().to_owned()
}

/// Plain text of a length drawn from `range`.
pub fn text_in(rng: &mut ChaCha20Rng, range: std::ops::Range<usize>) -> String {
    let len = rng.random_range(range);
    text(rng, len)
}

fn title(rng: &mut ChaCha20Rng) -> String {
    let mut t = sentence(rng);
    t.truncate(60);
    t.trim_end_matches([' ', '.']).to_owned()
}

/// An edit of a long description, as an operator revising a text: it grows by a
/// paragraph at a time up to several kilobytes; past that, an edit inserts a sentence
/// somewhere inside it, or deletes one once it is over 12 KB.
fn revise(rng: &mut ChaCha20Rng, old: &str) -> String {
    if old.len() < 6_000 {
        return format!("{old} {}", text_in(rng, 300..1_200));
    }
    let cuts: Vec<usize> = old.match_indices(". ").map(|(i, _)| i + 2).collect();
    let Some(&at) = cuts.get(rng.random_range(0..cuts.len().max(1))) else {
        return format!("{old} {}", sentence(rng).trim_end());
    };
    if old.len() > 12_000 {
        let end = old[at..].find(". ").map_or(old.len(), |i| at + i + 2);
        return format!("{}{}", &old[..at], &old[end..]);
    }
    format!("{}{}{}", &old[..at], sentence(rng), &old[at..])
}

#[derive(Debug)]
struct Meeting {
    id: String,
    status: usize,
    items: Vec<(String, bool)>,
    minutes: bool,
}

#[derive(Debug)]
struct Item {
    id: String,
    owner: String,
    text: String,
}

/// The model of what exists, to make commands that make sense.
#[derive(Debug, Default)]
pub struct Model {
    meeting: Option<Meeting>,
    meetings: usize,
    obstacles: Vec<Item>,
    practices: Vec<Item>,
    experts: usize,
}

/// Documents keep receiving writes while they are among the most recent ones.
const ACTIVE: usize = 30;
/// Obstacles are edited by their reporters while they are among the most recent ones.
const EDITED: usize = ACTIVE * 3;

fn recent<'a, T>(rng: &mut ChaCha20Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        return None;
    }
    let from = items.len().saturating_sub(ACTIVE);
    items.get(rng.random_range(from..items.len()))
}

/// What the generator will try next, and what it updates once the entry is accepted.
#[derive(Debug)]
pub enum Effect {
    None,
    Convened,
    Status(usize),
    Minutes,
    Proposed,
    Decided(usize),
    Obstacle(String),
    Edited(usize, String),
    Practice,
    Expert,
}

fn stance(rng: &mut ChaCha20Rng) -> String {
    ["support", "support", "support", "object", "abstain"][rng.random_range(0..5)].to_owned()
}

/// Picks the command of `roll` (0 to 99) for `author`, or `None` when its precondition
/// does not hold now.
fn pick(
    rng: &mut ChaCha20Rng,
    model: &Model,
    author: &str,
    presidency: &str,
    today: &str,
    roll: u32,
) -> Option<(Command, &'static str, Effect)> {
    let pres = author == presidency;
    let open = model.meeting.as_ref();
    Some(match roll {
        0..=4 if pres => match open {
            None => (
                Command::MeetingConvene {
                    title: format!("Heads of SPOC, meeting {}", model.meetings + 1),
                    date: today.to_owned(),
                    venue: VENUES[rng.random_range(0..VENUES.len())].to_owned(),
                    format: Some("hybrid".into()),
                    end_date: None,
                    number: Some(model.meetings as u64 + 1),
                },
                "meeting_convene",
                Effect::Convened,
            ),
            Some(m) if m.status == 0 && m.items.len() < 6 => return None,
            Some(m) if m.status == 2 && !m.minutes => (
                Command::MeetingMinutes {
                    meeting: m.id.clone(),
                    text: text_in(rng, 1_500..6_000),
                    item: None,
                },
                "meeting_minutes",
                Effect::Minutes,
            ),
            Some(m) => (
                Command::MeetingStatus {
                    meeting: m.id.clone(),
                    status: spoc_node::docs::rules::MEETING_STATUSES[m.status + 1].to_owned(),
                },
                "meeting_status",
                Effect::Status(m.status + 1),
            ),
        },
        0..=9 => {
            let m = open.filter(|m| m.status == 0 && m.items.len() < 30)?;
            (
                Command::MeetingPropose {
                    meeting: m.id.clone(),
                    title: title(rng),
                    description: Some(text_in(rng, 80..400)),
                },
                "meeting_propose",
                Effect::Proposed,
            )
        }
        10..=12 => {
            let m = open.filter(|_| pres)?;
            let i = m.items.iter().position(|(_, decided)| !decided)?;
            let decision = ["accepted", "accepted", "deferred", "rejected"][rng.random_range(0..4)];
            (
                Command::MeetingDecide {
                    meeting: m.id.clone(),
                    item: m.items[i].0.clone(),
                    decision: decision.to_owned(),
                    reason: (decision == "rejected").then(|| sentence(rng).trim_end().to_owned()),
                },
                "meeting_decide",
                Effect::Decided(i),
            )
        }
        13..=15 => (
            Command::MeetingAttend {
                meeting: open?.id.clone(),
                present: rng.random_bool(0.9),
                delegates: Some(rng.random_range(1..4)),
            },
            "meeting_attend",
            Effect::None,
        ),
        16..=20 => {
            let m = open?;
            (
                Command::MeetingComment {
                    meeting: m.id.clone(),
                    text: text_in(rng, 60..500),
                    item: None,
                },
                "meeting_comment",
                Effect::None,
            )
        }
        21..=27 => {
            let description = text_in(rng, 300..2_000);
            (
                Command::ObstacleReport {
                    title: title(rng),
                    kind: if rng.random_bool(0.5) {
                        "legal"
                    } else {
                        "pragmatic"
                    }
                    .to_owned(),
                    description: description.clone(),
                    subtype: None,
                    instrument: Some("Council Framework Decision 2006/960/JHA".into()),
                    article: Some(format!("Article {}", rng.random_range(1..12))),
                    channel: Some("SIENA".into()),
                    states_concerned: vec![author.to_owned()],
                    impact: Some(rng.random_range(1..5)),
                    solution: None,
                },
                "obstacle_report",
                Effect::Obstacle(description),
            )
        }
        28..=41 => (
            Command::ObstacleEndorse {
                obstacle: recent(rng, &model.obstacles)?.id.clone(),
                stance: stance(rng),
                note: rng
                    .random_bool(0.3)
                    .then(|| sentence(rng).trim_end().to_owned()),
            },
            "obstacle_endorse",
            Effect::None,
        ),
        42..=55 | 90..=99 => (
            Command::ObstacleComment {
                obstacle: recent(rng, &model.obstacles)?.id.clone(),
                text: text_in(rng, 60..600),
            },
            "obstacle_comment",
            Effect::None,
        ),
        56..=61 => {
            let from = model.obstacles.len().saturating_sub(EDITED);
            let own: Vec<usize> = (from..model.obstacles.len())
                .filter(|i| model.obstacles[*i].owner == author)
                .collect();
            let i = *own.get(rng.random_range(0..own.len().max(1)))?;
            let description = revise(rng, &model.obstacles[i].text);
            (
                Command::ObstacleEdit {
                    obstacle: model.obstacles[i].id.clone(),
                    title: None,
                    description: Some(description.clone()),
                    solution: None,
                },
                "obstacle_edit",
                Effect::Edited(i, description),
            )
        }
        62..=63 => {
            let o = recent(rng, &model.obstacles)?;
            let status = if o.owner == author {
                "solution_proposed"
            } else if pres {
                ["triaged", "on_agenda"][rng.random_range(0..2)]
            } else {
                return None;
            };
            (
                Command::ObstacleStatus {
                    obstacle: o.id.clone(),
                    status: status.to_owned(),
                    reference: None,
                },
                "obstacle_status",
                Effect::None,
            )
        }
        64..=68 => (
            Command::PracticeShare {
                title: title(rng),
                problem: text_in(rng, 100..400),
                practice: text_in(rng, 300..1_500),
                prerequisites: Some(sentence(rng).trim_end().to_owned()),
                results: None,
                transferability: None,
                contact: Some(format!("spoc@{}.example", author.to_lowercase())),
                tags: vec!["siena".into(), "workflow".into()],
                related_obstacles: Vec::new(),
            },
            "practice_share",
            Effect::Practice,
        ),
        69..=76 => (
            Command::PracticeEndorse {
                practice: recent(rng, &model.practices)?.id.clone(),
                stance: stance(rng),
            },
            "practice_endorse",
            Effect::None,
        ),
        77..=84 => (
            Command::PracticeComment {
                practice: recent(rng, &model.practices)?.id.clone(),
                text: text_in(rng, 60..600),
            },
            "practice_comment",
            Effect::None,
        ),
        85..=87 => {
            let mut fields = BTreeMap::new();
            fields.insert("composition".to_owned(), text(rng, 120));
            fields.insert("languages".to_owned(), "EN, FR, DE".to_owned());
            fields.insert("notes".to_owned(), text_in(rng, 50..300));
            (
                Command::FactsheetSet { fields },
                "factsheet_set",
                Effect::None,
            )
        }
        _ => {
            if model.experts.is_multiple_of(2) {
                (
                    Command::TrainingNominate {
                        title: "Trainer on SIENA workflows".into(),
                        expertise: text(rng, 120),
                        languages: vec!["EN".into(), "FR".into()],
                    },
                    "training_nominate",
                    Effect::Expert,
                )
            } else {
                (
                    Command::TrainingOpportunity {
                        title: title(rng),
                        date: today.to_owned(),
                        description: text_in(rng, 200..800),
                    },
                    "training_opportunity",
                    Effect::Expert,
                )
            }
        }
    })
}

/// What `prepare` made (such as the signed entry), the item it made or changed, its
/// command, and its effect on the model.
pub type Written<T> = (T, String, &'static str, Effect);

/// Who writes the next entry, and when.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub author: &'a str,
    /// The Presidency on `today`.
    pub presidency: &'a str,
    /// The date of `now`, `YYYY-MM-DD`.
    pub today: &'a str,
    pub now: u64,
}

/// Writes one entry for the author of `turn`: picks commands (each from `roll`) until one
/// applies and `prepare` signs it; after 50 tries, a new obstacle, which always applies.
/// Commands refused before signing are counted in `refused`.
pub fn write_one<T>(
    rng: &mut ChaCha20Rng,
    model: &Model,
    turn: &Turn<'_>,
    roll: &mut dyn FnMut(&mut ChaCha20Rng) -> u32,
    refused: &mut usize,
    mut prepare: impl FnMut(&Command, ulid::Ulid) -> Result<(T, String), Refused>,
) -> Result<Written<T>> {
    let mut tries = 0;
    loop {
        tries += 1;
        let picked = if tries > 50 {
            // Nothing else applies: a new obstacle always does.
            let description = text(rng, 400);
            Some((
                Command::ObstacleReport {
                    title: title(rng),
                    kind: "pragmatic".into(),
                    description: description.clone(),
                    subtype: None,
                    instrument: None,
                    article: None,
                    channel: None,
                    states_concerned: Vec::new(),
                    impact: None,
                    solution: None,
                },
                "obstacle_report",
                Effect::Obstacle(description),
            ))
        } else {
            let r = roll(rng);
            pick(rng, model, turn.author, turn.presidency, turn.today, r)
        };
        let Some((command, kind, effect)) = picked else {
            continue;
        };
        let ulid = ulid::Ulid::from_parts(turn.now, rng.random::<u128>());
        match prepare(&command, ulid) {
            Ok((entry, item)) => return Ok((entry, item, kind, effect)),
            Err(why) => {
                *refused += 1;
                if tries > 60 {
                    bail!("the generator cannot write for {}: {why}", turn.author);
                }
            }
        }
    }
}

impl Model {
    /// A new Presidency takes office: the meeting its predecessor left open is no longer
    /// one it can move along, and it convenes its own.
    pub fn new_presidency(&mut self) {
        self.meeting = None;
    }

    /// The ids of the last `n` obstacles and practices.
    pub fn recent_items(&self, n: usize) -> (Vec<String>, Vec<String>) {
        let last = |items: &[Item]| {
            items[items.len().saturating_sub(n)..]
                .iter()
                .map(|i| i.id.clone())
                .collect()
        };
        (last(&self.obstacles), last(&self.practices))
    }

    /// Takes in the effect of an accepted entry of `author` that made or changed `item`.
    pub fn record(&mut self, effect: Effect, item: String, author: &str) {
        match effect {
            Effect::None => {}
            Effect::Convened => {
                self.meetings += 1;
                self.meeting = Some(Meeting {
                    id: item,
                    status: 0,
                    items: Vec::new(),
                    minutes: false,
                });
            }
            Effect::Status(s) => {
                if let Some(m) = self.meeting.as_mut() {
                    m.status = s;
                }
                if s + 1 == spoc_node::docs::rules::MEETING_STATUSES.len() {
                    self.meeting = None;
                }
            }
            Effect::Minutes => {
                if let Some(m) = self.meeting.as_mut() {
                    m.minutes = true;
                }
            }
            Effect::Proposed => {
                if let Some(m) = self.meeting.as_mut() {
                    m.items.push((item, false));
                }
            }
            Effect::Decided(i) => {
                if let Some(m) = self.meeting.as_mut() {
                    m.items[i].1 = true;
                }
            }
            Effect::Obstacle(text) => {
                self.obstacles.push(Item {
                    id: item,
                    owner: author.to_owned(),
                    text,
                });
                // Only the most recent obstacles are edited: older texts are let go, so
                // that a long history does not hold every description.
                if let Some(old) = self.obstacles.len().checked_sub(EDITED + 1) {
                    self.obstacles[old].text = String::new();
                }
            }
            Effect::Edited(i, text) => self.obstacles[i].text = text,
            Effect::Practice => self.practices.push(Item {
                id: item,
                owner: author.to_owned(),
                text: String::new(),
            }),
            Effect::Expert => self.experts += 1,
        }
    }
}

/// Who writes the history, and when.
#[derive(Debug)]
pub struct Setup<'a> {
    pub charter: Arc<Charter>,
    /// The writing states; the first holds the Presidency.
    pub authors: &'a [Author],
    pub today: time::Date,
    /// The fixed clock's start.
    pub base_ms: u64,
    pub seed: u64,
}

/// Generates `n` entries written by `authors` (the first is the Presidency), from
/// `base_ms` on, one every `STEP_MS`. After each prefix of `boundaries`, the state is
/// committed to a store in `dir` and copied aside, with every document saved.
pub fn generate(
    setup: &Setup<'_>,
    n: usize,
    boundaries: &BTreeSet<usize>,
    dir: &Path,
) -> Result<Workload> {
    let Setup {
        charter,
        authors,
        today,
        base_ms,
        seed,
    } = setup;
    let (today, base_ms, seed) = (*today, *base_ms, *seed);
    let Some(presidency) = authors.first().map(|a| a.code.clone()) else {
        bail!("no authors");
    };
    let today_text = today.to_string();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut replica = Replica::new(
        charter.clone(),
        Limits {
            max_pending_entries: usize::MAX,
            max_pending_bytes: usize::MAX,
            ..Limits::default()
        },
    );
    let mut model = Model::default();
    let mut work = Workload {
        charter: charter.clone(),
        entries: Vec::with_capacity(n),
        kinds: Vec::with_capacity(n),
        obstacles: Vec::new(),
        refused: 0,
        snapshots: BTreeMap::new(),
    };
    let store_path = dir.join("history.redb");
    let mut store = Some(Store::open(&store_path)?);
    let mut uncommitted = Report::default();
    for i in 0..n {
        let now = base_ms + i as u64 * STEP_MS;
        let author = &authors[rng.random_range(0..authors.len())];
        let turn = Turn {
            author: &author.code,
            presidency: &presidency,
            today: &today_text,
            now,
        };
        let (entry, item, kind, effect) = write_one(
            &mut rng,
            &model,
            &turn,
            &mut |rng| rng.random_range(0..100u32),
            &mut work.refused,
            |command, ulid| replica.prepare(&author.key, author.incarnation, command, now, ulid),
        )?;
        let report = replica
            .ingest_verified(vec![entry.clone()])
            .context("ingesting a generated entry")?;
        let mut report = report;
        if report.accepted.len() != 1 {
            bail!(
                "a generated {kind} entry was not accepted: {:?}",
                report.rejected
            );
        }
        uncommitted.accepted.append(&mut report.accepted);
        uncommitted.touched.append(&mut report.touched);
        if matches!(effect, Effect::Obstacle(_)) {
            work.obstacles.push((i, item.clone()));
        }
        model.record(effect, item, &author.code);
        work.entries.push(entry);
        work.kinds.push(kind);
        if boundaries.contains(&(i + 1)) {
            // The store is closed before it is copied, so the copy opens cleanly.
            if let Some(s) = store.take() {
                s.commit(&replica, &uncommitted)?;
            }
            uncommitted = Report::default();
            let copy = dir.join(format!("{}.redb", i + 1));
            copy_store(&store_path, &copy)?;
            store = Some(Store::open(&store_path)?);
            let docs = replica
                .docs()
                .map(|(id, d)| (id.to_string(), d.save()))
                .collect();
            work.snapshots.insert(i + 1, Snapshot { store: copy, docs });
        }
    }
    Ok(work)
}
