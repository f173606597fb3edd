-- Keep updated_at current for updates that do not set it themselves.
CREATE TRIGGER chat_sessions_set_updated_at
AFTER UPDATE ON chat_sessions FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE chat_sessions SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE session_id = NEW.session_id;
END;

CREATE TRIGGER chat_messages_set_updated_at
AFTER UPDATE ON chat_messages FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE chat_messages SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE id = NEW.id;
END;
