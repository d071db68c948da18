//! `GET /v1/changes?since=REV`: the change log as a stream of newline-delimited JSON. It
//! replays what was committed after REV, then keeps streaming new revisions as they commit,
//! with a bookmark line (`{"op":"bookmark","revision":N}`) whenever it has caught up and every
//! 15 seconds while idle, so that a client knows how far it has read. `watch=false` ends the
//! stream once it has caught up.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_store::Change;

use crate::AppState;
use crate::auth::{Caller, STREAM_RECHECK};
use crate::problem::{ApiError, ApiResult};

const HEARTBEAT: Duration = Duration::from_secs(15);
/// Revisions read from the database at a time.
const PAGE_REVISIONS: i64 = 256;

pub async fn changes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut since = 0;
    let mut watch = true;
    for (name, value) in params {
        match name.as_str() {
            "since" => {
                since = value
                    .parse()
                    .ok()
                    .filter(|s: &i64| *s >= 0)
                    .ok_or_else(|| ApiError::invalid_parameter("since", "must be a revision number, 0 or more"))?
            }
            "watch" => {
                watch = value.parse().map_err(|_| ApiError::invalid_parameter("watch", "must be true or false"))?
            }
            other => {
                return Err(ApiError::invalid_parameter(other, "unknown parameter; changes take since and watch"));
            }
        }
    }
    // The first page is read before answering, so that a compacted `since` is a 410 status
    // rather than an error in the middle of a 200 stream.
    let first = state.store.changes_since(since, PAGE_REVISIONS).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        if let Err(e) = stream(state, caller, watch, first, &tx).await {
            let problem = e.to_problem();
            let line = serde_json::json!({"op": "error", "error": problem}).to_string() + "\n";
            let _ = tx.send(Ok(Bytes::from(line))).await;
        }
    });
    let mut response = Body::from_stream(ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// Feeds the response until the client goes away (the channel closes) or, without `watch`,
/// until caught up; ends with an error line when the caller's token is revoked or expires
/// (checked every [`STREAM_RECHECK`], and at the expiry).
async fn stream(
    state: AppState,
    caller: Caller,
    watch: bool,
    first: weft_store::ChangePage,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), ApiError> {
    let mut revisions = state.revisions.clone();
    let mut page = first;
    let next_check = || {
        let mut at = tokio::time::Instant::now() + STREAM_RECHECK;
        if let Some(expiry) = caller.expires_at() {
            let left = (expiry - chrono::Utc::now()).to_std().unwrap_or_default();
            at = at.min(tokio::time::Instant::now() + left);
        }
        at
    };
    let mut check_at = next_check();
    loop {
        if tokio::time::Instant::now() >= check_at {
            caller.still_valid(&state).await?;
            check_at = next_check();
        }
        let mut lines = String::new();
        for change in &page.changes {
            if visible(&caller, change) {
                lines.push_str(&change.to_json());
                lines.push('\n');
            }
        }
        let since = page.up_to;
        let caught_up = page.caught_up();
        if caught_up {
            lines.push_str(&format!("{{\"op\":\"bookmark\",\"revision\":{since}}}\n"));
        }
        if !lines.is_empty() && tx.send(Ok(Bytes::from(lines))).await.is_err() {
            return Ok(());
        }
        if caught_up {
            if !watch {
                return Ok(());
            }
            loop {
                let woken = tokio::select! {
                    changed = revisions.wait_for(|r| *r > since) => Woken::Revision(changed.is_ok()),
                    _ = tokio::time::sleep(HEARTBEAT) => Woken::Heartbeat,
                    _ = tokio::time::sleep_until(check_at) => Woken::Recheck,
                    _ = tx.closed() => return Ok(()),
                    _ = state.stopped() => return Ok(()),
                };
                match woken {
                    Woken::Revision(true) => break,
                    Woken::Revision(false) => return Ok(()),
                    Woken::Recheck => {
                        caller.still_valid(&state).await?;
                        check_at = next_check();
                    }
                    Woken::Heartbeat => {
                        let line = format!("{{\"op\":\"bookmark\",\"revision\":{since}}}\n");
                        if tx.send(Ok(Bytes::from(line))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        page = state.store.changes_since(since, PAGE_REVISIONS).await?;
    }
}

/// What ended a caught-up stream's wait.
enum Woken {
    /// A new revision (or, `false`, the revision watch is gone).
    Revision(bool),
    Heartbeat,
    /// Time to check the caller's token again.
    Recheck,
}

/// Whether the caller may see a change: admins see everything, others their project's.
fn visible(caller: &Caller, change: &Change) -> bool {
    caller.is_admin()
        || crate::resources::owner(&change.object)
            .is_ok_and(|owner| crate::resources::may_read(caller, owner.as_deref()))
}
