#![no_main]
//! JWKS documents registered with attached clusters or fetched from OIDC issuers.
use clustercred_authority::Jwks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Jwks::parse(data);
});
