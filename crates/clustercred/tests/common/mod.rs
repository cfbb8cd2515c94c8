//! A real server on an ephemeral port with a temporary data directory, and clients for it.
#![allow(dead_code)]

pub mod alloydb;
pub mod pg_cluster;
#[allow(unused_imports)]
pub use pg_cluster::PgCluster;

use std::net::SocketAddr;
use std::path::PathBuf;

use clustercred::{ServeConfig, Server};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::start_in(dir.path().to_path_buf()).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_in(data_dir: PathBuf) -> TestServer {
        TestServer::start_with(ServeConfig::for_data_dir(data_dir)).await
    }

    pub async fn start_with(config: ServeConfig) -> TestServer {
        TestServer::start_with_ctx(config).await.0
    }

    /// Like `start_with`, also handing out the server's shared context (for checks made beside the API).
    pub async fn start_with_ctx(
        config: ServeConfig,
    ) -> (TestServer, std::sync::Arc<clustercred_api::Ctx>) {
        let data_dir = config.data_dir.clone();
        let server = Server::bind(&config).await.expect("server binds");
        let ctx = server.ctx();
        let addr = server.addr;
        // A replica on a shared database whose peer created the administrator has no token file of its own.
        let token = std::fs::read_to_string(&server.admin_token_path).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        (
            TestServer {
                addr,
                token,
                data_dir,
                _dir: None,
                stop: Some(tx),
                task: Some(task),
            },
            ctx,
        )
    }

    /// Stops the server and waits for it to release the database.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
        self._dir.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connects")
    }

    pub fn auth(&self) -> Auth {
        Auth(Some(format!("Bearer {}", self.token)))
    }
}

#[derive(Clone)]
pub struct Auth(pub Option<String>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(v.as_str()).expect("ascii"),
            );
        }
        Ok(req)
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A P-256 key pair: (PKCS#8 DER, SPKI PEM, uncompressed point).
pub fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen")
}

pub fn parse_cert(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("PEM").into_contents()
}

/// How many calls an audit event stands for (aggregated refusals carry a count).
pub fn audit_count(e: &clustercred_store::AuditEvent) -> u64 {
    e.count
}

/// Adds `member` to `role` in the policy of `projects/{project}`, as the administrator, through Resource Manager.
pub async fn add_binding(
    s: &TestServer,
    project: &str,
    member: &str,
    role: &str,
) -> Result<(), tonic::Status> {
    use clustercred_proto::google::cloudresourcemanager::v1::projects_client::ProjectsClient;
    use clustercred_proto::google::iam::v1::{Binding, GetIamPolicyRequest, SetIamPolicyRequest};
    let mut projects = ProjectsClient::with_interceptor(s.channel().await, s.auth());
    let resource = format!("projects/{project}");
    let mut policy = projects
        .get_iam_policy(GetIamPolicyRequest {
            resource: resource.clone(),
            options: None,
        })
        .await?
        .into_inner();
    policy.bindings.push(Binding {
        role: role.into(),
        members: vec![member.into()],
        condition: None,
    });
    projects
        .set_iam_policy(SetIamPolicyRequest {
            resource,
            policy: Some(policy),
            update_mask: None,
        })
        .await
        .map(|_| ())
}

/// A JWT-bearer assertion signed with a service-account key file, exchanged at `/oauth2/token`.
pub async fn token_for(
    s: &TestServer,
    key_file: &serde_json::Value,
    extra: serde_json::Value,
) -> (u16, serde_json::Value) {
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let email = key_file["client_email"].as_str().unwrap();
    let mut claims = serde_json::json!({"iss": email, "aud": "https://oauth2.googleapis.com/token",
        "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now, "exp": now + 3600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key_file["private_key_id"].as_str().map(str::to_string);
    let pem = key_file["private_key"].as_str().unwrap();
    let assertion = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let resp = http()
        .post(s.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        ))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

pub async fn account_with_key(
    s: &TestServer,
    project: &str,
    id: &str,
) -> (
    clustercred_proto::google::iam::admin::v1::ServiceAccount,
    serde_json::Value,
) {
    let mut c = clustercred_proto::google::iam::admin::v1::iam_client::IamClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let account = c
        .create_service_account(
            clustercred_proto::google::iam::admin::v1::CreateServiceAccountRequest {
                name: format!("projects/{project}"),
                account_id: id.into(),
                service_account: Some(Default::default()),
            },
        )
        .await
        .unwrap()
        .into_inner();
    let key = c
        .create_service_account_key(
            clustercred_proto::google::iam::admin::v1::CreateServiceAccountKeyRequest {
                name: account.name.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    (
        account,
        serde_json::from_slice(&key.private_key_data).unwrap(),
    )
}

/// The access token of a successful `/oauth2/token` reply.
pub fn access_token(reply: (u16, serde_json::Value)) -> String {
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1["access_token"].as_str().unwrap().to_string()
}

/// A master key file (32 random bytes, base64, mode 0600) for servers that must share one.
pub fn master_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("master.key");
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Creates the AlloyDB cluster `{loc}/clusters/c1` over REST on the server at `base`; answers the HTTP status.
pub async fn create_cluster_c1(base: &str, token: &str, loc: &str) -> u16 {
    http()
        .post(format!("{base}/alloydb/v1/{loc}/clusters?clusterId=c1"))
        .bearer_auth(token)
        .json(&serde_json::json!({"network": "default"}))
        .send()
        .await
        .expect("create cluster")
        .status()
        .as_u16()
}

/// GenerateClientCertificate for `{loc}/clusters/c1` over REST on the server at `base` (with a request id when
/// given): the HTTP status and JSON body, or the transport error (a server that went away).
pub async fn issue_c1(
    base: &str,
    token: &str,
    loc: &str,
    key_pem: &str,
    request_id: Option<&str>,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let mut body = serde_json::json!({"publicKey": key_pem, "certDuration": "3600s"});
    if let Some(id) = request_id {
        body["requestId"] = id.into();
    }
    let resp = http()
        .post(format!(
            "{base}/alloydb/v1/{loc}/clusters/c1:generateClientCertificate"
        ))
        .bearer_auth(token)
        .json(&body)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

/// `GET /readyz`: status and body.
pub async fn readyz(s: &TestServer) -> (u16, String) {
    let resp = http().get(s.url("/readyz")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Takes the write lock of the server's SQLite database in `data_dir` on a connection of its own, as another
/// process would; it is held until [`unlock_database`].
pub async fn lock_database(data_dir: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("clustercred.db"));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Releases the lock [`lock_database`] took.
pub async fn unlock_database(mut conn: sqlx::SqliteConnection) {
    use sqlx::Connection;
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    let _ = conn.close().await;
}
