//! Keys at rest: every private key clustercred keeps (cluster CAs, token-signing keys) is sealed with
//! AES-256-GCM under a key-encryption key that is not in the database. The record's identity is the
//! additional authenticated data, so a sealed key cannot be moved to another record.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::AuthorityError;

/// Format version of a sealed blob: `[1] || nonce (12) || ciphertext || tag (16)`.
const VERSION: u8 = 1;
pub const MASTER_KEY_LEN: usize = 32;

/// The key-encryption key. Its bytes are wiped when it is dropped.
pub struct MasterKey {
    key: LessSafeKey,
    /// A short public fingerprint, to tell keys apart in logs and errors.
    id: String,
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, AuthorityError> {
        if bytes.len() != MASTER_KEY_LEN {
            return Err(AuthorityError::BadMaterial(format!(
                "the master key must be {MASTER_KEY_LEN} bytes, not {}",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| AuthorityError::BadMaterial("unusable master key".into()))?;
        use sha2::Digest;
        let id = hex::encode(
            &sha2::Sha256::digest([b"clustercred master key id\0".as_slice(), bytes].concat())[..6],
        );
        Ok(MasterKey {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// A fresh random key (first start), returned with its bytes to be written to a file.
    pub fn generate() -> Result<(MasterKey, Zeroizing<Vec<u8>>), AuthorityError> {
        let mut bytes = Zeroizing::new(vec![0u8; MASTER_KEY_LEN]);
        SystemRandom::new().fill(&mut bytes).map_err(|_| {
            AuthorityError::KeyGeneration("no randomness for the master key".into())
        })?;
        Ok((MasterKey::from_bytes(&bytes)?, bytes))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext`, bound to `context` (e.g. `ca:projects/p/locations/l/clusters/c`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, AuthorityError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| AuthorityError::KeyGeneration("no randomness for a nonce".into()))?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| AuthorityError::Signing("sealing a key failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    /// Opens a sealed key; fails if it was sealed under another key or for another context, or was altered.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Zeroizing<Vec<u8>>, AuthorityError> {
        let bad = || {
            AuthorityError::BadMaterial(format!(
                "a stored key does not open with master key {} (wrong key, moved or altered record)",
                self.id
            ))
        };
        let (version, rest) = sealed.split_first().ok_or_else(bad)?;
        if *version != VERSION || rest.len() < NONCE_LEN + 16 {
            return Err(bad());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| bad())?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key_and_context() {
        let (master, bytes) = MasterKey::generate().unwrap();
        let sealed = master.seal(b"secret key material", "ca:one").unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "no plaintext in the blob"
        );
        assert_eq!(
            master.open(&sealed, "ca:one").unwrap().as_slice(),
            b"secret key material"
        );
        assert!(
            master.open(&sealed, "ca:two").is_err(),
            "bound to its record"
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(master.open(&altered, "ca:one").is_err());
        let (other, _) = MasterKey::generate().unwrap();
        assert!(other.open(&sealed, "ca:one").is_err());
        assert_ne!(master.id(), other.id());
        let same = MasterKey::from_bytes(&bytes).unwrap();
        assert_eq!(same.id(), master.id());
        assert_ne!(
            master.seal(b"x", "c").unwrap(),
            master.seal(b"x", "c").unwrap(),
            "fresh nonce each time"
        );
        assert!(MasterKey::from_bytes(&[0; 16]).is_err());
    }
}
