//! The PostgreSQL backend, for several replicas sharing one database. Transactions run under READ COMMITTED;
//! every guarantee SQLite gets from its single writer (`BEGIN IMMEDIATE`) is enforced here by a statement:
//! the audit chain head is one row locked `FOR UPDATE`, a policy changes by a conditional `UPDATE` on its
//! etag, request ids and counters by `INSERT ... ON CONFLICT`, deletes by the rows they affected.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder, Row};

use crate::*;

/// How a [`PgStore`] connects.
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    /// Connections in the pool at most.
    pub max_connections: u32,
    /// How long a caller waits for a connection before the store answers `Unavailable`: an unreachable
    /// database fails requests fast instead of queueing them.
    pub acquire_timeout: Duration,
    /// The longest a statement may run, lock waits included, before PostgreSQL cancels it (`statement_timeout`
    /// of every pooled session; zero: no limit). A cancelled statement answers `Unavailable` and its
    /// transaction writes nothing. Schema migrations are not bound by it.
    pub statement_timeout: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        PgStoreOptions {
            max_connections: 8,
            acquire_timeout: DEFAULT_STORE_TIMEOUT,
            statement_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Commits the writes of concurrent requests of this process together (see [`GroupCommit`]).
    group: Arc<GroupCommit>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

struct PgWriter {
    pool: PgPool,
}

/// The schema migrations, in order (see [`crate::migration`]).
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        migration(
            2,
            "expiry_indexes",
            include_str!("../../migrations/postgres/0002_expiry_indexes.sql"),
        ),
        migration(
            3,
            "alloydb_endpoint",
            include_str!("../../migrations/postgres/0003_alloydb_endpoint.sql"),
        ),
        migration(
            4,
            "fewer_index_writes",
            include_str!("../../migrations/postgres/0004_fewer_index_writes.sql"),
        ),
    ])
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db?...`) and brings its schema up to
    /// date. Replicas may start together: the migrator holds an advisory lock while it works.
    pub async fn connect(url: &str, options: PgStoreOptions) -> Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)?;
        Self::connect_with(connect, options).await
    }

    pub async fn connect_with(
        connect: PgConnectOptions,
        options: PgStoreOptions,
    ) -> Result<PgStore> {
        // Milliseconds, PostgreSQL's unit for a bare number; set per session after connecting rather than as a
        // startup parameter, which poolers such as PgBouncer refuse.
        let statement_timeout =
            u64::try_from(options.statement_timeout.as_millis()).unwrap_or(u64::MAX);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let set = format!("SET statement_timeout = {statement_timeout}");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(connect)
            .await?;
        {
            let mut conn = pool.acquire().await?;
            // The migration connection is never pooled: it runs without the statement timeout (waiting for
            // another replica's migration, or building an index on a large table, may well take longer), and a
            // migration that fails part-way leaves its session holding the migrator's advisory lock.
            conn.close_on_drop();
            sqlx::raw_sql("SET statement_timeout = 0")
                .execute(&mut *conn)
                .await?;
            // `run_direct` rather than `run`: `run`'s future cannot be proven `Send` (sqlx's `Acquire` is not
            // general enough), and a caller must be able to spawn `connect`.
            migrator().run_direct(None, &mut *conn, false).await?;
        }
        let group = Arc::new(GroupCommit::start(Arc::new(PgWriter {
            pool: pool.clone(),
        })));
        Ok(PgStore { pool, group })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }
}

/// Ends a write transaction with its commit's result. A transaction dropped uncommitted (an error returned
/// part-way) is rolled back by sqlx before its connection is reused; a connection whose COMMIT failed is in
/// an unknown state and is closed rather than pooled.
fn finish(
    committed: std::result::Result<(), sqlx::Error>,
    conn: &mut PoolConnection<Postgres>,
) -> Result<()> {
    committed.map_err(|e| {
        conn.close_on_drop();
        e.into()
    })
}

fn resource_from_row(row: &PgRow) -> Result<ResourceRecord> {
    Ok(ResourceRecord {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        parent: row.try_get("parent")?,
        uid: row.try_get("uid")?,
        data: row.try_get("data")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn operation_from_row(row: &PgRow) -> Result<OperationRecord> {
    Ok(OperationRecord {
        name: row.try_get("name")?,
        parent: row.try_get("parent")?,
        data: row.try_get("data")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn idempotency_from_row(row: &PgRow) -> Result<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        scope: row.try_get("scope")?,
        request_id: row.try_get("request_id")?,
        request_hash: row.try_get("request_hash")?,
        response: row.try_get("response")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn audit_key_from_row(row: &PgRow) -> Result<AuditKeyRecord> {
    Ok(AuditKeyRecord {
        kid: row.try_get("kid")?,
        key_der: row.try_get("key_der")?,
        public_key: row.try_get("public_key")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn principal_from_row(row: &PgRow) -> Result<PrincipalRecord> {
    Ok(PrincipalRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        display_name: row.try_get("display_name")?,
        create_time_unix: row.try_get("create_time")?,
    })
}

fn policy_from_row(row: &PgRow) -> Result<PolicyRecord> {
    Ok(PolicyRecord {
        resource: row.try_get("resource")?,
        data: row.try_get("data")?,
        etag: row.try_get("etag")?,
        update_time_unix: row.try_get("update_time")?,
    })
}

/// The audit chain head as locked by this transaction.
struct Head {
    seq: i64,
    hash: Vec<u8>,
    moved: bool,
}

/// Locks the head row until the transaction ends: appends from every connection and replica queue here, and
/// each sees the head the previous one committed. Taken first in a transaction, before any other row, so
/// writers lock in one order (head, data, change epoch) and cannot deadlock on it.
async fn lock_head(c: &mut PgConnection) -> Result<Head> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        .fetch_one(c)
        .await?;
    Ok(Head {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        moved: false,
    })
}

/// The head lock for a write that records `audit`, if it does.
async fn lock_head_for(c: &mut PgConnection, audit: Option<&AuditEvent>) -> Result<Option<Head>> {
    match audit {
        Some(_) => Ok(Some(lock_head(c).await?)),
        None => Ok(None),
    }
}

/// Appends `event` after the locked head, with the next sequence number.
async fn append(c: &mut PgConnection, head: &mut Head, event: &AuditEvent) -> Result<()> {
    let seq = head.seq + 1;
    let hash = event.chain_hash(&head.hash);
    let json = serde_json::to_string(event).map_err(|e| StoreError::Backend(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audit_events (seq, event, principal, method, resource, time_nanos, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(json)
    .bind(&event.principal)
    .bind(&event.method)
    .bind(&event.resource)
    .bind(event.time_unix_nanos)
    .bind(&head.hash)
    .bind(&hash)
    .execute(c)
    .await?;
    head.seq = seq;
    head.hash = hash;
    head.moved = true;
    Ok(())
}

/// Writes the head back if events were appended.
async fn save_head(c: &mut PgConnection, head: &Head) -> Result<()> {
    if head.moved {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(head.seq)
            .bind(&head.hash)
            .execute(c)
            .await?;
    }
    Ok(())
}

/// Appends the one event of a write (its head was locked at the start by [`lock_head_for`]).
async fn audit_one(
    c: &mut PgConnection,
    head: Option<Head>,
    audit: Option<&AuditEvent>,
) -> Result<()> {
    if let (Some(mut head), Some(event)) = (head, audit) {
        append(c, &mut head, event).await?;
        save_head(c, &head).await?;
    }
    Ok(())
}

/// Marks a change that caches must see (see [`Store::change_epoch`]), in the writer's transaction.
async fn bump_epoch(c: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ('change_epoch', 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
    )
    .execute(c)
    .await?;
    Ok(())
}

async fn insert_operation(c: &mut PgConnection, op: &OperationRecord) -> Result<()> {
    sqlx::query("INSERT INTO operations (name, parent, data, create_time) VALUES ($1, $2, $3, $4)")
        .bind(&op.name)
        .bind(&op.parent)
        .bind(&op.data)
        .bind(op.create_time_unix)
        .execute(c)
        .await?;
    Ok(())
}

/// Inserts the idempotency record unless its key is taken; answers the record that holds the key if so.
/// `ON CONFLICT DO NOTHING` waits for a concurrent insert of the same key to commit or roll back, so the
/// read that follows sees the winner. If the winner vanished meanwhile (purged), the claim is tried again.
async fn claim_request_id(
    c: &mut PgConnection,
    idem: &IdempotencyRecord,
) -> Result<Option<IdempotencyRecord>> {
    for _ in 0..3 {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, request_id, request_hash, response, create_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, request_id) DO NOTHING",
        )
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .bind(&idem.request_hash)
        .bind(&idem.response)
        .bind(idem.create_time_unix)
        .execute(&mut *c)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM idempotency WHERE scope = $1 AND request_id = $2")
            .bind(&idem.scope)
            .bind(&idem.request_id)
            .fetch_optional(&mut *c)
            .await?;
        if let Some(row) = row {
            return Ok(Some(idempotency_from_row(&row)?));
        }
    }
    Err(StoreError::Unavailable(
        "a request id kept changing hands".into(),
    ))
}

/// `LIKE` pattern matching every kind of the API `kind` belongs to (`alloydb.Cluster` → `alloydb.%`).
fn kind_family_pattern(kind: &str) -> String {
    let api = kind.split('.').next().unwrap_or(kind);
    let mut p = like_escaped(api);
    p.push_str(".%");
    p
}

/// `LIKE` pattern matching every name strictly below `name` (`name/...`).
fn children_pattern(name: &str) -> String {
    let mut p = like_escaped(name);
    p.push_str("/%");
    p
}

fn like_escaped(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 3);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p
}

#[async_trait]
impl BatchWriter for PgWriter {
    /// One transaction, a constant number of statements whatever the batch size (each is a round trip to the
    /// server): lock the head, claim the request ids, insert issuances, tokens and audit events in one
    /// multi-row statement each, write the head back.
    async fn write_now(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Every batch takes the head first, even one without events: batches of all replicas then run one
        // after another, so two batches claiming the same request ids in different orders cannot deadlock.
        let mut head = lock_head(&mut tx).await?;
        // Request ids: insert-or-nothing in item order (PostgreSQL inserts a VALUES list in order, and DO
        // NOTHING skips a later duplicate of the same statement), so of two items with one id the first wins.
        let claims: Vec<&IdempotencyRecord> = items
            .iter()
            .filter_map(|item| match item {
                WriteItem::Issuance {
                    idempotency: Some(r),
                    ..
                } => Some(r),
                _ => None,
            })
            .collect();
        let mut claimed = std::collections::HashSet::new();
        if !claims.is_empty() {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO idempotency (scope, request_id, request_hash, response, create_time) ",
            );
            q.push_values(&claims, |mut b, r| {
                b.push_bind(&r.scope)
                    .push_bind(&r.request_id)
                    .push_bind(&r.request_hash)
                    .push_bind(&r.response)
                    .push_bind(r.create_time_unix);
            });
            q.push(" ON CONFLICT (scope, request_id) DO NOTHING RETURNING scope, request_id");
            for row in q.build().fetch_all(&mut *tx).await? {
                claimed.insert((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
            }
        }
        let mut outcomes = Vec::with_capacity(items.len());
        let mut issuances = Vec::new();
        let mut tokens = Vec::new();
        let mut events = Vec::new();
        for item in items {
            match item {
                WriteItem::Issuance {
                    issuance,
                    idempotency,
                    audit,
                } => {
                    if let Some(idem) = idempotency
                        && !claimed.remove(&(idem.scope.clone(), idem.request_id.clone()))
                    {
                        // Taken: by a committed record, or by an earlier item of this batch. (If the holder
                        // vanished meanwhile, purged, the claim is tried again on its own.)
                        if let Some(winner) = claim_request_id(&mut tx, idem).await? {
                            outcomes.push(IssuanceOutcome::Replay(winner));
                            continue;
                        }
                    }
                    issuances.push(issuance);
                    events.extend(audit.as_ref());
                }
                WriteItem::Token { token, audit } => {
                    tokens.push(token);
                    events.extend(audit.as_ref());
                }
                WriteItem::Audit(event) => events.push(event),
            }
            outcomes.push(IssuanceOutcome::Recorded);
        }
        if !issuances.is_empty() {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO issuances (serial, owner, kind, subject, not_before, not_after, requester, \
                 request_id, public_key_sha256, create_time, metadata_exchange) ",
            );
            q.push_values(&issuances, |mut b, i| {
                b.push_bind(&i.serial_hex)
                    .push_bind(&i.owner)
                    .push_bind(&i.kind)
                    .push_bind(&i.subject)
                    .push_bind(i.not_before_unix)
                    .push_bind(i.not_after_unix)
                    .push_bind(&i.requester)
                    .push_bind(&i.request_id)
                    .push_bind(&i.public_key_sha256)
                    .push_bind(i.create_time_unix)
                    .push_bind(i.metadata_exchange);
            });
            q.build().execute(&mut *tx).await?;
        }
        if !tokens.is_empty() {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO tokens (token_id, owner, subject, expires, create_time) ",
            );
            q.push_values(&tokens, |mut b, t| {
                b.push_bind(&t.token_id)
                    .push_bind(&t.owner)
                    .push_bind(&t.subject)
                    .push_bind(t.expires_unix)
                    .push_bind(t.create_time_unix);
            });
            q.build().execute(&mut *tx).await?;
        }
        if !events.is_empty() {
            let mut rows = Vec::with_capacity(events.len());
            for event in events {
                let hash = event.chain_hash(&head.hash);
                let json =
                    serde_json::to_string(event).map_err(|e| StoreError::Backend(e.to_string()))?;
                head.seq += 1;
                let prev = std::mem::replace(&mut head.hash, hash.clone());
                rows.push((head.seq, event, json, prev, hash));
            }
            head.moved = true;
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO audit_events (seq, event, principal, method, resource, time_nanos, prev_hash, hash) ",
            );
            q.push_values(&rows, |mut b, (seq, event, json, prev, hash)| {
                b.push_bind(*seq)
                    .push_bind(json)
                    .push_bind(&event.principal)
                    .push_bind(&event.method)
                    .push_bind(&event.resource)
                    .push_bind(event.time_unix_nanos)
                    .push_bind(prev)
                    .push_bind(hash);
            });
            q.build().execute(&mut *tx).await?;
        }
        save_head(&mut tx, &head).await?;
        finish(tx.commit().await, &mut conn)?;
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_resource(
        &self,
        resource: &ResourceRecord,
        ca: Option<&CaRecord>,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        sqlx::query(
            "INSERT INTO resources (kind, name, parent, uid, data, create_time) VALUES ($1, $2, $3, $4, $5, $6)",
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
                "INSERT INTO cas (owner, cert_pem, key_der, not_after, create_time) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (owner) DO UPDATE SET cert_pem = excluded.cert_pem, key_der = excluded.key_der, \
                 not_after = excluded.not_after, create_time = excluded.create_time",
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
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>> {
        let row = sqlx::query("SELECT * FROM resources WHERE kind = $1 AND name = $2")
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
            "SELECT * FROM resources WHERE kind = $1 AND parent = $2 AND name > $3 ORDER BY name LIMIT $4",
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
            "SELECT * FROM resources WHERE kind = $1 AND name > $2 ORDER BY name LIMIT $3",
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        let updated = sqlx::query("UPDATE resources SET data = $1 WHERE kind = $2 AND name = $3")
            .bind(&resource.data)
            .bind(&resource.kind)
            .bind(&resource.name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        // A concurrent delete of the same row waits for this one and then deletes nothing: one NotFound.
        let deleted = sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
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
            "DELETE FROM resources WHERE name LIKE $1 ESCAPE '\\' AND kind LIKE $2 ESCAPE '\\'",
        )
        .bind(&below)
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        // The resource's own CA, and those of its children (owners are `kind:name`).
        sqlx::query("DELETE FROM cas WHERE owner = $1 OR owner LIKE $2 ESCAPE '\\'")
            .bind(ca_owner(kind, name))
            .bind(format!("{family}:{below}"))
            .execute(&mut *tx)
            .await?;
        if let Some(operation) = operation {
            insert_operation(&mut tx, operation).await?;
        }
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn get_ca(&self, owner: &str) -> Result<Option<CaRecord>> {
        let row = sqlx::query("SELECT * FROM cas WHERE owner = $1")
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO cas (owner, cert_pem, key_der, not_after, create_time) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&ca.owner)
        .bind(&ca.cert_pem)
        .bind(&ca.key_der)
        .bind(ca.not_after_unix)
        .bind(ca.create_time_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn get_operation(&self, name: &str) -> Result<Option<OperationRecord>> {
        let row = sqlx::query("SELECT * FROM operations WHERE name = $1")
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
            "SELECT * FROM operations WHERE parent = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(parent)
        .bind(after_name.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(operation_from_row).collect()
    }

    async fn delete_operation(&self, name: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM operations WHERE name = $1")
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
        let row = sqlx::query("SELECT * FROM idempotency WHERE scope = $1 AND request_id = $2")
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
            sqlx::query("SELECT * FROM issuances WHERE owner = $1 ORDER BY create_time, serial")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(issuance_from_row).collect()
    }

    async fn get_issuance(&self, serial_hex: &str) -> Result<Option<IssuanceStatus>> {
        let row = sqlx::query("SELECT * FROM issuances WHERE serial = $1")
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

    async fn purge_idempotency(&self, before_unix: i64, limit: u32) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM idempotency WHERE (scope, request_id) IN \
                 (SELECT scope, request_id FROM idempotency WHERE create_time < $1 \
                  ORDER BY create_time LIMIT $2)",
        )
        .bind(before_unix)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Replicas purging at once take disjoint batches: rows another one is deleting are skipped, not waited
    /// for.
    async fn purge_expired_issuances(&self, expired_before_unix: i64, limit: u32) -> Result<u64> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let issuances = sqlx::query(
            "DELETE FROM issuances WHERE serial IN \
                 (SELECT serial FROM issuances WHERE not_after < $1 \
                  ORDER BY not_after LIMIT $2 FOR UPDATE SKIP LOCKED)",
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
                "DELETE FROM tokens WHERE token_id IN \
                     (SELECT token_id FROM tokens WHERE expires < $1 \
                      ORDER BY expires LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(expired_before_unix)
            .bind(i64::try_from(left).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        let committed = tx.commit().await;
        finish(committed, &mut conn)?;
        Ok(issuances + tokens)
    }

    async fn next_counter(&self, name: &str) -> Result<i64> {
        let value: i64 = sqlx::query_scalar(
            "INSERT INTO counters (name, value) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO principals (id, kind, display_name, create_time) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, display_name = excluded.display_name",
        )
        .bind(&p.id)
        .bind(&p.kind)
        .bind(&p.display_name)
        .bind(p.create_time_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn get_principal(&self, id: &str) -> Result<Option<PrincipalRecord>> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = $1")
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO bearer_tokens (token_sha256, principal_id, create_time, expire_time) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(principal_id)
        .bind(created_unix)
        .bind(expires_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn create_user(
        &self,
        p: &PrincipalRecord,
        token_sha256: &[u8],
        expires_unix: Option<i64>,
    ) -> Result<bool> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let created = sqlx::query(
            "INSERT INTO principals (id, kind, display_name, create_time) VALUES ($1, $2, $3, $4) \
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
            finish(tx.commit().await, &mut conn)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO bearer_tokens (token_sha256, principal_id, create_time, expire_time) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(&p.id)
        .bind(p.create_time_unix)
        .bind(expires_unix)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)?;
        Ok(true)
    }

    async fn bearer(&self, token_sha256: &[u8]) -> Result<Option<BearerRecord>> {
        let row = sqlx::query(
            "SELECT p.*, t.expire_time FROM bearer_tokens t JOIN principals p ON p.id = t.principal_id \
             WHERE t.token_sha256 = $1",
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        let query = match target {
            RevocationTarget::Serial { owner, serial_hex } => sqlx::query(
                "UPDATE issuances SET revoke_time = $1 \
                 WHERE owner = $2 AND serial = $3 AND revoke_time IS NULL RETURNING serial",
            )
            .bind(now_unix)
            .bind(owner)
            .bind(serial_hex),
            RevocationTarget::Subject { owner, subject } => sqlx::query(
                "UPDATE issuances SET revoke_time = $1 \
                 WHERE owner = $2 AND subject = $3 AND not_after > $1 AND revoke_time IS NULL \
                 RETURNING serial",
            )
            .bind(now_unix)
            .bind(owner)
            .bind(subject),
        };
        let mut revoked = Vec::new();
        for row in query.fetch_all(&mut *tx).await? {
            revoked.push(row.try_get::<String, _>(0)?);
        }
        if revoked.is_empty() {
            // Nothing changed: no audit event either (the transaction rolls back on drop).
            return Ok(revoked);
        }
        audit_one(&mut tx, head, audit).await?;
        finish(tx.commit().await, &mut conn)?;
        revoked.sort();
        Ok(revoked)
    }

    async fn revoke_bearer_tokens(
        &self,
        principal_id: &str,
        audit: Option<&AuditEvent>,
    ) -> Result<u64> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        let revoked = sqlx::query("DELETE FROM bearer_tokens WHERE principal_id = $1")
            .bind(principal_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)?;
        Ok(revoked)
    }

    async fn get_policy(&self, resource: &str) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query("SELECT * FROM policies WHERE resource = $1")
            .bind(resource)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        sqlx::query("SELECT * FROM policies ORDER BY resource")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(policy_from_row)
            .collect()
    }

    async fn set_policy(
        &self,
        policy: &PolicyRecord,
        expected_etag: Option<&[u8]>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        match expected_etag {
            None => {
                sqlx::query(
                    "INSERT INTO policies (resource, data, etag, update_time) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (resource) DO UPDATE SET data = excluded.data, etag = excluded.etag, \
                     update_time = excluded.update_time",
                )
                .bind(&policy.resource)
                .bind(&policy.data)
                .bind(&policy.etag)
                .bind(policy.update_time_unix)
                .execute(&mut *tx)
                .await?;
            }
            Some(expected) => {
                // Under READ COMMITTED a concurrent writer's committed change is re-checked against the
                // WHERE clause, so of two updates from one etag only the first matches a row.
                let mut changed = sqlx::query(
                    "UPDATE policies SET data = $1, etag = $2, update_time = $3 \
                     WHERE resource = $4 AND etag = $5",
                )
                .bind(&policy.data)
                .bind(&policy.etag)
                .bind(policy.update_time_unix)
                .bind(&policy.resource)
                .bind(expected)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // A policy never written has the empty etag; of two first writes only one inserts.
                if changed == 0 && expected.is_empty() {
                    changed = sqlx::query(
                        "INSERT INTO policies (resource, data, etag, update_time) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (resource) DO NOTHING",
                    )
                    .bind(&policy.resource)
                    .bind(&policy.data)
                    .bind(&policy.etag)
                    .bind(policy.update_time_unix)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                if changed == 0 {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict);
                }
            }
        }
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<StoredAuditEvent>> {
        let mut sql = String::from("SELECT * FROM audit_events WHERE TRUE");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.principal.is_some() {
            sql.push_str(&format!(" AND principal = {}", next()));
        }
        if filter.resource_prefix.is_some() {
            let (a, b) = (next(), next());
            sql.push_str(&format!(
                " AND (resource = {a} OR resource LIKE {b} ESCAPE '\\')"
            ));
        }
        if filter.method_contains.is_some() {
            sql.push_str(&format!(" AND strpos(method, {}) > 0", next()));
        }
        if filter.since_unix_nanos.is_some() {
            sql.push_str(&format!(" AND time_nanos >= {}", next()));
        }
        if filter.until_unix_nanos.is_some() {
            sql.push_str(&format!(" AND time_nanos < {}", next()));
        }
        sql.push_str(" ORDER BY seq");
        if filter.limit.is_some() {
            sql.push_str(&format!(" LIMIT {}", next()));
        }
        // Only numbered placeholders are appended above; every value is bound, in the same order.
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
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
             (SELECT 1 FROM audit_events WHERE seq = $2 AND hash = $3) RETURNING id",
        )
        .bind(i64::from(c.version))
        .bind(c.seq)
        .bind(&c.head_hash)
        .bind(c.time_unix_nanos)
        .bind(&c.kid)
        .bind(&c.signature)
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        // "Insert if the table is empty" has no conflict target to decide a race on, so first starts queue on
        // a table lock that writers take and readers do not; the second sees the first's key and keeps it.
        sqlx::query("LOCK TABLE audit_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_keys (kid, key_der, public_key, create_time) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM audit_keys)",
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
        finish(tx.commit().await, &mut conn)?;
        Ok(stored)
    }

    async fn sealed_keys(&self) -> Result<Vec<SealedKey>> {
        let mut out = Vec::new();
        for (kind, sql) in [
            ("ca", "SELECT owner AS id, key_der FROM cas ORDER BY owner"),
            (
                "signing_key",
                "SELECT kid AS id, key_der FROM signing_keys ORDER BY kid",
            ),
            (
                "audit_key",
                "SELECT kid AS id, key_der FROM audit_keys ORDER BY kid",
            ),
        ] {
            for row in sqlx::query(sql).fetch_all(&self.pool).await? {
                out.push(SealedKey {
                    kind: kind.into(),
                    id: row.try_get("id")?,
                    sealed: row.try_get("key_der")?,
                });
            }
        }
        Ok(out)
    }

    async fn replace_sealed_keys(
        &self,
        keys: &[SealedKey],
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = lock_head_for(&mut tx, audit).await?;
        for key in keys {
            let sql = match key.kind.as_str() {
                "ca" => "UPDATE cas SET key_der = $1 WHERE owner = $2",
                "signing_key" => "UPDATE signing_keys SET key_der = $1 WHERE kid = $2",
                "audit_key" => "UPDATE audit_keys SET key_der = $1 WHERE kid = $2",
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
        audit_one(&mut tx, head, audit).await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
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
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO signing_keys (kid, key_der, create_time) VALUES ($1, $2, $3)")
            .bind(&key.kid)
            .bind(&key.key_der)
            .bind(key.create_time_unix)
            .execute(&mut *tx)
            .await?;
        bump_epoch(&mut tx).await?;
        finish(tx.commit().await, &mut conn)
    }

    async fn first_signing_key(&self, key: &SigningKeyRecord) -> Result<SigningKeyRecord> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        // As for the audit key: no conflict target decides "the table is empty", a table lock does.
        sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO signing_keys (kid, key_der, create_time) \
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
        )
        .bind(&key.kid)
        .bind(&key.key_der)
        .bind(key.create_time_unix)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query("SELECT * FROM signing_keys ORDER BY create_time DESC, kid LIMIT 1")
            .fetch_one(&mut *tx)
            .await?;
        let stored = SigningKeyRecord {
            kid: row.try_get("kid")?,
            key_der: row.try_get("key_der")?,
            create_time_unix: row.try_get("create_time")?,
        };
        if inserted == 1 {
            bump_epoch(&mut tx).await?;
        }
        finish(tx.commit().await, &mut conn)?;
        Ok(stored)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

fn issuance_from_row(row: &sqlx::postgres::PgRow) -> Result<IssuanceRecord> {
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
