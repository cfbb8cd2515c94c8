//! The audit log from outside: its status vocabulary, and its anchoring. A real server writes events and
//! checkpoints; the tests then change the SQLite file the way an intruder with the data directory would
//! (cut the end off, rewrite it whole with consistent hashes, edit a checkpoint, re-sign with a fresh key)
//! and run the `clustercred audit verify` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use clustercred_store::{AuditEvent, AuditFilter, SqliteStore, Store};
use common::*;
use sqlx::Row;
use tonic::Code;

const LOC: &str = "projects/audit-project/locations/us-central1";

async fn admin_cluster(s: &TestServer, id: &str) {
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    c.create_cluster(alloydb::CreateClusterRequest {
        parent: LOC.into(),
        cluster_id: id.into(),
        cluster: Some(Default::default()),
        ..Default::default()
    })
    .await
    .expect("admin creates a cluster");
}

async fn issue(s: &TestServer, token: &str) -> Result<(), tonic::Status> {
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        Auth(Some(format!("Bearer {token}"))),
    );
    c.generate_client_certificate(alloydb::GenerateClientCertificateRequest {
        parent: format!("{LOC}/clusters/db"),
        public_key: p256().public_key_pem(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

fn cli(args: &[&str], data_dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clustercred"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("runs the CLI")
}

fn verify(data_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    cli(&args, data_dir)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_refused(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "expected {needle:?} in: {}",
        text(out)
    );
}

async fn pool(data_dir: &Path) -> sqlx::SqlitePool {
    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("clustercred.db"));
    sqlx::SqlitePool::connect_with(options)
        .await
        .expect("opens the database")
}

/// A server that issued three certificates and stopped (which anchors the head); the log verifies.
async fn anchored_log() -> (tempfile::TempDir, PathBuf) {
    let s = TestServer::start().await;
    admin_cluster(&s, "db").await;
    for _ in 0..3 {
        issue(&s, &s.token).await.expect("admin issues");
    }
    let data_dir = s.data_dir.clone();
    let dir = s.stop().await.expect("temp dir");
    let out = verify(&data_dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoints verified (newest vouches for event"),
        "{}",
        text(&out)
    );
    (dir, data_dir)
}

#[tokio::test]
async fn events_carry_canonical_status_names_version_and_count() {
    let s = TestServer::start().await;
    admin_cluster(&s, "db").await;
    issue(&s, &s.token).await.expect("admin issues");
    let token_file = s.data_dir.join("nobody.token");
    let out = cli(
        &[
            "iam",
            "create-user",
            "--id",
            "nobody",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &s.data_dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let nobody = std::fs::read_to_string(&token_file).unwrap();
    let err = issue(&s, &nobody).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let path = s.data_dir.join("clustercred.db");
    let _dir = s.stop().await;

    let store = SqliteStore::open(&path).await.unwrap();
    let events: Vec<AuditEvent> = store
        .list_audit(&AuditFilter {
            method_contains: Some("GenerateClientCertificate".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    let issued = events
        .iter()
        .find(|e| e.principal == "user:admin")
        .expect("the issuance is audited");
    assert_eq!(
        (issued.status.as_str(), issued.outcome.as_str()),
        ("OK", "ok")
    );
    let refused = events
        .iter()
        .find(|e| e.principal == "user:nobody")
        .expect("the refusal is audited");
    assert_eq!(
        (refused.status.as_str(), refused.outcome.as_str()),
        ("PERMISSION_DENIED", "denied")
    );
    for e in [issued, refused] {
        assert_eq!(e.version, 2);
        assert_eq!(e.count, 1);
        assert!(!e.request_id.starts_with("count="));
    }
    // Every event of the run, including bootstrap and CLI ones, speaks the same vocabulary.
    for e in store.list_audit(&AuditFilter::default()).await.unwrap() {
        assert!(
            !e.event.status.is_empty()
                && e.event
                    .status
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_'),
            "{:?}",
            e.event
        );
        assert!(["ok", "denied", "error"].contains(&e.event.outcome.as_str()));
    }
    store.close().await;
}

#[tokio::test]
async fn truncating_the_end_after_a_checkpoint_is_detected() {
    let (_dir, data_dir) = anchored_log().await;
    let db = pool(&data_dir).await;
    let deleted =
        sqlx::query("DELETE FROM audit_events WHERE seq > (SELECT MAX(seq) - 2 FROM audit_events)")
            .execute(&db)
            .await
            .unwrap()
            .rows_affected();
    assert_eq!(deleted, 2);
    db.close().await;
    // The hash chain alone cannot tell: what is left is a consistent prefix.
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(clustercred_store::verify_chain(&events), Ok(()));
    store.close().await;
    assert_refused(&verify(&data_dir, &[]), "removed from the end (truncation)");
}

/// Rewrites every event from the first on (one detail changed), recomputing every link.
async fn rewrite_consistently(db: &sqlx::SqlitePool) {
    let rows = sqlx::query("SELECT seq, event FROM audit_events ORDER BY seq")
        .fetch_all(db)
        .await
        .unwrap();
    let mut previous = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let seq: i64 = row.get("seq");
        let mut event: AuditEvent = serde_json::from_str(row.get("event")).unwrap();
        if i == 0 {
            event.detail = "nothing to see here".into();
        }
        let hash = event.chain_hash(&previous);
        sqlx::query("UPDATE audit_events SET event = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(serde_json::to_string(&event).unwrap())
            .bind(&previous)
            .bind(&hash)
            .bind(seq)
            .execute(db)
            .await
            .unwrap();
        previous = hash;
    }
}

#[tokio::test]
async fn a_consistent_rewrite_is_caught_by_the_signed_checkpoints() {
    let (_dir, data_dir) = anchored_log().await;
    let db = pool(&data_dir).await;
    rewrite_consistently(&db).await;
    db.close().await;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(
        clustercred_store::verify_chain(&events),
        Ok(()),
        "the rewritten chain is consistent"
    );
    store.close().await;
    assert_refused(&verify(&data_dir, &[]), "(the log was rewritten)");
}

#[tokio::test]
async fn a_rewrite_resigned_with_a_fresh_key_fails_against_the_exported_public_key() {
    let (dir, data_dir) = anchored_log().await;
    let out = cli(&["audit", "public-key"], &data_dir);
    assert!(out.status.success(), "{}", text(&out));
    let exported = String::from_utf8(out.stdout).unwrap();
    assert!(
        exported.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{exported}"
    );
    let key_file = dir.path().join("audit-public.pem");
    std::fs::write(&key_file, &exported).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let out = verify(&data_dir, &["--public-key", key_arg]);
    assert!(out.status.success(), "{}", text(&out));

    // An intruder who also holds the master key (it sits in the data directory by default) rewrites the log,
    // drops the checkpoints and the audit key, and re-anchors with a key of their own.
    let db = pool(&data_dir).await;
    rewrite_consistently(&db).await;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_keys")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let master = clustercred::bootstrap::master_key(&data_dir, None).unwrap();
    let fresh = clustercred::bootstrap::audit_key(&store, &master, 0)
        .await
        .unwrap();
    assert_ne!(&fresh.public_key().to_pem(), &exported);
    let (seq, hash) = store.audit_head().await.unwrap().unwrap();
    store
        .append_checkpoint(&fresh.checkpoint(seq, &hash, 1))
        .await
        .unwrap();
    store.close().await;

    // Everything inside the data directory now agrees with itself; the key kept elsewhere does not.
    let out = verify(&data_dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_refused(
        &verify(&data_dir, &["--public-key", key_arg]),
        "which is not a trusted key",
    );
}

#[tokio::test]
async fn an_edited_checkpoint_is_detected() {
    let (_dir, data_dir) = anchored_log().await;
    let db = pool(&data_dir).await;
    // Point the newest checkpoint at an earlier event, with that event's real hash: a truncation's cover.
    let changed = sqlx::query(
        "UPDATE audit_checkpoints SET seq = seq - 1, \
         head_hash = (SELECT hash FROM audit_events e WHERE e.seq = audit_checkpoints.seq - 1) \
         WHERE id = (SELECT MAX(id) FROM audit_checkpoints)",
    )
    .execute(&db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    db.close().await;
    assert_refused(
        &verify(&data_dir, &[]),
        "the signature does not verify (the checkpoint was altered or forged)",
    );
}

#[tokio::test]
async fn verify_anchors_what_it_verified_and_the_server_keeps_one_audit_key() {
    let (_dir, data_dir) = anchored_log().await;
    // A CLI event moves the head past the server's last checkpoint; verify anchors it.
    let token_file = data_dir.join("u.token");
    let out = cli(
        &[
            "iam",
            "create-user",
            "--id",
            "u",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &data_dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = verify(&data_dir, &[]);
    assert!(text(&out).contains("wrote checkpoint"), "{}", text(&out));
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let (head, _) = store.audit_head().await.unwrap().unwrap();
    assert_eq!(store.checkpoints().await.unwrap().last().unwrap().seq, head);
    store.close().await;
    // Cutting the newly anchored event off is now caught too.
    let db = pool(&data_dir).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = ?")
        .bind(head)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    assert_refused(&verify(&data_dir, &[]), "truncation");

    // A restart keeps the audit key it generated on first start.
    let s = TestServer::start_in(data_dir.clone()).await;
    s.stop().await;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    assert_eq!(store.audit_keys().await.unwrap().len(), 1);
    store.close().await;
}

/// Issuance and token records of credentials expired longer than `--issuance-retention-days` are purged by
/// the running server; younger and still valid ones stay, with 0 nothing goes, and the audit log is never
/// pruned (it still verifies from its first event).
#[tokio::test]
async fn expired_issuance_records_go_after_their_retention_and_the_audit_log_stays() {
    let (_dir, data_dir) = anchored_log().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 86_400;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let owner = clustercred_store::ca_owner("alloydb.Cluster", &format!("{LOC}/clusters/db"));
    let valid = store.list_issuances(&owner).await.unwrap();
    assert_eq!(valid.len(), 3, "the certificates the server issued");
    for (serial, expired_days_ago) in [("old", 31), ("older", 400), ("young", 29)] {
        let record = clustercred_store::IssuanceRecord {
            serial_hex: serial.into(),
            not_after_unix: now - expired_days_ago * day,
            not_before_unix: now - expired_days_ago * day - 3600,
            create_time_unix: now - expired_days_ago * day - 3600,
            ..valid[0].clone()
        };
        store.record_issuance(&record, None, None).await.unwrap();
        let token = clustercred_store::TokenRecord {
            token_id: serial.into(),
            owner: owner.clone(),
            subject: "agent".into(),
            expires_unix: now - expired_days_ago * day,
            create_time_unix: now - expired_days_ago * day - 3600,
        };
        store.record_token(&token, None).await.unwrap();
    }
    let events = store
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .len();
    store.close().await;
    let serials = || async {
        let store = SqliteStore::open(&data_dir.join("clustercred.db"))
            .await
            .unwrap();
        let mut serials: Vec<String> = store
            .list_issuances(&owner)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.serial_hex)
            .filter(|s| ["old", "older", "young"].contains(&s.as_str()))
            .collect();
        serials.sort();
        store.close().await;
        let db = pool(&data_dir).await;
        let mut tokens: Vec<String> = sqlx::query_scalar("SELECT token_id FROM tokens")
            .fetch_all(&db)
            .await
            .unwrap();
        tokens.sort();
        db.close().await;
        (serials, tokens)
    };

    // Retention 0: kept forever (the purge runs as the server starts; give it time to act).
    let mut config = clustercred::ServeConfig::for_data_dir(data_dir.clone());
    config.issuance_retention_days = 0;
    let s = TestServer::start_with(config).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.stop().await;
    let everything = vec!["old".to_string(), "older".into(), "young".into()];
    assert_eq!(serials().await, (everything.clone(), everything));

    // The default, 30 days: what expired 31 and 400 days ago goes, what expired 29 days ago stays.
    let s = TestServer::start_in(data_dir.clone()).await;
    let young = vec!["young".to_string()];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serials().await != (young.clone(), young.clone()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not purged: {:?}",
            serials().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    s.stop().await;
    let store = SqliteStore::open(&data_dir.join("clustercred.db"))
        .await
        .unwrap();
    assert_eq!(
        store.list_issuances(&owner).await.unwrap().len(),
        4,
        "the three valid certificates and the young record"
    );
    assert!(
        store
            .list_audit(&AuditFilter::default())
            .await
            .unwrap()
            .len()
            >= events
    );
    store.close().await;
    let out = verify(&data_dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
}
