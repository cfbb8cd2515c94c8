//! Bearer tokens from a configured external OIDC issuer (a fake one on loopback): discovery, JWKS caching,
//! refetch on an unknown key id with a rate limit, audience and principal claim.

mod common;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clustercred::ServeConfig;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use common::*;
use serde_json::{Value, json};
use tonic::Code;

struct FakeIssuer {
    url: String,
    keys: Arc<Mutex<Vec<(String, rcgen::KeyPair)>>>,
    fetches: Arc<Mutex<u32>>,
}

fn jwk(kid: &str, key: &rcgen::KeyPair) -> Value {
    let p = key.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
}

async fn fake_issuer() -> FakeIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys: Arc<Mutex<Vec<(String, rcgen::KeyPair)>>> =
        Arc::new(Mutex::new(vec![("k1".into(), p256())]));
    let fetches = Arc::new(Mutex::new(0u32));
    let (k, f, u) = (keys.clone(), fetches.clone(), url.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let u = u.clone();
                async move { Json(json!({"issuer": u, "jwks_uri": format!("{u}/keys")})) }
            }),
        )
        .route(
            "/keys",
            get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    *f.lock().unwrap() += 1;
                    let keys: Vec<Value> = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, key)| jwk(kid, key))
                        .collect();
                    Json(json!({ "keys": keys }))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeIssuer { url, keys, fetches }
}

fn token(issuer: &FakeIssuer, kid: &str, key: &rcgen::KeyPair, claims: Value) -> String {
    let _ = &issuer.url;
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
async fn external_issuer_tokens_authenticate_their_principal() {
    let issuer = fake_issuer().await;
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("issuers.json");
    std::fs::write(
        &trust,
        json!([{"issuer": issuer.url, "audience": "clustercred", "principal_claim": "email"}])
            .to_string(),
    )
    .unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.trusted_issuers = Some(trust);
    config.oidc_min_refetch_secs = 3600;
    let s = TestServer::start_with(config).await;

    // Grant alice a viewer role through the API as the administrator.
    use clustercred_proto::google::cloudresourcemanager::v1::projects_client::ProjectsClient;
    use clustercred_proto::google::iam::v1::{Binding, GetIamPolicyRequest, SetIamPolicyRequest};
    let mut projects = ProjectsClient::with_interceptor(s.channel().await, s.auth());
    let mut policy = projects
        .get_iam_policy(GetIamPolicyRequest {
            resource: "projects/p".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    policy.bindings.push(Binding {
        role: "roles/alloydb.viewer".into(),
        members: vec!["user:alice@example.com".into()],
        condition: None,
    });
    projects
        .set_iam_policy(SetIamPolicyRequest {
            resource: "projects/p".into(),
            policy: Some(policy),
            update_mask: None,
        })
        .await
        .unwrap();

    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |email: &str, aud: &str| json!({"iss": issuer.url, "aud": aud, "email": email, "iat": now, "exp": now + 300});
    let call = |t: String| {
        let s = &s;
        async move {
            let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
                s.channel().await,
                Auth(Some(format!("Bearer {t}"))),
            );
            c.list_clusters(alloydb::ListClustersRequest {
                parent: "projects/p/locations/l".into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let k1 = issuer.keys.lock().unwrap()[0].1.serialize_der();
    let k1 = rcgen::KeyPair::try_from(k1.as_slice()).unwrap();
    call(token(
        &issuer,
        "k1",
        &k1,
        claims("alice@example.com", "clustercred"),
    ))
    .await
    .expect("alice may list");
    assert_eq!(
        call(token(
            &issuer,
            "k1",
            &k1,
            claims("bob@example.com", "clustercred")
        ))
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        call(token(
            &issuer,
            "k1",
            &k1,
            claims("alice@example.com", "other")
        ))
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );
    let stranger = p256();
    assert_eq!(
        call(token(
            &issuer,
            "k1",
            &stranger,
            claims("alice@example.com", "clustercred")
        ))
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );
    assert_eq!(*issuer.fetches.lock().unwrap(), 1, "keys are cached");

    // The issuer rotates: a new kid triggers one refetch...
    let k2 = p256();
    issuer.keys.lock().unwrap().push((
        "k2".into(),
        rcgen::KeyPair::try_from(k2.serialize_der().as_slice()).unwrap(),
    ));
    call(token(
        &issuer,
        "k2",
        &k2,
        claims("alice@example.com", "clustercred"),
    ))
    .await
    .expect("rotated key accepted");
    assert_eq!(*issuer.fetches.lock().unwrap(), 2);
    // ...but a stream of unknown kids does not hammer the issuer.
    for i in 0..5 {
        let err = call(token(
            &issuer,
            &format!("bogus{i}"),
            &k2,
            claims("alice@example.com", "clustercred"),
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert_eq!(
        *issuer.fetches.lock().unwrap(),
        2,
        "refetches are rate limited"
    );
    s.stop().await;
}
