//! Helpers shared by the binary's integration tests: a real `weft server` process on a fresh
//! database, client verbs against it.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of these; they fail loudly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod browser;
pub mod cluster;
pub mod cnp;
pub mod lab;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The body of `GET path` at `addr` (plain HTTP/1.0: metrics endpoints and the like).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// One HTTP/1.0 request: the status, the headers (lower-cased names) and the body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The address a process bound (told port 0, it lets the kernel choose: no port is chosen
/// first and bound later, which another test could take in between), read from its log: the
/// `nth` line (from 1) that says `message`, which names the address.
pub async fn bound_address(log: &Path, message: &str, nth: usize) -> std::net::SocketAddr {
    let what = format!("{message} (line {nth}) in {}", log.display());
    weft_testkit::eventually(&what, Duration::from_secs(60), async || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let line = text.lines().filter(|l| l.contains(message)).nth(nth - 1).ok_or("not yet")?;
        let at = line.find("127.0.0.1:").ok_or("no address")?;
        let port: String = line[at + 10..].chars().take_while(char::is_ascii_digit).collect();
        port.parse::<u16>().map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p))).map_err(|_| "no port")
    })
    .await
}

/// How many lines of `log` say `message` so far.
pub fn lines_saying(log: &Path, message: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(message)).count()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-it-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What `weft server` logs once its REST listener is bound, with the address.
const LISTENING: &str = "REST API listening";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `weft server` on a port of its choosing and waits until /readyz answers.
    pub async fn start(database_url: Option<&str>, data_dir: &Path, extra: &[&str], scheme: &str) -> Server {
        Server::start_on(0, database_url, data_dir, extra, scheme).await
    }

    /// Starts `weft server` on a given REST port (a restarted server keeps its address; 0: a
    /// port of its choosing, read back from its log); the gRPC address is `extra`'s
    /// `--grpc-listen`, else any free port.
    pub async fn start_on(
        port: u16,
        database_url: Option<&str>,
        data_dir: &Path,
        extra: &[&str],
        scheme: &str,
    ) -> Server {
        let mut cmd = Command::new(WEFT);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")]);
        if !extra.contains(&"--grpc-listen") {
            cmd.args(["--grpc-listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("DATABASE_URL")
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("server.log")).unwrap(),
            ));
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        let log = data_dir.join("server.log");
        let started_before = lines_saying(&log, LISTENING);
        let child = cmd.spawn().unwrap();
        let port = match port {
            0 => bound_address(&log, LISTENING, started_before + 1).await.port(),
            port => port,
        };
        let server = Server { child, url: format!("{scheme}://127.0.0.1:{port}"), data_dir: data_dir.to_path_buf() };
        server.wait_ready().await;
        server
    }

    pub async fn wait_ready(&self) {
        let ca = self.data_dir.join("ca.pem");
        let client = weft_client::Client::new(&self.url, None, ca.exists().then_some(ca.as_path())).unwrap();
        weft_testkit::eventually("the server ready", Duration::from_secs(60), async || {
            if client.ready().await.unwrap_or(false) { Ok(()) } else { Err(format!("its log:\n{}", self.log())) }
        })
        .await;
    }

    /// The REST listener's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.trim_start_matches("http://").trim_start_matches("https://").parse().unwrap()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// A client with the admin token the server wrote into its data dir (plain HTTP).
    pub fn admin_client(&self) -> weft_client::Client {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap().trim().to_string();
        weft_client::Client::new(&self.url, Some(token), None).unwrap()
    }

    /// Runs a client verb against this server.
    pub fn weft(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(WEFT);
        cmd.args(args).arg("--data-dir").arg(&self.data_dir).env("WEFT_SERVER", &self.url).env_remove("WEFT_TOKEN");
        let ca = self.data_dir.join("ca.pem");
        if ca.exists() {
            cmd.arg("--ca").arg(ca);
        }
        cmd.output().unwrap()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        weft_testkit::eventually_blocking("the server stopped", Duration::from_secs(30), || {
            self.child.try_wait().unwrap().ok_or("running")
        })
    }
}

impl Drop for Server {
    /// A test that fails before `stop` must not leave its server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child process killed when dropped: a test that fails must not leave it running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether process `pid` runs (a zombie, ended and not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    // After "pid (comm)", which may hold spaces: the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string)))
        .is_some_and(|state| state != "Z" && state != "X")
}
