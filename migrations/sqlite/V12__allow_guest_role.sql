-- migration: foreign keys off
-- Guests (role 'guest'): visitors of a website chatting through the widget without an account.
-- SQLite cannot change a CHECK constraint, so the table is rebuilt (the runner turns foreign key
-- enforcement off while this runs, so the rows that refer to users are kept, and checks them after).
CREATE TABLE users_new (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL,
    email         TEXT,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'agent', 'guest')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    disabled_at   TEXT
);
INSERT INTO users_new (id, username, email, password_hash, role, created_at, updated_at, disabled_at)
    SELECT id, username, email, password_hash, role, created_at, updated_at, disabled_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
CREATE UNIQUE INDEX idx_users_username ON users (lower(username));
CREATE INDEX idx_users_role_created ON users (role, created_at);
