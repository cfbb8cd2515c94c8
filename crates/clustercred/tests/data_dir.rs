//! The data directory is checked on every start: a directory or secret that others could read or swap is
//! refused with a message naming the path and the fix, and the ordinary case still starts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use clustercred::{ServeConfig, Server};
use common::*;

/// A data directory a server has started and stopped in, inside a private temporary root.
async fn used_data_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    TestServer::start_in(data.clone()).await.stop().await;
    (root, data)
}

async fn refused(data: &Path) -> String {
    let err = Server::bind(&ServeConfig::for_data_dir(data.to_path_buf()))
        .await
        .err()
        .expect("the server refuses to start");
    format!("{err:#}")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

#[tokio::test]
async fn the_happy_path_starts_again_and_again_with_private_files() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // An operator's plain mkdir (0755, nothing in it yet) is closed before any secret goes in.
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o755);
    for _ in 0..2 {
        let s = TestServer::start_in(data.clone()).await;
        assert!(!s.token.is_empty());
        s.stop().await;
    }
    assert_eq!(mode(&data), 0o700);
    for name in ["master.key", "admin.token", "clustercred.db"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}

#[tokio::test]
async fn an_open_data_directory_is_refused() {
    let (_root, data) = used_data_dir().await;
    chmod(&data, 0o755);
    let msg = refused(&data).await;
    assert!(
        msg.contains(&format!("chmod 700 {}", data.display())),
        "{msg}"
    );
    // The CLI refuses it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clustercred"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 700"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    chmod(&data, 0o700);
    TestServer::start_in(data).await.stop().await;
}

#[tokio::test]
async fn a_fresh_directory_others_may_write_to_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);
    let msg = refused(&data).await;
    assert!(msg.contains("chmod 700"), "{msg}");
    assert!(
        !data.join("master.key").exists(),
        "nothing was written into it"
    );
}

#[tokio::test]
async fn a_symlinked_data_directory_is_refused() {
    let (root, data) = used_data_dir().await;
    let link = root.path().join("link");
    symlink(&data, &link).unwrap();
    let msg = refused(&link).await;
    assert!(msg.contains(&link.display().to_string()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
}

#[tokio::test]
async fn readable_secrets_are_refused() {
    for name in ["master.key", "admin.token", "clustercred.db"] {
        let (_root, data) = used_data_dir().await;
        let file = data.join(name);
        for open in [0o640, 0o604, 0o660] {
            chmod(&file, open);
            let msg = refused(&data).await;
            assert!(
                msg.contains(&format!("chmod 600 {}", file.display())),
                "{name} {open:o}: {msg}"
            );
        }
        chmod(&file, 0o600);
        TestServer::start_in(data).await.stop().await;
    }
}

#[tokio::test]
async fn symlinked_secrets_are_refused() {
    for name in ["master.key", "admin.token", "clustercred.db"] {
        let (root, data) = used_data_dir().await;
        let file = data.join(name);
        // The same content, moved out and linked back in.
        let elsewhere = root.path().join(format!("moved-{name}"));
        std::fs::rename(&file, &elsewhere).unwrap();
        symlink(&elsewhere, &file).unwrap();
        let msg = refused(&data).await;
        assert!(msg.contains(&file.display().to_string()), "{name}: {msg}");
        assert!(msg.contains("symbolic link"), "{name}: {msg}");
    }
}

#[tokio::test]
async fn files_and_directories_of_another_user_are_refused() {
    if !running_as_root() {
        // Without root no file of another user can be made; the root directory is one.
        let msg = refused(Path::new("/")).await;
        assert!(msg.contains("is owned by uid 0"), "{msg}");
        return;
    }
    let (_root, data) = used_data_dir().await;
    std::os::unix::fs::chown(&data, Some(65534), None).unwrap();
    let msg = refused(&data).await;
    assert!(msg.contains("is owned by uid 65534"), "{msg}");
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    std::os::unix::fs::chown(&data, Some(0), None).unwrap();

    for name in ["master.key", "admin.token", "clustercred.db"] {
        let file = data.join(name);
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let msg = refused(&data).await;
        assert!(
            msg.contains(&format!("{} is owned by uid 65534", file.display())),
            "{name}: {msg}"
        );
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    }
    TestServer::start_in(data).await.stop().await;
}

/// Logs that go to a file or a pipe (journald, a container runtime) carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_are_plain_text() {
    use std::io::{BufRead, BufReader, Read};
    let root = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clustercred"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first start logs the administrator's creation before it listens.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("created the administrator"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in {logs:?}");
}
