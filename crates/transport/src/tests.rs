//! Transcoding against the real descriptors and a fake gRPC service.

use std::convert::Infallible;

use axum::body::Body;
use bytes::{Buf, Bytes};
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use http::{Request, Response};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::{ApiMount, RestGateway};

fn gateway() -> RestGateway {
    let pool = DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mount = |p: &str, pkg: &str| ApiMount {
        prefix: p.into(),
        packages: vec![pkg.into()],
        host_markers: vec![format!("{p}.")],
    };
    RestGateway::new(
        pool,
        vec![
            mount("alloydb", "google.cloud.alloydb."),
            mount("edgecontainer", "google.cloud.edgecontainer."),
        ],
        vec!["google.longrunning.".into()],
    )
    .unwrap()
}

/// What the fake service saw: method path, the decoded request as JSON, and forwarded metadata.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>, http::HeaderMap)>>>;

fn frame(bytes: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    v.extend_from_slice(bytes);
    Bytes::from(v)
}

/// A gRPC service answering every call with `reply` (a message or a status).
fn fake(
    seen: Seen,
    reply: Result<Vec<u8>, tonic::Status>,
) -> impl tower::Service<
    Request<tonic::body::Body>,
    Response = Response<tonic::body::Body>,
    Error = Infallible,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |req: Request<tonic::body::Body>| {
        let seen = seen.clone();
        let reply = reply.clone();
        async move {
            let path = req.uri().path().to_string();
            let headers = req.headers().clone();
            let mut body = req.into_body().collect().await.unwrap().to_bytes();
            body.advance(5);
            seen.lock().unwrap().push((path, body.to_vec(), headers));
            let response = match reply {
                Ok(bytes) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let body = http_body_util::StreamBody::new(futures::stream::iter(vec![
                        Ok::<_, Infallible>(http_body::Frame::data(frame(&bytes))),
                        Ok(http_body::Frame::trailers(trailers)),
                    ]));
                    Response::new(tonic::body::Body::new(body))
                }
                Err(status) => status.into_http(),
            };
            Ok::<_, Infallible>(response)
        }
    })
}

async fn run(req: Request<Body>, reply: Result<Vec<u8>, tonic::Status>) -> (u16, Value, Seen) {
    let seen: Seen = Default::default();
    let response = gateway().handle(fake(seen.clone(), reply), req).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap(), seen)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", "Bearer t")
        .header("x-goog-request-params", "a=b")
        .body(Body::empty())
        .unwrap()
}

fn sent<M: Message + Default>(seen: &Seen) -> (String, M) {
    let calls = seen.lock().unwrap();
    let (path, bytes, _) = calls.last().expect("a call was made");
    (path.clone(), M::decode(bytes.as_slice()).unwrap())
}

const C: &str = "projects/p/locations/l/clusters/c1";

#[tokio::test]
async fn path_query_and_metadata_reach_the_service() {
    let cluster = alloydb::Cluster {
        name: C.into(),
        state: 1,
        ..Default::default()
    };
    let (status, json, seen) = run(
        get(&format!(
            "/alloydb/v1/{C}?view=CLUSTER_VIEW_BASIC&%24alt=json%3Benum-encoding%3Dint"
        )),
        Ok(cluster.encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json, json!({"name": C, "state": 1}));
    let (path, req): (_, alloydb::GetClusterRequest) = sent(&seen);
    assert_eq!(path, "/google.cloud.alloydb.v1.AlloyDBAdmin/GetCluster");
    assert_eq!(req.name, C);
    assert_eq!(req.view, 1);
    let headers = seen.lock().unwrap()[0].2.clone();
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(headers["x-goog-request-params"], "a=b");
    assert_eq!(headers["content-type"], "application/grpc");

    let (_, json, _) = run(
        get(&format!("/alloydb/v1/{C}")),
        Ok(cluster.encode_to_vec()),
    )
    .await;
    assert_eq!(
        json["state"], "READY",
        "enum names unless asked for numbers"
    );
}

#[tokio::test]
async fn query_values_are_typed_and_both_names_work() {
    let reply = Ok(alloydb::ListClustersResponse::default().encode_to_vec());
    let (status, _, seen) = run(
        get("/alloydb/v1/projects/p/locations/l/clusters?page_size=7&pageToken=abc&filter=x%3D1&orderBy=name&alt=json"),
        reply.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, req): (_, alloydb::ListClustersRequest) = sent(&seen);
    assert_eq!(
        (
            req.page_size,
            req.page_token.as_str(),
            req.filter.as_str(),
            req.order_by.as_str()
        ),
        (7, "abc", "x=1", "name")
    );

    let del = Ok(clustercred_proto::google::longrunning::Operation::default().encode_to_vec());
    let (_, _, seen) = run(
        Request::delete(format!(
            "/alloydb/v1/{C}?force=False&validateOnly=TRUE&etag=e"
        ))
        .body(Body::empty())
        .unwrap(),
        del,
    )
    .await;
    let (_, req): (_, alloydb::DeleteClusterRequest) = sent(&seen);
    assert!(!req.force && req.validate_only);
    assert_eq!(req.etag, "e");

    for (query, field) in [
        ("pageSize=ten", "pageSize"),
        ("nope=1", "nope"),
        ("force=maybe", "force"),
        ("alt=proto", "alt"),
    ] {
        let uri = if field == "force" {
            format!("/alloydb/v1/{C}?{query}")
        } else {
            format!("/alloydb/v1/projects/p/locations/l/clusters?{query}")
        };
        let method = if field == "force" {
            http::Method::DELETE
        } else {
            http::Method::GET
        };
        let (status, json, seen) = run(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
            reply.clone(),
        )
        .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            json["error"]["details"][0]["fieldViolations"][0]["field"], field,
            "{json}"
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "a bad request never reaches the service"
        );
    }
}

#[tokio::test]
async fn bodies_map_to_the_whole_message_or_one_field() {
    let op = Ok(clustercred_proto::google::longrunning::Operation::default().encode_to_vec());
    let req = Request::post("/alloydb/v1/projects/p/locations/l/clusters?clusterId=c9")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"displayName": "d", "network_config": {"network": "n"}}"#,
        ))
        .unwrap();
    let (status, _, seen) = run(req, op.clone()).await;
    assert_eq!(status, 200);
    let (_, req): (_, alloydb::CreateClusterRequest) = sent(&seen);
    assert_eq!(req.parent, "projects/p/locations/l");
    assert_eq!(req.cluster_id, "c9");
    let cluster = req.cluster.unwrap();
    assert_eq!(cluster.display_name, "d");
    assert_eq!(
        cluster.network_config.unwrap().network,
        "n",
        "proto field names are accepted too"
    );

    let cert = Ok(alloydb::GenerateClientCertificateResponse::default().encode_to_vec());
    let req = Request::post(format!("/alloydb/v1/{C}:generateClientCertificate"))
        .body(Body::from(
            r#"{"publicKey": "PEM", "certDuration": "3.5s", "parent": "ignored"}"#,
        ))
        .unwrap();
    let (status, _, seen) = run(req, cert.clone()).await;
    assert_eq!(status, 200);
    let (_, req): (_, alloydb::GenerateClientCertificateRequest) = sent(&seen);
    assert_eq!(req.parent, C, "the path wins over the body");
    assert_eq!(
        req.cert_duration,
        Some(prost_types::Duration {
            seconds: 3,
            nanos: 500_000_000
        })
    );

    // With body "*", a query parameter has nowhere to go.
    let req = Request::post(format!(
        "/alloydb/v1/{C}:generateClientCertificate?publicKey=x"
    ))
    .body(Body::empty())
    .unwrap();
    let (status, _, _) = run(req, cert.clone()).await;
    assert_eq!(status, 400);
    // An empty body is an empty message.
    let req = Request::post(format!("/alloydb/v1/{C}:generateClientCertificate"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(run(req, cert.clone()).await.0, 200);
    for bad in [
        r#"{"publicKey": 5}"#,
        r#"{"certDuration": "soon"}"#,
        "[1]",
        "{",
        r#"{"a":1}"#,
    ] {
        let req = Request::post(format!("/alloydb/v1/{C}:generateClientCertificate"))
            .body(Body::from(bad))
            .unwrap();
        let (status, json, _) = run(req, cert.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");
    }
}

#[tokio::test]
async fn errors_carry_google_status_and_details() {
    let status = tonic::Status::with_error_details(
        Code::InvalidArgument,
        "invalid public_key",
        ErrorDetails::with_bad_request_violation("public_key", "RSA key of 1024 bits is too weak"),
    );
    let (code, json, _) = run(
        Request::post(format!("/alloydb/v1/{C}:generateClientCertificate"))
            .body(Body::from("{}"))
            .unwrap(),
        Err(status),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        json,
        json!({"error": {"code": 400, "message": "invalid public_key", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "public_key", "description": "RSA key of 1024 bits is too weak"}]}]}})
    );
    for (code, http, name) in [
        (Code::NotFound, 404, "NOT_FOUND"),
        (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
        (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
        (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
        (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
        (Code::FailedPrecondition, 400, "FAILED_PRECONDITION"),
        (Code::Unimplemented, 501, "UNIMPLEMENTED"),
        (Code::Internal, 500, "INTERNAL"),
    ] {
        let (status, json, _) = run(
            get(&format!("/alloydb/v1/{C}")),
            Err(tonic::Status::new(code, "m")),
        )
        .await;
        assert_eq!(
            (
                status,
                json["error"]["code"].as_u64(),
                json["error"]["status"].as_str()
            ),
            (http, Some(http as u64), Some(name))
        );
    }
}

#[tokio::test]
async fn routing_by_prefix_host_verb_and_method() {
    let ok = Ok(alloydb::Cluster::default().encode_to_vec());
    let edge = Request::get(format!("/v1/{C}"))
        .header("host", "edgecontainer.googleapis.com")
        .body(Body::empty())
        .unwrap();
    let (status, _, seen) = run(edge, ok.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        sent::<clustercred_proto::google::cloud::edgecontainer::v1::GetClusterRequest>(&seen).0,
        "/google.cloud.edgecontainer.v1.EdgeContainer/GetCluster"
    );

    let ops = Ok(clustercred_proto::google::longrunning::Operation::default().encode_to_vec());
    let (status, _, seen) = run(
        get("/edgecontainer/v1/projects/p/locations/l/operations/op-1"),
        ops,
    )
    .await;
    assert_eq!(status, 200, "operations are served under every prefix");
    assert_eq!(
        sent::<clustercred_proto::google::longrunning::GetOperationRequest>(&seen)
            .1
            .name,
        "projects/p/locations/l/operations/op-1"
    );

    for (method, uri) in [
        (http::Method::GET, format!("/alloydb/v1/{C}:unknownVerb")),
        (http::Method::PUT, format!("/alloydb/v1/{C}")),
        (http::Method::GET, format!("/gkemulticloud/v1/{C}")),
        (http::Method::GET, format!("/v1/{C}")),
        (http::Method::GET, "/".to_string()),
    ] {
        let (status, json, seen) = run(
            Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap(),
            ok.clone(),
        )
        .await;
        assert_eq!(status, 404, "{uri}");
        assert_eq!(json["error"]["status"], "NOT_FOUND");
        assert!(seen.lock().unwrap().is_empty());
    }
}

#[test]
fn dynamic_messages_match_prost_types() {
    // The gateway's dynamic messages and the services' prost types agree on the wire.
    let pool = DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool
        .get_message_by_name("google.cloud.alloydb.v1.Cluster")
        .unwrap();
    let typed = alloydb::Cluster {
        name: C.into(),
        state: 1,
        ..Default::default()
    };
    let dynamic = DynamicMessage::decode(desc.clone(), typed.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        dynamic.descriptor().full_name(),
        "google.cloud.alloydb.v1.Cluster"
    );
    assert_eq!(
        alloydb::Cluster::decode(dynamic.encode_to_vec().as_slice()).unwrap(),
        typed
    );
}

/// gcloud's `users set-roles`: PATCH on `{user.name=...}` with the proto (snake_case) name in `updateMask`; the
/// JSON (lowerCamelCase) form means the same. A `%40` in the user id decodes to `@`.
#[tokio::test]
async fn update_masks_take_both_name_forms_in_the_query() {
    let user = format!("{C}/users/sa@p.iam");
    let reply = Ok(alloydb::User {
        name: user.clone(),
        ..Default::default()
    }
    .encode_to_vec());
    for (mask, want) in [
        ("database_roles", vec!["database_roles"]),
        ("databaseRoles,password", vec!["database_roles", "password"]),
        ("keepExtraRoles", vec!["keep_extra_roles"]),
    ] {
        let req = Request::patch(format!(
            "/alloydb/v1/{C}/users/sa%40p.iam?alt=json&updateMask={mask}"
        ))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": user, "databaseRoles": ["r1"]}).to_string(),
        ))
        .unwrap();
        let (status, _, seen) = run(req, reply.clone()).await;
        assert_eq!(status, 200, "{mask}");
        let (path, req): (_, alloydb::UpdateUserRequest) = sent(&seen);
        assert_eq!(path, "/google.cloud.alloydb.v1.AlloyDBAdmin/UpdateUser");
        assert_eq!(req.update_mask.unwrap().paths, want, "{mask}");
        let sent_user = req.user.unwrap();
        assert_eq!(sent_user.name, user);
        assert_eq!(sent_user.database_roles, ["r1"]);
    }
    for bad in ["a-b", "9x", "a..b", "a%20b"] {
        let req = Request::patch(format!("/alloydb/v1/{C}/users/u?updateMask={bad}"))
            .body(Body::from("{}"))
            .unwrap();
        let (status, json, _) = run(req, reply.clone()).await;
        assert_eq!(status, 400, "{bad}: {json}");
        assert_eq!(
            json["error"]["details"][0]["fieldViolations"][0]["field"], "updateMask",
            "{bad}"
        );
    }
}
