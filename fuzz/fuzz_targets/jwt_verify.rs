#![no_main]
//! JWS parsing and verification (subject tokens, bearer tokens, assertions all go through this verifier).
use std::sync::OnceLock;

use clustercred_authority::{Jwks, SubjectTokenPolicy, peek_jwt, verify_jwt, verify_service_account_token};
use libfuzzer_sys::fuzz_target;

fn jwks() -> &'static Jwks {
    static SET: OnceLock<Jwks> = OnceLock::new();
    SET.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = key.public_key_raw();
        let b64 = |b: &[u8]| {
            const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut s = String::new();
            for c in b.chunks(3) {
                let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
                for i in 0..=c.len() {
                    s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            s
        };
        let doc = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&p[1..33]), "y": b64(&p[33..65])}]});
        Jwks::parse(doc.to_string().as_bytes()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let _ = peek_jwt(token);
    let _ = verify_jwt(token, jwks(), now, time::Duration::seconds(60));
    let policy = SubjectTokenPolicy {
        issuer: "https://issuer".into(),
        accepted_audiences: vec!["aud".into()],
        leeway: time::Duration::seconds(60),
    };
    let _ = verify_service_account_token(token, jwks(), &policy, now);
});
