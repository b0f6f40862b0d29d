//! Who may write what: the rules, checked per Automerge operation.
//!
//! Each operation of a change touches an object that has a path inside its document. The
//! verdict depends only on the document id (its collection and owner), that path, the
//! operation and its value, the other values put by the same change, the author's kind and
//! code, and the charter's calendar at the entry's timestamp. It never depends on the
//! state of the document beyond the objects' paths, which are fixed when the objects are
//! made, so every node reaches the same verdict whatever else it has received.

use std::collections::HashMap;

use automerge::{ActorId, Automerge, Change, ReadDoc, ScalarValue};
use time::{Date, OffsetDateTime};

use super::{Collection, DocId};
use crate::charter::{Charter, Kind, Participant};

/// What a rule check knows of the entry.
#[derive(Debug)]
pub struct Context<'a> {
    pub charter: &'a Charter,
    pub doc: &'a DocId,
    pub author: &'a Participant,
    /// The log of the entry, whose author's key signed it, and its place in that log.
    pub log: crate::log::LogId,
    pub seq: u64,
    pub timestamp_ms: u64,
}

impl Context<'_> {
    fn is_owner(&self) -> bool {
        self.author.code == self.doc.owner()
    }

    fn date(&self) -> Option<Date> {
        date_of_ms(self.timestamp_ms)
    }

    /// The Presidency at the entry's timestamp.
    fn presidency(&self) -> Option<&str> {
        self.date()
            .and_then(|d| self.charter.presidency_at(d))
            .map(|t| t.state.as_str())
    }

    fn is_presidency(&self) -> bool {
        self.presidency() == Some(self.author.code.as_str())
    }

    /// `key` is the author's own: its code, or its code followed by `-`.
    fn owns_key(&self, key: &str) -> bool {
        key == self.author.code
            || key
                .strip_prefix(self.author.code.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// The calendar date of a unix time in milliseconds.
pub fn date_of_ms(ms: u64) -> Option<Date> {
    let secs = i64::try_from(ms / 1000).ok()?;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .map(|t| t.date())
}

/// Objects made by changes that were checked but are not yet applied, so that a batch of
/// changes can be checked before one `apply_changes` call.
#[derive(Debug, Default)]
pub struct Staged {
    created: HashMap<(u64, ActorId), Vec<String>>,
}

enum Action<'a> {
    Make,
    Delete,
    Put(&'a ScalarValue),
    Increment,
    Mark,
}

/// The statuses of a meeting, in the order of its lifecycle.
pub const MEETING_STATUSES: [&str; 5] = [
    "convened",
    "agenda_frozen",
    "held",
    "minutes_approved",
    "closed",
];
/// The decisions on an agenda item.
pub const AGENDA_STATUSES: [&str; 4] = ["proposed", "accepted", "deferred", "rejected"];
pub const OBSTACLE_STATUSES: [&str; 9] = [
    "reported",
    "triaged",
    "on_agenda",
    "solution_proposed",
    "endorsed",
    "escalated",
    "resolved",
    "closed_no_action",
    "withdrawn",
];
const OBSTACLE_OWNER_STATUSES: [&str; 3] = ["reported", "withdrawn", "solution_proposed"];
pub const STANCES: [&str; 3] = ["support", "object", "abstain"];
pub const EXPERT_STATUSES: [&str; 4] = ["nominated", "assessed", "listed", "retired"];

const MEETING_FIELDS: [&str; 10] = [
    "kind", "title", "number", "date", "end_date", "venue", "format", "term", "minutes", "created",
];
const OBSTACLE_FIELDS: [&str; 15] = [
    "kind",
    "title",
    "type",
    "subtype",
    "instrument",
    "article",
    "channel",
    "states_concerned",
    "description",
    "impact",
    "solution",
    "solution_level",
    "reporter",
    "created",
    "related_practices",
];
const PRACTICE_FIELDS: [&str; 15] = [
    "kind",
    "title",
    "source_states",
    "problem",
    "practice",
    "prerequisites",
    "results",
    "transferability",
    "tags",
    "contact",
    "review_date",
    "related_obstacles",
    "author",
    "created",
    "updated",
];
const TRAINING_FIELDS: [&str; 10] = [
    "kind",
    "title",
    "expertise",
    "languages",
    "description",
    "date",
    "organiser",
    "contact",
    "state",
    "created",
];

fn scalar_str(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Str(s) => Some(s.as_str()),
        _ => None,
    }
}

fn scalar_int(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int(i) => Some(*i),
        ScalarValue::Uint(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

/// Checks every operation of `change` against the rules of its document. `doc` holds the
/// change's causal past (its dependencies are applied or staged).
pub fn check(
    ctx: &Context<'_>,
    doc: &Automerge,
    staged: &mut Staged,
    change: &Change,
) -> Result<(), String> {
    let mut made = Vec::new();
    let verdict = check_ops(ctx, doc, staged, change, &mut made);
    if verdict.is_err() {
        // A refused change is never applied: the objects it made must not resolve for the
        // changes checked after it, which would pass here and then fail to apply.
        for (key, previous) in made.into_iter().rev() {
            match previous {
                Some(path) => staged.created.insert(key, path),
                None => staged.created.remove(&key),
            };
        }
    }
    verdict
}

/// The objects a change made in `Staged`, with what each key held before.
type Made = Vec<((u64, ActorId), Option<Vec<String>>)>;

fn check_ops(
    ctx: &Context<'_>,
    doc: &Automerge,
    staged: &mut Staged,
    change: &Change,
    made: &mut Made,
) -> Result<(), String> {
    let creating = change.deps().is_empty();
    if creating && !ctx.is_owner() {
        return Err(format!(
            "only {} may create {}",
            ctx.doc.owner(),
            ctx.doc.as_str()
        ));
    }
    let expanded = change.decode();
    let start = change.start_op().get();
    let actor = change.actor_id().clone();

    // The values this change puts, by path, for rules that tie two fields together.
    let mut paths = Vec::with_capacity(expanded.operations.len());
    let mut puts: HashMap<String, ScalarValue> = HashMap::new();
    // A text edit holds one operation per character, all on the same object: each object's
    // path is resolved once per change.
    let mut resolved: HashMap<&automerge::legacy::ObjectId, Vec<String>> = HashMap::new();
    for (i, op) in expanded.operations.iter().enumerate() {
        let mut segs = match resolved.get(&op.obj) {
            Some(path) => path.clone(),
            None => {
                let path = resolve(doc, staged, &op.obj)?;
                resolved.insert(&op.obj, path.clone());
                path
            }
        };
        segs.push(match &op.key {
            automerge::legacy::Key::Map(k) => k.to_string(),
            automerge::legacy::Key::Seq(_) => "#".to_owned(),
        });
        if let automerge::legacy::OpType::Make(_) = op.action {
            let key = (start + i as u64, actor.clone());
            let previous = staged.created.insert(key.clone(), segs.clone());
            made.push((key, previous));
        }
        if let automerge::legacy::OpType::Put(v) = &op.action {
            puts.insert(segs.join("/"), v.clone());
        }
        paths.push(segs);
    }
    for (op, segs) in expanded.operations.iter().zip(&paths) {
        let action = match &op.action {
            automerge::legacy::OpType::Make(_) => Action::Make,
            automerge::legacy::OpType::Delete => Action::Delete,
            automerge::legacy::OpType::Put(v) => Action::Put(v),
            automerge::legacy::OpType::Increment(_) => Action::Increment,
            automerge::legacy::OpType::MarkBegin(_) | automerge::legacy::OpType::MarkEnd(_) => {
                Action::Mark
            }
        };
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        check_op(ctx, &segs, &action, creating, &puts)?;
    }
    if creating {
        check_creation(ctx, &puts)?;
    }
    Ok(())
}

/// The path of the object an operation targets, from the root.
fn resolve(
    doc: &Automerge,
    staged: &Staged,
    obj: &automerge::legacy::ObjectId,
) -> Result<Vec<String>, String> {
    let id = match obj {
        automerge::legacy::ObjectId::Root => return Ok(Vec::new()),
        automerge::legacy::ObjectId::Id(id) => id,
    };
    if let Some(path) = staged.created.get(&(id.counter(), id.actor().clone())) {
        return Ok(path.clone());
    }
    let text = format!("{}@{}", id.counter(), id.actor());
    let (exid, _) = doc
        .import(&text)
        .map_err(|_| format!("operation on unknown object {text}"))?;
    let parents = doc
        .parents(&exid)
        .map_err(|_| format!("operation on unknown object {text}"))?;
    Ok(parents
        .path()
        .into_iter()
        .map(|(_, prop)| match prop {
            automerge::Prop::Map(k) => k,
            automerge::Prop::Seq(_) => "#".to_owned(),
        })
        .collect())
}

fn check_op(
    ctx: &Context<'_>,
    segs: &[&str],
    action: &Action<'_>,
    creating: bool,
    puts: &HashMap<String, ScalarValue>,
) -> Result<(), String> {
    let owner = ctx.doc.owner();
    let item = ctx.doc.collection().item();
    let me = ctx.author.code.as_str();
    let owner_only = |what: &str| -> Result<(), String> {
        if ctx.is_owner() {
            Ok(())
        } else {
            Err(format!("only {owner} may change the {what} of its {item}"))
        }
    };
    // Containers are made once, by the creating change, and never replaced or deleted.
    let container = || -> Result<(), String> {
        if creating && ctx.is_owner() && matches!(action, Action::Make) {
            Ok(())
        } else {
            Err(format!("the {} of a {item} cannot be replaced", segs[0]))
        }
    };
    let put_str = || match action {
        Action::Put(v) => scalar_str(v),
        _ => None,
    };
    match ctx.doc.collection() {
        Collection::Factsheets => {
            if ctx.is_owner() {
                Ok(())
            } else {
                Err(format!("only {owner} may write its fact sheet"))
            }
        }
        Collection::Keys => {
            use super::keys::{FROM, KEEP, Keep, NODES_REVOKED, ROTATIONS};
            if !ctx.is_owner() {
                return Err(format!("only {owner} rotates its keys"));
            }
            match (segs, action) {
                ([field], Action::Put(_)) if ["kind", "created", "state"].contains(field) => {
                    if creating {
                        Ok(())
                    } else {
                        Err(format!("the {field} of a key record is written once"))
                    }
                }
                // Either map may come after the record (a record made for the other);
                // copies made concurrently are read together.
                ([field], Action::Make) if *field == ROTATIONS || *field == NODES_REVOKED => Ok(()),
                ([field, peer], Action::Put(v)) if *field == NODES_REVOKED => {
                    if !super::keys::is_peer_id(peer) {
                        return Err(format!("{peer:?} is not a node's peer id"));
                    }
                    if scalar_int(v).is_none() {
                        return Err("a node's revocation holds when it was made".into());
                    }
                    Ok(())
                }
                ([field, to], Action::Make) if *field == ROTATIONS => {
                    let to: crate::identity::PublicKey = to
                        .parse()
                        .map_err(|_| format!("a rotation names a key, not {to:?}"))?;
                    if to == ctx.log.author {
                        return Err("a rotation names a new key".into());
                    }
                    Ok(())
                }
                ([field, _, FROM], Action::Put(v)) if *field == ROTATIONS => {
                    if scalar_str(v) == Some(ctx.log.author.to_string().as_str()) {
                        Ok(())
                    } else {
                        Err("a rotation is signed with the key it retires".into())
                    }
                }
                ([field, _, KEEP], Action::Put(v)) if *field == ROTATIONS => {
                    let keep: Keep = scalar_str(v)
                        .ok_or("a rotation's points are a string")?
                        .parse()
                        .map_err(|e| format!("a rotation's points: {e}"))?;
                    // A rotation that retired itself would undo itself when cut.
                    if keep.keeps(ctx.log.incarnation, ctx.seq) {
                        Ok(())
                    } else {
                        Err("a rotation's points keep the entry that makes it".into())
                    }
                }
                _ => Err(format!(
                    "a key record holds rotations, which are never removed or changed: not {}",
                    segs.join("/")
                )),
            }
        }
        Collection::Amendments => {
            use super::amendments::{AMENDS, FIELDS, SIGNATURES, TEXT};
            match (segs, action) {
                ([field], Action::Put(v)) if FIELDS.contains(field) => {
                    if !(creating && ctx.is_owner()) {
                        return Err(format!(
                            "the {field} of an amendment is written once, when it is proposed"
                        ));
                    }
                    match *field {
                        AMENDS if scalar_int(v).is_none_or(|n| u32::try_from(n).is_err()) => {
                            Err("an amendment names the version it amends as a number".into())
                        }
                        TEXT => {
                            let text = scalar_str(v).ok_or("an amendment's text is a string")?;
                            super::amendments::check_text(text, &ctx.charter.network)
                        }
                        _ => Ok(()),
                    }
                }
                ([field], Action::Make) if *field == SIGNATURES => container(),
                ([field, code], Action::Put(v)) if *field == SIGNATURES => {
                    if *code != me {
                        return Err(format!("only {code} may sign for {code}"));
                    }
                    if ctx.author.kind != Kind::MemberState {
                        return Err(format!(
                            "only member states sign amendments, and {me} is {}",
                            ctx.author.kind
                        ));
                    }
                    if scalar_str(v).is_none_or(|d| d.len() != 32) {
                        return Err("a signature names the digest of what it signs".into());
                    }
                    Ok(())
                }
                _ => Err(format!(
                    "an amendment holds what it amends, its text and its signatures, and none is removed or changed: not {}",
                    segs.join("/")
                )),
            }
        }
        Collection::Addresses => {
            if !ctx.is_owner() {
                return Err(format!("only {owner} may publish its nodes' addresses"));
            }
            match (segs, action) {
                ([field], Action::Put(v)) if *field == super::addresses::FIELD => {
                    let text = scalar_str(v).ok_or("addresses are one string")?;
                    super::addresses::parse(text).map(|_| ())
                }
                ([field], Action::Put(_))
                    if ["state", "updated", "kind", "created"].contains(field) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "an address record holds only its state, its addresses and when they were updated, not {}",
                    segs.join("/")
                )),
            }
        }
        Collection::Meetings => {
            match segs {
                ["status"] => {
                    let presidency = owner;
                    if !ctx.is_owner() {
                        return Err(format!(
                            "only the Presidency ({presidency}) that convened the meeting may change its status"
                        ));
                    }
                    match put_str() {
                    Some(s) if MEETING_STATUSES.contains(&s) => Ok(()),
                    _ => Err("a meeting status is one of convened, agenda_frozen, held, minutes_approved, closed".into()),
                }
                }
                ["date"] => {
                    if !ctx.is_owner() {
                        return Err(format!(
                            "only the Presidency ({owner}) may change the meeting's date"
                        ));
                    }
                    let date = put_str()
                        .and_then(|s| {
                            Date::parse(s, &time::format_description::well_known::Iso8601::DATE)
                                .ok()
                        })
                        .ok_or("a meeting date is YYYY-MM-DD")?;
                    match ctx.charter.presidency_at(date) {
                        Some(t) if t.state == me => Ok(()),
                        Some(t) => Err(format!(
                            "only the Presidency ({}) may convene a meeting",
                            t.state
                        )),
                        None => Err(format!("no Presidency is in the calendar for {date}")),
                    }
                }
                ["agenda" | "attendance" | "comments" | "actions"] => container(),
                [field, ..] if MEETING_FIELDS.contains(field) => owner_only(field),
                ["agenda", key] => {
                    if ctx.owns_key(key) {
                        Ok(())
                    } else {
                        Err(format!("an agenda item of {me} must be named {me}-..."))
                    }
                }
                ["agenda", key, "status"] => {
                    let value = put_str().unwrap_or_default();
                    if !AGENDA_STATUSES.contains(&value) {
                        return Err("an agenda item status is one of proposed, accepted, deferred, rejected".into());
                    }
                    if value == "proposed" && ctx.owns_key(key) {
                        return Ok(());
                    }
                    if !ctx.is_owner() {
                        return Err(format!(
                            "only the Presidency ({owner}) may accept, defer or reject an agenda item"
                        ));
                    }
                    let reason = puts
                        .get(&format!("agenda/{key}/reason"))
                        .and_then(scalar_str)
                        .is_some_and(|r| !r.trim().is_empty());
                    if value == "rejected" && !reason {
                        return Err("an agenda item is rejected only with a reason".into());
                    }
                    Ok(())
                }
                ["agenda", _, "reason" | "minutes"] => owner_only("decision"),
                ["agenda", key, _field, ..] => {
                    if ctx.owns_key(key) {
                        Ok(())
                    } else {
                        Err(format!("only the proposer may edit agenda item {key}"))
                    }
                }
                ["attendance", code, ..] => {
                    if *code == me {
                        Ok(())
                    } else {
                        Err(format!("only {code} may record {code}'s attendance"))
                    }
                }
                ["comments", key, ..] => {
                    if ctx.owns_key(key) {
                        Ok(())
                    } else {
                        Err(format!("a comment of {me} must be named {me}-..."))
                    }
                }
                ["actions", ..] => owner_only("actions"),
                _ => Err(format!("unknown field {} in a meeting", segs.join("/"))),
            }
        }
        Collection::Obstacles | Collection::Practices => {
            let fields: &[&str] = if ctx.doc.collection() == Collection::Obstacles {
                &OBSTACLE_FIELDS
            } else {
                &PRACTICE_FIELDS
            };
            let role = if ctx.doc.collection() == Collection::Obstacles {
                "reporter"
            } else {
                "author"
            };
            match segs {
                ["endorsements" | "comments"] => container(),
                ["status"] if ctx.doc.collection() == Collection::Obstacles => {
                    obstacle_status(ctx, put_str(), puts)
                }
                ["status_ref"] if ctx.doc.collection() == Collection::Obstacles => {
                    if ctx.is_presidency() {
                        Ok(())
                    } else {
                        Err("only the Presidency may set an obstacle's minutes reference".into())
                    }
                }
                ["type"] if ctx.doc.collection() == Collection::Obstacles => {
                    owner_only("type")?;
                    match put_str() {
                        Some("legal" | "pragmatic") => Ok(()),
                        _ => Err("an obstacle type is legal or pragmatic".into()),
                    }
                }
                ["impact"] if ctx.doc.collection() == Collection::Obstacles => {
                    owner_only("impact")?;
                    match action {
                        Action::Put(v) if scalar_int(v).is_some_and(|i| (1..=4).contains(&i)) => {
                            Ok(())
                        }
                        Action::Delete => Ok(()),
                        _ => Err("an obstacle impact is 1 to 4".into()),
                    }
                }
                [field, ..] if fields.contains(field) => {
                    if ctx.is_owner() {
                        Ok(())
                    } else {
                        Err(format!(
                            "only the {role} ({owner}) may edit the {item}'s {field}"
                        ))
                    }
                }
                ["endorsements", code, ..] => {
                    if ctx.author.kind == Kind::Observer {
                        return Err(format!("an observer ({me}) may not endorse"));
                    }
                    if *code != me {
                        return Err(format!("only {code} may endorse for {code}"));
                    }
                    if segs.len() == 3 && segs[2] == "stance" {
                        match put_str() {
                            Some(s) if STANCES.contains(&s) => {}
                            _ => return Err("a stance is support, object or abstain".into()),
                        }
                    }
                    Ok(())
                }
                ["comments", key, ..] => {
                    if ctx.owns_key(key) {
                        Ok(())
                    } else {
                        Err(format!("a comment of {me} must be named {me}-..."))
                    }
                }
                _ => Err(format!("unknown field {} in a {item}", segs.join("/"))),
            }
        }
        Collection::Training => match segs {
            ["assessments"] => container(),
            ["status"] => {
                let value = put_str().unwrap_or_default();
                if !EXPERT_STATUSES.contains(&value) {
                    return Err(
                        "a training status is one of nominated, assessed, listed, retired".into(),
                    );
                }
                let core = ctx.charter.in_core_group(me) && ctx.author.kind.is_state();
                match value {
                    "nominated" | "retired" if ctx.is_owner() => Ok(()),
                    "assessed" | "listed" | "retired" if core => Ok(()),
                    _ => Err(format!(
                        "only the training core group may set an expert's status to {value}"
                    )),
                }
            }
            [field, ..] if TRAINING_FIELDS.contains(field) => owner_only(field),
            ["assessments", code, ..] => {
                if !ctx.charter.in_core_group(me) {
                    return Err(format!(
                        "only the training core group may assess ({me} is not in it)"
                    ));
                }
                if *code != me {
                    return Err(format!("only {code} may write {code}'s assessment"));
                }
                Ok(())
            }
            _ => Err(format!(
                "unknown field {} in a training item",
                segs.join("/")
            )),
        },
    }
}

fn obstacle_status(
    ctx: &Context<'_>,
    value: Option<&str>,
    puts: &HashMap<String, ScalarValue>,
) -> Result<(), String> {
    let value = value.unwrap_or_default();
    if !OBSTACLE_STATUSES.contains(&value) {
        return Err(format!("unknown obstacle status {value:?}"));
    }
    let presidency = ctx.presidency().unwrap_or("none").to_owned();
    let by_owner = ctx.is_owner() && OBSTACLE_OWNER_STATUSES.contains(&value);
    let by_presidency = ctx.is_presidency() && value != "reported" && value != "withdrawn";
    if !by_owner && !by_presidency {
        return Err(if OBSTACLE_OWNER_STATUSES.contains(&value) {
            format!(
                "only the reporter ({}) may set an obstacle's status to {value}",
                ctx.doc.owner()
            )
        } else {
            format!("only the Presidency ({presidency}) may set an obstacle's status to {value}")
        });
    }
    if matches!(value, "resolved" | "closed_no_action") {
        let reference = puts.get("status_ref").and_then(scalar_str);
        if !reference.is_some_and(is_minutes_ref) {
            return Err(format!(
                "the Presidency sets an obstacle {value} only with a reference to a meeting's minutes item (meetings/STATE/ID#ITEM)"
            ));
        }
    }
    Ok(())
}

/// `meetings/STATE/ULID#ITEM`: a reference to an agenda item in a meeting's minutes.
pub fn is_minutes_ref(s: &str) -> bool {
    let Some((doc, item)) = s.split_once('#') else {
        return false;
    };
    !item.is_empty()
        && doc
            .parse::<DocId>()
            .is_ok_and(|d| d.collection() == Collection::Meetings)
}

/// Rules on the change that creates a document.
fn check_creation(ctx: &Context<'_>, puts: &HashMap<String, ScalarValue>) -> Result<(), String> {
    if ctx.doc.collection() == Collection::Meetings && !puts.contains_key("date") {
        return Err("a meeting is convened with a date".into());
    }
    if ctx.doc.collection() == Collection::Amendments
        && !(puts.contains_key(super::amendments::AMENDS)
            && puts.contains_key(super::amendments::TEXT))
    {
        return Err("an amendment is proposed with the version it amends and its text".into());
    }
    if ctx.doc.collection() == Collection::Training
        && puts.get("kind").and_then(scalar_str) == Some("expert")
        && puts.get("status").and_then(scalar_str) != Some("nominated")
    {
        return Err("an expert enters the pool as nominated".into());
    }
    Ok(())
}
