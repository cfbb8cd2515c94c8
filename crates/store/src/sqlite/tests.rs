//! SQLite-only cases. The backend-independent ones live in the store test kit (crates/store/tests/kit.rs),
//! which runs each on SQLite and PostgreSQL.

use super::*;

const C1: &str = "projects/p/locations/l/clusters/c1";

fn issuance(serial: &str, owner: &str, request_id: Option<&str>) -> IssuanceRecord {
    IssuanceRecord {
        serial_hex: serial.into(),
        owner: owner.into(),
        kind: "client_certificate".into(),
        subject: "admin".into(),
        not_before_unix: 1,
        not_after_unix: 2,
        requester: "admin".into(),
        request_id: request_id.map(Into::into),
        public_key_sha256: "ab".into(),
        create_time_unix: 100,
        metadata_exchange: false,
    }
}

fn event(n: i64, principal: &str, resource: &str) -> AuditEvent {
    AuditEvent {
        time_unix_nanos: n,
        principal: principal.into(),
        method: "google.cloud.alloydb.v1.AlloyDBAdmin/GenerateClientCertificate".into(),
        resource: resource.into(),
        outcome: "ok".into(),
        status: "OK".into(),
        detail: format!("serial {n}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_batch_claims_request_ids_in_order_and_chains_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    let idem = |response: u8| IdempotencyRecord {
        scope: "alloydb.generateClientCertificate".into(),
        request_id: "r1".into(),
        request_hash: vec![1],
        response: vec![response],
        create_time_unix: 100,
    };
    let token = TokenRecord {
        token_id: "t1".into(),
        owner: C1.into(),
        subject: "sa".into(),
        expires_unix: 200,
        create_time_unix: 100,
    };
    let items = vec![
        WriteItem::Audit(event(1, "anonymous", C1)),
        WriteItem::Issuance {
            issuance: issuance("s1", C1, Some("r1")),
            idempotency: Some(idem(42)),
            audit: Some(event(2, "user:admin", C1)),
        },
        WriteItem::Issuance {
            issuance: issuance("s2", C1, Some("r1")),
            idempotency: Some(idem(43)),
            audit: Some(event(3, "user:admin", C1)),
        },
        WriteItem::Issuance {
            issuance: issuance("s3", C1, None),
            idempotency: None,
            audit: Some(event(4, "user:admin", C1)),
        },
        WriteItem::Token {
            token,
            audit: Some(event(5, "agent", C1)),
        },
    ];
    let outcomes = s.write_batch(&items).await.unwrap();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(outcomes[1], IssuanceOutcome::Recorded);
    match &outcomes[2] {
        IssuanceOutcome::Replay(r) => assert_eq!(r.response, vec![42], "the first item won"),
        other => panic!("expected a replay, got {other:?}"),
    }
    let serials: Vec<String> = s
        .list_issuances(C1)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.serial_hex)
        .collect();
    assert_eq!(serials, ["s1", "s3"], "the loser wrote nothing");
    let events = s.list_audit(&AuditFilter::default()).await.unwrap();
    let times: Vec<i64> = events.iter().map(|e| e.event.time_unix_nanos).collect();
    assert_eq!(times, [1, 2, 4, 5], "in item order, without the loser's");
    verify_chain(&events).unwrap();

    // Concurrent single writes from many tasks are grouped and still form one chain.
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move { s.append_audit(&event(100 + n, "user:x", C1)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 68);
    verify_chain(&events).unwrap();
}

/// A database written by clustercred before sqlx's migrator: the schema files run by hand, their count in
/// `PRAGMA user_version`, no `_sqlx_migrations` table.
async fn legacy_database(path: &std::path::Path, version: usize) -> sqlx::SqliteConnection {
    let files = [
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/sqlite/0002_policies_and_audit_log.sql"),
        include_str!("../../migrations/sqlite/0003_bearer_token_expiry.sql"),
        include_str!("../../migrations/sqlite/0004_audit_anchoring.sql"),
    ];
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    for sql in &files[..version] {
        sqlx::raw_sql(*sql).execute(&mut conn).await.unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA user_version = {version}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

/// `(version, checksum, installed_on, execution_time)` of every recorded migration.
async fn recorded(path: &std::path::Path) -> Vec<(i64, Vec<u8>, String, i64)> {
    let options = SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT version, checksum, CAST(installed_on AS TEXT), execution_time FROM _sqlx_migrations \
         WHERE success ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

fn every_migration() -> Vec<(i64, Vec<u8>)> {
    migrator()
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect()
}

#[tokio::test]
async fn a_user_version_database_is_adopted_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut conn = legacy_database(&path, 4).await;
    sqlx::raw_sql(
        "INSERT INTO principals (id, kind, display_name, create_time) VALUES ('admin', 'user', 'Admin', 1); \
         INSERT INTO bearer_tokens (token_sha256, principal_id, create_time, expire_time) \
             VALUES (x'0102', 'admin', 1, NULL); \
         INSERT INTO signing_keys (kid, key_der, create_time) VALUES ('k1', x'09', 5); \
         INSERT INTO issuances (serial, owner, kind, subject, not_before, not_after, requester, request_id, \
             public_key_sha256, create_time) \
             VALUES ('s1', 'projects/p/locations/l/clusters/c1', 'client_certificate', 'admin', 1, 2, 'admin', \
             NULL, 'ab', 100); \
         INSERT INTO audit_keys (kid, key_der, public_key, create_time) VALUES ('a1', x'01', x'02', 3);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let s = SqliteStore::open(&path).await.unwrap();
    let bearer = s.bearer(&[1, 2]).await.unwrap().expect("the token is kept");
    assert_eq!(bearer.principal.display_name, "Admin");
    assert_eq!(s.signing_keys().await.unwrap()[0].kid, "k1");
    assert_eq!(s.list_issuances(C1).await.unwrap()[0].serial_hex, "s1");
    assert_eq!(s.audit_keys().await.unwrap()[0].kid, "a1");
    // The store works on the adopted schema: a batch and the audit chain.
    s.write_batch(&[WriteItem::Issuance {
        issuance: issuance("s2", C1, Some("r1")),
        idempotency: None,
        audit: Some(event(1, "user:admin", C1)),
    }])
    .await
    .unwrap();
    s.close().await;
    let history = recorded(&path).await;
    let versions: Vec<(i64, Vec<u8>)> = history.iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(
        versions,
        every_migration(),
        "each recorded with its checksum"
    );
    // 1..=4 were recorded, not run again (sqlx marks a skipped migration with execution_time -1); any later
    // migration ran.
    for (version, _, _, time) in &history {
        assert_eq!(*version <= 4, *time == -1, "migration {version}");
    }

    // Reopening changes nothing.
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.list_issuances(C1).await.unwrap().len(), 2);
    s.close().await;
    assert_eq!(recorded(&path).await, history);
}

#[tokio::test]
async fn an_older_user_version_database_gets_the_later_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let mut conn = legacy_database(&path, 2).await;
    sqlx::raw_sql(
        "INSERT INTO principals (id, kind, display_name, create_time) VALUES ('u', 'user', 'U', 1); \
         INSERT INTO bearer_tokens (token_sha256, principal_id, create_time) VALUES (x'07', 'u', 1); \
         INSERT INTO policies (resource, data, etag, update_time) VALUES ('root', x'01', x'02', 1);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let s = SqliteStore::open(&path).await.unwrap();
    // Migration 3 ran: the old token has no expiry, new ones may have one.
    let old = s.bearer(&[7]).await.unwrap().unwrap();
    assert_eq!(old.expires_unix, None);
    s.put_bearer_token(&[8], "u", 1, Some(50)).await.unwrap();
    assert_eq!(
        s.bearer(&[8]).await.unwrap().unwrap().expires_unix,
        Some(50)
    );
    assert_eq!(s.get_policy("root").await.unwrap().unwrap().data, vec![1]);
    // Migration 4 ran: the audit key table exists.
    let key = AuditKeyRecord {
        kid: "a".into(),
        key_der: vec![1],
        public_key: vec![2],
        create_time_unix: 1,
    };
    assert_eq!(s.put_audit_key(&key).await.unwrap(), key);
    s.close().await;
    let history = recorded(&path).await;
    let versions: Vec<(i64, Vec<u8>)> = history.iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(versions, every_migration());
    for (version, _, _, time) in &history {
        assert_eq!(*version <= 2, *time == -1, "migration {version}");
    }
}

#[tokio::test]
async fn a_fresh_database_migrates_and_reopening_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let s = SqliteStore::open(&path).await.unwrap();
    s.put_principal(&PrincipalRecord {
        id: "u".into(),
        kind: "user".into(),
        display_name: "U".into(),
        create_time_unix: 1,
    })
    .await
    .unwrap();
    s.close().await;
    let history = recorded(&path).await;
    let versions: Vec<(i64, Vec<u8>)> = history.iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(versions, every_migration());
    assert!(history.iter().all(|r| r.3 >= 0), "every migration ran");

    let s = SqliteStore::open(&path).await.unwrap();
    assert!(s.get_principal("u").await.unwrap().is_some());
    s.close().await;
    assert_eq!(recorded(&path).await, history);
    // An older clustercred (user_version scheme) sees the newest version and refuses a newer schema.
    let options = SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(Some(version), every_migration().last().map(|m| m.0));
}

#[tokio::test]
async fn a_database_from_a_newer_clustercred_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let options = SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = recorded(&path).await;
    let refused = SqliteStore::open(&path).await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(m)) if m.contains("9999")),
        "{refused:?}"
    );
    assert_eq!(recorded(&path).await, before);
}

/// Processes opening one new file at once (a server and the CLI) take turns under the write lock: each comes
/// up, and the migrations are recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_a_fresh_file_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    for open in opens {
        open.await
            .unwrap()
            .expect("every opener comes up")
            .close()
            .await;
    }
    let versions: Vec<(i64, Vec<u8>)> = recorded(&path)
        .await
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(versions, every_migration());
}

/// The retention purge's batches are read off the expiry indexes (oldest first, no table scan, no sort).
#[tokio::test]
async fn expiry_purges_read_the_expiry_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    for (table, column, index) in [
        ("issuances", "not_after", "issuances_by_expiry"),
        ("tokens", "expires", "tokens_by_expiry"),
    ] {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT rowid FROM {table} WHERE {column} < 1 ORDER BY {column} LIMIT 10"
        );
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&s.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get("detail").unwrap())
            .collect();
        assert_eq!(
            plan,
            [format!(
                "SEARCH {table} USING COVERING INDEX {index} ({column}<?)"
            )],
            "{table}"
        );
    }
}

/// The writer's connection keeps checkpointing (its own, like the pool's): under writes without a pause, the
/// WAL starts over instead of growing, and what it held reaches the database file.
#[tokio::test]
async fn the_wal_stays_bounded_under_continuous_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = SqliteStore::open(&path).await.unwrap();
    // About 30 frames (4 KiB pages) per batch, and the writer checkpoints every few hundred frames: the run
    // writes several times the WAL's bound below.
    const WAL_FRAMES: u64 = 4096;
    let batches = 3 * WAL_FRAMES as usize / 30 * 2;
    for b in 0..batches {
        let items: Vec<WriteItem> = (0..8)
            .map(|i| {
                let n = b * 8 + i;
                let id = format!("r{n:08}");
                WriteItem::Issuance {
                    issuance: issuance(&format!("s{n:08}"), C1, Some(&id)),
                    idempotency: Some(IdempotencyRecord {
                        scope: "alloydb.generateClientCertificate".into(),
                        request_id: id,
                        request_hash: vec![1],
                        response: vec![n as u8; 3000],
                        create_time_unix: 100,
                    }),
                    audit: Some(event(n as i64, "user:admin", C1)),
                }
            })
            .collect();
        s.write_batch(&items).await.unwrap();
    }
    let page: u64 = 4096 + 24;
    let wal = std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(
        wal <= 2 * WAL_FRAMES * page,
        "the WAL holds {wal} bytes after {batches} batches"
    );
    // The writer's own interval, not SQLite's default of 1000 frames: the last batch before a checkpoint ends
    // at most one batch past it.
    assert!(
        wal <= (u64::from(writer::CHECKPOINT_FRAMES) + 64) * page,
        "the WAL grew to {wal} bytes, past the writer's checkpoint interval"
    );
    // 3 KB responses alone: 24 KB a batch.
    assert!(
        db >= (batches as u64 * 24_000) / 2,
        "the database file holds {db} bytes"
    );
    assert_eq!(s.list_issuances(C1).await.unwrap().len(), batches * 8);
}
