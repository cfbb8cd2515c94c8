//! TLS on the one listener: automatic certificates from a local server CA, and client-certificate
//! authentication.

mod common;

use clustercred::ServeConfig;
use clustercred_authority::{
    CaParams, ClientPublicKey, ClusterCa, GeneratedKeyAlgorithm, LeafRequest, generate_key_pair,
};
use common::*;

fn client(ca_pem: &[u8], identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).unwrap()]);
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn automatic_tls_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.tls_auto = true;
    let s = TestServer::start_with(config).await;
    let ca = std::fs::read(s.data_dir.join("tls-ca.pem")).expect("the CA is written for clients");
    let https = format!("https://localhost:{}/healthz", s.addr.port());
    let resp = client(&ca, None)
        .get(&https)
        .send()
        .await
        .expect("TLS with the server CA");
    assert_eq!(resp.status().as_u16(), 200);
    let discovery: serde_json::Value = client(&ca, None)
        .get(format!(
            "https://127.0.0.1:{}/.well-known/openid-configuration",
            s.addr.port()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        discovery["issuer"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert!(
        http().get(s.url("/healthz")).send().await.is_err(),
        "no plaintext on a TLS listener"
    );
    // Another CA is not trusted.
    let (other, material) = ClusterCa::generate(
        &CaParams {
            common_name: "other".into(),
            organization: None,
            validity: ::time::Duration::days(1),
        },
        ::time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let _ = other;
    assert!(
        client(material.cert_pem.as_bytes(), None)
            .get(&https)
            .send()
            .await
            .is_err()
    );
    s.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let now = ::time::OffsetDateTime::now_utc();
    let (client_ca, client_ca_material) = ClusterCa::generate(
        &CaParams {
            common_name: "client CA".into(),
            organization: None,
            validity: ::time::Duration::days(1),
        },
        now,
    )
    .unwrap();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &client_ca_material.cert_pem).unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.tls_auto = true;
    config.tls_client_ca = Some(ca_path);
    let s = TestServer::start_with(config).await;
    let server_ca = std::fs::read(s.data_dir.join("tls-ca.pem")).unwrap();
    let url = format!("https://localhost:{}/healthz", s.addr.port());
    assert!(
        client(&server_ca, None).get(&url).send().await.is_err(),
        "no client certificate, no connection"
    );

    let key = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256).unwrap();
    let public = ClientPublicKey::from_pem(&key.public_key.to_pem()).unwrap();
    let leaf = client_ca
        .issue_client_certificate(
            &LeafRequest {
                public_key: &public,
                subject_common_name: "tester",
                subject_organization: None,
                lifetime: ::time::Duration::hours(1),
            },
            now,
        )
        .unwrap();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", leaf.cert_pem, key.private_key_pem.as_str()).as_bytes(),
    )
    .unwrap();
    let resp = client(&server_ca, Some(identity))
        .get(&url)
        .send()
        .await
        .expect("with a client certificate");
    assert_eq!(resp.status().as_u16(), 200);
    s.stop().await;
}
