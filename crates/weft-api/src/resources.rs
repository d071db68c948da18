//! The resources' endpoints: list, create, get, replace, patch, delete, and the batch
//! endpoint built from the same operations. Every write is one store transaction.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use uuid::Uuid;
use weft_model::{Kind, LabelSelector, Resource, Validator};
use weft_store::{ListQuery, ObjectKey, StoredObject, Txn};

use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::cache::Lookup;
use crate::cluster_status;
use crate::problem::{ApiError, ApiResult};

/// Routes of one kind: `/v1/<kind>`, `/v1/<kind>/{id}` (or name, for a kind that belongs to no
/// project) and, below a project, `/v1/<kind>/{project}/{name}`.
pub fn routes(kind: Kind) -> Router<AppState> {
    let collection = format!("/v1/{}", kind.plural());
    let mut router = Router::new()
        .route(&collection, get(move |s, c, q| list(kind, s, c, q)).post(move |s, c, h, b| create(kind, s, c, h, b)));
    router = router.route(
        &format!("{collection}/{{key}}"),
        get(move |s, c, Path(k): Path<String>| async move { get_one(kind, single_key(kind, k), s, c).await })
            .put(move |s, c, h, Path(k): Path<String>, b| async move {
                update(kind, single_key(kind, k), Update::Replace, s, c, h, b).await
            })
            .patch(move |s, c, h, Path(k): Path<String>, b| async move {
                update(kind, single_key(kind, k), Update::MergePatch, s, c, h, b).await
            })
            .delete(move |s, c, h, Path(k): Path<String>, q| async move {
                delete(kind, single_key(kind, k), s, c, h, q).await
            }),
    );
    if !kind.is_cluster_scoped() {
        router = router.route(
            &format!("{collection}/{{project}}/{{name}}"),
            get(move |s, c, Path(k): Path<(String, String)>| async move { get_one(kind, named_key(k), s, c).await })
                .put(move |s, c, h, Path(k): Path<(String, String)>, b| async move {
                    update(kind, named_key(k), Update::Replace, s, c, h, b).await
                })
                .patch(move |s, c, h, Path(k): Path<(String, String)>, b| async move {
                    update(kind, named_key(k), Update::MergePatch, s, c, h, b).await
                })
                .delete(move |s, c, h, Path(k): Path<(String, String)>, q| async move {
                    delete(kind, named_key(k), s, c, h, q).await
                }),
        );
    }
    router
}

/// `/v1/projects/{name-or-id}`, `/v1/cluster-policies/{name-or-id}`; `/v1/<child-kind>/{id}`.
fn single_key(kind: Kind, key: String) -> ApiResult<ObjectKey> {
    if let Ok(id) = key.parse::<Uuid>() {
        return Ok(ObjectKey::Id(id));
    }
    if kind.is_cluster_scoped() {
        Ok(ObjectKey::Name { project: None, name: key })
    } else {
        Err(ApiError::not_found(format!(
            "{key:?} is not an id: address a {kind} by /v1/{}/<id> or /v1/{}/<project>/<name>",
            kind.plural(),
            kind.plural()
        )))
    }
}

fn named_key((project, name): (String, String)) -> ApiResult<ObjectKey> {
    Ok(ObjectKey::Name { project: Some(project), name })
}

/// The project that owns a stored object (a project owns itself); `None` for what belongs to
/// the cluster (a cluster policy), which only an admin reads.
pub(crate) fn owner(object: &StoredObject) -> ApiResult<Option<String>> {
    let identity = crate::cache::Identity::of(&object.body).map_err(|e| {
        tracing::error!(id = %object.id, error = %e, "stored object without a name");
        ApiError::internal()
    })?;
    Ok(identity.owner(object.kind))
}

/// Whether the caller may read what `owner` owns ([`owner`]).
pub(crate) fn may_read(caller: &Caller, owner: Option<&str>) -> bool {
    match owner {
        Some(project) => caller.can_read(project),
        None => caller.is_admin(),
    }
}

/// `If-Match: "12"` (or `W/"12"`, or `12`); `*` and absence mean no condition.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    unquoted.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!("If-Match must be an ETag this API returned, like \"12\"; got {text:?}"))
    })
}

pub(crate) fn etag(revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// An object as served: a cluster policy with its status.
fn served_json(object: &StoredObject, context: &cluster_status::Context) -> String {
    if object.kind != Kind::ClusterPolicy {
        return object.to_json();
    }
    cluster_status::with_status(object.to_json(), &context.status_of(object.id, object.revision))
}

fn object_response(status: StatusCode, object: &StoredObject, context: &cluster_status::Context) -> Response {
    let mut response = json_response(status, served_json(object, context));
    response.headers_mut().insert(header::ETAG, etag(object.revision));
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/{}/{}", object.kind.plural(), object.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Query parameters of a list, checked one by one so that a bad one is named.
fn list_query(kind: Kind, caller: &Caller, params: HashMap<String, String>) -> ApiResult<ListQuery> {
    let mut query = ListQuery::default();
    for (name, value) in params {
        match name.as_str() {
            "project" => query.project = Some(value),
            "name" => query.name = Some(value),
            "labelSelector" => {
                let selector = LabelSelector::parse(&value)
                    .map_err(|e| ApiError::invalid_parameter("labelSelector", e.to_string()))?;
                let mut v = Validator::new();
                selector.validate(&mut v);
                v.finish().map_err(|e| ApiError::invalid_parameter("labelSelector", e.to_string()))?;
                query.selector = Some(selector);
            }
            "limit" => {
                query.limit =
                    value.parse().ok().filter(|l| (1..=weft_store::MAX_PAGE).contains(l)).ok_or_else(|| {
                        ApiError::invalid_parameter(
                            "limit",
                            format!("must be a number from 1 to {}", weft_store::MAX_PAGE),
                        )
                    })?
            }
            "continue" => query.continue_after = Some(value),
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    "unknown parameter; lists take project, labelSelector, name, limit and continue",
                ));
            }
        }
    }
    require_cluster_admin(caller, kind)?;
    if kind == Kind::ClusterPolicy && query.project.is_some() {
        return Err(ApiError::invalid_parameter("project", "cluster policies belong to no project"));
    }
    if let Some(project) = &query.project {
        caller.require_read(project)?;
    }
    query.allowed_projects = caller.readable_projects();
    Ok(query)
}

async fn list(
    kind: Kind,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let query = list_query(kind, &caller, params)?;
    // Read before listing: every revision up to it is in the page. Computed afresh rather
    // than taken from the follower, so that a list after a write reports that write.
    let revision = state.store.safe_horizon().await?;
    let page = state.store.list(kind, &query).await.map_err(|e| match e {
        weft_store::StoreError::Invalid(_) => {
            ApiError::invalid_parameter("continue", "not a continue token returned by a previous page")
        }
        e => e.into(),
    })?;
    let mut body = String::with_capacity(page.items.iter().map(|o| o.body.len() + 160).sum::<usize>() + 64);
    let context = if kind == Kind::ClusterPolicy {
        cluster_status::Context::read(&state, state.store.cluster_policy_places().await?).await?
    } else {
        cluster_status::Context::default()
    };
    body.push_str("{\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&served_json(item, &context));
    }
    body.push_str(&format!("],\"revision\":{revision}"));
    if let Some(token) = &page.continue_token {
        body.push_str(&format!(",\"continue\":\"{token}\""));
    }
    body.push('}');
    Ok(json_response(StatusCode::OK, body))
}

async fn get_one(
    kind: Kind,
    key: ApiResult<ObjectKey>,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let key = key?;
    require_cluster_admin(&caller, kind)?;
    if kind == Kind::ClusterPolicy {
        // Served with a status computed from the other policies: from the database, both.
        let object = state.store.get(kind, &key).await?.ok_or_else(|| not_found(kind, &key))?;
        let context = cluster_status::Context::read(&state, state.store.cluster_policy_places().await?).await?;
        return Ok(object_response(StatusCode::OK, &object, &context));
    }
    // The cache answers once it has applied everything this process has committed.
    let committed_here = *state.store.local_commits().borrow();
    match state.cache.get(kind, &key, committed_here) {
        Lookup::Found(cached) => {
            state.metrics.cache_hits.inc();
            if !may_read(&caller, cached.owner.as_deref()) {
                return Err(not_found(kind, &key));
            }
            let mut response = json_response(StatusCode::OK, cached.json.to_string());
            response.headers_mut().insert(header::ETAG, etag(cached.revision));
            return Ok(response);
        }
        Lookup::Absent => {
            state.metrics.cache_hits.inc();
            return Err(not_found(kind, &key));
        }
        Lookup::Unknown => {
            state.metrics.cache_misses.inc();
        }
    }
    let object = state.store.get(kind, &key).await?.ok_or_else(|| not_found(kind, &key))?;
    if !may_read(&caller, owner(&object)?.as_deref()) {
        return Err(not_found(kind, &key));
    }
    Ok(object_response(StatusCode::OK, &object, &cluster_status::Context::default()))
}

fn not_found(kind: Kind, key: &ObjectKey) -> ApiError {
    ApiError::not_found(format!("{kind} {key} does not exist"))
}

async fn create(
    kind: Kind,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    body::check_json_content_type(&headers)?;
    let value = body::parse_value(&body::bytes(body)?)?;
    let mut txn = state.store.begin().await?;
    let mut object = op_create(&mut txn, &caller, kind, value).await?;
    let places = places_in(&mut txn, kind).await?;
    object.revision = txn.commit().await?;
    let context = cluster_status::Context::read(&state, places).await?;
    Ok(object_response(StatusCode::CREATED, &object, &context))
}

/// PUT replaces the object with the body; PATCH merges the body into it (RFC 7396).
#[derive(Debug, Clone, Copy)]
enum Update {
    Replace,
    MergePatch,
}

async fn update(
    kind: Kind,
    key: ApiResult<ObjectKey>,
    how: Update,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = key?;
    body::check_json_content_type(&headers)?;
    let value = body::parse_value(&body::bytes(body)?)?;
    let if_match = if_match(&headers)?;
    let mut txn = state.store.begin().await?;
    let mut object = match how {
        Update::Replace => op_replace(&mut txn, &caller, kind, &key, value, if_match).await?,
        Update::MergePatch => op_patch(&mut txn, &caller, kind, &key, &value, if_match).await?,
    };
    let places = places_in(&mut txn, kind).await?;
    object.revision = txn.commit().await?;
    let context = cluster_status::Context::read(&state, places).await?;
    Ok(object_response(StatusCode::OK, &object, &context))
}

async fn delete(
    kind: Kind,
    key: ApiResult<ObjectKey>,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let key = key?;
    let mut cascade = false;
    for (name, value) in params {
        match (name.as_str(), value.as_str()) {
            ("cascade", "true") => cascade = true,
            ("cascade", "false") => cascade = false,
            ("cascade", _) => return Err(ApiError::invalid_parameter("cascade", "must be true or false")),
            (other, _) => return Err(ApiError::invalid_parameter(other, "unknown parameter; delete takes cascade")),
        }
    }
    let if_match = if_match(&headers)?;
    let mut txn = state.store.begin().await?;
    op_delete(&mut txn, &caller, kind, &key, cascade, if_match).await?;
    let revision = txn.commit().await?;
    let mut response = json_response(StatusCode::OK, format!("{{\"revision\":{revision}}}"));
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

/// Every cluster policy's place as a write of `kind` left them, for its response's status.
async fn places_in(txn: &mut Txn, kind: Kind) -> ApiResult<Vec<weft_store::PolicyPlace>> {
    if kind == Kind::ClusterPolicy { Ok(txn.cluster_policy_places().await?) } else { Ok(Vec::new()) }
}

/// Decodes a body as `kind`, naming any bad field.
fn decode(kind: Kind, value: serde_json::Value) -> ApiResult<Resource> {
    Ok(match kind {
        Kind::Project => Resource::Project(body::decode(value)?),
        Kind::VirtualNetwork => Resource::VirtualNetwork(body::decode(value)?),
        Kind::SecurityGroup => Resource::SecurityGroup(body::decode(value)?),
        Kind::Port => Resource::Port(body::decode(value)?),
        Kind::ClusterPolicy => Resource::ClusterPolicy(body::decode(value)?),
    })
}

/// Cluster policies are an admin's alone, to read as to write: refused before anything is
/// looked up, so that the answer says nothing of what exists.
fn require_cluster_admin(caller: &Caller, kind: Kind) -> ApiResult<()> {
    if kind == Kind::ClusterPolicy { caller.require_admin() } else { Ok(()) }
}

/// Projects and cluster policies are an admin's to write; the rest, their project's writers'.
fn require_write(caller: &Caller, kind: Kind, project: &str) -> ApiResult<()> {
    if kind.is_cluster_scoped() { caller.require_admin() } else { caller.require_write(project) }
}

/// Checks that the caller may change an object that exists: one it may not even read is, to
/// it, an object that does not exist (the same 404 as an absent one: a token of one project
/// learns nothing of another's objects, issue 17); one it may read but not change is a 403.
fn require_write_existing(caller: &Caller, kind: Kind, key: &ObjectKey, current: &StoredObject) -> ApiResult<()> {
    let owner = owner(current)?;
    if !may_read(caller, owner.as_deref()) {
        return Err(not_found(kind, key));
    }
    require_write(caller, kind, owner.as_deref().unwrap_or_default())
}

/// Fields only an admin may set or change. A port's `interface` is a claim on its node's
/// links: the agent binds the port's anti-spoofing to it, so a writer who could name one could
/// cut off other ports' traffic (issue 17: `eth0` did). Writers leave it out and get the name
/// derived from the port's identity; sending back the interface a port already has is fine.
/// A network's `shared` and `node_blocks` make it the cluster's pod network: other projects'
/// ports use it, and its blocks are routed on every node (DESIGN.md §9), so a writer who could
/// set them could route any prefix of the cluster's to a node of their choosing.
fn require_admin_fields(caller: &Caller, new: &Resource, current: Option<&StoredObject>) -> ApiResult<()> {
    if caller.is_admin() {
        return Ok(());
    }
    if let Resource::VirtualNetwork(vn) = new {
        let before = match current.map(StoredObject::decode).transpose()? {
            Some(Resource::VirtualNetwork(old)) => (old.shared, old.node_blocks),
            _ => (false, None),
        };
        if vn.shared != before.0 {
            return Err(ApiError::forbidden_field("/shared", "only an admin shares a network with every project"));
        }
        if vn.node_blocks != before.1 {
            return Err(ApiError::forbidden_field(
                "/node_blocks",
                "only an admin splits a network into node blocks: they are routed on every node",
            ));
        }
        return Ok(());
    }
    let Resource::Port(port) = new else { return Ok(()) };
    let before = match current.map(StoredObject::decode).transpose()? {
        Some(Resource::Port(old)) => old.interface,
        _ => None,
    };
    if port.interface != before {
        return Err(ApiError::forbidden_field(
            "/interface",
            "only an admin sets a port's interface; leave it out and the port gets the one derived from its name",
        ));
    }
    Ok(())
}

pub(crate) async fn op_create(
    txn: &mut Txn,
    caller: &Caller,
    kind: Kind,
    value: serde_json::Value,
) -> ApiResult<StoredObject> {
    let resource = creatable(caller, kind, value)?;
    Ok(txn.create(resource).await?)
}

/// The resource a create asks for, if the caller may create it.
pub(crate) fn creatable(caller: &Caller, kind: Kind, value: serde_json::Value) -> ApiResult<Resource> {
    require_cluster_admin(caller, kind)?;
    let resource = decode(kind, value)?;
    require_write(caller, kind, resource.project().unwrap_or(resource.name()))?;
    require_admin_fields(caller, &resource, None)?;
    Ok(resource)
}

pub(crate) async fn op_replace(
    txn: &mut Txn,
    caller: &Caller,
    kind: Kind,
    key: &ObjectKey,
    value: serde_json::Value,
    if_match: Option<i64>,
) -> ApiResult<StoredObject> {
    require_cluster_admin(caller, kind)?;
    let resource = decode(kind, value)?;
    let current = txn.get_for_update(kind, key).await?;
    require_write_existing(caller, kind, key, &current)?;
    require_admin_fields(caller, &resource, Some(&current))?;
    Ok(txn.replace(kind, key, resource, if_match).await?)
}

pub(crate) async fn op_patch(
    txn: &mut Txn,
    caller: &Caller,
    kind: Kind,
    key: &ObjectKey,
    patch: &serde_json::Value,
    if_match: Option<i64>,
) -> ApiResult<StoredObject> {
    require_cluster_admin(caller, kind)?;
    if !patch.is_object() {
        return Err(ApiError::invalid(weft_model::ValidationErrors::single("", "a merge patch is a JSON object")));
    }
    let current = txn.get_for_update(kind, key).await?;
    require_write_existing(caller, kind, key, &current)?;
    let mut value: serde_json::Value = serde_json::from_str(&current.to_json()).map_err(|e| {
        tracing::error!(id = %current.id, error = %e, "stored object is not JSON");
        ApiError::internal()
    })?;
    weft_model::merge_patch(&mut value, patch);
    let resource = decode(kind, value)?;
    require_admin_fields(caller, &resource, Some(&current))?;
    Ok(txn.replace(kind, key, resource, if_match).await?)
}

pub(crate) async fn op_delete(
    txn: &mut Txn,
    caller: &Caller,
    kind: Kind,
    key: &ObjectKey,
    cascade: bool,
    if_match: Option<i64>,
) -> ApiResult<()> {
    require_cluster_admin(caller, kind)?;
    let current = txn.get_for_update(kind, key).await?;
    require_write_existing(caller, kind, key, &current)?;
    Ok(txn.delete(kind, key, cascade, if_match).await?)
}
