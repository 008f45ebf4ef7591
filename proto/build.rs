//! Compiles `foodorder/v1/*.proto` with protox (pure Rust, no system `protoc`),
//! generates prost messages and tonic client/server code, and writes the file
//! descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "foodorder/v1/order_service.proto",
    "foodorder/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let file_descriptor_set = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTO_FILES)?
        .file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("foodorder_descriptor.bin"),
        file_descriptor_set.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}
