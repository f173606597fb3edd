-- When a message first carried the attachment. A complete upload that no message carries stays its
-- uploader's (counted in their quota) until the background sweep removes it, a day after it completed.
ALTER TABLE attachments ADD COLUMN sent_at TEXT;
UPDATE attachments SET sent_at = completed_at
WHERE completed_at IS NOT NULL AND id IN (
    SELECT json_extract(f.value, '$.id') FROM chat_messages m, json_each(m.attachments) f WHERE m.attachments <> '[]'
);
CREATE INDEX idx_attachments_unsent ON attachments (completed_at) WHERE sent_at IS NULL;
