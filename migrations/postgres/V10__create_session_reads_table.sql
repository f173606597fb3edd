-- Read state: per session and reader, the newest message that reader has seen (message ids are
-- time-ordered, so "unread" is the messages after it that someone else wrote).
CREATE TABLE session_reads (
    session_id   UUID        NOT NULL REFERENCES chat_sessions (session_id) ON DELETE CASCADE,
    user_id      UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    last_read_id UUID        NOT NULL,
    read_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, user_id)
);
