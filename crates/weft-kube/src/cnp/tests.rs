use weft_model::{PolicyAction, PolicyRemote, PortMatch, Protocol, Tier};

use super::*;

fn read(yaml: &str) -> ClusterNetworkPolicy {
    serde_yaml::from_str(yaml).expect("a ClusterNetworkPolicy")
}

fn translate(yaml: &str) -> (Option<ClusterPolicy>, Vec<String>) {
    let (policy, problems) = cluster_network_policy(&read(yaml), &Options::default());
    (policy, problems.into_iter().map(|p| p.to_string()).collect())
}

/// The conformance suite's gress-rules policy (admin tier), abridged: pods and namespaces
/// peers, numbered, ranged and named ports.
const GRESS_RULES: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: gress-rules
spec:
  tier: Admin
  priority: 16
  subject:
    namespaces:
      matchLabels:
        conformance-house: gryffindor
  ingress:
  - name: "accept-from-slytherin-at-port-80-53-9003"
    action: "Accept"
    from:
    - namespaces:
        matchLabels:
          conformance-house: slytherin
    protocols:
    - tcp:
        destinationPort:
          number: 80
    - udp:
        destinationPort:
          range: {start: 50, end: 60}
    - destinationNamedPort: dns
  - name: "deny-from-hufflepuff"
    action: "Deny"
    from:
    - pods:
        namespaceSelector:
          matchLabels:
            conformance-house: hufflepuff
        podSelector: {}
  egress:
  - name: "pass-to-ravenclaw-everything"
    action: "Pass"
    to:
    - namespaces:
        matchLabels:
          conformance-house: ravenclaw
  - name: "deny-to-the-world"
    action: "Deny"
    to:
    - networks: ["0.0.0.0/0", "10.0.0.1/8"]
"#;

#[test]
fn a_policy_becomes_one_weft_policy_with_its_rules_in_order() {
    let (policy, problems) = translate(GRESS_RULES);
    assert!(problems.is_empty(), "{problems:?}");
    let p = policy.unwrap();
    assert_eq!((p.name.as_str(), p.tier, p.priority), ("k8s-cnp-gress-rules", Tier::Admin, 16));
    // Namespaces of this cluster only, every port of them.
    assert!(p.subject.ports.is_empty());
    assert_eq!(p.subject.projects.match_labels.get(CLUSTER_LABEL).map(String::as_str), Some("default"));
    assert_eq!(p.subject.projects.match_labels.get("conformance-house").map(String::as_str), Some("gryffindor"));
    let names: Vec<(&str, PolicyAction)> =
        p.ingress.iter().chain(&p.egress).map(|r| (r.name.as_str(), r.action)).collect();
    assert_eq!(
        names,
        [
            ("accept-from-slytherin-at-port-80-53-9003", PolicyAction::Accept),
            ("deny-from-hufflepuff", PolicyAction::Deny),
            ("pass-to-ravenclaw-everything", PolicyAction::Pass),
            ("deny-to-the-world", PolicyAction::Deny),
        ]
    );
    let accept = &p.ingress[0];
    assert_eq!(
        accept.protocols.iter().map(|p| (p.protocol, p.port.clone())).collect::<Vec<_>>(),
        [
            (Some(Protocol::Tcp), Some(PortMatch::Single(80))),
            (Some(Protocol::Udp), Some(PortMatch::Range { from: 50, to: 60 })),
            (None, Some(PortMatch::Named("dns".into()))),
        ]
    );
    let PolicyRemote::Selector { ports, projects } = &p.ingress[1].remotes[0] else { panic!("a selector") };
    assert!(ports.is_empty());
    assert_eq!(projects.match_labels.get("conformance-house").map(String::as_str), Some("hufflepuff"));
    let PolicyRemote::Networks { networks } = &p.egress[1].remotes[0] else { panic!("networks") };
    assert_eq!(networks.iter().map(ToString::to_string).collect::<Vec<_>>(), ["0.0.0.0/0", "10.0.0.0/8"]);
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn a_peer_this_version_does_not_know_fails_closed() {
    // A newer CRD's peer, and a nodes peer (not supported yet), in each kind of rule.
    let (policy, problems) = translate(
        r#"
metadata: {name: newer}
spec:
  tier: Baseline
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}
  egress:
  - name: accept-some
    action: Accept
    to:
    - namespaces: {}
    - someFuturePeer: {x: 1}
  - name: accept-only-unknown
    action: Accept
    to:
    - nodes: {matchLabels: {role: control}}
  - name: deny-unknown
    action: Deny
    to:
    - domainNames: ["*.example.com"]
  - name: pass-unknown-protocol
    action: Pass
    to:
    - namespaces: {}
    protocols:
    - icmp: {}
"#,
    );
    let p = policy.unwrap();
    assert_eq!(p.tier, Tier::Baseline);
    let egress: Vec<(&str, PolicyAction, usize)> =
        p.egress.iter().map(|r| (r.name.as_str(), r.action, r.remotes.len())).collect();
    // The Accept keeps what it can say; the Accept with nothing left accepts nothing (gone);
    // a Deny or a Pass that cannot be read denies everything.
    assert_eq!(
        egress,
        [
            ("accept-some", PolicyAction::Accept, 1),
            ("deny-unknown", PolicyAction::Deny, 1),
            ("pass-unknown-protocol", PolicyAction::Deny, 1)
        ]
    );
    for denied in &p.egress[1..] {
        assert!(denied.protocols.is_empty());
        let PolicyRemote::Networks { networks } = &denied.remotes[0] else { panic!("every address") };
        assert_eq!(networks.iter().map(ToString::to_string).collect::<Vec<_>>(), ["0.0.0.0/0", "::/0"]);
    }
    assert!(problems.iter().all(|p| p.starts_with("ClusterNetworkPolicy newer: egress[")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("nodes and domainNames peers are not supported yet")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("the rule accepts nothing")), "{problems:?}");
    assert_eq!(problems.iter().filter(|p| p.contains("the rule denies everything")).count(), 2, "{problems:?}");
}

#[test]
fn a_policy_that_cannot_be_read_is_none_with_its_problem() {
    for (yaml, says) in [
        ("metadata: {name: x}\nspec: {tier: Developer, priority: 1, subject: {namespaces: {}}}", "tier"),
        ("metadata: {name: x}\nspec: {tier: Admin, priority: 1, subject: {}}", "exactly one of namespaces and pods"),
        ("metadata: {name: x}\nspec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}", "priority"),
        (
            "metadata: {name: x}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {matchExpressions: [{key: a, operator: Near}]}}}",
            "operator",
        ),
    ] {
        let (policy, problems) = translate(yaml);
        assert!(policy.is_none(), "{yaml}");
        assert!(problems.len() == 1 && problems[0].contains(says), "{yaml}: {problems:?}");
    }
}
