//! The security review repeated from outside, as an attacker would (issue 12): a viewer asks for offline
//! kubectl credentials, an anonymous flood against a running issuance, an Edge delete over AlloyDB resources of
//! the same name, a deleted-and-recreated service account, expiring and revoked user tokens, and tokens used
//! where another kind or scope is expected.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use clustercred::ServeConfig;
use clustercred::cli::{DataDir, IamCommand};
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use clustercred_proto::google::cloud::edgecontainer::v1 as edge;
use clustercred_proto::google::cloudresourcemanager::v1::projects_client::ProjectsClient;
use clustercred_proto::google::iam::admin::v1 as iam;
use clustercred_proto::google::iam::v1::GetIamPolicyRequest;
use clustercred_store::{AuditFilter, SqliteStore, Store, ca_owner};
use common::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

const PROJECT: &str = "hard";
const LOC: &str = "projects/hard/locations/l1";
const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// A local user with a bearer token, made the way an operator does (the CLI, on the live data directory).
async fn user(s: &TestServer, id: &str, expires_in_secs: Option<u64>) -> String {
    let token_file = s.data_dir.join(format!("{id}.token"));
    let _ = std::fs::remove_file(&token_file);
    clustercred::cli::iam(IamCommand::CreateUser {
        dir: DataDir {
            data_dir: s.data_dir.clone(),
            database: None,
        },
        id: id.into(),
        token_file: token_file.clone(),
        expires_in_secs,
    })
    .await
    .expect("create user");
    std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_string()
}

async fn grant(s: &TestServer, member: &str, role: &str) {
    add_binding(s, PROJECT, member, role)
        .await
        .expect("set policy");
}

async fn members(s: &TestServer) -> Vec<String> {
    let mut c = ProjectsClient::with_interceptor(s.channel().await, s.auth());
    let policy = c
        .get_iam_policy(GetIamPolicyRequest {
            resource: format!("projects/{PROJECT}"),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    policy
        .bindings
        .into_iter()
        .flat_map(|b| b.members)
        .collect()
}

fn bearer(token: &str) -> Auth {
    Auth(Some(format!("Bearer {token}")))
}

async fn edge_client(
    s: &TestServer,
    token: &str,
) -> edge::edge_container_client::EdgeContainerClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
> {
    edge::edge_container_client::EdgeContainerClient::with_interceptor(
        s.channel().await,
        bearer(token),
    )
}

async fn alloydb_client(
    s: &TestServer,
    token: &str,
) -> alloydb::alloy_db_admin_client::AlloyDbAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
> {
    alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        bearer(token),
    )
}

async fn create_edge_cluster(s: &TestServer, token: &str, id: &str) -> Result<(), tonic::Status> {
    edge_client(s, token)
        .await
        .create_cluster(edge::CreateClusterRequest {
            parent: LOC.into(),
            cluster_id: id.into(),
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
        .map(|_| ())
}

async fn offline_credential(s: &TestServer, token: &str, id: &str) -> Result<(), tonic::Status> {
    edge_client(s, token)
        .await
        .generate_offline_credential(edge::GenerateOfflineCredentialRequest {
            cluster: format!("{LOC}/clusters/{id}"),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn viewers_cannot_take_offline_credentials() {
    let s = TestServer::start().await;
    create_edge_cluster(&s, &s.token, "e1").await.unwrap();
    for role in ["roles/viewer", "roles/edgecontainer.viewer"] {
        let id = role.replace(['/', '.'], "-");
        let token = user(&s, &id, None).await;
        grant(&s, &format!("user:{id}"), role).await;
        // The viewer can read the cluster...
        edge_client(&s, &token)
            .await
            .get_cluster(edge::GetClusterRequest {
                name: format!("{LOC}/clusters/e1"),
            })
            .await
            .expect("a viewer reads the cluster");
        // ...but gets no key and certificate, over gRPC or REST.
        let err = offline_credential(&s, &token, "e1").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{role}: {err:?}");
        assert!(
            err.message()
                .contains("edgecontainer.clusters.generateOfflineCredential"),
            "{}",
            err.message()
        );
        let rest = http()
            .get(s.url(&format!(
                "/edgecontainer/v1/{LOC}/clusters/e1:generateOfflineCredential"
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(rest.status().as_u16(), 403, "{role} over REST");
    }
    // The narrow role gets exactly that, and cannot change the cluster.
    let token = user(&s, "offline", None).await;
    grant(
        &s,
        "user:offline",
        "roles/edgecontainer.offlineCredentialUser",
    )
    .await;
    offline_credential(&s, &token, "e1")
        .await
        .expect("offlineCredentialUser gets a credential");
    let err = edge_client(&s, &token)
        .await
        .delete_cluster(edge::DeleteClusterRequest {
            name: format!("{LOC}/clusters/e1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_edge_cluster_keeps_alloydb_resources_of_the_same_name() {
    let s = TestServer::start().await;
    let name = format!("{LOC}/clusters/shared");
    let mut admin = alloydb_client(&s, &s.token).await;
    admin
        .create_cluster(alloydb::CreateClusterRequest {
            parent: LOC.into(),
            cluster_id: "shared".into(),
            cluster: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_instance(alloydb::CreateInstanceRequest {
            parent: name.clone(),
            instance_id: "i1".into(),
            instance: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = p256();
    admin
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: name.clone(),
            public_key: key.public_key_pem(),
            ..Default::default()
        })
        .await
        .expect("issuance");

    // An Edge administrator who cannot even read AlloyDB creates and deletes an Edge cluster of that name.
    let token = user(&s, "edgeadmin", None).await;
    grant(&s, "user:edgeadmin", "roles/edgecontainer.admin").await;
    assert_eq!(
        alloydb_client(&s, &token)
            .await
            .get_cluster(alloydb::GetClusterRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    create_edge_cluster(&s, &token, "shared").await.unwrap();
    offline_credential(&s, &s.token, "shared").await.unwrap();
    edge_client(&s, &token)
        .await
        .delete_cluster(edge::DeleteClusterRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .expect("edge delete");

    admin
        .get_cluster(alloydb::GetClusterRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .expect("the AlloyDB cluster is still there");
    admin
        .get_instance(alloydb::GetInstanceRequest {
            name: format!("{name}/instances/i1"),
            ..Default::default()
        })
        .await
        .expect("and its instance");
    admin
        .generate_client_certificate(alloydb::GenerateClientCertificateRequest {
            parent: name.clone(),
            public_key: key.public_key_pem(),
            ..Default::default()
        })
        .await
        .expect("and its CA");
    let store = SqliteStore::open(&s.data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let alloydb_issued = store
        .list_issuances(&ca_owner("alloydb.Cluster", &name))
        .await
        .unwrap();
    assert_eq!(
        alloydb_issued.len(),
        2,
        "both AlloyDB issuance records kept"
    );
    s.stop().await;
}

/// What google-auth sends to the token endpoint, signed with the key file.
async fn list_as(s: &TestServer, token: &str) -> Result<(), tonic::Status> {
    alloydb_client(s, token)
        .await
        .list_clusters(alloydb::ListClustersRequest {
            parent: LOC.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_deleted_service_account_comes_back_with_nothing() {
    let s = TestServer::start().await;
    let (account, key_file) = account_with_key(&s, PROJECT, "robot-one").await;
    let member = format!("serviceAccount:{}", account.email);
    grant(&s, &member, "roles/alloydb.viewer").await;
    let old_token = access_token(token_for(&s, &key_file, json!({})).await);
    list_as(&s, &old_token).await.expect("bound account lists");

    let mut c = iam::iam_client::IamClient::with_interceptor(s.channel().await, s.auth());
    c.delete_service_account(iam::DeleteServiceAccountRequest {
        name: account.name.clone(),
    })
    .await
    .unwrap();
    let retired = format!(
        "deleted:serviceAccount:{}?uid={}",
        account.email, account.unique_id
    );
    let now_members = members(&s).await;
    assert!(now_members.contains(&retired), "{now_members:?}");
    assert!(!now_members.contains(&member), "{now_members:?}");

    // Same id again: a new unique id, no grants, and the old token does not come back to life.
    let (again, key_file2) = account_with_key(&s, PROJECT, "robot-one").await;
    assert_eq!(again.email, account.email);
    assert_ne!(again.unique_id, account.unique_id);
    let err = list_as(&s, &old_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let new_token = access_token(token_for(&s, &key_file2, json!({})).await);
    assert_eq!(
        list_as(&s, &new_token).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // The old key is gone with the old account.
    assert_eq!(token_for(&s, &key_file, json!({})).await.0, 400);

    // Disabled accounts and keys authenticate nothing until enabled again.
    grant(&s, &member, "roles/alloydb.viewer").await;
    list_as(&s, &new_token).await.expect("granted again");
    c.disable_service_account(iam::DisableServiceAccountRequest {
        name: again.name.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        list_as(&s, &new_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(token_for(&s, &key_file2, json!({})).await.0, 400);
    c.enable_service_account(iam::EnableServiceAccountRequest {
        name: again.name.clone(),
    })
    .await
    .unwrap();
    list_as(&s, &new_token).await.expect("enabled again");
    let key_name = format!(
        "{}/keys/{}",
        again.name,
        key_file2["private_key_id"].as_str().unwrap()
    );
    // Over REST, as gcloud sends it.
    let resp = http()
        .post(s.url(&format!("/iam/v1/{key_name}:disable")))
        .bearer_auth(&s.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    let (status, body) = token_for(&s, &key_file2, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    c.enable_service_account_key(iam::EnableServiceAccountKeyRequest { name: key_name })
        .await
        .unwrap();
    assert_eq!(token_for(&s, &key_file2, json!({})).await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn user_tokens_expire_and_can_be_revoked() {
    let s = TestServer::start().await;
    grant(&s, "user:temp", "roles/alloydb.viewer").await;
    grant(&s, "user:kept", "roles/alloydb.viewer").await;
    // Expiry has whole-second resolution: two seconds leave at least one for the first use.
    let temp = user(&s, "temp", Some(2)).await;
    let kept = user(&s, "kept", None).await;
    list_as(&s, &temp).await.expect("fresh token works");
    list_as(&s, &kept)
        .await
        .expect("token without expiry works");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        list_as(&s, &temp).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    clustercred::cli::iam(IamCommand::RevokeTokens {
        dir: DataDir {
            data_dir: s.data_dir.clone(),
            database: None,
        },
        id: "kept".into(),
    })
    .await
    .unwrap();
    // The CLI wrote to the database beside the server: the server's caches see it within their staleness
    // bound (--cache-staleness-ms, 1 s by default), never later.
    let revoked_at = std::time::Instant::now();
    let code = loop {
        let code = list_as(&s, &kept).await.err().map(|e| e.code());
        if code.is_some() || revoked_at.elapsed() > Duration::from_millis(1500) {
            break code;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(Code::Unauthenticated));
    s.stop().await;
}

#[tokio::test]
async fn tokens_act_only_as_their_kind_and_within_their_scope() {
    let s = TestServer::start().await;
    let (account, key_file) = account_with_key(&s, PROJECT, "robot-two").await;
    grant(
        &s,
        &format!("serviceAccount:{}", account.email),
        "roles/alloydb.viewer",
    )
    .await;
    // An ID token for some service is not an access token here.
    let (status, body) = token_for(
        &s,
        &key_file,
        json!({"target_audience": "https://service.example/"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().unwrap();
    assert_eq!(
        list_as(&s, id_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Nor are ID tokens minted for clustercred's own APIs or another project's pool.
    for audience in [
        "https://alloydb.googleapis.com/",
        s.url("").as_str(),
        "other.svc.id.goog",
    ] {
        let (status, body) = token_for(&s, &key_file, json!({"target_audience": audience})).await;
        assert_eq!(status, 400, "{audience}: {body}");
    }
    // An access token whose scope does not cover the API acts nowhere, as Google answers it.
    let narrow = access_token(
        token_for(
            &s,
            &key_file,
            json!({"scope": "https://www.googleapis.com/auth/userinfo.email"}),
        )
        .await,
    );
    let err = list_as(&s, &narrow).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.get_details_error_info().map(|i| i.reason),
        Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT".to_string())
    );
    let resp = http()
        .get(s.url(&format!("/alloydb/v1/{LOC}/clusters")))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["details"][0]["reason"], "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "{body}"
    );
    let full = access_token(token_for(&s, &key_file, json!({})).await);
    list_as(&s, &full)
        .await
        .expect("cloud-platform covers AlloyDB");
    s.stop().await;
}

/// One flood request of each kind an anonymous caller can send, by number.
async fn flood_request(client: &reqwest::Client, base: &str, i: usize) -> u16 {
    let request = match i % 4 {
        0 => client.get(format!("{base}/alloydb/v1/{LOC}/clusters")),
        1 => client
            .get(format!("{base}/alloydb/v1/{LOC}/clusters"))
            .bearer_auth(format!("forged-{i}")),
        2 => client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type={JWT_BEARER}&assertion=eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
            )),
        _ => client
            .post(format!(
                "{base}/gkemulticloud/v1/{LOC}/attachedClusters/a{}:generateAttachedClusterAgentToken",
                i % 7
            ))
            .json(&json!({
                "subjectToken": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln",
                "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
                "version": "1.0.0",
            })),
    };
    match request.send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn issue(client: &reqwest::Client, s: &TestServer, pem: &str) -> Duration {
    let started = Instant::now();
    let resp = client
        .post(s.url(&format!(
            "/alloydb/v1/{LOC}/clusters/c1:generateClientCertificate"
        )))
        .bearer_auth(&s.token)
        .json(&json!({"publicKey": pem, "certDuration": "3600s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn an_anonymous_flood_is_bounded_and_does_not_starve_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.audit_aggregate_secs = 1;
    config.anonymous_rate = 50.0;
    config.anonymous_burst = 50.0;
    config.failures_per_address = 20.0;
    config.failure_burst_per_address = 50.0;
    let s = TestServer::start_with(config).await;
    let mut admin = alloydb_client(&s, &s.token).await;
    admin
        .create_cluster(alloydb::CreateClusterRequest {
            parent: LOC.into(),
            cluster_id: "c1".into(),
            cluster: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The valid caller comes from another address than the flood.
    let valid = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let pem = p256().public_key_pem();
    let mut quiet = Vec::new();
    for _ in 0..15 {
        quiet.push(issue(&valid, &s, &pem).await);
    }
    let store = SqliteStore::open(&s.data_dir.join("clustercred.db"))
        .await
        .unwrap();
    let since = ::time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let db = s.data_dir.join("clustercred.db");
    let size = |p: &std::path::Path| {
        let wal = p.with_extension("db-wal");
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    };
    let size_before = size(&db);

    const FLOOD: usize = 4000;
    let base = s.url("");
    let flooder = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (client, base, next) = (flooder.clone(), base.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= FLOOD {
                    return codes;
                }
                codes.push(flood_request(&client, &base, i).await);
            }
        }));
    }
    let mut loaded = Vec::new();
    while next.load(std::sync::atomic::Ordering::Relaxed) < FLOOD && loaded.len() < 200 {
        loaded.push(issue(&valid, &s, &pem).await);
    }
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        for code in w.await.unwrap() {
            *codes.entry(code).or_default() += 1;
        }
    }
    // Every flood request was refused cleanly: no success, no server error, no dropped connection.
    for code in codes.keys() {
        assert!(
            [400, 401, 429].contains(code),
            "unexpected status {code}: {codes:?}"
        );
    }
    assert!(codes.get(&429).copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(!loaded.is_empty());

    // The refusals are in the log, counted, in a bounded number of events.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = store
        .list_audit(&AuditFilter {
            since_unix_nanos: Some(since),
            ..Default::default()
        })
        .await
        .unwrap();
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.event.principal == "anonymous")
        .collect();
    let counted: u64 = refusals.iter().map(|e| audit_count(&e.event)).sum();
    assert_eq!(counted, FLOOD as u64, "every refused request is counted");
    assert!(
        refusals.len() <= 200,
        "{} audit events for {FLOOD} refusals",
        refusals.len()
    );
    let grown = size(&db).saturating_sub(size_before);
    println!(
        "flood: {FLOOD} requests, statuses {codes:?}; {} refusal events; database grew {grown} bytes; \
         issuance median quiet {:?}, under flood {:?} ({} calls)",
        refusals.len(),
        median(quiet),
        median(loaded.clone()),
        loaded.len()
    );
    s.stop().await;
}
