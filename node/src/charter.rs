//! The charter: who takes part in a network, with which keys, and who holds the Presidency.
//!
//! A charter is parsed from `charter.toml`, validated completely (an error names the line
//! and the problem), and hashed over a canonical form, so that two nodes with the same
//! participants, keys, calendar and rules agree on the hash whatever the file's layout.
//! This module does no IO: callers hand it the file's text.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Month};

use crate::identity::{PublicKey, Scope};

/// The reference data of the European network of Heads of SPOC.
pub const REFERENCE: &str = include_str!("../data/network.toml");

/// The id of the real network, used by the template.
pub const DEFAULT_NETWORK: &str = "eu-heads-of-spoc";

/// The newest version of the rules that this build enforces, and the one of the charters it
/// writes. Version 2 signs entries and node certificates for the genesis charter's hash
/// (`Charter::scope`); version 1, for the network's name alone. Version 3 adds honest time
/// (`Charter::honest_time`). The document rules are otherwise the same in all three.
pub const RULES_VERSION: u32 = 3;

const DOMAIN_CHARTER: &str = "spocnet/charter/v1";
const DOMAIN_GENESIS: &str = "spocnet/charter-genesis/v1";

/// A charter that failed to parse or validate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("charter line {line}: {message}")]
    At { line: usize, message: String },
    #[error("charter: {0}")]
    Whole(String),
}

/// What a participant may do follows from its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    MemberState,
    SchengenAssociated,
    Observer,
}

impl Kind {
    /// Member states and Schengen associated states are full participants.
    pub fn is_state(self) -> bool {
        matches!(self, Kind::MemberState | Kind::SchengenAssociated)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::MemberState => "member_state",
            Kind::SchengenAssociated => "schengen_associated",
            Kind::Observer => "observer",
        })
    }
}

/// One participant of the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Participant {
    pub code: String,
    pub name: String,
    pub kind: Kind,
    /// The national public key; a participant without one is listed but cannot sign.
    pub key: Option<PublicKey>,
    /// Where its node listens, as multiaddrs.
    pub addresses: Vec<String>,
}

/// A national key that an amendment revoked after a compromise: its entries past `keep`
/// are refused on every node and cut where they were taken in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Revoked {
    pub key: PublicKey,
    #[serde(serialize_with = "keep_text")]
    pub keep: crate::docs::keys::Keep,
}

fn keep_text<S: serde::Serializer>(
    keep: &crate::docs::keys::Keep,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&keep.to_string())
}

/// One Presidency term, both dates included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Term {
    pub state: String,
    pub from: Date,
    pub to: Date,
}

impl Term {
    pub fn contains(&self, date: Date) -> bool {
        self.from <= date && date <= self.to
    }

    /// The half-year label of the term, `YYYY-H1` or `YYYY-H2`.
    pub fn label(&self) -> String {
        half_year_label(self.from)
    }
}

/// The label of the half-year that holds `date`.
pub fn half_year_label(date: Date) -> String {
    let half = if u8::from(date.month()) <= 6 { 1 } else { 2 };
    format!("{}-H{half}", date.year())
}

/// Parses `YYYY-H1` or `YYYY-H2` into the first and last day of that half-year.
pub fn parse_half_year(label: &str) -> Option<(Date, Date)> {
    let (year, half) = label.split_once("-H")?;
    let year: i32 = year.parse().ok()?;
    let (from, to) = match half {
        "1" => ((Month::January, 1), (Month::June, 30)),
        "2" => ((Month::July, 1), (Month::December, 31)),
        _ => return None,
    };
    Some((
        Date::from_calendar_date(year, from.0, from.1).ok()?,
        Date::from_calendar_date(year, to.0, to.1).ok()?,
    ))
}

/// The share of the member states whose signatures an amendment needs when a charter
/// sets none: two thirds.
pub const DEFAULT_THRESHOLD: Threshold = Threshold { num: 2, den: 3 };

/// The share of the member states that must sign an amendment, as a fraction above one
/// half: two amendments of one version can then never both reach it unless some state
/// signs both, which an honest node never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub num: u32,
    pub den: u32,
}

impl Threshold {
    /// Of `members` member states, how many signatures reach the threshold (rounded up).
    pub fn of(self, members: usize) -> usize {
        let members = members as u64;
        usize::try_from((members * u64::from(self.num)).div_ceil(u64::from(self.den)))
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("amendment_threshold {s:?} must be a fraction N/D above 1/2 and at most 1");
        let (n, d) = s.split_once('/').ok_or_else(bad)?;
        let num: u32 = n.trim().parse().map_err(|_| bad())?;
        let den: u32 = d.trim().parse().map_err(|_| bad())?;
        if den == 0 || den > 1000 || num > den || 2 * u64::from(num) <= u64::from(den) {
            return Err(bad());
        }
        Ok(Threshold { num, den })
    }
}

/// A validated charter: the genesis charter (version 0), read from `charter.toml`, or an
/// amendment of it that the member states signed (`Charter::amend`).
#[derive(Clone, Debug)]
pub struct Charter {
    pub network: String,
    pub rules_version: u32,
    pub participants: Vec<Participant>,
    pub presidency: Vec<Term>,
    pub training_core_group: Vec<String>,
    /// The share of member states an amendment of this version needs; `None` is
    /// [`DEFAULT_THRESHOLD`], and leaves the hash as charters without the field had it.
    pub amendment_threshold: Option<Threshold>,
    /// Keys revoked by amendments, with how far each of their logs stays valid.
    pub revoked: Vec<Revoked>,
    /// 0 for the genesis charter, and one more for each amendment in force after it.
    pub version: u32,
    hash: [u8; 32],
    genesis: [u8; 32],
    by_code: HashMap<String, usize>,
    by_key: HashMap<PublicKey, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCharter {
    network: Option<String>,
    rules_version: Option<u32>,
    #[serde(default)]
    training_core_group: Vec<String>,
    amendment_threshold: Option<String>,
    #[serde(default)]
    participants: Vec<toml::Spanned<RawParticipant>>,
    #[serde(default)]
    presidency: Vec<toml::Spanned<RawTerm>>,
    #[serde(default)]
    revoked: Vec<toml::Spanned<RawRevoked>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    key: String,
    keep: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParticipant {
    code: String,
    name: String,
    kind: String,
    key: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTerm {
    state: String,
    from: toml::value::Datetime,
    to: toml::value::Datetime,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_date(d: &toml::value::Datetime) -> Result<Date, String> {
    match (d.date, d.time) {
        (Some(date), None) => Month::try_from(date.month)
            .ok()
            .and_then(|m| Date::from_calendar_date(i32::from(date.year), m, date.day).ok())
            .ok_or_else(|| format!("invalid date {d}")),
        _ => Err(format!("{d} is not a plain date (YYYY-MM-DD)")),
    }
}

fn valid_code(code: &str) -> bool {
    (2..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn valid_network_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Charter {
    /// Parses and validates a charter file's text.
    pub fn parse(text: &str) -> Result<Charter, Error> {
        let raw: RawCharter = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => Error::At {
                    line: line_of(text, span.start),
                    message,
                },
                None => Error::Whole(message),
            }
        })?;
        let network = raw
            .network
            .ok_or_else(|| Error::Whole("missing network id (network = \"...\")".into()))?;
        if !valid_network_id(&network) {
            return Err(Error::Whole(format!(
                "network id {network:?} must be 1-64 characters of a-z, 0-9, '-' and '.'"
            )));
        }
        let rules_version = raw
            .rules_version
            .ok_or_else(|| Error::Whole("missing rules_version".into()))?;
        if !(1..=RULES_VERSION).contains(&rules_version) {
            return Err(Error::Whole(format!(
                "rules_version {rules_version} is not supported by this build (it enforces 1 to {RULES_VERSION})"
            )));
        }
        if raw.participants.is_empty() {
            return Err(Error::Whole("no participants".into()));
        }

        let mut participants = Vec::with_capacity(raw.participants.len());
        let mut by_code = HashMap::new();
        let mut by_key = HashMap::new();
        let mut seen_addresses = BTreeSet::new();
        for spanned in &raw.participants {
            let line = line_of(text, spanned.span().start);
            let at = |message: String| Error::At { line, message };
            let p = spanned.get_ref();
            if !valid_code(&p.code) {
                return Err(at(format!(
                    "participant code {:?} must be 2-8 capital letters",
                    p.code
                )));
            }
            if p.name.trim().is_empty() {
                return Err(at(format!("participant {} has no name", p.code)));
            }
            let kind = match p.kind.as_str() {
                "member_state" => Kind::MemberState,
                "schengen_associated" => Kind::SchengenAssociated,
                "observer" => Kind::Observer,
                other => {
                    return Err(at(format!(
                        "participant {}: unknown kind {other:?} (member_state, schengen_associated or observer)",
                        p.code
                    )));
                }
            };
            let key = match &p.key {
                None => None,
                Some(k) => Some(
                    k.parse::<PublicKey>()
                        .map_err(|_| at(format!("participant {}: malformed key {k:?}", p.code)))?,
                ),
            };
            for a in &p.addresses {
                if !a.starts_with('/') || a.len() > 256 {
                    return Err(at(format!(
                        "participant {}: address {a:?} is not a multiaddr",
                        p.code
                    )));
                }
                if !seen_addresses.insert(a.clone()) {
                    return Err(at(format!(
                        "participant {}: address {a} is already another participant's",
                        p.code
                    )));
                }
            }
            let index = participants.len();
            if by_code.insert(p.code.clone(), index).is_some() {
                return Err(at(format!("duplicate participant code {}", p.code)));
            }
            if let Some(k) = key
                && by_key.insert(k, index).is_some()
            {
                return Err(at(format!(
                    "participant {}: key is already another participant's",
                    p.code
                )));
            }
            participants.push(Participant {
                code: p.code.clone(),
                name: p.name.clone(),
                kind,
                key,
                addresses: p.addresses.clone(),
            });
        }

        let mut presidency: Vec<Term> = Vec::with_capacity(raw.presidency.len());
        for spanned in &raw.presidency {
            let line = line_of(text, spanned.span().start);
            let at = |message: String| Error::At { line, message };
            let t = spanned.get_ref();
            let from = toml_date(&t.from).map_err(&at)?;
            let to = toml_date(&t.to).map_err(&at)?;
            match by_code.get(&t.state).map(|i| participants[*i].kind) {
                Some(Kind::MemberState) => {}
                Some(kind) => {
                    return Err(at(format!(
                        "Presidency held by {} ({kind}): only a member state holds the Presidency",
                        t.state
                    )));
                }
                None => {
                    return Err(at(format!(
                        "Presidency held by {}, which is not a participant",
                        t.state
                    )));
                }
            }
            if to < from {
                return Err(at(format!("term of {} ends before it begins", t.state)));
            }
            if let Some(prev) = presidency.last() {
                if from <= prev.to {
                    return Err(at(format!(
                        "term of {} from {from} overlaps the term of {} to {}",
                        t.state, prev.state, prev.to
                    )));
                }
                if prev.to.next_day() != Some(from) {
                    return Err(at(format!(
                        "gap in the Presidency calendar between {} and {from}",
                        prev.to
                    )));
                }
            }
            presidency.push(Term {
                state: t.state.clone(),
                from,
                to,
            });
        }

        for code in &raw.training_core_group {
            match by_code.get(code).map(|i| participants[*i].kind) {
                Some(k) if k.is_state() => {}
                _ => {
                    return Err(Error::Whole(format!(
                        "training core group member {code} is not a participating state"
                    )));
                }
            }
        }

        let mut revoked = Vec::with_capacity(raw.revoked.len());
        for spanned in &raw.revoked {
            let line = line_of(text, spanned.span().start);
            let at = |message: String| Error::At { line, message };
            let r = spanned.get_ref();
            let key: PublicKey = r
                .key
                .parse()
                .map_err(|_| at(format!("revoked key {:?} is malformed", r.key)))?;
            if let Some(i) = by_key.get(&key) {
                return Err(at(format!(
                    "revoked key {key} is {}'s key in this charter",
                    participants[*i].code
                )));
            }
            let keep = r
                .keep
                .parse()
                .map_err(|e| at(format!("revoked key {key}: {e}")))?;
            revoked.push(Revoked { key, keep });
        }
        let amendment_threshold = raw
            .amendment_threshold
            .as_deref()
            .map(str::parse::<Threshold>)
            .transpose()
            .map_err(Error::Whole)?;
        let mut charter = Charter {
            network,
            rules_version,
            participants,
            presidency,
            training_core_group: raw.training_core_group,
            amendment_threshold,
            revoked,
            version: 0,
            hash: [0; 32],
            genesis: [0; 32],
            by_code,
            by_key,
        };
        charter.hash = charter.compute_hash(DOMAIN_CHARTER, true);
        charter.genesis = charter.compute_hash(DOMAIN_GENESIS, false);
        Ok(charter)
    }

    /// The hash of the canonical form under `domain`; `addresses` says whether the nodes'
    /// addresses count.
    fn compute_hash(&self, domain: &str, addresses: bool) -> [u8; 32] {
        #[derive(Serialize)]
        struct Canonical<'a> {
            network: &'a str,
            rules_version: u32,
            participants: &'a [Participant],
            presidency: Vec<(String, String, String)>,
            training_core_group: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            amendment_threshold: Option<String>,
            #[serde(skip_serializing_if = "<[Revoked]>::is_empty")]
            revoked: &'a [Revoked],
        }
        let without_addresses: Vec<Participant>;
        let participants = if addresses {
            &self.participants
        } else {
            without_addresses = self
                .participants
                .iter()
                .map(|p| Participant {
                    addresses: Vec::new(),
                    ..p.clone()
                })
                .collect();
            &without_addresses
        };
        let canonical = Canonical {
            network: &self.network,
            rules_version: self.rules_version,
            participants,
            presidency: self
                .presidency
                .iter()
                .map(|t| (t.state.clone(), t.from.to_string(), t.to.to_string()))
                .collect(),
            training_core_group: &self.training_core_group,
            amendment_threshold: self.amendment_threshold.map(|t| t.to_string()),
            revoked: &self.revoked,
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(domain.as_bytes());
        // Serialising plain structs of strings to JSON cannot fail.
        hasher.update(&serde_json::to_vec(&canonical).unwrap_or_default());
        *hasher.finalize().as_bytes()
    }

    /// The charter that an amendment's `text` makes of this one: the next version, of the
    /// same network, signed for the same genesis. An amendment may change anything but
    /// the network's name, and may not lower the rules version.
    pub fn amend(&self, text: &str) -> Result<Charter, Error> {
        let mut next = Charter::parse(text)?;
        if next.network != self.network {
            return Err(Error::Whole(format!(
                "an amendment of network {} cannot rename it {}",
                self.network, next.network
            )));
        }
        if next.rules_version < self.rules_version {
            return Err(Error::Whole(format!(
                "an amendment cannot lower the rules version from {} to {}",
                self.rules_version, next.rules_version
            )));
        }
        next.version = self
            .version
            .checked_add(1)
            .ok_or_else(|| Error::Whole("no version after this one".into()))?;
        next.genesis = self.genesis;
        Ok(next)
    }

    /// The share of member states that an amendment of this version needs.
    pub fn threshold(&self) -> Threshold {
        self.amendment_threshold.unwrap_or(DEFAULT_THRESHOLD)
    }

    /// The member states, whose signatures count for an amendment of this version.
    pub fn member_states(&self) -> impl Iterator<Item = &Participant> {
        self.participants
            .iter()
            .filter(|p| p.kind == Kind::MemberState)
    }

    /// How many member states' signatures an amendment of this version needs.
    pub fn required_signatures(&self) -> usize {
        self.threshold().of(self.member_states().count())
    }

    /// The hash of this version's content: peers whose hash differs do not sync unless
    /// they compare genesis hashes (every build since rules version 2 does).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// What this network's entries and node certificates are signed for: from rules
    /// version 2 on, the genesis hash, the hash of everything in this charter but the
    /// nodes' addresses (which move without changing the network's identity or its
    /// history's signatures); under version 1, the network's name alone, as the stores and
    /// networks of that version were signed.
    pub fn scope(&self) -> Scope {
        if self.rules_version >= 2 {
            Scope::Genesis(self.genesis)
        } else {
            Scope::Name
        }
    }

    /// The hash of this charter without the nodes' addresses: the network's identity,
    /// which admission compares, and (from rules version 2) what signatures are made for.
    pub fn genesis(&self) -> [u8; 32] {
        self.genesis
    }

    /// Whether entries are held to their causal past in time: from rules version 3, a
    /// change carries its entry's timestamp (in whole seconds), and an entry may not be
    /// dated before any change its change depends on. With the log's own order (checked in
    /// every version), an author can no longer date an entry into a past it has seen go by.
    pub fn honest_time(&self) -> bool {
        self.rules_version >= 3
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn participant(&self, code: &str) -> Option<&Participant> {
        self.by_code.get(code).map(|i| &self.participants[*i])
    }

    pub fn participant_by_key(&self, key: &PublicKey) -> Option<&Participant> {
        self.by_key.get(key).map(|i| &self.participants[*i])
    }

    /// The Presidency's term on `date`, if the calendar covers it.
    pub fn presidency_at(&self, date: Date) -> Option<&Term> {
        self.presidency.iter().find(|t| t.contains(date))
    }

    pub fn in_core_group(&self, code: &str) -> bool {
        self.training_core_group.iter().any(|c| c == code)
    }

    /// Renders the charter back to TOML text that `parse` accepts with the same hash.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "network = {}\nrules_version = {}\ntraining_core_group = [{}]\n\n",
            toml_str(&self.network),
            self.rules_version,
            self.training_core_group
                .iter()
                .map(|c| toml_str(c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(t) = self.amendment_threshold {
            out.push_str(&format!("amendment_threshold = \"{t}\"\n\n"));
        }
        for p in &self.participants {
            out.push_str(&format!(
                "[[participants]]\ncode = {}\nname = {}\nkind = \"{}\"\n",
                toml_str(&p.code),
                toml_str(&p.name),
                p.kind
            ));
            if let Some(k) = &p.key {
                out.push_str(&format!("key = \"{k}\"\n"));
            }
            if !p.addresses.is_empty() {
                out.push_str(&format!(
                    "addresses = [{}]\n",
                    p.addresses
                        .iter()
                        .map(|a| toml_str(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            out.push('\n');
        }
        for t in &self.presidency {
            out.push_str(&format!(
                "[[presidency]]\nstate = {}\nfrom = {}\nto = {}\n\n",
                toml_str(&t.state),
                t.from,
                t.to
            ));
        }
        for r in &self.revoked {
            out.push_str(&format!(
                "[[revoked]]\nkey = \"{}\"\nkeep = {}\n\n",
                r.key,
                toml_str(&r.keep.to_string())
            ));
        }
        out
    }

    /// The template charter: the reference participants and calendar, without keys or
    /// addresses, which each state fills in.
    pub fn template() -> String {
        let mut out = format!(
            "# spocnet charter: one per network, identical on every node.\n\
             # Fill in each participant's national key (`spoc keygen` prints it) and the\n\
             # addresses its node listens on, then check it with `spoc charter verify`.\n\
             network = \"{DEFAULT_NETWORK}\"\nrules_version = {RULES_VERSION}\n\
             # The training core group, by state code, assesses nominated experts.\n\
             training_core_group = []\n\n"
        );
        // The reference file is data of this build, so its shape is known; it holds the
        // participants and presidency arrays that the charter format uses too.
        for line in REFERENCE.lines() {
            if line.starts_with('#') {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// A charter for a local test network of `states` (each with a key and addresses),
    /// where the first state holds the Presidency for the term that contains `today`, and
    /// the following terms rotate through the member states for four years.
    pub fn for_testnet(
        network: &str,
        states: &[(String, PublicKey, Vec<String>)],
        training_core_group: &[String],
        today: Date,
    ) -> Result<Charter, Error> {
        let mut text = format!(
            "network = {network:?}\nrules_version = {RULES_VERSION}\ntraining_core_group = [{}]\n\n",
            training_core_group
                .iter()
                .map(|c| toml_str(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let reference: toml::Table = toml::from_str(REFERENCE)
            .map_err(|e| Error::Whole(format!("reference data: {}", e.message())))?;
        let names: HashMap<String, (String, String)> = reference
            .get("participants")
            .and_then(|p| p.as_array())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((
                            p.get("code")?.as_str()?.to_owned(),
                            (
                                p.get("name")?.as_str()?.to_owned(),
                                p.get("kind")?.as_str()?.to_owned(),
                            ),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut members = Vec::new();
        for (code, key, addresses) in states {
            let (name, kind) = names
                .get(code)
                .cloned()
                .unwrap_or_else(|| (code.clone(), "member_state".to_owned()));
            if kind == "member_state" {
                members.push(code.clone());
            }
            text.push_str(&format!(
                "[[participants]]\ncode = {code:?}\nname = {name:?}\nkind = {kind:?}\nkey = \"{key}\"\naddresses = [{}]\n\n",
                addresses
                    .iter()
                    .map(|a| toml_str(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if members.is_empty() {
            return Err(Error::Whole(
                "a testnet needs at least one member state".into(),
            ));
        }
        let (mut from, _) = parse_half_year(&half_year_label(today))
            .ok_or_else(|| Error::Whole("date out of range".into()))?;
        for i in 0..8 {
            let (_, to) = parse_half_year(&half_year_label(from))
                .ok_or_else(|| Error::Whole("date out of range".into()))?;
            text.push_str(&format!(
                "[[presidency]]\nstate = {}\nfrom = {from}\nto = {to}\n\n",
                toml_str(&members[i % members.len()])
            ));
            from = to
                .next_day()
                .ok_or_else(|| Error::Whole("date out of range".into()))?;
        }
        Charter::parse(&text)
    }
}

/// A string as TOML writes it, quoted and escaped as TOML reads it back (Rust's own
/// escapes, such as `\u{38b}`, are not TOML's).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use rand::SeedableRng;
    use time::macros::date;

    fn key(seed: u64) -> PublicKey {
        SecretKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public()
    }

    fn small(extra: &str) -> String {
        format!(
            "network = \"test\"\nrules_version = 1\n\
             participants = [\n\
               {{ code = \"IE\", name = \"Ireland\", kind = \"member_state\", key = \"{}\" }},\n\
               {{ code = \"LT\", name = \"Lithuania\", kind = \"member_state\", key = \"{}\" }},\n\
               {{ code = \"NO\", name = \"Norway\", kind = \"schengen_associated\" }},\n\
               {{ code = \"EUROPOL\", name = \"Europol\", kind = \"observer\" }},\n\
             ]\n{extra}",
            key(1),
            key(2)
        )
    }

    const CALENDAR: &str = "presidency = [\n\
        { state = \"IE\", from = 2026-07-01, to = 2026-12-31 },\n\
        { state = \"LT\", from = 2027-01-01, to = 2027-06-30 },\n]\n";

    #[test]
    fn template_parses_with_the_reference_calendar() {
        let c = Charter::parse(&Charter::template()).unwrap();
        assert_eq!(c.participants.len(), 36);
        assert_eq!(c.presidency_at(date!(2026 - 12 - 01)).unwrap().state, "IE");
        assert_eq!(c.presidency_at(date!(2027 - 01 - 01)).unwrap().state, "LT");
        assert_eq!(c.presidency_at(date!(2024 - 07 - 01)).unwrap().state, "HU");
        assert!(c.presidency_at(date!(2031 - 01 - 01)).is_none());
        assert_eq!(c.participant("EL").unwrap().name, "Greece");
        assert_eq!(c.participant("EUROPOL").unwrap().kind, Kind::Observer);
    }

    #[test]
    fn hash_ignores_layout_but_not_content() {
        let a = Charter::parse(&small(CALENDAR)).unwrap();
        let b = Charter::parse(&format!("# comment\n\n{}", small(CALENDAR))).unwrap();
        assert_eq!(a.hash(), b.hash());
        let round = Charter::parse(&a.to_toml()).unwrap();
        assert_eq!(round.hash(), a.hash());
        let c = Charter::parse(&small(CALENDAR).replace("Lithuania", "Lietuva")).unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn a_charter_with_any_text_in_its_strings_renders_to_toml_that_reads_back_the_same() {
        let text = small(CALENDAR);
        let mut odd = Charter::parse(&text).unwrap();
        // Fuzzing found an address with an unassigned character, which Rust's escapes
        // wrote as `\u{38b}`, a form TOML does not read.
        odd.participants[0].name = "\tIreland \"Éire\" \\ \u{38b} \u{7f}".into();
        odd.participants[0].addresses = vec!["/ip4/127.0.0.1\u{38b}cp/40003".into()];
        let again = Charter::parse(&odd.to_toml()).unwrap();
        assert_eq!(again.participants[0].name, odd.participants[0].name);
        assert_eq!(
            again.participants[0].addresses,
            odd.participants[0].addresses
        );
        assert_eq!(again.to_toml(), odd.to_toml());
    }

    #[test]
    fn a_moved_address_changes_the_hash_but_not_the_genesis_signatures_are_made_for() {
        let text = small(CALENDAR).replace("rules_version = 1", "rules_version = 2");
        let a = Charter::parse(&text).unwrap();
        let renamed = Charter::parse(&text.replace("Lithuania", "Lietuva")).unwrap();
        assert_ne!(renamed.scope(), a.scope());
        let mut moved = a.clone();
        moved.participants[0].addresses = vec!["/ip4/10.1.2.3/tcp/4001".into()];
        let moved = Charter::parse(&moved.to_toml()).unwrap();
        assert_ne!(moved.hash(), a.hash());
        assert_eq!(moved.scope(), a.scope());
        assert!(matches!(a.scope(), Scope::Genesis(g) if g != a.hash()));
    }

    fn err(text: &str) -> String {
        Charter::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_charters_name_the_line_and_the_problem() {
        let dup = small(CALENDAR).replace("code = \"LT\"", "code = \"IE\"");
        assert_eq!(err(&dup), "charter line 5: duplicate participant code IE");

        let bad_key = small(CALENDAR).replace(&key(2).to_string(), "ed25519:1234");
        assert!(err(&bad_key).starts_with("charter line 5: participant LT: malformed key"));

        let overlap = small(
            "presidency = [\n{ state = \"IE\", from = 2026-07-01, to = 2026-12-31 },\n\
             { state = \"LT\", from = 2026-12-01, to = 2027-06-30 },\n]\n",
        );
        assert!(err(&overlap).contains("line 11: term of LT from 2026-12-01 overlaps"));

        let gap = small(
            "presidency = [\n{ state = \"IE\", from = 2026-07-01, to = 2026-12-30 },\n\
             { state = \"LT\", from = 2027-01-01, to = 2027-06-30 },\n]\n",
        );
        assert!(err(&gap).contains("line 11: gap in the Presidency calendar"));

        let associated =
            small("presidency = [\n{ state = \"NO\", from = 2026-07-01, to = 2026-12-31 },\n]\n");
        assert!(err(&associated).contains("only a member state holds the Presidency"));

        let stranger =
            small("presidency = [\n{ state = \"XX\", from = 2026-07-01, to = 2026-12-31 },\n]\n");
        assert!(err(&stranger).contains("XX, which is not a participant"));

        let kind = small(CALENDAR).replace("\"observer\"", "\"agency\"");
        assert!(err(&kind).contains("unknown kind \"agency\""));

        let typo = small(CALENDAR).replace("rules_version", "rule_version");
        assert!(err(&typo).starts_with("charter line 2:"), "{}", err(&typo));

        let shared_key = small(CALENDAR).replace(&key(2).to_string(), &key(1).to_string());
        assert!(err(&shared_key).contains("key is already another participant's"));

        assert!(err("network = \"t\"\n").contains("missing rules_version"));
        assert!(err("not toml at all [").starts_with("charter line 1:"));
    }

    #[test]
    fn testnet_puts_the_first_state_in_the_chair() {
        let states: Vec<(String, PublicKey, Vec<String>)> = ["FI", "SE", "NO"]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.to_string(),
                    key(i as u64 + 10),
                    vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)],
                )
            })
            .collect();
        let c =
            Charter::for_testnet("lab", &states, &["SE".into()], date!(2026 - 12 - 01)).unwrap();
        assert_eq!(c.presidency_at(date!(2026 - 12 - 01)).unwrap().state, "FI");
        assert_eq!(c.presidency_at(date!(2027 - 02 - 01)).unwrap().state, "SE");
        // Norway is associated, so it never holds the Presidency.
        assert_eq!(c.presidency_at(date!(2027 - 08 - 01)).unwrap().state, "FI");
        assert_eq!(c.participant("NO").unwrap().kind, Kind::SchengenAssociated);
        assert!(c.in_core_group("SE"));
    }

    #[test]
    fn half_years() {
        assert_eq!(half_year_label(date!(2026 - 06 - 30)), "2026-H1");
        assert_eq!(half_year_label(date!(2026 - 07 - 01)), "2026-H2");
        assert_eq!(
            parse_half_year("2026-H2"),
            Some((date!(2026 - 07 - 01), date!(2026 - 12 - 31)))
        );
        assert_eq!(parse_half_year("2026-H3"), None);
    }
}
