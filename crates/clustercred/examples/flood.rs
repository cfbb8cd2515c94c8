//! Issue 12, finding 2, measured: the issuance latency of a valid caller, quiet and under an unauthenticated
//! flood from another loopback address, and how much the database grows. Run against a release server:
//!
//! ```sh
//! cargo build --release -p clustercred --example flood
//! target/release/clustercred serve --data-dir /tmp/cc-flood &
//! target/release/examples/flood http://127.0.0.1:8080 /tmp/cc-flood 32 20
//! ```
//!
//! On a small machine the flood shares the server's CPUs; to measure the server and not the contention (as a
//! flood from another machine would be), pin them apart: `taskset -c 0 clustercred serve ...` and
//! `taskset -c 1 flood ...`. On the 2-core development machine, 2026-12-03, three runs each: pinned apart,
//! p50 ratio flood/quiet 1.60, 1.98, 1.61 (median 1.61; the server on one core under ~26,000 refused calls
//! a second); unpinned, 2.06, 2.16, 2.27, 1.72. The database grew ~0.64 MB, the issuance records only.
//!
//! Arguments: server URL, its data directory (admin token, database), flood concurrency, flood seconds.
//! The valid caller connects from 127.0.0.2, the flood from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LOC: &str = "projects/flood/locations/l1";

fn db_bytes(dir: &std::path::Path) -> u64 {
    ["clustercred.db", "clustercred.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn issue(client: &reqwest::Client, base: &str, token: &str, pem: &str) -> Duration {
    let started = Instant::now();
    let resp = client
        .post(format!(
            "{base}/alloydb/v1/{LOC}/clusters/c1:generateClientCertificate"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"publicKey": pem, "certDuration": "3600s"}))
        .send()
        .await
        .expect("issuance request");
    assert!(resp.status().is_success(), "issuance: {}", resp.status());
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!("{name}: {} calls, p50 {p50:?}, p99 {p99:?}", v.len());
    p50
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, dir, concurrency, seconds] = args.as_slice() else {
        eprintln!("usage: flood URL DATA_DIR CONCURRENCY SECONDS");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let seconds: u64 = seconds.parse().expect("seconds");
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let valid = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let resp = valid
        .post(format!("{base}/alloydb/v1/{LOC}/clusters?clusterId=c1"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success() || resp.status().as_u16() == 409,
        "create cluster: {}",
        resp.status()
    );
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .public_key_pem();

    let mut quiet = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds.min(10));
    // Paced at 50/s, under the default per-principal limit (100/s): a caller, not a load test.
    let pace = Duration::from_millis(20);
    while Instant::now() < until {
        quiet.push(issue(&valid, base, &token, &pem).await);
        tokio::time::sleep(pace).await;
    }
    let quiet_p50 = summary("issuance, quiet", quiet);

    let before = db_bytes(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let codes = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let flooder = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, base, stop, sent, codes) = (
            flooder.clone(),
            base.clone(),
            stop.clone(),
            sent.clone(),
            codes.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                i += concurrency as u64;
                let request = match i % 3 {
                    0 => client.get(format!("{base}/alloydb/v1/{LOC}/clusters")),
                    1 => client
                        .get(format!("{base}/alloydb/v1/{LOC}/clusters"))
                        .bearer_auth(format!("forged-{i}")),
                    _ => client
                        .post(format!("{base}/oauth2/token"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c"),
                };
                let code = match request.send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                *codes.lock().unwrap().entry(code).or_default() += 1;
            }
        }));
    }
    let mut loaded = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        loaded.push(issue(&valid, base, &token, &pem).await);
        tokio::time::sleep(pace).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let loaded_p50 = summary("issuance, under flood", loaded.clone());
    let sent = sent.load(Ordering::Relaxed);
    // Let the refusal aggregator write its last window before measuring the database.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let grown = db_bytes(&dir).saturating_sub(before);
    println!(
        "flood: {sent} requests in {flood_secs:.1} s ({:.0}/s) at concurrency {concurrency}, statuses {:?}",
        sent as f64 / flood_secs,
        codes.lock().unwrap()
    );
    println!(
        "database grew {grown} bytes ({} issuances under flood, each with its record and audit event)",
        loaded.len()
    );
    println!(
        "issuance p50 ratio flood/quiet: {:.2}",
        loaded_p50.as_secs_f64() / quiet_p50.as_secs_f64()
    );
}
