-- Version 5: issuance and token records are purged by expiry (`--issuance-retention-days`), oldest first, in
-- bounded batches: each batch reads its rows off these indexes instead of scanning the table.
CREATE INDEX IF NOT EXISTS issuances_by_expiry ON issuances (not_after);
CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires);
