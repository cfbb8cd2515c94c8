//! Micro-benchmarks of the store-backed hot paths, on a tokio runtime: the authorization check of every call
//! (`iam::policy::allows`: the root policy, then the project's) against an in-memory SQLite store holding a
//! project policy with a few bindings, and the commit behind every issued certificate
//! (`Store::record_issuance` with its idempotency record and audit event, one transaction) on a durable
//! file-backed store (WAL, synchronous=FULL: each commit waits for fsync) and on an in-memory one.

use std::hint::black_box;

use clustercred_api::iam::policy::{ROOT, allows, store_policy};
use clustercred_api::iam::roles::ADMIN_ROLE;
use clustercred_authority::{CaParams, ClientPublicKey, ClusterCa, LeafRequest};
use clustercred_proto::google::cloud::alloydb::v1::GenerateClientCertificateResponse;
use clustercred_proto::google::iam::v1::{Binding, Policy};
use clustercred_store::{
    AuditEvent, IdempotencyRecord, IssuanceOutcome, IssuanceRecord, SqliteStore, Store,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::runtime::Runtime;

const NOW: OffsetDateTime = datetime!(2026-11-24 10:00:00 UTC);
const CLUSTER: &str = "projects/p1/locations/us-central1/clusters/c1";
const CALLER: &str = "serviceAccount:app@p1.iam.clustercred.internal";
const METHOD: &str = "google.cloud.alloydb.v1.AlloyDBAdmin/GenerateClientCertificate";
const PERMISSION: &str = "alloydb.clusters.generateClientCertificate";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn binding(role: &str, members: &[&str]) -> Binding {
    Binding {
        role: role.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        condition: None,
    }
}

fn authorization(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::Builder::new()
        .prefix("clustercred-authz-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory");
    let store = rt.block_on(async {
        let store = SqliteStore::open(&dir.path().join("clustercred.db"))
            .await
            .expect("store");
        let now = NOW.unix_timestamp();
        // The first-start administrator in the root policy, as bootstrap leaves it.
        let root = Policy {
            version: 1,
            bindings: vec![binding(ADMIN_ROLE, &["user:admin"])],
            ..Default::default()
        };
        store_policy(&store, ROOT, root, None, now, None)
            .await
            .expect("root policy");
        let project = Policy {
            version: 1,
            bindings: vec![
                binding("roles/alloydb.admin", &["user:dba@example.com"]),
                binding(
                    "roles/alloydb.client",
                    &[
                        "group:developers@example.com",
                        CALLER,
                        "serviceAccount:batch@p1.iam.clustercred.internal",
                    ],
                ),
                binding(
                    "roles/viewer",
                    &["user:auditor@example.com", "group:sre@example.com"],
                ),
                binding(
                    "roles/gkemulticloud.viewer",
                    &["serviceAccount:connect@p1.iam.clustercred.internal"],
                ),
                binding(
                    "roles/iam.serviceAccountAdmin",
                    &["user:platform@example.com"],
                ),
            ],
            ..Default::default()
        };
        store_policy(&store, "projects/p1", project, None, now, None)
            .await
            .expect("project policy");
        store
    });
    let granted = vec![CALLER.to_string()];
    let stranger = vec!["serviceAccount:other@p2.iam.clustercred.internal".to_string()];
    rt.block_on(async {
        assert!(allows(&store, &granted, PERMISSION, CLUSTER).await.unwrap());
        assert!(
            !allows(&store, &stranger, PERMISSION, CLUSTER)
                .await
                .unwrap()
        );
    });

    let mut group = c.benchmark_group("authorization/allows");
    for (name, members) in [
        ("granted_by_project_policy", &granted),
        ("denied", &stranger),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                allows(&store, black_box(members), PERMISSION, CLUSTER)
                    .await
                    .expect("checked")
            })
        });
    }
    group.finish();
    rt.block_on(store.close());
}

/// What one GenerateClientCertificate commits: the issuance, the idempotency record holding the encoded
/// response (a real leaf and CA certificate), and the audit event. Each call gets a fresh serial and request id.
struct Commit {
    issuance: IssuanceRecord,
    idempotency: IdempotencyRecord,
    audit: AuditEvent,
}

struct CommitFactory {
    response: Vec<u8>,
    public_key_sha256: String,
    next: u64,
}

impl CommitFactory {
    fn new() -> Self {
        let (ca, _) = ClusterCa::generate(
            &CaParams {
                common_name: CLUSTER.into(),
                organization: Some("clustercred AlloyDB cluster CA".into()),
                validity: Duration::days(3650),
            },
            NOW,
        )
        .expect("CA");
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA-2048 key");
        let public = ClientPublicKey::from_pem(&key.public_key_pem()).expect("public key");
        let leaf = ca
            .issue_client_certificate(
                &LeafRequest {
                    public_key: &public,
                    subject_common_name: "app@p1.iam.clustercred.internal",
                    subject_organization: None,
                    lifetime: Duration::hours(1),
                },
                NOW,
            )
            .expect("leaf");
        let response = GenerateClientCertificateResponse {
            pem_certificate_chain: vec![leaf.cert_pem, ca.cert_pem().to_string()],
            ca_cert: ca.cert_pem().to_string(),
        }
        .encode_to_vec();
        CommitFactory {
            response,
            public_key_sha256: public.sha256_fingerprint_hex(),
            next: 0,
        }
    }

    fn next(&mut self) -> Commit {
        self.next += 1;
        let serial_hex = format!(
            "{:032x}",
            (u128::from(self.next) << 64) | 0x1d2c_3b4a_5968_7786
        );
        let request_id = format!("00000000-0000-4000-8000-{:012x}", self.next);
        let now = NOW.unix_timestamp() + i64::try_from(self.next).expect("counter");
        Commit {
            issuance: IssuanceRecord {
                serial_hex: serial_hex.clone(),
                owner: CLUSTER.into(),
                kind: "client_certificate".into(),
                subject: "app@p1.iam.clustercred.internal".into(),
                not_before_unix: now - 60,
                not_after_unix: now + 3600,
                requester: CALLER.into(),
                request_id: Some(request_id.clone()),
                public_key_sha256: self.public_key_sha256.clone(),
                create_time_unix: now,
                metadata_exchange: false,
            },
            idempotency: IdempotencyRecord {
                scope: METHOD.into(),
                request_id: request_id.clone(),
                request_hash: vec![0xa5; 32],
                response: self.response.clone(),
                create_time_unix: now,
            },
            audit: AuditEvent {
                time_unix_nanos: now * 1_000_000_000,
                principal: CALLER.into(),
                method: METHOD.into(),
                resource: CLUSTER.into(),
                outcome: "ok".into(),
                status: "OK".into(),
                detail: serial_hex,
                request_id,
                client_address: "10.0.3.17:52814".into(),
                user_agent: "alloydb-go-connector/1.15.0 grpc-go/1.70.0".into(),
                count: 1,
                ..Default::default()
            },
        }
    }
}

fn bench_commit(c: &mut Criterion, rt: &Runtime, store: &SqliteStore, name: &str) {
    let mut factory = CommitFactory::new();
    c.bench_function(name, |b| {
        b.to_async(rt).iter_batched(
            || factory.next(),
            |commit| async move {
                let outcome = store
                    .record_issuance(
                        &commit.issuance,
                        Some(&commit.idempotency),
                        Some(&commit.audit),
                    )
                    .await
                    .expect("committed");
                assert_eq!(outcome, IssuanceOutcome::Recorded);
            },
            BatchSize::SmallInput,
        )
    });
}

fn record_issuance(c: &mut Criterion) {
    let rt = runtime();
    // Under target/tmp, on the same disk as the build: not a tmpfs, so fsync is real.
    let dir = tempfile::Builder::new()
        .prefix("clustercred-store-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory");
    let durable = rt
        .block_on(SqliteStore::open(&dir.path().join("clustercred.db")))
        .expect("file-backed store");
    bench_commit(c, &rt, &durable, "record_issuance/sqlite_file_durable");
    rt.block_on(durable.close());
}

criterion_group!(benches, authorization, record_issuance);
criterion_main!(benches);
