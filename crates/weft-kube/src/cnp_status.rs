//! The status kube-manager writes back on each ClusterNetworkPolicy (DESIGN.md §11): whether
//! weft enforces it, on how many of the nodes that hold it its last change is applied, and
//! whether it shares its tier and priority with another (they then decide by name). Read from
//! weft's cluster policy and its served status (docs/cluster-policy.md); written as two
//! standard conditions, and only when they change.

use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use weft_client::Client;
use weft_model::ClusterPolicy;

use crate::cnp::{ClusterNetworkPolicy, policy_name};
use crate::translate::Options;

/// How often the conditions are brought up to date.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The conditions of a ClusterNetworkPolicy, given weft's policy of it (`None`: weft holds
/// none, so it enforces nothing of it).
pub fn conditions(policy: Option<&ClusterPolicy>) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let Some(policy) = policy else {
        return vec![
            ("Enforced", "False", "NotRepresentable", "weft cannot represent it: see its Events".into()),
            ("PriorityTie", "False", "Unique", String::new()),
        ];
    };
    let status = policy.status.clone().unwrap_or_default();
    let enforced = if status.applied == status.nodes {
        ("Enforced", "True", "Applied", format!("applied on {} of {} nodes", status.applied, status.nodes))
    } else {
        ("Enforced", "False", "Pending", format!("applied on {} of {} nodes", status.applied, status.nodes))
    };
    let tie = if status.ties.is_empty() {
        ("PriorityTie", "False", "Unique", String::new())
    } else {
        let names: Vec<&str> = status.ties.iter().map(|t| t.as_str()).collect();
        (
            "PriorityTie",
            "True",
            "SamePriority",
            format!("tier and priority shared with {}: they decide in name order", names.join(", ")),
        )
    };
    vec![enforced, tie]
}

/// `conditions` as the object's `status.conditions`, keeping the transition time of each that
/// did not change; `None` when nothing changed.
pub fn status_patch(current: Option<&Value>, wanted: &[(&str, &str, &str, String)], now: &str) -> Option<Value> {
    let old = current.and_then(|s| s.get("conditions")).and_then(Value::as_array).cloned().unwrap_or_default();
    let same = |c: &Value, (t, s, r, m): &(&str, &str, &str, String)| {
        c["type"] == *t && c["status"] == *s && c["reason"] == *r && c["message"] == m.as_str()
    };
    if old.len() == wanted.len() && wanted.iter().all(|w| old.iter().any(|c| same(c, w))) {
        return None;
    }
    let conditions: Vec<Value> = wanted
        .iter()
        .map(|(t, s, r, m)| {
            let since = old
                .iter()
                .find(|c| c["type"] == *t && c["status"] == *s)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(now);
            json!({"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": since})
        })
        .collect();
    Some(json!({"status": {"conditions": conditions}}))
}

/// Brings every ClusterNetworkPolicy's conditions up to date, every [`STATUS_EVERY`], until the
/// future is dropped. A cluster without the CRD has none to write.
pub async fn follow(kube: kube::Client, weft: Client, o: Options) {
    let api: Api<ClusterNetworkPolicy> = Api::all(kube);
    let mut interval = tokio::time::interval(STATUS_EVERY);
    loop {
        interval.tick().await;
        if let Err(e) = write_all(&api, &weft, &o).await {
            tracing::debug!(error = %e, "cluster network policies' status not written this time");
        }
    }
}

async fn write_all(api: &Api<ClusterNetworkPolicy>, weft: &Client, o: &Options) -> Result<(), String> {
    let cnps = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
    if cnps.items.is_empty() {
        return Ok(());
    }
    let policies: Vec<ClusterPolicy> = weft.list_all(&Default::default()).await.map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for cnp in cnps.items {
        let Some(name) = cnp.metadata.name.clone() else { continue };
        let weft_name = policy_name(&name, o);
        let policy = policies.iter().find(|p| p.name == weft_name);
        let Some(patch) = status_patch(cnp.status.as_ref(), &conditions(policy), &now) else { continue };
        if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(policy = %name, error = %e, "cannot write the cluster network policy's status");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_enforced_pending_or_not_representable_and_warn_of_ties() {
        let mut policy: ClusterPolicy =
            serde_json::from_value(json!({"name": "k8s-cnp-a", "tier": "admin", "priority": 1, "subject": {}}))
                .unwrap();
        assert_eq!(conditions(None)[0].2, "NotRepresentable");
        policy.status = Some(weft_model::ClusterPolicyStatus { ties: vec![], nodes: 3, applied: 2 });
        assert_eq!(conditions(Some(&policy))[0], ("Enforced", "False", "Pending", "applied on 2 of 3 nodes".into()));
        policy.status = Some(weft_model::ClusterPolicyStatus { ties: vec!["k8s-cnp-b".into()], nodes: 3, applied: 3 });
        let c = conditions(Some(&policy));
        assert_eq!((c[0].1, c[1].1, c[1].2), ("True", "True", "SamePriority"));
        assert!(c[1].3.contains("k8s-cnp-b"));
    }

    #[test]
    fn a_status_is_written_only_when_a_condition_changed_and_keeps_its_transition_time() {
        let wanted = vec![("Enforced", "True", "Applied", "applied on 1 of 1 nodes".to_string())];
        let first = status_patch(None, &wanted, "2026-12-07T00:00:00Z").expect("nothing there yet");
        let written = first["status"].clone();
        assert_eq!(status_patch(Some(&written), &wanted, "2026-12-07T01:00:00Z"), None, "unchanged: no write");
        let more = vec![("Enforced", "True", "Applied", "applied on 2 of 2 nodes".to_string())];
        let again = status_patch(Some(&written), &more, "2026-12-07T01:00:00Z").expect("the message changed");
        assert_eq!(
            again["status"]["conditions"][0]["lastTransitionTime"], "2026-12-07T00:00:00Z",
            "the condition's status did not change: its transition time stays"
        );
    }
}
