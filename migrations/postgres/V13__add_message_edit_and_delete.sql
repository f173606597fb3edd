-- The author (or an admin) may edit a message (edited_at) or delete it, leaving a tombstone without
-- content (deleted_at).
ALTER TABLE chat_messages ADD COLUMN edited_at TIMESTAMPTZ;
ALTER TABLE chat_messages ADD COLUMN deleted_at TIMESTAMPTZ;
