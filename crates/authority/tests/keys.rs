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

/// DER TLV with a definite length (short or long form).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let len = content.len().to_be_bytes();
        let skip = len.iter().position(|b| *b != 0).unwrap();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A positive DER INTEGER from big-endian magnitude bytes.
fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let mut content = magnitude.to_vec();
    if content.first().is_some_and(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    tlv(0x02, &content)
}

fn pkcs1_pem(modulus: &[u8], exponent: &[u8]) -> String {
    let body = [der_uint(modulus), der_uint(exponent)].concat();
    pem::encode(&pem::Pem::new("RSA PUBLIC KEY", tlv(0x30, &body)))
}

fn fixture_modulus() -> Vec<u8> {
    let spki = pem::parse(fixture("rsa2048.spki.pem")).unwrap();
    let (_, info) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(
            spki.contents(),
        )
        .unwrap();
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = info.parsed() else {
        panic!("RSA fixture")
    };
    rsa.modulus
        .iter()
        .skip_while(|b| **b == 0)
        .copied()
        .collect()
}

#[test]
fn rsa_exponents_must_be_odd_at_least_3_and_below_2_pow_32() {
    let n = fixture_modulus();
    // The builder reproduces the fixture exactly, so the refusals below are about the exponent alone.
    let f4 = ClientPublicKey::from_pem(&pkcs1_pem(&n, &[1, 0, 1])).expect("e = 65537");
    assert_eq!(
        f4,
        ClientPublicKey::from_pem(&fixture("rsa2048.spki.pem")).unwrap()
    );
    assert!(
        ClientPublicKey::from_pem(&pkcs1_pem(&n, &[3])).is_ok(),
        "e = 3"
    );
    for e in [&[1u8][..], &[4], &[1, 0, 0], &[1, 0, 0, 0, 1], &[0]] {
        assert_eq!(
            ClientPublicKey::from_pem(&pkcs1_pem(&n, e)),
            Err(KeyError::BadRsaExponent),
            "e = {e:?}"
        );
    }
    // 2^32 - 1 is the largest exponent allowed.
    assert!(ClientPublicKey::from_pem(&pkcs1_pem(&n, &[0xff; 4])).is_ok());
}

#[test]
fn refusals_name_the_algorithm_in_a_sentence() {
    for (name, expected) in [
        ("p521.pub.pem", "ECDSA on curve P-521"),
        ("secp256k1.pub.pem", "ECDSA on curve secp256k1"),
        ("x25519.pub.pem", "X25519"),
        ("dsa.pub.pem", "DSA"),
    ] {
        assert_eq!(
            ClientPublicKey::from_pem(&fixture(name)),
            Err(KeyError::UnsupportedAlgorithm(expected.into()))
        );
    }
    let msg = KeyError::UnsupportedAlgorithm("DSA".into()).to_string();
    assert_eq!(
        msg,
        "public key algorithm DSA is not supported (RSA, ECDSA P-256/P-384 and Ed25519 are)"
    );
}

#[test]
fn degenerate_and_mislabelled_keys_are_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let der = rcgen::PublicKeyData::subject_public_key_info(&key);
    // SEQUENCE { AlgorithmIdentifier (21 bytes), BIT STRING }: keep the algorithm, replace the point.
    let alg = &der[2..23];
    let with_point = |point: &[u8]| {
        let bits = tlv(0x03, &[&[0u8][..], point].concat());
        tlv(0x30, &[alg, &bits[..]].concat())
    };
    assert!(ClientPublicKey::from_spki_der(&der).is_ok());
    // The point at infinity, an empty point and a point of the wrong length.
    for point in [&[0u8][..], &[], &[4u8; 33]] {
        assert_eq!(
            ClientPublicKey::from_spki_der(&with_point(point)),
            Err(KeyError::InvalidEcPoint),
            "{point:?}"
        );
    }
    // An Ed25519 key must be 32 bytes.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_der = rcgen::PublicKeyData::subject_public_key_info(&ed);
    // SEQUENCE { AlgorithmIdentifier (7 bytes), BIT STRING (0x03 0x21 0x00 + 32 bytes) }.
    let (ed_alg, ed_key) = (&ed_der[2..9], &ed_der[12..]);
    assert_eq!(ed_key.len(), 32);
    let short = tlv(
        0x30,
        &[ed_alg, &tlv(0x03, &[&[0u8][..], &ed_key[..31]].concat())].concat(),
    );
    assert_eq!(
        ClientPublicKey::from_spki_der(&short),
        Err(KeyError::Malformed(
            "Ed25519 key must be 32 bytes without parameters"
        ))
    );
    // PKCS#1 content under the SPKI label (and the reverse) does not parse.
    let pkcs1 = fixture("rsa2048.pkcs1.pem").replace("RSA PUBLIC KEY", "PUBLIC KEY");
    assert!(matches!(
        ClientPublicKey::from_pem(&pkcs1),
        Err(KeyError::Malformed(_))
    ));
    let spki = fixture("rsa2048.spki.pem").replace("PUBLIC KEY", "RSA PUBLIC KEY");
    assert!(ClientPublicKey::from_pem(&spki).is_err());
    // Text after the block is refused like text before it.
    let good = key.public_key_pem();
    assert!(matches!(
        ClientPublicKey::from_pem(&format!("{good}trailing words")),
        Err(KeyError::Malformed(_))
    ));
}
