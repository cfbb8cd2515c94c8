//! Subject-token verification (the attached cluster's Kubernetes service-account JWTs) and our own tokens.

use ::time::{Duration, OffsetDateTime, macros::datetime};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clustercred_authority::{
    Jwks, JwksError, MintRequest, SubjectTokenPolicy, TokenError, TokenErrorKind, TokenKind,
    TokenSigner, verify_service_account_token,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const NOW: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
const ISSUER: &str = "https://issuer.example";
const AUD: &str = "proj.svc.id.goog";

struct Keys {
    ec: rcgen::KeyPair,
    rsa: rcgen::KeyPair,
}

fn keys() -> Keys {
    Keys {
        ec: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        rsa: rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap(),
    }
}

fn ec_jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let p = key.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
}

fn rsa_jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let spki = rcgen::PublicKeyData::subject_public_key_info(key);
    let (_, info) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(
            &spki,
        )
        .unwrap();
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = info.parsed() else {
        panic!("rsa")
    };
    let strip = |b: &[u8]| {
        b.iter()
            .skip_while(|x| **x == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": B64.encode(strip(rsa.modulus)), "e": B64.encode(strip(rsa.exponent))})
}

fn jwks(keys: &[Value]) -> Jwks {
    Jwks::parse(&serde_json::to_vec(&json!({ "keys": keys })).unwrap()).expect("JWKS")
}

fn claims() -> Value {
    let now = NOW.unix_timestamp();
    json!({"iss": ISSUER, "aud": [AUD], "sub": "system:serviceaccount:kube-system:agent", "iat": now, "nbf": now,
           "exp": now + 600, "jti": "abc"})
}

fn with(mut v: Value, k: &str, val: Value) -> Value {
    v[k] = val;
    v
}

fn sign(alg: Algorithm, key: &rcgen::KeyPair, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let enc = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&key.serialize_der()),
        _ => EncodingKey::from_rsa_der(&rsa_pkcs1_private(key)),
    };
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

/// jsonwebtoken wants the PKCS#1 RSAPrivateKey; rcgen gives PKCS#8, whose last OCTET STRING wraps it.
fn rsa_pkcs1_private(key: &rcgen::KeyPair) -> Vec<u8> {
    let pkcs8 = key.serialize_der();
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }: find the OCTET STRING header.
    let mut i = 0;
    let read_len = |bytes: &[u8], at: usize| -> (usize, usize) {
        let first = bytes[at] as usize;
        if first < 0x80 {
            (first, 1)
        } else {
            let n = first & 0x7f;
            (
                bytes[at + 1..at + 1 + n]
                    .iter()
                    .fold(0, |acc, b| acc * 256 + *b as usize),
                1 + n,
            )
        }
    };
    // outer SEQUENCE
    let (_, l) = read_len(&pkcs8, 1);
    i += 1 + l;
    // version INTEGER
    let (len, l) = read_len(&pkcs8, i + 1);
    i += 1 + l + len;
    // algorithm SEQUENCE
    let (len, l) = read_len(&pkcs8, i + 1);
    i += 1 + l + len;
    assert_eq!(pkcs8[i], 0x04);
    let (len, l) = read_len(&pkcs8, i + 1);
    pkcs8[i + 1 + l..i + 1 + l + len].to_vec()
}

fn policy() -> SubjectTokenPolicy {
    SubjectTokenPolicy {
        issuer: ISSUER.into(),
        accepted_audiences: vec![AUD.into()],
        leeway: Duration::seconds(60),
    }
}

#[test]
fn valid_ec_and_rsa_tokens_verify() {
    let k = keys();
    let set = jwks(&[ec_jwk(&k.ec, "ec"), rsa_jwk(&k.rsa, "rsa")]);
    let v = verify_service_account_token(
        &sign(Algorithm::ES256, &k.ec, Some("ec"), &claims()),
        &set,
        &policy(),
        NOW,
    )
    .expect("ES256");
    assert_eq!(
        (v.namespace.as_str(), v.name.as_str()),
        ("kube-system", "agent")
    );
    assert_eq!(v.token_id.as_deref(), Some("abc"));
    assert_eq!(v.expires_at, NOW + Duration::seconds(600));
    verify_service_account_token(
        &sign(Algorithm::RS256, &k.rsa, Some("rsa"), &claims()),
        &set,
        &policy(),
        NOW,
    )
    .expect("RS256");
    // Without kid, the only key fitting the algorithm is used.
    verify_service_account_token(
        &sign(Algorithm::ES256, &k.ec, None, &claims()),
        &set,
        &policy(),
        NOW,
    )
    .expect("no kid");
}

#[test]
fn each_failure_has_its_reason() {
    let k = keys();
    let set = jwks(&[ec_jwk(&k.ec, "ec"), rsa_jwk(&k.rsa, "rsa")]);
    let now = NOW.unix_timestamp();
    let ec = |c: &Value| sign(Algorithm::ES256, &k.ec, Some("ec"), c);
    let good = ec(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forge = |header: Value, claims: &Value, sig: &str| {
        format!(
            "{}.{}.{sig}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    };
    // HS256 "signed" with the RSA public key as the secret: the classic key-confusion attack.
    let hs = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa".into());
        jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(&rcgen::PublicKeyData::subject_public_key_info(&k.rsa)),
        )
        .unwrap()
    };
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cases: Vec<(String, TokenError)> = vec![
        (
            forge(json!({"alg": "none", "kid": "ec"}), &claims(), "c2ln"),
            TokenError::DisallowedAlgorithm("none".into()),
        ),
        (hs, TokenError::DisallowedAlgorithm("HS256".into())),
        (
            sign(Algorithm::ES256, &k.ec, Some("nope"), &claims()),
            TokenError::UnknownKeyId,
        ),
        (
            sign(Algorithm::ES256, &other, Some("ec"), &claims()),
            TokenError::BadSignature,
        ),
        (
            ec(&with(claims(), "iss", json!("https://evil"))),
            TokenError::WrongIssuer,
        ),
        (
            ec(&with(claims(), "aud", json!("other"))),
            TokenError::WrongAudience,
        ),
        (
            ec(&with(claims(), "exp", json!(now - 61))),
            TokenError::Expired,
        ),
        (
            ec(&with(claims(), "nbf", json!(now + 61))),
            TokenError::NotYetValid,
        ),
        (
            ec(&with(claims(), "iat", json!(now + 61))),
            TokenError::IssuedInFuture,
        ),
        (
            ec(&with(
                claims(),
                "sub",
                json!("system:serviceaccount::agent"),
            )),
            TokenError::BadSubject,
        ),
        (
            ec(&with(claims(), "sub", json!("alice"))),
            TokenError::BadSubject,
        ),
        (
            format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(with(claims(), "sub", json!("system:serviceaccount:a:b")).to_string()),
                parts[2]
            ),
            TokenError::BadSignature,
        ),
        (
            forge(
                json!({"alg": "ES256", "kid": "ec", "crit": ["exp"]}),
                &claims(),
                parts[2],
            ),
            TokenError::CritHeader,
        ),
        // An RSA key named for an EC token.
        (
            sign(Algorithm::ES256, &k.ec, Some("rsa"), &claims()),
            TokenError::NoMatchingKey,
        ),
    ];
    for (token, expected) in cases {
        let err = verify_service_account_token(&token, &set, &policy(), NOW).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.kind(), TokenErrorKind::Rejected);
        assert!(
            !err.to_string().contains(&token[..20]),
            "messages never echo the token"
        );
    }
    // Leeway: one second inside the skew still verifies.
    verify_service_account_token(
        &ec(&with(claims(), "exp", json!(now - 59))),
        &set,
        &policy(),
        NOW,
    )
    .unwrap();

    let malformed = [
        "".to_string(),
        "abc".into(),
        "a.b".into(),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.{}.x", parts[0], parts[1], parts[2]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        "x".repeat(17 * 1024),
        ec(&with(claims(), "exp", json!("soon"))),
        ec(&json!({"iss": ISSUER, "aud": AUD, "sub": "system:serviceaccount:a:b"})),
    ];
    for token in malformed {
        let err = verify_service_account_token(&token, &set, &policy(), NOW).unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::Malformed, "{err:?}");
    }
    // jku/x5u/jwk headers are ignored, never a key source: a token signed by an embedded key fails.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec".into());
    h.jku = Some("https://attacker.example/jwks".into());
    let token = jsonwebtoken::encode(
        &h,
        &claims(),
        &EncodingKey::from_ec_der(&other.serialize_der()),
    )
    .unwrap();
    assert_eq!(
        verify_service_account_token(&token, &set, &policy(), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn jwks_parsing_refuses_unsafe_sets() {
    let k = keys();
    let parse = |v: Value| Jwks::parse(&serde_json::to_vec(&v).unwrap());
    assert_eq!(parse(json!({"keys": []})).err(), Some(JwksError::Empty));
    assert_eq!(parse(json!({"nokeys": 1})).err(), Some(JwksError::NotJwks));
    assert_eq!(Jwks::parse(b"not json").err(), Some(JwksError::NotJwks));
    assert_eq!(
        parse(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).err(),
        Some(JwksError::PrivateKey(0))
    );
    assert_eq!(
        parse(json!({"keys": [{"kty": "oct", "kid": "x"}]})).err(),
        Some(JwksError::UnsupportedKey(0))
    );
    let mut private = ec_jwk(&k.ec, "p");
    private["d"] = json!("AAAA");
    assert_eq!(
        parse(json!({"keys": [private]})).err(),
        Some(JwksError::PrivateKey(0))
    );
    assert_eq!(
        parse(json!({"keys": [ec_jwk(&k.ec, "same"), rsa_jwk(&k.rsa, "same")]})).err(),
        Some(JwksError::DuplicateKid)
    );
    let mut p521 = ec_jwk(&k.ec, "p");
    p521["crv"] = json!("P-521");
    assert!(parse(json!({"keys": [p521]})).is_err());
    let mut weak = rsa_jwk(&k.rsa, "w");
    weak["n"] = json!(B64.encode([0xc1u8; 128]));
    assert_eq!(
        parse(json!({"keys": [weak]})).err(),
        Some(JwksError::WeakRsa(0))
    );
    let many: Vec<Value> = (0..65).map(|i| ec_jwk(&k.ec, &format!("k{i}"))).collect();
    assert_eq!(
        parse(json!({ "keys": many })).err(),
        Some(JwksError::TooManyKeys)
    );
    assert_eq!(
        Jwks::parse(&vec![b' '; 70 * 1024]).err(),
        Some(JwksError::TooLarge)
    );
    assert_eq!(
        parse(json!({"keys": [ec_jwk(&k.ec, "a"), rsa_jwk(&k.rsa, "b")]}))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn minted_tokens_verify_only_with_their_signer_and_until_they_expire() {
    let (signer, der) = TokenSigner::generate().unwrap();
    let reloaded = TokenSigner::from_pkcs8(&der).unwrap();
    assert_eq!(signer.kid(), reloaded.kid());
    let req = MintRequest {
        kind: TokenKind::Agent,
        issuer: "https://cc.example",
        subject: "system:serviceaccount:a:b",
        audience: AUD,
        scope: Some("https://www.googleapis.com/auth/cloud-platform"),
        lifetime: Duration::hours(1),
        extra: serde_json::Map::from_iter([(
            "attached_cluster".to_string(),
            json!("projects/p/locations/l/attachedClusters/a"),
        )]),
    };
    let minted = signer.mint(&req, NOW).unwrap();
    assert_eq!(minted.expires_at, NOW + Duration::hours(1));
    let claims = reloaded
        .verify(
            &minted.token,
            TokenKind::Agent,
            "https://cc.example",
            AUD,
            NOW,
        )
        .expect("verifies");
    assert_eq!(claims["jti"], json!(minted.token_id));
    // Token ids ascend with time (the store's index grows at its end) and stay unique within a millisecond.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let later: Vec<String> = (0..100)
        .map(|_| signer.mint(&req, NOW).unwrap().token_id)
        .collect();
    assert!(
        later
            .iter()
            .all(|id| id.len() == 32 && *id > minted.token_id)
    );
    assert_eq!(
        later.iter().collect::<std::collections::HashSet<_>>().len(),
        100
    );
    assert_eq!(
        claims["attached_cluster"],
        json!("projects/p/locations/l/attachedClusters/a")
    );
    assert_eq!(
        claims["scope"],
        json!("https://www.googleapis.com/auth/cloud-platform")
    );
    assert_eq!(
        reloaded.verify(
            &minted.token,
            TokenKind::Agent,
            "https://cc.example",
            AUD,
            NOW + Duration::hours(1)
        ),
        Err(TokenError::Expired)
    );
    assert_eq!(
        reloaded.verify(&minted.token, TokenKind::Agent, "https://other", AUD, NOW),
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        reloaded.verify(
            &minted.token,
            TokenKind::Agent,
            "https://cc.example",
            "x",
            NOW
        ),
        Err(TokenError::WrongAudience)
    );
    // An agent token is not a clustercred access token, nor an ID token.
    for other in [TokenKind::Access, TokenKind::Id] {
        assert_eq!(
            reloaded.verify(&minted.token, other, "https://cc.example", AUD, NOW),
            Err(TokenError::WrongTokenKind)
        );
    }
    let (stranger, _) = TokenSigner::generate().unwrap();
    assert!(
        stranger
            .verify(
                &minted.token,
                TokenKind::Agent,
                "https://cc.example",
                AUD,
                NOW
            )
            .is_err()
    );
    let doc = clustercred_authority::jwks_document(&[&signer]);
    assert_eq!(doc["keys"][0]["kid"], json!(signer.kid()));
    assert!(
        doc["keys"][0].get("d").is_none(),
        "only the public half is published"
    );
    // The published key verifies the token with an independent implementation.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(doc["keys"][0].clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUD]);
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(
        &minted.token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap();
}

#[test]
fn keys_we_hold_verify_what_they_signed() {
    let k = keys();
    let public = clustercred_authority::ClientPublicKey::from_pem(&k.rsa.public_key_pem()).unwrap();
    let set = Jwks::from_public_keys(&[("kid1".into(), public)]).unwrap();
    let token = sign(Algorithm::RS256, &k.rsa, Some("kid1"), &claims());
    let got = clustercred_authority::verify_jwt(&token, &set, NOW, Duration::seconds(60))
        .expect("verifies");
    assert_eq!(got["sub"], json!("system:serviceaccount:kube-system:agent"));
    let other = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let forged = sign(Algorithm::RS256, &other, Some("kid1"), &claims());
    assert_eq!(
        clustercred_authority::verify_jwt(&forged, &set, NOW, Duration::seconds(60)),
        Err(TokenError::BadSignature)
    );
}

/// The attack catalogue against the one JWS verifier every acceptance point uses.
#[test]
fn jwt_attack_catalogue() {
    let k = keys();
    let set = jwks(&[ec_jwk(&k.ec, "ec"), rsa_jwk(&k.rsa, "rsa")]);
    let good = sign(Algorithm::ES256, &k.ec, Some("ec"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let raw = |header: &str, payload: &str, sig: &str| {
        format!("{}.{}.{sig}", B64.encode(header), B64.encode(payload))
    };
    let attacker = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let with_header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "kid": "ec"});
        for (k2, v) in extra.as_object().unwrap() {
            h[k2] = v.clone();
        }
        // Signed by the attacker's key, which the header offers in every way it can.
        let input = format!("{}.{}", B64.encode(h.to_string()), parts[1]);
        let sig = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &attacker.serialize_der(),
        )
        .unwrap()
        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    };
    let claims_json = claims().to_string();
    let mut non_canonical = parts[2].to_string();
    // Flip bits that a canonical base64url encoding of the 64-byte signature leaves zero.
    let last = non_canonical.pop().unwrap();
    let idx = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        .find(last)
        .unwrap();
    non_canonical.push(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".as_bytes()[idx | 1]
            as char,
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw(r#"{"alg":"none","kid":"ec"}"#, &claims_json, ""),
        ),
        (
            "alg none, signed",
            raw(r#"{"alg":"none","kid":"ec"}"#, &claims_json, "c2ln"),
        ),
        (
            "alg None",
            raw(r#"{"alg":"None","kid":"ec"}"#, &claims_json, "c2ln"),
        ),
        (
            "HS256",
            raw(r#"{"alg":"HS256","kid":"rsa"}"#, &claims_json, "c2ln"),
        ),
        (
            "kid path traversal",
            with_header(json!({"kid": "../../../../dev/null"})),
        ),
        (
            "kid SQL injection",
            with_header(json!({"kid": "' OR '1'='1' --"})),
        ),
        ("kid NUL", with_header(json!({"kid": "ec\u{0000}"}))),
        (
            "jku",
            with_header(json!({"jku": "http://127.0.0.1:1/jwks"})),
        ),
        (
            "x5u",
            with_header(json!({"x5u": "http://127.0.0.1:1/cert"})),
        ),
        (
            "embedded jwk",
            with_header(json!({"jwk": ec_jwk(&attacker, "ec")})),
        ),
        ("crit", with_header(json!({"crit": ["exp"]}))),
        (
            "duplicate alg",
            format!(
                "{}.{}.{}",
                B64.encode(r#"{"alg":"ES256","kid":"ec","alg":"none"}"#),
                parts[1],
                parts[2]
            ),
        ),
        (
            "duplicate claim",
            format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(format!(r#"{{"sub":"x",{}"#, &claims_json[1..])),
                parts[2]
            ),
        ),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]),
        ),
        (
            "non-canonical base64",
            format!("{}.{}.{non_canonical}", parts[0], parts[1]),
        ),
        (
            "padding",
            format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        ),
        ("four parts", format!("{good}.x")),
        (
            "expired",
            sign(
                Algorithm::ES256,
                &k.ec,
                Some("ec"),
                &with(claims(), "exp", json!(NOW.unix_timestamp() - 3600)),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::ES256,
                &k.ec,
                Some("ec"),
                &with(claims(), "nbf", json!(NOW.unix_timestamp() + 3600)),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::ES256,
                &k.ec,
                Some("ec"),
                &with(claims(), "iss", json!("https://evil")),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                &k.ec,
                Some("ec"),
                &with(claims(), "aud", json!("evil")),
            ),
        ),
    ];
    for (what, token) in cases {
        let result = verify_service_account_token(&token, &set, &policy(), NOW);
        assert!(result.is_err(), "{what} was accepted");
    }
    // And the genuine token still passes, so the refusals are about the attacks.
    verify_service_account_token(&good, &set, &policy(), NOW).unwrap();
}

#[test]
fn every_allowed_family_verifies_and_jwk_alg_pins_the_algorithm() {
    let k = keys();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let point = p384.public_key_raw();
    let p384_jwk = json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": B64.encode(&point[1..49]), "y": B64.encode(&point[49..97])});
    let mut rsa_any = rsa_jwk(&k.rsa, "rsa-any");
    rsa_any.as_object_mut().unwrap().remove("alg");
    let set = jwks(&[
        ec_jwk(&k.ec, "ec"),
        rsa_jwk(&k.rsa, "rsa"),
        rsa_any,
        p384_jwk,
    ]);
    let es384 = {
        let mut h = Header::new(Algorithm::ES384);
        h.kid = Some("p384".into());
        jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_ec_der(&p384.serialize_der()),
        )
        .unwrap()
    };
    verify_service_account_token(&es384, &set, &policy(), NOW).expect("ES384");
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        verify_service_account_token(
            &sign(alg, &k.rsa, Some("rsa-any"), &claims()),
            &set,
            &policy(),
            NOW,
        )
        .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        // The same key published with "alg": "RS256" is not used for anything else.
        assert_eq!(
            verify_service_account_token(
                &sign(alg, &k.rsa, Some("rsa"), &claims()),
                &set,
                &policy(),
                NOW
            ),
            Err(TokenError::NoMatchingKey),
            "{alg:?}"
        );
    }
    // Without a kid, two RSA keys fit RS256: ambiguous, refused rather than guessed.
    assert_eq!(
        verify_service_account_token(
            &sign(Algorithm::RS256, &k.rsa, None, &claims()),
            &set,
            &policy(),
            NOW
        ),
        Err(TokenError::NoMatchingKey)
    );
    // `aud` may be a single string.
    let v = verify_service_account_token(
        &sign(
            Algorithm::ES256,
            &k.ec,
            Some("ec"),
            &with(claims(), "aud", json!(AUD)),
        ),
        &set,
        &policy(),
        NOW,
    )
    .unwrap();
    assert_eq!(v.audiences, [AUD]);
    // No exp at all is malformed, not "expired".
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verify_service_account_token(
            &sign(Algorithm::ES256, &k.ec, Some("ec"), &no_exp),
            &set,
            &policy(),
            NOW
        ),
        Err(TokenError::Malformed("exp claim is required"))
    );
}

#[test]
fn jwks_keys_are_checked_when_registered() {
    let k = keys();
    let parse = |v: Value| Jwks::parse(&serde_json::to_vec(&json!({ "keys": [v] })).unwrap());
    for e in ["AQ", "Ag", "AQAAAAE", ""] {
        let mut key = rsa_jwk(&k.rsa, "r");
        key["e"] = json!(e);
        assert_eq!(
            parse(key).err(),
            Some(JwksError::BadRsaExponent(0)),
            "e={e}"
        );
    }
    let mut key = rsa_jwk(&k.rsa, "r");
    key["e"] = json!("Aw");
    assert!(parse(key).is_ok(), "e = 3");

    let good = ec_jwk(&k.ec, "e");
    let mut off_curve = good.clone();
    let mut y = B64.decode(good["y"].as_str().unwrap()).unwrap();
    y[31] ^= 1;
    off_curve["y"] = json!(B64.encode(&y));
    assert_eq!(parse(off_curve).err(), Some(JwksError::InvalidEcPoint(0)));
    let mut short = good.clone();
    short["x"] = json!(B64.encode([7u8; 31]));
    assert_eq!(parse(short).err(), Some(JwksError::Malformed(0)));
    let mut wrong_curve = good.clone();
    wrong_curve["crv"] = json!("P-384");
    assert_eq!(parse(wrong_curve).err(), Some(JwksError::Malformed(0)));
    let mut zero = good;
    zero["x"] = json!(B64.encode([0u8; 32]));
    zero["y"] = json!(B64.encode([0u8; 32]));
    assert_eq!(parse(zero).err(), Some(JwksError::InvalidEcPoint(0)));
}

#[test]
fn minting_refuses_lifetimes_it_cannot_represent() {
    let (signer, _) = TokenSigner::generate().unwrap();
    let req = |lifetime| MintRequest {
        kind: TokenKind::Access,
        issuer: "https://cc.example",
        subject: "s",
        audience: AUD,
        scope: None,
        lifetime,
        extra: serde_json::Map::from_iter([("iss".to_string(), json!("https://evil"))]),
    };
    assert!(matches!(
        signer.mint(&req(Duration::MAX), NOW),
        Err(clustercred_authority::AuthorityError::LifetimeTooLong)
    ));
    assert!(matches!(
        signer.mint(&req(Duration::ZERO), NOW),
        Err(clustercred_authority::AuthorityError::BadLifetime)
    ));
    // Extra claims never override the standard ones.
    let minted = signer.mint(&req(Duration::minutes(5)), NOW).unwrap();
    let claims = signer
        .verify(
            &minted.token,
            TokenKind::Access,
            "https://cc.example",
            AUD,
            NOW,
        )
        .unwrap();
    assert_eq!(claims["iss"], json!("https://cc.example"));
    let header: Value =
        serde_json::from_slice(&B64.decode(minted.token.split('.').next().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "at+jwt", "kid": signer.kid()})
    );
    assert_eq!(claims["token_use"], json!("access"));
}
