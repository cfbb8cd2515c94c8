//! Cluster CAs and the client certificates they issue.

use ::time::{Duration, OffsetDateTime, macros::datetime};
use clustercred_authority::{AuthorityError, CaParams, ClientPublicKey, ClusterCa, LeafRequest};
use x509_parser::prelude::*;

const NOW: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);

fn ca(validity: Duration) -> (ClusterCa, clustercred_authority::CaMaterial) {
    ClusterCa::generate(
        &CaParams {
            common_name: "c1".into(),
            organization: Some("clustercred AlloyDB cluster CA".into()),
            validity,
        },
        NOW,
    )
    .expect("CA")
}

fn der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

fn client_key() -> (rcgen::KeyPair, ClientPublicKey) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = ClientPublicKey::from_pem(&key.public_key_pem()).unwrap();
    (key, public)
}

#[test]
fn the_ca_is_a_constrained_self_signed_ca() {
    let (ca, material) = ca(Duration::days(3650));
    assert!(ca.cert_pem().ends_with('\n'));
    let cert_der = der(&material.cert_pem);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    cert.verify_signature(None).expect("self-signed");
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(
        cert.get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .is_some()
    );
    assert_eq!(
        cert.validity().not_before.timestamp(),
        (NOW - Duration::minutes(1)).unix_timestamp()
    );
    assert_eq!(ca.not_after(), NOW + Duration::days(3650));
}

#[test]
fn leaves_chain_to_the_ca_and_hold_the_callers_key() {
    let (ca, material) = ca(Duration::days(365));
    let ca_der = der(&material.cert_pem);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    let (key, public) = client_key();
    let leaf = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "alice@example.com",
                subject_organization: None,
                lifetime: Duration::hours(3),
            },
            NOW,
        )
        .unwrap();
    assert!(leaf.cert_pem.ends_with('\n'));
    assert_eq!(leaf.not_before, NOW - Duration::minutes(1));
    assert_eq!(leaf.not_after, NOW + Duration::hours(3));
    let leaf_der = der(&leaf.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");
    assert_eq!(cert.issuer(), ca_cert.subject());
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "alice@example.com"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let aki = cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap();
    assert!(aki.is_some(), "authority key id present");
    assert_eq!(hex::encode(cert.raw_serial()), leaf.serial_hex);
    assert_eq!(leaf.serial_hex.len(), 32, "128-bit serial");

    let again = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "a",
                subject_organization: None,
                lifetime: Duration::hours(1),
            },
            NOW,
        )
        .unwrap();
    assert_ne!(
        again.serial_hex, leaf.serial_hex,
        "fresh serial per certificate"
    );
}

#[test]
fn rsa_leaves_also_allow_key_encipherment() {
    let (ca, _) = ca(Duration::days(365));
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let public = ClientPublicKey::from_pem(&rsa.public_key_pem()).unwrap();
    let leaf = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "x",
                subject_organization: None,
                lifetime: Duration::hours(1),
            },
            NOW,
        )
        .unwrap();
    let leaf_der = der(&leaf.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    assert!(cert.key_usage().unwrap().unwrap().value.key_encipherment());
}

#[test]
fn lifetimes_never_outlive_the_ca_and_expired_cas_refuse() {
    let (ca, _) = ca(Duration::hours(2));
    let (_, public) = client_key();
    let req = |lifetime| LeafRequest {
        public_key: &public,
        subject_common_name: "x",
        subject_organization: None,
        lifetime,
    };
    let leaf = ca
        .issue_client_certificate(&req(Duration::hours(24)), NOW)
        .unwrap();
    assert_eq!(leaf.not_after, ca.not_after(), "clamped to the CA's expiry");
    assert!(matches!(
        ca.issue_client_certificate(&req(Duration::hours(1)), NOW + Duration::hours(3)),
        Err(AuthorityError::CaExpired(_))
    ));
    assert!(matches!(
        ca.issue_client_certificate(&req(Duration::ZERO), NOW),
        Err(AuthorityError::BadLifetime)
    ));
}

#[test]
fn stored_material_round_trips_and_mismatches_are_refused() {
    let (original, material) = ca(Duration::days(30));
    let loaded =
        ClusterCa::from_material(&material.cert_pem, &material.key_pkcs8_der).expect("loads");
    assert_eq!(loaded.cert_pem(), original.cert_pem());
    assert_eq!(loaded.not_after(), original.not_after());
    let (_, public) = client_key();
    let leaf = loaded
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "x",
                subject_organization: None,
                lifetime: Duration::hours(1),
            },
            NOW,
        )
        .unwrap();
    let ca_der = der(&material.cert_pem);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    let leaf_der = der(&leaf.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("the reloaded CA signs with the same key");

    let (_, other) = ca(Duration::days(30));
    assert!(matches!(
        ClusterCa::from_material(&material.cert_pem, &other.key_pkcs8_der),
        Err(AuthorityError::BadMaterial(_))
    ));
    assert!(ClusterCa::from_material("not pem", &material.key_pkcs8_der).is_err());
    assert!(ClusterCa::from_material(&material.cert_pem, b"not a key").is_err());
}

fn fixture_der(name: &str) -> Vec<u8> {
    der(&std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap())
}

fn issue(ca: &ClusterCa, public: &ClientPublicKey, org: Option<&str>) -> Vec<u8> {
    let leaf = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: public,
                subject_common_name: "db-user",
                subject_organization: org,
                lifetime: Duration::hours(1),
            },
            NOW,
        )
        .unwrap();
    der(&leaf.cert_pem)
}

#[test]
fn leaves_are_v3_ecdsa_sha256_and_name_their_ca_key() {
    let (ca, material) = ca(Duration::days(365));
    let ca_der = der(&material.cert_pem);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    let (_, public) = client_key();
    let leaf_der = issue(&ca, &public, Some("Example Org"));
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(
        cert.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    let ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .expect("CA SKI");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("leaf AKI");
    assert_eq!(aki, ski, "authority key id is the CA's subject key id");
    let org: Vec<&str> = cert
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(org, ["Example Org"]);
    let leaf_der = issue(&ca, &public, None);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(cert.subject().iter_organization().count(), 0);
}

#[test]
fn leaves_embed_pkcs1_and_ed25519_keys_as_spki() {
    let (ca, material) = ca(Duration::days(365));
    let ca_der = der(&material.cert_pem);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    let pkcs1 = std::fs::read_to_string(format!(
        "{}/tests/fixtures/rsa2048.pkcs1.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let rsa = ClientPublicKey::from_pem(&pkcs1).unwrap();
    let leaf_der = issue(&ca, &rsa, None);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(
        cert.public_key().raw,
        fixture_der("rsa2048.spki.pem").as_slice(),
        "PKCS#1 input becomes the SubjectPublicKeyInfo OpenSSL derives from it"
    );

    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_public = ClientPublicKey::from_pem(&ed.public_key_pem()).unwrap();
    let leaf_der = issue(&ca, &ed_public, None);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(cert.public_key().raw, ed_public.spki_der());
    assert!(!cert.key_usage().unwrap().unwrap().value.key_encipherment());
}

#[test]
fn times_follow_the_clock_in_whole_seconds_and_never_overflow() {
    let (ca, _) = ca(Duration::days(30));
    let (_, public) = client_key();
    // A clock reading with a fraction of a second: reported times are what the certificate holds.
    let now = NOW + Duration::days(2) + Duration::milliseconds(750);
    let leaf = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "x",
                subject_organization: None,
                lifetime: Duration::hours(2),
            },
            now,
        )
        .unwrap();
    let leaf_der = der(&leaf.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(
        cert.validity().not_before.timestamp(),
        leaf.not_before.unix_timestamp()
    );
    assert_eq!(
        cert.validity().not_after.timestamp(),
        leaf.not_after.unix_timestamp()
    );
    assert_eq!(
        leaf.not_before,
        NOW + Duration::days(2) - Duration::minutes(1)
    );
    assert_eq!(leaf.not_after, NOW + Duration::days(2) + Duration::hours(2));

    // An absurd lifetime ends with the CA instead of panicking on date overflow.
    let long = ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "x",
                subject_organization: None,
                lifetime: Duration::MAX,
            },
            NOW,
        )
        .unwrap();
    assert_eq!(long.not_after, ca.not_after());
    assert!(matches!(
        ca.issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "x",
                subject_organization: None,
                lifetime: Duration::seconds(-1),
            },
            NOW,
        ),
        Err(AuthorityError::BadLifetime)
    ));
    let params = |validity| CaParams {
        common_name: "c".into(),
        organization: None,
        validity,
    };
    assert!(matches!(
        ClusterCa::generate(&params(Duration::MAX), NOW),
        Err(AuthorityError::LifetimeTooLong)
    ));
    assert!(matches!(
        ClusterCa::generate(&params(Duration::ZERO), NOW),
        Err(AuthorityError::BadLifetime)
    ));
}
