//! The listeners inside pods: every declared TCP port greets and echoes, every UDP port
//! echoes, but UDP 53 answers DNS for the lab's pods when given the lab ([`crate::dns`]). Run
//! as `weft lab serve` inside the pod's namespace; SCTP is skipped where the kernel has no
//! SCTP (these machines cannot load the module).

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_agent::netns;

use crate::manifests::ListenPort;
use crate::{LabError, Protocol, Result};

const READY: &str = "weft lab serve: listening";
/// What a TCP listener says first on each connection.
const GREETING: &[u8] = b"weft-lab\n";

/// Listens on `ports` until killed. Binds `[::]` (both families). With `dns`, the directory
/// of a lab, UDP port 53 answers DNS questions for its pods.
pub fn run(ports: &[ListenPort], dns: Option<&Path>) -> Result<()> {
    let any = |port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let mut threads = Vec::new();
    for p in ports {
        match p.protocol {
            Protocol::Tcp => {
                let listener = TcpListener::bind(any(p.port))?;
                threads.push(std::thread::spawn(move || {
                    for mut stream in listener.incoming().flatten() {
                        // A greeting, then an echo until the client closes: connections can
                        // stay open, so tests can watch one being cut.
                        std::thread::spawn(move || {
                            let _ = stream.write_all(GREETING);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }));
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(any(p.port))?;
                match dns.filter(|_| p.port == 53).map(Path::to_path_buf) {
                    Some(lab) => threads.push(std::thread::spawn(move || crate::dns::serve(&socket, &lab))),
                    None => threads.push(std::thread::spawn(move || {
                        let mut buf = [0u8; 2048];
                        while let Ok((n, from)) = socket.recv_from(&mut buf) {
                            let _ = socket.send_to(&buf[..n], from);
                        }
                    })),
                }
            }
            Protocol::Sctp | Protocol::Icmp => eprintln!("weft lab serve: {p} skipped (no listener of that kind here)"),
        }
    }
    println!("{READY}");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    // Nothing to listen on: stay, so the process list of the lab stays the same.
    loop {
        std::thread::park();
    }
}

/// One exchange with a pod's TCP listener, as an application has one: its greeting, then a
/// line sent and echoed back, then closed.
pub fn exchange(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut greeting = [0u8; GREETING.len()];
    stream.read_exact(&mut greeting)?;
    let line = b"GET /\n";
    stream.write_all(line)?;
    let mut echo = [0u8; 6];
    stream.read_exact(&mut echo)?;
    if greeting != GREETING || &echo != line {
        return Err(std::io::Error::other("not what a lab listener answers"));
    }
    stream.shutdown(std::net::Shutdown::Both)
}

/// Starts `binary lab serve` inside `netns`, its output in `log`, answering DNS for the lab
/// in `dns`; returns its pid.
pub fn spawn(binary: &Path, netns: &str, listen: &[String], dns: Option<&Path>, log: &Path) -> Result<u32> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(binary);
    cmd.args(["lab", "serve"]);
    for l in listen {
        cmd.args(["--listen", l]);
    }
    if let Some(lab) = dns {
        cmd.arg("--dns").arg(lab);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0).stdin(Stdio::null()).stdout(out).stderr(err);
    let child = netns::spawn(Some(netns), &mut cmd)
        .map_err(|e| LabError::Command { command: format!("{} lab serve", binary.display()), detail: e.to_string() })?;
    let pid = child.id();
    wait_ready(log, pid)?;
    Ok(pid)
}

fn wait_ready(log: &Path, pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(READY) {
            return Ok(());
        }
        if !Path::new(&format!("/proc/{pid}")).exists() || text.contains("Error") {
            return Err(LabError::Invalid(format!("a pod listener did not start: {}", text.trim())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(LabError::Invalid(format!("a pod listener did not start within 10 s (see {})", log.display())))
}
