#![no_main]
//! PEM / SubjectPublicKeyInfo / PKCS#1 parsing of callers' public keys.
use clustercred_authority::ClientPublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClientPublicKey::from_pem(text);
        // Also inside a PEM envelope, so the DER parsers see the bytes.
    }
    let _ = ClientPublicKey::from_spki_der(data);
    use std::fmt::Write;
    let mut pem = String::from("-----BEGIN RSA PUBLIC KEY-----\n");
    for chunk in data.chunks(48) {
        let _ = writeln!(pem, "{}", base64_encode(chunk));
    }
    pem.push_str("-----END RSA PUBLIC KEY-----\n");
    let _ = ClientPublicKey::from_pem(&pem);
});

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
