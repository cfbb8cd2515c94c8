//! Private keys at rest: nothing in the data directory but the master key reveals a private key, and a
//! master-key rotation keeps every CA working.

mod common;

use clustercred::ServeConfig;
use clustercred_authority::MasterKey;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use clustercred_proto::google::cloud::edgecontainer::v1 as edge;
use clustercred_store::{SqliteStore, Store};
use common::*;

const LOC: &str = "projects/p/locations/l";

/// PKCS#8 PrivateKeyInfo of an EC key starts like this (SEQUENCE, INTEGER 0, SEQUENCE { id-ecPublicKey ...).
const PKCS8_EC_PREFIX: &[u8] = &[
    0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
];

fn files_except_master(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "master.key" && e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn cluster_and_cert(s: &TestServer, id: &str) -> (String, String) {
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    if c.get_cluster(alloydb::GetClusterRequest {
        name: format!("{LOC}/clusters/{id}"),
        ..Default::default()
    })
    .await
    .is_err()
    {
        c.create_cluster(alloydb::CreateClusterRequest {
            parent: LOC.into(),
            cluster_id: id.into(),
            cluster: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let resp = c
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: format!("{LOC}/clusters/{id}"),
            public_key: p256().public_key_pem(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (resp.pem_certificate_chain[0].clone(), resp.ca_cert)
}

fn verifies(leaf_pem: &str, ca_pem: &str) -> bool {
    use x509_parser::prelude::*;
    let (leaf, ca) = (parse_cert(leaf_pem), parse_cert(ca_pem));
    let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

#[tokio::test]
async fn no_private_key_is_readable_at_rest_and_rotation_keeps_cas_working() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let s = TestServer::start_in(data.clone()).await;
    let (_, ca_before) = cluster_and_cert(&s, "db").await;
    let mut e = edge::edge_container_client::EdgeContainerClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    e.create_cluster(edge::CreateClusterRequest {
        parent: LOC.into(),
        cluster_id: "e1".into(),
        cluster: Some(Default::default()),
        ..Default::default()
    })
    .await
    .unwrap();
    let cred = e
        .generate_offline_credential(edge::GenerateOfflineCredentialRequest {
            cluster: format!("{LOC}/clusters/e1"),
        })
        .await
        .unwrap()
        .into_inner();
    s.stop().await;

    // Open the stored keys with the master key, then look for their plaintext anywhere else in the directory.
    let master_text = std::fs::read_to_string(data.join("master.key")).unwrap();
    let master = {
        use base64::Engine;
        MasterKey::from_bytes(
            &base64::engine::general_purpose::STANDARD
                .decode(master_text.trim())
                .unwrap(),
        )
        .unwrap()
    };
    let store = SqliteStore::open(&data.join("clustercred.db"))
        .await
        .unwrap();
    let sealed = store.sealed_keys().await.unwrap();
    assert_eq!(
        sealed.len(),
        4,
        "two CAs, the token-signing key and the audit key"
    );
    let mut plaintexts = Vec::new();
    for key in &sealed {
        let context = match key.kind.as_str() {
            "ca" => format!("ca:{}", key.id),
            "audit_key" => format!("audit-key:{}", key.id),
            _ => format!("signing-key:{}", key.id),
        };
        plaintexts.push(master.open(&key.sealed, &context).unwrap().to_vec());
    }
    store.close().await;
    let offline_key_body = cred.client_key.lines().nth(1).unwrap().to_string();
    for (name, bytes) in files_except_master(&data) {
        assert!(
            !contains(&bytes, b"PRIVATE KEY"),
            "{name} holds a PEM private key"
        );
        assert!(
            !contains(&bytes, PKCS8_EC_PREFIX),
            "{name} holds a DER private key"
        );
        assert!(
            !contains(&bytes, offline_key_body.as_bytes()),
            "{name} holds the offline credential's key"
        );
        for p in &plaintexts {
            assert!(
                !contains(&bytes, p),
                "{name} holds a stored key in the clear"
            );
            // The private scalar of an EC PKCS#8 key sits in an OCTET STRING of 32 bytes.
            let scalar_at = p.windows(2).position(|w| w == [0x04, 0x20]).unwrap() + 2;
            assert!(
                !contains(&bytes, &p[scalar_at..scalar_at + 32]),
                "{name} holds a private scalar"
            );
        }
    }

    // Rotate the master key with the CLI, then keep issuing from the same CA.
    let bin = env!("CARGO_BIN_EXE_clustercred");
    let new_key = root.path().join("new-master.key");
    let out = std::process::Command::new(bin)
        .args(["keys", "rotate-master", "--data-dir"])
        .arg(&data)
        .arg("--new-master-key-file")
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = TestServer::start_in(data.clone()).await;
    let (leaf, ca_after) = cluster_and_cert(&s, "db").await;
    assert_eq!(ca_after, ca_before, "the same CA");
    assert!(
        verifies(&leaf, &ca_before),
        "the re-sealed CA key still signs"
    );
    s.stop().await;

    // The old master key no longer opens anything: the server refuses to start rather than serve without keys.
    let old = root.path().join("old.key");
    std::fs::write(&old, master_text).unwrap();
    let mut config = ServeConfig::for_data_dir(data.clone());
    config.master_key_file = Some(old);
    let err = clustercred::Server::bind(&config)
        .await
        .err()
        .expect("refuses the old master key");
    assert!(format!("{err:#}").contains("master key"), "{err:#}");
}
