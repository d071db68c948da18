//! `weft demo yelb`, the seed's walk-through, run whole as a user runs it: every expectation of
//! the seed met with real packets, within a minute, and nothing left behind. Needs root.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::process::Command;
use std::time::Instant;

use common::WEFT;

fn demo_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("wl-yelb-")).map(str::to_string).collect()
}

#[test]
fn the_yelb_walk_through_meets_every_expectation_of_the_seed() {
    if !weft_testkit::is_root() {
        eprintln!("skipped: the demo needs root");
        return;
    }
    let before = demo_namespaces();
    let started = Instant::now();
    // DATABASE_URL (as tests have it): the demo works in a scratch database of that server.
    let out =
        Command::new(WEFT).args(["demo", "yelb"]).env("DATABASE_URL", weft_testkit::server_url()).output().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "weft demo yelb failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for expectation in [
        "✓ ping from yelb-ui to yelb-db gets answers",
        "✓ `outside` reaches yelb-ui on TCP 80 (the web page loads)",
        "✓ the running ping gets answers before the policy",
        "✓ the ping left running from yelb-ui to yelb-db stops getting answers",
        "✓ ping from yelb-ui to yelb-db gets no answer",
        "✓ `outside` still reaches yelb-ui on TCP 80 (the app keeps working)",
        "✓ yelb-ui reaches yelb-appserver on TCP 4567",
        "✓ `outside` does not reach yelb-appserver on TCP 4567",
        "✓ yelb-appserver reaches yelb-db on TCP 5432",
        "✓ yelb-ui does not reach yelb-db on TCP 5432",
        "✓ yelb-appserver reaches redis-server on TCP 6379",
        "✓ ping from yelb-ui to yelb-db gets answers again",
        "✓ the compiler (weft reach) predicts exactly these pairs",
        "$ weft trace k8s-default/yelb-ui k8s-default/yelb-db --port 5432/tcp",
        "$ weft lab exec yelb-ui -- ping -c 3 10.47.1.21",
    ] {
        assert!(text.contains(expectation), "missing {expectation:?} in:\n{text}");
    }
    assert!(!text.contains('✗'), "an expectation was not met:\n{text}");
    let summary = text.lines().find(|l| l.starts_with("yelb walk-through:")).unwrap();
    let (met, total) = summary.split_once(" of ").unwrap();
    assert_eq!(met.trim_start_matches("yelb walk-through: "), total.split_whitespace().next().unwrap(), "{summary}");
    eprintln!("{summary} (the test measured {took:?})");
    assert_eq!(demo_namespaces(), before, "the demo removed the namespaces it made");
}
