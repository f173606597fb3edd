-- Chat sessions: one conversation owned by one user.
CREATE TABLE chat_sessions (
    session_id  UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL,
    metadata    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    state       VARCHAR(20) NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'expired', 'resolved')),
    is_resolved BOOLEAN     NOT NULL DEFAULT FALSE,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
