-- clustercred schema, version 1.
CREATE TABLE resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    parent TEXT NOT NULL,
    uid TEXT NOT NULL,
    data BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX resources_by_parent ON resources (kind, parent, name);

CREATE TABLE cas (
    owner TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_der BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE operations (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    data BLOB NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE INDEX operations_by_parent ON operations (parent, name);

CREATE TABLE idempotency (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX idempotency_by_time ON idempotency (create_time);

CREATE TABLE issuances (
    serial TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    requester TEXT NOT NULL,
    request_id TEXT,
    public_key_sha256 TEXT NOT NULL,
    create_time INTEGER NOT NULL
);
CREATE INDEX issuances_by_owner ON issuances (owner, create_time);

CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires INTEGER NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

CREATE TABLE principals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    display_name TEXT NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE bearer_tokens (
    token_sha256 BLOB PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    create_time INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    key_der BLOB NOT NULL,
    create_time INTEGER NOT NULL
);
