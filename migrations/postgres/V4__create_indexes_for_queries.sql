CREATE INDEX idx_chat_sessions_user_created ON chat_sessions (user_id, created_at);
CREATE INDEX idx_chat_sessions_state_expires ON chat_sessions (state, expires_at);
CREATE INDEX idx_chat_messages_session_id ON chat_messages (session_id, id);
CREATE INDEX idx_chat_messages_created_at ON chat_messages (created_at);
