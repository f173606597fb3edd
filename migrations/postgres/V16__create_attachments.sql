-- Files uploaded into a session, stored in the database (backup, copy and restore carry them) in
-- chunks of 256 KiB, so an upload is written and a range is read a chunk at a time. An upload is
-- visible only once complete (completed_at); one interrupted (a lost client, a crash) is removed by
-- the background sweep. Deleting a session or a user deletes their attachments.
CREATE TABLE attachments (
    id           UUID PRIMARY KEY,
    session_id   UUID NOT NULL REFERENCES chat_sessions (session_id) ON DELETE CASCADE,
    user_id      UUID REFERENCES users (id) ON DELETE CASCADE,
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL DEFAULT 0,
    sha256       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX idx_attachments_session ON attachments (session_id);
CREATE INDEX idx_attachments_user ON attachments (user_id);
CREATE INDEX idx_attachments_created ON attachments (created_at);

CREATE TABLE attachment_chunks (
    attachment_id UUID NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    data          BYTEA NOT NULL,
    PRIMARY KEY (attachment_id, seq)
);
-- The bytes are compressed already, as often as not (images, archives): store them as they come.
ALTER TABLE attachment_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- The attachments a message refers to: [{id, filename, contentType, size}], fixed when it is sent.
ALTER TABLE chat_messages ADD COLUMN attachments JSONB NOT NULL DEFAULT '[]'::jsonb;
