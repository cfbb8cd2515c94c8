//! clustercred's own subset of Google's AlloyDB Admin (v1, v1beta, v1alpha), Edge Container v1, GKE
//! Multi-Cloud v1 and google.longrunning APIs: Google's package, service, message and field names and numbers,
//! compiled without protoc.

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/protos.rs"));

/// The encoded `FileDescriptorSet` of everything above, with the `google.api.http` annotations kept.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The canonical google.rpc name of a gRPC code (`OK`, `PERMISSION_DENIED`, ...), as Google prints it in
/// `error.status` and as the audit log records it. (`tonic::Code`'s `Debug` form, `PermissionDenied`, is not it.)
pub fn status_name(code: tonic::Code) -> &'static str {
    google::rpc::Code::try_from(code as i32)
        .map(|c| c.as_str_name())
        .unwrap_or("UNKNOWN")
}
