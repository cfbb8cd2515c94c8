//! `kill -9` under load (issue 13): after a restart, every certificate a client received is in the issuance
//! records, a retry with its request id gets the same certificate back, and `audit verify` passes. Run on the
//! real binary, on SQLite and on PostgreSQL.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustercred_store::{PgStore, PgStoreOptions, SqliteStore, Store, ca_owner};
use common::{create_cluster_c1, issue_c1};
use serde_json::Value;
use sqlx::Connection;

const LOC: &str = "projects/crash/locations/l1";
const BIN: &str = env!("CARGO_BIN_EXE_clustercred");

/// Starts `clustercred serve` on a free port; returns the child and its base URL.
fn start(data_dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting clustercred");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, format!("http://{addr}"))
}

fn serial_of(answer: &Value) -> String {
    let pem_text = answer["pemCertificateChain"][0].as_str().unwrap();
    let der = pem::parse(pem_text).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(cert.tbs_certificate.raw_serial())
}

/// The certificate a client received, if the call succeeded.
async fn issue(base: &str, token: &str, key_pem: &str, request_id: &str) -> Option<Value> {
    match issue_c1(base, token, LOC, key_pem, Some(request_id)).await {
        Ok((200, answer)) => Some(answer),
        _ => None,
    }
}

/// Loads the server from 8 clients until it dies; returns every (request id, answer) a client received.
async fn load_until_killed(
    base: &str,
    token: &str,
    key: &str,
    mut child: Child,
) -> Vec<(String, Value)> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut workers = Vec::new();
    for w in 0..8 {
        let (base, token, key, received) = (
            base.to_string(),
            token.to_string(),
            key.to_string(),
            received.clone(),
        );
        workers.push(tokio::spawn(async move {
            for n in 0u64.. {
                let rid = format!("00000000-0000-4000-8{w:03}-{n:012}");
                match issue(&base, &token, &key, &rid).await {
                    Some(answer) => received.lock().unwrap().push((rid, answer)),
                    None => break,
                }
                if Instant::now() > deadline {
                    break;
                }
            }
        }));
    }
    // Let the load run, then kill without warning.
    while received.lock().unwrap().len() < 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    Arc::try_unwrap(received).unwrap().into_inner().unwrap()
}

async fn crash_and_recover(
    data_dir: &Path,
    extra: &[&str],
    store: impl AsyncFnOnce() -> Box<dyn Store>,
) {
    let (child, base) = start(data_dir, extra);
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    assert_eq!(create_cluster_c1(&base, &token, LOC).await, 200);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .public_key_pem();
    let received = load_until_killed(&base, &token, &key, child).await;
    assert!(received.len() >= 150, "the load ran: {}", received.len());

    let (mut child, base) = start(data_dir, extra);
    let store = store().await;
    let recorded: std::collections::HashSet<String> = store
        .list_issuances(&ca_owner("alloydb.Cluster", &format!("{LOC}/clusters/c1")))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.serial_hex)
        .collect();
    for (rid, answer) in &received {
        let serial = serial_of(answer);
        assert!(
            recorded.contains(&serial),
            "certificate {serial} ({rid}) was received but not recorded"
        );
    }
    // Retries after the restart replay what the client got, on every request id (the last ones especially).
    for (rid, answer) in received.iter().rev().take(40) {
        let again = issue(&base, &token, &key, rid)
            .await
            .expect("retry answered");
        assert_eq!(&again, answer, "retry of {rid} after the crash");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("CLUSTERCRED_DATABASE")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit verify after the crash: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_on_sqlite_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("clustercred.db");
    crash_and_recover(&data, &[], async || {
        Box::new(SqliteStore::open(&db).await.unwrap()) as Box<dyn Store>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_on_postgres_loses_nothing() {
    let admin_url = std::env::var("CLUSTERCRED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("crash_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed: {e}"));
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let dir = tempfile::tempdir().unwrap();
    let key = common::master_key_file(dir.path());
    let database = format!("--database={url}");
    let master = format!("--master-key-file={}", key.display());
    let store_url = url.clone();
    crash_and_recover(
        &dir.path().join("data"),
        &[&database, &master],
        async move || {
            Box::new(
                PgStore::connect(&store_url, PgStoreOptions::default())
                    .await
                    .unwrap(),
            ) as Box<dyn Store>
        },
    )
    .await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
}
