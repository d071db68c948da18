//! Issue 17's findings replayed with real packets: a tenant's writer token, a lab of network
//! namespaces with an nftables agent per node, and what gets through. Each test makes the
//! attack, checks it is refused, and probes that the victim's policy still holds in the kernel.
//! Needs root (CI runs as root).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::lab::{Fixture, PodDef};
use serde_json::{Value, json};

fn labels(app: &str) -> Value {
    json!({ "app": app })
}

/// A client and a database in namespace x, an attacker's pod in namespace evil.
fn victim_and_attacker() -> Vec<PodDef> {
    vec![
        PodDef { namespace: "x", name: "client", node: "n1", addresses: &["10.73.0.1"], labels: labels("client") },
        PodDef { namespace: "x", name: "db", node: "n2", addresses: &["10.73.0.2"], labels: labels("db") },
        PodDef { namespace: "evil", name: "e", node: "n1", addresses: &["10.73.0.9"], labels: labels("e") },
    ]
}

/// A writer of one project, as the attacker holds.
async fn writer(lab: &Fixture, project: &str) -> weft_client::Client {
    let token = lab.client.create_token("writer", Some(project), "attacker", None).await.unwrap();
    weft_client::Client::new(&lab.url, Some(token.token.unwrap()), None).unwrap()
}

/// Finding 1: a writer of k8s-evil set `security_groups: ["k8s-default/grp"]` on its own port
/// and opened a TCP connection to what k8s-default allows only that group's members.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_join_another_tenants_group_to_reach_its_pods() {
    require_root!();
    let lab = Fixture::up("attack-join", &victim_and_attacker()).await;
    // db takes TCP 80 only from members of db-clients; client is one.
    lab.create("security-groups", json!({"name": "db-clients", "project": "k8s-x", "policy_types": []})).await;
    lab.create(
        "security-groups",
        json!({"name": "db-in", "project": "k8s-x", "selector": {"matchLabels": {"app": "db"}},
            "policy_types": ["ingress"], "rules": [{"direction": "ingress", "protocol": "tcp", "ports": [80],
            "remote": {"type": "security_group", "security_group": "db-clients"}}]}),
    )
    .await;
    let key = |p: &str| weft_client::Key::parse(weft_model::Kind::Port, p);
    let join = |group: &str| json!({"security_groups": [group]});
    lab.client.patch::<weft_model::Port>(&key("k8s-x/client"), &join("db-clients"), None).await.unwrap();
    lab.converge().await;
    let before = lab.agrees("tcp", Some(80)).await;
    assert!(before.allows("k8s-x/client", "k8s-x/db"), "{}", before.table());
    assert!(!before.allows("k8s-evil/e", "k8s-x/db"), "{}", before.table());

    // The attack: one PATCH of the attacker's own port.
    let attacker = writer(&lab, "k8s-evil").await;
    let refused = attacker.patch::<weft_model::Port>(&key("k8s-evil/e"), &join("k8s-x/db-clients"), None).await;
    let Err(weft_client::ClientError::Api(problem)) = &refused else { panic!("the join was not refused: {refused:?}") };
    assert_eq!(problem.status, 422, "{problem:?}");
    assert_eq!(problem.errors[0].pointer.as_deref(), Some("/security_groups/0"), "{problem:?}");
    lab.converge().await;
    let after = lab.agrees("tcp", Some(80)).await;
    assert!(!after.allows("k8s-evil/e", "k8s-x/db"), "the attacker reaches db:\n{}", after.table());
    assert!(after.allows("k8s-x/client", "k8s-x/db"), "{}", after.table());
}
