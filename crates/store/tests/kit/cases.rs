//! The kit's cases, written once against `dyn Store`; kit.rs runs each on every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clustercred_store::*;

use crate::env::Env;

fn res(kind: &str, name: &str, parent: &str) -> ResourceRecord {
    ResourceRecord {
        kind: kind.into(),
        name: name.into(),
        parent: parent.into(),
        uid: format!("uid-{name}"),
        data: name.as_bytes().to_vec(),
        create_time_unix: 100,
    }
}

fn op(name: &str) -> OperationRecord {
    OperationRecord {
        name: format!("projects/p/locations/l/operations/{name}"),
        parent: "projects/p/locations/l".into(),
        data: vec![1, 2, 3],
        create_time_unix: 100,
    }
}

/// The CA of resource `name` of kind `k`.
fn ca(name: &str) -> CaRecord {
    CaRecord {
        owner: ca_owner("k", name),
        cert_pem: "PEM".into(),
        key_der: vec![9; 8],
        not_after_unix: 1000,
        create_time_unix: 100,
    }
}

fn issuance(serial: &str, owner: &str, request_id: Option<&str>) -> IssuanceRecord {
    IssuanceRecord {
        serial_hex: serial.into(),
        owner: owner.into(),
        kind: "client_certificate".into(),
        subject: "admin".into(),
        not_before_unix: 1,
        not_after_unix: 2,
        requester: "admin".into(),
        request_id: request_id.map(Into::into),
        public_key_sha256: "ab".into(),
        create_time_unix: 100,
        metadata_exchange: false,
    }
}

fn idem(request_id: &str, response: u8) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: "alloydb.generateClientCertificate".into(),
        request_id: request_id.into(),
        request_hash: vec![1],
        response: vec![response],
        create_time_unix: 100,
    }
}

fn event(n: i64, principal: &str, resource: &str) -> AuditEvent {
    AuditEvent {
        time_unix_nanos: n,
        principal: principal.into(),
        method: "google.cloud.alloydb.v1.AlloyDBAdmin/GenerateClientCertificate".into(),
        resource: resource.into(),
        outcome: "ok".into(),
        status: "OK".into(),
        detail: format!("serial {n}"),
        ..Default::default()
    }
}

fn principal(id: &str) -> PrincipalRecord {
    PrincipalRecord {
        id: id.into(),
        kind: "user".into(),
        display_name: format!("User {id}"),
        create_time_unix: 1,
    }
}

fn policy(resource: &str, data: u8, etag: &[u8]) -> PolicyRecord {
    PolicyRecord {
        resource: resource.into(),
        data: vec![data],
        etag: etag.to_vec(),
        update_time_unix: 1,
    }
}

const PARENT: &str = "projects/p/locations/l";
const C1: &str = "projects/p/locations/l/clusters/c1";

pub async fn create_get_list_delete_with_children_and_ca(env: &Env) {
    let s = env.store().await;
    s.create_resource(
        &res("a.Cluster", C1, PARENT),
        Some(&CaRecord {
            owner: ca_owner("a.Cluster", C1),
            ..ca(C1)
        }),
        Some(&op("o1")),
        None,
    )
    .await
    .unwrap();
    let inst = format!("{C1}/instances/i1");
    s.create_resource(&res("a.Instance", &inst, C1), None, Some(&op("o2")), None)
        .await
        .unwrap();
    // Duplicate: refused, and the operation and event of the failed attempt are not written.
    let dup = s
        .create_resource(
            &res("a.Cluster", C1, PARENT),
            None,
            Some(&op("o3")),
            Some(&event(1, "user:admin", C1)),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists)), "{dup:?}");
    assert!(s.get_operation(&op("o3").name).await.unwrap().is_none());
    assert!(s.audit_head().await.unwrap().is_none());

    assert_eq!(
        s.get_resource("a.Cluster", C1).await.unwrap().unwrap(),
        res("a.Cluster", C1, PARENT)
    );
    assert_eq!(
        s.get_ca(&ca_owner("a.Cluster", C1))
            .await
            .unwrap()
            .unwrap()
            .key_der,
        vec![9; 8]
    );
    assert!(s.get_resource("other-kind", C1).await.unwrap().is_none());

    // Another API's resources under the same name: untouched by this delete.
    s.create_resource(
        &res("b.Cluster", C1, PARENT),
        Some(&CaRecord {
            owner: ca_owner("b.Cluster", C1),
            ..ca(C1)
        }),
        None,
        None,
    )
    .await
    .unwrap();
    s.create_resource(&res("b.Instance", &inst, C1), None, None, None)
        .await
        .unwrap();
    s.delete_resource("a.Cluster", C1, Some(&op("o4")), None)
        .await
        .unwrap();
    assert!(s.get_resource("a.Cluster", C1).await.unwrap().is_none());
    assert!(
        s.get_resource("a.Instance", &inst).await.unwrap().is_none(),
        "children go too"
    );
    assert!(
        s.get_ca(&ca_owner("a.Cluster", C1))
            .await
            .unwrap()
            .is_none(),
        "the CA goes with its cluster"
    );
    assert!(s.get_operation(&op("o4").name).await.unwrap().is_some());
    assert!(matches!(
        s.delete_resource("a.Cluster", C1, Some(&op("o5")), None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        s.get_operation(&op("o5").name).await.unwrap().is_none(),
        "a failed delete records no operation"
    );
    assert!(
        s.get_resource("b.Cluster", C1).await.unwrap().is_some()
            && s.get_resource("b.Instance", &inst).await.unwrap().is_some()
            && s.get_ca(&ca_owner("b.Cluster", C1))
                .await
                .unwrap()
                .is_some(),
        "a delete removes children of its own API only"
    );
    assert!(s.delete_operation(&op("o4").name).await.unwrap());
    assert!(!s.delete_operation(&op("o4").name).await.unwrap());
}

pub async fn delete_does_not_touch_names_sharing_a_prefix(env: &Env) {
    let s = env.store().await;
    let c10 = format!("{C1}0");
    s.create_resource(&res("k", C1, PARENT), Some(&ca(C1)), Some(&op("a")), None)
        .await
        .unwrap();
    s.create_resource(
        &res("k", &c10, PARENT),
        Some(&ca(&c10)),
        Some(&op("b")),
        None,
    )
    .await
    .unwrap();
    s.delete_resource("k", C1, Some(&op("c")), None)
        .await
        .unwrap();
    assert!(s.get_resource("k", &c10).await.unwrap().is_some());
    assert!(s.get_ca(&ca_owner("k", &c10)).await.unwrap().is_some());

    // `_` in a name is a literal, not a pattern: deleting `c_` takes `c_/...` and leaves `cX/...`.
    let wild = format!("{PARENT}/clusters/c_");
    let child = format!("{wild}/instances/i");
    let other = format!("{PARENT}/clusters/cX/instances/i");
    for (kind, name) in [
        ("a.Cluster", &wild),
        ("a.Instance", &child),
        ("a.Instance", &other),
    ] {
        s.create_resource(&res(kind, name, PARENT), None, None, None)
            .await
            .unwrap();
    }
    s.delete_resource("a.Cluster", &wild, None, None)
        .await
        .unwrap();
    assert!(
        s.get_resource("a.Instance", &child)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_resource("a.Instance", &other)
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn list_pages_in_byte_order(env: &Env) {
    let s = env.store().await;
    // Byte order, whatever the database's locale: upper case before lower, `-` before digits before `_`.
    for (i, n) in ["c_3", "c1", "C2", "c-4"].iter().enumerate() {
        let name = format!("{PARENT}/clusters/{n}");
        s.create_resource(
            &res("k", &name, PARENT),
            None,
            Some(&op(&format!("o{n}"))),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("create {i}: {e}"));
    }
    s.create_resource(
        &res(
            "k",
            "projects/q/locations/l/clusters/x",
            "projects/q/locations/l",
        ),
        None,
        Some(&op("ox")),
        None,
    )
    .await
    .unwrap();
    let last = |r: &ResourceRecord| r.name.rsplit('/').next().unwrap().to_string();
    let page1 = s.list_resources("k", PARENT, None, 3).await.unwrap();
    assert_eq!(
        page1.iter().map(last).collect::<Vec<_>>(),
        ["C2", "c-4", "c1"]
    );
    let page2 = s
        .list_resources("k", PARENT, Some(&page1[2].name), 3)
        .await
        .unwrap();
    assert_eq!(page2.iter().map(last).collect::<Vec<_>>(), ["c_3"]);
    assert!(
        s.list_resources("x", PARENT, None, 3)
            .await
            .unwrap()
            .is_empty()
    );

    let ops = s.list_operations(PARENT, None, 10).await.unwrap();
    let op_names: Vec<_> = ops
        .iter()
        .map(|o| o.name.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(op_names, ["oC2", "oc-4", "oc1", "oc_3", "ox"]);
    let rest = s
        .list_operations(PARENT, Some(&ops[1].name), 2)
        .await
        .unwrap();
    assert_eq!(rest, ops[2..4]);
}

pub async fn issuance_with_idempotency_replays_the_first_winner(env: &Env) {
    let s = env.store().await;
    let first = idem("r1", 42);
    assert_eq!(
        s.record_issuance(&issuance("s1", C1, Some("r1")), Some(&first), None)
            .await
            .unwrap(),
        IssuanceOutcome::Recorded
    );
    match s
        .record_issuance(&issuance("s2", C1, Some("r1")), Some(&idem("r1", 43)), None)
        .await
        .unwrap()
    {
        IssuanceOutcome::Replay(r) => assert_eq!(r, first),
        other => panic!("expected replay, got {other:?}"),
    }
    let recorded = s.list_issuances(C1).await.unwrap();
    assert_eq!(recorded.len(), 1, "the loser's certificate is not recorded");
    assert_eq!(recorded[0], issuance("s1", C1, Some("r1")));
    assert_eq!(
        s.get_idempotent(&first.scope, "r1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.purge_idempotency(101, 1000).await.unwrap(), 1);
    assert!(
        s.get_idempotent(&first.scope, "r1")
            .await
            .unwrap()
            .is_none()
    );
    // A duplicate serial fails the write, and its request id is not taken.
    assert!(
        s.record_issuance(&issuance("s1", C1, Some("r2")), Some(&idem("r2", 1)), None)
            .await
            .is_err()
    );
    assert!(
        s.get_idempotent(&first.scope, "r2")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn counters_principals_tokens_keys(env: &Env) {
    let s = env.store().await;
    assert_eq!(s.next_counter("ip").await.unwrap(), 1);
    assert_eq!(s.next_counter("ip").await.unwrap(), 2);
    assert_eq!(s.next_counter("other").await.unwrap(), 1);

    let p = principal("admin");
    assert_eq!(s.get_principal("admin").await.unwrap(), None);
    s.put_principal(&p).await.unwrap();
    let renamed = PrincipalRecord {
        display_name: "Administrator".into(),
        ..p.clone()
    };
    s.put_principal(&renamed).await.unwrap();
    assert_eq!(
        s.get_principal("admin").await.unwrap(),
        Some(renamed.clone())
    );
    let p = renamed;
    s.put_bearer_token(&[7; 32], "admin", 1, None)
        .await
        .unwrap();
    assert_eq!(
        s.principal_for_bearer(&[7; 32], 2).await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(s.principal_for_bearer(&[8; 32], 2).await.unwrap(), None);
    s.put_bearer_token(&[6; 32], "admin", 1, Some(100))
        .await
        .unwrap();
    assert_eq!(s.revoke_bearer_tokens("admin", None).await.unwrap(), 2);
    assert_eq!(s.principal_for_bearer(&[7; 32], 2).await.unwrap(), None);
    assert_eq!(s.revoke_bearer_tokens("admin", None).await.unwrap(), 0);
    // A token for a principal that does not exist is refused by the foreign key.
    assert!(
        s.put_bearer_token(&[9; 32], "ghost", 1, None)
            .await
            .is_err()
    );

    let k1 = SigningKeyRecord {
        kid: "k1".into(),
        key_der: vec![1],
        create_time_unix: 5,
    };
    let k2 = SigningKeyRecord {
        kid: "k2".into(),
        key_der: vec![2],
        create_time_unix: 6,
    };
    s.put_signing_key(&k1).await.unwrap();
    s.put_signing_key(&k2).await.unwrap();
    assert!(matches!(
        s.put_signing_key(&k1).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        s.signing_keys().await.unwrap(),
        vec![k2, k1],
        "newest first"
    );

    let server_ca = CaRecord {
        owner: "server".into(),
        ..ca("x")
    };
    s.put_ca(&server_ca).await.unwrap();
    assert!(matches!(
        s.put_ca(&server_ca).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.get_ca("server").await.unwrap(), Some(server_ca));
}

pub async fn data_persists_across_reopen(env: &Env) {
    {
        let s = env.store().await;
        s.create_resource(&res("k", C1, PARENT), Some(&ca(C1)), Some(&op("o1")), None)
            .await
            .unwrap();
    }
    let s = env.store().await;
    assert!(s.get_resource("k", C1).await.unwrap().is_some());
    assert!(s.get_operation(&op("o1").name).await.unwrap().is_some());
}

pub async fn audit_events_chain_and_filter(env: &Env) {
    let s = env.store().await;
    s.append_audit(&event(1, "user:admin", C1)).await.unwrap();
    s.record_issuance(
        &issuance("s1", C1, None),
        None,
        Some(&event(2, "serviceAccount:a@p", C1)),
    )
    .await
    .unwrap();
    s.create_resource(
        &res(
            "k",
            "projects/q/locations/l/clusters/x",
            "projects/q/locations/l",
        ),
        None,
        None,
        Some(&event(3, "user:admin", "projects/q/locations/l/clusters/x")),
    )
    .await
    .unwrap();
    let all = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(verify_chain(&all), Ok(()));
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(all[0].prev_hash.is_empty());
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert_eq!(all[1].event, event(2, "serviceAccount:a@p", C1));
    assert_eq!(
        s.audit_head().await.unwrap(),
        Some((3, all[2].hash.clone()))
    );
    let count = |f: AuditFilter| {
        let s = s.clone();
        async move { s.list_audit(&f).await.unwrap().len() }
    };
    assert_eq!(
        count(AuditFilter {
            principal: Some("user:admin".into()),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(AuditFilter {
            resource_prefix: Some("projects/p/locations/l".into()),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(AuditFilter {
            resource_prefix: Some("projects/p/locations/l/clusters/c".into()),
            ..Default::default()
        })
        .await,
        0,
        "a prefix matches whole name segments"
    );
    assert_eq!(
        count(AuditFilter {
            since_unix_nanos: Some(2),
            until_unix_nanos: Some(3),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        count(AuditFilter {
            method_contains: Some("GenerateClient".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(AuditFilter {
            method_contains: Some("Nothing".into()),
            ..Default::default()
        })
        .await,
        0
    );
    // A failed write leaves no event behind.
    let dup = s
        .record_issuance(
            &issuance("s1", C1, None),
            None,
            Some(&event(4, "user:admin", C1)),
        )
        .await;
    assert!(dup.is_err());
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        3
    );
    // The next event continues the chain where it was.
    s.append_audit(&event(5, "user:admin", C1)).await.unwrap();
    let all = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(()));
    assert_eq!(all[3].seq, 4);

    // Tampering with any stored field breaks the chain at that event.
    let mut tampered = all.clone();
    tampered[1].event.detail = "serial 999".into();
    assert_eq!(
        verify_chain(&tampered),
        Err(ChainBreak {
            seq: tampered[1].seq,
            reason: "the event does not match its hash"
        })
    );
    let mut dropped = all.clone();
    dropped.remove(1);
    assert_eq!(verify_chain(&dropped).unwrap_err().seq, dropped[1].seq);
}

pub async fn policies_compare_and_set_on_etag(env: &Env) {
    let s = env.store().await;
    assert!(s.get_policy("projects/p").await.unwrap().is_none());
    let p1 = policy("projects/p", 1, &[1, 1]);
    // A never-written policy has the empty etag: any other expectation conflicts.
    assert!(matches!(
        s.set_policy(&p1, Some(&[1]), None).await,
        Err(StoreError::Conflict)
    ));
    s.set_policy(&p1, Some(&[]), None).await.unwrap();
    assert_eq!(s.get_policy("projects/p").await.unwrap(), Some(p1.clone()));
    assert!(matches!(
        s.set_policy(&policy("projects/p", 9, &[9]), Some(&[]), None)
            .await,
        Err(StoreError::Conflict)
    ));
    let p2 = policy("projects/p", 2, &[2, 2]);
    assert!(matches!(
        s.set_policy(&p2, Some(&[9]), Some(&event(4, "user:admin", "projects/p")))
            .await,
        Err(StoreError::Conflict)
    ));
    s.set_policy(
        &p2,
        Some(&[1, 1]),
        Some(&event(5, "user:admin", "projects/p")),
    )
    .await
    .unwrap();
    assert_eq!(s.get_policy("projects/p").await.unwrap(), Some(p2));
    s.set_policy(&p1, None, None).await.unwrap();
    assert_eq!(s.get_policy("projects/p").await.unwrap(), Some(p1.clone()));
    let audit = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(audit.len(), 1, "a lost compare-and-set records no event");
    assert_eq!(audit[0].event.time_unix_nanos, 5);
    let root = policy("", 3, &[3]);
    s.set_policy(&root, None, None).await.unwrap();
    assert_eq!(s.list_policies().await.unwrap(), vec![root, p1]);
}

pub async fn same_name_in_two_apis_keeps_two_cas(env: &Env) {
    let s = env.store().await;
    let mut alloy = ca(C1);
    alloy.owner = ca_owner("alloydb.Cluster", C1);
    alloy.cert_pem = "ALLOYDB".into();
    let mut edge = ca(C1);
    edge.owner = ca_owner("edgecontainer.Cluster", C1);
    edge.cert_pem = "EDGE".into();
    s.create_resource(
        &res("alloydb.Cluster", C1, PARENT),
        Some(&alloy),
        None,
        None,
    )
    .await
    .unwrap();
    s.create_resource(
        &res("edgecontainer.Cluster", C1, PARENT),
        Some(&edge),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.get_ca(&alloy.owner).await.unwrap(), Some(alloy.clone()));
    assert_eq!(s.get_ca(&edge.owner).await.unwrap(), Some(edge.clone()));
    s.delete_resource("edgecontainer.Cluster", C1, None, None)
        .await
        .unwrap();
    assert!(s.get_ca(&edge.owner).await.unwrap().is_none());
    assert_eq!(
        s.get_ca(&alloy.owner).await.unwrap().unwrap().cert_pem,
        "ALLOYDB",
        "the other API's CA stays"
    );
    // A CA left behind under a name is replaced by the next resource of that name, not reused.
    s.put_ca(&CaRecord {
        owner: ca_owner("edgecontainer.Cluster", C1),
        cert_pem: "STALE".into(),
        ..ca(C1)
    })
    .await
    .unwrap();
    s.create_resource(
        &res("edgecontainer.Cluster", C1, PARENT),
        Some(&edge),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.get_ca(&edge.owner).await.unwrap(), Some(edge));
}

pub async fn checkpoints_only_for_events_on_the_chain_and_one_audit_key(env: &Env) {
    let s = env.store().await;
    assert_eq!(s.audit_head().await.unwrap(), None);
    s.append_audit(&event(1, "user:admin", C1)).await.unwrap();
    s.append_audit(&event(2, "user:admin", C1)).await.unwrap();
    let (seq, hash) = s.audit_head().await.unwrap().unwrap();
    assert_eq!(seq, 2);
    let (signer, _) = AuditSigner::generate().unwrap();
    let id = s
        .append_checkpoint(&signer.checkpoint(seq, &hash, 7))
        .await
        .unwrap();
    // A checkpoint of a head the chain does not have is refused.
    assert!(matches!(
        s.append_checkpoint(&signer.checkpoint(seq, b"not the hash", 8))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.append_checkpoint(&signer.checkpoint(3, &hash, 8)).await,
        Err(StoreError::NotFound)
    ));
    let stored = s.checkpoints().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert!(signer.public_key().verifies(&stored[0]));
    let events = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert!(verify_anchored(&events, &stored, &[signer.public_key().clone()]).is_ok());

    let key = |kid: &str| AuditKeyRecord {
        kid: kid.into(),
        key_der: vec![1],
        public_key: vec![2],
        create_time_unix: 1,
    };
    assert_eq!(s.put_audit_key(&key("first")).await.unwrap(), key("first"));
    assert_eq!(
        s.put_audit_key(&key("second")).await.unwrap().kid,
        "first",
        "the first key stays"
    );
    assert_eq!(s.audit_keys().await.unwrap(), vec![key("first")]);
    let sealed = s.sealed_keys().await.unwrap();
    assert!(
        sealed
            .iter()
            .any(|k| k.kind == "audit_key" && k.id == "first")
    );
    s.replace_sealed_keys(
        &[SealedKey {
            kind: "audit_key".into(),
            id: "first".into(),
            sealed: vec![9],
        }],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.audit_keys().await.unwrap()[0].key_der, vec![9]);
}

/// A rotation is all or nothing: one unknown key fails it and leaves every key (and the audit log) as it was.
pub async fn failed_writes_leave_nothing(env: &Env) {
    let s = env.store().await;
    assert!(matches!(
        s.update_resource(&res("k", C1, PARENT), Some(&event(1, "user:admin", C1)))
            .await,
        Err(StoreError::NotFound)
    ));
    s.create_resource(&res("k", C1, PARENT), Some(&ca(C1)), None, None)
        .await
        .unwrap();
    let mut changed = res("k", C1, PARENT);
    changed.data = vec![7];
    s.update_resource(&changed, Some(&event(2, "user:admin", C1)))
        .await
        .unwrap();
    assert_eq!(s.get_resource("k", C1).await.unwrap(), Some(changed));
    s.put_signing_key(&SigningKeyRecord {
        kid: "k1".into(),
        key_der: vec![1],
        create_time_unix: 1,
    })
    .await
    .unwrap();
    let before = s.sealed_keys().await.unwrap();
    assert_eq!(before.len(), 2);
    let rotation = [
        SealedKey {
            kind: "signing_key".into(),
            id: "k1".into(),
            sealed: vec![2],
        },
        SealedKey {
            kind: "ca".into(),
            id: "nobody".into(),
            sealed: vec![2],
        },
    ];
    assert!(matches!(
        s.replace_sealed_keys(&rotation, Some(&event(3, "user:admin", "")))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.sealed_keys().await.unwrap(), before);
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        1
    );
}

/// (a) Two replicas record issuances with one request id at once: one records, the other replays the
/// winner's response, and only the winner's certificate is on record.
pub async fn concurrent_issuances_with_one_request_id_replay_the_winner(env: &Env) {
    let (s1, s2) = (env.store().await, env.store().await);
    for round in 0..10 {
        let owner = format!("{C1}-{round}");
        let rid = format!("r{round}");
        let issue = |s: Arc<dyn Store>, serial: String, response: u8| {
            let (owner, rid) = (owner.clone(), rid.clone());
            tokio::spawn(async move {
                s.record_issuance(
                    &issuance(&serial, &owner, Some(&rid)),
                    Some(&idem(&rid, response)),
                    Some(&event(1, "user:admin", &owner)),
                )
                .await
            })
        };
        let a = issue(s1.clone(), format!("a{round}"), 1);
        let b = issue(s2.clone(), format!("b{round}"), 2);
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        let (winner_serial, replay) = match (&a, &b) {
            (IssuanceOutcome::Recorded, IssuanceOutcome::Replay(r)) => (format!("a{round}"), r),
            (IssuanceOutcome::Replay(r), IssuanceOutcome::Recorded) => (format!("b{round}"), r),
            other => panic!("round {round}: expected one Recorded and one Replay, got {other:?}"),
        };
        let winner_response = if winner_serial.starts_with('a') { 1 } else { 2 };
        assert_eq!(replay, &idem(&rid, winner_response), "round {round}");
        let recorded = s1.list_issuances(&owner).await.unwrap();
        assert_eq!(recorded.len(), 1, "round {round}: {recorded:?}");
        assert_eq!(recorded[0].serial_hex, winner_serial);
    }
    let audit = s1.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(audit.len(), 10, "only winners are audited");
    assert_eq!(verify_chain(&audit), Ok(()));
}

/// (b) Two replicas set a policy from the same etag at once: one wins, the other gets `Conflict`; both for a
/// stored policy (conditional update) and a never-written one (the empty etag: conditional insert).
pub async fn concurrent_set_policy_from_one_etag_one_conflict(env: &Env) {
    let (s1, s2) = (env.store().await, env.store().await);
    for round in 0..10u8 {
        let resource = format!("projects/r{round}");
        let expected: Vec<u8> = if round % 2 == 0 {
            s1.set_policy(&policy(&resource, 0, &[0]), None, None)
                .await
                .unwrap();
            vec![0]
        } else {
            Vec::new()
        };
        let set = |s: Arc<dyn Store>, data: u8| {
            let (resource, expected) = (resource.clone(), expected.clone());
            tokio::spawn(async move {
                s.set_policy(
                    &policy(&resource, data, &[data]),
                    Some(&expected),
                    Some(&event(i64::from(data), "user:admin", &resource)),
                )
                .await
            })
        };
        let a = set(s1.clone(), 1);
        let b = set(s2.clone(), 2);
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let winner = match (&a, &b) {
            (Ok(()), Err(StoreError::Conflict)) => 1,
            (Err(StoreError::Conflict), Ok(())) => 2,
            other => panic!("round {round}: expected one Ok and one Conflict, got {other:?}"),
        };
        assert_eq!(
            s2.get_policy(&resource).await.unwrap(),
            Some(policy(&resource, winner, &[winner])),
            "round {round}"
        );
    }
    let audit = s1.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(audit.len(), 10, "only winners are audited");
    assert_eq!(verify_chain(&audit), Ok(()));
}

/// (c) Many writers on several store instances append events at once (alone and in batches): the chain
/// stays one line, gapless, every event on it once.
pub async fn concurrent_appends_from_replicas_keep_one_chain(env: &Env) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 50;
    let stores = [env.store().await, env.store().await, env.store().await];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = stores[t % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let mut e = event((t * 1000 + i) as i64, "user:admin", C1);
                e.detail = format!("t{t}-{i}");
                if i % 2 == 0 {
                    s.append_audit(&e).await.unwrap();
                } else {
                    let mut e2 = e.clone();
                    e2.detail = format!("t{t}-{i}-token");
                    let token = TokenRecord {
                        token_id: format!("tok-{t}-{i}"),
                        owner: C1.into(),
                        subject: "agent".into(),
                        expires_unix: 10,
                        create_time_unix: 1,
                    };
                    let outcomes = s
                        .write_batch(&[
                            WriteItem::Audit(e),
                            WriteItem::Token {
                                token,
                                audit: Some(e2),
                            },
                        ])
                        .await
                        .unwrap();
                    assert_eq!(outcomes.len(), 2);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all = stores[0].list_audit(&AuditFilter::default()).await.unwrap();
    let expected = TASKS * (ROUNDS / 2 + 2 * (ROUNDS / 2));
    assert_eq!(all.len(), expected);
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    let gapless: Vec<i64> = (1..=expected as i64).collect();
    assert_eq!(seqs, gapless, "sequence numbers have no gaps");
    assert_eq!(verify_chain(&all), Ok(()), "one chain, no forks");
    let details: HashSet<&str> = all.iter().map(|e| e.event.detail.as_str()).collect();
    assert_eq!(details.len(), expected, "every event once");
    assert_eq!(
        stores[1].audit_head().await.unwrap(),
        all.last().map(|e| (e.seq, e.hash.clone()))
    );
}

/// (d) Two items of one batch with one request id: the first records, the second replays it.
pub async fn batch_with_one_request_id_twice_records_then_replays(env: &Env) {
    let s = env.store().await;
    let item = |serial: &str, response: u8| WriteItem::Issuance {
        issuance: issuance(serial, C1, Some("r1")),
        idempotency: Some(idem("r1", response)),
        audit: Some(event(i64::from(response), "user:admin", C1)),
    };
    let outcomes = s
        .write_batch(&[item("s1", 1), item("s2", 2)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            IssuanceOutcome::Recorded,
            IssuanceOutcome::Replay(idem("r1", 1))
        ]
    );
    assert_eq!(s.list_issuances(C1).await.unwrap().len(), 1);
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        1
    );
    assert_eq!(s.write_batch(&[]).await.unwrap(), vec![]);
}

/// (e) Every cache-relevant write moves the change epoch; the request path's batch writes do not.
pub async fn change_epoch_moves_with_every_cache_relevant_write(env: &Env) {
    let s = env.store().await;
    let mut epoch = s.change_epoch().await.unwrap();
    macro_rules! moves {
        ($what:literal, $write:expr) => {{
            $write.await.unwrap();
            let now = s.change_epoch().await.unwrap();
            assert!(now > epoch, "{} must move the change epoch", $what);
            epoch = now;
        }};
    }
    macro_rules! stays {
        ($what:literal, $write:expr) => {{
            $write.await.unwrap();
            assert_eq!(
                s.change_epoch().await.unwrap(),
                epoch,
                "{} must not move the change epoch",
                $what
            );
        }};
    }
    moves!(
        "create_resource",
        s.create_resource(&res("k", C1, PARENT), Some(&ca(C1)), None, None)
    );
    moves!(
        "update_resource",
        s.update_resource(&res("k", C1, PARENT), None)
    );
    moves!("put_principal", s.put_principal(&principal("u")));
    moves!(
        "put_bearer_token",
        s.put_bearer_token(&[1; 32], "u", 1, None)
    );
    moves!("revoke_bearer_tokens", s.revoke_bearer_tokens("u", None));
    moves!(
        "set_policy",
        s.set_policy(&policy("projects/p", 1, &[1]), None, None)
    );
    moves!(
        "put_ca",
        s.put_ca(&CaRecord {
            owner: "server".into(),
            ..ca("x")
        })
    );
    moves!(
        "put_signing_key",
        s.put_signing_key(&SigningKeyRecord {
            kid: "k1".into(),
            key_der: vec![1],
            create_time_unix: 1,
        })
    );
    moves!(
        "replace_sealed_keys",
        s.replace_sealed_keys(
            &[SealedKey {
                kind: "ca".into(),
                id: "server".into(),
                sealed: vec![5],
            }],
            None
        )
    );
    moves!("delete_resource", s.delete_resource("k", C1, None, None));
    stays!(
        "write_batch",
        s.write_batch(&[WriteItem::Audit(event(1, "user:admin", C1))])
    );
    stays!(
        "record_issuance",
        s.record_issuance(&issuance("s1", C1, Some("r")), Some(&idem("r", 1)), None)
    );
    stays!(
        "record_token",
        s.record_token(
            &TokenRecord {
                token_id: "t".into(),
                owner: C1.into(),
                subject: "a".into(),
                expires_unix: 1,
                create_time_unix: 1,
            },
            None
        )
    );
    stays!("append_audit", s.append_audit(&event(2, "user:admin", C1)));
    stays!("next_counter", s.next_counter("c"));
    let _ = epoch;
}

/// (f) A bearer token's expiry is stored and honoured: valid before its second, not from it on.
pub async fn bearer_tokens_expire(env: &Env) {
    let s = env.store().await;
    let p = principal("admin");
    s.put_principal(&p).await.unwrap();
    s.put_bearer_token(&[6; 32], "admin", 1, Some(100))
        .await
        .unwrap();
    s.put_bearer_token(&[7; 32], "admin", 1, None)
        .await
        .unwrap();
    assert_eq!(
        s.bearer(&[6; 32]).await.unwrap(),
        Some(BearerRecord {
            principal: p.clone(),
            expires_unix: Some(100)
        })
    );
    assert_eq!(
        s.bearer(&[7; 32]).await.unwrap(),
        Some(BearerRecord {
            principal: p.clone(),
            expires_unix: None
        })
    );
    assert_eq!(s.bearer(&[8; 32]).await.unwrap(), None);
    assert_eq!(
        s.principal_for_bearer(&[6; 32], 99).await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(s.principal_for_bearer(&[6; 32], 100).await.unwrap(), None);
    assert_eq!(
        s.principal_for_bearer(&[7; 32], i64::MAX).await.unwrap(),
        Some(p)
    );
}

/// (g) A cache over one instance sees a change made through another instance once its staleness interval has
/// passed, and a change made through itself at once.
pub async fn cache_sees_other_writers_within_its_staleness(env: &Env) {
    const STALENESS: Duration = Duration::from_millis(100);
    let (s1, s2) = (env.store().await, env.store().await);
    let cache = CachedStore::new(s1.clone(), STALENESS);
    s2.set_policy(&policy("projects/p", 1, &[1]), None, None)
        .await
        .unwrap();
    s2.create_resource(&res("k", C1, PARENT), None, None, None)
        .await
        .unwrap();
    s2.put_principal(&principal("u")).await.unwrap();
    s2.put_bearer_token(&[1; 32], "u", 1, None).await.unwrap();
    // Fill the cache.
    assert_eq!(
        cache.get_policy("projects/p").await.unwrap().unwrap().data,
        [1]
    );
    assert!(cache.get_resource("k", C1).await.unwrap().is_some());
    assert!(
        cache
            .principal_for_bearer(&[1; 32], 2)
            .await
            .unwrap()
            .is_some()
    );

    // Another replica changes all three; the cache may answer from memory until the interval passes.
    s2.set_policy(&policy("projects/p", 2, &[2]), None, None)
        .await
        .unwrap();
    s2.delete_resource("k", C1, None, None).await.unwrap();
    s2.revoke_bearer_tokens("u", None).await.unwrap();
    tokio::time::sleep(STALENESS * 3).await;
    assert_eq!(
        cache.get_policy("projects/p").await.unwrap().unwrap().data,
        [2]
    );
    assert!(cache.get_resource("k", C1).await.unwrap().is_none());
    assert!(
        cache
            .principal_for_bearer(&[1; 32], 2)
            .await
            .unwrap()
            .is_none()
    );

    // A change through the cache is visible through it at once.
    cache
        .set_policy(&policy("projects/p", 3, &[3]), Some(&[2]), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get_policy("projects/p").await.unwrap().unwrap().data,
        [3]
    );
    cache
        .create_resource(&res("k", C1, PARENT), None, None, None)
        .await
        .unwrap();
    assert!(cache.get_resource("k", C1).await.unwrap().is_some());
}

/// Replicas starting together on an empty store agree on one audit key.
pub async fn concurrent_first_audit_keys_agree(env: &Env) {
    let stores = [env.store().await, env.store().await];
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            s.put_audit_key(&AuditKeyRecord {
                kid: format!("key{i}"),
                key_der: vec![i as u8],
                public_key: vec![i as u8],
                create_time_unix: 1,
            })
            .await
            .unwrap()
        }));
    }
    let mut kept = HashSet::new();
    for task in tasks {
        kept.insert(task.await.unwrap().kid);
    }
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(stores[0].audit_keys().await.unwrap().len(), 1);
}

/// Replicas starting together: one first signing key, one administrator with one token.
pub async fn concurrent_first_starts_agree_on_key_and_administrator(env: &Env) {
    let stores = [env.store().await, env.store().await];
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let s = stores[usize::from(i) % 2].clone();
        tasks.push(tokio::spawn(async move {
            let key = s
                .first_signing_key(&SigningKeyRecord {
                    kid: format!("sig{i}"),
                    key_der: vec![i],
                    create_time_unix: 1,
                })
                .await
                .unwrap();
            let admin = PrincipalRecord {
                id: "admin".into(),
                kind: "user".into(),
                display_name: "first".into(),
                create_time_unix: 1,
            };
            let created = s.create_user(&admin, &[i; 32], None).await.unwrap();
            (key.kid, created, i)
        }));
    }
    let mut kids = HashSet::new();
    let mut creators = Vec::new();
    for task in tasks {
        let (kid, created, i) = task.await.unwrap();
        kids.insert(kid);
        if created {
            creators.push(i);
        }
    }
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert_eq!(stores[0].signing_keys().await.unwrap().len(), 1);
    assert_eq!(creators.len(), 1, "{creators:?}");
    let winner = creators[0];
    for i in 0..6u8 {
        let found = stores[1].principal_for_bearer(&[i; 32], 0).await.unwrap();
        assert_eq!(
            found.is_some(),
            i == winner,
            "only the creator's token exists"
        );
    }
    // With a key stored, a later first start keeps it.
    let kept = stores[1]
        .first_signing_key(&SigningKeyRecord {
            kid: "late".into(),
            key_der: vec![9],
            create_time_unix: 2,
        })
        .await
        .unwrap();
    assert!(kids.contains(&kept.kid));
}

/// Old request ids go oldest first, in batches of the size asked; newer ones stay.
pub async fn expired_request_ids_are_purged_in_bounded_batches(env: &Env) {
    let s = env.store().await;
    for n in 0..5 {
        let rid = format!("old{n}");
        let mut record = idem(&rid, n);
        record.create_time_unix = 10 + i64::from(n);
        s.record_issuance(
            &issuance(&format!("s{n}"), C1, Some(&rid)),
            Some(&record),
            None,
        )
        .await
        .unwrap();
    }
    let mut fresh = idem("fresh", 9);
    fresh.create_time_unix = 500;
    s.record_issuance(&issuance("s9", C1, Some("fresh")), Some(&fresh), None)
        .await
        .unwrap();
    assert_eq!(s.purge_idempotency(100, 2).await.unwrap(), 2);
    assert!(
        s.get_idempotent(&fresh.scope, "old0")
            .await
            .unwrap()
            .is_none(),
        "oldest first"
    );
    assert!(
        s.get_idempotent(&fresh.scope, "old2")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.purge_idempotency(100, 2).await.unwrap(), 2);
    assert_eq!(s.purge_idempotency(100, 2).await.unwrap(), 1);
    assert_eq!(s.purge_idempotency(100, 2).await.unwrap(), 0);
    assert_eq!(
        s.get_idempotent(&fresh.scope, "fresh").await.unwrap(),
        Some(fresh)
    );
    assert_eq!(
        s.list_issuances(C1).await.unwrap().len(),
        6,
        "issuance records are kept"
    );
}

pub async fn issuances_revoke_by_serial_or_subject_once(env: &Env) {
    let s = env.store().await;
    let owner = ca_owner("alloydb.Cluster", C1);
    let other = ca_owner("alloydb.Cluster", "projects/p/locations/l/clusters/c2");
    let mut records = Vec::new();
    for (serial, subject, owner, not_after) in [
        ("a1", "alice", &owner, 1000),
        ("a2", "alice", &owner, 1000),
        ("a3", "alice", &owner, 50),
        ("b1", "bob", &owner, 1000),
        ("a9", "alice", &other, 1000),
    ] {
        let mut r = issuance(serial, owner, None);
        r.subject = subject.into();
        r.not_after_unix = not_after;
        r.metadata_exchange = serial == "a2";
        s.record_issuance(&r, None, None).await.unwrap();
        records.push(r);
    }
    let got = s.get_issuance("a2").await.unwrap().unwrap();
    assert_eq!(
        got.record, records[1],
        "the metadata exchange flag round-trips"
    );
    assert_eq!(got.revoke_time_unix, None);
    assert_eq!(s.get_issuance("zz").await.unwrap(), None);

    let head = s.audit_head().await.unwrap();
    let by_serial = RevocationTarget::Serial {
        owner: owner.clone(),
        serial_hex: "b1".into(),
    };
    assert_eq!(
        s.revoke_issuances(&by_serial, 100, Some(&event(1, "user:admin", C1)))
            .await
            .unwrap(),
        vec!["b1".to_string()]
    );
    assert_eq!(
        s.get_issuance("b1")
            .await
            .unwrap()
            .unwrap()
            .revoke_time_unix,
        Some(100)
    );
    // Again: nothing new, the first time stays, and no second audit event.
    let after_first = s.audit_head().await.unwrap();
    assert_ne!(after_first, head, "the revocation is audited");
    assert!(
        s.revoke_issuances(&by_serial, 200, Some(&event(2, "user:admin", C1)))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.get_issuance("b1")
            .await
            .unwrap()
            .unwrap()
            .revoke_time_unix,
        Some(100)
    );
    assert_eq!(s.audit_head().await.unwrap(), after_first);
    // A serial of another CA is not this owner's to revoke.
    assert!(
        s.revoke_issuances(
            &RevocationTarget::Serial {
                owner: owner.clone(),
                serial_hex: "a9".into()
            },
            100,
            None
        )
        .await
        .unwrap()
        .is_empty()
    );

    // All of alice's unexpired certificates of this CA: not the expired one, not the other CA's.
    let by_subject = RevocationTarget::Subject {
        owner: owner.clone(),
        subject: "alice".into(),
    };
    assert_eq!(
        s.revoke_issuances(&by_subject, 100, None).await.unwrap(),
        vec!["a1".to_string(), "a2".to_string()]
    );
    assert_eq!(
        s.get_issuance("a3")
            .await
            .unwrap()
            .unwrap()
            .revoke_time_unix,
        None
    );
    assert_eq!(
        s.get_issuance("a9")
            .await
            .unwrap()
            .unwrap()
            .revoke_time_unix,
        None
    );
}

pub async fn resources_of_a_kind_list_across_parents(env: &Env) {
    let s = env.store().await;
    for name in [
        "projects/p/locations/l/clusters/c1/instances/i1",
        "projects/p/locations/l/clusters/c2/instances/i0",
        "projects/q/locations/l/clusters/c1/instances/i1",
    ] {
        let parent = name.rsplit_once("/instances/").unwrap().0;
        s.create_resource(&res("alloydb.Instance", name, parent), None, None, None)
            .await
            .unwrap();
    }
    s.create_resource(&res("alloydb.Cluster", C1, PARENT), None, None, None)
        .await
        .unwrap();
    let page = s
        .list_all_resources("alloydb.Instance", None, 2)
        .await
        .unwrap();
    let names: Vec<_> = page.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "projects/p/locations/l/clusters/c1/instances/i1",
            "projects/p/locations/l/clusters/c2/instances/i0"
        ]
    );
    let rest = s
        .list_all_resources("alloydb.Instance", Some(names[1]), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        rest[0].name,
        "projects/q/locations/l/clusters/c1/instances/i1"
    );
}

/// Issuance and token records whose credential expired before the cutoff go, the earliest expiry first and at
/// most `limit` rows a call (issuances, then tokens); records that expire at or after the cutoff stay.
pub async fn expired_issuances_and_tokens_are_purged_in_bounded_batches(env: &Env) {
    let s = env.store().await;
    let expiring = |serial: &str, not_after: i64| IssuanceRecord {
        not_after_unix: not_after,
        ..issuance(serial, C1, None)
    };
    // Written latest expiry first, so "earliest expiry first" is not insertion order.
    for (n, not_after) in [14, 13, 12, 11, 10, 100, 500].into_iter().enumerate() {
        s.record_issuance(&expiring(&format!("s{n}"), not_after), None, None)
            .await
            .unwrap();
    }
    for (id, expires) in [("t600", 600), ("t21", 21), ("t100", 100), ("t20", 20)] {
        let token = TokenRecord {
            token_id: id.into(),
            owner: C1.into(),
            subject: "sa".into(),
            expires_unix: expires,
            create_time_unix: 1,
        };
        s.record_token(&token, None).await.unwrap();
    }
    let kept = || async {
        let mut left: Vec<i64> = s
            .list_issuances(C1)
            .await
            .unwrap()
            .iter()
            .map(|i| i.not_after_unix)
            .collect();
        left.sort_unstable();
        left
    };
    assert_eq!(s.purge_expired_issuances(100, 2).await.unwrap(), 2);
    assert_eq!(
        kept().await,
        [12, 13, 14, 100, 500],
        "the earliest expiries went"
    );
    assert_eq!(s.purge_expired_issuances(100, 2).await.unwrap(), 2);
    assert_eq!(kept().await, [14, 100, 500]);
    // The last old issuance and the first old token share a batch.
    assert_eq!(s.purge_expired_issuances(100, 2).await.unwrap(), 2);
    assert_eq!(kept().await, [100, 500]);
    // One old token is left; the tokens expiring at the cutoff and after it stay.
    assert_eq!(s.purge_expired_issuances(100, 2).await.unwrap(), 1);
    assert_eq!(s.purge_expired_issuances(100, 2).await.unwrap(), 0);
    assert_eq!(
        kept().await,
        [100, 500],
        "expiring at the cutoff or later: kept"
    );
    // A later cutoff takes the rest of what it covers, and a batch of 10 is not filled by anything newer.
    assert_eq!(s.purge_expired_issuances(101, 10).await.unwrap(), 2);
    assert_eq!(kept().await, [500]);
    assert_eq!(s.purge_expired_issuances(i64::MAX, 10).await.unwrap(), 2);
    assert!(kept().await.is_empty());
}
