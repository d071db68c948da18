//! Running a program inside a named network namespace (`ip netns` names, under /run/netns).
//! `nsenter` enters the namespace before the program starts, so the agent itself stays in the
//! host's namespace (where the controller is reachable) and no unsafe `setns` is needed.

use std::path::PathBuf;
use std::process::Command;

/// Where `ip netns add NAME` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// `program` run in `netns`, or in the current namespace when `None`.
pub fn command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path(ns).display())).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Whether a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}
