-- Indexes that every issuance or audit event writes into at a place of its own, for queries that are rare.
--
-- audit_by_principal (principal, seq): each event goes to its principal's place in the index, a page written
-- per event under load (measured on SQLite: a third of the pages a token commit wrote). Audit queries by
-- principal are the operator's (clustercred audit): they scan the log in order, or the time range they give
-- (audit_by_time).
DROP INDEX IF EXISTS audit_by_principal;
-- issuances_by_owner (owner, create_time): a second index led by the owner beside issuances_by_subject
-- (owner, subject), which serves the listing of an owner's issuances as well (sorted after the lookup).
DROP INDEX IF EXISTS issuances_by_owner;
