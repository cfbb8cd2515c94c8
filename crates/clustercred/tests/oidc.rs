//! Bearer tokens from a configured external OIDC issuer (a fake one on loopback): discovery, JWKS caching,
//! refetch on an unknown key id with a rate limit, audience and principal claim; federated member names that
//! never equal local ones; email_verified; groups; one slow or dead issuer stalling nobody else.

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
    /// While set, key fetches wait for it to be notified (a slow issuer).
    hold: Arc<tokio::sync::Notify>,
    held: Arc<std::sync::atomic::AtomicBool>,
    /// Key fetches answer 500 (a dead issuer).
    broken: Arc<std::sync::atomic::AtomicBool>,
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
    let hold = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (k, f, u) = (keys.clone(), fetches.clone(), url.clone());
    let (h, hd, b) = (hold.clone(), held.clone(), broken.clone());
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
                let (h, hd, b) = (h.clone(), hd.clone(), b.clone());
                async move {
                    use axum::response::IntoResponse;
                    use std::sync::atomic::Ordering;
                    *f.lock().unwrap() += 1;
                    if hd.load(Ordering::SeqCst) {
                        h.notified().await;
                    }
                    if b.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let keys: Vec<Value> = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, key)| jwk(kid, key))
                        .collect();
                    Json(json!({ "keys": keys })).into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeIssuer {
        url,
        keys,
        fetches,
        hold,
        held,
        broken,
    }
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
        json!([{"id": "corp", "issuer": issuer.url, "audience": "clustercred", "principal_claim": "email"}])
            .to_string(),
    )
    .unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.trusted_issuers = Some(trust);
    config.oidc_min_refetch_secs = 3600;
    let s = TestServer::start_with(config).await;

    // Grant alice a viewer role through the API as the administrator.
    bind(
        &s,
        "roles/alloydb.viewer",
        "principal://clustercred/issuers/corp/subject/alice@example.com",
    )
    .await
    .unwrap();

    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |email: &str, aud: &str| json!({"iss": issuer.url, "aud": aud, "email": email, "email_verified": true, "iat": now, "exp": now + 300});
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

async fn list_as(s: &TestServer, token: String) -> Result<(), tonic::Status> {
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        Auth(Some(format!("Bearer {token}"))),
    );
    c.list_clusters(alloydb::ListClustersRequest {
        parent: "projects/p/locations/l".into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn bind(s: &TestServer, role: &str, member: &str) -> Result<(), tonic::Status> {
    add_binding(s, "p", member, role).await
}

fn key_of(issuer: &FakeIssuer) -> rcgen::KeyPair {
    rcgen::KeyPair::try_from(issuer.keys.lock().unwrap()[0].1.serialize_der().as_slice()).unwrap()
}

#[tokio::test]
async fn federated_identities_never_equal_local_ones() {
    let issuer = fake_issuer().await;
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("issuers.json");
    std::fs::write(
        &trust,
        json!([{"id": "corp", "issuer": issuer.url, "audience": "clustercred",
                "principal_claim": "email", "groups_claim": "groups"}])
        .to_string(),
    )
    .unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.trusted_issuers = Some(trust);
    let s = TestServer::start_with(config).await;
    let key = key_of(&issuer);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let tok = |extra: Value| {
        let mut claims =
            json!({"iss": issuer.url, "aud": "clustercred", "iat": now, "exp": now + 300});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        token(&issuer, "k1", &key, claims)
    };

    // The administrator's own token may list; an issuer's "admin" is not that administrator.
    list_as(&s, s.token.clone())
        .await
        .expect("the administrator may list");
    let err = list_as(&s, tok(json!({"email": "admin", "email_verified": true})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A local binding does not reach the federated identity of the same name, and the other way round.
    bind(&s, "roles/alloydb.viewer", "user:alice@example.com")
        .await
        .unwrap();
    let alice = tok(json!({"email": "alice@example.com", "email_verified": true}));
    assert_eq!(
        list_as(&s, alice.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    bind(
        &s,
        "roles/alloydb.viewer",
        "principal://clustercred/issuers/corp/subject/alice@example.com",
    )
    .await
    .unwrap();
    list_as(&s, alice)
        .await
        .expect("bound as a federated principal");

    // An email only names someone once the issuer verified it.
    for unverified in [
        json!({"email": "alice@example.com", "email_verified": false}),
        json!({"email": "alice@example.com"}),
    ] {
        assert_eq!(
            list_as(&s, tok(unverified)).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    // Groups of the issuer are principal sets.
    let carol =
        tok(json!({"email": "carol@example.com", "email_verified": true, "groups": ["dbas"]}));
    assert_eq!(
        list_as(&s, carol.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    bind(
        &s,
        "roles/alloydb.viewer",
        "principalSet://clustercred/issuers/corp/group/dbas",
    )
    .await
    .unwrap();
    list_as(&s, carol).await.expect("granted through the group");

    // Malformed federated members are refused by name.
    for bad in [
        "principal://elsewhere/issuers/corp/subject/x",
        "principal://clustercred/issuers/Corp/subject/x",
        "principalSet://clustercred/issuers/corp/team/x",
    ] {
        let err = bind(&s, "roles/alloydb.viewer", bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_slow_or_dead_issuer_stalls_nobody_else() {
    let (slow, good, dead) = (
        fake_issuer().await,
        fake_issuer().await,
        fake_issuer().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("issuers.json");
    std::fs::write(
        &trust,
        json!([
            {"id": "slow", "issuer": slow.url, "audience": "clustercred"},
            {"id": "good", "issuer": good.url, "audience": "clustercred"},
            {"id": "dead", "issuer": dead.url, "audience": "clustercred"},
        ])
        .to_string(),
    )
    .unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.trusted_issuers = Some(trust);
    config.oidc_min_refetch_secs = 3600;
    let s = Arc::new(TestServer::start_with(config).await);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let tok = |issuer: &FakeIssuer| {
        let claims = json!({"iss": issuer.url, "aud": "clustercred", "sub": "u1", "iat": now, "exp": now + 300});
        token(issuer, "k1", &key_of(issuer), claims)
    };

    // A login at the slow issuer waits inside its key fetch...
    slow.held.store(true, std::sync::atomic::Ordering::SeqCst);
    let slow_login = tokio::spawn({
        let (s, t) = (s.clone(), tok(&slow));
        async move { list_as(&s, t).await }
    });
    for _ in 0..200 {
        if *slow.fetches.lock().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(*slow.fetches.lock().unwrap(), 1, "the slow fetch started");
    // ...while a login at another issuer goes through (authenticated: denied for want of a binding, not
    // stuck behind the slow fetch).
    let good_login =
        tokio::time::timeout(std::time::Duration::from_secs(20), list_as(&s, tok(&good)))
            .await
            .expect("a login at another issuer does not wait for the slow one");
    assert_eq!(good_login.unwrap_err().code(), Code::PermissionDenied);
    assert!(!slow_login.is_finished());
    slow.hold.notify_one();
    assert_eq!(
        slow_login.await.unwrap().unwrap_err().code(),
        Code::PermissionDenied
    );

    // A dead issuer is asked once; its failure is remembered instead of retried for every token.
    dead.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            list_as(&s, tok(&dead)).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    assert_eq!(*dead.fetches.lock().unwrap(), 1);
    Arc::try_unwrap(s).ok().unwrap().stop().await;
}
