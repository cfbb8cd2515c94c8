//! The store test kit: every case is written once against `dyn Store` (kit/cases.rs) and runs on each
//! backend: SQLite in a temporary file, and PostgreSQL in a fresh database on the server named by
//! `CLUSTERCRED_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`; `scripts/pg-for-tests`
//! starts one). Without a reachable PostgreSQL the PostgreSQL cases fail; they are never skipped.

#[path = "kit/cases.rs"]
mod cases;
#[path = "kit/env.rs"]
mod env;

use std::time::{Duration, Instant};

use clustercred_store::{
    AuditEvent, AuditFilter, PgStore, PgStoreOptions, SqliteStore, Store, StoreError, verify_chain,
};
use env::Env;
use sqlx::Connection;

macro_rules! kit {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let env = crate::Env::sqlite().await;
                    crate::cases::$case(&env).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let env = crate::Env::postgres().await;
                    crate::cases::$case(&env).await;
                }
            )*
        }
    };
}

kit!(
    create_get_list_delete_with_children_and_ca,
    delete_does_not_touch_names_sharing_a_prefix,
    list_pages_in_byte_order,
    issuance_with_idempotency_replays_the_first_winner,
    counters_principals_tokens_keys,
    data_persists_across_reopen,
    audit_events_chain_and_filter,
    policies_compare_and_set_on_etag,
    same_name_in_two_apis_keeps_two_cas,
    checkpoints_only_for_events_on_the_chain_and_one_audit_key,
    failed_writes_leave_nothing,
    concurrent_issuances_with_one_request_id_replay_the_winner,
    concurrent_set_policy_from_one_etag_one_conflict,
    concurrent_appends_from_replicas_keep_one_chain,
    batch_with_one_request_id_twice_records_then_replays,
    change_epoch_moves_with_every_cache_relevant_write,
    bearer_tokens_expire,
    cache_sees_other_writers_within_its_staleness,
    concurrent_first_audit_keys_agree,
    concurrent_first_starts_agree_on_key_and_administrator,
    expired_request_ids_are_purged_in_bounded_batches,
    issuances_revoke_by_serial_or_subject_once,
    resources_of_a_kind_list_across_parents,
    expired_issuances_and_tokens_are_purged_in_bounded_batches,
);

/// Replicas starting at once on an empty database: the migrator's advisory lock lets one create the schema;
/// all of them come up and share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrate_a_fresh_database_concurrently() {
    let env = Env::postgres().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let options = env.pg_options();
            tokio::spawn(
                async move { PgStore::connect_with(options, PgStoreOptions::default()).await },
            )
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().expect("every replica starts"));
    }
    for (i, s) in stores.iter().enumerate() {
        let mut e = clustercred_store::AuditEvent {
            time_unix_nanos: i as i64,
            ..Default::default()
        };
        e.detail = format!("replica {i}");
        s.append_audit(&e).await.unwrap();
    }
    let events = stores[0].list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(verify_chain(&events), Ok(()));
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&env.pg_options())
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files, "every migration applied once");
    // A later start finds the schema in place.
    PgStore::connect_with(env.pg_options(), PgStoreOptions::default())
        .await
        .unwrap();
}

/// A database that cannot be reached answers `Unavailable` (retryable) within the acquire timeout instead of
/// hanging. Port 1 on loopback refuses connections.
#[tokio::test]
async fn postgres_unreachable_is_unavailable_fast() {
    let started = Instant::now();
    let options = PgStoreOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(2),
        ..PgStoreOptions::default()
    };
    let result = PgStore::connect("postgres://postgres@127.0.0.1:1/none", options).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The kit fails a PostgreSQL case when no server answers, rather than passing or skipping it.
#[tokio::test]
async fn kit_fails_without_postgres() {
    let joined = tokio::spawn(Env::postgres_at(
        "postgres://postgres@127.0.0.1:1/none".into(),
    ))
    .await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "an unreachable server must fail the case"
    );
}

/// A write that waits for a lock another session holds gives up after the store timeout with `Unavailable`
/// (PostgreSQL: `statement_timeout` cancels the wait), writes nothing, and the store works once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_waits_end_at_the_statement_timeout() {
    let env = Env::postgres().await;
    let options = PgStoreOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(1),
    };
    let store = PgStore::connect_with(env.pg_options(), options)
        .await
        .unwrap();
    let mut other = sqlx::PgConnection::connect_with(&env.pg_options())
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    append_gives_up_at_the_one_second_timeout(&store).await;
    tx.rollback().await.unwrap();
    store.append_audit(&AuditEvent::default()).await.unwrap();
    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 1, "the cancelled append wrote nothing");
    store.close().await;
}

/// An append blocked by another session's lock answers `Unavailable` after the store's 1 s timeout, not
/// sooner, and long before a hang.
async fn append_gives_up_at_the_one_second_timeout(store: &dyn Store) {
    let started = Instant::now();
    let blocked = store.append_audit(&AuditEvent::default()).await;
    let waited = started.elapsed();
    assert!(
        matches!(blocked, Err(StoreError::Unavailable(_))),
        "{blocked:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "gave up after {waited:?}"
    );
}

/// The same with SQLite: another process's write transaction holds the file's write lock; a write gives up
/// after the busy timeout with `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lock_waits_end_at_the_busy_timeout() {
    let env = Env::sqlite().await;
    let Env::Sqlite { path, .. } = &env else {
        unreachable!()
    };
    let store = SqliteStore::open_with_timeout(path, Duration::from_secs(1))
        .await
        .unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let tx = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    append_gives_up_at_the_one_second_timeout(&store).await;
    tx.rollback().await.unwrap();
    store.append_audit(&AuditEvent::default()).await.unwrap();
    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 1, "the timed-out append wrote nothing");
    store.close().await;
}

/// On PostgreSQL too, the retention purge's batches can be read off the expiry indexes in expiry order.
#[tokio::test]
async fn postgres_expiry_purges_can_read_the_expiry_indexes() {
    let env = Env::postgres().await;
    let store = env.pg_store().await;
    let mut conn = sqlx::PgConnection::connect_with(&env.pg_options())
        .await
        .unwrap();
    // An empty table is scanned whatever the indexes; forbidding scans shows whether an index serves.
    sqlx::raw_sql("SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    for (table, column, index) in [
        ("issuances", "not_after", "issuances_by_expiry"),
        ("tokens", "expires", "tokens_by_expiry"),
    ] {
        let sql =
            format!("EXPLAIN SELECT 1 FROM {table} WHERE {column} < 1 ORDER BY {column} LIMIT 10");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            plan.iter().any(
                |line| line.contains(&format!("Index Only Scan using {index}"))
                    || line.contains(&format!("Index Scan using {index}"))
            ),
            "{table}: {plan:?}"
        );
    }
    store.close().await;
}
