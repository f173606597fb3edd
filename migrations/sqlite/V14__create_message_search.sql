-- Full-text search over message content (FTS5, an external-content index keyed by the messages'
-- rowid), kept in step with chat_messages by triggers on insert, edit, delete (a deleted message's
-- content is empty) and removal. Existing messages are indexed once, here.
CREATE VIRTUAL TABLE message_search USING fts5(
    content,
    content = 'chat_messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER message_search_insert AFTER INSERT ON chat_messages BEGIN
    INSERT INTO message_search (rowid, content) VALUES (NEW.rowid, NEW.content);
END;

CREATE TRIGGER message_search_delete AFTER DELETE ON chat_messages BEGIN
    INSERT INTO message_search (message_search, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
END;

CREATE TRIGGER message_search_update AFTER UPDATE OF content ON chat_messages BEGIN
    INSERT INTO message_search (message_search, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
    INSERT INTO message_search (rowid, content) VALUES (NEW.rowid, NEW.content);
END;

INSERT INTO message_search (message_search) VALUES ('rebuild');
