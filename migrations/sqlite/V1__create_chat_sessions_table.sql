-- Chat sessions: one conversation owned by one user.
CREATE TABLE chat_sessions (
    session_id  TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL,
    metadata    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    state       TEXT    NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'expired', 'resolved')),
    is_resolved INTEGER NOT NULL DEFAULT 0 CHECK (is_resolved IN (0, 1)),
    expires_at  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
