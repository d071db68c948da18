//! A node's flows in windows of 15 s (DESIGN.md §10): the records of a window summed per key
//! without source ports (a port, its side, the remote address, protocol and destination port,
//! the verdict and what decided it), and each port's denied packets as its drop counters
//! count them against the samples read. Pure: records and counter readings in, windows out.
//!
//! A window is sent when it closes, whole; the controller keeps, per node and window, the last
//! it got of it. An agent that reconnects sends its last closed windows again (one may have
//! been lost with the stream) and its open window so far, which the closed one replaces later:
//! nothing is counted twice.

use std::collections::{BTreeMap, HashMap};

use weft_proto::v1;

/// The length of a window.
pub const WINDOW_MS: i64 = 15_000;
/// Closed windows kept to send again to a controller the agent reconnects to: two minutes.
const CLOSED_KEPT: usize = 8;
/// Keys in one window, at most: what comes after is counted in the window's `overflowed`.
pub const KEYS_PER_WINDOW: usize = 50_000;

/// What a window's entries are summed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    port: String,
    ingress: bool,
    remote: Vec<u8>,
    protocol: u32,
    /// The destination port, or the ICMP type.
    service: Option<u32>,
    denied: bool,
    group: String,
    rule: String,
    isolated: bool,
    /// A tiered policy's rule: (policy, rule, tier, action).
    tiered: Option<(String, u32, i32, i32)>,
}

fn tiered_key(r: &Option<v1::TieredRuleRef>) -> Option<(String, u32, i32, i32)> {
    r.as_ref().map(|t| (t.policy.clone(), t.rule, t.tier, t.action))
}

/// The windows of a node: the open one, the last closed ones, and those closed and not sent.
#[derive(Debug, Default)]
pub struct Windows {
    open: Option<Open>,
    closed: std::collections::VecDeque<v1::FlowWindow>,
    /// Closed, to be sent: a window closes when time moves past it, whether a record, a
    /// counter reading or the clock finds it so, and each is sent once it has.
    unsent: Vec<v1::FlowWindow>,
    /// The drop counters of each port chain as last read, by (port, ingress).
    drops_read: HashMap<(String, bool), u64>,
}

#[derive(Debug)]
struct Open {
    start_ms: i64,
    entries: BTreeMap<Key, v1::FlowAggregate>,
    /// Denied packets each port chain dropped (by its counter) and samples read, by (port, ingress).
    drops: BTreeMap<(String, bool), (u64, u64)>,
    overflowed: u64,
}

fn window_start(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(WINDOW_MS)
}

impl Windows {
    /// The window holding `at_ms`, opened (and the one before closed) when time has moved on.
    fn at(&mut self, at_ms: i64) -> &mut Open {
        let start = window_start(at_ms);
        if self.open.as_ref().is_some_and(|o| o.start_ms < start) {
            self.close();
        }
        self.open.get_or_insert_with(|| Open {
            start_ms: start,
            entries: BTreeMap::new(),
            drops: BTreeMap::new(),
            overflowed: 0,
        })
    }

    /// Closes the open window, if any, to be sent.
    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        let closed = open.to_message(true);
        self.closed.push_back(closed.clone());
        if self.closed.len() > CLOSED_KEPT {
            self.closed.pop_front();
        }
        // Bounded as the closed ones are: while nothing is sent, the oldest go.
        if self.unsent.len() >= CLOSED_KEPT {
            self.unsent.remove(0);
        }
        self.unsent.push(closed);
    }

    /// Counts a report's records in the window of each. A record older than the open window
    /// (late by a window or more) counts in the open one: windows are sent as they close.
    pub fn add(&mut self, report: &v1::FlowReport) {
        for c in &report.connections {
            let (remote, service) = if c.ingress {
                (c.src.clone(), c.dst_port.or(c.icmp_type))
            } else {
                (c.dst.clone(), c.dst_port.or(c.icmp_type))
            };
            let key = Key {
                port: c.port.clone(),
                ingress: c.ingress,
                remote,
                protocol: c.protocol,
                service,
                denied: false,
                group: c.group.clone(),
                rule: c.rule.clone(),
                isolated: c.isolated,
                tiered: tiered_key(&c.tiered),
            };
            let at = self.open_at(c.at_ms);
            let Some(entry) = at.entry(key) else { continue };
            if c.ended {
                entry.ended += 1;
                if let Some(n) = &c.counters {
                    entry.packets_sent += n.packets_sent;
                    entry.bytes_sent += n.bytes_sent;
                    entry.packets_received += n.packets_received;
                    entry.bytes_received += n.bytes_received;
                }
            } else {
                entry.started += 1;
            }
        }
        for d in &report.denied {
            let remote = if d.ingress { d.src.clone() } else { d.dst.clone() };
            let key = Key {
                port: d.port.clone(),
                ingress: d.ingress,
                remote,
                protocol: d.protocol,
                service: d.dst_port.or(d.icmp_type),
                denied: true,
                group: String::new(),
                rule: String::new(),
                isolated: d.tiered.is_none(),
                tiered: tiered_key(&d.tiered),
            };
            let at = self.open_at(d.at_ms);
            // A port chain's drops are counted by its counter against its samples; a tiered
            // rule's chain is shared by ports, its counter no port's.
            if d.tiered.is_none() {
                at.drops.entry((d.port.clone(), d.ingress)).or_default().1 += 1;
            }
            if let Some(entry) = at.entry(key) {
                entry.sampled += 1;
            }
        }
    }

    fn open_at(&mut self, at_ms: i64) -> &mut Open {
        let late = self.open.as_ref().is_some_and(|o| at_ms < o.start_ms);
        if late {
            return self.open.as_mut().expect("an open window");
        }
        self.at(at_ms)
    }

    /// Counts the port chains' drop counters read at `at_ms`, by (port, ingress): what each
    /// dropped since the last reading goes to the open window. A counter lower than it was
    /// restarted (its chain was made again) and counts from zero; one read for the first time
    /// only sets where counting starts.
    pub fn drops(&mut self, at_ms: i64, counters: &[crate::nft::DropCount]) {
        let mut deltas = Vec::new();
        for (key, now) in counters {
            let before = self.drops_read.insert(key.clone(), *now);
            match before {
                Some(b) if *now >= b => deltas.push((key.clone(), now - b)),
                Some(_) => deltas.push((key.clone(), *now)),
                None => {}
            }
        }
        let open = self.at(at_ms);
        for (key, delta) in deltas.into_iter().filter(|(_, d)| *d > 0) {
            open.drops.entry(key).or_default().0 += delta;
        }
    }

    /// The windows closed and not yet sent, the open one among them when `now_ms` is past it.
    pub fn close_due(&mut self, now_ms: i64) -> Vec<v1::FlowWindow> {
        if self.open.as_ref().is_some_and(|o| o.start_ms < window_start(now_ms)) {
            self.close();
        }
        std::mem::take(&mut self.unsent)
    }

    /// What a controller the agent (re)connects to is sent: the last closed windows, and the
    /// open one so far (none when nothing has happened in it).
    pub fn recent(&mut self, now_ms: i64) -> Vec<v1::FlowWindow> {
        self.close_due(now_ms);
        let mut out: Vec<v1::FlowWindow> = self.closed.iter().cloned().collect();
        out.extend(self.open.as_ref().map(|o| o.to_message(false)));
        out
    }
}

impl Open {
    fn entry(&mut self, key: Key) -> Option<&mut v1::FlowAggregate> {
        // One search of the map per record: most records count in an entry already there.
        let full = self.entries.len() >= KEYS_PER_WINDOW;
        match self.entries.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(_) if full => {
                self.overflowed += 1;
                None
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                let k = e.key();
                let aggregate = v1::FlowAggregate {
                    port: k.port.clone(),
                    ingress: k.ingress,
                    remote: k.remote.clone(),
                    protocol: k.protocol,
                    service: k.service,
                    denied: k.denied,
                    group: k.group.clone(),
                    rule: k.rule.clone(),
                    isolated: k.isolated,
                    tiered: k.tiered.as_ref().map(|(policy, rule, tier, action)| v1::TieredRuleRef {
                        policy: policy.clone(),
                        rule: *rule,
                        tier: *tier,
                        action: *action,
                    }),
                    ..Default::default()
                };
                Some(e.insert(aggregate))
            }
        }
    }

    fn to_message(&self, closed: bool) -> v1::FlowWindow {
        v1::FlowWindow {
            start_ms: self.start_ms,
            end_ms: self.start_ms + WINDOW_MS,
            closed,
            aggregates: self.entries.values().cloned().collect(),
            drops: self
                .drops
                .iter()
                .map(|((port, ingress), (counted, sampled))| v1::PortDrops {
                    port: port.clone(),
                    ingress: *ingress,
                    counted: *counted,
                    sampled: *sampled,
                })
                .collect(),
            overflowed: self.overflowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(at_ms: i64, sport: u32, ended: bool) -> v1::ConnectionRecord {
        v1::ConnectionRecord {
            port: "db".into(),
            ingress: true,
            src: vec![10, 0, 0, 9],
            dst: vec![10, 0, 0, 1],
            protocol: 6,
            src_port: Some(sport),
            dst_port: Some(5432),
            at_ms,
            group: "g".into(),
            rule: "r".into(),
            isolated: true,
            ended,
            counters: ended.then_some(v1::Counters {
                packets_sent: 3,
                bytes_sent: 200,
                packets_received: 2,
                bytes_received: 1000,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn connections_sum_per_key_without_their_source_ports_and_windows_close_as_time_moves() {
        let mut w = Windows::default();
        let start = 1_700_000_010_000 - 1_700_000_010_000 % WINDOW_MS;
        let report = v1::FlowReport {
            connections: vec![connection(start + 1, 40000, false), connection(start + 2, 40001, false)],
            ..Default::default()
        };
        w.add(&report);
        assert!(w.close_due(start + 100).is_empty(), "still open");
        let recent = w.recent(start + 100);
        assert_eq!(recent.len(), 1);
        assert!(!recent[0].closed);
        assert_eq!(recent[0].aggregates.len(), 1, "source ports are no part of the key");
        assert_eq!(recent[0].aggregates[0].started, 2);
        w.add(&v1::FlowReport { connections: vec![connection(start + 3, 40000, true)], ..Default::default() });
        // Time moves on: the window closes, whole, once.
        let closed = w.close_due(start + WINDOW_MS + 1).pop().expect("closed");
        assert!(closed.closed);
        let a = &closed.aggregates[0];
        assert_eq!((closed.start_ms, a.started, a.ended, a.bytes_received), (start, 2, 1, 1000));
        assert!(w.close_due(start + WINDOW_MS + 2).is_empty(), "nothing happened in the next");
        // A record late by a window counts in the open one.
        w.add(&v1::FlowReport { connections: vec![connection(start + WINDOW_MS + 5, 1, false)], ..Default::default() });
        w.add(&v1::FlowReport { connections: vec![connection(start + 7, 1, false)], ..Default::default() });
        // Reconnected: the closed window again, and the open one so far.
        let recent = w.recent(start + WINDOW_MS + 9);
        assert_eq!(
            recent.iter().map(|r| (r.start_ms, r.closed)).collect::<Vec<_>>(),
            [(start, true), (start + WINDOW_MS, false)]
        );
        assert_eq!(recent[1].aggregates[0].started, 2);
    }

    #[test]
    fn denied_packets_are_counted_by_the_drop_counters_and_sampled_apart() {
        let mut w = Windows::default();
        let start = 3 * WINDOW_MS;
        let key = ("db".to_string(), true);
        // The first reading only sets where counting starts.
        w.drops(start, &[(key.clone(), 100)]);
        let denied = v1::DeniedRecord {
            port: "db".into(),
            ingress: true,
            src: vec![10, 0, 0, 9],
            dst: vec![10, 0, 0, 1],
            protocol: 1,
            icmp_type: Some(8),
            icmp_code: Some(0),
            at_ms: start + 5,
            ..Default::default()
        };
        w.add(&v1::FlowReport { denied: vec![denied.clone(), denied], ..Default::default() });
        w.drops(start + 10, &[(key.clone(), 150)]);
        let sent = w.recent(start + 20);
        let drops = &sent[0].drops;
        assert_eq!(drops.len(), 1);
        assert_eq!((drops[0].counted, drops[0].sampled), (50, 2));
        assert_eq!((sent[0].aggregates[0].sampled, sent[0].aggregates[0].denied), (2, true));
        assert_eq!(sent[0].aggregates[0].service, Some(8), "a ping by its ICMP type");
        // A counter that went down was made again: it counts from zero.
        w.drops(start + 30, &[(key, 7)]);
        assert_eq!(w.recent(start + 40)[0].drops[0].counted, 57);
    }

    #[test]
    fn a_window_closed_by_a_counter_reading_or_a_record_is_sent_all_the_same() {
        let mut w = Windows::default();
        let start = 5 * WINDOW_MS;
        let key = ("db".to_string(), true);
        w.add(&v1::FlowReport { connections: vec![connection(start + 1, 40000, false)], ..Default::default() });
        // The agent reads the counters before it looks for a window to send: the reading in
        // the next window closes this one.
        w.drops(start + WINDOW_MS + 1, &[(key, 1)]);
        let sent = w.close_due(start + WINDOW_MS + 1);
        assert_eq!(sent.iter().map(|s| (s.start_ms, s.closed)).collect::<Vec<_>>(), [(start, true)]);
        assert!(w.close_due(start + WINDOW_MS + 2).is_empty(), "sent once");
        // A record of a later window closes the open one too.
        w.add(&v1::FlowReport { connections: vec![connection(start + 2 * WINDOW_MS, 1, false)], ..Default::default() });
        w.add(&v1::FlowReport { connections: vec![connection(start + 3 * WINDOW_MS, 2, false)], ..Default::default() });
        let sent = w.close_due(start + 3 * WINDOW_MS + 1);
        assert_eq!(
            sent.iter().map(|s| s.start_ms).collect::<Vec<_>>(),
            [start + WINDOW_MS, start + 2 * WINDOW_MS],
            "the reading's window (nothing in it but where counting starts) and the record's"
        );
    }
}
