//! Reachability measured with real packets: from every endpoint to every endpoint, a fresh
//! attempt each time — a TCP connect, a UDP request waiting for its echo, an ICMP echo
//! (weft's own, [`crate::icmp`]). A connection
//! refused counts as reached: the refusal came back from the destination, so the policy let
//! the packets through both ways (nothing in weft's datapath rejects; it drops).

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Lab, LabError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::Icmp => "icmp",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            "icmp" => Ok(Protocol::Icmp),
            _ => Err(format!("protocol {s:?}: expected tcp, udp, sctp or icmp")),
        }
    }
}

/// A reachability matrix: the JSON shape `weft reach` prints too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub endpoints: Vec<String>,
    /// (from, to) pairs that connect, sorted.
    pub allowed: Vec<(String, String)>,
}

impl Matrix {
    pub fn allows(&self, from: &str, to: &str) -> bool {
        self.allowed.iter().any(|(f, t)| f == from && t == to)
    }

    /// A grid as Kubernetes users read one (the upstream NetworkPolicy e2e suite and
    /// Cyclonus): a row per source, a column per destination numbered as the rows, `.` where
    /// the source connects and `X` where it is blocked; a legend under it. Rows name each
    /// endpoint whole (`project/name`), so pods of one name in several namespaces are told apart.
    pub fn table(&self) -> String {
        let n = self.endpoints.len();
        let number = n.saturating_sub(1).to_string().len();
        let corner = "from \\ to";
        let width = self.endpoints.iter().map(String::len).max().unwrap_or(0).max(corner.len());
        let mut out = format!("{:number$} {corner:<width$}", "");
        for i in 0..n {
            out.push_str(&format!(" {i:>number$}"));
        }
        out.push('\n');
        for (i, from) in self.endpoints.iter().enumerate() {
            out.push_str(&format!("{i:>number$} {from:<width$}"));
            for to in &self.endpoints {
                let mark = if self.allows(from, to) { "." } else { "X" };
                out.push_str(&format!(" {mark:>number$}"));
            }
            out.push('\n');
        }
        out.push_str(LEGEND);
        out.push('\n');
        out
    }
}

/// The line under every matrix.
pub const LEGEND: &str = ". connected, X blocked (rows: from; columns: to, numbered as the rows)";

/// From inside a namespace: one fresh attempt to each target at once; `true` where it got
/// through within `timeout`.
pub fn attempts(targets: &[IpAddr], protocol: Protocol, port: Option<u16>, timeout: Duration) -> Vec<bool> {
    let threads: Vec<_> = targets
        .iter()
        .map(|t| {
            let t = *t;
            std::thread::spawn(move || attempt(t, protocol, port, timeout))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap_or(false)).collect()
}

fn attempt(target: IpAddr, protocol: Protocol, port: Option<u16>, timeout: Duration) -> bool {
    let addr = SocketAddr::new(target, port.unwrap_or(0));
    match protocol {
        Protocol::Tcp => match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        },
        Protocol::Udp => {
            let local: SocketAddr = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal");
            let Ok(socket) = UdpSocket::bind(local) else { return false };
            if socket.connect(addr).is_err() || socket.set_read_timeout(Some(timeout)).is_err() {
                return false;
            }
            if socket.send(b"weft-lab probe").is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Ok(_) => true,
                Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            }
        }
        // No SCTP module on these machines: an SCTP probe cannot get through.
        Protocol::Sctp => false,
        Protocol::Icmp => crate::icmp::answered(target, timeout),
    }
}

impl Lab {
    /// Every endpoint of the lab (pods by `project/name`, those of `project` only when given,
    /// then `outside`) with the namespace it lives in and the address it is probed at.
    pub fn endpoints(&self, ipv6: bool, project: Option<&str>) -> Vec<(String, String, Option<IpAddr>)> {
        let mut out: Vec<(String, String, Option<IpAddr>)> = self
            .state
            .pods
            .iter()
            .filter(|p| project.is_none_or(|name| p.pod.project == name))
            .map(|p| (p.pod.endpoint(), p.netns.clone(), p.pod.addresses.iter().copied().find(|a| a.is_ipv6() == ipv6)))
            .collect();
        out.sort();
        if let Some(outside) = &self.state.outside {
            out.push(("outside".to_string(), outside.clone(), Some(Lab::outside_address(ipv6))));
        }
        out
    }

    /// Probes every pair at once (one `binary lab probe-from` per source namespace): of the
    /// pods of `project` and `outside` when a project is given.
    pub fn probe(
        &self,
        binary: &Path,
        protocol: Protocol,
        port: Option<u16>,
        ipv6: bool,
        project: Option<&str>,
    ) -> Result<Matrix> {
        if protocol != Protocol::Icmp && port.is_none() {
            return Err(LabError::Invalid(format!("a {protocol} probe needs a port")));
        }
        let endpoints = self.endpoints(ipv6, project);
        let targets: Vec<(String, IpAddr)> =
            endpoints.iter().filter_map(|(name, _, a)| a.map(|a| (name.clone(), a))).collect();
        let mut children = Vec::new();
        for (name, netns, _) in &endpoints {
            let mut cmd = std::process::Command::new(binary);
            cmd.args(["lab", "probe-from", "--protocol", &protocol.to_string(), "--timeout-ms", "1000"]);
            if let Some(p) = port {
                cmd.args(["--port", &p.to_string()]);
            }
            cmd.args(targets.iter().map(|(_, a)| a.to_string()));
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let child = weft_agent::netns::spawn(Some(netns), &mut cmd)?;
            children.push((name.clone(), child));
        }
        let mut allowed = Vec::new();
        for (from, child) in children {
            let out = child.wait_with_output()?;
            let results: Vec<bool> = serde_json::from_slice(&out.stdout).map_err(|_| {
                LabError::Invalid(format!("probe from {from} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
            })?;
            for ((to, _), ok) in targets.iter().zip(results) {
                if ok {
                    allowed.push((from.clone(), to.clone()));
                }
            }
        }
        allowed.sort();
        Ok(Matrix {
            revision: None,
            protocol,
            port: if protocol == Protocol::Icmp { None } else { port },
            endpoints: targets.into_iter().map(|(n, _)| n).collect(),
            allowed,
        })
    }
}

/// Which end of a `talk` connection speaks: sends a numbered line every interval and reports
/// whether its echo came back; the other end echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Speak,
    Echo,
}

/// Connects to `target` (a lab listener greets first) and holds the connection, speaking or
/// echoing. How a test watches an established connection survive a policy change, or get cut.
pub fn talk(target: SocketAddr, role: Role, interval: Duration, timeout: Duration) -> Result<()> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    converse(stream, role, interval, timeout)
}

/// Listens on `port` for one connection and holds it, speaking or echoing: the server side of
/// [`talk`], so that a test can have the server send first.
pub fn talk_listening(port: u16, role: Role, interval: Duration, timeout: Duration) -> Result<()> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))?;
    say("listening");
    let (stream, _) = listener.accept()?;
    std::io::Write::write_all(&mut &stream, b"weft-lab talk\n")?;
    converse(stream, role, interval, timeout)
}

fn say(text: &str) {
    use std::io::Write;
    println!("{text}");
    let _ = std::io::stdout().flush();
}

/// Prints `connected`, then as the speaker `ok N` when the echo of line N came back within
/// `timeout` and `lost N` when it did not; `closed` when the connection ends.
fn converse(stream: TcpStream, role: Role, interval: Duration, timeout: Duration) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    say("connected");
    if role == Role::Echo {
        // Echo every line, the greeting of a talk listener included.
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            if line.starts_with("weft-lab") || writer.write_all(line.as_bytes()).is_ok() {
                line.clear();
                continue;
            }
            break;
        }
        say("closed");
        return Ok(());
    }
    reader.get_ref().set_read_timeout(Some(timeout))?;
    for n in 0u64.. {
        if writer.write_all(format!("{n}\n").as_bytes()).is_err() {
            break;
        }
        // Wait for this round's echo; a late echo of an earlier round (or a greeting) is skipped.
        let deadline = std::time::Instant::now() + timeout;
        let mut answered = false;
        while std::time::Instant::now() < deadline {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    say("closed");
                    return Ok(());
                }
                Ok(_) if line.trim() == n.to_string() => {
                    answered = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => {
                    say("closed");
                    return Ok(());
                }
            }
        }
        say(&format!("{} {n}", if answered { "ok" } else { "lost" }));
        std::thread::sleep(interval);
    }
    say("closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_reads_as_upstream_prints_one() {
        let m = Matrix {
            revision: None,
            protocol: Protocol::Tcp,
            port: Some(80),
            endpoints: vec!["x/a".into(), "y/a".into(), "z/a".into()],
            allowed: vec![("x/a".into(), "y/a".into()), ("y/a".into(), "y/a".into())],
        };
        let table = m.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "  from \\ to 0 1 2");
        assert_eq!(lines[1], "0 x/a       X . X", "x/a connects to y/a only");
        assert_eq!(lines[2], "1 y/a       X . X");
        assert_eq!(lines[3], "2 z/a       X X X", "rows name each endpoint whole:\n{table}");
        assert_eq!(lines[4], LEGEND);
    }
}
