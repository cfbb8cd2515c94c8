//! PostgreSQL stopped under a running replica and started again (issue 13): while it is down, calls fail fast
//! with UNAVAILABLE (never INTERNAL, never a hang) and /readyz says why; when it is back, service resumes by
//! itself. Runs a throwaway PostgreSQL cluster of its own (from the installed server binaries, as the
//! `postgres` user when run as root), since stopping the shared one would disturb other tests.

mod common;

use std::time::{Duration, Instant};

use clustercred::ServeConfig;
use common::*;

const LOC: &str = "projects/outage/locations/l1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_unavailable_fast_and_service_resumes() {
    let pg = PgCluster::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().join("data"));
    config.database = Some(pg.url());
    config.master_key_file = Some(master_key_file(dir.path()));
    let s = TestServer::start_with(config).await;
    assert_eq!(create_cluster_c1(&s.url(""), &s.token, LOC).await, 200);
    let key = p256().public_key_pem();
    assert_eq!(
        issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap()
            .0,
        200
    );

    pg.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let (code, body) = issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap();
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["error"]["status"], "UNAVAILABLE", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "failed fast, not after {:?}",
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, why) = readyz(&s).await;
    assert_eq!(code, 503, "{why}");

    pg.start();
    let back = Instant::now();
    loop {
        let (code, body) = issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap();
        if code == 200 {
            assert!(body["pemCertificateChain"].is_array(), "{body}");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "service did not resume: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            issue_c1(&s.url(""), &s.token, LOC, &key, None)
                .await
                .unwrap()
                .0,
            200,
            "and keeps working"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(readyz(&s).await.0, 200);
    s.stop().await;
}
