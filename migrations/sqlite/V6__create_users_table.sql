CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL,
    email         TEXT,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'agent')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
-- Usernames are unique regardless of case.
CREATE UNIQUE INDEX idx_users_username ON users (lower(username));
