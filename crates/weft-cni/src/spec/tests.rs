#![allow(clippy::unwrap_used)] // tests fail loudly by design

use super::*;

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| vars.get(k).cloned()
}

const CONF: &[u8] =
    br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":"/tmp/x.sock","timeoutSeconds":5}"#;

#[test]
fn an_add_is_read_from_the_environment_containerd_gives() {
    // CNI_ARGS as containerd 1.6.20 sent them (research/cni.md §1), keys in no fixed order.
    let env = env_of(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "6a32f0c1"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=ns-x;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=6a32f0c1;K8S_POD_UID=0a1b-uid;IgnoreUnknown=1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]);
    let request = Request::from_env(env, CONF).unwrap();
    assert_eq!(request.command, Command::Add);
    assert_eq!(request.container_id.as_deref(), Some("6a32f0c1"));
    assert_eq!(request.netns.as_deref(), Some("/var/run/netns/cni-1234"));
    assert_eq!(request.args["K8S_POD_NAME"], "pod-a");
    assert_eq!(request.args["K8S_POD_UID"], "0a1b-uid");
    assert_eq!(request.version(), "1.0.0");
    let conf = NetConf::of(&request).unwrap();
    assert_eq!((conf.socket.as_deref(), conf.timeout_seconds), (Some("/tmp/x.sock"), Some(5)));
    // What the plugin sends the agent reads back the same.
    let wire = serde_json::to_vec(&request).unwrap();
    assert_eq!(serde_json::from_slice::<Request>(&wire).unwrap(), request);
}

#[test]
fn each_verb_names_the_variable_it_misses() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "CNI_COMMAND is not set"),
        (&[("CNI_COMMAND", "ADDD")], "CNI_COMMAND \"ADDD\""),
        (&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/n")], "CNI_CONTAINERID"),
        (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/n")], "CNI_IFNAME"),
        (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")], "CNI_NETNS"),
        (
            &[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")],
            "CNI_NETNS",
        ),
        (
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "../etc"), ("CNI_IFNAME", "eth0")],
            "CNI_CONTAINERID \"../etc\"",
        ),
        (&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "a/b")], "CNI_IFNAME \"a/b\""),
        (&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "sixteen-letters!")], "CNI_IFNAME"),
        (&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "A=1;B")], "\"B\""),
    ];
    for (vars, named) in cases {
        let e = Request::from_env(env_of(vars), CONF).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{vars:?}");
        assert!(e.msg.contains(named), "{vars:?}: {}", e.msg);
        assert_eq!(e.cni_version, if vars.is_empty() || vars[0].1 == "ADDD" { LATEST_VERSION } else { "1.0.0" });
    }
}

#[test]
fn a_del_needs_no_namespace_and_status_gc_no_container() {
    let del = Request::from_env(
        env_of(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")]),
        CONF,
    )
    .unwrap();
    assert_eq!(del.netns, None);
    for verb in ["STATUS", "GC"] {
        let r = Request::from_env(env_of(&[("CNI_COMMAND", verb)]), CONF).unwrap();
        assert_eq!((r.container_id, r.ifname, r.netns), (None, None, None));
    }
}

#[test]
fn stdin_must_be_a_json_object_except_for_version() {
    let env = || env_of(&[("CNI_COMMAND", "STATUS")]);
    for bad in [&b""[..], b"{", b"[1]", b"\"x\""] {
        assert_eq!(Request::from_env(env(), bad).unwrap_err().code, code::DECODE_FAILURE, "{bad:?}");
    }
    let version = Request::from_env(env_of(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
    assert_eq!(version.config, serde_json::json!({}));
}

#[test]
fn cni_args_are_key_value_pairs_in_any_order() {
    let a = parse_args("B=2;A=1;;C=").unwrap();
    assert_eq!(a, parse_args("C=;A=1;B=2").unwrap());
    assert_eq!(a.get("C").map(String::as_str), Some(""));
    assert!(parse_args("=1").is_err());
    assert!(parse_args("").unwrap().is_empty());
}

#[test]
fn versions_are_negotiated_as_the_spec_says() {
    assert!(check_version("1.0.0").is_ok() && check_version("1.1.0").is_ok());
    let old = check_version("0.3.1").unwrap_err();
    assert_eq!(old.code, code::INCOMPATIBLE_VERSION);
    assert!(old.msg.contains("1.0.0, 1.1.0"), "{}", old.msg);
    assert_eq!(VersionInfo::answering(Some("1.0.0")).cni_version, "1.0.0");
    assert_eq!(VersionInfo::answering(Some("9.9.9")).cni_version, LATEST_VERSION);
    let text = serde_json::to_value(VersionInfo::answering(None)).unwrap();
    assert_eq!(text, serde_json::json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}));
}

#[test]
fn a_configuration_of_another_shape_names_the_field() {
    let request = |conf: &str| Request {
        command: Command::Add,
        container_id: None,
        netns: None,
        ifname: None,
        args: BTreeMap::new(),
        path: None,
        config: serde_json::from_str(conf).unwrap(),
    };
    let no_name = NetConf::of(&request(r#"{"cniVersion":"1.0.0","type":"weft-cni"}"#)).unwrap_err();
    assert_eq!((no_name.code, no_name.cni_version.as_str()), (code::INVALID_CONFIG, "1.0.0"));
    assert!(no_name.msg.contains("name"), "{}", no_name.msg);
    let bad_mtu =
        NetConf::of(&request(r#"{"cniVersion":"1.0.0","name":"w","type":"weft-cni","mtu":"big"}"#)).unwrap_err();
    assert!(bad_mtu.msg.contains("big"), "{}", bad_mtu.msg);
    let old = NetConf::of(&request(r#"{"cniVersion":"0.4.0","name":"w","type":"weft-cni"}"#)).unwrap_err();
    assert_eq!((old.code, old.cni_version.as_str()), (code::INCOMPATIBLE_VERSION, "0.4.0"));
    // GC's list, under both names the key has had.
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let gc = NetConf::of(&request(&format!(
            r#"{{"cniVersion":"1.1.0","name":"w","type":"weft-cni","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
        )))
        .unwrap();
        assert_eq!(
            gc.valid_attachments.unwrap(),
            vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]
        );
    }
}

#[test]
fn results_and_errors_have_the_spec_shapes() {
    // The spec's example result, read and written back.
    let example = serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "weft0ab4915f708", "mac": "ee:ee:ee:ee:ee:ee"},
                       {"name": "eth0", "mac": "0a:58:0a:20:00:05", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.32.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {}
    });
    let result: AddResult = serde_json::from_value(example.clone()).unwrap();
    assert_eq!(result.ips[0].ip(), Some("10.32.0.5".parse().unwrap()));
    assert_eq!(serde_json::to_value(&result).unwrap(), example);
    let error = CniError::new(code::TRY_AGAIN_LATER, "not yet").with_details("port k8s-a/p").in_version("1.0.0");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&error.to_json()).unwrap(),
        serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "not yet", "details": "port k8s-a/p"})
    );
}
