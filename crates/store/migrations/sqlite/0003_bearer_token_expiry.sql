-- Version 3: user bearer tokens may expire.
ALTER TABLE bearer_tokens ADD COLUMN expire_time INTEGER;
