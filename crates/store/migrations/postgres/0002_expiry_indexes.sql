-- Issuance and token records are purged by expiry (`--issuance-retention-days`), oldest first, in bounded
-- batches: each batch reads its rows off these indexes instead of scanning the table. IF NOT EXISTS so that a
-- large existing deployment can build them beforehand with CREATE INDEX CONCURRENTLY (no write lock) and this
-- migration then finds them in place (docs/deployment.md, "Growth and retention").
CREATE INDEX IF NOT EXISTS issuances_by_expiry ON issuances (not_after);
CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires);
