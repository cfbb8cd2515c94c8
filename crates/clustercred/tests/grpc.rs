//! The real server over gRPC (h2c): the three credential methods and the resources around them.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use clustercred_proto::google::cloud::alloydb::v1beta as alloydb_beta;
use clustercred_proto::google::cloud::edgecontainer::v1 as edge;
use clustercred_proto::google::cloud::gkemulticloud::v1 as gke;
use clustercred_proto::google::longrunning::{
    GetOperationRequest, operations_client::OperationsClient,
};
use common::*;
use prost::Message;
use rcgen::PublicKeyData;
use tonic::Code;
use x509_parser::prelude::*;

const LOCATION: &str = "projects/test-project/locations/us-central1";

async fn alloydb_client(
    s: &TestServer,
) -> alloydb::alloy_db_admin_client::AlloyDbAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
> {
    alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    )
}

async fn create_alloydb_cluster(s: &TestServer, id: &str) -> alloydb::Cluster {
    let op = alloydb_client(s)
        .await
        .create_cluster(alloydb::CreateClusterRequest {
            parent: LOCATION.into(),
            cluster_id: id.into(),
            cluster: Some(alloydb::Cluster {
                display_name: "db".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create cluster")
        .into_inner();
    assert!(op.done);
    let Some(clustercred_proto::google::longrunning::operation::Result::Response(any)) = op.result
    else {
        panic!("operation has no response");
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/google.cloud.alloydb.v1.Cluster"
    );
    alloydb::Cluster::decode(any.value.as_slice()).expect("cluster")
}

/// Checks the leaf: signed by the CA, holds `spki`, clientAuth, not a CA; returns (notBefore, notAfter).
fn check_leaf(leaf_pem: &str, ca_pem: &str, spki: &[u8]) -> (i64, i64) {
    let leaf_der = parse_cert(leaf_pem);
    let ca_der = parse_cert(ca_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA parses");
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf verifies against the CA");
    assert_eq!(leaf.issuer(), ca.subject());
    assert_eq!(
        leaf.public_key().raw,
        spki,
        "the leaf holds the submitted key"
    );
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("has eku")
        .value;
    assert!(eku.client_auth && !eku.server_auth);
    let bc = leaf.basic_constraints().expect("bc").expect("has bc").value;
    assert!(!bc.ca);
    assert!(ca.is_ca());
    assert!(leaf.serial.bits() > 100, "128-bit random serial");
    (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    )
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let s = TestServer::start().await;
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some("Basic abc".to_string()),
    ] {
        let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
            s.channel().await,
            Auth(auth),
        );
        let err = c
            .get_cluster(alloydb::GetClusterRequest {
                name: format!("{LOCATION}/clusters/c1"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    s.stop().await;
}

#[tokio::test]
async fn alloydb_cluster_lifecycle() {
    let s = TestServer::start().await;
    let mut c = alloydb_client(&s).await;
    let cluster = create_alloydb_cluster(&s, "c1").await;
    assert_eq!(cluster.name, format!("{LOCATION}/clusters/c1"));
    assert_eq!(cluster.state, alloydb::cluster::State::Ready as i32);

    let dup = c
        .create_cluster(alloydb::CreateClusterRequest {
            parent: LOCATION.into(),
            cluster_id: "c1".into(),
            cluster: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    for bad in ["C1", "1c", "c_1", "", "c-"] {
        let err = c
            .create_cluster(alloydb::CreateClusterRequest {
                parent: LOCATION.into(),
                cluster_id: bad.into(),
                cluster: Some(Default::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }

    // validate_only creates nothing.
    c.create_cluster(alloydb::CreateClusterRequest {
        parent: LOCATION.into(),
        cluster_id: "dry".into(),
        cluster: Some(Default::default()),
        validate_only: true,
        ..Default::default()
    })
    .await
    .expect("validate only");
    let err = c
        .get_cluster(alloydb::GetClusterRequest {
            name: format!("{LOCATION}/clusters/dry"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    create_alloydb_cluster(&s, "c2").await;
    create_alloydb_cluster(&s, "c3").await;
    let mut names = vec![];
    let mut token = String::new();
    loop {
        let page = c
            .list_clusters(alloydb::ListClustersRequest {
                parent: LOCATION.into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.clusters.len() <= 1);
        names.extend(page.clusters.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names.len(), 3);

    // The create operation can be read back.
    let mut ops = OperationsClient::with_interceptor(s.channel().await, s.auth());
    let op = c
        .delete_cluster(alloydb::DeleteClusterRequest {
            name: format!("{LOCATION}/clusters/c3"),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    let again = ops
        .get_operation(GetOperationRequest {
            name: op.name.clone(),
        })
        .await
        .expect("get op")
        .into_inner();
    assert_eq!(again, op);
    let err = c
        .get_cluster(alloydb::GetClusterRequest {
            name: format!("{LOCATION}/clusters/c3"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn client_certificates_chain_to_the_cluster_ca_and_hold_the_key() {
    let s = TestServer::start().await;
    create_alloydb_cluster(&s, "db").await;
    let mut c = alloydb_client(&s).await;
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa");
    let ec = p256();
    // PKCS#1 form of the RSA key, as the Go connector sends it.
    let rsa_spki = rsa.subject_public_key_info();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&rsa_spki).expect("spki");
    let pkcs1 = ::pem::encode(&::pem::Pem::new(
        "RSA PUBLIC KEY",
        spki.subject_public_key.data.to_vec(),
    ));

    for (pem_key, spki_der, hours) in [
        (rsa.public_key_pem(), rsa_spki.clone(), None),
        (pkcs1, rsa_spki.clone(), Some(3)),
        (ec.public_key_pem(), ec.subject_public_key_info(), Some(24)),
    ] {
        let resp = c
            .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
                parent: format!("{LOCATION}/clusters/db"),
                public_key: pem_key,
                cert_duration: hours.map(|h| prost_types::Duration {
                    seconds: h * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .expect("certificate")
            .into_inner();
        assert!(resp.pem_certificate_chain.iter().all(|p| p.ends_with('\n')));
        assert!(resp.ca_cert.ends_with('\n'));
        let (nb, na) = check_leaf(&resp.pem_certificate_chain[0], &resp.ca_cert, &spki_der);
        let expected = hours.unwrap_or(1) * 3600;
        assert_eq!(
            na - nb,
            expected + 60,
            "duration, with notBefore backdated a minute"
        );
    }

    for (key, duration, field) in [
        (ec.public_key_pem(), Some(1800), "cert_duration"),
        (ec.public_key_pem(), Some(25 * 3600), "cert_duration"),
        ("garbage".to_string(), None, "public_key"),
        (String::new(), None, "public_key"),
        (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                .unwrap()
                .public_key_pem()
                .replace("PUBLIC KEY", "PRIVATE KEY"),
            None,
            "public_key",
        ),
    ] {
        let err = c
            .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
                parent: format!("{LOCATION}/clusters/db"),
                public_key: key,
                cert_duration: duration.map(|s| prost_types::Duration {
                    seconds: s,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let err = c
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: format!("{LOCATION}/clusters/nope"),
            public_key: ec.public_key_pem(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn request_ids_make_issuance_idempotent_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf()).await;
    create_alloydb_cluster(&s, "db").await;
    let key = p256();
    let request = |id: &str, pem_key: String| alloydb_beta::GenerateClientCertificateRequest {
        parent: format!("{LOCATION}/clusters/db"),
        request_id: id.into(),
        public_key: pem_key,
        ..Default::default()
    };
    let id = "6f1f5a9e-0b5c-4c36-9a57-1d2f4a6b8c01";
    let mut beta = alloydb_beta::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let first = beta
        .generate_client_certificate(request(id, key.public_key_pem()))
        .await
        .unwrap()
        .into_inner();
    let second = beta
        .generate_client_certificate(request(id, key.public_key_pem()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second, "a retry returns the first answer");
    let err = beta
        .generate_client_certificate(request(id, p256().public_key_pem()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("request_id"));
    for bad in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        let err = beta
            .generate_client_certificate(request(bad, key.public_key_pem()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    let token = s.token.clone();
    drop(beta);
    s.stop().await;

    let s = TestServer::start_in(dir.path().to_path_buf()).await;
    assert_eq!(s.token, token, "the admin token survives a restart");
    let mut beta = alloydb_beta::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let third = beta
        .generate_client_certificate(request(id, key.public_key_pem()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, third, "remembered across a restart");
    s.stop().await;
}

#[tokio::test]
async fn instances_get_distinct_addresses_and_connection_info() {
    let s = TestServer::start().await;
    create_alloydb_cluster(&s, "db").await;
    let mut c = alloydb_client(&s).await;
    let mut addresses = vec![];
    for id in ["primary", "read"] {
        c.create_instance(alloydb::CreateInstanceRequest {
            parent: format!("{LOCATION}/clusters/db"),
            instance_id: id.into(),
            instance: Some(Default::default()),
            ..Default::default()
        })
        .await
        .expect("create instance");
        let info = c
            .get_connection_info(alloydb::GetConnectionInfoRequest {
                parent: format!("{LOCATION}/clusters/db/instances/{id}"),
                ..Default::default()
            })
            .await
            .expect("connection info")
            .into_inner();
        let ip: std::net::Ipv4Addr = info.ip_address.parse().expect("an IPv4 address");
        assert!(ip.is_loopback());
        assert!(!info.instance_uid.is_empty());
        addresses.push(ip);
    }
    assert_ne!(addresses[0], addresses[1]);
    let err = c
        .delete_cluster(alloydb::DeleteClusterRequest {
            name: format!("{LOCATION}/clusters/db"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "instances block a delete without force"
    );
    c.delete_cluster(alloydb::DeleteClusterRequest {
        name: format!("{LOCATION}/clusters/db"),
        force: true,
        ..Default::default()
    })
    .await
    .expect("forced delete");
    let err = c
        .get_instance(alloydb::GetInstanceRequest {
            name: format!("{LOCATION}/clusters/db/instances/primary"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn offline_credentials_match_and_chain_to_the_edge_cluster_ca() {
    let s = TestServer::start().await;
    let mut c = edge::edge_container_client::EdgeContainerClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    c.create_cluster(edge::CreateClusterRequest {
        parent: LOCATION.into(),
        cluster_id: "edge1".into(),
        cluster: Some(edge::Cluster {
            control_plane: Some(edge::cluster::ControlPlane {
                config: Some(edge::cluster::control_plane::Config::Local(
                    Default::default(),
                )),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("create edge cluster");
    let cluster = c
        .get_cluster(edge::GetClusterRequest {
            name: format!("{LOCATION}/clusters/edge1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        cluster
            .cluster_ca_certificate
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(!cluster.endpoint.is_empty() && cluster.port > 0);

    let cred = c
        .generate_offline_credential(edge::GenerateOfflineCredentialRequest {
            cluster: format!("{LOCATION}/clusters/edge1"),
        })
        .await
        .expect("offline credential")
        .into_inner();
    let key = rcgen::KeyPair::from_pem(&cred.client_key).expect("private key PEM");
    let (_, na) = check_leaf(
        &cred.client_certificate,
        &cluster.cluster_ca_certificate,
        &key.subject_public_key_info(),
    );
    assert_eq!(cred.expire_time.expect("expire_time").seconds, na);
    let leaf_der = parse_cert(&cred.client_certificate);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cn, cred.user_id);

    // The key is never stored: the database holds no private key PEM.
    let db = std::fs::read(s.data_dir.join("clustercred.db")).unwrap();
    let needle = cred.client_key.lines().nth(1).unwrap().as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle));
    s.stop().await;
}

fn jwks_for(key: &rcgen::KeyPair, kid: &str) -> Vec<u8> {
    let point = key.public_key_raw();
    serde_json::to_vec(&serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]}))
    .unwrap()
}

fn sa_token(key: &rcgen::KeyPair, kid: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap()
}

#[tokio::test]
async fn agent_tokens_are_exchanged_for_valid_service_account_tokens_only() {
    let s = TestServer::start().await;
    let key = p256();
    let issuer = "https://k8s.example.test";
    let mut c = gke::attached_clusters_client::AttachedClustersClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let create = |jwks: Vec<u8>, id: &str, platform: &str| gke::CreateAttachedClusterRequest {
        parent: LOCATION.into(),
        attached_cluster_id: id.into(),
        attached_cluster: Some(gke::AttachedCluster {
            oidc_config: Some(gke::AttachedOidcConfig {
                issuer_url: issuer.into(),
                jwks,
            }),
            platform_version: platform.into(),
            distribution: "generic".into(),
            fleet: Some(gke::Fleet {
                project: "projects/test-project".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = c
        .create_attached_cluster(create(b"not json".to_vec(), "bad", "1.30.0-gke.1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .create_attached_cluster(create(jwks_for(&key, "k1"), "bad", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("platform_version"));
    c.create_attached_cluster(create(jwks_for(&key, "k1"), "att1", "1.30.0-gke.1"))
        .await
        .expect("create");

    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let good = serde_json::json!({
        "iss": issuer, "aud": ["test-project.svc.id.goog"], "sub": "system:serviceaccount:gke-system:agent",
        "iat": now, "nbf": now, "exp": now + 600,
    });
    // No bearer token: the subject token is the credential.
    let mut anon = gke::attached_clusters_client::AttachedClustersClient::new(s.channel().await);
    let exchange = |token: String| gke::GenerateAttachedClusterAgentTokenRequest {
        attached_cluster: format!("{LOCATION}/attachedClusters/att1"),
        subject_token: token,
        subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
        version: "1.0.0".into(),
        grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        requested_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        ..Default::default()
    };
    let resp = anon
        .generate_attached_cluster_agent_token(exchange(sa_token(&key, "k1", good.clone())))
        .await
        .expect("exchange")
        .into_inner();
    assert_eq!(resp.token_type, "Bearer");
    assert!(resp.expires_in > 0 && resp.expires_in <= 3600);

    // The access token verifies with the published keys.
    let jwks: serde_json::Value = http()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&resp.access_token).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["test-project.svc.id.goog"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &resp.access_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .expect("access token verifies")
    .claims;
    assert_eq!(claims["sub"], "system:serviceaccount:gke-system:agent");
    assert_eq!(
        claims["attached_cluster"],
        format!("{LOCATION}/attachedClusters/att1")
    );

    let other = p256();
    let mut cases: Vec<(String, Code)> = vec![
        (
            sa_token(&key, "k1", with(&good, "iss", "https://evil".into())),
            Code::Unauthenticated,
        ),
        (
            sa_token(&key, "k1", with(&good, "aud", "someone-else".into())),
            Code::Unauthenticated,
        ),
        (
            sa_token(&key, "k1", with(&good, "exp", (now - 3600).into())),
            Code::Unauthenticated,
        ),
        (
            sa_token(&key, "k1", with(&good, "sub", "alice".into())),
            Code::Unauthenticated,
        ),
        (sa_token(&key, "k2", good.clone()), Code::Unauthenticated),
        (sa_token(&other, "k1", good.clone()), Code::Unauthenticated),
        ("not.a.jwt".into(), Code::InvalidArgument),
    ];
    let token = sa_token(&key, "k1", good.clone());
    let parts: Vec<&str> = token.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
    cases.push((
        format!("{none_header}.{}.", parts[1]),
        Code::InvalidArgument,
    ));
    cases.push((
        format!("{none_header}.{}.c2ln", parts[1]),
        Code::Unauthenticated,
    ));
    let tampered = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&with(
            &good,
            "sub",
            "system:serviceaccount:kube-system:admin".into(),
        ))
        .unwrap(),
    );
    cases.push((
        format!("{}.{tampered}.{}", parts[0], parts[2]),
        Code::Unauthenticated,
    ));
    for (token, code) in cases {
        let err = anon
            .generate_attached_cluster_agent_token(exchange(token.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{token}: {}", err.message());
    }
    let mut wrong_type = exchange(sa_token(&key, "k1", good.clone()));
    wrong_type.subject_token_type = "urn:ietf:params:oauth:token-type:id_token".into();
    assert_eq!(
        anon.generate_attached_cluster_agent_token(wrong_type)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // The agent's access token is for the cluster's workloads, not a bearer token for clustercred's APIs.
    let mut as_agent = gke::attached_clusters_client::AttachedClustersClient::with_interceptor(
        s.channel().await,
        Auth(Some(format!("Bearer {}", resp.access_token))),
    );
    let err = as_agent
        .get_attached_cluster(gke::GetAttachedClusterRequest {
            name: format!("{LOCATION}/attachedClusters/att1"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Whether a cluster exists, or has keys registered, is not told to an anonymous caller: a missing cluster
    // and one without a JWKS answer exactly like a cluster whose keys do not include the token's.
    c.create_attached_cluster(create(Vec::new(), "att2", "1.30.0-gke.1"))
        .await
        .expect("create without a JWKS");
    let stranger = sa_token(&other, "zz", good.clone());
    let mut answers = Vec::new();
    for cluster in ["att1", "att2", "missing"] {
        let mut req = exchange(stranger.clone());
        req.attached_cluster = format!("{LOCATION}/attachedClusters/{cluster}");
        let err = anon
            .generate_attached_cluster_agent_token(req)
            .await
            .unwrap_err();
        answers.push((err.code(), err.message().to_string()));
    }
    assert_eq!(answers[0].0, Code::Unauthenticated);
    assert_eq!(answers[0], answers[1], "no-JWKS cluster");
    assert_eq!(answers[0], answers[2], "missing cluster");
    s.stop().await;
}

fn good_map(v: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn with(v: &serde_json::Value, k: &str, val: serde_json::Value) -> serde_json::Value {
    let mut m = good_map(v);
    m.insert(k.into(), val);
    serde_json::Value::Object(m)
}
