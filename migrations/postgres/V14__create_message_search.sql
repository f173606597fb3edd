-- Full-text search over message content: a tsvector kept in step with the content by Postgres
-- itself (a stored generated column: computed on insert and on every edit; a deleted message's
-- content is empty) and a GIN index on it. The 'simple' configuration (no stemming, no stop words)
-- treats every language alike, as SQLite's FTS5 tokenizer does.
ALTER TABLE chat_messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED;

CREATE INDEX idx_chat_messages_search ON chat_messages USING gin (search);
