//! The kernel datapath: the node's span enforced by nftables (DESIGN.md §7).
//!
//! The module is a tree with a pure half and one module of I/O:
//!
//! ```text
//!  span ──render──► Ruleset ──diff──► [Command] ──batch──► netlink bytes ──netlink──► kernel
//!        (render,    (ruleset,          │                  (wire: the TLV codec)     │
//!         fold,       expr, bytecode)   └─json (nft's input form, for tests and tools)│
//!         delta)                                                                      │
//!  Ruleset ◄──listing── netlink dump ◄────────────────────────────────────────────────┘
//!  conntrack (what a change revokes) ──ctnetlink──► netlink
//! ```
//!
//! Every change is one transaction, sent to the kernel as one nf_tables netlink batch: rules
//! are compiled to bytecode when rendered ([`bytecode`]) and the batch is encoded without nft
//! ([`batch`]), because nft's own parsing and checking of a large table took two thirds of a
//! full apply (docs/datapath.md). The table is read back over netlink too ([`listing`]), so
//! the agent runs no program at all: nothing on a node can be missing, or fail silently.
//! After a change that may take an allowance away, the conntrack entries the new span no
//! longer allows are deleted, so established connections are cut too ([`conntrack`]).
//! Only [`netlink`] touches a socket; everything else is pure and tested without a kernel.
//!
//! [`Nft`] drives the nft program itself; tests and tools use it to compare weft's encoding
//! with nft's, never the agent.

mod batch;
mod bytecode;
mod conntrack;
mod ctnetlink;
mod expr;
mod json;
mod listing;
mod nat;
mod netlink;
#[cfg(test)]
mod proptests;
mod render;
mod ruleset;
pub(crate) mod wire;

pub use batch::Batch;
pub use conntrack::{cut as cut_revoked, node_addresses};
pub use ctnetlink::{ConnectionEvent, Counters, Flow as ConnectionTuple, event as connection_event};
pub use json::{encode as nft_input, to_json as nft_json};
pub use listing::{TableStats, decode as decode_table};
pub use nat::{NAT_CHAIN, NAT_TABLE};
pub use netlink::Socket;
pub use render::{
    DENIED_PREFIX, DENIED_SAMPLES_BURST, DENIED_SAMPLES_GROUP, DENIED_SAMPLES_PER_SECOND, DNS_QUERIES_GROUP,
    DNS_QUERY_PREFIX, TIERED_DENIED_PREFIX, conntrack_floor, delta_commands, denied_prefix, render,
    tiered_denied_prefix,
};
pub use ruleset::{Command, Ruleset, TABLE};

use std::io::Write;
use std::process::Stdio;
use std::time::Instant;

use weft_compiler::{NodeSpan, SpanDelta};

use crate::datapath::{Datapath, DatapathError};
use crate::netns;

/// Runs `nft` in a namespace (or the agent's own): for tests and tools that compare weft's
/// netlink encoding with nft's. The agent never runs it.
#[derive(Debug, Clone, Default)]
pub struct Nft {
    pub netns: Option<String>,
}

impl Nft {
    pub fn new(netns: Option<String>) -> Nft {
        Nft { netns }
    }

    /// Sends one transaction: all of it happens, or none.
    pub fn run(&self, commands: &[Command]) -> Result<(), DatapathError> {
        self.input(&json::encode(commands))
    }

    fn input(&self, body: &[u8]) -> Result<(), DatapathError> {
        let mut command = std::process::Command::new("nft");
        command.args(["-j", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child =
            netns::spawn(self.netns.as_deref(), &mut command).map_err(DatapathError::io("cannot run nft"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(body).map_err(DatapathError::io("nft"))?;
        }
        let out = child.wait_with_output().map_err(DatapathError::io("nft"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DatapathError::Other(format!(
                "nft refused the transaction: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The table as the kernel has it: `None` when there is none.
    pub fn list(&self) -> Result<Option<serde_json::Value>, DatapathError> {
        let mut command = std::process::Command::new("nft");
        command.args(["-j", "list", "table", "inet", ruleset::TABLE]).stdin(Stdio::null());
        let out = netns::output(self.netns.as_deref(), &mut command).map_err(DatapathError::io("cannot run nft"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(DatapathError::Other(format!("nft list: {}", err.trim())));
        }
        serde_json::from_slice(&out.stdout).map(Some).map_err(|e| DatapathError::Other(format!("nft list: {e}")))
    }
}

/// Removes weft's table from `netns` (and with it everything weft enforces there), over
/// netlink; whether there was one.
pub fn delete_table(netns: Option<&str>) -> Result<bool, DatapathError> {
    let mut socket = netlink::Socket::open(netns).map_err(DatapathError::io("no netlink socket"))?;
    if !socket.has_table().map_err(DatapathError::io("cannot ask for the table"))? {
        return Ok(false);
    }
    let batch = batch::Batch::encode(&[Command::AddTable, Command::DeleteTable]).map_err(DatapathError::Other)?;
    socket.send(&batch).map_err(|e| DatapathError::io("the kernel refused to delete the table")(e.error))?;
    Ok(true)
}

/// Makes `inet weft-nat` masquerade pod traffic leaving `cluster` (none: removes the table),
/// in one transaction ([`nat`]).
pub fn set_masquerade(netns: Option<&str>, cluster: &[ipnet::IpNet]) -> Result<(), DatapathError> {
    let mut socket = netlink::Socket::open(netns).map_err(DatapathError::io("no netlink socket"))?;
    let batch = nat::batch(cluster).map_err(DatapathError::Other)?;
    socket.send(&batch).map_err(|e| DatapathError::io("the kernel refused the masquerade table")(e.error))
}

/// The figures of weft's table in `netns`, read over netlink; `None` when there is none.
pub fn table_stats(netns: Option<&str>) -> Result<Option<listing::TableStats>, DatapathError> {
    let mut socket = netlink::Socket::open(netns).map_err(DatapathError::io("no netlink socket"))?;
    socket.table_stats().map_err(DatapathError::io("cannot read the table back"))
}

/// A port chain's drop counter: ((port id, ingress), packets dropped).
pub type DropCount = ((String, bool), u64);

/// Reads the port chains' drop counters in a namespace, again and again (every few seconds):
/// one socket for all readings, and only the rules dumped.
#[derive(Debug)]
pub struct DropCounterReader {
    netns: Option<String>,
    socket: Option<netlink::Socket>,
}

impl DropCounterReader {
    pub fn new(netns: Option<String>) -> DropCounterReader {
        DropCounterReader { netns, socket: None }
    }

    /// The packets each port chain's default drop has dropped, by (port id, ingress).
    pub fn read(&mut self) -> Result<Vec<DropCount>, DatapathError> {
        let socket = socket(&mut self.socket, self.netns.as_deref()).map_err(DatapathError::io("no netlink socket"))?;
        let drops = socket.drop_counters();
        if drops.is_err() {
            // Opened again next time: a failed dump may leave answers on it.
            self.socket = None;
        }
        let port = |chain: &str| {
            let (ingress, hex) = match chain.strip_prefix("pi-") {
                Some(hex) => (true, hex),
                None => (false, chain.strip_prefix("pe-")?),
            };
            Some((uuid::Uuid::parse_str(hex).ok()?.to_string(), ingress))
        };
        let drops = drops.map_err(DatapathError::io("cannot read the drop counters"))?;
        Ok(drops.iter().filter_map(|(chain, packets)| Some((port(chain)?, *packets))).collect())
    }
}

/// The netlink socket in `slot`, opened in `netns` when there is none.
pub(crate) fn socket<'a>(
    slot: &'a mut Option<netlink::Socket>,
    netns: Option<&str>,
) -> std::io::Result<&'a mut netlink::Socket> {
    if slot.is_none() {
        *slot = Some(netlink::Socket::open(netns)?);
    }
    slot.as_mut().ok_or_else(|| std::io::Error::other("no netlink socket"))
}

/// What one apply did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub commands: usize,
    /// Whether the table was compared with the kernel's and replaced where it differed.
    pub full: bool,
    /// Whether anything went to the kernel (a diff of nothing sends nothing).
    pub netlink: bool,
    /// Whether established connections are being re-checked (after the change, not in it).
    pub conntrack_rechecked: bool,
}

/// Enforces spans with nftables in one network namespace.
#[derive(Debug)]
pub struct NftDatapath {
    netns: Option<String>,
    /// Where transactions go (opened on first use, again after an error).
    netlink: Option<netlink::Socket>,
    cutter: conntrack::Cutter,
    /// Whether the kernel's table is known to be the render of the span last applied, so a
    /// delta can be applied on top of it.
    in_step: bool,
    pub last: ApplyReport,
}

impl NftDatapath {
    pub fn new(netns: Option<String>) -> NftDatapath {
        NftDatapath {
            cutter: conntrack::Cutter::start(netns.clone()),
            netns,
            netlink: None,
            in_step: false,
            last: ApplyReport::default(),
        }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Sends one transaction over netlink; says whether there was anything to send. A
    /// transaction the kernel refuses is an error naming the command it refused.
    fn send(&mut self, commands: &[Command]) -> Result<bool, DatapathError> {
        // `add table` alone changes nothing (every diff starts with it).
        if commands.iter().all(|c| matches!(c, Command::AddTable)) {
            return Ok(false);
        }
        // Every rule is rendered with its bytecode; one without is a bug, refused here.
        let batch = batch::Batch::encode(commands)
            .map_err(|e| DatapathError::Other(format!("cannot encode the transaction: {e}")))?;
        let socket = match socket(&mut self.netlink, self.netns.as_deref()) {
            Ok(socket) => socket,
            Err(e) => return Err(DatapathError::io("no netlink socket")(e)),
        };
        match socket.send(&batch) {
            Ok(()) => Ok(true),
            Err(e) => {
                // Answers to what failed may still be queued: the next batch gets a new socket.
                self.netlink = None;
                let command = e.command.and_then(|i| commands.get(i)).map(describe);
                let context = match command {
                    Some(c) => format!("the kernel refused the transaction at `{c}`"),
                    None => "the kernel refused the transaction".to_string(),
                };
                Err(DatapathError::Io { context, source: e.error })
            }
        }
    }

    /// The kernel's table read back over netlink: `None` when there is none, an error inside
    /// when it is not one this agent wrote.
    fn listing(&mut self) -> Result<Option<Result<Ruleset, String>>, DatapathError> {
        let socket =
            socket(&mut self.netlink, self.netns.as_deref()).map_err(DatapathError::io("no netlink socket"))?;
        match socket.table() {
            Ok(dump) => Ok(dump.map(|d| listing::decode(&d))),
            Err(e) => {
                self.netlink = None;
                Err(DatapathError::io("cannot read the table back")(e))
            }
        }
    }

    /// Makes the kernel's table the render of `span`, changing only what differs (counters of
    /// unchanged rules survive a reconnect). Returns how many commands that took, and whether
    /// they went over netlink.
    fn reconcile(&mut self, span: &NodeSpan) -> Result<(usize, bool), DatapathError> {
        let target = render::render(span);
        let kernel = match self.listing()? {
            None => Ruleset::default(),
            Some(listing) => match listing {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the kernel's weft table is not one this agent wrote; replacing it");
                    let mut commands = vec![Command::AddTable, Command::DeleteTable];
                    commands.extend(Ruleset::default().diff(&target));
                    let netlink = self.send(&commands)?;
                    return Ok((commands.len(), netlink));
                }
            },
        };
        let commands = kernel.diff(&target);
        let netlink = self.send(&commands)?;
        Ok((commands.len(), netlink))
    }
}

impl Datapath for NftDatapath {
    fn hold(&mut self) -> Result<(), DatapathError> {
        if self.listing()?.is_some() {
            tracing::info!("keeping the kernel's weft table until the controller answers");
            return Ok(());
        }
        // The empty span's table: the skeleton, which drops every weft* interface it does not know.
        self.send(&Ruleset::default().diff(&render::render(&NodeSpan::default())))?;
        tracing::info!("no saved span and no table: pods stay closed until the controller answers");
        Ok(())
    }

    fn apply(&mut self, old: &NodeSpan, new: &NodeSpan, delta: Option<&SpanDelta>) -> Result<(), DatapathError> {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        let incremental = match delta {
            Some(d) if self.in_step => {
                let commands = render::delta_commands(old, new, d);
                report.commands = commands.len();
                match self.send(&commands) {
                    Ok(netlink) => {
                        report.netlink = netlink;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a delta did not apply; reconciling the whole table");
                        false
                    }
                }
            }
            _ => false,
        };
        if !incremental {
            self.in_step = false;
            report.full = true;
            (report.commands, report.netlink) = self.reconcile(new)?;
        }
        self.in_step = true;
        if delta.is_none_or(|d| conntrack::may_revoke(d, new)) {
            report.conntrack_rechecked = true;
            self.cutter.request(new, report.full);
        }
        self.last = report;
        tracing::debug!(
            commands = report.commands,
            full = report.full,
            netlink = report.netlink,
            rechecking = report.conntrack_rechecked,
            took_us = started.elapsed().as_micros() as u64,
            "applied"
        );
        Ok(())
    }
}

/// A command as an error message names it.
fn describe(c: &Command) -> String {
    match c {
        Command::AddTable => "add table".into(),
        Command::DeleteTable => "delete table".into(),
        Command::AddSet { name, set } => format!("add set {name} ({:?}, {} elements)", set.kind, set.elements.len()),
        Command::DeleteSet { name, .. } => format!("delete set {name}"),
        Command::AddElements { name, elements, .. } => format!("add {} elements to {name}", elements.len()),
        Command::DeleteElements { name, elements, .. } => format!("delete {} elements from {name}", elements.len()),
        Command::AddChain { name, .. } => format!("add chain {name}"),
        Command::FlushChain { name } => format!("flush chain {name}"),
        Command::DeleteChain { name } => format!("delete chain {name}"),
        Command::AddRule { chain, rule } => format!("add rule to {chain}: {}", rule.expr()),
    }
}
