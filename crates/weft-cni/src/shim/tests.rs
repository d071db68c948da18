#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use super::*;

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("weft-cni-test-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<&str, String> = vars.into_iter().collect();
    move |k| vars.get(k).cloned()
}

fn conf(socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "socket": socket, "timeoutSeconds": 1
    }))
    .unwrap()
}

fn add_env() -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", "c1".into()),
        ("CNI_NETNS", "/run/netns/x".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=p".into()),
    ]
}

/// An agent that answers one call with `answer` and hands back the request it read.
fn one_answer(socket: &Path, answer: &'static str) -> std::thread::JoinHandle<Vec<u8>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).unwrap();
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if seen.len() >= end + 4 + length {
                    stream.write_all(answer.as_bytes()).unwrap();
                    return seen[end + 4..].to_vec();
                }
            }
        }
    })
}

#[test]
fn version_is_answered_without_the_agent() {
    let out = run(env_of(vec![("CNI_COMMAND", "VERSION".into())]), br#"{"cniVersion":"1.0.0"}"#);
    assert!(out.success);
    let info: VersionInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.cni_version, "1.0.0");
}

#[test]
fn a_call_is_forwarded_whole_and_the_agents_answer_printed() {
    let dir = temp_dir();
    let socket = dir.join("cni.sock");
    let agent = one_answer(
        &socket,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{\"cniVersion\":\"1.0.0\"}",
    );
    let out = run(env_of(add_env()), &conf(&socket));
    assert!(out.success, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.stdout, br#"{"cniVersion":"1.0.0"}"#);
    let forwarded: Request = serde_json::from_slice(&agent.join().unwrap()).unwrap();
    assert_eq!(forwarded.command, Command::Add);
    assert_eq!(forwarded.args["K8S_POD_NAME"], "p");
    assert_eq!(forwarded.config["timeoutSeconds"], 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_agents_error_is_printed_as_it_gave_it_and_anything_else_is_an_io_failure() {
    let dir = temp_dir();
    let socket = dir.join("cni.sock");
    let body = r#"{"cniVersion":"1.0.0","code":11,"msg":"port k8s-a/p is not on this node yet"}"#;
    let answer: &'static str = Box::leak(
        format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_boxed_str(),
    );
    let agent = one_answer(&socket, answer);
    let out = run(env_of(add_env()), &conf(&socket));
    agent.join().unwrap();
    assert!(!out.success);
    assert_eq!(out.stdout, body.as_bytes());
    std::fs::remove_file(&socket).unwrap();

    let agent = one_answer(&socket, "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops");
    let out = run(env_of(add_env()), &conf(&socket));
    agent.join().unwrap();
    let e: CniError = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((e.code, e.cni_version.as_str()), (code::IO_FAILURE, "1.0.0"));
    assert!(e.msg.contains("500") && e.msg.contains("oops"), "{}", e.msg);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_the_agent_each_verb_answers_as_the_runtime_needs() {
    let dir = temp_dir();
    let socket = dir.join("absent.sock");
    for (verb, expected) in [
        ("ADD", code::TRY_AGAIN_LATER),
        ("CHECK", code::TRY_AGAIN_LATER),
        ("GC", code::TRY_AGAIN_LATER),
        ("STATUS", code::NOT_AVAILABLE),
    ] {
        let mut env = add_env();
        env[0].1 = verb.into();
        let out = run(env_of(env), &conf(&socket));
        assert!(!out.success, "{verb}");
        let e: CniError = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e.code, expected, "{verb}: {}", e.msg);
        assert!(e.msg.contains("absent.sock"), "{verb}: {}", e.msg);
    }
    // DEL succeeds and waits in the queue for the agent, once per attachment.
    let mut env = add_env();
    env[0].1 = "DEL".into();
    env[2].1 = String::new();
    for _ in 0..2 {
        let out = run(env_of(env.clone()), &conf(&socket));
        assert!(out.success && out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let queued: Vec<_> = std::fs::read_dir(queue_dir(&socket)).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(queued, vec![std::ffi::OsString::from("c1:eth0.json")]);
    let request: Request =
        serde_json::from_slice(&std::fs::read(queue_dir(&socket).join("c1:eth0.json")).unwrap()).unwrap();
    assert_eq!((request.command, request.netns), (Command::Del, None));
    std::fs::remove_dir_all(dir).unwrap();
}
