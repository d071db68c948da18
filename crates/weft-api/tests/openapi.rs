//! `api/openapi.yaml` is generated from the code; this fails when the two drift.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test -p weft-api --test openapi`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[test]
fn committed_openapi_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../api/openapi.yaml");
    let generated = weft_api::openapi::yaml();
    assert!(generated.contains("/v1/security-groups/{project}/{name}"));
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "api/openapi.yaml differs from what the code generates; run UPDATE_OPENAPI=1 cargo test -p weft-api --test openapi"
    );
    // It parses as YAML and names every kind's schema.
    let doc: serde_yaml::Value = serde_yaml::from_str(&committed).unwrap();
    for schema in ["Project", "VirtualNetwork", "SecurityGroup", "Port", "Rule", "Problem"] {
        assert!(doc["components"]["schemas"][schema].is_mapping(), "{schema} missing");
    }
}
