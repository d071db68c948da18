//! The lab's DNS, as kube-dns would answer it: a pod that declares UDP port 53 answers A and
//! AAAA questions for every pod of the lab by its service name (`<pod>.<namespace>.svc.
//! cluster.local`: a lab pod stands for its service), read from the lab's record at each
//! question, so a pod wired later is known at once. Queries and answers are built and read
//! here (pure), and [`resolve`] asks a server as a pod's resolver would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// The cluster's DNS domain, as kubelet's `--cluster-domain` has it by default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// How long an answer may be kept: short, as pods come and go.
const TTL_SECONDS: u32 = 5;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;

/// A pod's name in the cluster's DNS.
pub fn service_name(pod: &str, namespace: &str) -> String {
    format!("{pod}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Every pod of a lab by its name, with its addresses.
pub fn names(state: &crate::State) -> HashMap<String, Vec<IpAddr>> {
    state.pods.iter().map(|p| (service_name(&p.pod.name, &p.pod.namespace), p.pod.addresses.clone())).collect()
}

/// A query for `name`'s records of `qtype`, with recursion desired, as a stub resolver sends it.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The answer to a query: the addresses `lookup` gives the name, of the family asked for, or
/// "no such name" when it gives none at all. None for what is no query this answers (a
/// response, no question, a malformed one).
pub fn answer(request: &[u8], lookup: impl Fn(&str) -> Option<Vec<IpAddr>>) -> Option<Vec<u8>> {
    let (name, qtype) = weft_agent::flows::dns_question(request)?;
    // The question ends where its name's labels do, plus type and class.
    let mut end = 12;
    while *request.get(end)? != 0 {
        end += 1 + usize::from(request[end]);
    }
    end += 5;
    let question = request.get(12..end)?;
    let known = lookup(&name.to_ascii_lowercase());
    let records: Vec<IpAddr> = known
        .iter()
        .flatten()
        .copied()
        .filter(|a| match qtype {
            TYPE_A => a.is_ipv4(),
            TYPE_AAAA => a.is_ipv6(),
            _ => false,
        })
        .collect();
    let rcode = if known.is_none() { RCODE_NXDOMAIN } else { 0 };
    let mut out = Vec::with_capacity(request.len() + records.len() * 28);
    out.extend_from_slice(request.get(..2)?);
    // QR, the query's RD, RA, authoritative.
    let rd = u16::from_be_bytes([request[2], request[3]]) & 0x0100;
    out.extend_from_slice(&(0x8480 | rd | rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(question);
    for address in records {
        out.extend_from_slice(&0xc00cu16.to_be_bytes()); // the question's name
        let (kind, data) = match address {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// The addresses a response to query `id` gives, in order; an error naming what is wrong with
/// it otherwise (another id, "no such name", a malformed message).
pub fn addresses(response: &[u8], id: u16) -> Result<Vec<IpAddr>, String> {
    let short = || "a truncated DNS response".to_string();
    let word = |at: usize| response.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(short);
    if word(0)? != id || word(2)? & 0x8000 == 0 {
        return Err("not the response to this query".into());
    }
    match word(2)? & 0x000f {
        0 => {}
        RCODE_NXDOMAIN => return Err("no such name".into()),
        rcode => return Err(format!("the server answered with error {rcode}")),
    }
    let (questions, answers) = (word(4)?, word(6)?);
    let skip_name = |mut at: usize| -> Result<usize, String> {
        loop {
            let len = *response.get(at).ok_or_else(short)?;
            match len {
                0 => return Ok(at + 1),
                l if l & 0xc0 == 0xc0 => return Ok(at + 2),
                l => at += 1 + usize::from(l),
            }
        }
    };
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(at)?;
        let (kind, length) = (word(at)?, usize::from(word(at + 8)?));
        let data = response.get(at + 10..at + 10 + length).ok_or_else(short)?;
        match (kind, length) {
            (TYPE_A, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).map_err(|_| short())?)),
            (TYPE_AAAA, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).map_err(|_| short())?)),
            _ => {}
        }
        at += 10 + length;
    }
    Ok(out)
}

/// Asks `server` for `name`'s IPv4 addresses over UDP, from a socket of its own (a new source
/// port, as a resolver takes for each query).
pub fn resolve(server: IpAddr, name: &str, timeout: Duration) -> std::io::Result<Vec<IpAddr>> {
    let any: IpAddr = if server.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { [0, 0, 0, 0].into() };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.set_read_timeout(Some(timeout))?;
    let id = (std::process::id() as u16) ^ socket.local_addr()?.port();
    socket.send_to(&query(id, name, TYPE_A), SocketAddr::new(server, 53))?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if from.ip() != server {
            continue;
        }
        return addresses(&buf[..n], id).map_err(|e| std::io::Error::other(format!("{name}: {e}")));
    }
}

/// Answers DNS on `socket` for the pods of the lab recorded in `lab_dir`, until the socket
/// fails. The record is read again at each question. What is no DNS query is echoed, as every
/// lab UDP port echoes: `weft lab probe --protocol udp --port 53` gets its answer here too.
pub fn serve(socket: &UdpSocket, lab_dir: &Path) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let reply = match weft_agent::flows::dns_question(&buf[..n]) {
            Some(_) => {
                let names = crate::Lab::open(lab_dir).map(|lab| names(&lab.state)).unwrap_or_default();
                answer(&buf[..n], |name| names.get(name).cloned())
            }
            None => None,
        };
        let _ = socket.send_to(reply.as_deref().unwrap_or(&buf[..n]), from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<Vec<IpAddr>> {
        (name == "yelb-db.default.svc.cluster.local")
            .then(|| vec!["10.47.1.21".parse().unwrap(), "fd47::1:21".parse().unwrap()])
    }

    #[test]
    fn a_query_is_answered_with_the_addresses_of_its_family() {
        let q = query(0x1234, "yelb-db.default.svc.cluster.local", TYPE_A);
        assert_eq!(
            weft_agent::flows::dns_question(&q),
            Some(("yelb-db.default.svc.cluster.local".to_string(), TYPE_A)),
            "the agent reads the name these queries ask"
        );
        let a = answer(&q, lookup).expect("a query");
        assert_eq!(addresses(&a, 0x1234), Ok(vec!["10.47.1.21".parse().unwrap()]));
        let aaaa = answer(&query(7, "YELB-DB.default.svc.cluster.local.", TYPE_AAAA), lookup).unwrap();
        assert_eq!(addresses(&aaaa, 7), Ok(vec!["fd47::1:21".parse().unwrap()]));
        // A name known with no address of the family: no records, no error.
        assert_eq!(
            addresses(&answer(&query(8, "yelb-db.default.svc.cluster.local", 33), lookup).unwrap(), 8),
            Ok(vec![])
        );
    }

    #[test]
    fn an_unknown_name_is_no_such_name_and_what_is_no_query_is_not_answered() {
        let a = answer(&query(9, "example.org", TYPE_A), lookup).unwrap();
        assert_eq!(addresses(&a, 9), Err("no such name".to_string()));
        assert_eq!(addresses(&a, 10), Err("not the response to this query".to_string()));
        assert!(answer(&a, lookup).is_none(), "a response is no query");
        assert!(answer(&[0u8; 5], lookup).is_none());
        // An error answer needs nothing past its header.
        assert_eq!(addresses(&a[..12], 9), Err("no such name".to_string()));
        let ok = answer(&query(11, "yelb-db.default.svc.cluster.local", TYPE_A), lookup).unwrap();
        assert_eq!(addresses(&ok[..ok.len() - 2], 11), Err("a truncated DNS response".to_string()));
    }
}
