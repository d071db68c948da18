use proptest::prelude::*;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn parses_the_kubernetes_syntax() {
    let s = LabelSelector::parse("app=db, tier in (a,b),!legacy,env!=prod,zone notin (x), present,k==v").unwrap();
    assert_eq!(s.match_labels, labels(&[("app", "db"), ("k", "v")]).into());
    let ops: Vec<_> = s.match_expressions.iter().map(|r| (r.key.as_str(), r.operator, r.values.clone())).collect();
    assert_eq!(
        ops,
        vec![
            ("tier", Operator::In, vec!["a".to_string(), "b".to_string()]),
            ("legacy", Operator::DoesNotExist, vec![]),
            ("env", Operator::NotIn, vec!["prod".to_string()]),
            ("zone", Operator::NotIn, vec!["x".to_string()]),
            ("present", Operator::Exists, vec![]),
        ]
    );
}

#[test]
fn empty_string_is_everything() {
    assert_eq!(LabelSelector::parse("  ").unwrap(), LabelSelector::everything());
    assert!(LabelSelector::everything().matches(&labels(&[("any", "thing")])));
}

#[test]
fn rejects_malformed_strings() {
    for bad in ["app=db,", "tier in a,b", "tier in (a,b", "=x", "app db", "!", "a,,b"] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn matching_follows_kubernetes() {
    let s = LabelSelector::parse("app=db,tier in (a,b),!legacy,env!=prod").unwrap();
    assert!(s.matches(&labels(&[("app", "db"), ("tier", "a")])));
    assert!(s.matches(&labels(&[("app", "db"), ("tier", "b"), ("env", "dev")])));
    assert!(!s.matches(&labels(&[("app", "db"), ("tier", "c")])));
    assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("legacy", "")])));
    assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("env", "prod")])));
    assert!(!s.matches(&labels(&[("tier", "a")])));
}

#[test]
fn validation_reports_pointers() {
    let s = LabelSelector {
        match_labels: labels(&[("Bad Key", "v")]).into(),
        match_expressions: vec![
            Requirement { key: "a".into(), operator: Operator::In, values: vec![] },
            Requirement { key: "b".into(), operator: Operator::Exists, values: vec!["x".into()] },
        ],
    };
    let mut v = Validator::new();
    v.at("selector", |v| s.validate(v));
    let pointers: Vec<_> = v.finish().unwrap_err().errors.into_iter().map(|e| e.pointer).collect();
    assert_eq!(
        pointers,
        ["/selector/matchLabels/Bad Key", "/selector/matchExpressions/0/values", "/selector/matchExpressions/1/values"]
    );
}

#[test]
fn object_form_uses_kubernetes_field_names() {
    let s: LabelSelector = serde_json::from_str(
        r#"{"matchLabels":{"app":"db"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["x"]}]}"#,
    )
    .unwrap();
    assert_eq!(s.to_string(), "app=db,tier notin (x)");
    assert!(serde_json::from_str::<LabelSelector>(r#"{"matchLabel":{}}"#).is_err());
}

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    let key = prop::sample::select(vec!["app", "tier", "env", "example.com/team"]);
    let value = prop::sample::select(vec!["a", "b", "c", ""]);
    let op = prop::sample::select(vec![Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist]);
    let expr = (key.clone(), op, prop::collection::vec(value.clone(), 1..3)).prop_map(|(k, op, values)| {
        let values = match op {
            Operator::In | Operator::NotIn => values.into_iter().map(String::from).collect(),
            _ => vec![],
        };
        Requirement { key: k.to_string(), operator: op, values }
    });
    (prop::collection::btree_map(key, value, 0..3), prop::collection::vec(expr, 0..3)).prop_map(|(ml, me)| {
        LabelSelector {
            match_labels: ml.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions: me,
        }
    })
}

fn arb_labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier", "env", "example.com/team"]).prop_map(String::from),
        prop::sample::select(vec!["a", "b", "c", ""]).prop_map(String::from),
        0..4,
    )
}

proptest! {
    /// The string form is a faithful rendering: parsing it matches exactly the same label sets.
    #[test]
    fn string_form_round_trips(s in arb_selector(), l in arb_labels()) {
        let text = s.to_string();
        let parsed = LabelSelector::parse(&text).unwrap();
        prop_assert_eq!(parsed.matches(&l), s.matches(&l), "{}", text);
    }
}

#[test]
fn match_labels_read_and_write_as_the_map_they_replace() {
    let text = r#"{"tier":"db","app":"web","app":"api"}"#;
    let compact: MatchLabels = serde_json::from_str(text).unwrap();
    let map: BTreeMap<String, String> = serde_json::from_str(text).unwrap();
    // The last value of a key given twice, keys in order: as the BTreeMap has it.
    assert_eq!(serde_json::to_string(&compact).unwrap(), serde_json::to_string(&map).unwrap());
    assert_eq!(compact, MatchLabels::from(map.clone()));
    assert_eq!(compact.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>());
    assert_eq!(compact.get("app").map(String::as_str), Some("api"));
    assert_eq!(compact.get("nope"), None);
    let mut more = compact.clone();
    assert_eq!(more.insert("app".into(), "db".into()).as_deref(), Some("api"));
    assert_eq!(more.insert("zone".into(), "a".into()), None);
    assert_eq!(more.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["app", "tier", "zone"]);
    assert!(serde_json::from_str::<MatchLabels>(r#"{"app": 1}"#).is_err());
    assert!(serde_json::from_str::<MatchLabels>("[]").is_err());
}
