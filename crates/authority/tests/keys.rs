//! Public-key parsing: what connectors send is accepted and normalised; everything else is refused with a
//! specific reason.

use clustercred_authority::{
    ClientPublicKey, GeneratedKeyAlgorithm, KeyError, PublicKeyAlgorithm, generate_key_pair,
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

#[test]
fn rsa_spki_and_pkcs1_are_the_same_key() {
    let spki = ClientPublicKey::from_pem(&fixture("rsa2048.spki.pem")).expect("SPKI");
    let pkcs1 = ClientPublicKey::from_pem(&fixture("rsa2048.pkcs1.pem")).expect("PKCS#1");
    assert_eq!(
        spki.spki_der(),
        pkcs1.spki_der(),
        "PKCS#1 is wrapped into the same SubjectPublicKeyInfo"
    );
    assert_eq!(spki.algorithm(), PublicKeyAlgorithm::Rsa { bits: 2048 });
    assert_eq!(
        spki.sha256_fingerprint_hex(),
        pkcs1.sha256_fingerprint_hex()
    );
    assert_eq!(
        ClientPublicKey::from_pem(&spki.to_pem()).unwrap(),
        spki,
        "round trip"
    );
}

#[test]
fn ec_and_ed25519_keys_are_accepted() {
    for (alg, expected) in [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            PublicKeyAlgorithm::EcdsaP256,
        ),
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            PublicKeyAlgorithm::EcdsaP384,
        ),
        (&rcgen::PKCS_ED25519, PublicKeyAlgorithm::Ed25519),
    ] {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let parsed = ClientPublicKey::from_pem(&key.public_key_pem()).expect("accepted");
        assert_eq!(parsed.algorithm(), expected);
        assert_eq!(
            parsed.spki_der(),
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
    }
    // Surrounding whitespace is fine.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(ClientPublicKey::from_pem(&format!("\n  {}\n\n", key.public_key_pem())).is_ok());
}

#[test]
fn weak_odd_and_unsupported_keys_are_refused() {
    assert_eq!(
        ClientPublicKey::from_pem(&fixture("rsa1024.pub.pem")),
        Err(KeyError::RsaTooSmall { bits: 1024 })
    );
    assert_eq!(
        ClientPublicKey::from_pem(&fixture("rsa9000.pub.pem")),
        Err(KeyError::RsaTooLarge { bits: 9000 })
    );
    for name in [
        "p521.pub.pem",
        "secp256k1.pub.pem",
        "x25519.pub.pem",
        "dsa.pub.pem",
    ] {
        let err = ClientPublicKey::from_pem(&fixture(name)).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedAlgorithm(_)),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn malformed_input_is_refused_without_echoing_it() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let good = key.public_key_pem();
    let cert = rcgen::CertificateParams::new(vec!["x".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    assert_eq!(ClientPublicKey::from_pem(""), Err(KeyError::NotPem));
    assert_eq!(ClientPublicKey::from_pem("garbage"), Err(KeyError::NotPem));
    assert_eq!(
        ClientPublicKey::from_pem(&format!("{good}{good}")),
        Err(KeyError::MultiplePemBlocks)
    );
    assert!(
        matches!(ClientPublicKey::from_pem(&cert), Err(KeyError::UnsupportedPemLabel(l)) if l == "CERTIFICATE")
    );
    assert!(matches!(
        ClientPublicKey::from_pem(&key.serialize_pem()),
        Err(KeyError::UnsupportedPemLabel(l)) if l == "PRIVATE KEY"
    ));
    assert!(ClientPublicKey::from_pem(&format!("junk before\n{good}")).is_err());
    // Truncated DER and corrupted base64.
    let lines: Vec<&str> = good.lines().collect();
    let truncated = format!(
        "{}\n{}\n{}\n",
        lines[0],
        &lines[1][..20],
        lines[lines.len() - 1]
    );
    assert!(ClientPublicKey::from_pem(&truncated).is_err());
    let corrupted = good.replacen(&lines[1][5..9], "!!!!", 1);
    assert!(ClientPublicKey::from_pem(&corrupted).is_err());
    // Trailing bytes after the DER structure.
    let mut der = rcgen::PublicKeyData::subject_public_key_info(&key);
    der.extend_from_slice(&[0, 0]);
    assert_eq!(
        ClientPublicKey::from_spki_der(&der),
        Err(KeyError::Malformed("trailing data after the key"))
    );
    // Oversized input never reaches the parser and is not echoed.
    let huge = "A".repeat(20_000);
    let err = ClientPublicKey::from_pem(&huge).unwrap_err();
    assert_eq!(err, KeyError::TooLarge);
    assert!(err.to_string().len() < 100);
}

#[test]
fn points_off_the_curve_are_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut der = rcgen::PublicKeyData::subject_public_key_info(&key);
    // The last byte is the end of the point's y coordinate: change it so the point leaves the curve.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(
        ClientPublicKey::from_spki_der(&der),
        Err(KeyError::InvalidEcPoint)
    );
}

#[test]
fn generated_key_pairs_parse_back() {
    let pair = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256).unwrap();
    assert!(
        pair.private_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let private = rcgen::KeyPair::from_pem(&pair.private_key_pem).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&private),
        pair.public_key.spki_der()
    );
    assert_eq!(pair.public_key.algorithm(), PublicKeyAlgorithm::EcdsaP256);
    let rsa = generate_key_pair(GeneratedKeyAlgorithm::Rsa2048).unwrap();
    assert_eq!(
        rsa.public_key.algorithm(),
        PublicKeyAlgorithm::Rsa { bits: 2048 }
    );
}
