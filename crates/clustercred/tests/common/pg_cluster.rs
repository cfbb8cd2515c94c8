//! A throwaway PostgreSQL cluster of a test's own, from the installed server binaries (as the `postgres`
//! user when run as root): for tests that stop it, or configure TLS and `cert` authentication.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PgCluster {
    pub fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
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

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn start(&self) {
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

    /// Re-reads the configuration and the TLS files (SIGHUP).
    pub fn reload(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "reload"]);
        assert!(out.status.success(), "pg_ctl reload: {out:?}");
        // The postmaster applies a reload asynchronously.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    pub fn stop(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    pub fn new() -> PgCluster {
        Self::new_with(|_| {})
    }

    /// A cluster whose data directory `configure` may change (postgresql.conf, pg_hba.conf, files it names)
    /// between initdb and the first start. Files it writes are handed to the server's user.
    pub fn new_with(configure: impl FnOnce(&Path)) -> PgCluster {
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
        let cluster = PgCluster { bin, dir, port };
        let out = cluster.run(
            "initdb",
            &["-D", &cluster.data(), "-A", "trust", "-U", "postgres", "-N"],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        configure(Path::new(&cluster.data()));
        if rustix::process::geteuid().is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.data())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the configured files to the postgres user");
        }
        cluster.start();
        cluster
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}
