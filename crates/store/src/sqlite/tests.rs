use super::*;

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
    }
}

const PARENT: &str = "projects/p/locations/l";
const C1: &str = "projects/p/locations/l/clusters/c1";

#[tokio::test]
async fn create_get_list_delete_with_children_and_ca() {
    let s = SqliteStore::in_memory().await.unwrap();
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
    // Duplicate: refused, and the operation of the failed attempt is not written.
    let dup = s
        .create_resource(&res("a.Cluster", C1, PARENT), None, Some(&op("o3")), None)
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists)));
    assert!(s.get_operation(&op("o3").name).await.unwrap().is_none());

    assert_eq!(
        s.get_resource("a.Cluster", C1).await.unwrap().unwrap().data,
        C1.as_bytes()
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
        s.get_resource("b.Cluster", C1).await.unwrap().is_some()
            && s.get_resource("b.Instance", &inst).await.unwrap().is_some()
            && s.get_ca(&ca_owner("b.Cluster", C1))
                .await
                .unwrap()
                .is_some(),
        "a delete removes children of its own API only"
    );
}

#[tokio::test]
async fn delete_does_not_touch_names_sharing_a_prefix() {
    let s = SqliteStore::in_memory().await.unwrap();
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
}

#[tokio::test]
async fn list_pages_in_name_order() {
    let s = SqliteStore::in_memory().await.unwrap();
    for (i, n) in ["c3", "c1", "c2"].iter().enumerate() {
        let name = format!("{PARENT}/clusters/{n}");
        s.create_resource(
            &res("k", &name, PARENT),
            None,
            Some(&op(&format!("o{i}"))),
            None,
        )
        .await
        .unwrap();
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
    let page1 = s.list_resources("k", PARENT, None, 2).await.unwrap();
    let names: Vec<_> = page1
        .iter()
        .map(|r| r.name.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["c1", "c2"]);
    let page2 = s
        .list_resources("k", PARENT, Some(&page1[1].name), 2)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert!(page2[0].name.ends_with("/c3"));
}

#[tokio::test]
async fn issuance_with_idempotency_replays_the_first_winner() {
    let s = SqliteStore::in_memory().await.unwrap();
    let idem = IdempotencyRecord {
        scope: "alloydb.generateClientCertificate".into(),
        request_id: "r1".into(),
        request_hash: vec![1],
        response: vec![42],
        create_time_unix: 100,
    };
    assert_eq!(
        s.record_issuance(&issuance("s1", C1, Some("r1")), Some(&idem), None)
            .await
            .unwrap(),
        IssuanceOutcome::Recorded
    );
    let mut second = idem.clone();
    second.response = vec![43];
    match s
        .record_issuance(&issuance("s2", C1, Some("r1")), Some(&second), None)
        .await
        .unwrap()
    {
        IssuanceOutcome::Replay(r) => assert_eq!(r.response, vec![42]),
        other => panic!("expected replay, got {other:?}"),
    }
    let recorded = s.list_issuances(C1).await.unwrap();
    assert_eq!(recorded.len(), 1, "the loser's certificate is not recorded");
    assert_eq!(recorded[0].serial_hex, "s1");
    assert_eq!(
        s.get_idempotent(&idem.scope, "r1")
            .await
            .unwrap()
            .unwrap()
            .response,
        vec![42]
    );
    assert_eq!(s.purge_idempotency(101).await.unwrap(), 1);
    assert!(s.get_idempotent(&idem.scope, "r1").await.unwrap().is_none());
}

#[tokio::test]
async fn counters_principals_tokens_keys() {
    let s = SqliteStore::in_memory().await.unwrap();
    assert_eq!(s.next_counter("ip").await.unwrap(), 1);
    assert_eq!(s.next_counter("ip").await.unwrap(), 2);
    assert_eq!(s.next_counter("other").await.unwrap(), 1);

    let p = PrincipalRecord {
        id: "admin".into(),
        kind: "user".into(),
        display_name: "Administrator".into(),
        create_time_unix: 1,
    };
    s.put_principal(&p).await.unwrap();
    s.put_bearer_token(&[7; 32], "admin", 1, None)
        .await
        .unwrap();
    assert_eq!(
        s.principal_for_bearer(&[7; 32], 2).await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(s.principal_for_bearer(&[8; 32], 2).await.unwrap(), None);
    // An expiring token works until its second, not from it on; revoking removes every token of the principal.
    s.put_bearer_token(&[6; 32], "admin", 1, Some(100))
        .await
        .unwrap();
    assert_eq!(s.principal_for_bearer(&[6; 32], 99).await.unwrap(), Some(p));
    assert_eq!(s.principal_for_bearer(&[6; 32], 100).await.unwrap(), None);
    assert_eq!(s.revoke_bearer_tokens("admin", None).await.unwrap(), 2);
    assert_eq!(s.principal_for_bearer(&[7; 32], 2).await.unwrap(), None);
    // A token for a principal that does not exist is refused by the foreign key.
    assert!(
        s.put_bearer_token(&[9; 32], "ghost", 1, None)
            .await
            .is_err()
    );

    let k = SigningKeyRecord {
        kid: "k1".into(),
        key_der: vec![1],
        create_time_unix: 5,
    };
    s.put_signing_key(&k).await.unwrap();
    assert_eq!(s.signing_keys().await.unwrap(), vec![k]);
}

#[tokio::test]
async fn file_database_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        s.create_resource(&res("k", C1, PARENT), Some(&ca(C1)), Some(&op("o1")), None)
            .await
            .unwrap();
        s.close().await;
    }
    let s = SqliteStore::open(&path).await.unwrap();
    assert!(s.get_resource("k", C1).await.unwrap().is_some());
    assert!(s.get_operation(&op("o1").name).await.unwrap().is_some());
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

#[tokio::test]
async fn audit_events_chain_and_filter() {
    let s = SqliteStore::in_memory().await.unwrap();
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
    assert!(all[0].prev_hash.is_empty());
    assert_eq!(all[1].prev_hash, all[0].hash);
    let admin = s
        .list_audit(&AuditFilter {
            principal: Some("user:admin".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(admin.len(), 2);
    let below = s
        .list_audit(&AuditFilter {
            resource_prefix: Some("projects/p/locations/l".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(below.len(), 2);
    let window = s
        .list_audit(&AuditFilter {
            since_unix_nanos: Some(2),
            until_unix_nanos: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 1);
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

#[tokio::test]
async fn policies_compare_and_set_on_etag() {
    let s = SqliteStore::in_memory().await.unwrap();
    assert!(s.get_policy("projects/p").await.unwrap().is_none());
    let p1 = PolicyRecord {
        resource: "projects/p".into(),
        data: vec![1],
        etag: vec![1, 1],
        update_time_unix: 1,
    };
    s.set_policy(&p1, Some(&[]), None).await.unwrap();
    assert_eq!(s.get_policy("projects/p").await.unwrap(), Some(p1.clone()));
    let p2 = PolicyRecord {
        data: vec![2],
        etag: vec![2, 2],
        ..p1.clone()
    };
    assert!(matches!(
        s.set_policy(&p2, Some(&[9]), None).await,
        Err(StoreError::Conflict)
    ));
    s.set_policy(
        &p2,
        Some(&[1, 1]),
        Some(&event(5, "user:admin", "projects/p")),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_policy("projects/p").await.unwrap().unwrap().data,
        vec![2]
    );
    s.set_policy(&p1, None, None).await.unwrap();
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn same_name_in_two_apis_keeps_two_cas() {
    let s = SqliteStore::in_memory().await.unwrap();
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
    assert_eq!(
        s.get_ca(&alloy.owner).await.unwrap().unwrap().cert_pem,
        "ALLOYDB"
    );
    assert_eq!(
        s.get_ca(&edge.owner).await.unwrap().unwrap().cert_pem,
        "EDGE"
    );
    s.delete_resource("edgecontainer.Cluster", C1, None, None)
        .await
        .unwrap();
    assert!(s.get_ca(&edge.owner).await.unwrap().is_none());
    assert_eq!(
        s.get_ca(&alloy.owner).await.unwrap().unwrap().cert_pem,
        "ALLOYDB",
        "the other API's CA stays"
    );
}

#[tokio::test]
async fn checkpoints_only_for_events_on_the_chain_and_one_audit_key() {
    let s = SqliteStore::in_memory().await.unwrap();
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

    let key = |kid: &str| AuditKeyRecord {
        kid: kid.into(),
        key_der: vec![1],
        public_key: vec![2],
        create_time_unix: 1,
    };
    assert_eq!(s.put_audit_key(&key("first")).await.unwrap().kid, "first");
    assert_eq!(
        s.put_audit_key(&key("second")).await.unwrap().kid,
        "first",
        "the first key stays"
    );
    assert_eq!(s.audit_keys().await.unwrap().len(), 1);
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

#[tokio::test]
async fn a_batch_claims_request_ids_in_order_and_chains_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    let idem = |response: u8| IdempotencyRecord {
        scope: "alloydb.generateClientCertificate".into(),
        request_id: "r1".into(),
        request_hash: vec![1],
        response: vec![response],
        create_time_unix: 100,
    };
    let token = TokenRecord {
        token_id: "t1".into(),
        owner: C1.into(),
        subject: "sa".into(),
        expires_unix: 200,
        create_time_unix: 100,
    };
    let items = vec![
        WriteItem::Audit(event(1, "anonymous", C1)),
        WriteItem::Issuance {
            issuance: issuance("s1", C1, Some("r1")),
            idempotency: Some(idem(42)),
            audit: Some(event(2, "user:admin", C1)),
        },
        WriteItem::Issuance {
            issuance: issuance("s2", C1, Some("r1")),
            idempotency: Some(idem(43)),
            audit: Some(event(3, "user:admin", C1)),
        },
        WriteItem::Issuance {
            issuance: issuance("s3", C1, None),
            idempotency: None,
            audit: Some(event(4, "user:admin", C1)),
        },
        WriteItem::Token {
            token,
            audit: Some(event(5, "agent", C1)),
        },
    ];
    let outcomes = s.write_batch(&items).await.unwrap();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(outcomes[1], IssuanceOutcome::Recorded);
    match &outcomes[2] {
        IssuanceOutcome::Replay(r) => assert_eq!(r.response, vec![42], "the first item won"),
        other => panic!("expected a replay, got {other:?}"),
    }
    let serials: Vec<String> = s
        .list_issuances(C1)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.serial_hex)
        .collect();
    assert_eq!(serials, ["s1", "s3"], "the loser wrote nothing");
    let events = s.list_audit(&AuditFilter::default()).await.unwrap();
    let times: Vec<i64> = events.iter().map(|e| e.event.time_unix_nanos).collect();
    assert_eq!(times, [1, 2, 4, 5], "in item order, without the loser's");
    verify_chain(&events).unwrap();

    // Concurrent single writes from many tasks are grouped and still form one chain.
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move { s.append_audit(&event(100 + n, "user:x", C1)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 68);
    verify_chain(&events).unwrap();
}
