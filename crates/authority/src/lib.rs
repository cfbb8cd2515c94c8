//! The core of clustercred: cluster CAs, client-certificate issuance, public-key parsing, key generation,
//! verification of attached clusters' service-account tokens and minting of clustercred's own tokens.
//! Synchronous and free of I/O: time comes in as arguments, so callers and tests control the clock.

mod ca;
mod error;
mod keys;
mod keywrap;
mod token;

pub use ca::{CaMaterial, CaParams, CaSigner, ClusterCa, IssuedCertificate, LeafRequest};
pub use error::AuthorityError;
pub use keys::{
    ClientPublicKey, GeneratedKeyAlgorithm, GeneratedKeyPair, KeyError, PublicKeyAlgorithm,
    generate_key_pair,
};
pub use keywrap::{MASTER_KEY_LEN, MasterKey};
pub use token::{
    Jwks, JwksError, MintRequest, MintedToken, SubjectTokenPolicy, TokenError, TokenErrorKind,
    TokenKind, TokenSigner, VerifiedServiceAccount, claim_time, jwks_document, peek_jwt,
    verify_jwt, verify_service_account_token,
};

/// 128 random bits, positive as a DER INTEGER (RFC 5280 allows up to 20 octets; CAs must use at least 64
/// bits of randomness).
pub(crate) fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    // A leading zero octet would be dropped by DER and shorten the serial; keep the top byte non-zero.
    serial[0] |= 0x01;
    serial
}
