//! The agent's side of the CNI plugin (DESIGN.md §9): `weft-cni` forwards each call a container
//! runtime makes to `POST /v1/cni` on a unix socket, and the agent answers it with what it
//! knows — the node's ports whose policy is in the datapath ([`crate::Progress::ports`]).
//!
//! ```text
//!   ADD    wait until the pod's port (project, name, pod UID) is in force ─► record ─► wire ─► result
//!   DEL    by the record of (container, ifname): unwire, forget; no record, nothing to do
//!   CHECK  the record, the port, both ends' links, addresses and routes as ADD made them
//!   STATUS fails until the agent has synced with a controller
//!   GC     unwire what no attachment the runtime still has owns
//! ```
//!
//! A pod's ADD answers only once its port is in the applied span: its rules, which match the
//! port's interface by name and its addresses, are in the kernel before the interface exists,
//! so the pod's first packet is already under its policy. Everything done for one pod is done
//! under that pod's lock (its node-side interface name): two sandboxes of one pod, a DEL racing
//! an ADD, never interleave.

mod records;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use weft_cni::spec::{self, AddResult, Dns, Interface, IpConfig, Route};
use weft_cni::{CniError, Command, NetConf, Request, code};

pub use records::{Record, Records};

use crate::link::{self, PodWiring};
use crate::{LocalPort, Progress};

/// weft's own code for a CHECK that found the wiring not as ADD made it (the spec leaves codes
/// from 100 to plugins).
pub const CHECK_FAILED: u32 = 100;

#[derive(Debug, Clone)]
pub struct CniConfig {
    /// Where `weft-cni` reaches the agent.
    pub socket: PathBuf,
    /// The node's namespace (the agent's datapath's); `None`: the agent's own.
    pub node_netns: Option<String>,
    /// Where the attachments' records are kept.
    pub records: PathBuf,
    /// A Kubernetes namespace `ns` is the project `<prefix>ns`, as kube-manager names it.
    pub project_prefix: String,
    /// How long ADD waits for the pod's port when the configuration does not say.
    pub wait: Duration,
}

/// The CNI service: its configuration, what the agent has in force, and a lock per pod.
#[derive(Debug)]
pub struct Cni {
    config: CniConfig,
    records: Records,
    progress: watch::Receiver<Progress>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

type Answer = Result<Option<Vec<u8>>, CniError>;

impl Cni {
    pub fn new(config: CniConfig, progress: watch::Receiver<Progress>) -> std::io::Result<Arc<Cni>> {
        let records = Records::open(&config.records)?;
        Ok(Arc::new(Cni { config, records, progress, locks: Mutex::new(HashMap::new()) }))
    }

    /// Binds the socket (mode 0600: the runtime runs as root) and serves until `shutdown`.
    /// First it puts right what an earlier run left: DELs queued while it was away, and the
    /// wiring of sandboxes that are gone.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let socket = self.config.socket.clone();
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A socket file left by an agent that died: nobody listens on it any more.
        if std::os::unix::net::UnixStream::connect(&socket).is_err() {
            let _ = std::fs::remove_file(&socket);
        }
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", socket.display())))?;
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        self.recover().await;
        tracing::info!(socket = %socket.display(), "serving CNI calls");
        let service = Arc::clone(&self);
        let app = axum::Router::new().route(
            weft_cni::shim::CNI_PATH,
            axum::routing::post(move |body: Bytes| {
                let service = Arc::clone(&service);
                async move { service.call(&body).await }
            }),
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }

    /// Answers one call as the plugin sends it.
    pub async fn call(&self, body: &[u8]) -> Response {
        let request: Request = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return reply(&Err(CniError::new(code::DECODE_FAILURE, format!("not a CNI call from weft-cni: {e}"))));
            }
        };
        let started = std::time::Instant::now();
        let answer = self.handle(&request).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        let container = request.container_id.as_deref().unwrap_or("");
        match &answer {
            Ok(_) => tracing::info!(command = %request.command, container, elapsed_ms, "CNI call done"),
            Err(e) => {
                tracing::warn!(command = %request.command, container, elapsed_ms, code = e.code, error = %e.msg, "CNI call failed")
            }
        }
        reply(&answer.map_err(|e| e.in_version(request.version())))
    }

    async fn handle(&self, request: &Request) -> Answer {
        let conf = NetConf::of(request)?;
        match request.command {
            Command::Version => {
                let asked = Some(conf.cni_version.as_str());
                Ok(Some(serde_json::to_vec(&spec::VersionInfo::answering(asked)).unwrap_or_default()))
            }
            Command::Add => self.add(request, &conf).await,
            Command::Del => self.del(request).await.map(|()| None),
            Command::Check => self.check(request, &conf).await.map(|()| None),
            Command::Status => self.status().map(|()| None),
            Command::Gc => self.gc(&conf).await.map(|()| None),
        }
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the locks nobody holds or waits for, so the map stays the size of the pods
        // being wired.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(locks.entry(key.to_string()).or_default())
    }

    async fn add(&self, request: &Request, conf: &NetConf) -> Answer {
        let (container_id, ifname, netns) = attachment(request)?;
        let netns = netns.ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"))?;
        let arg = |key: &str| request.args.get(key).filter(|v| !v.is_empty());
        let missing = |key: &str| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "CNI_ARGS has no {key}: weft wires Kubernetes pods, and finds each one's port by its namespace and name"
                ),
            )
        };
        let namespace = arg("K8S_POD_NAMESPACE").ok_or_else(|| missing("K8S_POD_NAMESPACE"))?;
        let name = arg("K8S_POD_NAME").ok_or_else(|| missing("K8S_POD_NAME"))?.clone();
        let uid = arg("K8S_POD_UID").cloned();
        let project = format!("{}{namespace}", self.config.project_prefix);
        if !Path::new(&netns).exists() {
            return Err(CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS {netns} does not exist")));
        }
        let wait = conf.timeout_seconds.map_or(self.config.wait, Duration::from_secs);
        let port = self.port_in_force(&project, &name, uid.as_deref(), wait).await?;

        let lock = self.lock(&port.interface);
        let _held = lock.lock().await;
        if let Some(existing) = self.records.get(&container_id, &ifname) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "container {container_id} has {ifname} already (pod {}/{}): a runtime DELs an attachment before it ADDs it again",
                    existing.project, existing.name
                ),
            ));
        }
        let record = Record {
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            netns: netns.clone(),
            project: project.clone(),
            name: name.clone(),
            port: port.id,
            instance: port.instance.clone(),
            host_interface: port.interface.clone(),
            addresses: port.addresses.clone(),
            wired: false,
        };
        let node_netns = self.config.node_netns.clone();
        let records = self.records.clone();
        let mtu_wanted = conf.mtu.filter(|m| *m > 0);
        let wired = tokio::task::spawn_blocking(move || -> Result<(Record, link::Wired), CniError> {
            // Another sandbox of this pod holds the interface name: that sandbox is being
            // replaced (the runtime makes a new one when the old died), so its wiring goes.
            for old in records.all().into_iter().filter(|r| r.host_interface == record.host_interface) {
                tracing::info!(old = %old.container_id, new = %record.container_id, pod = %format!("{}/{}", record.project, record.name), "a new sandbox replaces the pod's old one");
                unwire(node_netns.as_deref(), &old);
                records.remove(&old.container_id, &old.ifname).map_err(io_failure("cannot remove a CNI record"))?;
            }
            // An interface of that name with no record: left by an agent that died before its
            // record, or made by hand. The port's interface is the port's.
            match link::remove_host_side(node_netns.as_deref(), &record.host_interface) {
                Ok(true) => tracing::warn!(interface = %record.host_interface, "removed an interface no record owned"),
                Ok(false) => {}
                Err(e) => return Err(io_failure("cannot clear the port's interface")(e)),
            }
            records.put(&record).map_err(io_failure("cannot write the CNI record"))?;
            let mtu = match mtu_wanted {
                Some(m) => Some(m),
                None => link::node_mtu(node_netns.as_deref()).ok().flatten(),
            };
            let wiring = PodWiring {
                node_netns: node_netns.as_deref(),
                pod_netns: Path::new(&record.netns),
                host_interface: &record.host_interface,
                ifname: &record.ifname,
                addresses: &record.addresses,
                mtu,
            };
            let wired = match link::wire(&wiring) {
                Ok(w) => w,
                Err(e) => {
                    let _ = records.remove(&record.container_id, &record.ifname);
                    return Err(io_failure(format!("cannot wire pod {}/{}", record.project, record.name))(e));
                }
            };
            let record = Record { wired: true, ..record };
            if let Err(e) = records.put(&record) {
                unwire(node_netns.as_deref(), &record);
                let _ = records.remove(&record.container_id, &record.ifname);
                return Err(io_failure("cannot write the CNI record")(e));
            }
            Ok((record, wired))
        })
        .await
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("the wiring task failed: {e}")))??;
        let (record, wired) = wired;
        Ok(Some(serde_json::to_vec(&add_result(&conf.cni_version, &record, &wired)).unwrap_or_default()))
    }

    /// Waits until the node's span holds the port of pod `project/name` (and of that pod UID,
    /// when the runtime gives one) with its addresses: then its policy is in the datapath.
    async fn port_in_force(
        &self,
        project: &str,
        name: &str,
        uid: Option<&str>,
        wait: Duration,
    ) -> Result<LocalPort, CniError> {
        let key = (project.to_string(), name.to_string());
        let ready = |p: &Progress| {
            p.ports
                .get(&key)
                .filter(|port| {
                    !port.addresses.is_empty()
                        && (uid.is_none() || port.instance.is_none() || port.instance.as_deref() == uid)
                })
                .cloned()
        };
        let mut progress = self.progress.clone();
        let found = tokio::time::timeout(wait, progress.wait_for(|p| ready(p).is_some())).await;
        if let Ok(Ok(p)) = &found
            && let Some(port) = ready(p)
        {
            return Ok(port);
        }
        let now = self.progress.borrow().clone();
        let why = match now.ports.get(&key) {
            None => format!(
                "the port {project}/{name} has not reached this node within {} s: is kube-manager running, and is the pod scheduled here?",
                wait.as_secs()
            ),
            Some(p) if p.addresses.is_empty() => format!("the port {project}/{name} has no address yet"),
            Some(p) => format!(
                "the port {project}/{name} belongs to pod UID {}, not {}: kube-manager has not replaced it yet",
                p.instance.as_deref().unwrap_or("-"),
                uid.unwrap_or("-")
            ),
        };
        Err(CniError::new(code::TRY_AGAIN_LATER, why))
    }

    async fn del(&self, request: &Request) -> Result<(), CniError> {
        // Not the namespace: removing the node side removes the pair, whether the sandbox's
        // namespace is still there or not.
        let (container_id, ifname, _) = attachment(request)?;
        let Some(found) = self.records.get(&container_id, &ifname) else {
            // Nothing of ours: a second DEL, a sandbox whose ADD never came or failed, or one
            // an earlier sandbox of the pod has since been replaced by. Nothing to do, and the
            // newer sandbox's interface is never touched.
            return Ok(());
        };
        let held = self.lock(&found.host_interface).lock_owned().await;
        let Some(record) = self.records.get(&container_id, &ifname) else { return Ok(()) };
        let node_netns = self.config.node_netns.clone();
        let records = self.records.clone();
        // The pod's traffic stops now; removing the pair takes the kernel an RCU grace period
        // (20-30 ms here), which the runtime need not wait for. It is finished in the
        // background, still under the pod's lock, so a new sandbox of the pod waits for it;
        // and the record goes only once it is done, so an agent that dies meanwhile finds it
        // at start and finishes the job.
        let interface = record.host_interface.clone();
        let node = node_netns.clone();
        let down = tokio::task::spawn_blocking(move || link::take_down(node.as_deref(), &interface))
            .await
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("the unwiring task failed: {e}")))?;
        if let Err(e) = down {
            tracing::warn!(interface = %record.host_interface, error = %e, "cannot set a pod's interface down");
        }
        tokio::task::spawn_blocking(move || {
            let _held = held;
            unwire(node_netns.as_deref(), &record);
            if let Err(e) = records.remove(&record.container_id, &record.ifname) {
                tracing::warn!(container = %record.container_id, error = %e, "cannot remove a CNI record");
            }
        });
        Ok(())
    }

    async fn check(&self, request: &Request, conf: &NetConf) -> Result<(), CniError> {
        let (container_id, ifname, netns) = attachment(request)?;
        let prev: AddResult = match &conf.prev_result {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("prevResult is not a result: {e}")))?,
            None => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "CHECK needs prevResult, and the configuration has none",
                ));
            }
        };
        let record = self.records.get(&container_id, &ifname).ok_or_else(|| {
            CniError::new(code::UNKNOWN_CONTAINER, format!("weft wired no {ifname} for container {container_id}"))
        })?;
        let mut wrong = Vec::new();
        if !record.wired {
            wrong.push("its wiring never completed".to_string());
        }
        if netns.as_deref() != Some(record.netns.as_str()) {
            wrong.push(format!("it was wired in {}, not {}", record.netns, netns.unwrap_or_default()));
        }
        match self.progress.borrow().ports.get(&(record.project.clone(), record.name.clone())) {
            None => wrong.push(format!("the port {}/{} is no longer on this node", record.project, record.name)),
            Some(p) if p.addresses != record.addresses || p.id != record.port => {
                wrong.push(format!("the port {}/{} has changed since ADD", record.project, record.name))
            }
            Some(_) => {}
        }
        let node_netns = self.config.node_netns.clone();
        let found = tokio::task::spawn_blocking(move || {
            let host = link::host_side(node_netns.as_deref(), &record.host_interface);
            let pod = link::sandbox_side(Path::new(&record.netns), &record.ifname);
            (record, host, pod)
        })
        .await
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("the check task failed: {e}")))?;
        let (record, host, pod) = found;
        match host {
            Ok(Some(h)) => {
                if !h.link.up {
                    wrong.push(format!("{} is down", record.host_interface));
                }
                for a in &record.addresses {
                    if !h.routes.iter().any(|r| r.destination == *a) {
                        wrong.push(format!("the node has no route to {a} through {}", record.host_interface));
                    }
                }
            }
            Ok(None) => wrong.push(format!("the node has no {}", record.host_interface)),
            Err(e) => wrong.push(format!("cannot read {}: {e}", record.host_interface)),
        }
        match pod {
            Ok(Some(p)) => {
                if !p.link.up {
                    wrong.push(format!("{} is down in the sandbox", record.ifname));
                }
                let held: BTreeSet<IpAddr> = p.addresses.iter().map(|(a, _)| *a).collect();
                for a in record.addresses.iter().copied().chain(prev.ips.iter().filter_map(IpConfig::ip)) {
                    if !held.contains(&a) {
                        wrong.push(format!("the sandbox's {} lacks {a}", record.ifname));
                    }
                }
                if !p.routes.iter().any(|r| r.prefix == 0) {
                    wrong.push("the sandbox has no default route".to_string());
                }
            }
            Ok(None) => wrong.push(format!("the sandbox has no {}", record.ifname)),
            Err(e) => wrong.push(format!("cannot read the sandbox: {e}")),
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            wrong.dedup();
            Err(CniError::new(CHECK_FAILED, format!("{container_id}/{ifname}: {}", wrong.join("; "))))
        }
    }

    fn status(&self) -> Result<(), CniError> {
        let progress = self.progress.borrow();
        if progress.synced && progress.apply_failing {
            return Err(CniError::new(
                code::LIMITED_CONNECTIVITY,
                "the weft agent cannot apply its controller's last update: the node enforces its last good state, and new pods may wait",
            ));
        }
        if progress.synced {
            return Ok(());
        }
        let detail = if progress.revision > 0 {
            "the weft agent has no controller now: running pods keep their policy, new pods may wait"
        } else {
            "the weft agent has not synced with a controller yet"
        };
        Err(CniError::new(code::NOT_AVAILABLE, detail))
    }

    async fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let valid: BTreeSet<(String, String)> =
            conf.valid_attachments.iter().flatten().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        for record in self.records.all() {
            if valid.contains(&(record.container_id.clone(), record.ifname.clone())) {
                continue;
            }
            self.forget(record, "the runtime no longer has it").await?;
        }
        Ok(())
    }

    /// Removes an attachment's wiring and its record, under its pod's lock.
    async fn forget(&self, record: Record, why: &'static str) -> Result<(), CniError> {
        let lock = self.lock(&record.host_interface);
        let _held = lock.lock().await;
        // Read again under the lock: an ADD may have replaced it meanwhile.
        let Some(record) = self.records.get(&record.container_id, &record.ifname) else { return Ok(()) };
        tracing::info!(container = %record.container_id, ifname = %record.ifname, pod = %format!("{}/{}", record.project, record.name), why, "removing an attachment's wiring");
        let node_netns = self.config.node_netns.clone();
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || {
            let _ = link::remove_in_sandbox(Path::new(&record.netns), &record.ifname);
            unwire(node_netns.as_deref(), &record);
            records.remove(&record.container_id, &record.ifname).map_err(io_failure("cannot remove the CNI record"))
        })
        .await
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("the unwiring task failed: {e}")))?
    }

    /// At start: the DELs `weft-cni` queued while the agent was away, then the attachments
    /// whose sandbox is gone (the node rebooted, or its DEL was lost) or whose wiring an
    /// earlier run left half done.
    async fn recover(&self) {
        let queue = weft_cni::shim::queue_dir(&self.config.socket);
        if let Ok(entries) = std::fs::read_dir(&queue) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                    continue;
                }
                match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Request>(&b).ok()) {
                    Some(request) if request.command == Command::Del => {
                        if let Err(e) = self.del(&request).await {
                            tracing::warn!(path = %path.display(), error = %e, "a queued DEL failed");
                        }
                    }
                    _ => tracing::warn!(path = %path.display(), "not a queued DEL: dropped"),
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        for record in self.records.all() {
            let why = if !Path::new(&record.netns).exists() {
                "its sandbox is gone"
            } else if !record.wired {
                "its wiring never completed"
            } else {
                continue;
            };
            if let Err(e) = self.forget(record, why).await {
                tracing::warn!(error = %e, "cannot remove a stale attachment");
            }
        }
    }
}

/// The file the runtime finds weft's network in: first in lexical order, as runtimes take the
/// first conflist of their directory.
pub const CONFLIST: &str = "10-weft.conflist";

/// weft's network configuration for a node's runtime: `weft-cni` reaching the agent at
/// `socket`, then the reference `portmap` for hostPort. `cniVersion` 1.0.0 with `cniVersions`
/// offering 1.1.0: containerd 1.6 refuses a 1.1.0 result. `mtu` 0: the node's.
pub fn conflist(socket: &Path, wait: Duration, mtu: u32) -> String {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "weft",
        "plugins": [
            {"type": "weft-cni", "socket": socket, "timeoutSeconds": wait.as_secs(), "mtu": mtu},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

/// Writes `content` as the runtime's conflist in `dir`, whole or not at all (aside, then
/// renamed), unless it is there already. Called once the agent has synced: a runtime that
/// finds the file sends pods this way, so it must not appear before the agent can wire them;
/// and it is never removed when the agent stops, or pods could not be torn down (cilium#24009).
pub fn install_conflist(dir: &Path, content: &str) -> std::io::Result<bool> {
    let path = dir.join(CONFLIST);
    if std::fs::read_to_string(&path).is_ok_and(|have| have == content) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{CONFLIST}.{}", std::process::id()));
    std::fs::write(&partial, content)?;
    std::fs::rename(&partial, &path)?;
    Ok(true)
}

/// The (container id, ifname, netns) of a per-container call; from_env checked their syntax
/// in the plugin, and again here for a caller that is not the plugin.
fn attachment(request: &Request) -> Result<(String, String, Option<String>), CniError> {
    let id = request
        .container_id
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set"))?;
    let ifname =
        request.ifname.clone().ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_IFNAME is not set"))?;
    spec::check_container_id(&id)?;
    spec::check_ifname(&ifname)?;
    Ok((id, ifname, request.netns.clone().filter(|n| !n.is_empty())))
}

/// Removes an attachment's node side (its peer in the sandbox, and every route through the
/// pair, go with it). Failures are logged: what removes wiring never fails a DEL.
fn unwire(node_netns: Option<&str>, record: &Record) {
    if let Err(e) = link::remove_host_side(node_netns, &record.host_interface) {
        tracing::warn!(interface = %record.host_interface, error = %e, "cannot remove a pod's interface");
    }
}

fn io_failure(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

fn add_result(version: &str, record: &Record, wired: &link::Wired) -> AddResult {
    let interfaces = vec![
        Interface {
            name: record.host_interface.clone(),
            mac: Some(link::mac_text(link::HOST_MAC)),
            mtu: wired.mtu,
            sandbox: None,
        },
        Interface {
            name: record.ifname.clone(),
            mac: wired.pod_mac.map(link::mac_text),
            mtu: wired.mtu,
            sandbox: Some(record.netns.clone()),
        },
    ];
    let gateway = |a: &IpAddr| -> IpAddr {
        if a.is_ipv4() { IpAddr::V4(link::GATEWAY_V4) } else { IpAddr::V6(link::GATEWAY_V6) }
    };
    let ips = record
        .addresses
        .iter()
        .map(|a| IpConfig {
            address: format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 }),
            gateway: Some(gateway(a)),
            interface: Some(1),
        })
        .collect();
    let mut routes = Vec::new();
    if record.addresses.iter().any(IpAddr::is_ipv4) {
        routes.push(Route { dst: "0.0.0.0/0".into(), gw: Some(IpAddr::V4(link::GATEWAY_V4)) });
    }
    if record.addresses.iter().any(IpAddr::is_ipv6) {
        routes.push(Route { dst: "::/0".into(), gw: Some(IpAddr::V6(link::GATEWAY_V6)) });
    }
    AddResult { cni_version: version.to_string(), interfaces, ips, routes, dns: Dns::default() }
}

/// The HTTP answer: 200 with the result (or nothing), else the spec's error JSON.
fn reply(answer: &Answer) -> Response {
    match answer {
        Ok(body) => {
            (StatusCode::OK, [("content-type", "application/json")], body.clone().unwrap_or_default()).into_response()
        }
        Err(e) => {
            let status = match e.code {
                code::TRY_AGAIN_LATER | code::NOT_AVAILABLE | code::LIMITED_CONNECTIVITY => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                code::IO_FAILURE => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, [("content-type", "application/json")], e.to_json()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_whether_the_agent_synced_and_whether_its_updates_apply() {
        let dir = std::env::temp_dir().join(format!("weft-cni-status-{}", uuid::Uuid::new_v4().simple()));
        let (progress, rx) = watch::channel(Progress::default());
        let config = CniConfig {
            socket: dir.join("cni.sock"),
            node_netns: None,
            records: dir.join("records"),
            project_prefix: "k8s-".into(),
            wait: Duration::from_secs(1),
        };
        let Ok(cni) = Cni::new(config, rx) else { panic!("a records dir") };
        assert_eq!(cni.status().map_err(|e| e.code), Err(code::NOT_AVAILABLE), "not synced yet");
        progress.send_modify(|p| p.synced = true);
        assert_eq!(cni.status().map_err(|e| e.code), Ok(()));
        progress.send_modify(|p| p.apply_failing = true);
        assert_eq!(cni.status().map_err(|e| e.code), Err(code::LIMITED_CONNECTIVITY), "an update fails to apply");
        progress.send_modify(|p| {
            p.synced = false;
            p.revision = 7;
        });
        let away = cni.status().unwrap_err();
        assert_eq!(away.code, code::NOT_AVAILABLE);
        assert!(away.msg.contains("running pods keep their policy"), "{}", away.msg);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_conflist_chains_portmap_after_weft_cni_and_is_written_whole_once() {
        let text = conflist(Path::new("/run/weft/cni.sock"), Duration::from_secs(60), 0);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "weft-cni");
        assert_eq!(v["plugins"][0]["socket"], "/run/weft/cni.sock");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        let dir = std::env::temp_dir().join(format!("weft-conflist-{}", uuid::Uuid::new_v4().simple()));
        assert!(install_conflist(&dir, &text).unwrap_or(false));
        assert!(!install_conflist(&dir, &text).unwrap_or(true), "unchanged: not written again");
        assert_eq!(std::fs::read_to_string(dir.join(CONFLIST)).unwrap_or_default(), text);
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 1, "nothing half-written left");
        let _ = std::fs::remove_dir_all(dir);
    }
}
