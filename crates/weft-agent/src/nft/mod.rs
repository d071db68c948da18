//! The kernel datapath: the node's span enforced by nftables (DESIGN.md §7).
//!
//! Every change is one transaction sent to `nft -j -f -`. JSON rather than nft's text syntax:
//! the JSON input has no quoting or keyword traps (a chain may not be called `fwd` in text) and
//! is what nft documents for programs; netlink directly would need libnftnl's C headers, which
//! these machines do not have. After a change that may take an allowance away, the conntrack
//! entries the new span no longer allows are deleted, so established connections are cut too.

pub mod conntrack;
pub mod netlink;
#[cfg(test)]
mod proptests;
pub mod render;
pub mod ruleset;

use std::io::Write;
use std::process::Stdio;
use std::time::Instant;

use weft_compiler::{NodeSpan, SpanDelta};

use crate::datapath::{Datapath, DatapathError};
use crate::netns;
pub use ruleset::{Command, Ruleset};

/// Runs `nft` in a namespace (or the agent's own).
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
        self.input(&ruleset::encode(commands))
    }

    fn input(&self, body: &[u8]) -> Result<(), DatapathError> {
        let mut child = netns::command(self.netns.as_deref(), "nft")
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DatapathError(format!("cannot run nft: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(body).map_err(|e| DatapathError(format!("nft: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| DatapathError(format!("nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DatapathError(format!("nft refused the transaction: {}", String::from_utf8_lossy(&out.stderr).trim())))
        }
    }

    /// The table as the kernel has it: `None` when there is none.
    pub fn list(&self) -> Result<Option<serde_json::Value>, DatapathError> {
        let out = netns::command(self.netns.as_deref(), "nft")
            .args(["-j", "list", "table", "inet", ruleset::TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DatapathError(format!("cannot run nft: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(DatapathError(format!("nft list: {}", err.trim())));
        }
        serde_json::from_slice(&out.stdout).map(Some).map_err(|e| DatapathError(format!("nft list: {e}")))
    }

    /// Removes the table (and with it everything weft enforces here).
    pub fn delete_table(&self) -> Result<bool, DatapathError> {
        if self.list()?.is_none() {
            return Ok(false);
        }
        self.run(&[Command::AddTable, Command::DeleteTable])?;
        Ok(true)
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
    /// Whether the change went to the kernel over netlink (set elements only), not nft.
    pub netlink: bool,
    /// Whether established connections are being re-checked (after the change, not in it).
    pub conntrack_rechecked: bool,
}

/// Enforces spans with nftables in one network namespace.
#[derive(Debug)]
pub struct NftDatapath {
    nft: Nft,
    /// Set element changes go straight to the kernel (opened on first use, again after an
    /// error).
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
            nft: Nft::new(netns),
            netlink: None,
            in_step: false,
            last: ApplyReport::default(),
        }
    }

    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    /// Sends a delta's commands: element changes over netlink when that can carry them,
    /// everything else (and anything netlink refused) through nft.
    fn send_delta(&mut self, commands: &[Command]) -> Result<bool, DatapathError> {
        if commands.iter().all(|c| matches!(c, Command::AddTable)) {
            return Ok(false);
        }
        if let Some(batch) = netlink::ElementBatch::encode(commands) {
            let sent = socket(&mut self.netlink, self.nft.netns.as_deref()).and_then(|s| s.send(&batch));
            match sent {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::debug!(error = %e, "netlink refused an element change; sending it through nft");
                    self.netlink = None;
                }
            }
        }
        self.nft.run(commands).map(|()| false)
    }

    /// Makes the kernel's table the render of `span`, changing only what differs (counters of
    /// unchanged rules survive a reconnect).
    fn reconcile(&mut self, span: &NodeSpan) -> Result<usize, DatapathError> {
        let target = render::render(span);
        let kernel = match self.nft.list()? {
            None => Ruleset::default(),
            Some(listing) => match ruleset::parse_listing(&listing) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the kernel's weft table is not one this agent wrote; replacing it");
                    let mut commands = vec![Command::AddTable, Command::DeleteTable];
                    commands.extend(Ruleset::default().diff(&target));
                    self.nft.run(&commands)?;
                    return Ok(commands.len());
                }
            },
        };
        let commands = kernel.diff(&target);
        if commands.len() > 1 {
            self.nft.run(&commands)?;
        }
        Ok(commands.len())
    }
}

impl Datapath for NftDatapath {
    fn hold(&mut self) -> Result<(), DatapathError> {
        if self.nft.list()?.is_some() {
            tracing::info!("keeping the kernel's weft table until the controller answers");
            return Ok(());
        }
        // The empty span's table: the skeleton, which drops every weft* interface it does not know.
        self.nft.run(&Ruleset::default().diff(&render::render(&NodeSpan::default())))?;
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
                match self.send_delta(&commands) {
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
            report.commands = self.reconcile(new)?;
        }
        self.in_step = true;
        if delta.is_none_or(conntrack::may_revoke) {
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
