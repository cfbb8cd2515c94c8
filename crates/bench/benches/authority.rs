//! Micro-benchmarks of the authority's hot paths: building and signing a client certificate with a P-256
//! cluster CA, public-key parsing, verification of a Kubernetes service-account JWT against a JWKS, and
//! minting and verifying clustercred's own access tokens. Keys, CAs, JWKS documents and tokens are made in
//! setup, outside the measured loops.

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clustercred_authority::{
    CaParams, ClientPublicKey, ClusterCa, Jwks, LeafRequest, MintRequest, SubjectTokenPolicy,
    TokenKind, TokenSigner, verify_jwt, verify_service_account_token,
};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

const NOW: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
const ISSUER: &str =
    "https://container.googleapis.com/v1/projects/p1/locations/us-central1/clusters/attached-1";
const AUDIENCE: &str = "p1.svc.id.goog";

fn p256_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

fn rsa2048_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA-2048 key")
}

fn spki_der(key: &rcgen::KeyPair) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(key)
}

/// The RSA modulus and exponent of an SPKI (big-endian, with DER's leading zero octets).
fn rsa_components(spki: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (_, info) = SubjectPublicKeyInfo::from_der(spki).expect("SPKI");
    let pkcs1 = info.subject_public_key.data.to_vec();
    let Ok(PublicKey::RSA(rsa)) = info.parsed() else {
        panic!("not an RSA key")
    };
    (rsa.modulus.to_vec(), rsa.exponent.to_vec(), pkcs1)
}

/// PEM with the standard 64-column base64 lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn rsa_jwk(key: &rcgen::KeyPair, kid: &str) -> serde_json::Value {
    let (n, e, _) = rsa_components(&spki_der(key));
    let unsigned = |b: &[u8]| {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        URL_SAFE_NO_PAD.encode(&b[start..])
    };
    json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": unsigned(&n), "e": unsigned(&e)})
}

fn issue_client_certificate(c: &mut Criterion) {
    let (ca, _) = ClusterCa::generate(
        &CaParams {
            common_name: "projects/p1/locations/us-central1/clusters/c1".into(),
            organization: Some("clustercred AlloyDB cluster CA".into()),
            validity: Duration::days(3650),
        },
        NOW,
    )
    .expect("P-256 cluster CA");
    let p256 = ClientPublicKey::from_pem(&p256_key().public_key_pem()).expect("P-256 public key");
    let rsa = ClientPublicKey::from_pem(&rsa2048_key().public_key_pem()).expect("RSA public key");

    let mut group = c.benchmark_group("issue_client_certificate");
    for (name, key) in [("p256_ca/p256_key", &p256), ("p256_ca/rsa2048_key", &rsa)] {
        let request = LeafRequest {
            public_key: key,
            subject_common_name: "app@p1.iam.clustercred.internal",
            subject_organization: None,
            lifetime: Duration::hours(24),
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                ca.issue_client_certificate(black_box(&request), NOW)
                    .expect("issued")
            })
        });
    }
    group.finish();
}

fn public_key_parsing(c: &mut Criterion) {
    let p256 = p256_key();
    let rsa = rsa2048_key();
    let p256_pem = p256.public_key_pem();
    let rsa_pem = rsa.public_key_pem();
    let p256_der = spki_der(&p256);
    let rsa_der = spki_der(&rsa);
    // What the AlloyDB connectors may also send: the PKCS#1 RSAPublicKey.
    let rsa_pkcs1_pem = pem("RSA PUBLIC KEY", &rsa_components(&rsa_der).2);
    assert_eq!(
        ClientPublicKey::from_pem(&rsa_pkcs1_pem)
            .expect("PKCS#1")
            .spki_der(),
        rsa_der.as_slice()
    );

    let mut group = c.benchmark_group("public_key");
    for (name, input) in [
        ("from_pem/p256_spki", &p256_pem),
        ("from_pem/rsa2048_spki", &rsa_pem),
        ("from_pem/rsa2048_pkcs1", &rsa_pkcs1_pem),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| ClientPublicKey::from_pem(black_box(input)).expect("parsed"))
        });
    }
    for (name, input) in [
        ("from_spki_der/p256", &p256_der),
        ("from_spki_der/rsa2048", &rsa_der),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| ClientPublicKey::from_spki_der(black_box(input)).expect("parsed"))
        });
    }
    group.finish();
}

fn service_account_jwt(c: &mut Criterion) {
    // A cluster's JWKS as the Kubernetes API server publishes it: the current signing key and the previous one.
    let previous = rsa2048_key();
    let current = rsa2048_key();
    let jwks_json = serde_json::to_vec(&json!({"keys": [
        rsa_jwk(&previous, "k8s-sa-2025"),
        rsa_jwk(&current, "k8s-sa-2026"),
    ]}))
    .expect("JWKS");
    let jwks = Jwks::parse(&jwks_json).expect("JWKS parses");

    // A projected service-account token of the Connect agent, signed by the current key.
    let iat = NOW.unix_timestamp() - 30;
    let claims = json!({
        "aud": [AUDIENCE],
        "exp": iat + 3600,
        "iat": iat,
        "nbf": iat,
        "iss": ISSUER,
        "jti": "3f1c2a7e-8b0d-4c55-9e1f-6a2b7c9d0e14",
        "kubernetes.io": {
            "namespace": "gke-connect",
            "node": {"name": "node-1", "uid": "0b6e1a6c-31f4-4f0e-9d43-2f1c0d8f7a55"},
            "pod": {"name": "gke-connect-agent-7d9f8c6b5-x2x4q", "uid": "5a0d9e3b-7c1f-4b2a-8e6d-1f3c5b7a9d20"},
            "serviceaccount": {"name": "connect-agent-sa", "uid": "9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b"},
        },
        "sub": "system:serviceaccount:gke-connect:connect-agent-sa",
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k8s-sa-2026".into());
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(current.serialize_pem().as_bytes())
        .expect("RSA signing key");
    let token = jsonwebtoken::encode(&header, &claims, &encoding).expect("signed token");
    let policy = SubjectTokenPolicy {
        issuer: ISSUER.into(),
        accepted_audiences: vec![AUDIENCE.into()],
        leeway: Duration::seconds(60),
    };
    verify_service_account_token(&token, &jwks, &policy, NOW).expect("the token verifies");

    let mut group = c.benchmark_group("service_account_jwt");
    group.bench_function("jwks_parse/rsa2048_x2", |b| {
        b.iter(|| Jwks::parse(black_box(&jwks_json)).expect("parsed"))
    });
    group.bench_function("verify_jwt/rs256", |b| {
        b.iter(|| {
            verify_jwt(black_box(&token), &jwks, NOW, Duration::seconds(60)).expect("verified")
        })
    });
    group.bench_function("verify_service_account_token/rs256", |b| {
        b.iter(|| {
            verify_service_account_token(black_box(&token), &jwks, &policy, NOW).expect("verified")
        })
    });
    group.finish();
}

fn own_tokens(c: &mut Criterion) {
    let (signer, _) = TokenSigner::generate().expect("token signer");
    let issuer = "https://clustercred.example.test";
    let audience = "https://alloydb.googleapis.com/";
    let request = MintRequest {
        kind: TokenKind::Access,
        issuer,
        subject: "serviceAccount:app@p1.iam.clustercred.internal",
        audience,
        scope: Some("https://www.googleapis.com/auth/cloud-platform"),
        lifetime: Duration::hours(1),
        extra: serde_json::Map::new(),
    };
    let token = signer.mint(&request, NOW).expect("minted").token;
    let later = NOW + Duration::minutes(5);

    let mut group = c.benchmark_group("own_token");
    group.bench_function("mint/es256", |b| {
        b.iter(|| signer.mint(black_box(&request), NOW).expect("minted"))
    });
    group.bench_function("verify/es256", |b| {
        b.iter(|| {
            signer
                .verify(
                    black_box(&token),
                    TokenKind::Access,
                    issuer,
                    audience,
                    later,
                )
                .expect("verified")
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    issue_client_certificate,
    public_key_parsing,
    service_account_jwt,
    own_tokens
);
criterion_main!(benches);
