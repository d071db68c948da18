//! A network namespace of a test's own (`ip netns add`), removed when dropped: what every
//! root test that touches the kernel makes its nodes and pods of.

#![allow(clippy::unwrap_used)] // test support fails loudly by design

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// `wt-<tag>-<8 hex digits>`: unique, and short enough for names derived from it.
    pub fn new(tag: &str) -> Netns {
        let name = format!("wt-{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Where `ip netns` keeps it: what a runtime passes a CNI plugin as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// Runs `ip` inside the namespace; it must succeed.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").arg("-n").arg(&self.0).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// What `nft -j` lists inside the namespace.
    pub fn nft(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new("ip").args(["netns", "exec", &self.0, "nft", "-j"]).args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
