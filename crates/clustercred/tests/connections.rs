//! Connection limits: idle and slow-header connections neither starve real clients nor stay open, the
//! connection caps hold, and the request deadline covers the routes outside the REST gateway.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clustercred::ServeConfig;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOC: &str = "projects/test-project/locations/us-central1";

/// Upper bound on any wait here, so a server that never closes fails the test instead of hanging it. The
/// configured timeouts are a few seconds; this leaves room for a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

/// The server and the test share one process, so both ends of every connection count against its limit.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed {
            assert!(
                limit.rlim_max >= needed,
                "this test needs {needed} file descriptors; the hard limit is {}",
                limit.rlim_max
            );
            limit.rlim_cur = needed;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

fn config(dir: &tempfile::TempDir) -> ServeConfig {
    ServeConfig::for_data_dir(dir.path().to_path_buf())
}

/// Reads until the server closes the connection (EOF or reset); false if it is still open after `BOUND`.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// Sends a health check on a raw HTTP/1 connection; the answer's first line, or None if the server closed
/// the connection without answering.
async fn healthz(stream: &mut TcpStream) -> Option<String> {
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .is_err()
    {
        return None;
    }
    let mut buf = vec![0u8; 512];
    let n = match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => 0,
        Err(_) => panic!("no answer and no close within {BOUND:?}"),
    };
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

async fn real_clients_succeed(s: &TestServer) {
    let client = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    let resp = client.get(s.url("/healthz")).send().await.expect("healthz");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "ok\n");

    let resp = client
        .get(s.url(&format!("/alloydb/v1/{LOC}/clusters")))
        .bearer_auth(&s.token)
        .send()
        .await
        .expect("authenticated REST call");
    assert_eq!(resp.status().as_u16(), 200);

    let mut grpc = alloydb::alloy_db_admin_client::AlloyDbAdminClient::with_interceptor(
        s.channel().await,
        s.auth(),
    );
    let reply = tokio::time::timeout(
        BOUND,
        grpc.list_clusters(alloydb::ListClustersRequest {
            parent: LOC.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("gRPC answered in time")
    .expect("authenticated gRPC call");
    assert!(reply.into_inner().clusters.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_neither_stop_clients_nor_stay_open() {
    const IDLE: usize = 1000;
    const SLOW: usize = 20;
    const H2: usize = 5;
    raise_fd_limit(4096);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.header_read_timeout_secs = 2;
    cfg.idle_timeout_secs = 3;
    cfg.max_connections = 1500;
    // Every connection here comes from 127.0.0.1; the per-address cap has its own test.
    cfg.max_connections_per_address = 0;
    let s = TestServer::start_with(cfg).await;
    let addr = s.addr;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.expect("idle connection"));
    }
    // Slowloris: a request line and headers that never finish, one byte a second.
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let stream = TcpStream::connect(addr).await.expect("slow connection");
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = write
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                .await;
            for b in format!("X-Slow-{i}: {}", "a".repeat(60)).bytes() {
                if write.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::time::timeout(BOUND, read.read_to_end(&mut sink))
                .await
                .is_ok()
        });
        slow.push((reader, writer));
    }
    // HTTP/2 connections that send the preface and their SETTINGS, then no request.
    let mut h2 = Vec::new();
    for _ in 0..H2 {
        let mut stream = TcpStream::connect(addr).await.expect("h2 connection");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("h2 preface");
        h2.push(stream);
    }

    // With all of them open, real clients are served.
    real_clients_succeed(&s).await;

    // And the server closes every one of them by itself.
    let mut waits = tokio::task::JoinSet::new();
    for mut stream in idle.into_iter().chain(h2) {
        waits.spawn(async move { closed_by_server(&mut stream).await });
    }
    let mut writers = Vec::new();
    for (reader, writer) in slow {
        waits.spawn(async move { reader.await.unwrap_or(false) });
        writers.push(writer);
    }
    let mut still_open = 0;
    while let Some(closed) = waits.join_next().await {
        if !closed.expect("join") {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "idle, slow-header and idle HTTP/2 connections must be closed by the server"
    );
    for writer in writers {
        writer.abort();
    }

    // The server still answers afterwards.
    real_clients_succeed(&s).await;
    s.stop().await;
}

async fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // An answered request proves the server took this connection as one of its slots.
        assert_eq!(
            healthz(&mut stream).await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        held.push(stream);
    }
    held
}

/// Retries a fresh connection until it is served (a closed connection frees its slot asynchronously).
async fn served_after_a_slot_frees(addr: SocketAddr) {
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if healthz(&mut stream).await.as_deref() == Some("HTTP/1.1 200 OK") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection was served after a slot was freed");
}

#[tokio::test]
async fn connection_cap_closes_the_connection_beyond_it_and_frees_slots() {
    const CAP: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_connections = CAP;
    cfg.max_connections_per_address = 0;
    let s = TestServer::start_with(cfg).await;

    let mut held = hold(s.addr, CAP).await;
    let mut extra = TcpStream::connect(s.addr).await.expect("tcp connect");
    assert_eq!(
        healthz(&mut extra).await,
        None,
        "connection {} must be closed unanswered",
        CAP + 1
    );
    // The earlier connections are unaffected.
    for stream in &mut held {
        assert_eq!(healthz(stream).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    drop(held.pop());
    served_after_a_slot_frees(s.addr).await;
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn per_address_cap_holds() {
    const CAP: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_connections_per_address = CAP;
    let s = TestServer::start_with(cfg).await;

    let mut held = hold(s.addr, CAP).await;
    let mut extra = TcpStream::connect(s.addr).await.expect("tcp connect");
    assert_eq!(healthz(&mut extra).await, None);
    drop(held.pop());
    served_after_a_slot_frees(s.addr).await;
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn token_endpoint_has_a_request_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.request_timeout_secs = 2;
    let s = TestServer::start_with(cfg).await;

    // Headers complete, body promised but never sent: only the request deadline can end this.
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /oauth2/token HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type=",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => panic!("no answer within {BOUND:?}"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    s.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_by_the_header_read_timeout_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.header_read_timeout_secs = 2;
    // Far beyond BOUND: only the header-read timeout can close this connection in time.
    cfg.idle_timeout_secs = 3600;
    let s = TestServer::start_with(cfg).await;

    let stream = TcpStream::connect(s.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await;
        for _ in 0..60 {
            if write.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(BOUND, read.read_to_end(&mut sink))
        .await
        .is_ok();
    writer.abort();
    assert!(closed, "a request head that never ends must be cut off");
    s.stop().await;
}

#[tokio::test]
async fn tls_handshakes_that_never_finish_are_dropped_and_https_clients_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServeConfig::for_data_dir(dir.path().join("data"));
    cfg.tls_auto = true;
    cfg.tls_handshake_timeout_secs = 2;
    // Far beyond BOUND: only the handshake deadline can close these in time.
    cfg.idle_timeout_secs = 3600;
    cfg.header_read_timeout_secs = 3600;
    let s = TestServer::start_with(cfg).await;

    // One says nothing; one sends the first bytes of a TLS record and stops.
    let mut silent = TcpStream::connect(s.addr).await.expect("connect");
    let mut partial = TcpStream::connect(s.addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");

    let ca = std::fs::read(s.data_dir.join("tls-ca.pem")).expect("server CA");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA PEM")])
        .timeout(BOUND)
        .build()
        .expect("client");
    let resp = client
        .get(format!("https://localhost:{}/healthz", s.addr.port()))
        .send()
        .await
        .expect("HTTPS while handshakes hang");
    assert_eq!(resp.status().as_u16(), 200);

    assert!(closed_by_server(&mut silent).await, "silent TLS connection");
    assert!(closed_by_server(&mut partial).await, "partial ClientHello");
    drop(client);
    s.stop().await;
}
