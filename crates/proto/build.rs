//! Compiles protos/ with protox (no protoc needed) and generates prost messages and tonic services.
//! The descriptor set is also written out with extensions kept (google.api.http), for REST transcoding and
//! gRPC reflection at run time.

use std::path::{Path, PathBuf};

const FILES: &[&str] = &[
    "google/api/annotations.proto",
    "google/rpc/code.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/longrunning/operations.proto",
    "google/cloud/alloydb/v1/service.proto",
    "google/cloud/alloydb/v1beta/service.proto",
    "google/cloud/alloydb/v1alpha/service.proto",
    "google/cloud/alloydb/connectors/v1/resources.proto",
    "google/cloud/edgecontainer/v1/service.proto",
    "google/cloud/gkemulticloud/v1/service.proto",
    "google/iam/admin/v1/iam.proto",
    "google/cloudresourcemanager/v1/projects.proto",
];

/// AlloyDB v1beta and v1alpha are v1 under another package and path, plus deprecated fields the connectors'
/// protos still carry (field facts: ../shared/reference/proto-fields.md).
const ALLOYDB_DERIVED: &[&str] = &["v1beta", "v1alpha"];
const ALLOYDB_EXTRA_FIELDS: &[(&str, &str)] = &[
    ("GenerateClientCertificateRequest", "string pem_csr = 3;"),
    (
        "GenerateClientCertificateResponse",
        "string pem_certificate = 1;",
    ),
    (
        "ConnectionInfo",
        "repeated string pem_certificate_chain = 3;",
    ),
    ("ConnectionInfo", "string psc_dns_name = 6;"),
    ("ConnectionInfo", "string psc_auto_dns_name = 9;"),
];

fn derive_alloydb(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let v1 = Path::new("protos/google/cloud/alloydb/v1");
    for version in ALLOYDB_DERIVED {
        let dir = out.join("google/cloud/alloydb").join(version);
        std::fs::create_dir_all(&dir)?;
        for file in ["resources.proto", "users.proto", "service.proto"] {
            let mut text = std::fs::read_to_string(v1.join(file))?
                .replace(
                    "google.cloud.alloydb.v1.",
                    &format!("google.cloud.alloydb.{version}."),
                )
                .replace(
                    "package google.cloud.alloydb.v1;",
                    &format!("package google.cloud.alloydb.{version};"),
                )
                .replace(
                    "google/cloud/alloydb/v1/",
                    &format!("google/cloud/alloydb/{version}/"),
                )
                .replace("\"/v1/", &format!("\"/{version}/"));
            if file == "resources.proto" {
                for (message, field) in ALLOYDB_EXTRA_FIELDS {
                    let open = format!("\nmessage {message} {{\n");
                    let at = text
                        .find(&open)
                        .ok_or_else(|| format!("no message {message} in v1"))?
                        + open.len();
                    text.insert_str(at, &format!("  {field}\n"));
                }
            }
            std::fs::write(dir.join(file), text)?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let derived = out.join("protos");
    derive_alloydb(&derived)?;
    let mut compiler = protox::Compiler::new([PathBuf::from("protos"), derived])?;
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
