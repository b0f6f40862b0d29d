//! Operators: the people who use a node's API, each with a name, a role and a token.
//!
//! A token is 32 random bytes, shown once in hex when the operator is added; the node keeps
//! only its hash (`TokenHash`, a keyed BLAKE3 hash), in the store. The role decides what
//! the operator may do: a `reader` reads, a `contributor` also writes for the state, and a
//! `head` also manages the operators (and the charter and key actions to come). The first
//! `head` is the token in `api.token`, which the node registers on its first start.
//!
//! This module owns the types, their bounded encoding in the store, and `Access`, the table
//! the API checks every request against. No IO.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};

/// The longest operator name.
pub const MAX_NAME: usize = 32;
/// The most operators a node keeps, revoked ones included.
pub const MAX_OPERATORS: usize = 1024;
/// The name of the operator of `api.token`.
pub const FIRST_HEAD: &str = "head";
const ROW_VERSION: u8 = 1;
const TOKEN_KEY: &str = "spocnet/api-token/v1";
const HELLO_KEY: &str = "spocnet/api-hello/v1";
/// The bytes of a token's hash that name it in a hello.
pub const HELLO_ID: usize = 8;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("an operator name is 1 to {MAX_NAME} characters of a-z, 0-9, '.', '_' and '-'")]
    BadName,
    #[error("unknown role {0:?}: reader, contributor or head")]
    BadRole(String),
    #[error("operator {0} exists already")]
    Exists(String),
    #[error("no operator {0}")]
    Unknown(String),
    #[error("operator {0} is revoked already")]
    Revoked(String),
    #[error("a node keeps at most {MAX_OPERATORS} operators")]
    Full,
    #[error("the last head cannot be revoked")]
    LastHead,
    #[error("malformed operator row")]
    Malformed,
}

/// What an operator may do. Each role may do what the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Contributor,
    Head,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Contributor, Role::Head];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Contributor => "contributor",
            Role::Head => "head",
        }
    }

    /// Makes contributions for the state (signed writes, and a full `verify`).
    pub fn may_write(self) -> bool {
        self >= Role::Contributor
    }

    /// Adds and revokes operators.
    pub fn may_administer(self) -> bool {
        self == Role::Head
    }

    fn code(self) -> u8 {
        match self {
            Role::Reader => 1,
            Role::Contributor => 2,
            Role::Head => 3,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::BadRole(s.chars().take(32).collect()))
    }
}

/// Checks an operator name.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Error::BadName) }
}

/// An API token, as the operator holds it: 64 hex digits. Wiped when dropped.
pub struct Token(Zeroizing<String>);

impl Token {
    pub fn generate(rng: &mut dyn RngCore) -> Token {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Token(Zeroizing::new(hex::encode(bytes.as_ref())))
    }

    /// A token as read from a file or a header.
    pub fn from_text(text: &str) -> Token {
        Token(Zeroizing::new(text.trim().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// What the node keeps of a token. Tokens are 256 random bits, so a fast hash is enough:
/// no one can search for a preimage.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &[u8]) -> TokenHash {
        TokenHash(blake3::derive_key(TOKEN_KEY, token))
    }
}

impl TokenHash {
    /// What names this token in a hello: the first bytes of its hash, which tell nothing
    /// of the token or of the rest of the hash.
    pub fn hello_id(&self) -> [u8; HELLO_ID] {
        let mut id = [0u8; HELLO_ID];
        id.copy_from_slice(&self.0[..HELLO_ID]);
        id
    }

    /// The node's answer to a hello with `nonce`: a MAC keyed with the whole hash, which
    /// only the node and the token's holder know. A client checks it before it sends the
    /// token over TCP, so a process that holds the API's port while the node is down never
    /// gets the token.
    pub fn hello_proof(&self, nonce: &[u8; 32]) -> [u8; 32] {
        let key = blake3::derive_key(HELLO_KEY, &self.0);
        *blake3::keyed_hash(&key, nonce).as_bytes()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", hex::encode(&self.0[..4]))
    }
}

/// One operator, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub token: TokenHash,
    pub added_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl Operator {
    /// The row of the store (the name is its key).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ROW_VERSION);
        w.u8(self.role.code());
        w.raw(&self.token.0);
        w.u64(self.added_ms);
        w.u64(self.revoked_ms.map_or(0, |ms| ms.saturating_add(1)));
        w.into_inner()
    }

    /// Reads a row of the store back, with its key.
    pub fn decode(name: &str, row: &[u8]) -> Result<Operator, Error> {
        check_name(name).map_err(|_| Error::Malformed)?;
        let mut r = Reader::new(row);
        let parsed = (|| {
            if r.u8().ok()? != ROW_VERSION {
                return None;
            }
            let role = Role::from_code(r.u8().ok()?)?;
            let token = TokenHash(r.array32().ok()?);
            let added_ms = r.u64().ok()?;
            let revoked = r.u64().ok()?;
            r.finish().ok()?;
            Some(Operator {
                name: name.to_owned(),
                role,
                token,
                added_ms,
                revoked_ms: revoked.checked_sub(1),
            })
        })();
        parsed.ok_or(Error::Malformed)
    }
}

/// Who made an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The operators whose tokens the API accepts now, by token hash.
#[derive(Debug, Default)]
pub struct Access {
    by_token: HashMap<TokenHash, Caller>,
}

impl Access {
    pub fn new(operators: &[Operator]) -> Access {
        Access {
            by_token: operators
                .iter()
                .filter(|o| o.revoked_ms.is_none())
                .map(|o| {
                    (
                        o.token,
                        Caller {
                            name: o.name.clone(),
                            role: o.role,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The operator whose token this is, if it is not revoked.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        self.by_token.get(&TokenHash::of(token.trim().as_bytes()))
    }

    /// The answer to a hello for the token named by `id`, if it is an operator's.
    pub fn hello(&self, id: &[u8; HELLO_ID], nonce: &[u8; 32]) -> Option<[u8; 32]> {
        self.by_token
            .keys()
            .find(|hash| hash.hello_id() == *id)
            .map(|hash| hash.hello_proof(nonce))
    }
}

/// Adds an operator to `operators`, or says why not.
pub fn add(
    operators: &[Operator],
    name: &str,
    role: Role,
    token: &Token,
    now_ms: u64,
) -> Result<Operator, Error> {
    check_name(name)?;
    if operators.iter().any(|o| o.name == name) {
        return Err(Error::Exists(name.to_owned()));
    }
    if operators.len() >= MAX_OPERATORS {
        return Err(Error::Full);
    }
    Ok(Operator {
        name: name.to_owned(),
        role,
        token: token.hash(),
        added_ms: now_ms,
        revoked_ms: None,
    })
}

/// Revokes the operator `name` of `operators`, or says why not. The last head stays.
pub fn revoke(operators: &[Operator], name: &str, now_ms: u64) -> Result<Operator, Error> {
    let op = operators
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| Error::Unknown(name.chars().take(MAX_NAME).collect()))?;
    if op.revoked_ms.is_some() {
        return Err(Error::Revoked(name.to_owned()));
    }
    let heads = operators
        .iter()
        .filter(|o| o.role == Role::Head && o.revoked_ms.is_none())
        .count();
    if op.role == Role::Head && heads <= 1 {
        return Err(Error::LastHead);
    }
    Ok(Operator {
        revoked_ms: Some(now_ms),
        ..op.clone()
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(12)
    }

    #[test]
    fn a_token_is_kept_only_as_its_hash_and_never_shown() {
        let token = Token::generate(&mut rng());
        assert_eq!(token.as_str().len(), 64);
        let op = add(&[], "alice", Role::Reader, &token, 5).expect("added");
        let row = op.encode();
        assert!(!hex::encode(&row).contains(token.as_str()));
        assert!(
            !row.windows(8)
                .any(|w| token.as_str().as_bytes().starts_with(w))
        );
        assert_eq!(Operator::decode("alice", &row), Ok(op.clone()));
        assert_eq!(format!("{token:?}"), "Token(<hidden>)");
        let access = Access::new(&[op]);
        assert_eq!(
            access
                .caller(&format!(" {}\n", token.as_str()))
                .map(|c| c.role),
            Some(Role::Reader)
        );
        assert!(access.caller("0").is_none());
    }

    #[test]
    fn names_roles_and_revocations_are_checked() {
        let mut rng = rng();
        let head = add(&[], FIRST_HEAD, Role::Head, &Token::generate(&mut rng), 1).expect("a head");
        for bad in ["", "Alice", "a b", &"x".repeat(33), "ä"] {
            assert_eq!(
                add(&[], bad, Role::Reader, &Token::generate(&mut rng), 1),
                Err(Error::BadName)
            );
        }
        assert_eq!(
            add(
                std::slice::from_ref(&head),
                "head",
                Role::Reader,
                &Token::generate(&mut rng),
                1
            ),
            Err(Error::Exists("head".into()))
        );
        assert_eq!("admin".parse::<Role>(), Err(Error::BadRole("admin".into())));
        assert_eq!(
            revoke(std::slice::from_ref(&head), "head", 2),
            Err(Error::LastHead)
        );
        let bob = add(
            std::slice::from_ref(&head),
            "bob",
            Role::Contributor,
            &Token::generate(&mut rng),
            1,
        )
        .expect("bob");
        let gone = revoke(&[head.clone(), bob.clone()], "bob", 3).expect("revoked");
        assert_eq!(gone.revoked_ms, Some(3));
        assert_eq!(
            revoke(&[head.clone(), gone.clone()], "bob", 4),
            Err(Error::Revoked("bob".into()))
        );
        assert!(Access::new(&[head, gone]).by_token.len() == 1);
        assert!(Role::Contributor.may_write() && !Role::Reader.may_write());
        assert!(Role::Head.may_administer() && !Role::Contributor.may_administer());
    }

    #[test]
    fn only_the_holder_of_a_token_hash_answers_its_hello() {
        let token = Token::generate(&mut rng());
        let op = add(&[], "alice", Role::Head, &token, 1).expect("added");
        let access = Access::new(&[op]);
        let hash = token.hash();
        let nonce = [3u8; 32];
        let proof = access.hello(&hash.hello_id(), &nonce).expect("known");
        assert_eq!(proof, hash.hello_proof(&nonce));
        assert_ne!(proof, hash.hello_proof(&[4u8; 32]));
        assert!(access.hello(&[0; HELLO_ID], &nonce).is_none());
        // What a hello shows does not make the proof.
        let mut guess = [0u8; 32];
        guess[..HELLO_ID].copy_from_slice(&hash.hello_id());
        assert_ne!(TokenHash(guess).hello_proof(&nonce), proof);
    }

    #[test]
    fn malformed_rows_are_refused() {
        let op = add(&[], "alice", Role::Head, &Token::generate(&mut rng()), 9).expect("added");
        let row = op.encode();
        for cut in 0..row.len() {
            assert_eq!(
                Operator::decode("alice", &row[..cut]),
                Err(Error::Malformed)
            );
        }
        let mut longer = row.clone();
        longer.push(0);
        assert_eq!(Operator::decode("alice", &longer), Err(Error::Malformed));
        let mut role = row.clone();
        role[1] = 9;
        assert_eq!(Operator::decode("alice", &role), Err(Error::Malformed));
        assert_eq!(Operator::decode("Alice", &row), Err(Error::Malformed));
    }
}
