//! Token-signing key rotation: `clustercred keys rotate-signing` adds a key; the server signs with it (after a
//! restart, and while it runs within the cache staleness bound), tokens signed with the old key keep working
//! until they expire, and the JWKS publishes both.

mod common;

use clustercred::cli::{DataDir, KeysCommand};
use common::*;
use serde_json::{Value, json};

const PROJECT: &str = "rotation";

async fn lists(s: &TestServer, token: &str) -> u16 {
    http()
        .get(s.url(&format!(
            "/alloydb/v1/projects/{PROJECT}/locations/l1/clusters"
        )))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A fixed issuer: the default follows the listen address, which is a new port at each start here.
fn config(data: &std::path::Path) -> clustercred::ServeConfig {
    let mut c = clustercred::ServeConfig::for_data_dir(data.to_path_buf());
    c.issuer_url = Some("http://clustercred.rotation.test".into());
    c
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn published_kids(s: &TestServer) -> Vec<String> {
    let jwks: Value = http()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_rotated_signing_key_signs_new_tokens_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start_with(config(&data)).await;
    let (account, key_file) = account_with_key(&s, PROJECT, "rotation-robot").await;
    add_binding(
        &s,
        PROJECT,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await
    .unwrap();
    let old = access_token(token_for(&s, &key_file, json!({})).await);
    assert_eq!(lists(&s, &old).await, 200);
    assert_eq!(published_kids(&s).await, [kid(&old)]);
    s.stop().await;

    clustercred::cli::keys(KeysCommand::RotateSigning {
        dir: DataDir {
            data_dir: data.clone(),
            database: None,
        },
        master_key_file: None,
    })
    .await
    .expect("rotate-signing");

    let s = TestServer::start_with(config(&data)).await;
    assert_eq!(
        lists(&s, &old).await,
        200,
        "a token signed before the rotation still works"
    );
    let new = access_token(token_for(&s, &key_file, json!({})).await);
    assert_ne!(
        kid(&new),
        kid(&old),
        "new tokens are signed with the new key"
    );
    assert_eq!(lists(&s, &new).await, 200);
    let kids = published_kids(&s).await;
    assert_eq!(
        kids,
        [kid(&new), kid(&old)],
        "the JWKS publishes both, the current first"
    );
    s.stop().await;
}

/// A rotation made while the server runs is picked up within the cache staleness bound, without a restart:
/// new tokens carry the new kid, a token signed before it keeps working, the JWKS publishes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_picks_up_a_rotation_within_the_staleness_bound() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = config(&data);
    config.cache_staleness_ms = 300;
    let s = TestServer::start_with(config).await;
    let (account, key_file) = account_with_key(&s, PROJECT, "live-robot").await;
    add_binding(
        &s,
        PROJECT,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await
    .unwrap();
    let old = access_token(token_for(&s, &key_file, json!({})).await);
    assert_eq!(lists(&s, &old).await, 200);

    clustercred::cli::keys(KeysCommand::RotateSigning {
        dir: DataDir {
            data_dir: data.clone(),
            database: None,
        },
        master_key_file: None,
    })
    .await
    .expect("rotate-signing while the server runs");
    let rotated = std::time::Instant::now();
    let new = loop {
        let token = access_token(token_for(&s, &key_file, json!({})).await);
        if kid(&token) != kid(&old) {
            break token;
        }
        // The bound is 300 ms; the margin is for a loaded test machine.
        assert!(
            rotated.elapsed() < std::time::Duration::from_secs(3),
            "still signing with the old key {:?} after the rotation",
            rotated.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(lists(&s, &new).await, 200);
    assert_eq!(
        lists(&s, &old).await,
        200,
        "a token signed before the rotation still works"
    );
    assert_eq!(published_kids(&s).await, [kid(&new), kid(&old)]);
    s.stop().await;
}
