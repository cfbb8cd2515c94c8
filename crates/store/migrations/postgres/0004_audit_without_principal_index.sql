-- Every request appends audit events; an index on (principal, seq) puts each one at its principal's place in
-- the index, a page written per event under load (measured: a third of the pages a token commit writes).
-- Audit queries by principal are the operator's (clustercred audit), rare: they scan the log in order, or the
-- time range they give through audit_by_time.
DROP INDEX IF EXISTS audit_by_principal;
