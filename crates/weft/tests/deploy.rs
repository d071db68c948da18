//! The ways operators run weft: docker-compose.yml (validated by Debian's docker-compose
//! client; no Docker engine runs here), the Dockerfile, and deploy/kubernetes/ (parsed with
//! k8s-openapi's types; kube-manager's RBAC compared with a recording of what it calls).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::{KubeCluster, namespace, policy};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compose(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("docker-compose");
    cmd.arg("--file").arg(root().join("docker-compose.yml")).arg("config").env_remove("WEFT_DB_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("docker-compose (Debian's client, which .ci/run installs) runs")
}

#[test]
fn the_compose_file_is_valid_and_runs_postgres_a_server_and_a_privileged_host_network_agent() {
    let out = compose(&[("WEFT_DB_PASSWORD", "s3cret")]);
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let services = &config["services"];
    let names: BTreeSet<&str> = services.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["postgres", "server", "agent"]));
    for (service, check) in [("postgres", "pg_isready"), ("server", "ready")] {
        let test = services[service]["healthcheck"]["test"].to_string();
        assert!(test.contains(check), "{service}'s health check: {test}");
    }
    assert_eq!(services["server"]["depends_on"]["postgres"]["condition"], "service_healthy");
    assert_eq!(services["agent"]["depends_on"]["server"]["condition"], "service_healthy");
    assert_eq!(services["agent"]["network_mode"], "host");
    assert_eq!(services["agent"]["privileged"], true);
    assert!(services["server"]["environment"]["DATABASE_URL"].as_str().unwrap().contains("s3cret"));
    let volumes = services["postgres"]["volumes"].to_string();
    assert!(volumes.contains("pgdata") && config["volumes"].get("pgdata").is_some(), "a named volume: {volumes}");
    // The server's ports are published on loopback only.
    let ports = services["server"]["ports"].to_string();
    assert!(ports.contains("127.0.0.1"), "{ports}");

    // No password, no stack: there is no default one.
    let out = compose(&[]);
    assert!(!out.status.success(), "docker-compose accepted a stack without a database password");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEFT_DB_PASSWORD"));
}

#[test]
fn the_image_needs_no_datapath_tools_and_builds_as_ci_does() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    // The agent speaks netlink itself (issue 18): nothing in the image for it to run.
    let instructions: String = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for package in ["nftables", "conntrack", "iproute2", "iputils-ping"] {
        assert!(!instructions.contains(package), "the runtime image installs {package}, which nothing runs");
    }
    assert!(ci.contains("scripts/setup.sh test"), "CI installs through the script the README's commands use");
    // The CNI plugin and the reference plugins it needs, where install-cni takes them from.
    assert!(dockerfile.contains("--package weft-cni"), "the image builds the plugin");
    for plugin in ["weft-cni", "loopback", "portmap"] {
        assert!(dockerfile.contains(&format!("/out/cni/{plugin}")), "the image carries {plugin}");
    }
    assert!(dockerfile.contains("/usr/local/lib/weft/cni/"), "where `weft install-cni` looks by default");
    assert!(dockerfile.contains("cargo build --release --locked"), "the image builds from the lock file");
    assert!(ci.contains("cargo clippy --locked"), "and CI checks with the same lock file");
    // The build stage's toolchain is at least the workspace's rust-version.
    let cargo: toml::Table = std::fs::read_to_string(root().join("Cargo.toml")).unwrap().parse().unwrap();
    let rust_version = cargo["workspace"]["package"]["rust-version"].as_str().unwrap();
    let from = dockerfile.lines().find(|l| l.starts_with("FROM rust:")).unwrap();
    let image = from.trim_start_matches("FROM rust:").split(['-', ' ']).next().unwrap();
    assert!(version(image) >= version(rust_version), "{image} is older than {rust_version}");
    assert!(dockerfile.contains("USER weft"), "the image runs unprivileged unless told otherwise");
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|n| n.parse().unwrap()).collect()
}

/// Every document of every file in deploy/kubernetes, as (kind, JSON).
fn manifests() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            docs.push((v["kind"].as_str().unwrap().to_string(), v));
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(docs: &[(String, Value)], kind: &str, name: &str) -> T {
    let (_, v) = docs
        .iter()
        .find(|(k, v)| k == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"));
    serde_path_to_error::deserialize(v.clone()).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

fn env<'a>(c: &'a Container, name: &str) -> &'a k8s_openapi::api::core::v1::EnvVar {
    let env = c.env.as_ref().unwrap();
    env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{} has no {name}", c.name))
}

#[test]
fn the_kubernetes_manifests_parse_and_run_each_part_as_it_should() {
    let docs = manifests();
    // Every document is a known kind and parses as its k8s-openapi type.
    for (kind, v) in &docs {
        let name = v["metadata"]["name"].as_str().unwrap();
        match kind.as_str() {
            "Namespace" => {
                let _: Namespace = typed(&docs, kind, name);
            }
            "ServiceAccount" => {
                let _: ServiceAccount = typed(&docs, kind, name);
            }
            "ClusterRole" => {
                let _: ClusterRole = typed(&docs, kind, name);
            }
            "ClusterRoleBinding" => {
                let _: ClusterRoleBinding = typed(&docs, kind, name);
            }
            "Role" => {
                let _: Role = typed(&docs, kind, name);
            }
            "RoleBinding" => {
                let _: RoleBinding = typed(&docs, kind, name);
            }
            "Deployment" => {
                let _: Deployment = typed(&docs, kind, name);
            }
            "DaemonSet" => {
                let _: DaemonSet = typed(&docs, kind, name);
            }
            "Service" => {
                let _: Service = typed(&docs, kind, name);
            }
            "Secret" => {
                let _: Secret = typed(&docs, kind, name);
            }
            other => panic!("an unexpected kind in deploy/kubernetes: {other}"),
        }
    }

    let km: Deployment = typed(&docs, "Deployment", "weft-kube-manager");
    let spec = km.spec;
    assert_eq!(spec.replicas, Some(2), "two kube-managers, one leading");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("weft-kube-manager"));
    let c = &pod.containers[0];
    assert_eq!(
        env(c, "POD_NAMESPACE").value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
        "metadata.namespace"
    );
    assert!(
        env(c, "WEFT_TOKEN").value_from.as_ref().unwrap().secret_key_ref.is_some(),
        "the token comes from a Secret"
    );

    let agent: DaemonSet = typed(&docs, "DaemonSet", "weft-agent");
    let pod = agent.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let caps = c.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "SYS_ADMIN".to_string()][..]),
        "NET_ADMIN, and SYS_ADMIN to enter sandboxes' namespaces; nothing more"
    );
    // The CNI plugin: installed by the init container into the node's CNI directory, the
    // conflist written by the agent into the runtime's, the socket between them on the host.
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_deref().unwrap()[0], "install-cni");
    let host_path = |name: &str| {
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == name).unwrap();
        volume.host_path.as_ref().unwrap().path.clone()
    };
    let mounted = |c: &k8s_openapi::api::core::v1::Container, path: &str| {
        let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == path).unwrap();
        (host_path(&mount.name), mount.mount_propagation.clone())
    };
    assert_eq!(mounted(init, "/host/opt/cni/bin").0, "/opt/cni/bin");
    let args = c.args.clone().unwrap();
    let conf_dir = &args[args.iter().position(|a| a == "--cni-conf-dir").unwrap() + 1];
    assert_eq!(mounted(c, conf_dir).0, "/etc/cni/net.d");
    assert_eq!(mounted(c, "/run/weft").0, "/run/weft", "the socket at the path the conflist names");
    assert_eq!(mounted(c, "/run/netns"), ("/run/netns".to_string(), Some("HostToContainer".to_string())));
    assert_eq!(
        env(c, "WEFT_NODE").value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
        "spec.nodeName",
        "the node's name from the downward API"
    );
    // Each node's join token is a file of a Secret keyed by node name, never an argument.
    let join = env(c, "WEFT_JOIN_TOKEN_FILE").value.clone().unwrap();
    assert_eq!(join, "/etc/weft/join/$(WEFT_NODE)");
    let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| join.starts_with(&m.mount_path)).unwrap();
    let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!((secret.secret_name.as_deref(), secret.default_mode), (Some("weft-join-tokens"), Some(0o400)));
    assert!(c.args.iter().flatten().all(|a| !a.contains("token")), "no secret on the command line: {:?}", c.args);
    let state = env(c, "WEFT_AGENT_STATE_DIR").value.clone().unwrap();
    let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == state).unwrap();
    let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
    assert!(volume.host_path.is_some(), "the state dir survives the pod: a hostPath");

    let server: Deployment = typed(&docs, "Deployment", "weft-server");
    let pod = server.spec.template.spec.unwrap();
    let db = env(&pod.containers[0], "DATABASE_URL").value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    let _: Secret = typed(&docs, "Secret", &db.name);
    let service: Service = typed(&docs, "Service", "weft-server");
    let ports: Vec<i32> = service.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 8081]);
}

/// What kube-manager's ServiceAccount is granted, as (API group, resource, verb).
fn granted(docs: &[(String, Value)]) -> BTreeSet<(String, String, String)> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    let bound_to_kube_manager = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| s.kind == "ServiceAccount" && s.name == "weft-kube-manager")
    };
    for (kind, v) in docs {
        let name = v["metadata"]["name"].as_str().unwrap();
        match kind.as_str() {
            "ClusterRoleBinding" => {
                let b: ClusterRoleBinding = typed(docs, kind, name);
                if bound_to_kube_manager(&b.subjects) {
                    let role: ClusterRole = typed(docs, "ClusterRole", &b.role_ref.name);
                    rules.extend(role.rules.unwrap_or_default());
                }
            }
            "RoleBinding" => {
                let b: RoleBinding = typed(docs, kind, name);
                if bound_to_kube_manager(&b.subjects) {
                    let role: Role = typed(docs, "Role", &b.role_ref.name);
                    rules.extend(role.rules.unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_managers_rbac_grants_exactly_what_it_calls() {
    let cluster = KubeCluster::new("deploy-rbac").await;
    cluster.fake.apply(&namespace("x", json!({})));
    // Two problems on one policy: the second Event on the same object is a patch.
    cluster.fake.apply(&policy(
        "x",
        "odd",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]},
            {"from": [{"ipBlock": {"cidr": "nor-this"}}]}]}),
    ));
    // A ClusterNetworkPolicy, whose conditions kube-manager writes.
    cluster.fake.apply_json::<weft_kube::cnp::ClusterNetworkPolicy>(json!({"metadata": {"name": "c"},
        "spec": {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}}}}));
    // A node with a pod CIDR, as the deployment's pod network sees it.
    cluster.fake.apply(
        &serde_json::from_value::<k8s_openapi::api::core::v1::Node>(
            json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.7.0/24"}}),
        )
        .unwrap(),
    );
    let deployed: Deployment = typed(&manifests(), "Deployment", "weft-kube-manager");
    let args = deployed.spec.template.spec.unwrap().containers[0].args.clone().unwrap();
    let cidr = &args[args.iter().position(|a| a == "--pod-network-cidr").unwrap() + 1];
    let mut km = cluster.manager_with("km-1", &["--pod-network-cidr", cidr]);
    let options = weft_kube::Options {
        pod_network: Some(weft_kube::translate::PodNetwork {
            subnets: vec![cidr.parse().unwrap()],
            blocks: weft_model::NodeBlocks::default(),
        }),
        ..weft_kube::Options::default()
    };
    cluster.until("the first sync", &["km-1"], async || cluster.converged_with(&options).await).await;
    let events = async || {
        let events = cluster.fake.list::<Event>();
        events.len() == 1 && events[0].series.as_ref().is_some_and(|s| s.count == 2)
    };
    cluster.until("both problems reported, the second as a patch", &["km-1"], events).await;
    let conditions =
        async || cluster.fake.list::<weft_kube::cnp::ClusterNetworkPolicy>().iter().any(|c| c.status.is_some());
    cluster.until("the cluster network policy's conditions", &["km-1"], conditions).await;
    // A clean stop releases the lease (an update).
    Command::new("kill").args(["-TERM", &km.0.id().to_string()]).status().unwrap();
    km.0.wait().unwrap();
    let calls: BTreeSet<(String, String, String)> =
        cluster.fake.calls().into_iter().map(|(g, r, v)| (g, r, v.to_string())).collect();
    assert_eq!(calls, granted(&manifests()), "deploy/kubernetes/kube-manager.yaml's RBAC against the calls made");
}

/// Issue 17, finding 11: a credential on a command line is in every `ps` listing. What users
/// copy (README, docs, manifests, compose) passes node credentials and join tokens through a
/// file or the environment.
#[test]
fn no_instructions_pass_a_secret_on_a_command_line() {
    let mut files = vec![root().join("README.md"), root().join("docker-compose.yml")];
    for dir in ["docs", "deploy/kubernetes"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for flag in ["--node-token weft", "--credential weft", "--join-token weft", "--token weft"] {
            assert!(!text.contains(flag), "{} passes a secret on a command line: {flag}", file.display());
        }
    }
}

/// The README's two commands are scripts that install what a fresh Debian machine lacks through
/// the one setup script, which CI runs too (issue 18).
#[test]
fn the_readme_commands_install_through_the_one_setup_script_ci_uses() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for command in ["./scripts/demo.sh", "./scripts/test.sh"] {
        assert!(readme.contains(&format!("```sh\n{command}")), "the README gives {command} as a command");
        let script = std::fs::read_to_string(root().join(command.trim_start_matches("./"))).unwrap();
        assert!(script.contains("scripts/setup.sh"), "{command} installs through scripts/setup.sh");
    }
    // The demo wires its pods through the CNI plugin, which lives in a package of its own;
    // and with two binaries in the workspace, `cargo run` must name the one it runs.
    let demo = std::fs::read_to_string(root().join("scripts/demo.sh")).unwrap();
    assert!(demo.contains("--package weft --package weft-cni"), "the demo builds weft and weft-cni");
    for line in readme.lines().filter(|l| l.contains("cargo run")) {
        assert!(line.contains("--bin weft"), "the README's `cargo run` names its binary: {line}");
    }
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/setup.sh test") && ci.contains("./scripts/test.sh"));
    assert!(!ci.contains("apt-get"), "CI installs nothing the scripts do not");
    let setup = std::fs::read_to_string(root().join("scripts/setup.sh")).unwrap();
    for package in ["gcc", "make", "iproute2", "postgresql", "python3-venv"] {
        assert!(setup.contains(package), "scripts/setup.sh knows {package}");
    }
    assert!(!setup.contains("iputils-ping"), "nothing runs ping any more");
}

/// The shipped binary carries no test support (issue 19, item 3): `weft bench`, with its
/// synthetic clusters and fake Kubernetes API server, is in a build with the `bench` feature
/// only, and the binary says how to get one.
#[test]
fn the_shipped_binary_has_no_benchmarks_and_says_how_to_build_them() {
    let out = Command::new(common::WEFT).args(["bench", "compiler"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release --features bench"), "{err}");
    let help = Command::new(common::WEFT).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("bench"), "no bench in the shipped binary's help");
}

#[test]
fn install_cni_replaces_each_plugin_whole_and_executable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("weft-install-cni-{}", std::process::id()));
    let (from, to) = (dir.join("from"), dir.join("to"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    for plugin in ["weft-cni", "loopback", "portmap"] {
        std::fs::write(from.join(plugin), format!("new {plugin}")).unwrap();
    }
    // An older weft-cni is there already: it is replaced.
    std::fs::write(to.join("weft-cni"), "old").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("install-cni")
        .arg("--from")
        .arg(&from)
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> =
        std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["loopback", "portmap", "weft-cni"], "nothing written aside is left");
    assert_eq!(std::fs::read_to_string(to.join("weft-cni")).unwrap(), "new weft-cni");
    assert_eq!(std::fs::metadata(to.join("portmap")).unwrap().permissions().mode() & 0o777, 0o755);
    // Nothing to install is an error, not a silent success.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["install-cni", "--from"])
        .arg(&empty)
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_dir_all(dir).unwrap();
}
