//! Persistence for clustercred: one [`Store`] trait, implemented by the embedded SQLite backend.
//!
//! Every write a response depends on (resource + CA + operation, issuance + idempotency record) happens in one
//! transaction that is committed (and, with SQLite in WAL mode and `synchronous=FULL`, on disk) before the
//! method returns, so a reply never reports something the store could lose.

mod anchor;
mod records;
mod sqlite;

pub use anchor::*;
pub use records::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    /// A compare-and-set lost: the stored version is not the one the caller read.
    #[error("concurrent modification")]
    Conflict,
    #[error("storage failure: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists,
            sqlx::Error::RowNotFound => StoreError::NotFound,
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a resource, optionally with the CA that belongs to it, the operation and the audit event,
    /// atomically. `AlreadyExists` if a resource of that kind and name exists (nothing is written then).
    async fn create_resource(
        &self,
        resource: &ResourceRecord,
        ca: Option<&CaRecord>,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()>;

    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>>;

    /// Resources of `kind` under `parent`, ordered by name, starting after `after_name`, at most `limit`.
    async fn list_resources(
        &self,
        kind: &str,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResourceRecord>>;

    /// Replaces the data of an existing resource, with its audit event, atomically. `NotFound` if it does not
    /// exist.
    async fn update_resource(
        &self,
        resource: &ResourceRecord,
        audit: Option<&AuditEvent>,
    ) -> Result<()>;

    /// Deletes a resource, its CA and every resource whose name lies below it, and records the operation,
    /// atomically. `NotFound` if it does not exist.
    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()>;

    async fn get_ca(&self, owner: &str) -> Result<Option<CaRecord>>;
    /// Stores a CA that belongs to no resource (e.g. the server's own TLS CA); `AlreadyExists` if present.
    async fn put_ca(&self, ca: &CaRecord) -> Result<()>;

    async fn get_operation(&self, name: &str) -> Result<Option<OperationRecord>>;
    async fn list_operations(
        &self,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OperationRecord>>;
    async fn delete_operation(&self, name: &str) -> Result<bool>;

    /// The remembered outcome of a request id, if any (records older than the retention are gone).
    async fn get_idempotent(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>>;

    /// Records an issued certificate (and, when given, the idempotency record that makes retries replay the
    /// response) in one transaction. If another request with the same id committed first, nothing is written
    /// and that record is returned as `Replay`.
    async fn record_issuance(
        &self,
        issuance: &IssuanceRecord,
        idempotency: Option<&IdempotencyRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<IssuanceOutcome>;

    async fn list_issuances(&self, owner: &str) -> Result<Vec<IssuanceRecord>>;

    /// Records a minted access token (id, never the token itself) with its audit event.
    async fn record_token(&self, token: &TokenRecord, audit: Option<&AuditEvent>) -> Result<()>;

    /// Forgets idempotency records created before `before_unix`.
    async fn purge_idempotency(&self, before_unix: i64) -> Result<u64>;

    /// Atomically increments and returns a named counter (starting at 1).
    async fn next_counter(&self, name: &str) -> Result<i64>;

    async fn put_principal(&self, principal: &PrincipalRecord) -> Result<()>;
    async fn get_principal(&self, id: &str) -> Result<Option<PrincipalRecord>>;
    /// Registers a bearer token by its SHA-256 digest (the token itself is never stored), valid until
    /// `expires_unix` when given.
    async fn put_bearer_token(
        &self,
        token_sha256: &[u8],
        principal_id: &str,
        created_unix: i64,
        expires_unix: Option<i64>,
    ) -> Result<()>;
    /// The principal of a bearer token that has not expired at `now_unix`.
    async fn principal_for_bearer(
        &self,
        token_sha256: &[u8],
        now_unix: i64,
    ) -> Result<Option<PrincipalRecord>>;
    /// Revokes every bearer token of a principal; returns how many there were.
    async fn revoke_bearer_tokens(
        &self,
        principal_id: &str,
        audit: Option<&AuditEvent>,
    ) -> Result<u64>;

    /// The IAM policy of a resource (a project, or the server-wide root).
    async fn get_policy(&self, resource: &str) -> Result<Option<PolicyRecord>>;
    /// Every stored policy (to rewrite the bindings of a deleted service account).
    async fn list_policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Replaces a policy if its stored etag is still `expected_etag` (`None`: whatever is stored), with the
    /// audit event, atomically. `Conflict` when someone else changed it first.
    async fn set_policy(
        &self,
        policy: &PolicyRecord,
        expected_etag: Option<&[u8]>,
        audit: Option<&AuditEvent>,
    ) -> Result<()>;

    /// Appends an audit event on its own (denied attempts, reads worth recording).
    async fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Audit events in order, filtered.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<StoredAuditEvent>>;
    /// The newest audit event's sequence number and chain link, if any.
    async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>>;
    /// Stores a signed checkpoint if its `(seq, head_hash)` is an event of the chain (checked in the same
    /// statement as the insert); `NotFound` otherwise. Returns the stored id.
    async fn append_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<i64>;
    /// Every checkpoint, oldest first.
    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>>;
    /// The audit keys (normally one), oldest first.
    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>>;
    /// Stores `key` if no audit key exists yet, and returns the stored one: concurrent first starts agree on
    /// one key.
    async fn put_audit_key(&self, key: &AuditKeyRecord) -> Result<AuditKeyRecord>;

    /// Every sealed private key the store holds (CA keys, token-signing keys, audit keys), for re-wrapping.
    async fn sealed_keys(&self) -> Result<Vec<SealedKey>>;
    /// Replaces sealed keys in one transaction (a master-key rotation is all or nothing).
    async fn replace_sealed_keys(
        &self,
        keys: &[SealedKey],
        audit: Option<&AuditEvent>,
    ) -> Result<()>;

    /// Signing keys for tokens clustercred mints, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    async fn put_signing_key(&self, key: &SigningKeyRecord) -> Result<()>;
}
