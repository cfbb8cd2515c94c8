#![no_main]
//! REST path matching and JSON/query transcoding into request messages, for every HTTP rule served.
use std::sync::OnceLock;

use clustercred_transport::{ApiMount, RestGateway};
use libfuzzer_sys::fuzz_target;

fn gateway() -> &'static RestGateway {
    static G: OnceLock<RestGateway> = OnceLock::new();
    G.get_or_init(|| {
        let pool = prost_reflect::DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mount = |p: &str, pkgs: &[&str]| ApiMount {
            prefix: p.into(),
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
            host_markers: vec![format!("{p}.")],
        };
        RestGateway::new(
            pool,
            vec![
                mount("alloydb", &["google.cloud.alloydb.", "google.longrunning."]),
                mount("edgecontainer", &["google.cloud.edgecontainer.", "google.longrunning."]),
                mount("gkemulticloud", &["google.cloud.gkemulticloud.", "google.longrunning."]),
                mount("iam", &["google.iam.admin."]),
                mount("cloudresourcemanager", &["google.cloudresourcemanager."]),
            ],
            Vec::new(),
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // Layout: method selector byte, then "path?query" up to a NUL, then the body.
    let Some((&m, rest)) = data.split_first() else { return };
    let method = [http::Method::GET, http::Method::POST, http::Method::DELETE, http::Method::PATCH][usize::from(m % 4)].clone();
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (target, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let Ok(target) = std::str::from_utf8(target) else { return };
    let Ok(uri) = format!("/{}", target.trim_start_matches('/')).parse::<http::Uri>() else { return };
    let _ = gateway().transcode(&method, &uri, &http::HeaderMap::new(), body);
});
