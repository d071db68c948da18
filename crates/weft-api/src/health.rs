//! What `/readyz` checks: that this process can do its job now, and if not, why, in words an
//! operator can act on. Ready means: the database answers; the change-log follower runs, has
//! loaded the configuration and is not stuck behind it (whatever holds it back: its own work, or
//! a long transaction in weft's database that keeps every follower below it); and, where this
//! process serves agents, its gRPC service is up.

use std::time::Duration;

use crate::AppState;

/// The longest the compiler may be behind a committed revision before readiness fails: a
/// write takes milliseconds to reach it, so this is something stuck, not something slow.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How long a readiness probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How far the configuration is ahead of this process's compiler: the last revision committed
/// and when the first it has not reached was committed.
pub(crate) async fn behind(state: &AppState) -> Result<Option<(i64, chrono::DateTime<chrono::Utc>)>, String> {
    let compiled = state.policy.revision().unwrap_or(0);
    match tokio::time::timeout(PROBE_TIMEOUT, state.store.committed_beyond(compiled)).await {
        Ok(Ok(beyond)) => Ok(beyond),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within a second".into()),
    }
}

/// Everything that keeps this process from being ready, one sentence each.
pub(crate) async fn problems(state: &AppState) -> Vec<String> {
    let mut out = Vec::new();
    let policy = &state.policy;
    if let Some(serving) = &state.grpc_serving
        && !serving.load(std::sync::atomic::Ordering::Relaxed)
    {
        out.push("the agents' gRPC service is not serving".to_string());
    }
    if !policy.following() {
        out.push("the change-log follower is not running".to_string());
    } else if policy.revision().is_none() {
        out.push("the change-log follower has not loaded the configuration yet".to_string());
    }
    match behind(state).await {
        Err(e) => {
            out.insert(0, format!("the database does not answer ({e})"));
            return out;
        }
        Ok(Some((_, since))) => {
            let late = (chrono::Utc::now() - since).to_std().unwrap_or_default();
            if late > state.stuck_after && policy.following() && policy.revision().is_some() {
                let compiled = policy.revision().unwrap_or(0);
                let horizon = *state.revisions.borrow();
                let why = if horizon <= compiled {
                    match state.store.oldest_transaction().await {
                        Ok(Some((pid, age))) => format!(
                            "held back by a transaction open for {age:.0} s in weft's database (PostgreSQL pid {pid}): followers read only below the oldest open transaction"
                        ),
                        _ => "held back by an open transaction in weft's database".to_string(),
                    }
                } else {
                    format!("the change-log follower is stuck at revision {compiled}")
                };
                out.push(format!("the compiler is {:.0} s behind the configuration: {why}", late.as_secs_f64()));
            }
        }
        Ok(None) => {}
    }
    out
}
