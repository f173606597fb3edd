-- Agent orchestration: the agent answering a session, or a handoff to human agents
-- (waiting for one, or assigned to one: assignee_id is a user with role 'agent' or 'admin').
ALTER TABLE chat_sessions ADD COLUMN agent VARCHAR(64);
ALTER TABLE chat_sessions ADD COLUMN handoff VARCHAR(16) CHECK (handoff IN ('waiting', 'assigned'));
ALTER TABLE chat_sessions ADD COLUMN assignee_id UUID;
ALTER TABLE chat_sessions ADD COLUMN handoff_at TIMESTAMPTZ;
CREATE INDEX idx_chat_sessions_handoff ON chat_sessions (handoff_at, session_id) WHERE handoff IS NOT NULL;
