-- One row per session with its message counts.
CREATE VIEW session_statistics AS
SELECT
    s.session_id,
    s.user_id,
    s.state,
    s.is_resolved,
    s.created_at,
    COUNT(m.id) AS message_count,
    COUNT(m.id) FILTER (WHERE m.direction = 'inbound') AS inbound_count,
    COUNT(m.id) FILTER (WHERE m.direction = 'outbound') AS outbound_count,
    MIN(m.created_at) AS first_message_at,
    MAX(m.created_at) AS last_message_at
FROM chat_sessions s
LEFT JOIN chat_messages m ON m.session_id = s.session_id
GROUP BY s.session_id;
