//! The status the API adds to a cluster policy it serves (DESIGN.md §11): which other policies
//! share its tier and priority. The store keeps no status: it changes when *another* policy is
//! written, so it is computed when a policy is served, from every policy's place.

use weft_model::ClusterPolicyStatus;
use weft_store::PolicyPlace;

/// The status of the policy named `name`, among `places`.
pub(crate) fn status_of(places: &[PolicyPlace], name: &str) -> ClusterPolicyStatus {
    let Some(own) = places.iter().find(|p| p.name == name) else { return ClusterPolicyStatus::default() };
    let ties = places
        .iter()
        .filter(|p| p.name != name && p.tier == own.tier && p.priority == own.priority)
        .map(|p| p.name.clone())
        .collect();
    ClusterPolicyStatus { ties }
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

    fn place(name: &str, tier: &str, priority: i64) -> PolicyPlace {
        PolicyPlace { name: name.into(), tier: tier.into(), priority }
    }

    #[test]
    fn ties_are_the_others_of_the_same_tier_and_priority() {
        let places =
            [place("a", "admin", 10), place("b", "admin", 10), place("c", "baseline", 10), place("d", "admin", 10)];
        assert_eq!(status_of(&places, "b").ties, ["a", "d"]);
        assert_eq!(status_of(&places, "c").ties, Vec::<String>::new(), "another tier is no tie");
        assert_eq!(status_of(&[place("a", "admin", 1), place("b", "admin", 2)], "a").ties, Vec::<String>::new());
        assert_eq!(status_of(&places, "gone").ties, Vec::<String>::new());
    }

    #[test]
    fn the_status_is_the_last_field() {
        let status = ClusterPolicyStatus { ties: vec!["x".into()] };
        let json = with_status("{\"name\":\"a\"} ".into(), &status);
        assert_eq!(json, "{\"name\":\"a\",\"status\":{\"ties\":[\"x\"]}}");
        let value: serde_json::Value = serde_json::from_str(&with_status("{}".into(), &status)).unwrap();
        assert_eq!(value, serde_json::json!({"status": {"ties": ["x"]}}));
    }
}
