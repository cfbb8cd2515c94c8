-- Version 4: anchoring the audit chain. One Ed25519 key (sealed under the master key) signs checkpoints of
-- the chain head.
CREATE TABLE audit_keys (
    kid TEXT PRIMARY KEY,
    key_der BLOB NOT NULL,
    public_key BLOB NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE audit_checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    time_nanos INTEGER NOT NULL,
    kid TEXT NOT NULL,
    signature BLOB NOT NULL
);
