//! Compiles `proto/paychan/control/v1/*.proto` without `protoc`: protox parses them into a file
//! descriptor set, which tonic-prost-build turns into messages, the server trait and the client,
//! and which is also written to `OUT_DIR` for the reflection service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("paychan/control/v1/control.proto");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("paychan/control/v1").display()
    );
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("paychan_control_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Messages serialize to JSON (the CLI's `--json`): field names as in the .proto, a oneof
    // as `{"<field>": {..}}`, the channel state by its name.
    tonic_prost_build::configure()
        .type_attribute(
            ".paychan.control.v1",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"snake_case\")]",
        )
        .field_attribute(
            ".paychan.control.v1.Channel.state",
            "#[serde(serialize_with = \"crate::proto::state_name\")]",
        )
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
