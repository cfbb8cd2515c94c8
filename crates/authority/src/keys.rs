//! Client public keys as the AlloyDB connectors send them (SubjectPublicKeyInfo or PKCS#1 PEM), and key
//! pairs we generate for offline credentials.

use aws_lc_rs::signature::{self, ParsedPublicKey};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::AuthorityError;

const MAX_PEM_LEN: usize = 16 * 1024;
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyAlgorithm {
    Rsa { bits: usize },
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is larger than {MAX_PEM_LEN} bytes")]
    TooLarge,
    #[error("public key is not PEM (expected -----BEGIN PUBLIC KEY-----)")]
    NotPem,
    #[error("public key must be exactly one PEM block")]
    MultiplePemBlocks,
    #[error("PEM label {0:?} is not a public key (expected PUBLIC KEY or RSA PUBLIC KEY)")]
    UnsupportedPemLabel(String),
    #[error("public key is malformed: {0}")]
    Malformed(&'static str),
    #[error("public key algorithm {0} is not supported (RSA, ECDSA P-256/P-384 and Ed25519 are)")]
    UnsupportedAlgorithm(String),
    #[error("RSA key of {bits} bits is too weak (at least 2048 bits)")]
    RsaTooSmall { bits: usize },
    #[error("RSA key of {bits} bits is too large (at most 8192 bits)")]
    RsaTooLarge { bits: usize },
    #[error("RSA public exponent must be odd, at least 3 and below 2^32")]
    BadRsaExponent,
    #[error("public key is not a valid point on its curve")]
    InvalidEcPoint,
}

/// A caller's public key, normalised to SubjectPublicKeyInfo DER and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPublicKey {
    spki_der: Vec<u8>,
    algorithm: PublicKeyAlgorithm,
}

impl ClientPublicKey {
    /// Accepts exactly one PEM block: `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(input: &str) -> Result<Self, KeyError> {
        if input.len() > MAX_PEM_LEN {
            return Err(KeyError::TooLarge);
        }
        let blocks = pem::parse_many(input.trim()).map_err(|_| KeyError::NotPem)?;
        let block = match blocks.as_slice() {
            [] => return Err(KeyError::NotPem),
            [one] => one,
            _ => return Err(KeyError::MultiplePemBlocks),
        };
        // parse_many skips text between blocks; refuse anything around the one block.
        let trimmed = input.trim();
        if !trimmed.starts_with("-----BEGIN ") || !trimmed.ends_with("-----") {
            return Err(KeyError::Malformed("unexpected text around the PEM block"));
        }
        match block.tag() {
            "PUBLIC KEY" => Self::from_spki_der(block.contents()),
            "RSA PUBLIC KEY" => Self::from_spki_der(&wrap_pkcs1(block.contents())),
            other => Err(KeyError::UnsupportedPemLabel(
                other.chars().take(40).collect(),
            )),
        }
    }

    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| KeyError::Malformed("not a SubjectPublicKeyInfo"))?;
        if !rest.is_empty() {
            return Err(KeyError::Malformed("trailing data after the key"));
        }
        let oid = spki.algorithm.algorithm.to_id_string();
        let key_bytes: &[u8] = &spki.subject_public_key.data;
        let algorithm = match oid.as_str() {
            OID_RSA => {
                let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                    return Err(KeyError::Malformed("RSA key does not parse"));
                };
                let modulus = strip_zeros(rsa.modulus);
                let bits = modulus
                    .first()
                    .map_or(0, |b| modulus.len() * 8 - b.leading_zeros() as usize);
                if bits < 2048 {
                    return Err(KeyError::RsaTooSmall { bits });
                }
                if bits > 8192 {
                    return Err(KeyError::RsaTooLarge { bits });
                }
                let exponent = strip_zeros(rsa.exponent);
                let odd = exponent.last().is_some_and(|b| b & 1 == 1);
                let at_least_3 = exponent.len() > 1 || exponent.first().is_some_and(|b| *b >= 3);
                if !odd || !at_least_3 || exponent.len() > 4 {
                    return Err(KeyError::BadRsaExponent);
                }
                ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, key_bytes)
                    .map_err(|_| KeyError::Malformed("RSA key rejected"))?;
                PublicKeyAlgorithm::Rsa { bits }
            }
            OID_EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .ok_or(KeyError::Malformed("EC key without a named curve"))?;
                let (algorithm, verify): (_, &'static dyn signature::VerificationAlgorithm) =
                    match curve.as_str() {
                        OID_P256 => (
                            PublicKeyAlgorithm::EcdsaP256,
                            &signature::ECDSA_P256_SHA256_ASN1,
                        ),
                        OID_P384 => (
                            PublicKeyAlgorithm::EcdsaP384,
                            &signature::ECDSA_P384_SHA384_ASN1,
                        ),
                        other => {
                            return Err(KeyError::UnsupportedAlgorithm(format!(
                                "ECDSA on curve {}",
                                known_name(other)
                            )));
                        }
                    };
                ParsedPublicKey::new(verify, key_bytes).map_err(|_| KeyError::InvalidEcPoint)?;
                algorithm
            }
            OID_ED25519 => {
                if spki.algorithm.parameters.is_some() || key_bytes.len() != 32 {
                    return Err(KeyError::Malformed(
                        "Ed25519 key must be 32 bytes without parameters",
                    ));
                }
                ParsedPublicKey::new(&signature::ED25519, key_bytes)
                    .map_err(|_| KeyError::InvalidEcPoint)?;
                PublicKeyAlgorithm::Ed25519
            }
            other => return Err(KeyError::UnsupportedAlgorithm(known_name(other))),
        };
        Ok(ClientPublicKey {
            spki_der: der.to_vec(),
            algorithm,
        })
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn algorithm(&self) -> PublicKeyAlgorithm {
        self.algorithm
    }

    pub fn sha256_fingerprint_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.spki_der))
    }

    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }
}

/// A readable name for algorithm and curve identifiers people commonly send, for error messages; others
/// are shown as a (bounded) dotted OID.
fn known_name(oid: &str) -> String {
    let name = match oid {
        "1.2.840.10040.4.1" => "DSA",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        "1.3.101.113" => "Ed448",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        "1.2.840.10045.3.1.1" => "P-192",
        "1.3.132.0.33" => "P-224",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        _ => {
            return format!(
                "with identifier {}",
                oid.chars().take(64).collect::<String>()
            );
        }
    };
    name.to_string()
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// DER length octets.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// SubjectPublicKeyInfo { rsaEncryption, NULL } around a PKCS#1 RSAPublicKey (RFC 8017 A.1.1, RFC 5280).
fn wrap_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bit_string);
    bit_string.push(0);
    bit_string.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALG.len() + bit_string.len(), &mut out);
    out.extend_from_slice(ALG);
    out.extend_from_slice(&bit_string);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratedKeyAlgorithm {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

pub struct GeneratedKeyPair {
    /// PKCS#8, `-----BEGIN PRIVATE KEY-----`.
    pub private_key_pem: Zeroizing<String>,
    pub public_key: ClientPublicKey,
}

pub fn generate_key_pair(
    algorithm: GeneratedKeyAlgorithm,
) -> Result<GeneratedKeyPair, AuthorityError> {
    use rcgen::{KeyPair, PublicKeyData, RsaKeySize};
    let key = match algorithm {
        GeneratedKeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        GeneratedKeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        GeneratedKeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
        }
        GeneratedKeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
    }
    .map_err(|e| AuthorityError::KeyGeneration(e.to_string()))?;
    let public_key = ClientPublicKey::from_spki_der(&key.subject_public_key_info())
        .map_err(|e| AuthorityError::KeyGeneration(e.to_string()))?;
    Ok(GeneratedKeyPair {
        private_key_pem: Zeroizing::new(key.serialize_pem()),
        public_key,
    })
}
