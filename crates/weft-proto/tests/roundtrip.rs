//! What the controller encodes, an agent decodes to exactly what the compiler produced.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use prost::Message;
use weft_compiler::{Change, Compiler, NodeSpan, synthetic};
use weft_proto::{DeltaEncoder, Encoded, SnapshotEncoder, from_proto, snapshot, v1};

fn cluster() -> Compiler {
    let shape = synthetic::Shape {
        namespaces: 30,
        pods_per_namespace: 4,
        nodes: 5,
        selected_namespace_every: 3,
        egress_every: 2,
    };
    let mut compiler = Compiler::new();
    compiler.load(1, synthetic::cluster(&shape));
    compiler
}

/// Decodes a snapshot's messages and applies them, as an agent does.
fn receive(messages: &[v1::ControllerMessage]) -> NodeSpan {
    let mut span = NodeSpan::default();
    for m in messages {
        let bytes = m.encode_to_vec();
        let decoded = v1::ControllerMessage::decode(bytes.as_slice()).unwrap();
        span.apply(&from_proto(&decoded.delta.unwrap_or_default()).unwrap());
    }
    span
}

#[test]
fn a_snapshot_in_small_messages_rebuilds_the_span() {
    let compiler = cluster();
    let mut checked = 0;
    for node in compiler.nodes().map(str::to_string).collect::<Vec<_>>() {
        let span = compiler.span(&node);
        // Small messages: sets are split across several.
        let messages = snapshot(7, &span, 300);
        assert!(messages.len() > 3, "{}", messages.len());
        assert!(messages[0].snapshot && messages.iter().skip(1).all(|m| !m.snapshot));
        assert!(messages.last().unwrap().last && messages.iter().rev().skip(1).all(|m| !m.last));
        assert!(messages.iter().all(|m| m.revision == 7));
        assert_eq!(receive(&messages), span, "node {node}");
        // One message when it fits.
        assert_eq!(receive(&snapshot(7, &span, 1 << 24)), span);
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// Decodes encoded messages (their pieces concatenated, as sent).
fn decode(messages: &[Encoded]) -> Vec<v1::ControllerMessage> {
    messages.iter().map(|m| v1::ControllerMessage::decode(m.encode_to_vec().as_slice()).unwrap()).collect()
}

#[test]
fn snapshots_encoded_with_shared_sets_rebuild_each_span_and_share_each_sets_bytes() {
    let compiler = cluster();
    let encoder = SnapshotEncoder::default();
    let nodes: Vec<String> = compiler.nodes().map(str::to_string).collect();
    let spans: Vec<NodeSpan> = nodes.iter().map(|n| compiler.span(n)).collect();
    for max_bytes in [300, 1 << 20] {
        // All encoded before any is dropped, as when agents connect at once.
        let encoded: Vec<Vec<Encoded>> = spans.iter().map(|s| encoder.encode(9, s, max_bytes)).collect();
        for (span, messages) in spans.iter().zip(&encoded) {
            let decoded = decode(messages);
            assert!(decoded[0].snapshot && decoded.iter().skip(1).all(|m| !m.snapshot));
            assert!(decoded.last().unwrap().last && decoded.iter().rev().skip(1).all(|m| !m.last), "{max_bytes}");
            assert!(decoded.iter().all(|m| m.revision == 9));
            assert_eq!(receive(&decoded), *span, "max {max_bytes}");
            if max_bytes > 300 {
                assert_eq!(messages.len(), 1, "one message when it fits");
            }
        }
        // A set two nodes hold is one allocation in both messages.
        let pieces = |messages: &Vec<Encoded>| -> Vec<*const u8> {
            messages.iter().flat_map(|m| m.0.iter().map(|b| b.as_ptr())).collect()
        };
        let (a, b) = (pieces(&encoded[0]), pieces(&encoded[1]));
        assert!(a.iter().any(|p| b.contains(p)), "no piece shared between two nodes' snapshots");
    }
    // A set that changed is encoded again, though a message holding its old piece is still
    // in flight (pod 0's namespace is one the platform rules admit: every node holds its set).
    let mut compiler = compiler;
    let in_flight = encoder.encode(10, &compiler.span(&nodes[0]), 1 << 20);
    let mut pod = compiler.cluster().port(&synthetic::pod_id(0)).unwrap().to_port(uuid::Uuid::new_v4());
    pod.name = "extra".into();
    pod.ips = vec!["10.200.0.9".parse().unwrap()];
    compiler.apply(11, [Change::UpsertPort(pod)]);
    let span = compiler.span(&nodes[0]);
    let after = encoder.encode(11, &span, 1 << 20);
    assert_eq!(receive(&decode(&after)), span);
    drop(in_flight);
}

#[test]
fn shared_pieces_decode_to_each_nodes_own_delta() {
    let mut compiler = cluster();
    // A pod added to a namespace the platform policies select: a set change many nodes share.
    let mut pod = compiler.cluster().port(&synthetic::pod_id(0)).unwrap().to_port(uuid::Uuid::new_v4());
    pod.name = "extra".into();
    pod.ips = vec!["10.200.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    let deltas = compiler.apply(2, [Change::UpsertPort(pod)]);
    let encoder = DeltaEncoder::new(&deltas);
    let audience = deltas.audience();
    assert!(audience.len() > 1);
    assert_eq!(encoder.messages().count(), audience.len());
    for node in &audience {
        let encoded = encoder.for_node(node).unwrap();
        let bytes = prost::Message::encode_to_vec(encoded);
        let message = v1::ControllerMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(message.revision, 2);
        assert!(message.last && !message.snapshot);
        assert_eq!(from_proto(&message.delta.unwrap_or_default()).unwrap(), deltas.for_node(node), "node {node}");
    }
    // The set change is one piece of bytes, shared.
    let pieces: Vec<_> = audience.iter().map(|n| encoder.for_node(n).unwrap().0.last().unwrap().as_ptr()).collect();
    assert!(pieces.windows(2).any(|w| w[0] == w[1]));
}

#[test]
fn bad_input_is_an_error_naming_the_field() {
    let bad = v1::SpanDelta { ports_removed: vec!["not-a-uuid".into()], ..Default::default() };
    assert!(from_proto(&bad).unwrap_err().to_string().starts_with("ports_removed"));
    let bad = v1::SpanDelta {
        sets_changed: vec![v1::SetChange {
            id: "s00000000000000000000000000000001".into(),
            added_addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(from_proto(&bad).unwrap_err().to_string().contains("3 bytes"));
}

/// A field from the future (one a newer peer sends and this one has no number for): the
/// message decodes to what it carries besides, in both directions (issue 19, item 9). A
/// server upgraded before its agents, or an agent before its server, adds fields; neither
/// side fails on the other's.
#[test]
fn a_field_from_a_newer_peer_is_ignored_both_ways() {
    // Field 1000, varint 7, then field 1001, length-delimited "new": what a newer side could add.
    let future: &[u8] = &[0xc0, 0x3e, 0x07, 0xca, 0x3e, 0x03, b'n', b'e', b'w'];
    let ack = v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Ack(v1::Ack { revision: 42, error: String::new(), problems: vec![] })),
    };
    let mut bytes = ack.encode_to_vec();
    bytes.extend_from_slice(future);
    assert_eq!(v1::AgentMessage::decode(bytes.as_slice()).unwrap(), ack, "agent to controller");

    let compiler = cluster();
    let message = snapshot(1, &compiler.span("node-1"), 1 << 24).into_iter().next().unwrap();
    let mut bytes = message.encode_to_vec();
    bytes.extend_from_slice(future);
    assert_eq!(v1::ControllerMessage::decode(bytes.as_slice()).unwrap(), message, "controller to agent");
}

/// Tiered cluster policies travel whole: each port's ordered list, each policy's rules with
/// their actions and alternatives (selectors, networks, ranges, port names resolved per
/// destination), in a snapshot and in the delta that reorders one.
#[test]
fn tiered_policies_round_trip_in_snapshots_and_deltas() {
    let mut compiler = cluster();
    let policy = |name: &str, tier: &str, priority: i64| -> weft_model::ClusterPolicy {
        let mut p: weft_model::ClusterPolicy = serde_json::from_value(serde_json::json!({
            "name": name, "tier": tier, "priority": priority, "subject": {},
            "ingress": [{"name": "same", "action": "pass", "remotes": [{"type": "selector", "projects": {"matchLabels": {"env": "x"}}}],
                         "protocols": [{"protocol": "tcp", "port": {"from": 8000, "to": 8100}}, {"port": "http"}]},
                        {"action": "deny", "remotes": [{"type": "selector"}]}],
            "egress": [{"name": "dns", "action": "accept", "remotes": [{"type": "selector"}], "protocols": [{"port": "dns"}]},
                       {"name": "metadata", "action": "deny", "remotes": [{"type": "networks", "networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]}]
        }))
        .unwrap();
        p.id = Some(uuid::Uuid::from_u128(u128::from(priority as u64) + 77));
        p
    };
    compiler.apply(
        2,
        [Change::UpsertClusterPolicy(policy("a", "admin", 1)), Change::UpsertClusterPolicy(policy("b", "baseline", 2))],
    );
    let span = compiler.span("node-1");
    assert_eq!(span.policies.len(), 2);
    assert!(span.ports.values().all(|p| p.policies.len() == 2));
    assert_eq!(receive(&snapshot(2, &span, 300)), span);

    let mut reordered = policy("a", "admin", 1);
    reordered.tier = weft_model::Tier::Baseline;
    reordered.priority = 9;
    let deltas = compiler.apply(3, [Change::UpsertClusterPolicy(reordered)]);
    let encoder = DeltaEncoder::new(&deltas);
    let delta = deltas.for_node("node-1");
    assert_eq!(delta.policies_upserted.len(), 1, "{delta:?}");
    let encoded = prost::Message::encode_to_vec(encoder.for_node("node-1").unwrap());
    let message = v1::ControllerMessage::decode(encoded.as_slice()).unwrap();
    let proto = message.delta.unwrap_or_default();
    // Every port's list changed, and nothing else of them: one replacement of the old list
    // by the new, not a port each.
    assert!(proto.ports_upserted.is_empty(), "{proto:?}");
    assert_eq!((proto.lists_replaced.len(), proto.policy_lists.len()), (1, 2), "{proto:?}");
    let received = from_proto(&proto).unwrap();
    assert_eq!(received, delta);
    // A replacement naming a list the message does not hold is refused.
    let mut unlisted = proto.clone();
    unlisted.policy_lists.clear();
    assert!(from_proto(&unlisted).is_err());
    // So is a message that numbers two lists alike (which one would a port get?).
    let mut twice = proto.clone();
    twice.policy_lists[1].id = twice.policy_lists[0].id;
    assert!(from_proto(&twice).is_err());
    // And a port whose list changed with something else is sent whole, naming its list in
    // the message's table.
    let mut moved = compiler.cluster().port(&synthetic::pod_id(0)).unwrap().to_port(synthetic::pod_id(0));
    moved.labels.insert("x".into(), "y".into());
    let mut again = policy("c", "admin", 3);
    again.subject = serde_json::from_value(serde_json::json!({"ports": {"matchLabels": {"x": "y"}}})).unwrap();
    let node = moved.node.clone().unwrap();
    let deltas = compiler.apply(4, [Change::UpsertPort(moved), Change::UpsertClusterPolicy(again)]);
    let encoded = prost::Message::encode_to_vec(DeltaEncoder::new(&deltas).for_node(&node).unwrap());
    let proto = v1::ControllerMessage::decode(encoded.as_slice()).unwrap().delta.unwrap_or_default();
    assert_eq!(proto.ports_upserted.len(), 1, "{proto:?}");
    let named = proto.ports_upserted[0].policy_list;
    assert!(proto.policy_lists.iter().any(|l| l.id == named && l.policies.len() == 3), "{proto:?}");
    assert_eq!(from_proto(&proto).unwrap(), deltas.for_node(&node));
    let mut applied = span.clone();
    applied.apply(&received);
    assert_eq!(applied, compiler.span("node-1"));
}
