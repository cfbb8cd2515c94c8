//! Hostile input on every REST route and over gRPC: malformed, truncated, oversized, deeply nested and random
//! bodies get 4xx google.rpc errors; the server stays up and nothing half-written remains.

mod common;

use clustercred_transport::RestGateway;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// A concrete path for a template: `*` → `x1`, `**` → `x1/x2`.
fn fill(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .unwrap_or(rest.len() - 1);
        let inner = &rest[start + 1..end];
        let pattern = inner.split_once('=').map(|(_, p)| p).unwrap_or("*");
        out.push_str(&pattern.replace("**", "x1/x2").replace('*', "x1"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn bodies(rng: &mut Lcg) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"unknownField\": 1}".to_vec(),
        b"{\"name\": 5, \"parent\": [], \"publicKey\": {}}".to_vec(),
        b"{\"certDuration\": \"-5s\", \"pageSize\": \"x\"}".to_vec(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        format!("{{\"a\":{}1{}}}", "{\"a\":".repeat(3000), "}".repeat(3000)).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x80],
        "{\"displayName\": \"\u{0000}\u{ffff}\"}"
            .as_bytes()
            .to_vec(),
    ];
    for n in [1, 7, 64, 4096] {
        v.push(rng.bytes(n));
    }
    v
}

#[tokio::test]
async fn every_route_answers_garbage_with_a_clean_4xx() {
    let s = TestServer::start().await;
    let pool =
        prost_reflect::DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).unwrap();
    let gateway = RestGateway::new(pool, clustercred::server::mounts(), Vec::new()).unwrap();
    let routes = gateway.route_table();
    assert!(
        routes.len() > 40,
        "all APIs are mounted ({} routes)",
        routes.len()
    );
    let mut rng = Lcg(42);
    let mut checked = 0;
    for route in &routes {
        let url = s.url(&format!("/{}{}", route.prefix, fill(&route.path)));
        for body in bodies(&mut rng) {
            let resp = http()
                .request(route.method.clone(), &url)
                .bearer_auth(&s.token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let json: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
            if route.body.is_none() && status == 200 {
                // Methods without a body (GET, DELETE) ignore it, as Google's front end does.
                continue;
            }
            assert!(
                (400..500).contains(&status),
                "{} {url} answered {status}: {text}",
                route.method
            );
            assert_eq!(json["error"]["code"], status, "{url}: {text}");
            assert!(
                json["error"]["status"].is_string() && json["error"]["message"].is_string(),
                "{text}"
            );
            checked += 1;
        }
    }
    // Oversized bodies are refused without being buffered whole.
    let big = vec![b'a'; 3 * 1024 * 1024];
    let resp = http()
        .post(s.url("/alloydb/v1/projects/p/locations/l/clusters?clusterId=big"))
        .bearer_auth(&s.token)
        .body(big)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());

    // Still up, and nothing was created by any of it.
    assert_eq!(
        http()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let path = s.data_dir.join("clustercred.db");
    let _dir = s.stop().await;
    use clustercred_store::Store;
    let store = clustercred_store::SqliteStore::open(&path).await.unwrap();
    for kind in [
        "alloydb.Cluster",
        "alloydb.Instance",
        "edgecontainer.Cluster",
        "gkemulticloud.AttachedCluster",
        "iam.ServiceAccount",
    ] {
        for parent in [
            "projects/x1/locations/x1",
            "projects/x1",
            "projects/x1/locations/x1/clusters/x1",
        ] {
            assert!(
                store
                    .list_resources(kind, parent, None, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "{kind} under {parent}"
            );
        }
    }
    assert!(checked > 500);
}

#[tokio::test]
async fn oversized_and_garbage_grpc_messages_are_refused_cleanly() {
    let s = TestServer::start().await;
    use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
    let mut c = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let err = c
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: "projects/p/locations/l/clusters/c".into(),
            public_key: "A".repeat(2 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    // A raw frame that is not the message it claims to be.
    let resp = http()
        .post(s.url("/google.cloud.alloydb.v1.AlloyDBAdmin/GetCluster"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .bearer_auth(&s.token)
        .body(vec![0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .send()
        .await;
    // HTTP/1.1 gRPC is not served, or the frame is refused; either way the server lives on.
    let _ = resp;
    let got = c
        .list_clusters(alloydb::ListClustersRequest {
            parent: "projects/p/locations/l".into(),
            ..Default::default()
        })
        .await;
    assert!(got.is_ok(), "the server still answers");
    s.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_resource_exhausted_with_retry_info() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = clustercred::ServeConfig::for_data_dir(dir.path().join("data"));
    config.rate_per_principal = 0.01;
    config.burst_per_principal = 3.0;
    let s = TestServer::start_with(config).await;
    let url = s.url("/alloydb/v1/projects/p/locations/l/clusters");
    for _ in 0..3 {
        let resp = http().get(&url).bearer_auth(&s.token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let resp = http().get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    let details = body["error"]["details"].as_array().unwrap();
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert!(retry["retryDelay"].as_str().unwrap().ends_with('s'));
    s.stop().await;
}

#[tokio::test]
async fn jwt_attacks_fail_at_every_acceptance_point() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let s = TestServer::start().await;
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({"iss": "x@p.iam.clustercred.internal", "sub": "x@p.iam.clustercred.internal",
        "aud": "https://alloydb.googleapis.com/", "iat": now, "exp": now + 600}).to_string();
    let attacker = p256();
    let jku = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.jku = Some("http://127.0.0.1:9/jwks.json".into());
        h.kid = Some("k".into());
        let c: Value = serde_json::from_str(&claims).unwrap();
        jsonwebtoken::encode(
            &h,
            &c,
            &jsonwebtoken::EncodingKey::from_ec_der(&attacker.serialize_der()),
        )
        .unwrap()
    };
    let attacks = [
        format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims)),
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"HS256","kid":"k"}"#),
            b64(&claims)
        ),
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","alg":"none","kid":"k"}"#),
            b64(&claims)
        ),
        jku,
    ];
    for token in &attacks {
        // 1. As a bearer token.
        let resp = http()
            .get(s.url("/alloydb/v1/projects/p/locations/l/clusters"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "bearer {token}");
        // 2. As a token-endpoint assertion.
        let resp = http()
            .post(s.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={token}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "assertion {token}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
    }
    s.stop().await;
}

/// Under saturation a minting call is refused before the gate authenticates it or reads its body, so that the
/// excess costs almost nothing: with the one signing permit held by a call whose commit waits on a locked
/// database, a call with no credential at all gets RESOURCE_EXHAUSTED (with RetryInfo) at once instead of
/// UNAUTHENTICATED, and so does an anonymous agent-token exchange for a cluster that does not exist; reads still
/// go through; once the permit is free the anonymous call is UNAUTHENTICATED again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_server_refuses_minting_calls_before_any_work() {
    const LOC: &str = "projects/p/locations/l";
    let dir = tempfile::tempdir().unwrap();
    let mut config = clustercred::ServeConfig::for_data_dir(dir.path().join("data"));
    config.max_concurrent_signing = 1;
    config.store_timeout_secs = 10;
    config.failure_burst_per_address = 1000.0;
    config.anonymous_burst = 1000.0;
    let s = TestServer::start_with(config).await;
    let base = s.url("");
    assert_eq!(create_cluster_c1(&base, &s.token, LOC).await, 200);
    let key = p256().public_key_pem();
    assert_eq!(
        issue_c1(&base, &s.token, LOC, &key, None).await.unwrap().0,
        200
    );
    let mint_url = s.url(&format!(
        "/alloydb/v1/{LOC}/clusters/c1:generateClientCertificate"
    ));
    let anonymous = || {
        let url = mint_url.clone();
        let key = key.clone();
        async move {
            let started = std::time::Instant::now();
            let resp = http()
                .post(url)
                .json(&serde_json::json!({"publicKey": key}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body, started.elapsed())
        }
    };
    assert_eq!(
        anonymous().await.0,
        401,
        "an idle server authenticates first"
    );

    // Another process holds the write lock: the next issuance signs, then waits in its commit with the permit.
    let lock = lock_database(&s.data_dir).await;
    let stuck = tokio::spawn({
        let (base, token, key) = (base.clone(), s.token.clone(), key.clone());
        async move { issue_c1(&base, &token, LOC, &key, None).await.unwrap().0 }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (status, body, took) = loop {
        let got = anonymous().await;
        if got.0 != 401 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status, 429,
        "saturated: refused before authentication: {body}"
    );
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("busy signing"),
        "{body}"
    );
    assert!(
        body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    // The public minting method too, before it looks at the body or the cluster.
    let resp = http()
        .post(s.url(&format!(
            "/gkemulticloud/v1/{LOC}/attachedClusters/nowhere:generateAttachedClusterAgentToken"
        )))
        .body("not even json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    // Over gRPC, with no credential, the gate refuses it the same way.
    use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
    let mut grpc = alloydb::alloy_db_admin_client::AlloyDbAdminClient::new(s.channel().await);
    let refused = grpc
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: format!("{LOC}/clusters/c1"),
            public_key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Reads are not minting calls.
    let resp = http()
        .get(s.url(&format!("/alloydb/v1/{LOC}/clusters/c1")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    unlock_database(lock).await;
    assert_eq!(
        stuck.await.unwrap(),
        200,
        "the held call completes once the lock goes"
    );
    assert_eq!(anonymous().await.0, 401, "the permit is free again");
    s.stop().await;
}
