//! Anchoring the audit chain. The hash chain alone shows an edit in the middle, but not a log cut short at
//! its end or rewritten whole with fresh hashes. A checkpoint is an Ed25519 signature over (format version,
//! seq, head hash, time) made with a key sealed under the master key; a truncation leaves a checkpoint
//! pointing past the end, and a rewrite leaves checkpoints whose hashes are not on the new chain, neither of
//! which can be repaired without the key. An operator who keeps the public key elsewhere also catches a
//! rewrite that came with a fresh key.

use std::collections::HashMap;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use sha2::Digest;

use crate::{AUDIT_FORMAT_VERSION, StoredAuditEvent, verify_chain};

/// Domain separation: a checkpoint signature can never be mistaken for a signature over anything else.
const CHECKPOINT_DOMAIN: &[u8] = b"clustercred audit checkpoint\0";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum AnchorKeyError {
    #[error("generating the audit key failed")]
    Generate,
    #[error("the audit key is not an Ed25519 PKCS#8 key: {0}")]
    Rejected(String),
    #[error("not an Ed25519 public key (expected PEM `PUBLIC KEY` or 32 bytes in base64): {0}")]
    PublicKey(String),
}

/// A signed statement that the audit chain had `head_hash` at `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// Assigned by the store (0 before it is stored).
    pub id: i64,
    /// The audit format version the checkpoint was made under.
    pub version: u32,
    pub seq: i64,
    pub head_hash: Vec<u8>,
    pub time_unix_nanos: i64,
    /// The id of the key that signed it.
    pub kid: String,
    pub signature: Vec<u8>,
}

impl AuditCheckpoint {
    /// The bytes the signature covers; fixed-width fields, the hash length-prefixed.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m =
            Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 4 + 8 + 8 + self.head_hash.len() + 8);
        m.extend_from_slice(CHECKPOINT_DOMAIN);
        m.extend_from_slice(&self.version.to_be_bytes());
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&(self.head_hash.len() as u64).to_be_bytes());
        m.extend_from_slice(&self.head_hash);
        m.extend_from_slice(&self.time_unix_nanos.to_be_bytes());
        m
    }
}

/// The public half of an audit key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPublicKey([u8; 32]);

impl AuditPublicKey {
    pub fn from_raw(bytes: &[u8]) -> Result<Self, AnchorKeyError> {
        <[u8; 32]>::try_from(bytes)
            .map(AuditPublicKey)
            .map_err(|_| AnchorKeyError::PublicKey(format!("{} bytes", bytes.len())))
    }

    pub fn raw(&self) -> &[u8] {
        &self.0
    }

    /// The key id: the first 8 bytes of the key's SHA-256, in hex.
    pub fn kid(&self) -> String {
        let digest = sha2::Sha256::digest(self.0);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubin` reads it.
    pub fn to_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Reads what [`AuditPublicKey::to_pem`] writes, or the 32 raw bytes in base64.
    pub fn parse(text: &str) -> Result<Self, AnchorKeyError> {
        let text = text.trim();
        let body: String = match text.strip_prefix("-----BEGIN PUBLIC KEY-----") {
            Some(rest) => rest
                .split("-----END PUBLIC KEY-----")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect(),
            None => text.split_whitespace().collect(),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| AnchorKeyError::PublicKey(e.to_string()))?;
        match bytes.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) => Self::from_raw(raw),
            None if bytes.len() == 32 => Self::from_raw(&bytes),
            None => Err(AnchorKeyError::PublicKey(
                "not an Ed25519 SubjectPublicKeyInfo".into(),
            )),
        }
    }

    pub fn verifies(&self, checkpoint: &AuditCheckpoint) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&checkpoint.signed_message(), &checkpoint.signature)
            .is_ok()
    }
}

/// The private audit key, opened from its sealed form for signing checkpoints.
pub struct AuditSigner {
    pair: Ed25519KeyPair,
    public: AuditPublicKey,
}

impl AuditSigner {
    /// A new key and its PKCS#8 DER (to seal and store).
    pub fn generate() -> Result<(AuditSigner, zeroize::Zeroizing<Vec<u8>>), AnchorKeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AnchorKeyError::Generate)?;
        let der = zeroize::Zeroizing::new(doc.as_ref().to_vec());
        Ok((AuditSigner::from_pkcs8(&der)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<AuditSigner, AnchorKeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(der).map_err(|e| AnchorKeyError::Rejected(e.to_string()))?;
        let public = AuditPublicKey::from_raw(pair.public_key().as_ref())?;
        Ok(AuditSigner { pair, public })
    }

    pub fn public_key(&self) -> &AuditPublicKey {
        &self.public
    }

    pub fn kid(&self) -> String {
        self.public.kid()
    }

    /// A signed checkpoint of the chain head `(seq, head_hash)` at `time_unix_nanos`.
    pub fn checkpoint(&self, seq: i64, head_hash: &[u8], time_unix_nanos: i64) -> AuditCheckpoint {
        let mut c = AuditCheckpoint {
            id: 0,
            version: AUDIT_FORMAT_VERSION,
            seq,
            head_hash: head_hash.to_vec(),
            time_unix_nanos,
            kid: self.kid(),
            signature: Vec::new(),
        };
        c.signature = self.pair.sign(&c.signed_message()).as_ref().to_vec();
        c
    }
}

/// Keeps the chain head anchored: [`HeadAnchor::anchor`] signs and stores a checkpoint when the head moved
/// since the last one this process wrote (call it periodically and at shutdown).
pub struct HeadAnchor {
    signer: AuditSigner,
    last_seq: std::sync::Mutex<Option<i64>>,
}

impl HeadAnchor {
    pub fn new(signer: AuditSigner) -> Self {
        HeadAnchor {
            signer,
            last_seq: std::sync::Mutex::new(None),
        }
    }

    pub fn signer(&self) -> &AuditSigner {
        &self.signer
    }

    /// Writes a checkpoint of the current head unless there is none or it is already anchored.
    pub async fn anchor(
        &self,
        store: &dyn crate::Store,
        now_unix_nanos: i64,
    ) -> crate::Result<Option<AuditCheckpoint>> {
        let Some((seq, hash)) = store.audit_head().await? else {
            return Ok(None);
        };
        let last = self.last_seq.lock().map(|l| *l).unwrap_or(None);
        if last == Some(seq) {
            return Ok(None);
        }
        let mut checkpoint = self.signer.checkpoint(seq, &hash, now_unix_nanos);
        checkpoint.id = store.append_checkpoint(&checkpoint).await?;
        if let Ok(mut l) = self.last_seq.lock() {
            *l = Some(seq);
        }
        Ok(Some(checkpoint))
    }
}

/// What a complete verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorReport {
    pub events: usize,
    pub checkpoints: usize,
    /// The sequence number the newest checkpoint vouches for.
    pub newest_checkpoint_seq: Option<i64>,
}

/// Why an audit log is not what its checkpoints say it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnchorBreak(pub String);

/// Checks the chain, then every checkpoint: signed by a trusted key, its signature intact, its `(seq, hash)`
/// on the chain, and the chain not shorter than the newest checkpoint. `events` is the whole log in order,
/// `checkpoints` all of them.
pub fn verify_anchored(
    events: &[StoredAuditEvent],
    checkpoints: &[AuditCheckpoint],
    trusted: &[AuditPublicKey],
) -> Result<AnchorReport, AnchorBreak> {
    verify_chain(events)
        .map_err(|b| AnchorBreak(format!("audit log broken at event {}: {}", b.seq, b.reason)))?;
    let by_seq: HashMap<i64, &[u8]> = events.iter().map(|e| (e.seq, e.hash.as_slice())).collect();
    let last_seq = events.last().map(|e| e.seq);
    let keys: HashMap<String, &AuditPublicKey> = trusted.iter().map(|k| (k.kid(), k)).collect();
    let mut newest: Option<i64> = None;
    for c in checkpoints {
        let Some(key) = keys.get(&c.kid) else {
            return Err(AnchorBreak(format!(
                "checkpoint {} (seq {}) is signed by audit key {}, which is not a trusted key \
                 (the checkpoints were made with another key: the log may have been rewritten)",
                c.id, c.seq, c.kid
            )));
        };
        if !key.verifies(c) {
            return Err(AnchorBreak(format!(
                "checkpoint {} (seq {}): the signature does not verify (the checkpoint was altered or forged)",
                c.id, c.seq
            )));
        }
        match by_seq.get(&c.seq) {
            Some(hash) if *hash == c.head_hash.as_slice() => {}
            Some(_) => {
                return Err(AnchorBreak(format!(
                    "checkpoint {} vouches for a different event {} than the log holds (the log was rewritten)",
                    c.id, c.seq
                )));
            }
            None if last_seq.is_none_or(|last| c.seq > last) => {
                let end = last_seq.map_or("is empty".to_string(), |s| format!("ends at event {s}"));
                return Err(AnchorBreak(format!(
                    "the audit log {end} but checkpoint {} vouches for event {}: events were removed from \
                     the end (truncation)",
                    c.id, c.seq
                )));
            }
            None => {
                return Err(AnchorBreak(format!(
                    "checkpoint {} vouches for event {}, which is not in the log (the log was rewritten)",
                    c.id, c.seq
                )));
            }
        }
        newest = newest.max(Some(c.seq));
    }
    Ok(AnchorReport {
        events: events.len(),
        checkpoints: checkpoints.len(),
        newest_checkpoint_seq: newest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditEvent;

    fn chain(n: i64) -> Vec<StoredAuditEvent> {
        let mut prev = Vec::new();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent {
                    time_unix_nanos: seq,
                    detail: format!("e{seq}"),
                    ..Default::default()
                };
                let hash = event.chain_hash(&prev);
                StoredAuditEvent {
                    seq,
                    event,
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                    columns_match: true,
                }
            })
            .collect()
    }

    #[test]
    fn checkpoints_catch_truncation_rewrite_and_forgery() {
        let (signer, _) = AuditSigner::generate().unwrap();
        let trusted = [signer.public_key().clone()];
        let log = chain(5);
        let c = signer.checkpoint(5, &log[4].hash, 99);
        assert_eq!(
            verify_anchored(&log, std::slice::from_ref(&c), &trusted)
                .unwrap()
                .newest_checkpoint_seq,
            Some(5)
        );

        let e = verify_anchored(&log[..3], std::slice::from_ref(&c), &trusted).unwrap_err();
        assert!(e.0.contains("truncation"), "{e}");

        let mut rewritten = chain(5);
        rewritten[0].event.detail = "other".into();
        let mut prev = Vec::new();
        for s in &mut rewritten {
            s.prev_hash = prev.clone();
            s.hash = s.event.chain_hash(&prev);
            prev = s.hash.clone();
        }
        let e = verify_anchored(&rewritten, std::slice::from_ref(&c), &trusted).unwrap_err();
        assert!(e.0.contains("rewritten"), "{e}");

        let mut forged = c.clone();
        forged.seq = 3;
        forged.head_hash = log[2].hash.clone();
        let e = verify_anchored(&log, &[forged], &trusted).unwrap_err();
        assert!(e.0.contains("signature does not verify"), "{e}");

        let (other, _) = AuditSigner::generate().unwrap();
        let e =
            verify_anchored(&log, &[other.checkpoint(5, &log[4].hash, 99)], &trusted).unwrap_err();
        assert!(e.0.contains("not a trusted key"), "{e}");
    }

    #[test]
    fn public_key_round_trips_through_pem_and_base64() {
        let (signer, _) = AuditSigner::generate().unwrap();
        let key = signer.public_key();
        assert_eq!(&AuditPublicKey::parse(&key.to_pem()).unwrap(), key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.raw());
        assert_eq!(&AuditPublicKey::parse(&b64).unwrap(), key);
        assert!(
            AuditPublicKey::parse("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }
}
