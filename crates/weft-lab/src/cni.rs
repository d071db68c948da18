//! Pods wired as a kubelet has its runtime wire them: the CNI plugin exec'd with the runtime's
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` with
//! the pod's namespace, name and UID, `CNI_PATH`) and the network configuration on stdin, one
//! call per sandbox (the CNI spec's execution protocol). The lab uses weft's own plugin,
//! `weft-cni`, pointed at the node agent's socket in the lab's directory.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{LabError, Pod, Result};

/// The interface every lab pod has, as a kubelet names it.
pub const IFNAME: &str = "eth0";

/// `weft-cni` beside the `weft` binary, where `cargo build` and an install put it.
pub fn plugin_beside(binary: &Path) -> Result<PathBuf> {
    let plugin = binary.with_file_name("weft-cni");
    if plugin.is_file() {
        return Ok(plugin);
    }
    Err(LabError::Invalid(format!(
        "no CNI plugin at {}: build it (cargo build --package weft-cni), or give --cni-plugin",
        plugin.display()
    )))
}

/// One pod's attachment: what a runtime tells the plugin about it.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub plugin: &'a Path,
    /// The node agent's CNI socket.
    pub socket: &'a Path,
    /// The sandbox's id (the runtime's container id).
    pub container: &'a str,
    /// The sandbox's network namespace.
    pub netns: &'a Path,
    pub pod: &'a Pod,
    /// How long ADD may wait for the pod's port to reach the node (the conflist's
    /// `timeoutSeconds`).
    pub timeout: Duration,
}

impl Attachment<'_> {
    /// ADD: the addresses the plugin gave the pod.
    pub fn add(&self) -> Result<Vec<IpAddr>> {
        let result = self.call("ADD")?;
        let mut addresses = Vec::new();
        for ip in result["ips"].as_array().into_iter().flatten() {
            let text = ip["address"].as_str().unwrap_or_default();
            let address = text.split('/').next().and_then(|a| a.parse().ok()).ok_or_else(|| {
                LabError::Invalid(format!("the plugin's ADD for {} gave {text:?}, not an address", self.pod.endpoint()))
            })?;
            addresses.push(address);
        }
        Ok(addresses)
    }

    fn call(&self, command: &str) -> Result<Value> {
        let what = format!("{} {command} for pod {}", self.plugin.display(), self.pod.endpoint());
        let mut args =
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", self.pod.namespace, self.pod.name);
        if let Some(uid) = &self.pod.uid {
            args.push_str(&format!(";K8S_POD_UID={uid}"));
        }
        let config = json!({
            "cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
            "socket": self.socket, "timeoutSeconds": self.timeout.as_secs().max(1),
        });
        let mut child = Command::new(self.plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.plugin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Command { command: what.clone(), detail: e.to_string() })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(config.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            return Err(match (printed["code"].as_u64(), printed["msg"].as_str()) {
                (Some(code), Some(msg)) => LabError::Plugin { what, code, msg: msg.to_string() },
                _ => {
                    LabError::Command { command: what, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() }
                }
            });
        }
        Ok(printed)
    }
}
