-- Postgres' V19 splits its search words at punctuation, as SQLite's FTS5 tokenizer always has: nothing
-- to change here. The version exists so both databases have the same migration numbers.
SELECT 1;
