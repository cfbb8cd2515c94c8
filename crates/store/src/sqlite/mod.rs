//! The embedded default backend: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a crash or power loss before the reply leaves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use crate::*;

/// The schema migrations, in order (see [`crate::migration`]).
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        migration(
            2,
            "policies_and_audit_log",
            include_str!("../../migrations/sqlite/0002_policies_and_audit_log.sql"),
        ),
        migration(
            3,
            "bearer_token_expiry",
            include_str!("../../migrations/sqlite/0003_bearer_token_expiry.sql"),
        ),
        migration(
            4,
            "audit_anchoring",
            include_str!("../../migrations/sqlite/0004_audit_anchoring.sql"),
        ),
        migration(
            5,
            "expiry_indexes",
            include_str!("../../migrations/sqlite/0005_expiry_indexes.sql"),
        ),
        migration(
            6,
            "alloydb_endpoint",
            include_str!("../../migrations/sqlite/0006_alloydb_endpoint.sql"),
        ),
        migration(
            7,
            "fewer_index_writes",
            include_str!("../../migrations/sqlite/0007_fewer_index_writes.sql"),
        ),
    ])
}

/// Before sqlx's migrator, a database recorded in `PRAGMA user_version` how many of the migrations 1..=4 it
/// had run, and had no `_sqlx_migrations` table.
const LAST_USER_VERSION_MIGRATION: i64 = 4;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Commits the writes of concurrent requests together (see [`GroupCommit`]).
    group: Arc<GroupCommit>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date, with the default
    /// timeout (see [`SqliteStore::open_with_timeout`]).
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with_timeout(path, DEFAULT_STORE_TIMEOUT).await
    }

    /// Opens the database file; `timeout` bounds both the wait for a pooled connection and the wait for
    /// another process's write lock (SQLite's busy timeout), after which a call answers `Unavailable`.
    pub async fn open_with_timeout(path: &Path, timeout: Duration) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(timeout);
        // Concurrent first opens of a fresh file can get SQLITE_BUSY at once, without the busy timeout being
        // waited (the switch to WAL and the first migration race): try again until the timeout.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match Self::with_options(options.clone(), path, timeout).await {
                Err(StoreError::Unavailable(m))
                    if m.contains("database is locked") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    }

    async fn with_options(
        options: SqliteConnectOptions,
        path: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(timeout)
            // A transaction whose COMMIT failed (a full disk) may have been rolled back by SQLite itself, and
            // then sqlx's own ROLLBACK fails and leaves the connection counted as inside a transaction: every
            // later BEGIN on it would fail. Such a connection is closed instead of reused. The ping waits for
            // the rollback queued by a dropped transaction, so only a connection that really is stuck goes.
            .after_release(|conn, _| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await?;
        Self::migrate(&pool).await?;
        // The group committer's connection comes after the migration: it expects the tables.
        let writer = writer::ThreadWriter::open(path, timeout)?;
        let group = GroupCommit::start_blocking("sqlite-writer", writer)
            .map_err(|e| StoreError::Backend(format!("starting the SQLite writer thread: {e}")))?;
        Ok(SqliteStore {
            pool,
            group: Arc::new(group),
        })
    }

    /// Brings the schema up to date with sqlx's migrator, all in one `BEGIN IMMEDIATE` transaction: a server
    /// and a CLI opening one file at once take turns (sqlx's SQLite migrator has no lock of its own; each
    /// migration runs in a savepoint inside ours), and a failure leaves the database as it was.
    async fn migrate(pool: &SqlitePool) -> Result<()> {
        let migrator = migrator();
        let mut tx = begin_write(pool).await?;
        let tracked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !tracked {
            // A database of the user_version scheme: its first `user_version` migrations ran already. Record
            // them as applied (with their checksums) without running them again; the rest run below.
            let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *tx)
                .await?;
            if version > LAST_USER_VERSION_MIGRATION {
                return Err(StoreError::Backend(format!(
                    "database schema version {version} is newer than this clustercred \
                     ({LAST_USER_VERSION_MIGRATION})"
                )));
            }
            if version > 0 {
                migrator.run_direct(Some(version), &mut *tx, true).await?;
            }
        }
        // Fails on a database that has a migration this clustercred does not know (a newer release's).
        migrator.run_direct(None, &mut *tx, false).await?;
        // The newest version in user_version too, so a clustercred from before sqlx's migrator refuses a
        // schema newer than its own instead of running its first migration on it.
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {latest}"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        begin_write(&self.pool).await
    }

    /// Commits what is queued, then closes the writer's connection and the pool.
    pub async fn close(&self) {
        self.group.close().await;
        self.pool.close().await;
    }
}

/// Write transactions take the write lock up front, so two writers never deadlock upgrading read locks.
async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

fn resource_from_row(row: &SqliteRow) -> Result<ResourceRecord> {
    Ok(ResourceRecord {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        parent: row.try_get("parent")?,
        uid: row.try_get("uid")?,
        data: row.try_get("data")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn operation_from_row(row: &SqliteRow) -> Result<OperationRecord> {
    Ok(OperationRecord {
        name: row.try_get("name")?,
        parent: row.try_get("parent")?,
        data: row.try_get("data")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn idempotency_from_row(row: &SqliteRow) -> Result<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        scope: row.try_get("scope")?,
        request_id: row.try_get("request_id")?,
        request_hash: row.try_get("request_hash")?,
        response: row.try_get("response")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn audit_key_from_row(row: &SqliteRow) -> Result<AuditKeyRecord> {
    Ok(AuditKeyRecord {
        kid: row.try_get("kid")?,
        key_der: row.try_get("key_der")?,
        public_key: row.try_get("public_key")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn principal_from_row(row: &SqliteRow) -> Result<PrincipalRecord> {
    Ok(PrincipalRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        display_name: row.try_get("display_name")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

async fn insert_operation(
    tx: &mut Transaction<'static, Sqlite>,
    op: &OperationRecord,
) -> Result<()> {
    sqlx::query("INSERT INTO operations (name, parent, data, create_time) VALUES (?, ?, ?, ?)")
        .bind(&op.name)
        .bind(&op.parent)
        .bind(&op.data)
        .bind(op.create_time_unix)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Appends an event to the chain. Runs inside a write transaction (BEGIN IMMEDIATE), so no other writer can
/// slip an event in between reading the last link and writing the next. (A batch appends its events in one
/// statement, see `SqliteWriter::write_now`.)
async fn insert_audit(tx: &mut Transaction<'static, Sqlite>, event: &AuditEvent) -> Result<()> {
    let previous: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?
            .unwrap_or_default();
    let hash = event.chain_hash(&previous);
    let json = serde_json::to_string(event).map_err(|e| StoreError::Backend(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audit_events (event, principal, method, resource, time_nanos, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(json)
    .bind(&event.principal)
    .bind(&event.method)
    .bind(&event.resource)
    .bind(event.time_unix_nanos)
    .bind(previous)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks a change that caches must see (see [`Store::change_epoch`]), in the writer's transaction.
async fn bump_epoch(tx: &mut Transaction<'static, Sqlite>) -> Result<()> {
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ('change_epoch', 1) \
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `LIKE` pattern matching every kind of the API `kind` belongs to (`alloydb.Cluster` → `alloydb.%`).
fn kind_family_pattern(kind: &str) -> String {
    let api = kind.split('.').next().unwrap_or(kind);
    let mut p = String::with_capacity(api.len() + 3);
    for c in api.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str(".%");
    p
}

/// `LIKE` pattern matching every name strictly below `name` (`name/...`), with wildcards escaped.
fn children_pattern(name: &str) -> String {
    let mut p = String::with_capacity(name.len() + 2);
    for c in name.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str("/%");
    p
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_resource(
        &self,
        resource: &ResourceRecord,
        ca: Option<&CaRecord>,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO resources (kind, name, parent, uid, data, create_time) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&resource.kind)
        .bind(&resource.name)
        .bind(&resource.parent)
        .bind(&resource.uid)
        .bind(&resource.data)
        .bind(resource.create_time_unix)
        .execute(&mut *tx)
        .await?;
        if let Some(ca) = ca {
            // A CA left behind by an earlier resource of the same name is replaced, never reused.
            sqlx::query(
                "INSERT OR REPLACE INTO cas (owner, cert_pem, key_der, not_after, create_time) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&ca.owner)
            .bind(&ca.cert_pem)
            .bind(&ca.key_der)
            .bind(ca.not_after_unix)
            .bind(ca.create_time_unix)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(operation) = operation {
            insert_operation(&mut tx, operation).await?;
        }
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>> {
        let row = sqlx::query("SELECT * FROM resources WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(resource_from_row).transpose()
    }

    async fn list_resources(
        &self,
        kind: &str,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResourceRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM resources WHERE kind = ? AND parent = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(kind)
        .bind(parent)
        .bind(after_name.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(resource_from_row).collect()
    }

    async fn list_all_resources(
        &self,
        kind: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResourceRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM resources WHERE kind = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(kind)
        .bind(after_name.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(resource_from_row).collect()
    }

    async fn update_resource(
        &self,
        resource: &ResourceRecord,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE resources SET data = ? WHERE kind = ? AND name = ?")
            .bind(&resource.data)
            .bind(&resource.kind)
            .bind(&resource.name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM resources WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        // Children of the same API only: an AlloyDB and an Edge cluster may share a name, and deleting one
        // must not touch the other's instances.
        let below = children_pattern(name);
        let family = kind_family_pattern(kind);
        sqlx::query(
            "DELETE FROM resources WHERE name LIKE ? ESCAPE '\\' AND kind LIKE ? ESCAPE '\\'",
        )
        .bind(&below)
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        // The resource's own CA, and those of its children (owners are `kind:name`).
        sqlx::query("DELETE FROM cas WHERE owner = ? OR owner LIKE ? ESCAPE '\\'")
            .bind(ca_owner(kind, name))
            .bind(format!("{family}:{below}"))
            .execute(&mut *tx)
            .await?;
        if let Some(operation) = operation {
            insert_operation(&mut tx, operation).await?;
        }
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_ca(&self, owner: &str) -> Result<Option<CaRecord>> {
        let row = sqlx::query("SELECT * FROM cas WHERE owner = ?")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(CaRecord {
                owner: row.try_get("owner")?,
                cert_pem: row.try_get("cert_pem")?,
                key_der: row.try_get("key_der")?,
                not_after_unix: row.try_get("not_after")?,
                create_time_unix: row.try_get("create_time")?,
            })
        })
        .transpose()
    }

    async fn put_ca(&self, ca: &CaRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO cas (owner, cert_pem, key_der, not_after, create_time) VALUES (?, ?, ?, ?, ?)")
            .bind(&ca.owner)
            .bind(&ca.cert_pem)
            .bind(&ca.key_der)
            .bind(ca.not_after_unix)
            .bind(ca.create_time_unix)
            .execute(&mut *tx)
            .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_operation(&self, name: &str) -> Result<Option<OperationRecord>> {
        let row = sqlx::query("SELECT * FROM operations WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    async fn list_operations(
        &self,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM operations WHERE parent = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(parent)
        .bind(after_name.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(operation_from_row).collect()
    }

    async fn delete_operation(&self, name: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM operations WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn get_idempotent(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let row = sqlx::query("SELECT * FROM idempotency WHERE scope = ? AND request_id = ?")
            .bind(scope)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(idempotency_from_row).transpose()
    }

    async fn write_batch(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>> {
        self.group.write(items).await
    }

    async fn list_issuances(&self, owner: &str) -> Result<Vec<IssuanceRecord>> {
        let rows =
            sqlx::query("SELECT * FROM issuances WHERE owner = ? ORDER BY create_time, serial")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(issuance_from_row).collect()
    }

    async fn get_issuance(&self, serial_hex: &str) -> Result<Option<IssuanceStatus>> {
        let row = sqlx::query("SELECT * FROM issuances WHERE serial = ?")
            .bind(serial_hex)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(IssuanceStatus {
                record: issuance_from_row(&row)?,
                revoke_time_unix: row.try_get("revoke_time")?,
            })
        })
        .transpose()
    }

    async fn get_policy(&self, resource: &str) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query("SELECT * FROM policies WHERE resource = ?")
            .bind(resource)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(PolicyRecord {
                resource: row.try_get("resource")?,
                data: row.try_get("data")?,
                etag: row.try_get("etag")?,
                update_time_unix: row.try_get("update_time")?,
            })
        })
        .transpose()
    }

    async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        sqlx::query("SELECT * FROM policies ORDER BY resource")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(PolicyRecord {
                    resource: row.try_get("resource")?,
                    data: row.try_get("data")?,
                    etag: row.try_get("etag")?,
                    update_time_unix: row.try_get("update_time")?,
                })
            })
            .collect()
    }

    async fn set_policy(
        &self,
        policy: &PolicyRecord,
        expected_etag: Option<&[u8]>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some(expected) = expected_etag {
            let current: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT etag FROM policies WHERE resource = ?")
                    .bind(&policy.resource)
                    .fetch_optional(&mut *tx)
                    .await?;
            // A policy never written has the empty etag.
            if current.as_deref().unwrap_or_default() != expected {
                tx.rollback().await?;
                return Err(StoreError::Conflict);
            }
        }
        sqlx::query(
            "INSERT INTO policies (resource, data, etag, update_time) VALUES (?, ?, ?, ?) \
             ON CONFLICT (resource) DO UPDATE SET data = excluded.data, etag = excluded.etag, \
             update_time = excluded.update_time",
        )
        .bind(&policy.resource)
        .bind(&policy.data)
        .bind(&policy.etag)
        .bind(policy.update_time_unix)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<StoredAuditEvent>> {
        let mut sql = String::from("SELECT * FROM audit_events WHERE 1 = 1");
        if filter.principal.is_some() {
            sql.push_str(" AND principal = ?");
        }
        if filter.resource_prefix.is_some() {
            sql.push_str(" AND (resource = ? OR resource LIKE ? ESCAPE '\\')");
        }
        if filter.method_contains.is_some() {
            sql.push_str(" AND instr(method, ?) > 0");
        }
        if filter.since_unix_nanos.is_some() {
            sql.push_str(" AND time_nanos >= ?");
        }
        if filter.until_unix_nanos.is_some() {
            sql.push_str(" AND time_nanos < ?");
        }
        sql.push_str(" ORDER BY seq");
        if filter.limit.is_some() {
            sql.push_str(" LIMIT ?");
        }
        // Only placeholders are appended above; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(p) = &filter.principal {
            query = query.bind(p);
        }
        if let Some(r) = &filter.resource_prefix {
            query = query.bind(r).bind(children_pattern(r));
        }
        if let Some(m) = &filter.method_contains {
            query = query.bind(m);
        }
        if let Some(t) = filter.since_unix_nanos {
            query = query.bind(t);
        }
        if let Some(t) = filter.until_unix_nanos {
            query = query.bind(t);
        }
        if let Some(l) = filter.limit {
            query = query.bind(i64::from(l));
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let json: String = row.try_get("event")?;
                let event: AuditEvent =
                    serde_json::from_str(&json).map_err(|e| StoreError::Backend(e.to_string()))?;
                let principal: String = row.try_get("principal")?;
                let method: String = row.try_get("method")?;
                let resource: String = row.try_get("resource")?;
                let time: i64 = row.try_get("time_nanos")?;
                let columns_match = principal == event.principal
                    && method == event.method
                    && resource == event.resource
                    && time == event.time_unix_nanos;
                Ok(StoredAuditEvent {
                    seq: row.try_get("seq")?,
                    event,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                    columns_match,
                })
            })
            .collect()
    }

    async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("seq")?, row.try_get("hash")?)))
            .transpose()
    }

    async fn append_checkpoint(&self, c: &AuditCheckpoint) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO audit_checkpoints (version, seq, head_hash, time_nanos, kid, signature) \
             SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS \
             (SELECT 1 FROM audit_events WHERE seq = ? AND hash = ?) RETURNING id",
        )
        .bind(i64::from(c.version))
        .bind(c.seq)
        .bind(&c.head_hash)
        .bind(c.time_unix_nanos)
        .bind(&c.kid)
        .bind(&c.signature)
        .bind(c.seq)
        .bind(&c.head_hash)
        .fetch_optional(&self.pool)
        .await?;
        id.ok_or(StoreError::NotFound)
    }

    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let version: i64 = row.try_get("version")?;
                Ok(AuditCheckpoint {
                    id: row.try_get("id")?,
                    // A version that does not fit cannot verify: the signature covers the real one.
                    version: u32::try_from(version).unwrap_or(u32::MAX),
                    seq: row.try_get("seq")?,
                    head_hash: row.try_get("head_hash")?,
                    time_unix_nanos: row.try_get("time_nanos")?,
                    kid: row.try_get("kid")?,
                    signature: row.try_get("signature")?,
                })
            })
            .collect()
    }

    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM audit_keys ORDER BY create_time, kid")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_key_from_row).collect()
    }

    async fn put_audit_key(&self, key: &AuditKeyRecord) -> Result<AuditKeyRecord> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_keys (kid, key_der, public_key, create_time) \
             SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM audit_keys)",
        )
        .bind(&key.kid)
        .bind(&key.key_der)
        .bind(&key.public_key)
        .bind(key.create_time_unix)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM audit_keys ORDER BY create_time, kid LIMIT 1")
            .fetch_one(&mut *tx)
            .await?;
        let stored = audit_key_from_row(&row)?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn purge_idempotency(&self, before_unix: i64, limit: u32) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM idempotency WHERE rowid IN \
             (SELECT rowid FROM idempotency WHERE create_time < ? ORDER BY create_time LIMIT ?)",
        )
        .bind(before_unix)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn purge_expired_issuances(&self, expired_before_unix: i64, limit: u32) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let issuances = sqlx::query(
            "DELETE FROM issuances WHERE rowid IN \
             (SELECT rowid FROM issuances WHERE not_after < ? ORDER BY not_after LIMIT ?)",
        )
        .bind(expired_before_unix)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left = u64::from(limit).saturating_sub(issuances);
        let tokens = if left == 0 {
            0
        } else {
            sqlx::query(
                "DELETE FROM tokens WHERE rowid IN \
                 (SELECT rowid FROM tokens WHERE expires < ? ORDER BY expires LIMIT ?)",
            )
            .bind(expired_before_unix)
            .bind(i64::try_from(left).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        tx.commit().await?;
        Ok(issuances + tokens)
    }

    async fn next_counter(&self, name: &str) -> Result<i64> {
        let value: i64 = sqlx::query_scalar(
            "INSERT INTO counters (name, value) VALUES (?, 1) \
             ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(value)
    }

    async fn change_epoch(&self) -> Result<i64> {
        let value: Option<i64> =
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'change_epoch'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(value.unwrap_or(0))
    }

    async fn put_principal(&self, p: &PrincipalRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO principals (id, kind, display_name, create_time) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, display_name = excluded.display_name",
        )
        .bind(&p.id)
        .bind(&p.kind)
        .bind(&p.display_name)
        .bind(p.create_time_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_principal(&self, id: &str) -> Result<Option<PrincipalRecord>> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn put_bearer_token(
        &self,
        token_sha256: &[u8],
        principal_id: &str,
        created_unix: i64,
        expires_unix: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO bearer_tokens (token_sha256, principal_id, create_time, expire_time) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(token_sha256)
        .bind(principal_id)
        .bind(created_unix)
        .bind(expires_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_user(
        &self,
        p: &PrincipalRecord,
        token_sha256: &[u8],
        expires_unix: Option<i64>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO principals (id, kind, display_name, create_time) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&p.id)
        .bind(&p.kind)
        .bind(&p.display_name)
        .bind(p.create_time_unix)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO bearer_tokens (token_sha256, principal_id, create_time, expire_time) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(token_sha256)
        .bind(&p.id)
        .bind(p.create_time_unix)
        .bind(expires_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn bearer(&self, token_sha256: &[u8]) -> Result<Option<BearerRecord>> {
        let row = sqlx::query(
            "SELECT p.*, t.expire_time FROM bearer_tokens t JOIN principals p ON p.id = t.principal_id \
             WHERE t.token_sha256 = ?",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(BearerRecord {
                principal: principal_from_row(&row)?,
                expires_unix: row.try_get("expire_time")?,
            })
        })
        .transpose()
    }

    async fn revoke_issuances(
        &self,
        target: &RevocationTarget,
        now_unix: i64,
        audit: Option<&AuditEvent>,
    ) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let query = match target {
            RevocationTarget::Serial { owner, serial_hex } => sqlx::query(
                "UPDATE issuances SET revoke_time = ? \
                 WHERE owner = ? AND serial = ? AND revoke_time IS NULL RETURNING serial",
            )
            .bind(now_unix)
            .bind(owner)
            .bind(serial_hex),
            RevocationTarget::Subject { owner, subject } => sqlx::query(
                "UPDATE issuances SET revoke_time = ? \
                 WHERE owner = ? AND subject = ? AND not_after > ? AND revoke_time IS NULL \
                 RETURNING serial",
            )
            .bind(now_unix)
            .bind(owner)
            .bind(subject)
            .bind(now_unix),
        };
        let mut revoked = Vec::new();
        for row in query.fetch_all(&mut *tx).await? {
            revoked.push(row.try_get::<String, _>(0)?);
        }
        if revoked.is_empty() {
            // Nothing changed: no audit event either (the transaction rolls back on drop).
            return Ok(revoked);
        }
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        tx.commit().await?;
        revoked.sort();
        Ok(revoked)
    }

    async fn revoke_bearer_tokens(
        &self,
        principal_id: &str,
        audit: Option<&AuditEvent>,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query("DELETE FROM bearer_tokens WHERE principal_id = ?")
            .bind(principal_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn sealed_keys(&self) -> Result<Vec<SealedKey>> {
        let mut out = Vec::new();
        for row in sqlx::query("SELECT owner, key_der FROM cas ORDER BY owner")
            .fetch_all(&self.pool)
            .await?
        {
            out.push(SealedKey {
                kind: "ca".into(),
                id: row.try_get("owner")?,
                sealed: row.try_get("key_der")?,
            });
        }
        for row in sqlx::query("SELECT kid, key_der FROM signing_keys ORDER BY kid")
            .fetch_all(&self.pool)
            .await?
        {
            out.push(SealedKey {
                kind: "signing_key".into(),
                id: row.try_get("kid")?,
                sealed: row.try_get("key_der")?,
            });
        }
        for row in sqlx::query("SELECT kid, key_der FROM audit_keys ORDER BY kid")
            .fetch_all(&self.pool)
            .await?
        {
            out.push(SealedKey {
                kind: "audit_key".into(),
                id: row.try_get("kid")?,
                sealed: row.try_get("key_der")?,
            });
        }
        Ok(out)
    }

    async fn replace_sealed_keys(
        &self,
        keys: &[SealedKey],
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            let sql = match key.kind.as_str() {
                "ca" => "UPDATE cas SET key_der = ? WHERE owner = ?",
                "signing_key" => "UPDATE signing_keys SET key_der = ? WHERE kid = ?",
                "audit_key" => "UPDATE audit_keys SET key_der = ? WHERE kid = ?",
                other => {
                    return Err(StoreError::Backend(format!(
                        "unknown sealed key kind {other}"
                    )));
                }
            };
            let updated = sqlx::query(sql)
                .bind(&key.sealed)
                .bind(&key.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated != 1 {
                return Err(StoreError::NotFound);
            }
        }
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY create_time DESC, kid")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SigningKeyRecord {
                    kid: row.try_get("kid")?,
                    key_der: row.try_get("key_der")?,
                    create_time_unix: row.try_get("create_time")?,
                })
            })
            .collect()
    }

    async fn put_signing_key(&self, key: &SigningKeyRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO signing_keys (kid, key_der, create_time) VALUES (?, ?, ?)")
            .bind(&key.kid)
            .bind(&key.key_der)
            .bind(key.create_time_unix)
            .execute(&mut *tx)
            .await?;
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn first_signing_key(&self, key: &SigningKeyRecord) -> Result<SigningKeyRecord> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, key_der, create_time) \
             SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
        )
        .bind(&key.kid)
        .bind(&key.key_der)
        .bind(key.create_time_unix)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM signing_keys ORDER BY create_time DESC, kid LIMIT 1")
            .fetch_one(&mut *tx)
            .await?;
        let stored = SigningKeyRecord {
            kid: row.try_get("kid")?,
            key_der: row.try_get("key_der")?,
            create_time_unix: row.try_get("create_time")?,
        };
        bump_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }
}

#[cfg(test)]
mod tests;
mod writer;

fn issuance_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<IssuanceRecord> {
    Ok(IssuanceRecord {
        serial_hex: row.try_get("serial")?,
        owner: row.try_get("owner")?,
        kind: row.try_get("kind")?,
        subject: row.try_get("subject")?,
        not_before_unix: row.try_get("not_before")?,
        not_after_unix: row.try_get("not_after")?,
        requester: row.try_get("requester")?,
        request_id: row.try_get("request_id")?,
        public_key_sha256: row.try_get("public_key_sha256")?,
        create_time_unix: row.try_get("create_time")?,
        metadata_exchange: row.try_get("metadata_exchange")?,
    })
}
