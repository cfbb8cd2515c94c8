//! The AlloyDB instance endpoint, driven from outside: TLS 1.3 with a client certificate from the cluster's
//! CA, the metadata exchange as the certificate was asked for, PostgreSQL behind it; and every refusal
//! (another cluster's CA, expired, revoked, none, a malformed or oversized exchange) closes the connection
//! before anything reaches PostgreSQL. Needs PostgreSQL (`CLUSTERCRED_TEST_POSTGRES`, as scripts/test sets).

mod common;

use std::net::IpAddr;

use clustercred::ServeConfig;
use clustercred_proto::google::cloud::alloydb::connectors::v1::{
    MetadataExchangeRequest, MetadataExchangeResponse, metadata_exchange_response::ResponseCode,
};
use common::alloydb::{
    ClientCert, Tls, client_certificate, create_cluster, create_instance, first_address, frame,
    read_reply, startup,
};
use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOC: &str = "projects/p/locations/l";

fn postgres() -> String {
    std::env::var("CLUSTERCRED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Setup {
    s: TestServer,
    ip: IpAddr,
    ca_pem: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.keep());
    config.alloydb_backend = Some(postgres());
    config.alloydb_first_address = first_address();
    let s = TestServer::start_with(config).await;
    for cluster in ["c1", "c2"] {
        create_cluster(&s.url(""), &s.token, LOC, cluster).await;
    }
    let ip = create_instance(
        &s.url(""),
        &s.token,
        &format!("{LOC}/clusters/c1"),
        "i1",
        serde_json::json!({}),
    )
    .await;
    let info: serde_json::Value = http()
        .get(s.url(&format!(
            "/alloydb/v1/{LOC}/clusters/c1/instances/i1/connectionInfo"
        )))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["ipAddress"], ip.to_string());
    let mut setup = Setup {
        s,
        ip,
        ca_pem: String::new(),
    };
    let (_, ca_pem) = certificate(&setup, "c1", true).await;
    setup.ca_pem = ca_pem;
    setup
}

/// A client certificate of `cluster` for a fresh key: (chain PEM + key, CA PEM).
async fn certificate(t: &Setup, cluster: &str, mdx: bool) -> (ClientCert, String) {
    client_certificate(
        &t.s.url(""),
        &t.s.token,
        &format!("{LOC}/clusters/{cluster}"),
        mdx,
    )
    .await
}

/// Dials the instance as the connectors do: TLS 1.3, trusting only the cluster CA, checking the IP SAN.
async fn dial(t: &Setup, client: Option<&ClientCert>) -> std::io::Result<Tls> {
    common::alloydb::dial(t.ip, &t.ca_pem, client).await
}

/// Everything the server sends until it closes (a TLS alert or reset reads as the end too).
async fn rest(tls: &mut Tls) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server neither answered nor closed"),
        }
    }
}

/// Logs in as `postgres` (trust auth on the test server), expects AuthenticationOk from PostgreSQL, then
/// ends the session with Terminate and reads to the end.
async fn login_reaches_postgres(mut tls: Tls) {
    tls.write_all(&startup("postgres", "test")).await.unwrap();
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(
        head,
        [b'R', 0, 0, 0, 8, 0, 0, 0, 0],
        "AuthenticationOk from PostgreSQL"
    );
    tls.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    rest(&mut tls).await;
}

async fn mdx_reply(tls: &mut Tls) -> MetadataExchangeResponse {
    read_reply(tls).await
}

async fn wait_for_endpoint(t: &Setup) {
    common::alloydb::wait_for_endpoint(t.ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_reach_postgres_and_every_refusal_closes_first() {
    let t = setup().await;
    wait_for_endpoint(&t).await;

    // With the metadata exchange: the six-byte OK, then PostgreSQL.
    let (with_mdx, _) = certificate(&t, "c1", true).await;
    let mut tls = dial(&t, Some(&with_mdx)).await.unwrap();
    let request = MetadataExchangeRequest {
        user_agent: "test".into(),
        auth_type: 1,
        oauth2_token: "ignored for DB_NATIVE".into(),
    };
    tls.write_all(&frame(&request.encode_to_vec()))
        .await
        .unwrap();
    let mut ok = [0u8; 6];
    tls.read_exact(&mut ok).await.unwrap();
    assert_eq!(ok, [0, 0, 0, 2, 8, 1]);
    login_reaches_postgres(tls).await;

    // Without it (asyncpg's way): PostgreSQL right after the handshake.
    let (plain, _) = certificate(&t, "c1", false).await;
    let tls = dial(&t, Some(&plain)).await.unwrap();
    login_reaches_postgres(tls).await;

    // A malformed exchange and an oversized one: an ERROR reply, then the end.
    for bad in [
        frame(&[0xff, 0xff, 0xff]),
        (1u32 << 20).to_be_bytes().to_vec(),
    ] {
        let mut tls = dial(&t, Some(&with_mdx)).await.unwrap();
        tls.write_all(&bad).await.unwrap();
        let reply = mdx_reply(&mut tls).await;
        assert_eq!(reply.response_code, ResponseCode::Error as i32);
        assert!(!reply.error.is_empty());
        assert_eq!(rest(&mut tls).await, b"", "closed after the error");
    }

    // Another cluster's certificate, and none at all: the handshake fails; PostgreSQL never hears a byte.
    let (other, _) = certificate(&t, "c2", false).await;
    for client in [Some(&other), None] {
        if let Ok(mut tls) = dial(&t, client).await {
            let _ = tls.write_all(&startup("postgres", "test")).await;
            assert_eq!(rest(&mut tls).await, b"", "nothing from PostgreSQL");
        }
    }

    // An expired certificate of the right CA (signed here with the cluster's own key, an hour too old).
    let expired = {
        let master = clustercred::bootstrap::master_key(&t.s.data_dir, None).unwrap();
        let store = clustercred::database::open(
            &t.s.data_dir,
            None,
            false,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        let owner = clustercred_store::ca_owner("alloydb.Cluster", &format!("{LOC}/clusters/c1"));
        let record = store.get_ca(&owner).await.unwrap().unwrap();
        let key = master
            .open(
                &record.key_der,
                &clustercred_api::context::ca_key_context(&owner),
            )
            .unwrap();
        let ca = clustercred_authority::ClusterCa::from_material(&record.cert_pem, &key).unwrap();
        let client_key = p256();
        let public =
            clustercred_authority::ClientPublicKey::from_pem(&client_key.public_key_pem()).unwrap();
        let issued = ca
            .issue_client_certificate(
                &clustercred_authority::LeafRequest {
                    public_key: &public,
                    subject_common_name: "admin",
                    subject_organization: None,
                    lifetime: time::Duration::hours(1),
                },
                time::OffsetDateTime::now_utc() - time::Duration::hours(3),
            )
            .unwrap();
        (
            format!("{}{}", issued.cert_pem, record.cert_pem),
            client_key,
        )
    };
    if let Ok(mut tls) = dial(&t, Some(&expired)).await {
        let _ = tls.write_all(&startup("postgres", "test")).await;
        assert_eq!(
            rest(&mut tls).await,
            b"",
            "an expired certificate gets nothing"
        );
    }

    // Revoked through the CLI: the next connection is closed before PostgreSQL.
    let serial = {
        let der = parse_cert(&plain.0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        hex::encode(cert.raw_serial())
    };
    clustercred::cli::alloydb(clustercred::cli::AlloydbCommand::RevokeCertificate {
        dir: clustercred::cli::DataDir {
            data_dir: t.s.data_dir.clone(),
            database: None,
        },
        cluster: format!("{LOC}/clusters/c1"),
        serial: Some(serial.clone()),
        principal: None,
    })
    .await
    .unwrap();
    let mut tls = dial(&t, Some(&plain)).await.unwrap();
    let _ = tls.write_all(&startup("postgres", "test")).await;
    assert_eq!(
        rest(&mut tls).await,
        b"",
        "a revoked certificate gets nothing"
    );
    // The certificate with the metadata exchange is untouched by that revocation.
    let mut tls = dial(&t, Some(&with_mdx)).await.unwrap();
    tls.write_all(&frame(&request.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(
        mdx_reply(&mut tls).await.response_code,
        ResponseCode::Ok as i32
    );
    login_reaches_postgres(tls).await;

    // The connections are audited: sessions and the refusal of the revoked certificate.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let store = clustercred::database::open(
        &t.s.data_dir,
        None,
        false,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let events = store
        .list_audit(&clustercred_store::AuditFilter::default())
        .await
        .unwrap();
    let connects: Vec<_> = events
        .iter()
        .filter(|e| e.event.method == "alloydb.instances.connect")
        .collect();
    assert!(
        connects.iter().any(|e| e.event.outcome == "ok"
            && e.event
                .detail
                .contains("auth DB_NATIVE user postgres database test")),
        "{connects:#?}"
    );
    assert!(
        connects.iter().any(|e| e.event.outcome == "denied"
            && e.event.detail.contains(&serial)
            && e.event.detail.contains("revoked")),
        "{connects:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event.method == "cli/alloydb-revoke-certificate")
    );

    // Deleting the instance closes its endpoint.
    let r = http()
        .delete(t.s.url(&format!("/alloydb/v1/{LOC}/clusters/c1/instances/i1")))
        .bearer_auth(&t.s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect((t.ip, 5433)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(closed, "the endpoint of a deleted instance stops listening");
    t.s.stop().await;
}

/// `clustercred alloydb proxy` in front of the instance: psql (which asks for SSL first, declined locally)
/// runs a query through the proxy, the endpoint's mTLS and metadata exchange, into PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_carries_psql_to_the_instance() {
    let t = setup().await;
    wait_for_endpoint(&t).await;
    let token_file = t.s.data_dir.join("proxy.token");
    std::fs::write(&token_file, &t.s.token).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let proxy = tokio::spawn(clustercred::proxy::run(
        clustercred::proxy::ProxyArgs {
            instance: format!("{LOC}/clusters/c1/instances/i1"),
            address: [127, 0, 0, 1].into(),
            port: 0,
            api: format!("http://{}", t.s.addr),
            token_file: Some(token_file),
            api_ca_file: None,
            auto_iam_authn: false,
            instance_port: 5433,
        },
        Some(tx),
    ));
    let local = rx.await.expect("the proxy listens");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=test sslmode=prefer",
                local.port()
            ))
            .args(["-tAc", "SELECT 40 + 2, current_user"])
            .output()
            .expect("psql runs (the PostgreSQL client is a test requirement)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42|postgres");
    proxy.abort();
    t.s.stop().await;
}

/// A session open when the server shuts down is closed cleanly: TLS close_notify (a clean end of stream, not
/// an abrupt one), and the server's stop completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_sessions_with_close_notify() {
    let t = setup().await;
    wait_for_endpoint(&t).await;
    let (plain, _) = certificate(&t, "c1", false).await;
    let mut tls = dial(&t, Some(&plain)).await.unwrap();
    tls.write_all(&startup("postgres", "test")).await.unwrap();
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R');
    // Drain what PostgreSQL sends after the login (parameters, ReadyForQuery) before the stop.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(t.s.stop());
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), tls.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => break Err(e),
            Err(_) => panic!("the session stayed open through the shutdown"),
        }
    };
    assert!(end.is_ok(), "a clean close_notify, not {end:?}");
    tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .expect("the server stops")
        .unwrap();
}

/// The server certificate names every address handed out (and the PSC DNS name where one is configured),
/// and an instance takes at most --alloydb-max-connections at once: the next one is closed unanswered until
/// a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_names_and_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.keep());
    config.alloydb_backend = Some(postgres());
    config.alloydb_max_connections = 1;
    config.alloydb_first_address = first_address();
    let s = TestServer::start_with(config).await;
    create_cluster(&s.url(""), &s.token, LOC, "c1").await;
    let ip = create_instance(
        &s.url(""),
        &s.token,
        &format!("{LOC}/clusters/c1"),
        "psc",
        serde_json::json!({"pscInstanceConfig": {"pscDnsName": "psc1.c1.example.internal."}}),
    )
    .await;
    let mut t = Setup {
        s,
        ip,
        ca_pem: String::new(),
    };
    wait_for_endpoint(&t).await;
    let (client, ca) = certificate(&t, "c1", false).await;
    t.ca_pem = ca;

    let mut first = dial(&t, Some(&client)).await.unwrap();
    let (_, conn) = first.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let IpAddr::V4(v4) = ip else {
        panic!("IPv4 by default")
    };
    assert!(
        sans.iter().any(
            |n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(b) if *b == v4.octets())
        ),
        "{sans:?}"
    );
    assert!(
        sans.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::DNSName("psc1.c1.example.internal")
        )),
        "{sans:?}"
    );

    // The one slot is taken: the next connection is closed before any TLS.
    let second = dial(&t, Some(&client)).await;
    assert!(
        second.is_err(),
        "a second connection over the limit is refused"
    );
    // Once the first ends, a new one gets through.
    first.write_all(&startup("postgres", "test")).await.unwrap();
    let mut head = [0u8; 9];
    first.read_exact(&mut head).await.unwrap();
    first.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    rest(&mut first).await;
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        if let Ok(tls) = dial(&t, Some(&client)).await {
            login_reaches_postgres(tls).await;
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed slot admits the next connection");
    t.s.stop().await;
}

/// A flood of connections without a certificate costs no audit write apiece: the refusals are counted into
/// aggregated events (written at once for the first, then per window and at shutdown), and the count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_counted_not_written_one_by_one() {
    let t = setup().await;
    wait_for_endpoint(&t).await;
    let audit_rows = || async {
        let store = clustercred::database::open(
            &t.s.data_dir,
            None,
            false,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        store
            .list_audit(&clustercred_store::AuditFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.event.method == "alloydb.instances.connect" && e.event.status == "UNAUTHENTICATED"
            })
            .map(|e| e.event.count)
            .collect::<Vec<u64>>()
    };
    let before = audit_rows().await.len();
    const FLOOD: usize = 150;
    for _ in 0..FLOOD {
        // TLS without a client certificate: the handshake fails at the server.
        if let Ok(mut tls) = dial(&t, None).await {
            let _ = tls.write_all(b"x").await;
            let _ = rest(&mut tls).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let during = audit_rows().await;
    assert!(
        during.len() <= before + 1,
        "{} audit rows for {FLOOD} refused handshakes",
        during.len() - before
    );
    let data_dir = t.s.data_dir.clone();
    t.s.stop().await;
    let store =
        clustercred::database::open(&data_dir, None, false, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let counted: u64 = store
        .list_audit(&clustercred_store::AuditFilter::default())
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            e.event.method == "alloydb.instances.connect" && e.event.status == "UNAUTHENTICATED"
        })
        .map(|e| e.event.count)
        .sum();
    assert!(counted >= FLOOD as u64, "every refusal counted: {counted}");
}
