//! The CNI specification's environment and JSON, as of 1.1 (containernetworking/cni SPEC.md):
//! what a runtime gives a plugin (CNI_* variables, the network configuration on stdin) and what
//! a plugin answers (a result, the versions it speaks, an error with its code). Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The versions weft speaks. The conflist says `"cniVersion": "1.0.0"` with `"cniVersions":
/// ["1.0.0", "1.1.0"]`: containerd 1.6's libcni refuses a result of 1.1.0. 0.x results have
/// another shape (an IP's `version`), and no runtime weft supports needs them.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The highest version weft speaks: what an answer carries when the request named none.
pub const LATEST_VERSION: &str = "1.1.0";

/// The spec's error codes (SPEC.md §"Error"); 100 and up would be weft's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// The runtime should retry the call later (the agent is not ready, the port not there yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: existing pods may have lost connectivity too.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
}

/// A CNI verb (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl std::str::FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_COMMAND {other:?} is none of ADD, DEL, CHECK, STATUS, GC, VERSION"),
                ));
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        })
    }
}

/// The spec's error answer: printed on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { cni_version: LATEST_VERSION.to_string(), code, msg: msg.into(), details: None }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// The same error in the version the request spoke (an answer's version is the request's).
    pub fn in_version(mut self, version: &str) -> CniError {
        version.clone_into(&mut self.cni_version);
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if let Some(d) = &self.details {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One call, as the runtime made it: the CNI_* environment and the configuration it piped.
/// This is what `weft-cni` sends the agent: the agent does all the interpreting, so one
/// agent serves the plugin binaries of older and newer installs alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The sandbox's network namespace: a path. Optional for DEL (the sandbox may be gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// CNI_ARGS, by key: containerd gives K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID,
    /// K8S_POD_INFRA_CONTAINER_ID and IgnoreUnknown, in no fixed order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The network configuration from stdin, as the runtime wrote it.
    pub config: serde_json::Value,
}

impl Request {
    /// Reads a call from its environment (`env` answers a variable's value) and stdin,
    /// checking what the spec requires of each verb. An empty variable counts as absent: a
    /// runtime tearing down a sandbox whose namespace is gone sends `CNI_NETNS=`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, CniError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let command: Command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set"))?
            .parse()?;
        let config = parse_config(stdin, command)?;
        let version = config.get("cniVersion").and_then(|v| v.as_str()).unwrap_or(LATEST_VERSION).to_string();
        let fail = |e: CniError| e.in_version(&version);
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let needed = |name: &str| {
            var(name).ok_or_else(|| {
                CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not set, and {command} needs it"))
            })
        };
        let (container_id, ifname) = if per_container {
            let id = needed("CNI_CONTAINERID").map_err(fail)?;
            check_container_id(&id).map_err(fail)?;
            let ifname = needed("CNI_IFNAME").map_err(fail)?;
            check_ifname(&ifname).map_err(fail)?;
            (Some(id), Some(ifname))
        } else {
            (None, None)
        };
        let netns = match command {
            Command::Add | Command::Check => Some(needed("CNI_NETNS").map_err(fail)?),
            Command::Del => var("CNI_NETNS"),
            _ => None,
        };
        let args = parse_args(&var("CNI_ARGS").unwrap_or_default()).map_err(fail)?;
        Ok(Request { command, container_id, netns, ifname, args, path: var("CNI_PATH"), config })
    }

    /// The version the request speaks: its configuration's `cniVersion`.
    pub fn version(&self) -> &str {
        self.config.get("cniVersion").and_then(|v| v.as_str()).unwrap_or(LATEST_VERSION)
    }
}

/// stdin: a JSON object. VERSION may come with none at all.
fn parse_config(stdin: &[u8], command: Command) -> Result<serde_json::Value, CniError> {
    if command == Command::Version && stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_slice::<serde_json::Value>(stdin) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(CniError::new(code::DECODE_FAILURE, "the network configuration on stdin is not a JSON object")),
        Err(e) => {
            Err(CniError::new(code::DECODE_FAILURE, format!("the network configuration on stdin is not JSON: {e}")))
        }
    }
}

/// CONVENTIONS.md: `K=V;K=V`. Empty pieces are skipped; a piece without `=` is an error.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for piece in text.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| {
            CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_ARGS holds {piece:?}, which is not KEY=VALUE"))
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// SPEC.md: alphanumeric first, then alphanumerics, `_`, `.` and `-`. The agent also names a
/// file after it, so this check is what keeps a path out of it.
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) && id.len() <= 256 {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID {id:?} is not a container id (a letter or digit, then letters, digits, _ . -)"),
        ))
    }
}

/// SPEC.md: at most 15 characters (IFNAMSIZ), none of `/`, `:` or whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME {name:?} is not an interface name (1 to 15 characters, no / : or spaces)"),
        ))
    }
}

/// Whether weft speaks `version`; the error names what it speaks instead.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported: weft-cni speaks {}", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// The answer to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// Answers in the version asked about when it is one of weft's, else in the latest.
    pub fn answering(asked: Option<&str>) -> VersionInfo {
        let version = asked.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST_VERSION);
        VersionInfo {
            cni_version: version.to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// weft's plugin configuration: the conflist's `weft-cni` entry, with what the runtime added.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// The agent's socket (`/run/weft/cni.sock` when absent).
    #[serde(default)]
    pub socket: Option<String>,
    /// How long ADD waits for the pod's port to reach the agent before it answers 11.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// The pod interface's MTU; absent or 0: the node's.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// What the previous plugin of the chain, or this plugin's ADD, answered (CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments the runtime still has; everything else of weft's may go. 1.1.0's
    /// tag named the key `cni.dev/attachments`; the spec's main branch renamed it.
    #[serde(default, rename = "cni.dev/valid-attachments", alias = "cni.dev/attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Reads the configuration of a request: an error names the bad field.
    pub fn of(request: &Request) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_value(request.config.clone()).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, format!("the network configuration is not weft-cni's: {e}"))
                .in_version(request.version())
        })?;
        check_version(&conf.cni_version).map_err(|e| e.in_version(&conf.cni_version))?;
        Ok(conf)
    }
}

/// One attachment of a container: GC's unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// ADD's answer (SPEC.md §5, "Success").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Set on the sandbox's interfaces: the namespace's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// An address with its prefix length, `10.32.0.5/32`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The index in `interfaces` of the interface that holds it: runtimes report as the pod's
    /// address one held by an interface with a `sandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split_once('/').map_or(self.address.as_str(), |(a, _)| a).parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[cfg(test)]
mod tests;
