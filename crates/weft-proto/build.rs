//! Generates the agent protocol's Rust code from proto/ with protox (pure Rust: no protoc).
//!
//! Two generations of the same file: the client side as usual, and the server side with
//! `ControllerMessage` and `RouteTable` replaced by `crate::Encoded`, bytes the controller
//! encoded once and sends to every agent that needs them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = "weft/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile([file], [&root])?;
    let client = out.join("client");
    let server = out.join("server");
    std::fs::create_dir_all(&client)?;
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure().build_server(false).out_dir(&client).compile_fds(fds.clone())?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".weft.agent.v1.ControllerMessage", "crate::Encoded")
        .extern_path(".weft.agent.v1.RouteTable", "crate::Encoded")
        .extern_path(".weft.agent.v1", "crate::v1")
        .codec_path("crate::LeanCodec")
        .out_dir(&server)
        .compile_fds(fds)?;
    Ok(())
}
