//! The traffic-groups page in a real browser (DESIGN.md §10): Debian's chromium, headless,
//! driven through chromium-driver. A server with yelb's ports, its db policy and a minute of
//! flows; the browser is sent to the sign-in page, signs in with a token, and the page shows
//! the denied yelb-ui → yelb-db edge and the allowed yelb-appserver → yelb-db edge, and on a
//! click the rule that allowed it. The screenshot is kept under target/test-artifacts.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::Server;
use fantoccini::Locator;
use serde_json::json;

async fn yelb(server: &Server, db_url: &str) {
    let client = server.admin_client();
    let project: weft_model::Project = serde_json::from_value(json!({"name": "k8s-default"})).unwrap();
    client.create(&project).await.unwrap();
    for (name, ip) in [("yelb-ui", "10.47.0.1"), ("yelb-appserver", "10.47.0.2"), ("yelb-db", "10.47.0.3")] {
        let port: weft_model::Port = serde_json::from_value(json!({"name": name, "project": "k8s-default",
            "node": "n1", "ips": [ip], "labels": {"app": name, "tier": name.trim_start_matches("yelb-")}}))
        .unwrap();
        client.create(&port).await.unwrap();
    }
    let group: weft_model::SecurityGroup =
        serde_json::from_value(json!({"name": "np-yelb-db-in", "project": "k8s-default",
        "selector": {"matchLabels": {"app": "yelb-db"}}, "policy_types": ["ingress"], "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": [5432],
             "remote": {"type": "selector", "ports": {"matchLabels": {"app": "yelb-appserver"}}},
             "origin": {"kind": "NetworkPolicy", "namespace": "default", "name": "yelb-db-in", "index": 0}}]}))
        .unwrap();
    let group = client.create(&group).await.unwrap();
    let (grp, rule) = (group.id.unwrap(), group.rules[0].id.unwrap());
    let ports: Vec<weft_model::Port> = client
        .list_all(&weft_client::ListOptions { project: Some("k8s-default".into()), ..Default::default() })
        .await
        .unwrap();
    let id = |name: &str| ports.iter().find(|p| p.name == name).unwrap().id.unwrap();
    let store = weft_store::Store::connect(db_url, 2).await.unwrap();
    let now = chrono::Utc::now();
    let minute = now - chrono::Duration::seconds(now.timestamp().rem_euclid(60));
    let row =
        |port: &str, ingress: bool, remote: (&str, &str), protocol: i32, service: i32| weft_store::flows::MinuteRow {
            remote: Some(remote.0.into()),
            remote_port: Some(id(remote.1)),
            remote_project: Some("k8s-default".into()),
            protocol,
            service: Some(service),
            ..weft_store::flows::MinuteRow::empty(minute, "n1", id(port), "k8s-default", ingress)
        };
    let rows = [
        weft_store::flows::MinuteRow {
            grp: Some(grp),
            rule: Some(rule),
            isolated: true,
            started: 12,
            ..row("yelb-db", true, ("10.47.0.2", "yelb-appserver"), 6, 5432)
        },
        weft_store::flows::MinuteRow { started: 12, ..row("yelb-appserver", false, ("10.47.0.3", "yelb-db"), 6, 5432) },
        weft_store::flows::MinuteRow {
            denied: true,
            isolated: true,
            sampled: 5,
            ..row("yelb-db", true, ("10.47.0.1", "yelb-ui"), 1, 8)
        },
        weft_store::flows::MinuteRow { started: 30, ..row("yelb-ui", false, ("10.47.0.2", "yelb-appserver"), 6, 4567) },
        weft_store::flows::MinuteRow { started: 30, ..row("yelb-appserver", true, ("10.47.0.1", "yelb-ui"), 6, 4567) },
        // The metadata service, which an admin's cluster policy denies (DESIGN.md §11).
        weft_store::flows::MinuteRow {
            remote: Some("169.254.169.254".into()),
            remote_port: None,
            remote_project: None,
            protocol: 6,
            service: Some(80),
            denied: true,
            sampled: 2,
            policy: Some(uuid::Uuid::from_u128(9)),
            policy_rule: Some(0),
            tiered: Some(weft_store::flows::Json(weft_model::flow::FlowTieredRule {
                tier: weft_model::Tier::Admin,
                action: weft_model::PolicyAction::Deny,
                policy: Some(uuid::Uuid::from_u128(9)),
                policy_name: Some("no-metadata".into()),
                rule: Some(0),
                rule_name: Some("metadata".into()),
            })),
            ..weft_store::flows::MinuteRow::empty(minute, "n1", id("yelb-ui"), "k8s-default", false)
        },
    ];
    store.replace_flow_minute(minute, "n1", &rows).await.unwrap();
}

#[ignore = "needs root (CI runs as root, with chromium installed by scripts/setup.sh test)"]
#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_denied_and_the_allowed_edge_and_the_rule_behind_a_click() {
    weft_testkit::require_root();
    let db = weft_testkit::fresh_database().await;
    let data_dir = common::temp_dir("ui");
    let server = Server::start(Some(&db.url), &data_dir, &[], "http").await;
    yelb(&server, &db.url).await;
    let profile = data_dir.join("chromium");
    let (driver, c) = common::browser::start(&profile).await;

    // Not signed in: the page is the sign-in page, and the API answers nothing.
    let page = format!("{}/ui/traffic-groups?project=k8s-default", server.url);
    c.goto(&page).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/sign-in"), "sent to sign in");
    let probe = c
        .execute_async(
            "const done = arguments[0]; fetch('/v1/flows?project=k8s-default', {headers: {'x-weft-ui': '1'}}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(probe, json!(401));
    // A wrong token is refused; the right one signs in.
    c.find(Locator::Id("token")).await.unwrap().send_keys("weft_not-a-token").await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Id("failed")).await.unwrap();
    common::browser::sign_in(&c, &server.admin_token()).await;
    c.goto(&page).await.unwrap();

    let denied = r#"g.edge[data-edge="app=yelb-ui->app=yelb-db"][data-verdict="denied"]"#;
    let allowed = r#"g.edge[data-edge="app=yelb-appserver->app=yelb-db"][data-verdict="allowed"]"#;
    let label = |edge: &str| format!(r#"text.edge-label[data-edge="{edge}"]"#);
    c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(denied)).await.unwrap();
    c.find(Locator::Css(allowed)).await.unwrap();
    let said = c.find(Locator::Css(&label("app=yelb-appserver->app=yelb-db"))).await.unwrap();
    let text = said.text().await.unwrap();
    assert!(text.contains("TCP/5432 · 12 conn"), "{text}");
    said.click().await.unwrap();
    let ingress = c
        .wait()
        .for_element(Locator::Css(r#"[data-service="TCP/5432"] [data-testid="ingress"] [data-testid="decision"]"#))
        .await
        .unwrap();
    let said = ingress.text().await.unwrap();
    assert!(said.contains("NetworkPolicy default/yelb-db-in [0]") && said.contains("np-yelb-db-in"), "{said}");
    common::browser::keep_screenshot(&c, "traffic-groups.png").await;
    // The denied edge says why.
    c.find(Locator::Css(&label("app=yelb-ui->app=yelb-db"))).await.unwrap().click().await.unwrap();
    let verdict = c.wait().for_element(Locator::Css(r#"[data-testid="edge-verdict"]"#)).await.unwrap();
    assert_eq!(verdict.text().await.unwrap(), "denied");
    let ingress = c
        .find(Locator::Css(r#"[data-service="ICMP echo"] [data-testid="ingress"] [data-testid="decision"]"#))
        .await
        .unwrap();
    let said = ingress.text().await.unwrap();
    assert!(said.contains("DENIED: isolated by") && said.contains("np-yelb-db-in"), "{said}");
    // The edge to the metadata service names the admin policy's rule that dropped it.
    c.find(Locator::Css(&label("app=yelb-ui->outside"))).await.unwrap().click().await.unwrap();
    let egress = c
        .wait()
        .for_element(Locator::Css(r#"[data-service="TCP/80"] [data-testid="egress"] [data-testid="decision"]"#))
        .await
        .unwrap();
    let said = egress.text().await.unwrap();
    assert!(said.contains("admin policy no-metadata rule 0 (metadata): DENIED"), "{said}");
    c.close().await.unwrap();
    drop(driver);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}
