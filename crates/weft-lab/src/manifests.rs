//! The pods of a lab, read from Kubernetes manifests: every Pod must say where it runs
//! (`spec.nodeName`) and its address (`status.podIP`/`podIPs`), which a real cluster fills in
//! and a lab cannot invent.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

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
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ListenPort>,
}

impl Pod {
    /// `project/name`, as matrices name endpoints.
    pub fn endpoint(&self) -> String {
        format!("{}/{}", self.project, self.name)
    }
}

/// Every Pod in the YAML files of `dir` (multi-document files too), in file order; other
/// kinds are skipped. `project_prefix` turns a namespace into its project.
pub fn read_manifests(dir: &Path, project_prefix: &str) -> Result<Vec<Pod>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut pods = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        pods.extend(
            parse_pods(&text, project_prefix).map_err(|e| LabError::Invalid(format!("{}: {e}", file.display())))?,
        );
    }
    Ok(pods)
}

/// The Pods of one YAML text.
pub fn parse_pods(text: &str, project_prefix: &str) -> std::result::Result<Vec<Pod>, String> {
    let mut pods = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.get("kind").and_then(Value::as_str) != Some("Pod") {
            continue;
        }
        pods.push(pod(&value, project_prefix)?);
    }
    Ok(pods)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn pod(v: &Value, project_prefix: &str) -> std::result::Result<Pod, String> {
    let name = text(v, &["metadata", "name"]).ok_or("a Pod without metadata.name")?.to_string();
    let namespace = text(v, &["metadata", "namespace"]).unwrap_or("default").to_string();
    let node = text(v, &["spec", "nodeName"])
        .ok_or_else(|| {
            format!("pod {namespace}/{name}: no spec.nodeName (the lab places pods where their manifest says)")
        })?
        .to_string();
    let mut addresses: Vec<IpAddr> = Vec::new();
    let status = v.get("status");
    for entry in status.and_then(|s| s.get("podIPs")).and_then(Value::as_sequence).into_iter().flatten() {
        let ip = entry
            .get("ip")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("pod {namespace}/{name}: a podIPs entry without ip"))?;
        addresses
            .push(ip.parse().map_err(|_| format!("pod {namespace}/{name}: status.podIPs: {ip:?} is not an address"))?);
    }
    if let Some(ip) = status.and_then(|s| s.get("podIP")).and_then(Value::as_str) {
        let ip: IpAddr =
            ip.parse().map_err(|_| format!("pod {namespace}/{name}: status.podIP: {ip:?} is not an address"))?;
        if !addresses.contains(&ip) {
            addresses.insert(0, ip);
        }
    }
    if addresses.is_empty() {
        return Err(format!(
            "pod {namespace}/{name}: no status.podIP (the lab gives pods the address their manifest says)"
        ));
    }
    let mut ports = Vec::new();
    let containers = v.get("spec").and_then(|s| s.get("containers")).and_then(Value::as_sequence);
    for container in containers.into_iter().flatten() {
        for p in container.get("ports").and_then(Value::as_sequence).into_iter().flatten() {
            let number = p.get("containerPort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
            let number =
                number.ok_or_else(|| format!("pod {namespace}/{name}: a port without a valid containerPort"))?;
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_ascii_lowercase();
            ports.push(ListenPort { protocol: protocol.parse()?, port: number });
        }
    }
    ports.sort();
    ports.dedup();
    Ok(Pod { project: format!("{project_prefix}{namespace}"), namespace, name, node, addresses, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_need_a_node_and_an_address() {
        let ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports: [{name: http, containerPort: 80}, {containerPort: 53, protocol: UDP}]\nstatus: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n";
        let pods = parse_pods(ok, "k8s-").expect("parses");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].endpoint(), "k8s-x/a");
        assert_eq!(pods[0].addresses.len(), 2);
        assert_eq!(pods[0].ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["tcp/80", "udp/53"]);
        let no_ip = "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: n1}\n";
        assert!(parse_pods(no_ip, "k8s-").unwrap_err().contains("status.podIP"));
        let no_node = "kind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.0.0.1}\n";
        assert!(parse_pods(no_node, "k8s-").unwrap_err().contains("spec.nodeName"));
    }
}
