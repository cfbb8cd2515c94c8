-- The AlloyDB instance endpoint. A client certificate records whether its client asked for the
-- metadata exchange, and may be revoked; revocation of all of a principal's certificates goes by subject.
ALTER TABLE issuances ADD COLUMN metadata_exchange INTEGER NOT NULL DEFAULT 0;
ALTER TABLE issuances ADD COLUMN revoke_time INTEGER;
CREATE INDEX issuances_by_subject ON issuances (owner, subject);
