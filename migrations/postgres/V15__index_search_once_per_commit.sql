-- SQLite's V15 changes how its FTS5 index is kept in step (once per transaction). Postgres computes the
-- search column with each row and its GIN index takes new entries in its pending list: nothing to change.
-- The version exists so both databases have the same migration numbers.
SELECT 1;
