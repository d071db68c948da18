//! The flow rollups (migrations/0010): a node's minute written whole replaces what was there,
//! read back by project and by group, and pruned by age.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use sqlx::PgPool;
use weft_store::Store;
use weft_store::flows::MinuteRow;

fn row(minute: chrono::DateTime<chrono::Utc>, project: &str, started: i64) -> MinuteRow {
    MinuteRow {
        minute,
        node: "n1".into(),
        port: uuid::Uuid::from_u128(1),
        project: project.into(),
        ingress: true,
        remote: Some("10.0.0.9".into()),
        remote_port: Some(uuid::Uuid::from_u128(2)),
        remote_project: Some("other".into()),
        protocol: 6,
        service: Some(5432),
        denied: false,
        grp: Some(uuid::Uuid::from_u128(3)),
        rule: Some(uuid::Uuid::from_u128(4)),
        isolated: true,
        started,
        ended: 0,
        packets_sent: 1,
        bytes_sent: 2,
        packets_received: 3,
        bytes_received: 4,
        sampled: 0,
        dropped: 0,
        group_name: Some("db-in".into()),
        origin: Some("NetworkPolicy shop/db-in [0]".into()),
        isolated_by: None,
        policy: None,
        policy_rule: None,
        tiered: None,
    }
}

#[sqlx::test(migrator = "weft_store::MIGRATOR")]
async fn a_nodes_minute_is_replaced_whole_and_read_by_project_and_group(pool: PgPool) {
    let store = Store::from_pool(pool);
    let minute = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let next = minute + chrono::Duration::minutes(1);
    store.replace_flow_minute(minute, "n1", &[row(minute, "shop", 2)]).await.unwrap();
    // What decided, by name, comes back as written: a denied row's isolating groups too.
    let denied = MinuteRow {
        denied: true,
        grp: None,
        rule: None,
        group_name: None,
        origin: None,
        isolated_by: Some("db-in, default-deny".into()),
        port: uuid::Uuid::from_u128(5),
        ..row(minute, "shop", 0)
    };
    // And a tiered policy's deny, named as it was.
    let policy = uuid::Uuid::from_u128(8);
    let tiered = MinuteRow {
        port: uuid::Uuid::from_u128(6),
        isolated: false,
        policy: Some(policy),
        policy_rule: Some(2),
        tiered: Some(sqlx::types::Json(weft_model::flow::FlowTieredRule {
            tier: weft_model::Tier::Admin,
            action: weft_model::PolicyAction::Deny,
            policy: Some(policy),
            policy_name: Some("no-metadata".into()),
            rule: Some(2),
            rule_name: Some("metadata".into()),
        })),
        ..denied.clone()
    };
    let written = [row(minute, "shop", 5), denied.clone(), tiered.clone()];
    store.replace_flow_minute(minute, "n1", &written).await.unwrap();
    let rows = store.flow_minutes(Some("shop"), None, minute, next).await.unwrap();
    assert_eq!(rows, written, "replaced, not added");
    assert_eq!(store.flow_minutes(Some("other"), None, minute, next).await.unwrap().len(), 3, "the remote's project");
    assert!(store.flow_minutes(Some("third"), None, minute, next).await.unwrap().is_empty());
    let group = Some(uuid::Uuid::from_u128(3));
    assert_eq!(store.flow_minutes(None, group, minute, next).await.unwrap().len(), 1);
    assert!(store.flow_minutes(None, None, next, next + chrono::Duration::minutes(1)).await.unwrap().is_empty());
    assert_eq!(store.prune_flow_minutes(next).await.unwrap(), 3);
}
