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

/// A certificate authority owned by a resource. The key is PKCS#8 DER.
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
