-- clientMessageId makes sends idempotent: one message per (session, client id).
ALTER TABLE chat_messages ADD COLUMN client_message_id VARCHAR(128);
CREATE UNIQUE INDEX idx_chat_messages_client_id
    ON chat_messages (session_id, client_message_id) WHERE client_message_id IS NOT NULL;

ALTER TABLE chat_sessions ADD COLUMN resolved_at TIMESTAMPTZ;
