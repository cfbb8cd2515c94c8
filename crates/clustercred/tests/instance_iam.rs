//! IAM database authentication at the AlloyDB instance endpoint, driven from outside against a PostgreSQL
//! of the test's own with TLS and `cert` authentication: a service account with an IAM database user logs
//! in with its access token (AUTO_IAM in the metadata exchange, or the token as the password without it),
//! the backend sees the mapped role through a client certificate from clustercred's backend CA; a principal
//! without the permission, a token for another user, and a wrong password are refused before PostgreSQL.

mod common;

use std::net::IpAddr;
use std::path::Path;

use clustercred::ServeConfig;
use clustercred_proto::google::cloud::alloydb::connectors::v1::{
    MetadataExchangeRequest, MetadataExchangeResponse, metadata_exchange_response::ResponseCode,
};
use common::alloydb::{
    ClientCert, Tls, client_certificate, create_cluster, create_instance, first_address, frame,
    read_reply, wait_for_endpoint,
};
use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROJECT: &str = "iamdb";
const LOC: &str = "projects/iamdb/locations/l";

/// A CA for the backend's own server certificate, and that certificate for 127.0.0.1.
fn backend_server_cert() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test backend server CA");
    let ca_key = p256();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let key = p256();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

struct Setup {
    s: TestServer,
    _pg: PgCluster,
    ip: IpAddr,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn setup() -> Setup {
    let (server_ca, server_cert, server_key) = backend_server_cert();
    let pg = PgCluster::new_with(|data| {
        std::fs::write(data.join("server.crt"), &server_cert).unwrap();
        write_private(&data.join("server.key"), &server_key);
        // Replaced by clustercred's backend client CA once the server has made it (then reloaded).
        std::fs::write(data.join("clients.crt"), &server_ca).unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'clients.crt'\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        // The administrator by trust (what clustercred manages roles with), everyone else by certificate.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap().keep();
    let root = dir.join("backend-server-ca.pem");
    std::fs::write(&root, &server_ca).unwrap();
    let mut config = ServeConfig::for_data_dir(dir.join("data"));
    config.alloydb_backend = Some(format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslrootcert={}",
        pg.port,
        root.display()
    ));
    config.alloydb_first_address = first_address();
    let s = TestServer::start_with(config).await;

    // The operator's step: the backend trusts clustercred's backend client CA.
    let ca_file = s.data_dir.join("alloydb-backend-ca.pem");
    for _ in 0..100 {
        if ca_file.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let backend_ca = std::fs::read_to_string(&ca_file).expect("the server writes its backend CA");
    let clients = Path::new(&pg.data()).join("clients.crt");
    std::fs::write(&clients, backend_ca).unwrap();
    pg.reload();

    create_cluster(&s.url(""), &s.token, LOC, "c1").await;
    let ip = create_instance(
        &s.url(""),
        &s.token,
        &format!("{LOC}/clusters/c1"),
        "i1",
        serde_json::json!({}),
    )
    .await;
    wait_for_endpoint(ip).await;
    Setup { s, _pg: pg, ip }
}

/// A service account with a token; with `login` it gets the client and database-user roles and an IAM
/// database user (created through the Users API, so the role exists in PostgreSQL).
async fn account(t: &Setup, id: &str, login: bool) -> (String, String) {
    let (account, key) = account_with_key(&t.s, PROJECT, id).await;
    let token = access_token(token_for(&t.s, &key, serde_json::json!({})).await);
    let member = format!("serviceAccount:{}", account.email);
    add_binding(&t.s, PROJECT, &member, "roles/alloydb.client")
        .await
        .unwrap();
    let user = account
        .email
        .strip_suffix(".clustercred.internal")
        .unwrap()
        .to_string();
    if login {
        add_binding(&t.s, PROJECT, &member, "roles/alloydb.databaseUser")
            .await
            .unwrap();
        let r = http()
            .post(t.s.url(&format!(
                "/alloydb/v1/{LOC}/clusters/c1/users?userId={}",
                percent(&user)
            )))
            .bearer_auth(&t.s.token)
            .json(&serde_json::json!({"userType": "ALLOYDB_IAM_USER"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    (token, user)
}

fn percent(s: &str) -> String {
    s.replace('@', "%40")
}

/// A client certificate for a fresh key, asked for with `token`: (chain, key) and the CA.
async fn certificate(t: &Setup, token: &str, mdx: bool) -> (ClientCert, String) {
    client_certificate(&t.s.url(""), token, &format!("{LOC}/clusters/c1"), mdx).await
}

async fn dial(t: &Setup, ca_pem: &str, client: &ClientCert) -> Tls {
    common::alloydb::dial(t.ip, ca_pem, Some(client))
        .await
        .unwrap()
}

async fn exchange(tls: &mut Tls, auth_type: i32, token: &str) -> MetadataExchangeResponse {
    let body = MetadataExchangeRequest {
        user_agent: "test".into(),
        auth_type,
        oauth2_token: token.into(),
    }
    .encode_to_vec();
    tls.write_all(&frame(&body)).await.unwrap();
    read_reply(tls).await
}

fn startup(user: &str) -> Vec<u8> {
    common::alloydb::startup(user, "postgres")
}

/// One backend message: (type, body); None at the end of the stream.
async fn message(tls: &mut Tls) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    tls.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    tls.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

/// After the startup: AuthenticationOk, then `SELECT current_user` answers `user`.
async fn logged_in_as(tls: &mut Tls, user: &str) {
    let (kind, body) = message(tls).await.expect("an answer from PostgreSQL");
    assert_eq!(
        (kind, body.as_slice()),
        (b'R', &[0u8, 0, 0, 0][..]),
        "AuthenticationOk: {}",
        String::from_utf8_lossy(&body)
    );
    loop {
        let (kind, _) = message(tls).await.unwrap();
        if kind == b'Z' {
            break;
        }
    }
    let sql = b"SELECT current_user\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    q.extend_from_slice(sql);
    tls.write_all(&q).await.unwrap();
    let mut seen = None;
    loop {
        let (kind, body) = message(tls).await.unwrap();
        match kind {
            b'D' => seen = Some(String::from_utf8_lossy(&body[6..]).to_string()),
            b'Z' => break,
            b'E' => panic!("query failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert_eq!(seen.as_deref(), Some(user));
    tls.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
}

/// The FATAL error the endpoint answers with, then the end.
async fn refused(tls: &mut Tls, code: &str) -> String {
    let (kind, body) = message(tls).await.expect("an error response");
    assert_eq!(kind, b'E');
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(text.contains(&format!("C{code}\0")), "{text}");
    assert!(message(tls).await.is_none(), "closed after the error");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_users_log_in_with_their_token_and_nobody_else_does() {
    let t = setup().await;
    let (token, user) = account(&t, "dbuser", true).await;
    assert_eq!(user, format!("dbuser@{PROJECT}.iam"));

    // AUTO_IAM in the metadata exchange (pg8000's way, and the Go connector's with WithIAMAuthN).
    let (cert, ca) = certificate(&t, &token, true).await;
    let mut tls = dial(&t, &ca, &cert).await;
    let reply = exchange(&mut tls, 2, &token).await;
    assert_eq!(
        reply.response_code,
        ResponseCode::Ok as i32,
        "{}",
        reply.error
    );
    tls.write_all(&startup(&user)).await.unwrap();
    logged_in_as(&mut tls, &user).await;

    // The token as the password when the certificate was asked for without the exchange (asyncpg's way).
    let (plain, _) = certificate(&t, &token, false).await;
    let mut tls = dial(&t, &ca, &plain).await;
    tls.write_all(&startup(&user)).await.unwrap();
    let (kind, body) = message(&mut tls).await.unwrap();
    assert_eq!(
        (kind, body),
        (b'R', vec![0, 0, 0, 3]),
        "asked for a clear-text password"
    );
    let mut password = vec![b'p'];
    password.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
    password.extend_from_slice(token.as_bytes());
    password.push(0);
    tls.write_all(&password).await.unwrap();
    logged_in_as(&mut tls, &user).await;

    // A wrong password for the IAM user: refused, nothing relayed.
    let mut tls = dial(&t, &ca, &plain).await;
    tls.write_all(&startup(&user)).await.unwrap();
    message(&mut tls).await.unwrap();
    tls.write_all(&[b'p', 0, 0, 0, 10, b'n', b'o', b'p', b'e', b'!', 0])
        .await
        .unwrap();
    refused(&mut tls, "28P01").await;

    // AUTO_IAM, then a startup for somebody else: refused.
    let mut tls = dial(&t, &ca, &cert).await;
    assert_eq!(
        exchange(&mut tls, 2, &token).await.response_code,
        ResponseCode::Ok as i32
    );
    tls.write_all(&startup("postgres")).await.unwrap();
    let text = refused(&mut tls, "28000").await;
    // Refused by the endpoint itself, not left to the backend's certificate check.
    assert!(text.contains(&format!("logs in as \"{user}\"")), "{text}");

    // A principal with a certificate but without alloydb.users.login: ERROR in the exchange.
    let (outsider_token, _) = account(&t, "outsider", false).await;
    let (outsider_cert, _) = certificate(&t, &outsider_token, true).await;
    let mut tls = dial(&t, &ca, &outsider_cert).await;
    let reply = exchange(&mut tls, 2, &outsider_token).await;
    assert_eq!(reply.response_code, ResponseCode::Error as i32);
    assert!(
        reply.error.contains("alloydb.users.login"),
        "{}",
        reply.error
    );
    assert!(message(&mut tls).await.is_none(), "closed after the error");

    // An invalid token: ERROR in the exchange.
    let mut tls = dial(&t, &ca, &cert).await;
    let reply = exchange(&mut tls, 2, "not-a-token").await;
    assert_eq!(reply.response_code, ResponseCode::Error as i32);

    // Without IAM, the IAM user cannot log in by the database's own means (the backend demands a
    // certificate clustercred only presents for IAM logins).
    let mut tls = dial(&t, &ca, &cert).await;
    assert_eq!(
        exchange(&mut tls, 1, &token).await.response_code,
        ResponseCode::Ok as i32
    );
    tls.write_all(&startup(&user)).await.unwrap();
    let (kind, _) = message(&mut tls).await.unwrap();
    assert_eq!(
        kind, b'E',
        "PostgreSQL refuses the IAM user without a certificate"
    );
    t.s.stop().await;
}
