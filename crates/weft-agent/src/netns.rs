//! Working inside a named network namespace (`ip netns` names, under /run/netns) without
//! leaving the host's: what must happen there runs on a thread of its own that enters the
//! namespace (setns changes only the calling thread), and what that thread creates stays
//! there — a socket, a sysctl written through /proc/sys, a process it starts. The agent stays
//! in the host's namespace, where the controller is reachable, and runs no program (`nsenter`,
//! `sysctl`) to reach a namespace: nothing on a node can be missing, and no unsafe code.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};

/// Where `ip netns add NAME` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `f` inside `netns` (in the current namespace when `None`) on a thread of its own,
/// and returns what it returns.
pub fn run_in<T: Send>(netns: Option<&str>, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(name) = netns else { return f() };
    run_at(&path(name), name, f)
}

/// Runs `f` inside the namespace at `path` (a CNI_NETNS: `/run/netns/cni-…`,
/// `/proc/PID/ns/net`) on a thread of its own.
pub fn run_in_path<T: Send>(path: &std::path::Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    run_at(path, &path.display().to_string(), f)
}

fn run_at<T: Send>(path: &std::path::Path, name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("no network namespace {name}: {e}")))?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a thread inside a network namespace panicked")))
    })
}

/// Starts `command` inside `netns`: a process inherits the namespace of the thread that
/// starts it.
pub fn spawn(netns: Option<&str>, command: &mut Command) -> io::Result<Child> {
    run_in(netns, || command.spawn())
}

/// Runs `command` inside `netns` to its end; its output.
pub fn output(netns: Option<&str>, command: &mut Command) -> io::Result<Output> {
    run_in(netns, || command.output())
}

/// Runs `command` inside `netns` to its end; how it ended.
pub fn status(netns: Option<&str>, command: &mut Command) -> io::Result<ExitStatus> {
    run_in(netns, || command.status())
}

/// Sets a sysctl of `netns` (`net.ipv4.ip_forward`): /proc/sys/net shows the namespace of
/// the thread that opens it.
pub fn sysctl(netns: Option<&str>, key: &str, value: &str) -> io::Result<()> {
    if key.split('.').any(str::is_empty) || key.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{key:?} is not a sysctl")));
    }
    let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    run_in(netns, || {
        std::fs::write(&file, value).map_err(|e| io::Error::new(e.kind(), format!("cannot set {key}: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sysctl_key_cannot_leave_proc_sys() {
        for bad in ["", "net..ipv4", "net/ipv4", "../etc", ".net"] {
            assert!(sysctl(None, bad, "1").is_err(), "{bad:?}");
        }
    }
}
