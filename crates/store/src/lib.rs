//! Persistence for clustercred: one [`Store`] trait, implemented by the embedded SQLite backend and by a
//! PostgreSQL backend for several replicas sharing one database.
//!
//! Every write a response depends on (resource + CA + operation, issuance + idempotency record) happens in one
//! transaction that is committed (and, with SQLite in WAL mode and `synchronous=FULL`, on disk) before the
//! method returns, so a reply never reports something the store could lose.

mod anchor;
mod cache;
mod group;
mod postgres;
mod records;
mod sqlite;

pub use anchor::*;
pub use cache::CachedStore;
pub use group::{BatchWriter, GroupCommit};
pub use postgres::{PgStore, PgStoreOptions};
pub use records::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    /// A compare-and-set lost: the stored version is not the one the caller read.
    #[error("concurrent modification")]
    Conflict,
    /// A failure that may pass by itself: the database is unreachable, busy, out of space or read-only, or a
    /// transaction lost a serialization race. Nothing was written; the caller may retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists,
            sqlx::Error::Database(db) if transient(db.as_ref()) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => StoreError::Backend(format!("migrating the database schema: {other}")),
        }
    }
}

/// One schema migration from a file under `migrations/<backend>/`, named `<version>_<description>.sql`.
/// Built by hand rather than with `sqlx::migrate!`, which needs sqlx's `macros` feature (a second build of
/// both database drivers for the host); the version, description (underscores as spaces) and checksum are
/// the ones `migrate!` would record, so a later switch to it finds the same history.
fn migration(version: i64, description: &str, sql: &'static str) -> sqlx::migrate::Migration {
    sqlx::migrate::Migration::new(
        version,
        description.replace('_', " ").into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(sql),
        false,
    )
}

/// Whether a database error names a condition that passes by itself. The two backends' codes overlap as
/// strings (SQLite's are numbers, and so are most SQLSTATEs), so the backend decides which table applies.
fn transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        transient_sqlstate(&code)
    } else {
        transient_sqlite_code(&code)
    }
}

/// SQLite reports numeric (extended) result codes: BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
fn transient_sqlite_code(code: &str) -> bool {
    code.parse::<i64>().is_ok_and(transient_sqlite_result)
}

/// The same for a numeric (extended) result code, as rusqlite reports it.
fn transient_sqlite_result(code: i64) -> bool {
    matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14)
}

/// PostgreSQL SQLSTATEs: serialization failure and deadlock (40001, 40P01), connection exceptions (08),
/// insufficient resources such as a full disk or too many connections (53), operator intervention such as a
/// shutdown or a cancelled statement (57), lock not available (55P03), read-only transaction (25006).
fn transient_sqlstate(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "25006" | "55P03")
        || code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How long a store call waits for a connection, a lock or a statement before it answers `Unavailable`,
/// unless configured otherwise (`clustercred serve --store-timeout`).
pub const DEFAULT_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What one request writes once its response is built: the records the response depends on and its audit
/// event. Concurrent requests' items are committed together (see [`GroupCommit`]).
// One item per request, held only while its batch (at most a few hundred) is written: boxing the large
// variant would cost an allocation per request and save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteItem {
    Issuance {
        issuance: IssuanceRecord,
        idempotency: Option<IdempotencyRecord>,
        audit: Option<AuditEvent>,
    },
    Token {
        token: TokenRecord,
        audit: Option<AuditEvent>,
    },
    Audit(AuditEvent),
}

/// A bearer token's principal and when the token stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerRecord {
    pub principal: PrincipalRecord,
    pub expires_unix: Option<i64>,
}

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

    /// Every resource of `kind` whatever its parent, ordered by name, starting after `after_name`, at most
    /// `limit` (the instance endpoints find their instances with it).
    async fn list_all_resources(
        &self,
        kind: &str,
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

    /// Writes `items` in one transaction (one commit: one fsync for all of them) and answers one outcome per
    /// item, in order. An issuance whose idempotency key is already stored, or taken by an earlier item of the
    /// same batch, writes nothing of its own and answers `Replay` with the stored record (insert-or-nothing,
    /// then read the winner: a race between replicas is decided by the key, not by a prior read). Audit events
    /// extend the chain in item order; the chain head is read and extended inside the transaction, so
    /// concurrent writers (other connections, other replicas) cannot fork it. Any other failure fails the
    /// whole batch and writes nothing.
    async fn write_batch(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>>;

    /// Records an issued certificate (and, when given, the idempotency record that makes retries replay the
    /// response) in one transaction. If another request with the same id committed first, nothing is written
    /// and that record is returned as `Replay`.
    async fn record_issuance(
        &self,
        issuance: &IssuanceRecord,
        idempotency: Option<&IdempotencyRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<IssuanceOutcome> {
        let item = WriteItem::Issuance {
            issuance: issuance.clone(),
            idempotency: idempotency.cloned(),
            audit: audit.cloned(),
        };
        single(self.write_batch(std::slice::from_ref(&item)).await?)
    }

    async fn list_issuances(&self, owner: &str) -> Result<Vec<IssuanceRecord>>;

    /// One issuance record by serial, with its revocation; read from the database every time (never cached),
    /// so a revocation holds at once on every replica.
    async fn get_issuance(&self, serial_hex: &str) -> Result<Option<IssuanceStatus>>;

    /// Marks the client certificates `target` names revoked at `now_unix`, with the audit event, atomically,
    /// and returns their serials. Certificates already revoked keep their first revocation time; a serial
    /// that is unknown under that owner revokes nothing (and writes no audit event).
    async fn revoke_issuances(
        &self,
        target: &RevocationTarget,
        now_unix: i64,
        audit: Option<&AuditEvent>,
    ) -> Result<Vec<String>>;

    /// Records a minted access token (id, never the token itself) with its audit event.
    async fn record_token(&self, token: &TokenRecord, audit: Option<&AuditEvent>) -> Result<()> {
        let item = WriteItem::Token {
            token: token.clone(),
            audit: audit.cloned(),
        };
        single(self.write_batch(std::slice::from_ref(&item)).await?).map(|_| ())
    }

    /// Forgets idempotency records created before `before_unix`, the oldest first and at most `limit` of them
    /// (on the time index, one short transaction: a large backlog is purged in batches without holding the
    /// write lock long); returns how many went.
    async fn purge_idempotency(&self, before_unix: i64, limit: u32) -> Result<u64>;

    /// Deletes issuance records whose certificate expired (`not_after`) before `expired_before_unix`, then token
    /// records whose token expired before it, the earliest expiry first and at most `limit` rows in all, in one
    /// short transaction on the expiry indexes; returns how many went. A record that expires at or after
    /// `expired_before_unix` is never touched, so a caller that passes `now - retention` keeps every record of
    /// a credential still valid or expired less than the retention ago. Call again while it answers `limit`.
    async fn purge_expired_issuances(&self, expired_before_unix: i64, limit: u32) -> Result<u64>;

    /// Atomically increments and returns a named counter (starting at 1).
    async fn next_counter(&self, name: &str) -> Result<i64>;

    /// A number that changes whenever anything a cache may hold changes: resources, CAs, principals, bearer
    /// tokens, policies, keys. Every such write bumps it in its own transaction, whichever process or replica
    /// makes it, so a cache that polls it (see [`CachedStore`]) is stale for at most its polling interval.
    async fn change_epoch(&self) -> Result<i64>;

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
    /// Creates a user with its first bearer token if no principal has that id, in one transaction; answers
    /// whether it did. Replicas starting together create the bootstrap administrator once.
    async fn create_user(
        &self,
        principal: &PrincipalRecord,
        token_sha256: &[u8],
        expires_unix: Option<i64>,
    ) -> Result<bool>;
    /// A bearer token's principal and expiry, if the token is registered (expired or not).
    async fn bearer(&self, token_sha256: &[u8]) -> Result<Option<BearerRecord>>;
    /// The principal of a bearer token that has not expired at `now_unix`.
    async fn principal_for_bearer(
        &self,
        token_sha256: &[u8],
        now_unix: i64,
    ) -> Result<Option<PrincipalRecord>> {
        Ok(self
            .bearer(token_sha256)
            .await?
            .filter(|b| b.expires_unix.is_none_or(|e| e > now_unix))
            .map(|b| b.principal))
    }
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
    async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
        let item = WriteItem::Audit(event.clone());
        single(self.write_batch(std::slice::from_ref(&item)).await?).map(|_| ())
    }
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
    /// Stores `key` if there is no signing key yet, and returns the newest stored one: replicas starting
    /// together agree on one key.
    async fn first_signing_key(&self, key: &SigningKeyRecord) -> Result<SigningKeyRecord>;

    /// Closes the store's connections (shutdown); later calls fail as `Unavailable`.
    async fn close(&self) {}
}

/// The one outcome of a one-item batch.
fn single(outcomes: Vec<IssuanceOutcome>) -> Result<IssuanceOutcome> {
    outcomes
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Backend("a batch of one answered nothing".into()))
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn transient_codes_per_backend() {
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_FULL; a constraint failure is not transient.
        assert!(
            transient_sqlite_code("5")
                && transient_sqlite_code("517")
                && transient_sqlite_code("13")
        );
        assert!(!transient_sqlite_code("2067"));
        // Numeric SQLSTATEs must not be read as SQLite codes: 40001 & 0xff is no SQLite BUSY.
        assert!(
            transient_sqlstate("40001")
                && transient_sqlstate("40P01")
                && transient_sqlstate("08006")
        );
        assert!(transient_sqlstate("53100") && transient_sqlstate("57P01"));
        assert!(!transient_sqlstate("23505") && !transient_sqlstate("42P01"));
    }
}
