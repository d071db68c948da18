//! What the datapath denied, and the names ports look up, as samples (DESIGN.md §10).
//!
//! * Every port chain ends with a rule that sends the packets it is about to drop to
//!   nfnetlink_log at a bounded rate per port and direction, tagged `weft:D:<i|e>:<port id>`
//!   ([`crate::nft::render`]), and the drop rule after it counts every one: [`DeniedSample`]s,
//!   which port, which way, and the packet's addresses, protocol and ports. Denied packets
//!   never reach conntrack (they are dropped before their entry is confirmed), so these samples
//!   and the counters are all there is to know of them.
//! * A port's new UDP connection to port 53 is logged once, tagged `weft:N`: a [`DnsQuery`],
//!   the name asked for. Names can be sensitive: the agent reads them only when asked to
//!   (`--no-dns-names` turns it off), and unread, the kernel sends nothing.
//!
//! * Every connection a port makes or takes is heard from conntrack when it begins and when
//!   it ends ([`follow_connections`]): conntrack confirms only what every local chain let
//!   through, and the span in force says which rule allowed each local side
//!   ([`attribution`]); the node's conntrack accounting gives the packets and bytes both ways
//!   at the end. No message per packet: one when a connection begins, one when it ends.
//!
//! Decoding is pure ([`decode`], [`packet`], [`dns_question`]); [`SampleReader`] is the socket.

pub mod attribution;
pub mod window;

use std::io;
use std::net::IpAddr;

use uuid::Uuid;
use weft_proto::v1;

use crate::nft::{DENIED_SAMPLES_GROUP, Socket};

/// A packet a port's policy dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedSample {
    pub by: DeniedBy,
    /// Dropped by the port's ingress (else its egress).
    pub ingress: bool,
    pub packet: PacketHeader,
}

/// What dropped a sampled packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedBy {
    /// The port's chain: its groups isolate it and none of their rules allows the packet.
    Port(Uuid),
    /// A tiered cluster policy's deny rule (its place among the policy's rules of the
    /// direction). Policy chains are shared by ports: the port is the one holding the packet's
    /// local address (the destination for ingress, the source for egress).
    Tiered { policy: Uuid, tier: weft_model::Tier, rule: u16 },
}

/// A DNS query a port sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The querying port's address (the agent knows which port holds it).
    pub src: IpAddr,
    pub server: IpAddr,
    /// The name asked for, as asked (ASCII; at most 253 characters).
    pub name: String,
    /// The record type (1 A, 28 AAAA, 33 SRV, ...).
    pub qtype: u16,
    /// The query's source port.
    pub src_port: Option<u16>,
}

/// One message of the groups the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Denied(DeniedSample),
    Dns(DnsQuery),
    Connection(crate::nft::ConnectionEvent),
}

/// The headers of a sampled packet that say what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (IPv6: the first header that is not an extension header).
    pub protocol: u8,
    /// Source and destination ports (TCP, UDP, SCTP).
    pub ports: Option<(u16, u16)>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;

/// A sample from one nfnetlink_log message's payload (after the netlink header: the
/// nfgenmsg, then attributes); None for a message that is not weft's, or a packet too short
/// to say what it was.
pub fn decode(message: &[u8]) -> Option<Sample> {
    let attrs = crate::nft::wire::attributes(message.get(4..)?);
    let text = attrs.clone().find(|(kind, ..)| *kind & 0x7fff == NFULA_PREFIX).map(|(_, v, _)| v)?;
    let prefix = std::str::from_utf8(text).ok()?.trim_end_matches('\0');
    let payload = attrs.clone().find(|(kind, ..)| *kind & 0x7fff == NFULA_PAYLOAD).map(|(_, v, _)| v)?;
    if prefix == crate::nft::DNS_QUERY_PREFIX {
        let (header, transport) = packet_and_transport(payload)?;
        // UDP: 8 bytes of header, then the DNS message.
        let (name, qtype) = dns_question(transport.get(8..)?)?;
        let src_port = header.ports.map(|(s, _)| s);
        return Some(Sample::Dns(DnsQuery { src: header.src, server: header.dst, name, qtype, src_port }));
    }
    let (tiered, rest) = match prefix.strip_prefix(crate::nft::TIERED_DENIED_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, prefix.strip_prefix(crate::nft::DENIED_PREFIX)?),
    };
    let (way, what) = rest.split_once(':')?;
    let ingress = match way {
        "i" => true,
        "e" => false,
        _ => return None,
    };
    let by = if tiered {
        let (tier, what) = what.split_once(':')?;
        let tier = match tier {
            "a" => weft_model::Tier::Admin,
            "b" => weft_model::Tier::Baseline,
            _ => return None,
        };
        let (policy, rule) = what.split_once(':')?;
        DeniedBy::Tiered { policy: Uuid::parse_str(policy).ok()?, tier, rule: rule.parse().ok()? }
    } else {
        DeniedBy::Port(Uuid::parse_str(what).ok()?)
    };
    Some(Sample::Denied(DeniedSample { by, ingress, packet: packet(payload)? }))
}

/// The question of a DNS query: its name and record type. None for a response, a message
/// without a question, a compressed or malformed name, or one that is not printable ASCII.
pub fn dns_question(message: &[u8]) -> Option<(String, u16)> {
    let flags = u16::from_be_bytes([*message.get(2)?, *message.get(3)?]);
    let questions = u16::from_be_bytes([*message.get(4)?, *message.get(5)?]);
    if flags & 0x8000 != 0 || questions == 0 {
        return None;
    }
    let mut name = String::new();
    let mut at = 12;
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A pointer (0xc0) or reserved label type: never in a plain query's question.
        if len > 63 {
            return None;
        }
        let label = message.get(at..at + len)?;
        if !label.iter().all(|b| b.is_ascii_graphic()) || name.len() + len + 1 > 254 {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(std::str::from_utf8(label).ok()?);
        at += len;
    }
    let qtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
    Some((if name.is_empty() { ".".into() } else { name }, qtype))
}

/// The headers of an IPv4 or IPv6 packet (its first bytes).
pub fn packet(bytes: &[u8]) -> Option<PacketHeader> {
    packet_and_transport(bytes).map(|(header, _)| header)
}

/// The headers, and the bytes from the transport header on.
fn packet_and_transport(bytes: &[u8]) -> Option<(PacketHeader, &[u8])> {
    let version = bytes.first()? >> 4;
    let (src, dst, mut protocol, mut at) = match version {
        4 => {
            let header = usize::from(bytes[0] & 0x0f) * 4;
            let src: [u8; 4] = bytes.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), *bytes.get(9)?, header)
        }
        6 => {
            let src: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = bytes.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), *bytes.get(6)?, 40)
        }
        _ => return None,
    };
    if version == 6 {
        // Hop-by-hop, routing, destination options: skipped to the transport header. A
        // fragment header's packet is reported by its next protocol, without ports.
        while matches!(protocol, 0 | 43 | 60) {
            protocol = *bytes.get(at)?;
            at += (usize::from(*bytes.get(at + 1)?) + 1) * 8;
        }
    }
    let transport = bytes.get(at..).unwrap_or_default();
    let two = |i: usize| Some(u16::from_be_bytes([*transport.get(i)?, *transport.get(i + 1)?]));
    let (ports, icmp) = match protocol {
        6 | 17 | 132 => (two(0).zip(two(2)), None),
        1 | 58 => (None, transport.first().copied().zip(transport.get(1).copied())),
        _ => (None, None),
    };
    Some((PacketHeader { src, dst, protocol, ports, icmp }, transport))
}

/// The groups of denied samples and (when asked) DNS queries, read in a node's namespace.
#[derive(Debug)]
pub struct SampleReader {
    socket: Socket,
}

impl SampleReader {
    /// Binds the denied samples' group, and the DNS queries' when `dns_names`, in `netns` (or
    /// the agent's own namespace).
    pub fn open(netns: Option<&str>, dns_names: bool) -> io::Result<SampleReader> {
        let mut socket = Socket::open(netns)?;
        socket.bind_nflog(DENIED_SAMPLES_GROUP, 128)?;
        if dns_names {
            socket.bind_nflog(crate::nft::DNS_QUERIES_GROUP, 384)?;
        }
        Ok(SampleReader { socket })
    }

    /// The samples of one receive (none when nothing came within the socket's receive
    /// timeout, 2 s), to `each`. Whether the kernel lost samples since the last call (the
    /// socket's buffer was full): the loss is counted, and reading goes on.
    pub fn next(&mut self, mut each: impl FnMut(Sample)) -> io::Result<bool> {
        let outcome = self.socket.receive(|kind, payload| {
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
                && let Some(sample) = decode(payload)
            {
                each(sample);
            }
        });
        match outcome {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Reads samples in `netns` (DNS queries too when `dns_names`) until `stopped` says so, each
/// to `each` (denied ones counted in `metrics`); the loss the kernel reports is counted and
/// logged. Blocking: run it on a thread of its own. A group another process holds (EBUSY)
/// ends it with a warning: enforcement does not depend on it.
pub fn follow(
    netns: Option<&str>,
    dns_names: bool,
    metrics: Option<std::sync::Arc<crate::metrics::AgentMetrics>>,
    stopped: tokio::sync::watch::Receiver<bool>,
    mut each: impl FnMut(Sample),
) {
    let mut reader = match SampleReader::open(netns, dns_names) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::warn!(error = %e, group = DENIED_SAMPLES_GROUP, "cannot read denied samples: denied traffic is only counted");
            return;
        }
    };
    while !*stopped.borrow() {
        match reader.next(|sample| {
            if let (Some(m), Sample::Denied(_)) = (&metrics, &sample) {
                m.denied_sampled();
            }
            each(sample);
        }) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(m) = &metrics {
                    m.denied_samples_lost();
                }
                tracing::warn!("the kernel dropped samples: the agent did not read them fast enough");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading samples failed; stopping");
                return;
            }
        }
    }
}

/// The receive buffer of the conntrack events' socket: 10,000 new connections a second are
/// about 3 MB of events a second, and the reader may be descheduled for a while.
const CONNECTION_EVENTS_BUFFER: usize = 8 << 20;

/// Turns on the namespace's conntrack accounting (packets and bytes of every connection),
/// which connections begun before it lack. Per namespace, as the node's other conntrack
/// settings; off by default in the kernel.
pub fn account_connections(netns: Option<&str>) -> io::Result<()> {
    crate::netns::sysctl(netns, "net.netfilter.nf_conntrack_acct", "1")
}

/// Hears conntrack's new and destroyed connections in `netns` until `stopped` says so, those
/// with a local port's address (asked of the current ports) to `gathered`, as read together;
/// the loss the kernel reports is counted and logged. Blocking: run it on a thread of its own.
pub fn follow_connections(
    netns: Option<&str>,
    progress: tokio::sync::watch::Receiver<crate::Progress>,
    metrics: Option<std::sync::Arc<crate::metrics::AgentMetrics>>,
    stopped: tokio::sync::watch::Receiver<bool>,
    mut gathered: impl FnMut(Vec<crate::nft::ConnectionEvent>),
) {
    if let Err(e) = account_connections(netns) {
        tracing::warn!(error = %e, "cannot turn on conntrack accounting: connections are reported without packets and bytes");
    }
    let mut socket = match Socket::open_conntrack_events(netns, CONNECTION_EVENTS_BUFFER) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hear conntrack's events: allowed connections are not reported");
            return;
        }
    };
    let mut ports: Option<std::sync::Arc<crate::LocalPorts>> = None;
    let mut local: std::collections::HashSet<IpAddr> = std::collections::HashSet::new();
    let mut heard = Vec::new();
    while !*stopped.borrow() {
        let mut outcome = socket.receive(|kind, payload| heard.extend(crate::nft::connection_event(kind, payload)));
        // Then what else the kernel queued, without waiting: under load the reader wakes once
        // per gathering, not once per connection (see GATHER below).
        while outcome.is_ok() {
            match socket.receive_queued(|kind, payload| heard.extend(crate::nft::connection_event(kind, payload))) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => outcome = Err(e),
            }
        }
        let busy = !heard.is_empty();
        // The ports as they are now, after the events came: a receive waits up to 2 s, and a
        // port wired meanwhile has its first connection in this one.
        let current = std::sync::Arc::clone(&progress.borrow().ports);
        if !ports.as_ref().is_some_and(|p| std::sync::Arc::ptr_eq(p, &current)) {
            local = current.values().flat_map(|p| p.addresses.iter().copied()).collect();
            ports = Some(current);
        }
        heard.retain(|event| local.contains(&event.flow.src) || local.contains(&event.flow.dst));
        if !heard.is_empty() {
            if let Some(m) = &metrics {
                m.connections_heard(heard.iter().filter(|e| !e.ended).count() as u64);
            }
            // The gathering goes on whole: one hand-over (and one wake-up of the reporting)
            // for hundreds of connections, not one each.
            gathered(std::mem::take(&mut heard));
        }
        match outcome {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => {
                if let Some(m) = &metrics {
                    m.connection_events_lost();
                }
                tracing::warn!("the kernel dropped conntrack events: the agent did not read them fast enough");
            }
            Err(e) => {
                tracing::warn!(error = %e, "hearing conntrack's events failed; stopping");
                return;
            }
        }
        if busy {
            std::thread::sleep(GATHER);
        }
    }
}

/// How long the conntrack reader lets events gather after it has read some. Woken for each
/// event, the reader and the reporting task behind it cost the node tens of microseconds of
/// CPU per connection (measured: `weft bench packets`); gathered, a wake-up serves hundreds. A
/// connection's record is that much later (the live record's target is 2 s), and the socket's
/// 8 MiB buffer holds some 30,000 events: 1.5 s of 20,000 new connections a second.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// A sample, and when the agent read it (milliseconds since the Unix epoch).
pub type Timed = (Sample, i64);

/// Samples handed to the reporting at once, at most [`REPORT_RECORDS`].
pub type Batch = Vec<Timed>;

/// The queue from the readers' threads to the reporting: batches, not single samples, so that
/// a reader that gathered hundreds wakes the reporting once (a wake-up per connection cost the
/// node more CPU than reading it: `weft bench packets`). Bounded: at most `capacity` batches
/// wait for a controller; what does not fit is dropped and counted.
pub fn sample_queue(capacity: usize) -> (SampleSender, tokio::sync::mpsc::Receiver<Batch>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (SampleSender { tx, dropped: 0 }, rx)
}

/// A reader's end of [`sample_queue`].
#[derive(Debug, Clone)]
pub struct SampleSender {
    tx: tokio::sync::mpsc::Sender<Batch>,
    dropped: u64,
}

impl SampleSender {
    /// Queues `samples`, in batches of at most [`REPORT_RECORDS`]; a batch the queue has no
    /// room for is dropped, counted and (at each power of two) logged.
    pub fn send(&mut self, mut samples: Vec<Timed>) {
        while !samples.is_empty() {
            let rest = samples.split_off(samples.len().min(REPORT_RECORDS));
            let count = samples.len() as u64;
            if self.tx.try_send(samples).is_err() {
                let before = self.dropped;
                self.dropped += count;
                if (before + 1..=self.dropped).any(u64::is_power_of_two) {
                    tracing::warn!(dropped = self.dropped, "flow samples waiting for a controller overflowed; dropped");
                }
            }
            samples = rest;
        }
    }
}

/// The time now in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Most records in one report.
const REPORT_RECORDS: usize = 256;

/// The records of one report: denied samples under the port that dropped them (a port
/// chain's name their port; a tiered rule's, under the local port holding the packet's
/// address on that side, left out when none does), DNS queries under the local port that
/// holds their source address (one no port holds, say a port just gone, is left out),
/// connections once for each local side, with what decided there in the span `attribution`
/// holds.
pub fn records(samples: Vec<Timed>, attribution: &attribution::Attribution) -> v1::FlowReport {
    let mut report = v1::FlowReport::default();
    for (sample, at_ms) in samples {
        match sample {
            Sample::Connection(c) => report.connections.extend(connection_records(&c, at_ms, attribution)),
            Sample::Denied(d) => {
                let p = d.packet;
                let (port, tiered) = match d.by {
                    DeniedBy::Port(port) => (port, None),
                    DeniedBy::Tiered { policy, tier, rule } => {
                        let local = if d.ingress { &p.dst } else { &p.src };
                        let Some(port) = attribution.port_of(local) else { continue };
                        let by = weft_compiler::eval::TieredRuleRef { policy, rule };
                        (port, Some(tiered_ref(by, tier, weft_model::PolicyAction::Deny)))
                    }
                };
                report.denied.push(v1::DeniedRecord {
                    port: port.to_string(),
                    ingress: d.ingress,
                    src: weft_proto::encode_address(&p.src),
                    dst: weft_proto::encode_address(&p.dst),
                    protocol: u32::from(p.protocol),
                    src_port: p.ports.map(|(s, _)| u32::from(s)),
                    dst_port: p.ports.map(|(_, d)| u32::from(d)),
                    icmp_type: p.icmp.map(|(t, _)| u32::from(t)),
                    icmp_code: p.icmp.map(|(_, c)| u32::from(c)),
                    at_ms,
                    tiered,
                });
            }
            Sample::Dns(q) => {
                if let Some(port) = attribution.port_of(&q.src) {
                    report.dns.push(v1::DnsRecord {
                        port: port.to_string(),
                        server: weft_proto::encode_address(&q.server),
                        name: q.name,
                        qtype: u32::from(q.qtype),
                        at_ms,
                        src_port: q.src_port.map(u32::from),
                    });
                }
            }
        }
    }
    report
}

/// A connection's records: one for each side a local port holds.
fn connection_records(
    c: &crate::nft::ConnectionEvent,
    at_ms: i64,
    attribution: &attribution::Attribution,
) -> Vec<v1::ConnectionRecord> {
    let f = &c.flow;
    let (egress, ingress) = attribution.decide(f);
    [(egress, false), (ingress, true)]
        .into_iter()
        .filter_map(|(side, is_ingress)| {
            let (port, decision) = side?;
            let (group, rule, isolated, tiered) = match decision {
                attribution::Decision::Open => (String::new(), String::new(), false, None),
                attribution::Decision::Rule(r) => (r.group.to_string(), r.rule.to_string(), true, None),
                attribution::Decision::Unknown => (String::new(), String::new(), true, None),
                attribution::Decision::Tiered { by, tier, action } => {
                    (String::new(), String::new(), false, Some(tiered_ref(by, tier, action)))
                }
            };
            Some(v1::ConnectionRecord {
                port: port.to_string(),
                ingress: is_ingress,
                src: weft_proto::encode_address(&f.src),
                dst: weft_proto::encode_address(&f.dst),
                protocol: u32::from(f.protocol),
                src_port: f.sport.map(u32::from),
                dst_port: f.dport.map(u32::from),
                icmp_type: f.icmp.map(|(t, _)| u32::from(t)),
                icmp_code: f.icmp.map(|(_, c)| u32::from(c)),
                at_ms,
                group,
                rule,
                isolated,
                ended: c.ended,
                id: c.id,
                counters: c.counters.map(|n| v1::Counters {
                    packets_sent: n.packets_sent,
                    bytes_sent: n.bytes_sent,
                    packets_received: n.packets_received,
                    bytes_received: n.bytes_received,
                }),
                tiered,
            })
        })
        .collect()
}

fn tiered_ref(
    by: weft_compiler::eval::TieredRuleRef,
    tier: weft_model::Tier,
    action: weft_model::PolicyAction,
) -> v1::TieredRuleRef {
    v1::TieredRuleRef {
        policy: by.policy.to_string(),
        rule: u32::from(by.rule),
        tier: weft_proto::encode_tier(tier),
        action: weft_proto::encode_action(action),
    }
}

/// Reads the port chains' drop counters (by port id and direction), blocking; None where the
/// datapath has none.
pub type DropCounters = std::sync::Arc<dyn Fn() -> Vec<crate::nft::DropCount> + Send + Sync>;

/// How often the drop counters are read and a window's end is looked for.
const WINDOW_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// What the reporting keeps across its connections to controllers: the windows, and the
/// span connections are attributed against.
struct Collector {
    windows: window::Windows,
    attribution: attribution::Attribution,
    drop_counters: Option<DropCounters>,
    /// Live records dropped while no controller answered (the windows count them).
    unsent: u64,
}

impl Collector {
    /// A batch of samples as a report of live records, counted in the windows. Per batch it
    /// does no more than its samples need: a batch is often one connection's event, and the
    /// span's ports are indexed only when the span changes.
    fn take(&mut self, batch: Vec<Timed>, progress: &tokio::sync::watch::Receiver<crate::Progress>) -> v1::FlowReport {
        let span = std::sync::Arc::clone(&progress.borrow().span);
        if !std::sync::Arc::ptr_eq(self.attribution.span(), &span) {
            self.attribution = attribution::Attribution::of(span);
        }
        let report = records(batch, &self.attribution);
        self.windows.add(&report);
        report
    }

    /// Reads the drop counters into the open window; the windows that closed since the last
    /// tick.
    async fn tick(&mut self) -> Vec<v1::FlowWindow> {
        if let Some(read) = self.drop_counters.clone() {
            let counters = tokio::task::spawn_blocking(move || read()).await.unwrap_or_default();
            self.windows.drops(now_ms(), &counters);
        }
        self.windows.close_due(now_ms())
    }
}

/// The samples queued now, as one report's (fewer than twice [`REPORT_RECORDS`]); waits for
/// the first batch. Cancel-safe: nothing is awaited once a batch is taken.
async fn batch_of(samples: &mut tokio::sync::mpsc::Receiver<Batch>) -> Option<Batch> {
    let mut batch = samples.recv().await?;
    while batch.len() < REPORT_RECORDS {
        match samples.try_recv() {
            Ok(more) => batch.extend(more),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Sends what the datapath saw to the controller on the `Flows` stream until `shutdown`,
/// reconnecting with backoff: live records as they come, each window of 15 s as it closes
/// ([`window`]), and to a controller it (re)connects to, its last windows again. Apart from
/// the span's stream: telemetry never holds up an ack. While no controller answers, samples
/// are still counted in the windows; their live records are dropped (and counted in the log),
/// and a report lost with a broken stream is not sent again.
pub async fn report(
    config: crate::Config,
    progress: tokio::sync::watch::Receiver<crate::Progress>,
    mut samples: tokio::sync::mpsc::Receiver<Batch>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drop_counters: Option<DropCounters>,
) {
    let mut collector = Collector {
        windows: window::Windows::default(),
        attribution: attribution::Attribution::default(),
        drop_counters,
        unsent: 0,
    };
    let mut pause = config.backoff.0;
    loop {
        let outcome = tokio::select! {
            outcome = report_session(&config, &progress, &mut samples, &mut collector) => outcome,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "cannot report flows to the controller; trying again"),
        }
        let waited = tokio::time::sleep(pause);
        tokio::pin!(waited);
        let mut ticks = tokio::time::interval(WINDOW_TICK);
        loop {
            // The guard `wait_for` answers with is not Send: dropped before the handlers run.
            let stopping = async {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = &mut waited => break,
                () = stopping => return,
                _ = ticks.tick() => { collector.tick().await; }
                batch = batch_of(&mut samples) => match batch {
                    Some(batch) => {
                        let report = collector.take(batch, &progress);
                        collector.unsent += (report.connections.len() + report.denied.len() + report.dns.len()) as u64;
                        if collector.unsent.is_power_of_two() {
                            tracing::warn!(unsent = collector.unsent, "flow records dropped: no controller answers (the windows count them)");
                        }
                    }
                    None => return,
                },
            }
        }
        pause = (pause * 2).min(config.backoff.1);
    }
}

async fn report_session(
    config: &crate::Config,
    progress: &tokio::sync::watch::Receiver<crate::Progress>,
    samples: &mut tokio::sync::mpsc::Receiver<Batch>,
    collector: &mut Collector,
) -> Result<(), crate::AgentError> {
    let credential = config
        .credential
        .clone()
        .or_else(|| config.state_dir.credential())
        .ok_or_else(|| crate::AgentError::NoCredential(config.node.clone()))?;
    let mut client = v1::agent_client::AgentClient::new(crate::channel(config).await?);
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::FlowReport>(4);
    let first = v1::FlowReport {
        node: config.node.clone(),
        credential,
        windows: collector.windows.recent(now_ms()),
        ..Default::default()
    };
    tx.send(first).await.map_err(|_| crate::AgentError::Protocol("the flow stream closed".into()))?;
    let call = tokio::spawn(async move { client.flows(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let mut ticks = tokio::time::interval(WINDOW_TICK);
    loop {
        let report = tokio::select! {
            _ = ticks.tick() => match collector.tick().await {
                closed if closed.is_empty() => continue,
                closed => v1::FlowReport { windows: closed, ..Default::default() },
            },
            batch = batch_of(samples) => match batch {
                Some(batch) => collector.take(batch, progress),
                None => {
                    // The reader ended: say so to the controller by ending the stream.
                    drop(tx);
                    return match call.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(crate::AgentError::Stream(status)),
                        Err(e) => Err(crate::AgentError::Protocol(e.to_string())),
                    };
                }
            },
        };
        if tx.send(report).await.is_err() {
            // The call ended: its answer says why.
            return match call.await {
                Ok(Err(status)) => Err(crate::AgentError::Stream(status)),
                _ => Err(crate::AgentError::Protocol("the flow stream closed".into())),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 32, 0, 12, 10, 32, 0, 10];
        p.extend_from_slice(&[0xa0, 0x00, 0x15, 0x38, 0, 12, 0, 0]);
        p
    }

    fn message(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![2, 0, 0x44, 0x35];
        crate::nft::wire::attr(&mut m, NFULA_PREFIX, &crate::nft::wire::c_string(prefix));
        crate::nft::wire::attr(&mut m, NFULA_PAYLOAD, payload);
        m
    }

    #[test]
    fn a_denied_sample_names_its_port_its_way_and_what_the_packet_was() {
        let port = Uuid::from_u64_pair(2, 1);
        let Some(Sample::Denied(sample)) = decode(&message(&format!("weft:D:i:{}", port.simple()), &ipv4_udp())) else {
            panic!("not a denied sample")
        };
        assert_eq!(sample.by, DeniedBy::Port(port));
        assert!(sample.ingress);
        let p = sample.packet;
        assert_eq!((p.src.to_string(), p.dst.to_string()), ("10.32.0.12".into(), "10.32.0.10".into()));
        assert_eq!((p.protocol, p.ports, p.icmp), (17, Some((40960, 5432)), None));
        // Another program's prefix, a malformed port id, no payload: not weft's sample.
        assert!(decode(&message("calico:D", &ipv4_udp())).is_none());
        assert!(decode(&message("weft:D:i:nope", &ipv4_udp())).is_none());
        assert!(decode(&message(&format!("weft:D:x:{}", port.simple()), &ipv4_udp())).is_none());
        assert!(decode(&[2, 0]).is_none());
    }

    #[test]
    fn a_tiered_denied_sample_names_its_policy_and_rule_and_goes_under_the_port_holding_its_address() {
        let policy = Uuid::from_u64_pair(7, 7);
        let prefix = crate::nft::tiered_denied_prefix(policy, weft_model::Tier::Baseline, false, 2);
        let Some(Sample::Denied(sample)) = decode(&message(&prefix, &ipv4_udp())) else {
            panic!("not a denied sample")
        };
        let by = DeniedBy::Tiered { policy, tier: weft_model::Tier::Baseline, rule: 2 };
        assert_eq!((sample.by, sample.ingress), (by, false));
        assert!(decode(&message(&format!("weft:T:e:b:{}", policy.simple()), &ipv4_udp())).is_none(), "no rule");
        assert!(decode(&message(&format!("weft:T:e:b:{}:x", policy.simple()), &ipv4_udp())).is_none());
        assert!(decode(&message(&format!("weft:T:e:c:{}:1", policy.simple()), &ipv4_udp())).is_none());
        // Egress: the port holding the source address (10.32.0.12) dropped it.
        let web = Uuid::from_u64_pair(2, 12);
        let span = weft_compiler::NodeSpan { ports: [(web, port_at("10.32.0.12"))].into(), ..Default::default() };
        let attribution = attribution::Attribution::of(std::sync::Arc::new(span));
        let report = records(vec![(Sample::Denied(sample.clone()), 5)], &attribution);
        let d = &report.denied[0];
        assert_eq!((d.port.as_str(), d.ingress), (web.to_string().as_str(), false));
        let tiered = d.tiered.as_ref().expect("the tiered rule");
        assert_eq!((tiered.policy.as_str(), tiered.rule), (policy.to_string().as_str(), 2));
        assert_eq!(weft_proto::parse_tier(tiered.tier), Some(weft_model::Tier::Baseline));
        assert_eq!(weft_proto::parse_action(tiered.action), Some(weft_model::PolicyAction::Deny));
        // Ingress of the same packet: its destination is no local port, so no record.
        let inbound = DeniedSample { ingress: true, ..sample };
        assert!(records(vec![(Sample::Denied(inbound), 5)], &attribution).denied.is_empty());
    }

    fn port_at(address: &str) -> weft_compiler::PortPolicy {
        weft_compiler::PortPolicy {
            project: "p".into(),
            name: address.into(),
            addresses: vec![address.parse().unwrap()],
            refused_addresses: vec![],
            interface: "weft0".into(),
            instance: None,
            named_ports: Default::default(),
            ingress: weft_compiler::Isolation::Open,
            egress: weft_compiler::Isolation::Open,
            policies: Default::default(),
        }
    }

    #[test]
    fn a_dns_query_names_what_it_asks_for_and_a_response_or_a_pointer_is_no_query() {
        let query = |flags: u16, name: &[u8]| {
            let mut m = vec![0x12, 0x34];
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
            m.extend_from_slice(name);
            m.extend_from_slice(&[0, 1, 0, 1]);
            m
        };
        let name = b"\x07yelb-db\x07default\x03svc\x07cluster\x05local\x00";
        assert_eq!(dns_question(&query(0x0100, name)), Some(("yelb-db.default.svc.cluster.local".into(), 1)));
        assert_eq!(dns_question(&query(0x8180, name)), None, "a response");
        assert_eq!(dns_question(&query(0x0100, b"\xc0\x0c")), None, "a pointer");
        assert_eq!(dns_question(&query(0x0100, b"\x03a\x00b\x00")), None, "not printable");
        assert_eq!(dns_question(&query(0x0100, name)[..20]), None, "truncated");
        // Carried in an IPv4 UDP packet to port 53, under weft's prefix.
        let dns = query(0x0100, name);
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 32, 0, 12, 10, 96, 0, 10];
        p.extend_from_slice(&[0xc3, 0x50, 0, 53, 0, 0, 0, 0]);
        p.extend_from_slice(&dns);
        let Some(Sample::Dns(q)) = decode(&message(crate::nft::DNS_QUERY_PREFIX, &p)) else { panic!("not a query") };
        assert_eq!((q.src.to_string(), q.server.to_string()), ("10.32.0.12".into(), "10.96.0.10".into()));
        assert_eq!((q.name.as_str(), q.qtype), ("yelb-db.default.svc.cluster.local", 1));
    }

    #[test]
    fn samples_are_queued_in_batches_of_a_report_and_what_does_not_fit_is_dropped_and_counted() {
        let (mut queue, mut queued) = sample_queue(2);
        let query = |at_ms| {
            let q = DnsQuery {
                src: "10.0.0.1".parse().unwrap(),
                server: "10.96.0.10".parse().unwrap(),
                name: "db.shop.svc.cluster.local".into(),
                qtype: 1,
                src_port: Some(50000),
            };
            (Sample::Dns(q), at_ms)
        };
        // 600 read at once: two batches of a report's size fit, the rest does not.
        queue.send((0..600).map(query).collect());
        let first = queued.try_recv().unwrap();
        assert_eq!((first.len(), first[0].1, first[255].1), (REPORT_RECORDS, 0, 255));
        assert_eq!(queued.try_recv().unwrap()[0].1, 256);
        assert!(queued.try_recv().is_err());
        assert_eq!(queue.dropped, 600 - 2 * REPORT_RECORDS as u64);
        // Room again: the next batch goes.
        queue.send(vec![query(900)]);
        assert_eq!(queued.try_recv().unwrap().len(), 1);
    }

    #[test]
    fn ipv6_headers_are_read_past_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&"fd32::12".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd32::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        // A destination options header (8 bytes), then ICMPv6 echo request.
        p.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[128, 0, 0, 0]);
        p[6] = 60;
        let h = packet(&p).unwrap();
        assert_eq!((h.protocol, h.icmp, h.ports), (58, Some((128, 0)), None));
        assert_eq!(h.dst.to_string(), "fd32::10");
        // Truncated: no answer rather than a wrong one.
        assert!(packet(&p[..30]).is_none());
        assert!(packet(&[0x70]).is_none());
    }
}
