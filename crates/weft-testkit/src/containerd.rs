//! A real container runtime for CNI tests, as kubelet drives one: Debian's containerd started
//! privately (its own root, state, sockets and CNI directories under a test directory), a
//! pause image built here as an OCI layout from busybox-static (no registry), and a CRI client
//! that calls RunPodSandbox, PodSandboxStatus, StopPodSandbox and RemovePodSandbox over
//! containerd's socket. The CRI messages are written out by hand with the field numbers of
//! kubernetes/cri-api's `runtime.v1` (only the fields these calls need).

#![allow(clippy::unwrap_used)] // test support fails loudly by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What the runtime needs on the machine, with the Debian package that brings each.
const NEEDED: [(&str, &str); 5] = [
    ("/usr/bin/containerd", "containerd"),
    ("/usr/bin/ctr", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ("/bin/busybox", "busybox-static"),
];

/// The image every sandbox runs, as the CRI plugin's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "weft.test/pause:1";

/// A containerd of a test's own, stopped and its directory removed when dropped.
#[derive(Debug)]
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
    /// Directories outside `dir` that containerd 1.6 and libcni make whatever their
    /// configuration says (the shims' sockets, the CNI result cache) and that did not exist
    /// before: removed when empty.
    made: Vec<PathBuf>,
}

/// What containerd and libcni create outside their configured directories.
const OUTSIDE: [&str; 4] = ["/run/containerd", "/run/containerd/s", "/var/lib/cni", "/var/lib/cni/results"];

impl Containerd {
    /// What is missing to run one here, as one line naming the packages to install.
    pub fn missing() -> Option<String> {
        let mut packages: Vec<&str> =
            NEEDED.iter().filter(|(path, _)| !Path::new(path).exists()).map(|(_, p)| *p).collect();
        packages.dedup();
        (!packages.is_empty()).then(|| format!("apt-get install {}", packages.join(" ")))
    }

    /// Starts containerd in `dir` with a CNI directory holding `plugins` (name, path) and the
    /// reference `loopback`, and `conflist` as its only network; imports the pause image.
    pub async fn start(dir: &Path, plugins: &[(&str, &Path)], conflist: &str) -> Containerd {
        if let Some(missing) = Containerd::missing() {
            panic!("containerd cannot run here: {missing}");
        }
        let (bin, conf) = (dir.join("cni/bin"), dir.join("cni/conf"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        // containerd 1.6 runs the loopback plugin for every sandbox's lo.
        std::fs::copy("/usr/lib/cni/loopback", bin.join("loopback")).unwrap();
        for (name, path) in plugins {
            std::fs::copy(path, bin.join(name)).unwrap();
        }
        std::fs::write(conf.join("10-weft.conflist"), conflist).unwrap();
        let made = OUTSIDE.iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# Plugins that would write outside the test's directory, or that this machine cannot run.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  # A sandbox's oom_score_adj is -998; lowering it needs CAP_SYS_RESOURCE, which a machine
  # run in a container may lack (runc's init then dies with "can't get final child's PID").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{dir}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            dir = dir.display(),
            bin = bin.display(),
            conf = conf.display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let containerd = Containerd { dir: dir.to_path_buf(), socket, child, made };
        let log_path = dir.join("containerd.log");
        crate::eventually("containerd's socket", Duration::from_secs(30), async || {
            if containerd.socket.exists() {
                Ok(())
            } else {
                Err(std::fs::read_to_string(&log_path).unwrap_or_default().lines().last().unwrap_or("").to_string())
            }
        })
        .await;
        containerd.import(&pause_image(Path::new("/bin/busybox"), PAUSE_IMAGE));
        containerd
    }

    /// Imports an image (an OCI layout as a tar) into the CRI plugin's namespace, unpacked for
    /// the native snapshotter.
    fn import(&self, image: &[u8]) {
        let path = self.dir.join("image.tar");
        std::fs::write(&path, image).unwrap();
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import", "--snapshotter", "native"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A CRI client of this containerd.
    pub async fn cri(&self) -> Cri {
        let socket = self.socket.clone();
        let channel = tonic::transport::Endpoint::from_static("http://containerd")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        Cri(tonic::client::Grpc::new(channel))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("containerd's log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        // The shims runc runs under are children of containerd's: they end with their
        // sandboxes, which the tests stop and remove.
        let _ = std::fs::remove_dir_all(&self.dir);
        for path in self.made.iter().rev() {
            let _ = std::fs::remove_dir(path);
        }
    }
}

/// A CRI (`runtime.v1.RuntimeService`) client.
#[derive(Debug, Clone)]
pub struct Cri(tonic::client::Grpc<tonic::transport::Channel>);

impl Cri {
    async fn call<Q, A>(&mut self, method: &'static str, request: Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message + 'static,
        A: prost::Message + Default + 'static,
    {
        self.0.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(method);
        let codec = tonic_prost::ProstCodec::default();
        Ok(self.0.unary(tonic::Request::new(request), path, codec).await?.into_inner())
    }

    pub async fn version(&mut self) -> Result<VersionResponse, tonic::Status> {
        self.call("/runtime.v1.RuntimeService/Version", VersionRequest { version: "v1".into() }).await
    }

    /// Runs a pod's sandbox (its network wired through CNI) as kubelet asks for one.
    pub async fn run_pod_sandbox(&mut self, namespace: &str, name: &str, uid: &str) -> Result<String, tonic::Status> {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: String::new(),
        };
        let request = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let answer: RunPodSandboxResponse = self.call("/runtime.v1.RuntimeService/RunPodSandbox", request).await?;
        Ok(answer.pod_sandbox_id)
    }

    /// The sandbox's addresses, as kubelet reads them into `status.podIPs`.
    pub async fn pod_sandbox_ips(&mut self, id: &str) -> Result<Vec<String>, tonic::Status> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        let answer: PodSandboxStatusResponse =
            self.call("/runtime.v1.RuntimeService/PodSandboxStatus", request).await?;
        let network = answer.status.and_then(|s| s.network).unwrap_or_default();
        Ok(std::iter::once(network.ip)
            .chain(network.additional_ips.into_iter().map(|p| p.ip))
            .filter(|ip| !ip.is_empty())
            .collect())
    }

    pub async fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let _: Empty = self
            .call("/runtime.v1.RuntimeService/StopPodSandbox", SandboxRequest { pod_sandbox_id: id.into() })
            .await?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let _: Empty = self
            .call("/runtime.v1.RuntimeService/RemovePodSandbox", SandboxRequest { pod_sandbox_id: id.into() })
            .await?;
        Ok(())
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    uid: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(uint32, tag = "4")]
    attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    hostname: String,
    #[prost(string, tag = "3")]
    log_directory: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

/// StopPodSandboxRequest and RemovePodSandboxRequest: the same one field.
#[derive(Clone, PartialEq, prost::Message)]
struct SandboxRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<PodSandboxStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "5")]
    network: Option<PodSandboxNetworkStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxNetworkStatus {
    #[prost(string, tag = "1")]
    ip: String,
    #[prost(message, repeated, tag = "2")]
    additional_ips: Vec<PodIp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodIp {
    #[prost(string, tag = "1")]
    ip: String,
}

/// An image of one layer holding busybox as `sleep` (its entrypoint, for ever), as an OCI
/// image layout in a tar, named `name` for containerd (`io.containerd.image.name`).
pub fn pause_image(busybox: &Path, name: &str) -> Vec<u8> {
    let mut layer = Tar::default();
    layer.dir("bin/");
    layer.file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
    layer.symlink("bin/sleep", "busybox");
    let layer = layer.finish();
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": architecture, "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["1000000"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&layer))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", sha256(&layer)), "size": layer.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{}", sha256(&manifest)), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": name}}]
    }))
    .unwrap();
    let mut layout = Tar::default();
    layout.file("oci-layout", 0o644, br#"{"imageLayoutVersion": "1.0.0"}"#);
    layout.file("index.json", 0o644, &index);
    layout.dir("blobs/");
    layout.dir("blobs/sha256/");
    for blob in [&layer, &config, &manifest] {
        layout.file(&format!("blobs/sha256/{}", sha256(blob)), 0o644, blob);
    }
    layout.finish()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A ustar archive of directories, files and symbolic links: all an image needs.
#[derive(Debug, Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(&mut self, name: &str, mode: u32, kind: u8, link: &str, data: &[u8]) {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
        put(&mut h, 0, name.as_bytes());
        put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, b"0000000\0");
        put(&mut h, 116, b"0000000\0");
        put(&mut h, 124, format!("{:011o}\0", data.len()).as_bytes());
        put(&mut h, 136, b"00000000000\0");
        put(&mut h, 148, b"        ");
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o755, b'5', "", &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, b'0', "", data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o777, b'2', target, &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_entry_has_a_valid_checksum_and_whole_blocks() {
        let mut tar = Tar::default();
        tar.file("a", 0o644, b"hello");
        let bytes = tar.finish();
        assert_eq!(bytes.len(), 512 + 512 + 1024);
        let mut header = bytes[..512].to_vec();
        let stored = u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&bytes[512..517], b"hello");
    }

    #[test]
    fn the_image_index_names_the_image_and_its_manifest_by_digest() {
        let dir = std::env::temp_dir().join(format!("weft-image-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("busybox");
        std::fs::write(&fake, b"#!/bin/true\n").unwrap();
        let image = pause_image(&fake, PAUSE_IMAGE);
        let text = String::from_utf8_lossy(&image);
        assert!(text.contains("io.containerd.image.name") && text.contains(PAUSE_IMAGE));
        assert!(text.contains("imageLayoutVersion"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
