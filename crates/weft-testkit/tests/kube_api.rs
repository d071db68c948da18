//! The fake API server against kube-rs's own client, watcher and event recorder: what
//! kube-manager relies on works against it the way it does against a real API server.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher::{self, Event};
use weft_testkit::kube_api::FakeKube;

fn namespace(name: &str, label: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("tier".to_string(), label.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The next event that is not a bookmark-driven no-op, within a few seconds.
async fn next<S>(events: &mut S) -> Event<Namespace>
where
    S: futures::Stream<Item = Result<Event<Namespace>, watcher::Error>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await {
        Ok(Ok(Some(event))) => event,
        other => panic!("no watch event: {other:?}"),
    }
}

fn name(event: &Event<Namespace>) -> (&'static str, String) {
    match event {
        Event::Apply(n) => ("apply", n.metadata.name.clone().unwrap_or_default()),
        Event::Delete(n) => ("delete", n.metadata.name.clone().unwrap_or_default()),
        Event::Init => ("init", String::new()),
        Event::InitApply(n) => ("init-apply", n.metadata.name.clone().unwrap_or_default()),
        Event::InitDone => ("init-done", String::new()),
    }
}

#[tokio::test]
async fn a_watcher_lists_in_chunks_then_follows_changes() {
    let fake = FakeKube::new();
    for n in ["a", "b", "c", "d", "e"] {
        fake.apply(&namespace(n, "one"));
    }
    let api: Api<Namespace> = Api::all(fake.client());
    let mut events = watcher::watcher(api, watcher::Config::default().page_size(2)).boxed();
    let mut seen = Vec::new();
    loop {
        let e = next(&mut events).await;
        let done = matches!(e, Event::InitDone);
        seen.push(name(&e));
        if done {
            break;
        }
    }
    let listed: Vec<String> = seen.iter().filter(|(k, _)| *k == "init-apply").map(|(_, n)| n.clone()).collect();
    assert_eq!(listed, ["a", "b", "c", "d", "e"]);
    assert_eq!(fake.lists::<Namespace>(), 3, "five objects in pages of two are three requests");
    fake.apply(&namespace("b", "two"));
    fake.delete::<Namespace>(None, "c");
    assert_eq!(name(&next(&mut events).await), ("apply", "b".into()));
    assert_eq!(name(&next(&mut events).await), ("delete", "c".into()));
}

#[tokio::test]
async fn a_broken_watch_resumes_from_where_it_was_without_listing_again() {
    let fake = FakeKube::new();
    fake.set_bookmark_interval(Duration::from_millis(20));
    fake.apply(&namespace("a", "one"));
    let api: Api<Namespace> = Api::all(fake.client());
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    while !matches!(next(&mut events).await, Event::InitDone) {}
    // Bookmarks moved the watcher's resourceVersion on; the change made while it was away
    // reaches it from history.
    fake.apply(&namespace("other", "one"));
    assert_eq!(name(&next(&mut events).await), ("apply", "other".into()));
    fake.end_watches();
    fake.apply(&namespace("b", "one"));
    assert_eq!(name(&next(&mut events).await), ("apply", "b".into()));
    assert_eq!(fake.lists::<Namespace>(), 1, "resumed from its resourceVersion, not relisted");
}

#[tokio::test]
async fn a_watch_from_compacted_history_gets_410_and_lists_again() {
    let fake = FakeKube::new();
    fake.apply(&namespace("a", "one"));
    let api: Api<Namespace> = Api::all(fake.client());
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    while !matches!(next(&mut events).await, Event::InitDone) {}
    let outage = fake.outage();
    fake.delete::<Namespace>(None, "a");
    fake.apply(&namespace("b", "one"));
    fake.compact();
    drop(outage);
    // The 410 surfaces as one error; the watcher then starts over with a fresh list.
    let mut after = Vec::new();
    while after.last().map(|(k, _): &(&str, String)| *k) != Some("init-done") {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Ok(e))) => after.push(name(&e)),
            Ok(Some(Err(e))) => assert!(e.to_string().contains("410") || format!("{e:?}").contains("Expired"), "{e:?}"),
            other => panic!("watch ended: {other:?}"),
        }
    }
    assert_eq!(after, [("init", String::new()), ("init-apply", "b".into()), ("init-done", String::new())]);
    assert_eq!(fake.lists::<Namespace>(), 2);
}

#[tokio::test]
async fn writes_conflict_the_way_leases_rely_on() {
    let fake = FakeKube::new();
    let leases: Api<Lease> = Api::namespaced(fake.client(), "kube-system");
    let lease =
        Lease { metadata: ObjectMeta { name: Some("lock".into()), ..Default::default() }, ..Default::default() };
    let created = leases.create(&PostParams::default(), &lease).await.expect("created");
    let again = leases.create(&PostParams::default(), &lease).await.expect_err("exists");
    assert!(matches!(again, kube::Error::Api(ref s) if s.code == 409), "{again:?}");
    let replaced = leases.replace("lock", &PostParams::default(), &created).await.expect("replaced");
    let stale = leases.replace("lock", &PostParams::default(), &created).await.expect_err("stale");
    assert!(matches!(stale, kube::Error::Api(ref s) if s.code == 409), "{stale:?}");
    assert_ne!(replaced.metadata.resource_version, created.metadata.resource_version);
    assert_eq!(fake.list::<Lease>().len(), 1);
}
