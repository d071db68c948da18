//! Netlink sockets, the only I/O of the datapath: nf_tables batches sent ([`Batch`], every
//! change of the table) and the table dumped back, the conntrack table listed and pruned after
//! a change that may revoke, and a namespace's addresses. What goes over them is encoded and
//! decoded, without a socket, in [`super::wire`], [`super::batch`], [`super::listing`] and
//! [`super::ctnetlink`].

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::batch::{
    Batch, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
};
use super::ctnetlink::{self, TrackedFlow};
use super::listing::{self, TableDump};
use super::wire::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, align, attr_str, attributes, ip_address, message,
    request_chunks, word,
};
use crate::netns;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// A netlink socket in a network namespace (created there; it stays there).
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    /// Where answers are received, kept between requests.
    buf: Vec<u8>,
    /// The send buffer's size as last set (0: the kernel's default).
    send_buffer: usize,
}

/// A batch the kernel refused (or that could not be sent), and the index of the command
/// whose message it refused.
#[derive(Debug)]
pub struct BatchError {
    pub error: io::Error,
    pub command: Option<usize>,
}

impl Socket {
    /// A netfilter socket (nf_tables, conntrack).
    pub fn open(netns: Option<&str>) -> io::Result<Socket> {
        Socket::open_protocol(netns, Some(netlink::NETFILTER))
    }

    /// A netfilter socket that hears conntrack's new and destroyed connections in `netns`,
    /// with a receive buffer of `buffer` bytes: past the system's limit where the agent may
    /// (it runs as root), so that a burst of connections is read rather than lost.
    pub fn open_conntrack_events(netns: Option<&str>, buffer: usize) -> io::Result<Socket> {
        let fd = netns::run_in(netns, || {
            let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, Some(netlink::NETFILTER))?;
            let groups = (1 << (ctnetlink::GROUP_NEW - 1)) | (1 << (ctnetlink::GROUP_DESTROY - 1));
            rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
            rustix::net::sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_secs(2)))?;
            if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, buffer).is_err() {
                rustix::net::sockopt::set_socket_recv_buffer_size(&fd, buffer)?;
            }
            Ok(fd)
        })?;
        Ok(Socket::of(fd))
    }

    /// A routing socket (the namespace's links and addresses): NETLINK_ROUTE is protocol 0.
    pub fn open_route(netns: Option<&str>) -> io::Result<Socket> {
        Socket::open_protocol(netns, None)
    }

    /// A routing socket in the namespace at `path` (a sandbox's, as a CNI call names it).
    pub fn open_route_at(path: &std::path::Path) -> io::Result<Socket> {
        let fd = netns::run_in_path(path, || Socket::new_fd(None))?;
        Ok(Socket::of(fd))
    }

    fn open_protocol(netns: Option<&str>, protocol: Option<rustix::net::Protocol>) -> io::Result<Socket> {
        let fd = netns::run_in(netns, || Socket::new_fd(protocol))?;
        Ok(Socket::of(fd))
    }

    fn new_fd(protocol: Option<rustix::net::Protocol>) -> io::Result<OwnedFd> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, protocol)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_secs(2)))?;
        Ok(fd)
    }

    fn of(fd: OwnedFd) -> Socket {
        Socket { fd, seq: std::process::id().wrapping_mul(65_536), buf: vec![0; 256 << 10], send_buffer: 0 }
    }

    /// Sends the one request `build` writes (numbered as it is given, and asking for an ack)
    /// and returns the messages answered before the ack, as (type, payload); an error ack
    /// is the error.
    pub(crate) fn ask(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let request_seq = self.seq;
        rustix::net::sendto(&self.fd, &build(request_seq), SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        let mut out = Vec::new();
        self.answers(|kind, seq, payload| {
            if seq != request_seq {
                return Ok(false);
            }
            if kind == NLMSG_ERROR && payload.len() >= 4 {
                let code = i32::from_ne_bytes(word(payload, 0));
                return if code == 0 { Ok(true) } else { Err(io::Error::from_raw_os_error(-code)) };
            }
            out.push((kind, payload.to_vec()));
            Ok(false)
        })?;
        Ok(out)
    }

    /// Sends the dump request `build` writes and returns every message of its answer.
    pub(crate) fn dump_all(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let request = build(self.seq);
        let mut out = Vec::new();
        self.dumped(&request, |kind, payload| out.push((kind, payload.to_vec())))?;
        Ok(out)
    }

    /// Sends one batch (all of it happens, or none) and waits for the kernel's verdict. An
    /// error names the batch's message that failed, when the kernel says which.
    pub fn send(&mut self, batch: &Batch) -> Result<(), BatchError> {
        let first = self.seq.wrapping_add(1);
        let (bytes, last) = batch.frame(first);
        self.seq = last.wrapping_add(1);
        let failed = |error: io::Error| BatchError { error, command: None };
        // The kernel takes a batch in one datagram, which must fit the send buffer.
        if bytes.len() + 4096 > self.send_buffer {
            self.send_buffer = bytes.len().next_power_of_two().max(256 << 10) + 4096;
            rustix::net::sockopt::set_socket_send_buffer_size_force(&self.fd, self.send_buffer)
                .map_err(|e| failed(e.into()))?;
        }
        rustix::net::sendto(&self.fd, &bytes, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
            .map_err(|e| failed(e.into()))?;
        let mut command = None;
        let outcome = self.answers(|kind, seq, payload| {
            let ours = seq.wrapping_sub(first) <= last.wrapping_sub(first);
            if kind != NLMSG_ERROR || payload.len() < 4 || !ours {
                return Ok(false);
            }
            let code = i32::from_ne_bytes(word(payload, 0));
            if code != 0 {
                command = batch.command_of(first, seq);
                return Err(io::Error::from_raw_os_error(-code));
            }
            Ok(seq == last)
        });
        outcome.map_err(|error| BatchError { error, command })
    }

    /// Whether the kernel has weft's table: one small request, where listing it would start
    /// nft (a full apply on a fresh node skips that).
    pub fn has_table(&mut self) -> io::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        let (request_seq, mut request) = (self.seq, Vec::new());
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
        let attrs = super::batch::table_attrs();
        message(&mut request, kind, NLM_F_REQUEST | NLM_F_ACK, request_seq, [NFPROTO_INET, 0, 0, 0], &attrs);
        rustix::net::sendto(&self.fd, &request, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        let mut found = false;
        self.answers(|kind, seq, payload| {
            if seq != request_seq {
                return Ok(false);
            }
            if kind == NLMSG_ERROR && payload.len() >= 4 {
                return match -i32::from_ne_bytes(word(payload, 0)) {
                    0 => Ok(true),
                    e if e == rustix::io::Errno::NOENT.raw_os_error() => Ok(true),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            found |= kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE;
            Ok(false)
        })?;
        Ok(found)
    }

    /// weft's table as the kernel holds it, `None` when there is none: its chains, sets,
    /// each set's elements and its rules, dumped over netlink ([`listing::decode`] reads them).
    pub fn table(&mut self) -> io::Result<Option<TableDump>> {
        if !self.has_table()? {
            return Ok(None);
        }
        let table = super::batch::table_attrs();
        let mut dump = TableDump {
            chains: self.dump(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, &table)?,
            sets: self.dump(NFT_MSG_GETSET, NFT_MSG_NEWSET, &table)?,
            rules: self.dump(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, &table)?,
            ..TableDump::default()
        };
        for name in dump.sets.iter().filter_map(|attrs| listing::set_name(attrs)).collect::<Vec<_>>() {
            let mut which = Vec::new();
            attr_str(&mut which, NFTA_SET_ELEM_LIST_TABLE, super::ruleset::TABLE);
            attr_str(&mut which, NFTA_SET_ELEM_LIST_SET, &name);
            let elements = self.dump(NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, &which)?;
            dump.elements.insert(name, elements);
        }
        Ok(Some(dump))
    }

    /// An nf_tables dump of `request` (with `attrs`): the attributes of each `reply` message.
    fn dump(&mut self, request: u16, reply: u16, attrs: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.each_dumped(request, reply, attrs, |a| out.push(a.to_vec()))?;
        Ok(out)
    }

    /// An nf_tables dump of `request` (with `attrs`), each `reply` message's attributes to
    /// `each` where they were received: nothing of the dump is kept.
    fn each_dumped(&mut self, request: u16, reply: u16, attrs: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut bytes = Vec::new();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | request;
        message(&mut bytes, kind, NLM_F_REQUEST | NLM_F_DUMP, self.seq, [NFPROTO_INET, 0, 0, 0], attrs);
        self.dumped(&bytes, |kind, payload| {
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | reply && payload.len() >= 4 {
                each(&payload[4..]);
            }
        })
    }

    /// The figures of weft's table (None when there is none), counted as the dumps arrive:
    /// a table of thousands of rules is never held whole for them (metrics are scraped often).
    pub fn table_stats(&mut self) -> io::Result<Option<listing::TableStats>> {
        if !self.has_table()? {
            return Ok(None);
        }
        let table = super::batch::table_attrs();
        let mut stats = listing::TableStats::default();
        self.each_dumped(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, &table, |a| stats.chain(a))?;
        let mut names = Vec::new();
        self.each_dumped(NFT_MSG_GETSET, NFT_MSG_NEWSET, &table, |a| names.extend(listing::set_name(a)))?;
        stats.sets = names.len();
        for name in names {
            let mut which = Vec::new();
            attr_str(&mut which, NFTA_SET_ELEM_LIST_TABLE, super::ruleset::TABLE);
            attr_str(&mut which, NFTA_SET_ELEM_LIST_SET, &name);
            self.each_dumped(NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, &which, |a| stats.elements(a))?;
        }
        self.each_dumped(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, &table, |a| stats.rule(a))?;
        Ok(Some(stats))
    }

    /// The packet counter of each rule of weft's table that drops, with its chain (none
    /// without a table): a dump of the rules alone, read as it arrives.
    pub fn drop_counters(&mut self) -> io::Result<Vec<(String, u64)>> {
        if !self.has_table()? {
            return Ok(Vec::new());
        }
        let mut drops = Vec::new();
        let table = super::batch::table_attrs();
        self.each_dumped(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, &table, |a| drops.extend(listing::drop_counter(a)))?;
        Ok(drops)
    }

    /// The addresses of the namespace's links (of a routing socket, [`Socket::open_route`]).
    pub fn addresses(&mut self) -> io::Result<std::collections::BTreeSet<std::net::IpAddr>> {
        self.seq = self.seq.wrapping_add(1);
        // A header and an ifaddrmsg of any family: every address.
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&24u32.to_ne_bytes());
        bytes.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        bytes.extend_from_slice(&self.seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let mut out = std::collections::BTreeSet::new();
        self.dumped(&bytes, |kind, payload| {
            if kind == RTM_NEWADDR && payload.len() >= 8 {
                let attrs = attributes(&payload[8..]);
                // A point-to-point link's own address is its local one; otherwise the two
                // are the same, and IPv6 gives only the address.
                let find = |k| attrs.clone().find(|a| a.0 == k).map(|a| a.1);
                if let Some(a) = find(IFA_LOCAL).or_else(|| find(IFA_ADDRESS)).and_then(ip_address) {
                    out.insert(a);
                }
            }
        })?;
        Ok(out)
    }

    /// Sends a dump request (numbered `self.seq`) and hands each message of its answer, type
    /// and payload, to `each`, until the dump is done; an error answer fails it.
    fn dumped(&mut self, request: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let request_seq = self.seq;
        rustix::net::sendto(&self.fd, request, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        self.answers(|kind, seq, payload| {
            if seq != request_seq {
                return Ok(false);
            }
            match kind {
                NLMSG_DONE => Ok(true),
                NLMSG_ERROR if payload.len() >= 4 => {
                    Err(io::Error::from_raw_os_error(-i32::from_ne_bytes(word(payload, 0))))
                }
                _ => {
                    each(kind, payload);
                    Ok(false)
                }
            }
        })
    }

    /// Reads the kernel's answers, each message's (type, sequence number, payload) to `each`,
    /// until `each` says it has seen enough. A silent kernel ends in the receive timeout.
    fn answers(&mut self, mut each: impl FnMut(u16, u32, &[u8]) -> io::Result<bool>) -> io::Result<()> {
        let buf = &mut self.buf;
        loop {
            let (received, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let mut at = 0;
            while at + 16 <= received {
                let len = u32::from_ne_bytes(word(buf, at)) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq = u32::from_ne_bytes(word(buf, at + 8));
                if len < 16 || at + len > received {
                    return Err(io::Error::other("a malformed netlink answer"));
                }
                if each(kind, seq, &buf[at + 16..at + len])? {
                    return Ok(());
                }
                at += align(len);
            }
        }
    }

    /// Waits for the answer to each message in `waiting`; an error other than `tolerated` (an
    /// errno, or 0) fails the whole request.
    fn acks(&mut self, mut waiting: std::collections::BTreeSet<u32>, tolerated: i32) -> io::Result<()> {
        if waiting.is_empty() {
            return Ok(());
        }
        self.answers(|kind, seq, payload| {
            if kind == NLMSG_ERROR && payload.len() >= 4 && waiting.remove(&seq) {
                let code = i32::from_ne_bytes(word(payload, 0));
                if code != 0 && code != -tolerated {
                    // The kernel aborted the request; no other answer matters.
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            Ok(waiting.is_empty())
        })
    }
}

/// nfnetlink_log (NFNL_SUBSYS_ULOG) configuration.
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

impl Socket {
    /// Takes nfnetlink_log group `group`'s packets, the first `range` bytes of each, every
    /// packet sent on its own (no batching: what is logged is already rate-limited). One
    /// socket per group; a group another socket holds is EBUSY.
    pub fn bind_nflog(&mut self, group: u16, range: u32) -> io::Result<()> {
        let kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
        let family_header = |g: u16| {
            let g = g.to_be_bytes();
            [0, 0, g[0], g[1]]
        };
        self.ask(|seq| {
            let mut attrs = Vec::new();
            super::wire::attr(&mut attrs, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
            let mut out = Vec::new();
            message(&mut out, kind, NLM_F_REQUEST | NLM_F_ACK, seq, family_header(group), &attrs);
            out
        })?;
        self.ask(|seq| {
            let mut mode = range.to_be_bytes().to_vec();
            mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
            let mut attrs = Vec::new();
            super::wire::attr(&mut attrs, NFULA_CFG_MODE, &mode);
            super::wire::attr(&mut attrs, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
            let mut out = Vec::new();
            message(&mut out, kind, NLM_F_REQUEST | NLM_F_ACK, seq, family_header(group), &attrs);
            out
        })?;
        Ok(())
    }

    /// The messages of one receive, each (type, payload) to `each`; nothing when none came
    /// within the receive timeout. ENOBUFS (the kernel had more than the socket could hold,
    /// and dropped it) is the error: the caller counts the loss and goes on.
    pub fn receive(&mut self, each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.receive_with(RecvFlags::empty(), each).map(|_| ())
    }

    /// What is queued on the socket now, one datagram's messages to `each`, without waiting:
    /// whether there was one.
    pub fn receive_queued(&mut self, each: impl FnMut(u16, &[u8])) -> io::Result<bool> {
        self.receive_with(RecvFlags::DONTWAIT, each)
    }

    fn receive_with(&mut self, flags: RecvFlags, mut each: impl FnMut(u16, &[u8])) -> io::Result<bool> {
        let received = match rustix::net::recv(&self.fd, &mut self.buf[..], flags) {
            Ok((received, _)) => received,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let buf = &self.buf;
        let mut at = 0;
        while at + 16 <= received {
            let len = u32::from_ne_bytes(word(buf, at)) as usize;
            if len < 16 || at + len > received {
                return Err(io::Error::other("a malformed netlink message"));
            }
            each(u16::from_ne_bytes([buf[at + 4], buf[at + 5]]), &buf[at + 16..at + len]);
            at += align(len);
        }
        Ok(true)
    }

    /// Every conntrack entry of the namespace (both families).
    pub fn conntrack(&mut self) -> io::Result<Vec<TrackedFlow>> {
        self.seq = self.seq.wrapping_add(1);
        let request = ctnetlink::dump_request(self.seq);
        let mut out = Vec::new();
        self.dumped(&request, |kind, payload| out.extend(ctnetlink::listed(kind, payload)))?;
        Ok(out)
    }

    /// Deletes conntrack entries; one already gone counts as deleted.
    pub fn delete_conntrack(&mut self, entries: &[&TrackedFlow]) -> io::Result<()> {
        let mut request = Vec::new();
        let mut waiting = std::collections::BTreeSet::new();
        for entry in entries {
            self.seq = self.seq.wrapping_add(1);
            ctnetlink::delete_request(&mut request, self.seq, entry);
            waiting.insert(self.seq);
        }
        for chunk in request_chunks(&request) {
            rustix::net::sendto(&self.fd, chunk, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        }
        self.acks(waiting, rustix::io::Errno::NOENT.raw_os_error())
    }
}
