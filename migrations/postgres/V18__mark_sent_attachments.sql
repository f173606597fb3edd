-- When a message first carried the attachment. A complete upload that no message carries stays its
-- uploader's (counted in their quota) until the background sweep removes it, a day after it completed.
ALTER TABLE attachments ADD COLUMN sent_at TIMESTAMPTZ;
UPDATE attachments SET sent_at = completed_at
WHERE completed_at IS NOT NULL AND id IN (
    SELECT (f ->> 'id')::uuid FROM chat_messages m, jsonb_array_elements(m.attachments) f WHERE m.attachments <> '[]'::jsonb
);
CREATE INDEX idx_attachments_unsent ON attachments (completed_at) WHERE sent_at IS NULL;
