//! The local HTTP+JSON API, the only place that knows HTTP. See `docs/api.md`.
//!
//! Every route needs an operator's bearer token, and the operator's role decides what it
//! may do: a reader reads, a contributor also writes, a head also manages the operators.
//! Bodies are read as bytes under a 1 MiB limit and parsed here, so that every refusal,
//! malformed JSON included, is one JSON line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::docs::command::Command;
use crate::docs::{Collection, DocId};
use crate::operator::{Access, Caller, Role};
use crate::service::{Failure, Handle};

/// The largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// Requests served, by route, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    requests: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn count(&self, route: &str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(route.to_owned()).or_default() += 1;
        }
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP spoc_api_requests_total API requests, by route.\n# TYPE spoc_api_requests_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for (route, n) in m.iter() {
                out.push_str(&format!(
                    "spoc_api_requests_total{{route=\"{route}\"}} {n}\n"
                ));
            }
        }
        out
    }
}

#[derive(Clone)]
struct App {
    node: Handle,
    access: Arc<std::sync::RwLock<Access>>,
    counters: Arc<Counters>,
}

/// An API error: a status and one line.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::BadRequest(m) => ApiError(StatusCode::BAD_REQUEST, m),
            Failure::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            Failure::Refused(m) => ApiError(StatusCode::CONFLICT, m),
            Failure::Internal(m) | Failure::Corrupt(m) => {
                tracing::error!(error = %m, "request failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        }
    }
}

type Answer = Result<Response, ApiError>;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Finds the operator of the bearer token (by its hash, so no comparison leaks it) and
/// hands it to the route.
async fn auth(
    State(app): State<App>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = given.and_then(|token| {
        app.access
            .read()
            .ok()
            .and_then(|access| access.caller(token).cloned())
    });
    match caller {
        Some(caller) => {
            app.counters.count(request.uri().path());
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        _ => {
            app.counters.count("unauthorised");
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )
            .into_response()
        }
    }
}

/// The API's routes over a node handle.
pub fn router(
    node: Handle,
    access: Arc<std::sync::RwLock<Access>>,
    counters: Arc<Counters>,
) -> Router {
    let app = App {
        node,
        access,
        counters,
    };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/commands", post(command))
        .route("/v1/docs", get(list))
        .route("/v1/doc", get(doc))
        .route("/v1/log", get(log))
        .route("/v1/verify", post(verify))
        .route("/v1/report", get(report))
        .route("/v1/export", get(export))
        .route("/v1/peers", get(peers))
        .route("/v1/charter", get(charter))
        .route("/v1/charter/amendments", get(amendments))
        .route("/v1/charter/revocation", get(revocation))
        .route("/v1/key/rotate", post(rotate_key))
        .route("/v1/wait", get(wait))
        .route("/metrics", get(metrics))
        .route("/v1/operators", get(operators).post(add_operator))
        .route("/v1/operators/revoke", post(revoke_operator))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        // The one route without a token: the node proves it knows the caller's token
        // before the caller sends it.
        .route("/v1/hello", get(hello))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

#[derive(Deserialize)]
struct HelloQuery {
    id: String,
    nonce: String,
}

async fn hello(State(app): State<App>, q: Result<Query<HelloQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let mut id = [0u8; crate::operator::HELLO_ID];
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(&q.id, &mut id).map_err(|_| bad("id is 8 bytes in hex"))?;
    hex::decode_to_slice(&q.nonce, &mut nonce).map_err(|_| bad("nonce is 32 bytes in hex"))?;
    let proof = app
        .access
        .read()
        .ok()
        .and_then(|access| access.hello(&id, &nonce));
    match proof {
        Some(proof) => Ok(Json(json!({"proof": hex::encode(proof)})).into_response()),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "no operator has that token".into(),
        )),
    }
}

async fn status(State(app): State<App>) -> Answer {
    Ok(Json(app.node.status().await?).into_response())
}

/// Reads a JSON body of type `T`, or refuses it with one line naming `what`.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("bad {what}: {e}")))
}

/// Refuses what the caller's role does not allow, with one line.
fn allow(caller: &Caller, needed: Role, what: &str) -> Result<(), ApiError> {
    if caller.role >= needed {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "operator {} is a {} and may not {what} (it takes a {})",
                caller.name, caller.role, needed
            ),
        ))
    }
}

async fn command(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    allow(&caller, Role::Contributor, "write")?;
    let command: Command = json_body(body, "command")?;
    // Where the state's nodes are dialled is the head's to say, as the charter was.
    if matches!(command, Command::AddressSet { .. }) {
        allow(&caller, Role::Head, "publish the nodes' addresses")?;
    }
    // The node makes its own rotation: its points are its logs, and it holds the new key.
    if matches!(command, Command::KeyRotate { .. }) {
        return Err(bad(
            "a key is rotated with POST /v1/key/rotate (spoc key rotate)",
        ));
    }
    if matches!(command, Command::NodeRevoke { .. }) {
        allow(&caller, Role::Head, "revoke a node's certificates")?;
    }
    // Amending the charter speaks for the state, as signing the charter did.
    if matches!(
        command,
        Command::AmendmentPropose { .. } | Command::AmendmentSign { .. }
    ) {
        allow(
            &caller,
            Role::Head,
            "propose or sign an amendment of the charter",
        )?;
    }
    let ack = app.node.write(command, &caller.name).await?;
    Ok(Json(ack).into_response())
}

fn operator_json(op: &crate::operator::Operator) -> Value {
    json!({
        "name": op.name,
        "role": op.role.as_str(),
        "added_ms": op.added_ms,
        "revoked_ms": op.revoked_ms,
    })
}

async fn operators(State(app): State<App>, Extension(caller): Extension<Caller>) -> Answer {
    allow(&caller, Role::Head, "list the operators")?;
    let all = app.node.operators().await?;
    Ok(Json(all.iter().map(operator_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
struct AddOperator {
    name: String,
    role: String,
}

async fn add_operator(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    allow(&caller, Role::Head, "add operators")?;
    let add: AddOperator = json_body(body, "operator")?;
    let role: Role = add
        .role
        .parse()
        .map_err(|e: crate::operator::Error| bad(e.to_string()))?;
    let (op, token) = app.node.add_operator(add.name, role).await?;
    let mut answer = operator_json(&op);
    answer["token"] = json!(token.as_str());
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
struct RevokeOperator {
    name: String,
}

async fn revoke_operator(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    allow(&caller, Role::Head, "revoke operators")?;
    let revoke: RevokeOperator = json_body(body, "operator")?;
    let op = app.node.revoke_operator(revoke.name).await?;
    Ok(Json(operator_json(&op)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    collection: String,
    status: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    /// RFC 3339 or `YYYY-MM-DD`.
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Reads `2026-12-01` or `2026-12-01T10:00:00Z` as milliseconds since the epoch.
fn since_ms(text: &str) -> Result<u64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| {
            time::Date::parse(
                text,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| bad(format!("since {text:?} is not a date or an RFC 3339 time")))?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| bad(format!("since {text:?} is before 1970")))
}

async fn list(State(app): State<App>, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let collection: Collection = q
        .collection
        .parse()
        .map_err(|e: crate::docs::DocIdError| bad(e.to_string()))?;
    let filter = crate::store::ListFilter {
        status: q.status,
        state: q.state,
        kind: q.kind,
        since_ms: q.since.as_deref().map(since_ms).transpose()?,
    };
    let page = app
        .node
        .list(
            collection,
            filter,
            q.cursor,
            q.limit.unwrap_or(crate::service::actor::PAGE),
        )
        .await?;
    Ok(Json(json!({"items": page.items, "next": page.next})).into_response())
}

#[derive(Deserialize)]
struct IdQuery {
    id: String,
}

fn doc_id(q: Result<Query<IdQuery>, QueryRejection>) -> Result<DocId, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    q.id.parse()
        .map_err(|e: crate::docs::DocIdError| bad(e.to_string()))
}

async fn doc(State(app): State<App>, q: Result<Query<IdQuery>, QueryRejection>) -> Answer {
    Ok(Json(app.node.doc(doc_id(q)?).await?).into_response())
}

async fn export(State(app): State<App>, q: Result<Query<IdQuery>, QueryRejection>) -> Answer {
    let bytes = app.node.export(doc_id(q)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    author: Option<String>,
    doc: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

async fn log(State(app): State<App>, q: Result<Query<LogQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let query = crate::service::actor::AuditQuery {
        author: q.author,
        doc: q.doc,
        limit: q.limit,
        before: q.before,
    };
    Ok(Json(app.node.log(query).await?).into_response())
}

async fn verify(State(app): State<App>, Extension(caller): Extension<Caller>) -> Answer {
    allow(&caller, Role::Contributor, "run a full verify")?;
    Ok(Json(app.node.verify().await?).into_response())
}

#[derive(Deserialize)]
struct TermQuery {
    term: String,
}

async fn report(State(app): State<App>, q: Result<Query<TermQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(Json(app.node.report(q.term).await?).into_response())
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

async fn charter(State(app): State<App>, q: Result<Query<VersionQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(Json(app.node.charter(q.version).await?).into_response())
}

#[derive(Deserialize)]
struct FromQuery {
    from: Option<String>,
    state: Option<String>,
}

async fn revocation(State(app): State<App>, q: Result<Query<FromQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    use crate::service::actor::RevokeFrom;
    let from = match (q.from, q.state) {
        (Some(from), None) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&from, &mut bytes)
                .map_err(|_| bad("from is an entry hash: 32 bytes in hex"))?;
            RevokeFrom::Entry(crate::log::EntryHash(bytes))
        }
        (None, Some(state)) => RevokeFrom::Now(state.to_uppercase()),
        _ => return Err(bad("give from (an entry hash) or state (a state code)")),
    };
    let found = app.node.revocation(from).await?;
    Ok(Json(found).into_response())
}

async fn rotate_key(State(app): State<App>, Extension(caller): Extension<Caller>) -> Answer {
    allow(&caller, Role::Head, "rotate the national key")?;
    Ok(Json(app.node.rotate_key(caller.name.clone()).await?).into_response())
}

async fn amendments(State(app): State<App>) -> Answer {
    Ok(Json(app.node.amendments().await?).into_response())
}

async fn peers(State(app): State<App>) -> Answer {
    let status = app.node.status().await?;
    Ok(Json(
        status
            .get("peers")
            .cloned()
            .unwrap_or(Value::Array(Vec::new())),
    )
    .into_response())
}

async fn metrics(State(app): State<App>) -> Answer {
    let mut text = app.node.metrics().await?;
    text.push_str(&app.counters.render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    entries: String,
    timeout_ms: Option<u64>,
}

/// The longest a `/v1/wait` may hold a request.
const MAX_WAIT_MS: u64 = 120_000;

async fn wait(State(app): State<App>, q: Result<Query<WaitQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let mut hashes = Vec::new();
    for text in q.entries.split(',').filter(|s| !s.is_empty()).take(10_000) {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| bad(format!("{text:?} is not an entry hash")))?;
        hashes.push(crate::log::EntryHash(bytes));
    }
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(MAX_WAIT_MS));
    let missing = app.node.wait_for(hashes, timeout).await?;
    Ok(Json(json!({
        "present": missing.is_empty(),
        "missing": missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
    .into_response())
}
