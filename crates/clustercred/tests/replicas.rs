//! Replicas on one PostgreSQL database (issue 13): they start together and bootstrap once, every replica
//! serves every request, a request id retried on the other replica gets the same certificate, concurrent
//! issuances across replicas are all recorded once, and a token minted by one replica works on the other.
//! Needs PostgreSQL: `CLUSTERCRED_TEST_POSTGRES` (scripts/test finds or starts one); fails without it.

mod common;

use std::time::Duration;

use clustercred::ServeConfig;
use clustercred_store::{PgStore, PgStoreOptions, Store, ca_owner};
use common::*;
use serde_json::json;
use sqlx::Connection;

const PROJECT: &str = "replicated";
const LOC: &str = "projects/replicated/locations/l1";
const ISSUER: &str = "http://clustercred.replicas.test";

/// A fresh database on the test server, dropped when done.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    async fn create() -> Database {
        let admin_url = std::env::var("CLUSTERCRED_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!(
            "replicas_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin_url} is needed (scripts/pg-for-tests finds or starts one): {e}")
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Database { admin_url, name }
    }

    fn url(&self) -> String {
        let base = self.admin_url.rsplit_once('/').map_or("", |(b, _)| b);
        format!("{base}/{}", self.name)
    }

    /// Drops the database; retried, since pools of servers just dropped may still be reconnecting.
    async fn drop_it(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            for _ in 0..10 {
                if sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn replica_config(
    db: &Database,
    dir: &std::path::Path,
    master_key: &std::path::Path,
) -> ServeConfig {
    let mut config = ServeConfig::for_data_dir(dir.to_path_buf());
    config.database = Some(db.url());
    config.master_key_file = Some(master_key.to_path_buf());
    // Behind one load balancer, every replica is the same issuer.
    config.issuer_url = Some(ISSUER.into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_serve_as_one() {
    let db = Database::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = master_key_file(secrets.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Started together: one administrator, one root policy, one signing key.
    let (mut a, mut b) = tokio::join!(
        TestServer::start_with(replica_config(&db, dir_a.path(), &key)),
        TestServer::start_with(replica_config(&db, dir_b.path(), &key)),
    );
    let tokens: Vec<&String> = [&a.token, &b.token]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "exactly one replica created the administrator"
    );
    let token = tokens[0].clone();
    // Either replica may have won; both serve the one administrator.
    a.token = token.clone();
    b.token = token.clone();
    let store = PgStore::connect(&db.url(), PgStoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.signing_keys().await.unwrap().len(),
        1,
        "one signing key"
    );

    // Created through one replica, read through the other.
    assert_eq!(create_cluster_c1(&a.url(""), &token, LOC).await, 200);
    let resp = http()
        .get(b.url(&format!("/alloydb/v1/{LOC}/clusters/c1")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // One request id sent to both replicas at once, then retried on each: one certificate.
    let client_key = p256().public_key_pem();
    let rid = "6f1f8f0e-6a39-4a8e-9d0a-2b1e5d3c4a11";
    let (url_a, url_b) = (a.url(""), b.url(""));
    let (ra, rb) = tokio::join!(
        issue_c1(&url_a, &token, LOC, &client_key, Some(rid)),
        issue_c1(&url_b, &token, LOC, &client_key, Some(rid))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.0, 200, "{}", ra.1);
    assert_eq!(rb.0, 200, "{}", rb.1);
    assert_eq!(ra.1, rb.1, "both replicas answer the one certificate");
    for s in [&a, &b] {
        assert_eq!(
            issue_c1(&s.url(""), &token, LOC, &client_key, Some(rid))
                .await
                .unwrap()
                .1,
            ra.1
        );
    }

    // Many distinct requests over both replicas: each recorded once, no serial twice.
    let mut calls = Vec::new();
    for n in 0..40 {
        let s = if n % 2 == 0 { &a } else { &b };
        let (token, key) = (token.clone(), client_key.clone());
        let rid = format!("00000000-0000-4000-8000-{n:012}");
        calls.push(async move {
            issue_c1(&s.url(""), &token, LOC, &key, Some(&rid))
                .await
                .unwrap()
        });
    }
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|(code, _)| *code == 200));
    let recorded = store
        .list_issuances(&ca_owner("alloydb.Cluster", &format!("{LOC}/clusters/c1")))
        .await
        .unwrap();
    assert_eq!(
        recorded.len(),
        41,
        "1 + 40 certificates, each recorded once"
    );
    let serials: std::collections::HashSet<_> = recorded.iter().map(|r| &r.serial_hex).collect();
    assert_eq!(serials.len(), 41);

    // A service-account token minted by one replica acts on the other.
    let (account, key_file) = account_with_key(&a, PROJECT, "robot-replica").await;
    add_binding(
        &a,
        PROJECT,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await
    .unwrap();
    let minted = access_token(token_for(&a, &key_file, json!({})).await);
    let resp = http()
        .get(b.url(&format!("/alloydb/v1/{LOC}/clusters")))
        .bearer_auth(&minted)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // The audit chain both replicas wrote verifies.
    let events = store
        .list_audit(&clustercred_store::AuditFilter::default())
        .await
        .unwrap();
    clustercred_store::verify_chain(&events).unwrap();

    a.stop().await;
    b.stop().await;
    store.close().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.drop_it().await;
}

#[tokio::test]
async fn postgres_needs_a_master_key_given() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    config.database = Some(db.url());
    let err = match clustercred::Server::bind(&config).await {
        Ok(_) => panic!("a replica must not generate its own master key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("master key"), "{err}");
    assert!(!dir.path().join("master.key").exists());
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_share_one_tls_server_ca() {
    let db = Database::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = master_key_file(secrets.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tls = |dir: &std::path::Path| {
        let mut config = replica_config(&db, dir, &key);
        config.tls_auto = true;
        config
    };
    let (config_a, config_b) = (tls(dir_a.path()), tls(dir_b.path()));
    let (a, b) = tokio::join!(
        clustercred::Server::bind(&config_a),
        clustercred::Server::bind(&config_b),
    );
    let (a, b) = (a.expect("replica a starts"), b.expect("replica b starts"));
    let ca =
        |s: &clustercred::Server| std::fs::read_to_string(s.tls_ca_file.as_ref().unwrap()).unwrap();
    assert_eq!(ca(&a), ca(&b), "one server CA for the whole deployment");
    drop((a, b));
    db.drop_it().await;
}

/// `--store-timeout` bounds a replica's wait on the database: while another session holds the audit chain's
/// head row, a create answers 503 UNAVAILABLE after about that long (PostgreSQL cancels the lock wait at the
/// pool's `statement_timeout`) instead of hanging, writes nothing, and succeeds once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_ends_at_the_store_timeout() {
    let db = Database::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = master_key_file(secrets.path());
    let dir = tempfile::tempdir().unwrap();
    let mut config = replica_config(&db, dir.path(), &key);
    config.store_timeout_secs = 1;
    let s = TestServer::start_with(config).await;
    // Serving, with its first-start writes done, before the lock is taken.
    assert_eq!(readyz(&s).await.0, 200);

    let mut other = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let status = create_cluster_c1(&s.url(""), &s.token, LOC).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "a timed-out store call is UNAVAILABLE");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "answered after {waited:?}, not after the 1 s store timeout"
    );
    tx.rollback().await.unwrap();
    let _ = other.close().await;

    // Past the store's circuit breaker (1 s), the same create goes through: the failed one wrote nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create_cluster_c1(&s.url(""), &s.token, LOC).await, 200);
    s.stop().await;
    db.drop_it().await;
}

/// `keys rotate-signing --database` while two replicas run: each signs with the new key within its cache
/// staleness bound, without a restart; a token either signs verifies on the other, before the rotation and
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signing_key_rotation_reaches_running_replicas() {
    let db = Database::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = master_key_file(secrets.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| {
        let mut c = replica_config(&db, dir, &key);
        c.cache_staleness_ms = 300;
        c
    };
    let mut a = TestServer::start_with(config(dir_a.path())).await;
    let mut b = TestServer::start_with(config(dir_b.path())).await;
    let token = [&a.token, &b.token]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap()
        .clone();
    a.token = token.clone();
    b.token = token;
    let (account, key_file) = account_with_key(&a, PROJECT, "rotating-robot").await;
    add_binding(
        &a,
        PROJECT,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await
    .unwrap();
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let lists = |s: &TestServer, t: String| {
        let url = s.url(&format!("/alloydb/v1/{LOC}/clusters"));
        async move {
            http()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let old = access_token(token_for(&a, &key_file, json!({})).await);

    clustercred::cli::keys(clustercred::cli::KeysCommand::RotateSigning {
        dir: clustercred::cli::DataDir {
            data_dir: dir_a.path().to_path_buf(),
            database: Some(db.url()),
        },
        master_key_file: Some(key.clone()),
    })
    .await
    .expect("rotate-signing against the shared database");
    let rotated = std::time::Instant::now();
    let mut fresh = Vec::new();
    for s in [&a, &b] {
        let new = loop {
            let t = access_token(token_for(s, &key_file, json!({})).await);
            if kid(&t) != kid(&old) {
                break t;
            }
            assert!(
                rotated.elapsed() < Duration::from_secs(3),
                "a replica still signs with the old key {:?} after the rotation",
                rotated.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        fresh.push(new);
    }
    assert_eq!(kid(&fresh[0]), kid(&fresh[1]), "both sign with the new key");
    for s in [&a, &b] {
        assert_eq!(
            lists(s, old.clone()).await,
            200,
            "the old token still works"
        );
        for t in &fresh {
            assert_eq!(lists(s, t.clone()).await, 200, "new tokens work on both");
        }
    }
    a.stop().await;
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.drop_it().await;
}

/// Two replicas on one database both serve an instance created through one of them (sharing its address),
/// a revocation made with the CLI against the database holds at once whichever replica a connection reaches,
/// and the instance stays reachable when a replica goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_instance_endpoints_and_revocations() {
    use common::alloydb::{client_certificate, create_instance, dial, first_address, startup};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = Database::create().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = master_key_file(secrets.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = first_address();
    let config = |dir: &std::path::Path| {
        let mut c = replica_config(&db, dir, &key);
        c.alloydb_backend = Some(db.admin_url.clone());
        c.alloydb_first_address = first;
        c.cache_staleness_ms = 100;
        c
    };
    let (a, b) = tokio::join!(
        TestServer::start_with(config(dir_a.path())),
        TestServer::start_with(config(dir_b.path())),
    );
    let token = if a.token.is_empty() {
        b.token.clone()
    } else {
        a.token.clone()
    };
    assert_eq!(create_cluster_c1(&a.url(""), &token, LOC).await, 200);
    let cluster = format!("{LOC}/clusters/c1");
    let ip = create_instance(&a.url(""), &token, &cluster, "i1", json!({})).await;

    // A certificate from replica B, without the metadata exchange.
    let (client, ca) = client_certificate(&b.url(""), &token, &cluster, false).await;
    let chain = client.0.clone();
    let database = db.name.clone();
    // True when the login reached PostgreSQL (AuthenticationOk), false when the endpoint closed first.
    let login = || {
        let (client, ca, database) = (&client, &ca, database.clone());
        async move {
            let Ok(mut tls) = dial(ip, ca, Some(client)).await else {
                return false;
            };
            if tls
                .write_all(&startup("postgres", &database))
                .await
                .is_err()
            {
                return false;
            }
            let mut head = [0u8; 9];
            let ok =
                tls.read_exact(&mut head).await.is_ok() && head == [b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            let _ = tls.write_all(&[b'X', 0, 0, 0, 4]).await;
            ok
        }
    };
    let mut up = false;
    for _ in 0..100 {
        if login().await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the instance endpoint serves");
    for _ in 0..10 {
        assert!(
            login().await,
            "whichever replica answers, the login goes through"
        );
    }

    // Replica A goes away: B still serves the instance.
    a.stop().await;
    for _ in 0..5 {
        assert!(login().await, "the other replica serves the instance alone");
    }

    // Revoked with the CLI against the shared database: refused at once.
    let serial = {
        let der = parse_cert(&chain);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        hex::encode(c.raw_serial())
    };
    clustercred::cli::alloydb(clustercred::cli::AlloydbCommand::RevokeCertificate {
        dir: clustercred::cli::DataDir {
            data_dir: dir_a.path().to_path_buf(),
            database: Some(db.url()),
        },
        cluster: format!("{LOC}/clusters/c1"),
        serial: Some(serial),
        principal: None,
    })
    .await
    .unwrap();
    for _ in 0..5 {
        assert!(!login().await, "a revoked certificate is refused at once");
    }
    b.stop().await;
    db.drop_it().await;
}
