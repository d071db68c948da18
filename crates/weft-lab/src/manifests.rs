//! The pods of a lab, read from Kubernetes manifests: every Pod must say where it runs
//! (`spec.nodeName`), which a real cluster's scheduler fills in and a lab cannot invent. Its
//! address (`status.podIP`/`podIPs`) is optional: kube-manager asks IPAM for the one given,
//! or for any, and the lab learns it from the CNI plugin's answer.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{LabError, Result};

/// A port a pod listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenPort {
    pub protocol: crate::Protocol,
    pub port: u16,
}

impl fmt::Display for ListenPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

impl std::str::FromStr for ListenPort {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (protocol, port) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected PROTOCOL/PORT"))?;
        Ok(ListenPort { protocol: protocol.parse()?, port: port.parse().map_err(|_| format!("{s:?}: bad port"))? })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The Kubernetes namespace.
    pub namespace: String,
    pub name: String,
    /// The weft project the namespace becomes (`k8s-<namespace>` by default).
    pub project: String,
    pub node: String,
    /// The manifest's addresses until the pod is wired; then the ones it got.
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ListenPort>,
    /// `metadata.uid`, which the runtime passes the plugin (K8S_POD_UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Pod {
    /// `project/name`, as matrices name endpoints.
    pub fn endpoint(&self) -> String {
        format!("{}/{}", self.project, self.name)
    }
}

/// Every Pod of the manifests under `dir`, read as kube-manager reads them
/// ([`weft_kube::read_dir`]); `project_prefix` turns a namespace into its project.
pub fn read_manifests(dir: &Path, project_prefix: &str) -> Result<Vec<Pod>> {
    let manifests = weft_kube::read_dir(dir).map_err(|e| LabError::Invalid(e.to_string()))?;
    pods_of(&manifests, project_prefix).map_err(LabError::Invalid)
}

/// The Pods of one manifest text.
pub fn parse_pods(text: &str, project_prefix: &str) -> std::result::Result<Vec<Pod>, String> {
    let mut manifests = weft_kube::Manifests::default();
    weft_kube::manifests::read_text(text, &mut manifests)?;
    pods_of(&manifests, project_prefix)
}

fn pods_of(manifests: &weft_kube::Manifests, project_prefix: &str) -> std::result::Result<Vec<Pod>, String> {
    manifests.pods.iter().map(|p| pod(p, project_prefix)).collect()
}

/// A lab pod: where the manifest places it, with the addresses it asks for, listening on
/// every container port.
fn pod(p: &k8s_openapi::api::core::v1::Pod, project_prefix: &str) -> std::result::Result<Pod, String> {
    let name = p.metadata.name.clone().ok_or("a Pod without metadata.name")?;
    let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = p.spec.as_ref();
    let node = spec.and_then(|s| s.node_name.clone()).ok_or_else(|| {
        format!("pod {namespace}/{name}: no spec.nodeName (the lab places pods where their manifest says)")
    })?;
    let status = p.status.as_ref();
    let mut addresses: Vec<IpAddr> = Vec::new();
    let listed = status.into_iter().flat_map(|s| s.pod_ip.iter().chain(s.pod_ips.iter().flatten().map(|i| &i.ip)));
    for ip in listed {
        let ip: IpAddr =
            ip.parse().map_err(|_| format!("pod {namespace}/{name}: status.podIPs: {ip:?} is not an address"))?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let mut ports = Vec::new();
    for container_port in spec.into_iter().flat_map(|s| &s.containers).flat_map(|c| c.ports.iter().flatten()) {
        let port = u16::try_from(container_port.container_port).map_err(|_| {
            format!("pod {namespace}/{name}: containerPort {} is not a port", container_port.container_port)
        })?;
        let protocol = container_port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        ports.push(ListenPort { protocol: protocol.parse()?, port });
    }
    ports.sort();
    ports.dedup();
    let uid = p.metadata.uid.clone();
    Ok(Pod { project: format!("{project_prefix}{namespace}"), namespace, name, node, addresses, ports, uid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_need_a_node_and_may_ask_for_addresses() {
        let ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports: [{name: http, containerPort: 80}, {containerPort: 53, protocol: UDP}]\nstatus: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n";
        let pods = parse_pods(ok, "k8s-").expect("parses");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].endpoint(), "k8s-x/a");
        assert_eq!(pods[0].addresses.len(), 2);
        assert_eq!(pods[0].ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["tcp/80", "udp/53"]);
        let no_ip = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, uid: u-1}\nspec: {nodeName: n1, containers: []}\n";
        let pods = parse_pods(no_ip, "k8s-").expect("an address is IPAM's to give");
        assert!(pods[0].addresses.is_empty());
        assert_eq!(pods[0].uid.as_deref(), Some("u-1"));
        let no_node =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\nstatus: {podIP: 10.0.0.1}\n";
        assert!(parse_pods(no_node, "k8s-").unwrap_err().contains("spec.nodeName"));
    }
}
