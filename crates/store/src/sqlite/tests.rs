//! SQLite-only cases. The backend-independent ones live in the store test kit (crates/store/tests/kit.rs),
//! which runs each on SQLite and PostgreSQL.

use super::*;

const C1: &str = "projects/p/locations/l/clusters/c1";

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
