//! Clients of AlloyDB instance endpoints for tests: instances and client certificates over REST, a TLS dial
//! as the connectors make it, and the PostgreSQL startup packet.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::http;

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A client certificate and its key.
pub type ClientCert = (String, rcgen::KeyPair);

/// Creates `{loc}/clusters/{cluster}` over REST on the server at `base`.
pub async fn create_cluster(base: &str, token: &str, loc: &str, cluster: &str) {
    let r = http()
        .post(format!(
            "{base}/alloydb/v1/{loc}/clusters?clusterId={cluster}"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Creates a PRIMARY instance over REST (with `extra` fields of the Instance) and answers its address.
pub async fn create_instance(
    base: &str,
    token: &str,
    cluster: &str,
    instance: &str,
    extra: serde_json::Value,
) -> IpAddr {
    let mut body = serde_json::json!({"instanceType": "PRIMARY"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r: serde_json::Value = http()
        .post(format!(
            "{base}/alloydb/v1/{cluster}/instances?instanceId={instance}"
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["response"]["ipAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .parse()
        .unwrap()
}

/// GenerateClientCertificate (v1beta, as the Python connector) for a fresh P-256 key, asked for with `token`:
/// the chain and key, and the CA.
pub async fn client_certificate(
    base: &str,
    token: &str,
    cluster: &str,
    metadata_exchange: bool,
) -> (ClientCert, String) {
    let key = super::p256();
    let r: serde_json::Value = http()
        .post(format!(
            "{base}/alloydb/v1beta/{cluster}:generateClientCertificate"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "publicKey": key.public_key_pem(),
            "certDuration": "3600s",
            "useMetadataExchange": metadata_exchange,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = r["pemCertificateChain"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect::<String>();
    ((chain, key), r["caCert"].as_str().unwrap().to_string())
}

/// Dials the instance at `ip` as the connectors do: TLS 1.3, trusting only `ca_pem`, checking the IP SAN,
/// presenting `client` when given.
pub async fn dial(ip: IpAddr, ca_pem: &str, client: Option<&ClientCert>) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect((ip, 5433)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
}

/// A PostgreSQL 3.0 startup packet.
pub fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A metadata exchange frame: the length, then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Waits until something listens on `ip`:5433 (endpoints follow new instances within a second).
pub async fn wait_for_endpoint(ip: IpAddr) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect((ip, 5433)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the instance endpoint never listened");
}

/// An address range of the test's own, so parallel tests never share port 5433.
pub fn first_address() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, rand::random_range(2..250), rand::random(), 1)
}

/// Reads one metadata exchange reply (length, then message) and decodes it.
pub async fn read_reply(
    tls: &mut Tls,
) -> clustercred_proto::google::cloud::alloydb::connectors::v1::MetadataExchangeResponse {
    use prost::Message;
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    tls.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tls.read_exact(&mut body).await.unwrap();
    Message::decode(body.as_slice()).unwrap()
}
