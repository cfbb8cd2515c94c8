//! Tokens: verification of attached clusters' Kubernetes service-account JWTs against the JWKS registered
//! with the cluster, and clustercred's own ES256 access tokens.

use std::collections::HashSet;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ParsedPublicKey, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::AuthorityError;

const MAX_JWKS_BYTES: usize = 64 * 1024;
const MAX_JWKS_KEYS: usize = 64;
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// JWK members that only private keys carry (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not valid JSON of the form {{\"keys\": [...]}}")]
    NotJwks,
    #[error("JWKS has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    #[error("JWKS has no keys")]
    Empty,
    #[error("JWKS key {0} carries private key material")]
    PrivateKey(usize),
    #[error(
        "JWKS key {0} is symmetric or of an unsupported type (RSA and EC P-256/P-384 are supported)"
    )]
    UnsupportedKey(usize),
    #[error("JWKS key {0} is an RSA key below 2048 bits")]
    WeakRsa(usize),
    #[error("JWKS key {0} has an RSA exponent that is not odd, at least 3 and below 2^32")]
    BadRsaExponent(usize),
    #[error("JWKS key {0} is not a valid point on its curve")]
    InvalidEcPoint(usize),
    #[error("JWKS key {0} is malformed")]
    Malformed(usize),
    #[error("JWKS has two keys with the same kid")]
    DuplicateKid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    P256,
    P384,
}

struct JwksKey {
    kid: Option<String>,
    alg: Option<String>,
    family: KeyFamily,
    key: DecodingKey,
}

/// A validated set of public keys of an OIDC issuer (the default is the empty set, which verifies nothing).
#[derive(Default)]
pub struct Jwks {
    keys: Vec<JwksKey>,
}

impl Jwks {
    pub fn parse(json: &[u8]) -> Result<Jwks, JwksError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: Value = serde_json::from_slice(json).map_err(|_| JwksError::NotJwks)?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotJwks)?;
        if list.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys = Vec::with_capacity(list.len());
        let mut kids = HashSet::new();
        for (i, raw) in list.iter().enumerate() {
            let object = raw.as_object().ok_or(JwksError::Malformed(i))?;
            if PRIVATE_MEMBERS.iter().any(|m| object.contains_key(*m)) {
                return Err(JwksError::PrivateKey(i));
            }
            let kid = match object.get("kid") {
                None => None,
                Some(Value::String(k)) => Some(k.clone()),
                Some(_) => return Err(JwksError::Malformed(i)),
            };
            if let Some(k) = &kid
                && !kids.insert(k.clone())
            {
                return Err(JwksError::DuplicateKid);
            }
            let alg = match object.get("alg") {
                None => None,
                Some(Value::String(a)) => Some(a.clone()),
                Some(_) => return Err(JwksError::Malformed(i)),
            };
            match object.get("kty").and_then(Value::as_str) {
                Some("RSA") | Some("EC") => {}
                _ => return Err(JwksError::UnsupportedKey(i)),
            }
            let jwk: Jwk =
                serde_json::from_value(raw.clone()).map_err(|_| JwksError::Malformed(i))?;
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(rsa) => {
                    let n = URL_SAFE_NO_PAD
                        .decode(rsa.n.as_bytes())
                        .map_err(|_| JwksError::Malformed(i))?;
                    let n: &[u8] = &n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..];
                    let bits = n
                        .first()
                        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
                    if bits < 2048 {
                        return Err(JwksError::WeakRsa(i));
                    }
                    if bits > 8192 {
                        return Err(JwksError::Malformed(i));
                    }
                    // The same exponent rule as for client keys; e = 1 would make signatures forgeable.
                    let e = URL_SAFE_NO_PAD
                        .decode(rsa.e.as_bytes())
                        .map_err(|_| JwksError::Malformed(i))?;
                    let e: &[u8] = &e[e.iter().position(|b| *b != 0).unwrap_or(e.len())..];
                    let odd = e.last().is_some_and(|b| b & 1 == 1);
                    let at_least_3 = e.len() > 1 || e.first().is_some_and(|b| *b >= 3);
                    if !odd || !at_least_3 || e.len() > 4 {
                        return Err(JwksError::BadRsaExponent(i));
                    }
                    KeyFamily::Rsa
                }
                AlgorithmParameters::EllipticCurve(ec) => {
                    let (family, size, check): (_, _, &'static dyn VerificationAlgorithm) =
                        match ec.curve {
                            EllipticCurve::P256 => (KeyFamily::P256, 32, &ECDSA_P256_SHA256_FIXED),
                            EllipticCurve::P384 => (KeyFamily::P384, 48, &ECDSA_P384_SHA384_FIXED),
                            _ => return Err(JwksError::UnsupportedKey(i)),
                        };
                    // Coordinates are fixed-size (RFC 7518 6.2.1.2); the point must lie on the curve, so a
                    // bad key is reported when the set is registered, not on every token.
                    let x = URL_SAFE_NO_PAD
                        .decode(ec.x.as_bytes())
                        .map_err(|_| JwksError::Malformed(i))?;
                    let y = URL_SAFE_NO_PAD
                        .decode(ec.y.as_bytes())
                        .map_err(|_| JwksError::Malformed(i))?;
                    if x.len() != size || y.len() != size {
                        return Err(JwksError::Malformed(i));
                    }
                    let point = [&[0x04][..], &x, &y].concat();
                    ParsedPublicKey::new(check, point).map_err(|_| JwksError::InvalidEcPoint(i))?;
                    family
                }
                _ => return Err(JwksError::UnsupportedKey(i)),
            };
            let key = DecodingKey::from_jwk(&jwk).map_err(|_| JwksError::Malformed(i))?;
            keys.push(JwksKey {
                kid,
                alg,
                family,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(Jwks { keys })
    }

    /// A key set from public keys we hold ourselves (service-account keys): (kid, key). RSA only, as
    /// google-auth signs RS256.
    pub fn from_public_keys(keys: &[(String, crate::ClientPublicKey)]) -> Result<Jwks, JwksError> {
        use x509_parser::prelude::FromDer;
        let mut out = Vec::with_capacity(keys.len());
        for (i, (kid, key)) in keys.iter().enumerate() {
            let (family, decoding) = match key.algorithm() {
                crate::PublicKeyAlgorithm::Rsa { .. } => {
                    let (_, spki) =
                        x509_parser::x509::SubjectPublicKeyInfo::from_der(key.spki_der())
                            .map_err(|_| JwksError::Malformed(i))?;
                    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                        return Err(JwksError::Malformed(i));
                    };
                    // DER INTEGERs carry a leading zero byte when the top bit is set; the raw
                    // components jsonwebtoken expects do not.
                    let strip = |b: &[u8]| -> Vec<u8> {
                        b.iter().skip_while(|x| **x == 0).copied().collect()
                    };
                    let (n, e) = (strip(rsa.modulus), strip(rsa.exponent));
                    (KeyFamily::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
                }
                _ => return Err(JwksError::UnsupportedKey(i)),
            };
            out.push(JwksKey {
                kid: Some(kid.clone()),
                alg: None,
                family,
                key: decoding,
            });
        }
        Ok(Jwks { keys: out })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenErrorKind {
    /// The request is malformed (INVALID_ARGUMENT).
    Malformed,
    /// The token is well-formed but not acceptable (UNAUTHENTICATED).
    Rejected,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "token algorithm {0:?} is not allowed (RS256/384/512, PS256/384/512, ES256, ES384 are)"
    )]
    DisallowedAlgorithm(String),
    #[error("token has a crit header, which is not supported")]
    CritHeader,
    #[error("token key id is not among the issuer's keys")]
    UnknownKeyId,
    #[error("no key of the issuer fits the token's algorithm")]
    NoMatchingKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token issuer is not the expected one")]
    WrongIssuer,
    #[error("token audience is not an accepted one")]
    WrongAudience,
    #[error("token is not of the kind expected here (an ID token is not an access token)")]
    WrongTokenKind,
    #[error(
        "token subject is not a Kubernetes service account (system:serviceaccount:<namespace>:<name>)"
    )]
    BadSubject,
}

impl TokenError {
    pub fn kind(&self) -> TokenErrorKind {
        match self {
            TokenError::Malformed(_) => TokenErrorKind::Malformed,
            _ => TokenErrorKind::Rejected,
        }
    }
}

pub struct SubjectTokenPolicy {
    pub issuer: String,
    pub accepted_audiences: Vec<String>,
    pub leeway: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedServiceAccount {
    pub issuer: String,
    pub subject: String,
    pub namespace: String,
    pub name: String,
    pub audiences: Vec<String>,
    pub expires_at: OffsetDateTime,
    pub token_id: Option<String>,
}

fn algorithm(name: &str) -> Result<(Algorithm, KeyFamily), TokenError> {
    Ok(match name {
        "RS256" => (Algorithm::RS256, KeyFamily::Rsa),
        "RS384" => (Algorithm::RS384, KeyFamily::Rsa),
        "RS512" => (Algorithm::RS512, KeyFamily::Rsa),
        "PS256" => (Algorithm::PS256, KeyFamily::Rsa),
        "PS384" => (Algorithm::PS384, KeyFamily::Rsa),
        "PS512" => (Algorithm::PS512, KeyFamily::Rsa),
        "ES256" => (Algorithm::ES256, KeyFamily::P256),
        "ES384" => (Algorithm::ES384, KeyFamily::P384),
        other => {
            return Err(TokenError::DisallowedAlgorithm(
                other.chars().take(16).collect(),
            ));
        }
    })
}

/// Splits a compact JWS and returns its decoded header, refusing anything but three base64url parts.
fn header_of(token: &str) -> Result<Map<String, Value>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("longer than 16 KiB"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(TokenError::Malformed(
            "not a compact JWS (three dot-separated parts)",
        ));
    };
    if payload.is_empty() || signature.is_empty() {
        return Err(TokenError::Malformed("empty payload or signature"));
    }
    URL_SAFE_NO_PAD
        .decode(signature.as_bytes())
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload.as_bytes())
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header.as_bytes())
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    // Two parsers may pick different copies of a repeated member: refuse repeats outright.
    if has_duplicate_keys(&bytes) || has_duplicate_keys(&payload) {
        return Err(TokenError::Malformed("a JSON member is repeated"));
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed("header is not a JSON object")),
    }
}

/// Whether any JSON object in `json` repeats a member name (at any depth). Invalid JSON answers false: the
/// parse that follows reports it.
fn has_duplicate_keys(json: &[u8]) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(serde::de::Error::custom("duplicate member"));
                }
                map.next_value_seed(CheckSeed)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(CheckSeed)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    struct CheckSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for CheckSeed {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Check)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    match serde::de::DeserializeSeed::deserialize(CheckSeed, &mut de) {
        Ok(()) => false,
        Err(e) => e.to_string().starts_with("duplicate member"),
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or(TokenError::Malformed("time claim is not a number")),
    }
}

fn is_dns_label_or_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The unverified `kid` and claims of a compact JWS, to decide which keys to verify it with. Nothing read here
/// may be trusted before `verify_jwt` succeeds.
pub fn peek_jwt(token: &str) -> Result<(Option<String>, Map<String, Value>), TokenError> {
    let header = header_of(token)?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let payload = token
        .split('.')
        .nth(1)
        .ok_or(TokenError::Malformed("no payload"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.as_bytes())
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(claims)) => Ok((kid, claims)),
        _ => Err(TokenError::Malformed("payload is not a JSON object")),
    }
}

/// Verifies a compact JWS against `jwks`: an asymmetric algorithm (never `none` or HMAC), no `crit`, the key
/// chosen by `kid`, the signature, `exp` (required), `nbf` and `iat` with `leeway`. Issuer, audience and
/// subject are the caller's to check on the returned claims.
pub fn verify_jwt(
    token: &str,
    jwks: &Jwks,
    now: OffsetDateTime,
    leeway: Duration,
) -> Result<Map<String, Value>, TokenError> {
    let header = header_of(token)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed("header has no alg"))?;
    let (alg, family) = algorithm(alg_name)?;
    if header.contains_key("crit") {
        return Err(TokenError::CritHeader);
    }
    // jku, x5u, jwk and x5c are never used: keys come only from `jwks`.
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(TokenError::Malformed("kid is not a string")),
    };
    let fits = |k: &&JwksKey| k.family == family && k.alg.as_deref().is_none_or(|a| a == alg_name);
    let key = match kid {
        Some(kid) => {
            let key = jwks
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(TokenError::UnknownKeyId)?;
            if !fits(&key) {
                return Err(TokenError::NoMatchingKey);
            }
            key
        }
        None => {
            let mut candidates = jwks.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => k,
                _ => return Err(TokenError::NoMatchingKey),
            }
        }
    };

    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::NoMatchingKey,
                _ => TokenError::Malformed("payload is not a JSON object of claims"),
            }
        })?;
    let claims = data.claims;
    let leeway = leeway.whole_seconds();
    let now_s = now.unix_timestamp();
    let exp =
        numeric_date(&claims, "exp")?.ok_or(TokenError::Malformed("exp claim is required"))?;
    if now_s > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_s < nbf.saturating_sub(leeway)
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && iat > now_s.saturating_add(leeway)
    {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(claims)
}

/// A NumericDate claim (`exp`, `iat`, ...) as Unix seconds.
pub fn claim_time(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    numeric_date(claims, name)
}

/// Verifies a Kubernetes service-account JWT (RFC 7519/7515) against the cluster's JWKS.
pub fn verify_service_account_token(
    token: &str,
    jwks: &Jwks,
    policy: &SubjectTokenPolicy,
    now: OffsetDateTime,
) -> Result<VerifiedServiceAccount, TokenError> {
    let claims = verify_jwt(token, jwks, now, policy.leeway)?;
    let exp =
        numeric_date(&claims, "exp")?.ok_or(TokenError::Malformed("exp claim is required"))?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::WrongIssuer)?;
    if issuer != policy.issuer {
        return Err(TokenError::WrongIssuer);
    }
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => return Err(TokenError::WrongAudience),
    };
    if !audiences
        .iter()
        .any(|a| policy.accepted_audiences.contains(a))
    {
        return Err(TokenError::WrongAudience);
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(TokenError::BadSubject)?;
    let (namespace, name) = subject
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or(TokenError::BadSubject)?;
    if !is_dns_label_or_subdomain(namespace) || !is_dns_label_or_subdomain(name) {
        return Err(TokenError::BadSubject);
    }
    let expires_at = OffsetDateTime::from_unix_timestamp(exp)
        .map_err(|_| TokenError::Malformed("exp out of range"))?;
    Ok(VerifiedServiceAccount {
        issuer: issuer.to_string(),
        subject: subject.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        audiences,
        expires_at,
        token_id: claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// What a token minted by clustercred is for, carried in its `token_use` claim (and the `typ` header: RFC 9068
/// `at+jwt` for access tokens), so one kind is never accepted where another is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Access to clustercred's own APIs (token endpoint, for a service account).
    Access,
    /// An OpenID Connect ID token for another audience.
    Id,
    /// An attached cluster's agent access token (token exchange).
    Agent,
}

impl TokenKind {
    pub fn claim(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Id => "id",
            TokenKind::Agent => "agent",
        }
    }

    fn typ(self) -> &'static str {
        match self {
            TokenKind::Access | TokenKind::Agent => "at+jwt",
            TokenKind::Id => "JWT",
        }
    }
}

pub struct MintRequest<'a> {
    pub kind: TokenKind,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audience: &'a str,
    pub scope: Option<&'a str>,
    pub lifetime: Duration,
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug)]
pub struct MintedToken {
    pub token: String,
    pub token_id: String,
    pub expires_at: OffsetDateTime,
}

/// clustercred's own ES256 signing key.
pub struct TokenSigner {
    kid: String,
    encoding: EncodingKey,
    /// Our own public key as a one-key set, so our tokens go through the same verifier as everyone's.
    own: Jwks,
    x: String,
    y: String,
}

impl TokenSigner {
    pub fn generate() -> Result<(TokenSigner, Zeroizing<Vec<u8>>), AuthorityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AuthorityError::KeyGeneration(e.to_string()))?;
        let der = Zeroizing::new(key.serialize_der());
        Ok((TokenSigner::from_pkcs8(&der)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<TokenSigner, AuthorityError> {
        let key = rcgen::KeyPair::try_from(der)
            .map_err(|e| AuthorityError::BadMaterial(e.to_string()))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(AuthorityError::BadMaterial(
                "token signing key must be ECDSA P-256".into(),
            ));
        }
        let point = key.public_key_raw();
        let (x, y) = match point {
            [0x04, rest @ ..] if rest.len() == 64 => (&rest[..32], &rest[32..]),
            _ => {
                return Err(AuthorityError::BadMaterial(
                    "unexpected P-256 point encoding".into(),
                ));
            }
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..16]);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| AuthorityError::BadMaterial(e.to_string()))?;
        let own = Jwks {
            keys: vec![JwksKey {
                kid: Some(kid.clone()),
                alg: Some("ES256".into()),
                family: KeyFamily::P256,
                key: decoding,
            }],
        };
        Ok(TokenSigner {
            kid,
            encoding: EncodingKey::from_ec_der(der),
            own,
            x,
            y,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        })
    }

    pub fn mint(
        &self,
        req: &MintRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<MintedToken, AuthorityError> {
        if req.lifetime <= Duration::ZERO {
            return Err(AuthorityError::BadLifetime);
        }
        // Ascending like certificate serials (time, then 80 random bits), so the store's token index grows at
        // its end instead of taking a page write per token.
        let token_id = hex::encode(crate::random_serial());
        let expires_at = now
            .checked_add(req.lifetime)
            .ok_or(AuthorityError::LifetimeTooLong)?;
        let mut claims = req.extra.clone();
        let standard = [
            ("iss", Value::from(req.issuer)),
            ("sub", Value::from(req.subject)),
            ("aud", Value::from(req.audience)),
            ("iat", Value::from(now.unix_timestamp())),
            ("nbf", Value::from(now.unix_timestamp())),
            ("exp", Value::from(expires_at.unix_timestamp())),
            ("jti", Value::from(token_id.clone())),
            ("token_use", Value::from(req.kind.claim())),
        ];
        for (k, v) in standard {
            claims.insert(k.into(), v);
        }
        if let Some(scope) = req.scope {
            claims.insert("scope".into(), scope.into());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(req.kind.typ().into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthorityError::Signing(e.to_string()))?;
        Ok(MintedToken {
            token,
            token_id,
            expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at),
        })
    }

    /// Verifies a token of `kind` this signer minted for `audience`.
    pub fn verify(
        &self,
        token: &str,
        kind: TokenKind,
        issuer: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<Map<String, Value>, TokenError> {
        let claims = verify_jwt(token, &self.own, now, Duration::ZERO)?;
        // Our tokens are dead from their `exp` second on, with no leeway: we set both clocks.
        let exp =
            numeric_date(&claims, "exp")?.ok_or(TokenError::Malformed("exp claim is required"))?;
        if now.unix_timestamp() >= exp {
            return Err(TokenError::Expired);
        }
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(TokenError::WrongIssuer);
        }
        if claims.get("aud").and_then(Value::as_str) != Some(audience) {
            return Err(TokenError::WrongAudience);
        }
        if claims.get("token_use").and_then(Value::as_str) != Some(kind.claim()) {
            return Err(TokenError::WrongTokenKind);
        }
        Ok(claims)
    }
}

/// The JWKS document publishing the verification keys of `signers`.
pub fn jwks_document(signers: &[&TokenSigner]) -> Value {
    serde_json::json!({ "keys": signers.iter().map(|s| s.public_jwk()).collect::<Vec<_>>() })
}
