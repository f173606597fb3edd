-- Files uploaded into a session, stored in the database (backup, copy and restore carry them) in
-- chunks of 256 KiB, so an upload is written and a range is read a chunk at a time. An upload is
-- visible only once complete (completed_at); one interrupted (a lost client, a crash) is removed by
-- the background sweep. Deleting a session or a user deletes their attachments.
CREATE TABLE attachments (
    id           TEXT PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL REFERENCES chat_sessions (session_id) ON DELETE CASCADE,
    user_id      TEXT REFERENCES users (id) ON DELETE CASCADE,
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL DEFAULT 0,
    sha256       TEXT,
    created_at   TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX idx_attachments_session ON attachments (session_id);
CREATE INDEX idx_attachments_user ON attachments (user_id);
CREATE INDEX idx_attachments_created ON attachments (created_at);

CREATE TABLE attachment_chunks (
    attachment_id TEXT NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (attachment_id, seq)
);

-- The attachments a message refers to: [{id, filename, contentType, size}], fixed when it is sent.
ALTER TABLE chat_messages ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(attachments));
