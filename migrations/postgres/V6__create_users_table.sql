CREATE TABLE users (
    id            UUID         PRIMARY KEY,
    username      VARCHAR(64)  NOT NULL,
    email         VARCHAR(254),
    password_hash TEXT         NOT NULL,
    role          VARCHAR(16)  NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'agent')),
    created_at    TIMESTAMPTZ  NOT NULL,
    updated_at    TIMESTAMPTZ  NOT NULL
);
-- Usernames are unique regardless of case.
CREATE UNIQUE INDEX idx_users_username ON users (lower(username));
