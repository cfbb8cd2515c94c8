//! A full disk under the data directory: issuance answers UNAVAILABLE (not INTERNAL), /readyz says why, and
//! service resumes by itself once space returns, without a restart. The data directory sits on a small tmpfs
//! mounted for the test (this needs root or CAP_SYS_ADMIN, as the CI machine has; the test fails, it does not
//! skip, where it cannot mount). Also: a database locked by another process answers UNAVAILABLE after
//! `--store-timeout`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LOC: &str = "projects/disk/locations/l1";

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the file system until a write fails; the file is the space to give back.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test]
async fn a_full_disk_answers_unavailable_and_service_resumes_when_space_returns() {
    let fs = Tmpfs::mount("8m");
    let data = fs.path().join("data");
    let s = TestServer::start_in(data.clone()).await;
    assert_eq!(create_cluster_c1(&s.url(""), &s.token, LOC).await, 200);
    let key = p256().public_key_pem();
    assert_eq!(
        issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(readyz(&s).await.0, 200);

    let ballast = fs.path().join("ballast");
    fill(&ballast);
    // Every issuance now fails cleanly; none claims success without its record.
    let mut unavailable = 0;
    for _ in 0..20 {
        let (code, body) = issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap();
        assert_ne!(
            code, 200,
            "an issuance cannot be recorded on a full disk: {body}"
        );
        assert_ne!(body["error"]["status"], "INTERNAL", "{body}");
        if code == 503 {
            assert_eq!(body["error"]["status"], "UNAVAILABLE", "{body}");
            unavailable += 1;
        }
    }
    assert!(unavailable > 0, "a full disk answers UNAVAILABLE");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, why) = readyz(&s).await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("not ready: "), "{why}");

    // Space returns: service resumes by itself, on the same process and pool.
    std::fs::remove_file(&ballast).unwrap();
    let mut resumed = false;
    for _ in 0..50 {
        let (code, body) = issue_c1(&s.url(""), &s.token, LOC, &key, None)
            .await
            .unwrap();
        if code == 200 {
            assert!(body["pemCertificateChain"].is_array(), "{body}");
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "issuance works again once space is freed");
    for _ in 0..10 {
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

/// `--store-timeout` is SQLite's busy timeout too: while another process holds the database's write lock, a
/// create answers 503 UNAVAILABLE after about that long instead of waiting, and goes through once the lock
/// is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_unavailable_after_the_store_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = clustercred::ServeConfig::for_data_dir(dir.path().join("data"));
    config.store_timeout_secs = 1;
    let s = TestServer::start_with(config).await;
    // Serving, with its first-start writes (the audit key) done, before the lock is taken.
    assert_eq!(readyz(&s).await.0, 200);
    let lock = lock_database(&s.data_dir).await;
    let started = std::time::Instant::now();
    let status = create_cluster_c1(&s.url(""), &s.token, LOC).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "a busy database is UNAVAILABLE");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "answered after {waited:?}, not after the 1 s store timeout"
    );
    unlock_database(lock).await;
    // Past the store's circuit breaker (1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create_cluster_c1(&s.url(""), &s.token, LOC).await, 200);
    s.stop().await;
}
