//! The audit log's `status` vocabulary is google.rpc's canonical code names, taken here from the
//! `google.rpc.Code` enum of our compiled protos rather than from a second hand-written list.

use clustercred_api::context::status_name;
use clustercred_proto::google::rpc::Code as RpcCode;

#[test]
fn every_grpc_code_maps_to_its_canonical_google_rpc_name() {
    let mut seen = std::collections::HashSet::new();
    for n in 0..=16 {
        let code = tonic::Code::from_i32(n);
        assert_eq!(code as i32, n, "tonic knows code {n}");
        let canonical = RpcCode::try_from(n).expect("google.rpc.Code has every gRPC code");
        assert_eq!(status_name(code), canonical.as_str_name(), "code {n}");
        assert!(seen.insert(status_name(code)), "names are distinct");
    }
    assert_eq!(status_name(tonic::Code::Ok), "OK");
    assert_eq!(
        status_name(tonic::Code::PermissionDenied),
        "PERMISSION_DENIED"
    );
}
