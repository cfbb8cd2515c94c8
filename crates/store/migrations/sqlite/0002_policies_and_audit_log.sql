-- Version 2: IAM policies and the hash-chained audit log.
CREATE TABLE policies (
    resource TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    etag BLOB NOT NULL,
    update_time INTEGER NOT NULL
);

CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    principal TEXT NOT NULL,
    method TEXT NOT NULL,
    resource TEXT NOT NULL,
    time_nanos INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX audit_by_principal ON audit_events (principal, seq);
CREATE INDEX audit_by_time ON audit_events (time_nanos);
