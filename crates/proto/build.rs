//! Compiles protos/ with protox (no protoc needed) and generates prost messages and tonic services.
//! The descriptor set is also written out with extensions kept (google.api.http), for REST transcoding and
//! gRPC reflection at run time.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "google/api/annotations.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/longrunning/operations.proto",
    "google/cloud/alloydb/v1/service.proto",
    "google/cloud/alloydb/v1beta/service.proto",
    "google/cloud/alloydb/v1alpha/service.proto",
    "google/cloud/alloydb/connectors/v1/resources.proto",
    "google/cloud/edgecontainer/v1/service.proto",
    "google/cloud/gkemulticloud/v1/service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["protos"])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(FILES)?;
    // Encoded by protox itself: prost-types would drop the google.api.http extension values.
    std::fs::write(
        out.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .include_file("protos.rs")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
