#![no_main]
//! Resource-name parsing and id validation.
use clustercred_api::names::{parse_child, parse_location, parse_resource, validate_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    let _ = validate_id("id", name);
    let _ = parse_location("parent", name);
    let _ = parse_resource("name", name, "clusters");
    let _ = parse_resource("name", name, "attachedClusters");
    let _ = parse_child("name", name, "clusters", "instances");
    let _ = clustercred_api::iam::project_of(name);
    let _ = clustercred_api::iam::project_of_email(name);
});
