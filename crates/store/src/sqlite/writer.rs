//! The group committer's SQLite connection: its own thread and its own connection (rusqlite, the same
//! libsqlite3 as sqlx's), so a batch costs one hand-off each way. Through sqlx, each of a batch's statements
//! was a round trip to sqlx's connection thread: under load, most of the store's CPU went to those wake-ups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::group::BlockingWriter;
use crate::{IdempotencyRecord, IssuanceOutcome, Result, StoreError, WriteItem};

/// WAL frames after which a commit checkpoints (SQLite's default is 1000). The checkpoint runs inside the commit
/// that crosses the mark and stalls the batches queued behind it: shorter, more frequent stalls keep the tail
/// lower (client-cert c=16 p99 9.3 -> 6.8 ms at the same throughput; 8000 frames gave 18.6 ms).
pub(super) const CHECKPOINT_FRAMES: u32 = 300;

pub(super) struct ThreadWriter {
    path: PathBuf,
    timeout: Duration,
    /// None after a failure left the connection unusable; the next batch opens a new one.
    conn: Option<Connection>,
}

impl ThreadWriter {
    /// Opens its connection to the database at `path`, whose schema is already up to date.
    pub(super) fn open(path: &Path, timeout: Duration) -> Result<ThreadWriter> {
        let mut writer = ThreadWriter {
            path: path.to_path_buf(),
            timeout,
            conn: None,
        };
        writer.connection()?;
        Ok(writer)
    }

    fn connection(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(store_error)?;
            conn.busy_timeout(self.timeout).map_err(store_error)?;
            // Per connection: the same durability as the pool's connections (the file is in WAL mode already).
            conn.execute_batch(&format!(
                "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = {CHECKPOINT_FRAMES};"
            ))
            .map_err(store_error)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("opened above"))
    }
}

impl BlockingWriter for ThreadWriter {
    fn write_now(&mut self, items: &[&WriteItem]) -> Result<Vec<IssuanceOutcome>> {
        let conn = self.connection()?;
        let result = write(conn, items);
        // A COMMIT that failed (a full disk) may leave the connection inside a transaction that its own
        // ROLLBACK cannot end: such a connection is replaced rather than reused.
        if result.is_err() && !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            self.conn = None;
        }
        result
    }
}

/// One transaction: claim the request ids (the first item with an id wins), then the issuances, tokens and
/// audit events, with statements prepared once per connection.
fn write(conn: &mut Connection, items: &[&WriteItem]) -> Result<Vec<IssuanceOutcome>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut events = Vec::new();
    {
        let mut claim = tx
            .prepare_cached(
                "INSERT INTO idempotency (scope, request_id, request_hash, response, create_time) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, request_id) DO NOTHING",
            )
            .map_err(store_error)?;
        let mut issuance_row = tx
            .prepare_cached(
                "INSERT INTO issuances (serial, owner, kind, subject, not_before, not_after, requester, \
                 request_id, public_key_sha256, create_time, metadata_exchange) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .map_err(store_error)?;
        let mut token_row = tx
            .prepare_cached(
                "INSERT INTO tokens (token_id, owner, subject, expires, create_time) VALUES (?, ?, ?, ?, ?)",
            )
            .map_err(store_error)?;
        for item in items {
            match item {
                WriteItem::Issuance {
                    issuance: i,
                    idempotency,
                    audit,
                } => {
                    if let Some(r) = idempotency {
                        let claimed = claim
                            .execute(params![
                                r.scope,
                                r.request_id,
                                r.request_hash,
                                r.response,
                                r.create_time_unix
                            ])
                            .map_err(store_error)?;
                        if claimed == 0 {
                            // Someone with the same id got there first: keep theirs, write nothing of ours.
                            outcomes.push(IssuanceOutcome::Replay(claimed_by(&tx, r)?));
                            continue;
                        }
                    }
                    issuance_row
                        .execute(params![
                            i.serial_hex,
                            i.owner,
                            i.kind,
                            i.subject,
                            i.not_before_unix,
                            i.not_after_unix,
                            i.requester,
                            i.request_id,
                            i.public_key_sha256,
                            i.create_time_unix,
                            i.metadata_exchange
                        ])
                        .map_err(store_error)?;
                    events.extend(audit.as_ref());
                }
                WriteItem::Token { token: t, audit } => {
                    token_row
                        .execute(params![
                            t.token_id,
                            t.owner,
                            t.subject,
                            t.expires_unix,
                            t.create_time_unix
                        ])
                        .map_err(store_error)?;
                    events.extend(audit.as_ref());
                }
                WriteItem::Audit(event) => events.push(event),
            }
            outcomes.push(IssuanceOutcome::Recorded);
        }
        if !events.is_empty() {
            // The chain head is read inside the write transaction (BEGIN IMMEDIATE: no other writer between).
            let mut previous: Vec<u8> = tx
                .prepare_cached("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .and_then(|mut s| s.query_row([], |row| row.get(0)).optional())
                .map_err(store_error)?
                .unwrap_or_default();
            let mut event_row = tx
                .prepare_cached(
                    "INSERT INTO audit_events (event, principal, method, resource, time_nanos, prev_hash, \
                     hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .map_err(store_error)?;
            for event in events {
                let hash = event.chain_hash(&previous);
                let json =
                    serde_json::to_string(event).map_err(|e| StoreError::Backend(e.to_string()))?;
                event_row
                    .execute(params![
                        json,
                        event.principal,
                        event.method,
                        event.resource,
                        event.time_unix_nanos,
                        previous,
                        hash
                    ])
                    .map_err(store_error)?;
                previous = hash;
            }
        }
    }
    tx.commit().map_err(store_error)?;
    Ok(outcomes)
}

/// The record that holds a request id already (written earlier, or by an earlier item of this batch).
fn claimed_by(tx: &rusqlite::Transaction<'_>, r: &IdempotencyRecord) -> Result<IdempotencyRecord> {
    tx.prepare_cached(
        "SELECT request_hash, response, create_time FROM idempotency WHERE scope = ? AND request_id = ?",
    )
    .and_then(|mut s| {
        s.query_row(params![r.scope, r.request_id], |row| {
            Ok(IdempotencyRecord {
                scope: r.scope.clone(),
                request_id: r.request_id.clone(),
                request_hash: row.get(0)?,
                response: row.get(1)?,
                create_time_unix: row.get(2)?,
            })
        })
    })
    .map_err(store_error)
}

/// The store's error for a SQLite one, with the classes sqlx's errors get (see `From<sqlx::Error>`).
fn store_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                        | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                ) =>
        {
            StoreError::AlreadyExists
        }
        rusqlite::Error::SqliteFailure(f, _)
            if crate::transient_sqlite_result(f.extended_code.into()) =>
        {
            StoreError::Unavailable(format!("(code: {}) {e}", f.extended_code))
        }
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
        _ => StoreError::Backend(e.to_string()),
    }
}
