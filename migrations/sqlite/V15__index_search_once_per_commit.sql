-- Index new and edited messages once per transaction instead of once per statement. FTS5 writes what
-- it has pending as a new index segment at the start of every statement that touches it, so a trigger
-- that inserted into message_search made one segment (and later merge work) per message. The triggers
-- now record the messages to index in message_search_queue; the store's writer indexes the queued
-- messages and empties the queue in the same transaction, just before it commits, so no committed
-- state has the index out of step. Edits and removals of messages already indexed still take their
-- old text out of the index at once; a message indexed later (still queued) needs nothing taken out.
CREATE TABLE message_search_queue (message_rowid INTEGER PRIMARY KEY);

DROP TRIGGER message_search_insert;
DROP TRIGGER message_search_update;
DROP TRIGGER message_search_delete;

CREATE TRIGGER message_search_insert AFTER INSERT ON chat_messages BEGIN
    INSERT INTO message_search_queue (message_rowid) VALUES (NEW.rowid);
END;

CREATE TRIGGER message_search_update AFTER UPDATE OF content ON chat_messages BEGIN
    INSERT INTO message_search (message_search, rowid, content)
        SELECT 'delete', OLD.rowid, OLD.content
        WHERE NOT EXISTS (SELECT 1 FROM message_search_queue WHERE message_rowid = OLD.rowid);
    INSERT OR IGNORE INTO message_search_queue (message_rowid) VALUES (NEW.rowid);
END;

CREATE TRIGGER message_search_delete AFTER DELETE ON chat_messages BEGIN
    INSERT INTO message_search (message_search, rowid, content)
        SELECT 'delete', OLD.rowid, OLD.content
        WHERE NOT EXISTS (SELECT 1 FROM message_search_queue WHERE message_rowid = OLD.rowid);
    DELETE FROM message_search_queue WHERE message_rowid = OLD.rowid;
END;
