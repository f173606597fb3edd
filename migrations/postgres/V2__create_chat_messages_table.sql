-- Chat messages; ids are time-ordered UUIDv7, so ordering by id is ordering by time.
CREATE TABLE chat_messages (
    id         UUID        PRIMARY KEY,
    session_id UUID        NOT NULL REFERENCES chat_sessions (session_id) ON DELETE CASCADE,
    user_id    UUID,
    content    TEXT        NOT NULL,
    type       VARCHAR(32) NOT NULL DEFAULT 'text',
    direction  VARCHAR(10) NOT NULL DEFAULT 'inbound' CHECK (direction IN ('inbound', 'outbound')),
    metadata   JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
