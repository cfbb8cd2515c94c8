//! Plain records the store keeps. Resources and operations are kept as encoded protobuf messages with the
//! columns needed to find them; the store does not interpret the bytes.

/// A served resource (AlloyDB cluster or instance, Edge cluster, attached cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRecord {
    /// e.g. `alloydb.Cluster`, `alloydb.Instance`, `edgecontainer.Cluster`, `gkemulticloud.AttachedCluster`.
    pub kind: String,
    /// Full resource name, `projects/P/locations/L/clusters/C`.
    pub name: String,
    /// The collection's parent, `projects/P/locations/L` (or the cluster for instances).
    pub parent: String,
    pub uid: String,
    /// The resource message, protobuf-encoded.
    pub data: Vec<u8>,
    pub create_time_unix: i64,
}

/// The `owner` of the CA that belongs to a resource: kind and name together, because two APIs may use the
/// same resource name (an AlloyDB and an Edge cluster both called `projects/p/locations/l/clusters/c`).
pub fn ca_owner(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

/// A certificate authority owned by a resource (`owner` from [`ca_owner`]). The key is sealed PKCS#8 DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRecord {
    pub owner: String,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub not_after_unix: i64,
    pub create_time_unix: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRecord {
    /// `projects/P/locations/L/operations/ID`.
    pub name: String,
    /// `projects/P/locations/L`.
    pub parent: String,
    /// `google.longrunning.Operation`, protobuf-encoded.
    pub data: Vec<u8>,
    pub create_time_unix: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The method (and version) the id belongs to.
    pub scope: String,
    pub request_id: String,
    /// Digest of everything that makes the request what it is (principal, parent, parameters).
    pub request_hash: Vec<u8>,
    /// The encoded response to replay.
    pub response: Vec<u8>,
    pub create_time_unix: i64,
}

/// One issued certificate, recorded before the reply leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceRecord {
    pub serial_hex: String,
    /// The resource whose CA signed it.
    pub owner: String,
    /// `client_certificate` or `offline_credential`.
    pub kind: String,
    pub subject: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub requester: String,
    pub request_id: Option<String>,
    pub public_key_sha256: String,
    pub create_time_unix: i64,
    /// AlloyDB client certificates: the client asked for the metadata exchange
    /// (`use_metadata_exchange`), so the instance endpoint expects one after the handshake.
    pub metadata_exchange: bool,
}

/// An issuance record and its revocation, as the instance endpoint checks a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceStatus {
    pub record: IssuanceRecord,
    pub revoke_time_unix: Option<i64>,
}

/// The client certificates one revocation covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationTarget {
    /// One certificate of the CA owned by `owner`.
    Serial { owner: String, serial_hex: String },
    /// Every client certificate of `subject` issued by `owner`'s CA that has not expired by `now`.
    Subject { owner: String, subject: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuanceOutcome {
    Recorded,
    Replay(IdempotencyRecord),
}

/// One minted access token: its id and whom it was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub owner: String,
    pub subject: String,
    pub expires_unix: i64,
    pub create_time_unix: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRecord {
    /// Stable identifier, also the identity certificates and tokens name (e.g. `admin`).
    pub id: String,
    /// `user` or `serviceAccount`.
    pub kind: String,
    pub display_name: String,
    pub create_time_unix: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub key_der: Vec<u8>,
    pub create_time_unix: i64,
}

/// A project's (or the root's) IAM policy: a `google.iam.v1.Policy`, protobuf-encoded, and its etag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub resource: String,
    pub data: Vec<u8>,
    pub etag: Vec<u8>,
    pub update_time_unix: i64,
}

/// The audit event format written today. Part of every hashed event (and of every checkpoint), so a reader
/// knows which fields and vocabulary an event uses.
pub const AUDIT_FORMAT_VERSION: u32 = 2;

/// One audit event. Never holds private keys or whole tokens: serials and token ids only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// The event format ([`AUDIT_FORMAT_VERSION`] when written by this clustercred).
    pub version: u32,
    /// Unix time in nanoseconds.
    pub time_unix_nanos: i64,
    /// `user:admin`, `serviceAccount:EMAIL`, or `anonymous`.
    pub principal: String,
    /// The gRPC method (`google.cloud.alloydb.v1.AlloyDBAdmin/GenerateClientCertificate`) or endpoint.
    pub method: String,
    pub resource: String,
    /// `ok` or `denied` or `error`.
    pub outcome: String,
    /// The canonical google.rpc code name (`OK`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, ...).
    pub status: String,
    /// Certificate serial, token id, key id, or a short description of the change.
    pub detail: String,
    pub request_id: String,
    pub client_address: String,
    pub user_agent: String,
    /// How many calls the event stands for: 1, or more for aggregated refusals.
    pub count: u64,
}

impl Default for AuditEvent {
    fn default() -> Self {
        AuditEvent {
            version: AUDIT_FORMAT_VERSION,
            time_unix_nanos: 0,
            principal: String::new(),
            method: String::new(),
            resource: String::new(),
            outcome: String::new(),
            status: String::new(),
            detail: String::new(),
            request_id: String::new(),
            client_address: String::new(),
            user_agent: String::new(),
            count: 1,
        }
    }
}

impl AuditEvent {
    /// The chain link: SHA-256 over the previous link and this event's canonical JSON (fields in declaration
    /// order), so editing, dropping or reordering a stored event breaks every link after it.
    pub fn chain_hash(&self, previous: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update((previous.len() as u64).to_be_bytes());
        hasher.update(previous);
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        hasher.finalize().to_vec()
    }
}

/// An audit event as stored: its sequence number and chain link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAuditEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// Whether the columns kept for filtering say what the hashed event says.
    pub columns_match: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub principal: Option<String>,
    /// Matches events whose resource is this name or lies below it.
    pub resource_prefix: Option<String>,
    pub method_contains: Option<String>,
    pub since_unix_nanos: Option<i64>,
    pub until_unix_nanos: Option<i64>,
    pub limit: Option<u32>,
}

/// Where and why an audit chain is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub reason: &'static str,
}

/// Checks every link of a complete, ordered audit log.
pub fn verify_chain(events: &[StoredAuditEvent]) -> Result<(), ChainBreak> {
    let mut previous: Vec<u8> = Vec::new();
    for stored in events {
        if stored.prev_hash != previous {
            return Err(ChainBreak {
                seq: stored.seq,
                reason: "the previous link does not match (an event was removed or reordered)",
            });
        }
        if !stored.columns_match {
            return Err(ChainBreak {
                seq: stored.seq,
                reason: "the indexed columns do not match the event",
            });
        }
        if stored.event.chain_hash(&previous) != stored.hash {
            return Err(ChainBreak {
                seq: stored.seq,
                reason: "the event does not match its hash",
            });
        }
        previous = stored.hash.clone();
    }
    Ok(())
}

/// A sealed private key and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedKey {
    /// `ca` (id = the owning resource), `signing_key` or `audit_key` (id = the key id).
    pub kind: String,
    pub id: String,
    pub sealed: Vec<u8>,
}

/// The key that signs audit checkpoints: its id, the sealed PKCS#8 private key, and the raw public key (kept
/// in the clear for readers without the master key; a reader with it trusts only what the sealed key says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditKeyRecord {
    pub kid: String,
    pub key_der: Vec<u8>,
    pub public_key: Vec<u8>,
    pub create_time_unix: i64,
}
