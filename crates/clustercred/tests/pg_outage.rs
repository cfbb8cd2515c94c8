//! PostgreSQL stopped under a running replica and started again (issue 13): while it is down, calls fail fast
//! with UNAVAILABLE (never INTERNAL, never a hang) and /readyz says why; when it is back, service resumes by
//! itself. Runs a throwaway PostgreSQL cluster of its own (from the installed server binaries, as the
//! `postgres` user when run as root), since stopping the shared one would disturb other tests.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clustercred::ServeConfig;
use common::*;

const LOC: &str = "projects/outage/locations/l1";

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let root = rustix::process::geteuid().is_root();
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        };
        cmd.args(args).output().expect("running a PostgreSQL tool")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    fn stop(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    fn new() -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .expect(
                "this test needs the PostgreSQL server binaries under /usr/lib/postgresql/*/bin",
            );
        let dir = tempfile::tempdir().unwrap();
        if rustix::process::geteuid().is_root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to the postgres user");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster { bin, dir, port };
        let out = cluster.run(
            "initdb",
            &["-D", &cluster.data(), "-A", "trust", "-U", "postgres", "-N"],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        cluster.start();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_unavailable_fast_and_service_resumes() {
    let pg = Cluster::new();
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
