-- Words for search are split at every ASCII punctuation mark, as SQLite's FTS5 tokenizer does: Postgres'
-- text-search parser keeps an e-mail address, a URL, a path, a version number or a host as one token
-- and leaves out what looks like a tag, so `bob` did not find "bob@example.com", nor `script` find
-- "<script>". The generated column is computed again from the content with the marks turned into spaces.
DROP INDEX idx_chat_messages_search;
ALTER TABLE chat_messages DROP COLUMN search;
ALTER TABLE chat_messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (
        to_tsvector('simple', translate(content, '!"#$%&''()*+,-./:;<=>?@[\]^_`{|}~', '                                '))
    ) STORED;
CREATE INDEX idx_chat_messages_search ON chat_messages USING gin (search);
