//! Identity, IAM and audit against the real server: service accounts and keys, the token endpoint,
//! self-signed JWTs, least privilege, refusals of forged tokens, and the audit chain.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use clustercred_proto::google::cloudresourcemanager::v1::projects_client::ProjectsClient;
use clustercred_proto::google::iam::admin::v1 as iam;
use clustercred_proto::google::iam::v1::{
    Binding, GetIamPolicyRequest, Policy, SetIamPolicyRequest,
};
use clustercred_store::{AuditFilter, SqliteStore, Store, verify_chain};
use common::*;
use serde_json::{Value, json};
use tonic::Code;

const PROJECT: &str = "iam-project";
const LOC: &str = "projects/iam-project/locations/us-central1";

struct Account {
    email: String,
    key_file: Value,
}

async fn create_account(s: &TestServer, id: &str) -> Account {
    let mut c = iam::iam_client::IamClient::with_interceptor(s.channel().await, s.auth());
    let account = c
        .create_service_account(iam::CreateServiceAccountRequest {
            name: format!("projects/{PROJECT}"),
            account_id: id.into(),
            service_account: Some(iam::ServiceAccount {
                display_name: "test".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("create service account")
        .into_inner();
    assert_eq!(
        account.email,
        format!("{id}@{PROJECT}.iam.clustercred.internal")
    );
    let key = c
        .create_service_account_key(iam::CreateServiceAccountKeyRequest {
            name: format!("projects/-/serviceAccounts/{}", account.email),
            ..Default::default()
        })
        .await
        .expect("create key")
        .into_inner();
    let key_file: Value = serde_json::from_slice(&key.private_key_data).expect("key file JSON");
    assert_eq!(key_file["type"], "service_account");
    assert_eq!(key_file["client_email"], account.email.as_str());
    assert_eq!(
        key_file["private_key_id"],
        key.name.rsplit('/').next().unwrap()
    );
    assert_eq!(key_file["token_uri"], s.url("/oauth2/token").as_str());
    Account {
        email: account.email,
        key_file,
    }
}

async fn grant(s: &TestServer, member: &str, role: &str) {
    add_binding(s, PROJECT, member, role)
        .await
        .expect("set policy");
}

fn now() -> i64 {
    ::time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rs256(account: &Account, claims: &Value, kid: Option<&str>) -> String {
    let pem = account.key_file["private_key"].as_str().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn kid(account: &Account) -> String {
    account.key_file["private_key_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What google-auth sends to the token endpoint.
async fn token_request(s: &TestServer, assertion: &str) -> (u16, Value) {
    let resp = http()
        .post(s.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "assertion={assertion}&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        ))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn assertion_claims(account: &Account) -> Value {
    json!({"iss": account.email, "aud": "https://oauth2.googleapis.com/token",
           "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now(), "exp": now() + 3600})
}

async fn alloydb_as(
    s: &TestServer,
    token: &str,
) -> alloydb::alloy_db_admin_client::AlloyDbAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
> {
    alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        Auth(Some(format!("Bearer {token}"))),
    )
}

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

#[tokio::test]
async fn least_privilege_for_service_accounts() {
    let s = TestServer::start().await;
    admin_cluster(&s, "db").await;
    let client = create_account(&s, "db-client").await;
    let nobody = create_account(&s, "no-binding").await;
    grant(
        &s,
        &format!("serviceAccount:{}", client.email),
        "roles/alloydb.client",
    )
    .await;

    // The token endpoint hands out an access token for a key-signed assertion.
    let (code, body) = token_request(
        &s,
        &rs256(&client, &assertion_claims(&client), Some(&kid(&client))),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() > 3500);
    let token = body["access_token"].as_str().unwrap().to_string();

    let mut c = alloydb_as(&s, &token).await;
    let key = p256();
    let cert = c
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: format!("{LOC}/clusters/db"),
            public_key: key.public_key_pem(),
            ..Default::default()
        })
        .await
        .expect("alloydb.client may generate client certificates");
    let leaf = parse_cert(&cert.get_ref().pem_certificate_chain[0]);
    let (_, leaf) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        _,
    >>::from_der(&leaf)
    .unwrap();
    assert_eq!(
        leaf.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        client.email,
        "the certificate names the caller"
    );
    let err = c
        .delete_cluster(alloydb::DeleteClusterRequest {
            name: format!("{LOC}/clusters/db"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Self-signed JWTs, as GAPIC clients send them, work the same.
    let self_signed = rs256(
        &client,
        &json!({"iss": client.email, "sub": client.email, "aud": "https://alloydb.googleapis.com/", "iat": now(), "exp": now() + 3600}),
        Some(&kid(&client)),
    );
    let mut c2 = alloydb_as(&s, &self_signed).await;
    c2.get_cluster(alloydb::GetClusterRequest {
        name: format!("{LOC}/clusters/db"),
        ..Default::default()
    })
    .await
    .expect("alloydb.client may get clusters");

    // No binding: denied everything, and an existing cluster looks like a missing one.
    let (_, body) = token_request(
        &s,
        &rs256(&nobody, &assertion_claims(&nobody), Some(&kid(&nobody))),
    )
    .await;
    let mut n = alloydb_as(&s, body["access_token"].as_str().unwrap()).await;
    for name in ["db", "does-not-exist"] {
        let err = n
            .get_cluster(alloydb::GetClusterRequest {
                name: format!("{LOC}/clusters/{name}"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{name}");
        assert_eq!(
            err.message(),
            format!(
                "Permission 'alloydb.clusters.get' denied on resource '{LOC}/clusters/{name}' (or it may not exist)."
            )
        );
    }
    let err = n
        .list_clusters(alloydb::ListClustersRequest {
            parent: LOC.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    s.stop().await;
}

#[tokio::test]
async fn forged_and_stale_tokens_are_unauthenticated_and_audited() {
    let s = TestServer::start().await;
    admin_cluster(&s, "db").await;
    let account = create_account(&s, "victim-sa").await;
    grant(
        &s,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.admin",
    )
    .await;
    let (_, body) = token_request(
        &s,
        &rs256(&account, &assertion_claims(&account), Some(&kid(&account))),
    )
    .await;
    let good = body["access_token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let self_signed = |c: Value, kid: Option<&str>| rs256(&account, &c, kid);
    let base = json!({"iss": account.email, "sub": account.email, "aud": "https://alloydb.googleapis.com/", "iat": now(), "exp": now() + 600});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    claims["sub"] = json!("admin-sa@iam-project.iam.clustercred.internal");
    let jwks: Value = http()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_key_bytes = serde_json::to_vec(&jwks["keys"][0]).unwrap();
    let hmac = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = header["kid"].as_str().map(str::to_string);
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public_key_bytes),
        )
        .unwrap()
    };
    let other = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let wrong_key = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(kid(&account));
        jsonwebtoken::encode(
            &h,
            &base,
            &jsonwebtoken::EncodingKey::from_rsa_pem(other.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let cases = [
        (
            "expired",
            self_signed(
                with("exp", json!(now() - 600)).clone(),
                Some(&kid(&account)),
            ),
        ),
        (
            "wrong issuer",
            self_signed(
                with("iss", json!("someone@else.example")),
                Some(&kid(&account)),
            ),
        ),
        (
            "wrong audience",
            self_signed(
                with("aud", json!("https://example.com/")),
                Some(&kid(&account)),
            ),
        ),
        (
            "too long-lived",
            self_signed(with("exp", json!(now() + 7200)), Some(&kid(&account))),
        ),
        ("wrong key", wrong_key),
        (
            "alg none",
            format!(
                "{}.{}.",
                enc(&json!({"alg": "none", "kid": header["kid"]})),
                enc(&claims)
            ),
        ),
        ("HMAC keyed with the public key", hmac),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], enc(&claims), parts[2]),
        ),
        (
            "unknown kid",
            self_signed(
                base.clone(),
                Some("0000000000000000000000000000000000000000"),
            ),
        ),
        ("garbage", "not-a-token".to_string()),
    ];
    let store_path = s.data_dir.join("clustercred.db");
    for (what, token) in &cases {
        let mut c = alloydb_as(&s, token).await;
        let err = c
            .get_cluster(alloydb::GetClusterRequest {
                name: format!("{LOC}/clusters/db"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{what}: {}",
            err.message()
        );
    }
    // The good token still works, so the refusals above are about the forgeries.
    alloydb_as(&s, &good)
        .await
        .get_cluster(alloydb::GetClusterRequest {
            name: format!("{LOC}/clusters/db"),
            ..Default::default()
        })
        .await
        .expect("the genuine token works");
    let dir = s.stop().await;
    let store = SqliteStore::open(&store_path).await.unwrap();
    let denied: Vec<_> = store
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.status == "UNAUTHENTICATED")
        .collect();
    // The first refusal is written at once; its repeats (same source, method and status) as one counted
    // event when the window closes (here: at shutdown). Every refused call is accounted for.
    let refused: u64 = denied.iter().map(|e| common::audit_count(&e.event)).sum();
    assert_eq!(
        refused,
        cases.len() as u64,
        "every refused token is counted"
    );
    assert_eq!(denied.len(), 2, "one event, then one aggregate: {denied:?}");
    for e in &denied {
        assert!(
            e.event.method.ends_with("AlloyDBAdmin/GetCluster"),
            "{:?}",
            e.event
        );
        assert!(
            !e.event.detail.contains(&good[..30]),
            "never a whole token in the log"
        );
    }
    drop(dir);
}

#[tokio::test]
async fn token_endpoint_speaks_oauth_errors() {
    let s = TestServer::start().await;
    let account = create_account(&s, "token-sa").await;
    let bad = [
        rs256(
            &account,
            &json!({"iss": account.email, "aud": "https://elsewhere/token", "iat": now(), "exp": now() + 60}),
            Some(&kid(&account)),
        ),
        rs256(
            &account,
            &json!({"iss": account.email, "aud": "https://oauth2.googleapis.com/token", "iat": now() - 7200, "exp": now() - 3600}),
            Some(&kid(&account)),
        ),
        rs256(
            &account,
            &json!({"iss": "ghost@iam-project.iam.clustercred.internal", "aud": "https://oauth2.googleapis.com/token", "iat": now(), "exp": now() + 60}),
            Some(&kid(&account)),
        ),
        "x.y.z".to_string(),
    ];
    for assertion in bad {
        let (code, body) = token_request(&s, &assertion).await;
        assert_eq!(code, 400);
        assert_eq!(body["error"], "invalid_grant", "{body}");
        assert!(body["error_description"].is_string());
    }
    let resp = http()
        .post(s.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    // ID tokens for gcloud's activation.
    let mut claims = assertion_claims(&account);
    claims.as_object_mut().unwrap().remove("scope");
    claims["target_audience"] = json!("32555940559.apps.googleusercontent.com");
    let (code, body) = token_request(&s, &rs256(&account, &claims, Some(&kid(&account)))).await;
    assert_eq!(code, 200);
    assert!(body["id_token"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn policies_validate_and_refuse_stale_etags() {
    let s = TestServer::start().await;
    let mut c = ProjectsClient::with_interceptor(s.channel().await, s.auth());
    let resource = format!("projects/{PROJECT}");
    let first = c
        .get_iam_policy(GetIamPolicyRequest {
            resource: resource.clone(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!first.etag.is_empty());
    let set = |policy: Policy| SetIamPolicyRequest {
        resource: resource.clone(),
        policy: Some(policy),
        update_mask: None,
    };
    let binding = |role: &str, member: &str| Binding {
        role: role.into(),
        members: vec![member.into()],
        condition: None,
    };
    let written = c
        .set_iam_policy(set(Policy {
            bindings: vec![binding("roles/alloydb.viewer", "user:bob")],
            etag: first.etag.clone(),
            version: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(written.etag, first.etag);
    let stale = c
        .set_iam_policy(set(Policy {
            bindings: vec![],
            etag: first.etag.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    for bad in [
        binding("roles/made.up", "user:bob"),
        binding("roles/alloydb.viewer", "allUsers"),
        binding("roles/alloydb.viewer", "bob"),
    ] {
        let err = c
            .set_iam_policy(set(Policy {
                bindings: vec![bad],
                etag: written.etag.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let now_policy = c
        .get_iam_policy(GetIamPolicyRequest {
            resource: resource.clone(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        now_policy.bindings, written.bindings,
        "refused writes changed nothing"
    );
    s.stop().await;
}

#[tokio::test]
async fn every_issuance_is_audited_once_and_tampering_is_detected() {
    let s = TestServer::start().await;
    admin_cluster(&s, "db").await;
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let mut serials = Vec::new();
    let rid = "8d7d3d55-4b8f-4a5c-9d8e-6a3f0c2b1e11";
    for i in 0..4 {
        let resp = c
            .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
                parent: format!("{LOC}/clusters/db"),
                public_key: p256().public_key_pem(),
                // The last two share a request id: one issuance, one replay.
                request_id: if i >= 2 { rid.into() } else { String::new() },
                ..Default::default()
            })
            .await;
        if i < 3 {
            let resp = resp.unwrap().into_inner();
            let der = parse_cert(&resp.pem_certificate_chain[0]);
            let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(&der).unwrap();
            serials.push(hex::encode(cert.raw_serial()));
        }
    }
    let path = s.data_dir.join("clustercred.db");
    let dir = s.stop().await;
    let store = SqliteStore::open(&path).await.unwrap();
    let events = store
        .list_audit(&AuditFilter {
            method_contains: Some("GenerateClientCertificate".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let issued: Vec<_> = events.iter().filter(|e| e.event.outcome == "ok").collect();
    assert_eq!(
        issued.len(),
        3,
        "three certificates, three events (the fourth request was refused)"
    );
    for serial in &serials {
        assert_eq!(
            issued
                .iter()
                .filter(|e| e.event.detail.contains(serial.as_str()))
                .count(),
            1,
            "{serial}"
        );
    }
    for e in &issued {
        assert_eq!(e.event.principal, "user:admin");
        assert!(!e.event.client_address.is_empty());
        assert!(!e.event.detail.contains("PRIVATE KEY"));
    }
    let all = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(()));
    store.close().await;

    // The CLI says the same, then names the event an editor touched.
    let bin = env!("CARGO_BIN_EXE_clustercred");
    let data_dir = path.parent().unwrap().to_path_buf();
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let victim = issued[1].seq;
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.close().await;
    }
    let conn = std::process::Command::new("python3")
        .args(["-c", &format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute(\"update audit_events set event = replace(event, 'until', 'untill') where seq = {victim}\"); c.commit()",
            path.display().to_string()
        )])
        .status()
        .unwrap();
    assert!(conn.success());
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("event {victim}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(dir);
}
