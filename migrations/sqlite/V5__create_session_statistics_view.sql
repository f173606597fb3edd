-- One row per session with its message counts.
CREATE VIEW session_statistics AS
SELECT
    s.session_id,
    s.user_id,
    s.state,
    s.is_resolved,
    s.created_at,
    COUNT(m.id) AS message_count,
    COALESCE(SUM(CASE WHEN m.direction = 'inbound' THEN 1 ELSE 0 END), 0) AS inbound_count,
    COALESCE(SUM(CASE WHEN m.direction = 'outbound' THEN 1 ELSE 0 END), 0) AS outbound_count,
    MIN(m.created_at) AS first_message_at,
    MAX(m.created_at) AS last_message_at
FROM chat_sessions s
LEFT JOIN chat_messages m ON m.session_id = s.session_id
GROUP BY s.session_id;
