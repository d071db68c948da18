//! `POST /v1/batch`: many writes, all or nothing, one revision (kube-manager's resync path).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use uuid::Uuid;
use weft_model::Kind;
use weft_store::ObjectKey;

use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::problem::{ApiError, ApiResult};
use crate::resources::{creatable, json_response, op_delete, op_patch, op_replace};

/// Operations in one batch at most.
pub const MAX_OPERATIONS: usize = weft_model::MAX_BATCH_OPERATIONS;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub operations: Vec<Operation>,
}

/// One write. An operation addresses its object by `id`, or by `name` (with `project` for
/// everything but projects); a replace may leave both out and use the object's own.
// The target fields repeat in each variant on purpose: serde cannot combine `flatten` with
// `deny_unknown_fields`, and an unknown field in a batch must be an error.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    Create {
        kind: Kind,
        #[schema(value_type = Object)]
        object: serde_json::Value,
    },
    Replace {
        kind: Kind,
        #[serde(default)]
        id: Option<Uuid>,
        #[serde(default)]
        project: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[schema(value_type = Object)]
        object: serde_json::Value,
        #[serde(default)]
        if_match: Option<i64>,
    },
    Patch {
        kind: Kind,
        #[serde(default)]
        id: Option<Uuid>,
        #[serde(default)]
        project: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[schema(value_type = Object)]
        patch: serde_json::Value,
        #[serde(default)]
        if_match: Option<i64>,
    },
    Delete {
        kind: Kind,
        #[serde(default)]
        id: Option<Uuid>,
        #[serde(default)]
        project: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        cascade: bool,
        #[serde(default)]
        if_match: Option<i64>,
    },
}

fn target_key(
    kind: Kind,
    id: Option<Uuid>,
    project: Option<String>,
    name: Option<String>,
    object: Option<&serde_json::Value>,
) -> ApiResult<ObjectKey> {
    if let Some(id) = id {
        return Ok(ObjectKey::Id(id));
    }
    let from_object = |field: &str| object.and_then(|o| o.get(field)).and_then(|v| v.as_str()).map(String::from);
    let name = name.or_else(|| from_object("name"));
    let scoped = kind.is_cluster_scoped();
    let project = if scoped { None } else { project.or_else(|| from_object("project")) };
    match (name, project) {
        (Some(name), project) if scoped || project.is_some() => Ok(ObjectKey::Name { project, name }),
        _ => Err(ApiError::invalid(weft_model::ValidationErrors::single(
            "",
            format!("name the {kind}: give id, or name{}", if scoped { "" } else { " and project" }),
        ))),
    }
}

pub async fn batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: BatchRequest = body::json(&headers, body)?;
    if request.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::invalid(weft_model::ValidationErrors::single(
            "/operations",
            format!("at most {MAX_OPERATIONS} operations per batch, got {}", request.operations.len()),
        )));
    }
    let mut txn = state.store.begin().await?;
    let mut results: Vec<Result<weft_store::StoredObject, (Kind, ObjectKey)>> =
        Vec::with_capacity(request.operations.len());
    let mut operations = request.operations.into_iter().enumerate().peekable();
    while let Some((i, op)) = operations.next() {
        let at = format!("/operations/{i}");
        let result = match op {
            Operation::Create { kind, object } => {
                // Creates of one kind in a row go in together: a few statements for
                // thousands of ports (Txn::create_all).
                let mut positions = vec![i];
                let mut resources =
                    vec![creatable(&caller, kind, object).map_err(|e| e.under(&format!("{at}/object")))?];
                while let Some((j, Operation::Create { object, .. })) =
                    operations.next_if(|(_, op)| matches!(op, Operation::Create { kind: next, .. } if *next == kind))
                {
                    positions.push(j);
                    resources.push(
                        creatable(&caller, kind, object).map_err(|e| e.under(&format!("/operations/{j}/object")))?,
                    );
                }
                let created = txn.create_all(resources).await.map_err(|f| {
                    let at = positions.get(f.index).copied().unwrap_or(i);
                    ApiError::from(f.error).under(&format!("/operations/{at}/object"))
                })?;
                results.extend(created.into_iter().map(Ok));
                continue;
            }
            Operation::Replace { kind, id, project, name, object, if_match } => {
                let key = target_key(kind, id, project, name, Some(&object)).map_err(|e| e.under(&at))?;
                op_replace(&mut txn, &caller, kind, &key, object, if_match)
                    .await
                    .map(Ok)
                    .map_err(|e| e.under(&format!("{at}/object")))
            }
            Operation::Patch { kind, id, project, name, patch, if_match } => {
                let key = target_key(kind, id, project, name, None).map_err(|e| e.under(&at))?;
                op_patch(&mut txn, &caller, kind, &key, &patch, if_match)
                    .await
                    .map(Ok)
                    .map_err(|e| e.under(&format!("{at}/patch")))
            }
            Operation::Delete { kind, id, project, name, cascade, if_match } => {
                let key = target_key(kind, id, project, name, None).map_err(|e| e.under(&at))?;
                op_delete(&mut txn, &caller, kind, &key, cascade, if_match)
                    .await
                    .map(|()| Err((kind, key)))
                    .map_err(|e| e.under(&at))
            }
        };
        results.push(result?);
    }
    let revision = match txn.commit().await? {
        // Nothing was written: report how far the configuration is.
        0 => *state.revisions.borrow(),
        r => r,
    };
    let mut body = format!("{{\"revision\":{revision},\"results\":[");
    for (i, result) in results.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        match result {
            Ok(mut object) => {
                object.revision = revision;
                body.push_str(&format!("{{\"object\":{}}}", object.to_json()));
            }
            Err((kind, key)) => {
                body.push_str(&serde_json::json!({"deleted": {"kind": kind, "key": key.to_string()}}).to_string());
            }
        }
    }
    body.push_str("]}");
    Ok(json_response(StatusCode::OK, body))
}
