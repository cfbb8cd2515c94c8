//! The real server over REST/JSON: transcoding, Google's JSON rules and error shape.

mod common;

use common::*;
use serde_json::{Value, json};

const LOC: &str = "projects/test-project/locations/us-central1";

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http().request(method, s.url(path)).bearer_auth(&s.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "every answer is JSON, got {ct:?}"
    );
    (status, resp.json().await.expect("JSON body"))
}

fn assert_error(body: &Value, http: u16, status: &str) {
    assert_eq!(body["error"]["code"], http, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn create_get_list_delete_over_rest_with_google_json() {
    let s = TestServer::start().await;
    let (code, op) = send(
        &s,
        reqwest::Method::POST,
        &format!("/alloydb/v1/{LOC}/clusters?clusterId=c1&%24alt=json%3Benum-encoding%3Dint"),
        Some(json!({"initialUser": {"user": "postgres", "password": "secret"}, "network": "default"})),
    )
    .await;
    assert_eq!(code, 200, "{op}");
    assert_eq!(op["done"], true);
    assert_eq!(
        op["response"]["@type"],
        "type.googleapis.com/google.cloud.alloydb.v1.Cluster"
    );
    assert_eq!(
        op["response"]["state"], 1,
        "enum-encoding=int gives numbers"
    );
    assert!(
        op["response"]["initialUser"].get("password").is_none(),
        "the password is never echoed"
    );
    let created = op["response"]["createTime"].as_str().unwrap();
    assert!(created.ends_with('Z'));

    let (code, cluster) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters/c1?alt=json"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(cluster["state"], "READY", "names by default");
    assert_eq!(cluster["databaseVersion"], "POSTGRES_16");

    // The operation reads back under the same API prefix.
    let op_name = op["name"].as_str().unwrap();
    let (code, again) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{op_name}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(again["name"], op["name"]);

    let (code, list) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters?pageSize=1"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["clusters"].as_array().unwrap().len(), 1);

    // gcloud spells booleans the Python way.
    let (code, del) = send(
        &s,
        reqwest::Method::DELETE,
        &format!("/alloydb/v1/{LOC}/clusters/c1?force=False"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{del}");
    assert_eq!(
        del["response"]["@type"],
        "type.googleapis.com/google.protobuf.Empty"
    );
    let (code, body) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters/c1"),
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_error(&body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_specific_google_errors() {
    let s = TestServer::start().await;
    let (code, body) = send(
        &s,
        reqwest::Method::POST,
        &format!("/alloydb/v1/{LOC}/clusters?clusterId=c1"),
        Some(json!({"notAField": 1})),
    )
    .await;
    assert_eq!(code, 400);
    assert_error(&body, 400, "INVALID_ARGUMENT");
    assert_eq!(
        body["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(
        body["error"]["details"][0]["fieldViolations"][0]["field"],
        "notAField"
    );

    let (code, body) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters?bogusParam=1"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogusParam")
    );

    let (code, body) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters?pageSize=-1"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        body["error"]["details"][0]["fieldViolations"][0]["field"],
        "page_size"
    );

    let (code, body) = send(&s, reqwest::Method::GET, "/no/such/path", None).await;
    assert_eq!(code, 404);
    assert_error(&body, 404, "NOT_FOUND");
    let (code, _) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters/c1:noSuchVerb"),
        None,
    )
    .await;
    assert_eq!(code, 404);

    // Malformed JSON, and a body that is not JSON at all.
    for raw in ["{", "not json", "[]", "{\"clusterType\": \"NOPE\"}"] {
        let resp = http()
            .post(s.url(&format!("/alloydb/v1/{LOC}/clusters?clusterId=c9")))
            .bearer_auth(&s.token)
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{raw}");
        let body: Value = resp.json().await.unwrap();
        assert_error(&body, 400, "INVALID_ARGUMENT");
    }
    // Nothing half-created.
    let (_, list) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters"),
        None,
    )
    .await;
    assert!(list.get("clusters").is_none(), "{list}");

    // No token: 401 in Google's shape with a WWW-Authenticate challenge.
    let resp = http()
        .get(s.url(&format!("/edgecontainer/v1/{LOC}/clusters")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, 401, "UNAUTHENTICATED");

    // An oversized body is refused, not buffered without limit.
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = http()
        .post(s.url(&format!("/alloydb/v1/{LOC}/clusters?clusterId=big")))
        .bearer_auth(&s.token)
        .body(format!("{{\"displayName\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], 413);
    s.stop().await;
}

#[tokio::test]
async fn api_prefix_or_host_selects_the_api() {
    let s = TestServer::start().await;
    send(
        &s,
        reqwest::Method::POST,
        &format!("/edgecontainer/v1/{LOC}/clusters?clusterId=e1"),
        Some(json!({})),
    )
    .await;
    // The same path shape under the AlloyDB prefix is another API's collection.
    let (code, _) = send(
        &s,
        reqwest::Method::GET,
        &format!("/alloydb/v1/{LOC}/clusters/e1"),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = send(
        &s,
        reqwest::Method::GET,
        &format!("/edgecontainer/v1/{LOC}/clusters/e1"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    // Without a prefix, the Host header decides.
    let resp = http()
        .get(s.url(&format!("/v1/{LOC}/clusters/e1")))
        .header("host", "edgecontainer.googleapis.com")
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn agent_token_rest_names_are_snake_case() {
    let s = TestServer::start().await;
    let key = p256();
    let point = rcgen::PublicKeyData::der_bytes(&key).to_vec();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    let jwks_b64 =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&jwks).unwrap());
    let (code, op) = send(
        &s,
        reqwest::Method::POST,
        &format!("/gkemulticloud/v1/{LOC}/attachedClusters?attachedClusterId=a1"),
        Some(json!({
            "oidcConfig": {"issuerUrl": "https://issuer.test", "jwks": jwks_b64},
            "platformVersion": "1.30.0-gke.1", "distribution": "generic",
            "fleet": {"project": "projects/test-project"},
        })),
    )
    .await;
    assert_eq!(code, 200, "{op}");
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"iss": "https://issuer.test", "aud": "test-project.svc.id.goog",
                "sub": "system:serviceaccount:default:agent", "exp": now + 300, "iat": now}),
        &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    // No authorization header at all.
    let resp = http()
        .post(s.url(&format!("/gkemulticloud/v1/{LOC}/attachedClusters/a1:generateAttachedClusterAgentToken")))
        .json(&json!({
            "subjectToken": token, "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt", "version": "1.2.3",
            "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{body}"
    );
    assert!(body["expires_in"].is_number(), "int32 is a JSON number");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("accessToken").is_none());
    s.stop().await;
}
