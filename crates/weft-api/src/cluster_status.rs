//! The status the API adds to a cluster policy it serves (DESIGN.md §11): which other policies
//! share its tier and priority, and on how many of the nodes that hold it its last change is
//! applied. The store keeps no status: it changes when *another* policy is written and as
//! agents ack, so it is computed when a policy is served, from every policy's place and the
//! nodes' realization.

use std::collections::HashMap;

use uuid::Uuid;
use weft_model::ClusterPolicyStatus;
use weft_store::PolicyPlace;

use crate::AppState;
use crate::problem::ApiResult;

/// What a cluster policy's status is computed from, read once for a response.
#[derive(Debug, Default)]
pub(crate) struct Context {
    places: Vec<PolicyPlace>,
    /// The nodes whose span holds each policy, as this process's compiler has it.
    holders: HashMap<Uuid, Vec<String>>,
    /// Each node's realized revision.
    realized: HashMap<String, i64>,
}

impl Context {
    /// Nothing is read for no places: a response that holds no cluster policy.
    pub(crate) async fn read(state: &AppState, places: Vec<PolicyPlace>) -> ApiResult<Context> {
        if places.is_empty() {
            return Ok(Context::default());
        }
        let holders = state
            .policy
            .with_compiler(|c, _| {
                places.iter().map(|p| (p.id, c.policy_nodes(&p.id).into_iter().map(String::from).collect())).collect()
            })
            .unwrap_or_default();
        let realized = state.store.list_nodes().await?.into_iter().map(|n| (n.name, n.realized_revision)).collect();
        Ok(Context { places, holders, realized })
    }

    /// The status of the policy `id`, whose last change is `revision`.
    pub(crate) fn status_of(&self, id: Uuid, revision: i64) -> ClusterPolicyStatus {
        let holders = self.holders.get(&id).map(Vec::as_slice).unwrap_or_default();
        let applied = holders.iter().filter(|n| self.realized.get(*n).is_some_and(|r| *r >= revision)).count();
        ClusterPolicyStatus { ties: ties(&self.places, id), nodes: holders.len() as u64, applied: applied as u64 }
    }
}

/// The other policies of the same tier and priority as `id`, by name.
pub(crate) fn ties(places: &[PolicyPlace], id: Uuid) -> Vec<String> {
    let Some(own) = places.iter().find(|p| p.id == id) else { return Vec::new() };
    places
        .iter()
        .filter(|p| p.id != id && p.tier == own.tier && p.priority == own.priority)
        .map(|p| p.name.clone())
        .collect()
}

/// A served object's JSON (an object's text) with `status` as its last field.
pub(crate) fn with_status(mut json: String, status: &ClusterPolicyStatus) -> String {
    let Ok(status) = serde_json::to_string(status) else { return json };
    let end = json.trim_end().len();
    json.truncate(end);
    if json.ends_with('}') {
        json.pop();
        let empty = json.trim_end().ends_with('{');
        json.push_str(if empty { "\"status\":" } else { ",\"status\":" });
        json.push_str(&status);
        json.push('}');
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(n: u128, name: &str, tier: &str, priority: i64) -> PolicyPlace {
        PolicyPlace { id: Uuid::from_u128(n), name: name.into(), tier: tier.into(), priority }
    }

    #[test]
    fn ties_are_the_others_of_the_same_tier_and_priority() {
        let places = [
            place(1, "a", "admin", 10),
            place(2, "b", "admin", 10),
            place(3, "c", "baseline", 10),
            place(4, "d", "admin", 10),
        ];
        let id = Uuid::from_u128;
        assert_eq!(ties(&places, id(2)), ["a", "d"]);
        assert_eq!(ties(&places, id(3)), Vec::<String>::new(), "another tier is no tie");
        assert_eq!(ties(&[place(1, "a", "admin", 1), place(2, "b", "admin", 2)], id(1)), Vec::<String>::new());
        assert_eq!(ties(&places, id(9)), Vec::<String>::new());
    }

    #[test]
    fn the_status_is_the_last_field() {
        let status = ClusterPolicyStatus { ties: vec!["x".into()], ..ClusterPolicyStatus::default() };
        let json = with_status("{\"name\":\"a\"} ".into(), &status);
        assert_eq!(json, "{\"name\":\"a\",\"status\":{\"ties\":[\"x\"],\"nodes\":0,\"applied\":0}}");
        let value: serde_json::Value = serde_json::from_str(&with_status("{}".into(), &status)).unwrap();
        assert_eq!(value, serde_json::json!({"status": {"ties": ["x"], "nodes": 0, "applied": 0}}));
    }
}
