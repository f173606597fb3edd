-- Durable event webhooks: an outbox. Triggers record each event an integration subscribes to (the
-- server writes the subscribed event types to webhook_subscriptions at start, from WEBHOOKS_FILE) in
-- webhook_events, in the same transaction as the change that causes it; the server then delivers them
-- (webhook_deliveries: one row per event and webhook, in order per session, retried, then parked).
-- Without subscriptions nothing is recorded. An event's payload is the row as it was then (its columns
-- by name); the server sends it as the API writes a message or a session.
CREATE TABLE webhook_subscriptions (event TEXT PRIMARY KEY NOT NULL);

CREATE TABLE webhook_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    payload    TEXT NOT NULL CHECK (json_valid(payload)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE webhook_deliveries (
    webhook         TEXT NOT NULL,
    event_seq       INTEGER NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
    session_id      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    claimed_until   TEXT,
    last_error      TEXT,
    delivered_at    TEXT,
    PRIMARY KEY (webhook, event_seq)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_session ON webhook_deliveries (webhook, session_id, event_seq) WHERE status = 'pending';

-- How far each webhook has taken events into its deliveries.
CREATE TABLE webhook_cursors (webhook TEXT PRIMARY KEY NOT NULL, last_seq INTEGER NOT NULL);

-- A version 4 UUID for each event (its X-Chat-Event-Id).
CREATE VIEW webhook_new_id AS SELECT lower(
    substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-' ||
    substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 18, 3) || '-' || substr(h, 21, 12)) AS id
FROM (SELECT hex(randomblob(16)) AS h);

-- Each change records the event it is (its type) when some webhook subscribes to that type; without
-- subscriptions the triggers do nothing.



CREATE TRIGGER webhook_message_inserted AFTER INSERT ON chat_messages
WHEN EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = 'message.created') BEGIN
    INSERT INTO webhook_events (id, session_id, type, payload)
    SELECT n.id, NEW.session_id, k.type, json_object(
        'id', NEW.id, 'session_id', NEW.session_id, 'user_id', NEW.user_id, 'content', NEW.content, 'type', NEW.type,
        'direction', NEW.direction, 'metadata', json(NEW.metadata), 'client_message_id', NEW.client_message_id,
        'created_at', NEW.created_at, 'updated_at', NEW.updated_at, 'edited_at', NEW.edited_at, 'deleted_at', NEW.deleted_at,
        'attachments', json(NEW.attachments))
    FROM webhook_new_id n, (SELECT 'message.created' AS type) k
    WHERE k.type IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = k.type);
END;

CREATE TRIGGER webhook_message_changed AFTER UPDATE OF content, deleted_at ON chat_messages
WHEN EXISTS (SELECT 1 FROM webhook_subscriptions) BEGIN
    INSERT INTO webhook_events (id, session_id, type, payload)
    SELECT n.id, NEW.session_id, k.type, json_object(
        'id', NEW.id, 'session_id', NEW.session_id, 'user_id', NEW.user_id, 'content', NEW.content, 'type', NEW.type,
        'direction', NEW.direction, 'metadata', json(NEW.metadata), 'client_message_id', NEW.client_message_id,
        'created_at', NEW.created_at, 'updated_at', NEW.updated_at, 'edited_at', NEW.edited_at, 'deleted_at', NEW.deleted_at,
        'attachments', json(NEW.attachments))
    FROM webhook_new_id n, (SELECT CASE
        WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN 'message.deleted'
        WHEN NEW.deleted_at IS NULL AND NEW.edited_at IS NOT OLD.edited_at THEN 'message.updated'
    END AS type) k
    WHERE k.type IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = k.type);
END;

CREATE TRIGGER webhook_session_inserted AFTER INSERT ON chat_sessions
WHEN EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = 'session.created') BEGIN
    INSERT INTO webhook_events (id, session_id, type, payload)
    SELECT n.id, NEW.session_id, k.type, json_object(
        'session_id', NEW.session_id, 'user_id', NEW.user_id, 'metadata', json(NEW.metadata), 'state', NEW.state,
        'is_resolved', NEW.is_resolved, 'expires_at', NEW.expires_at, 'resolved_at', NEW.resolved_at, 'created_at', NEW.created_at,
        'updated_at', NEW.updated_at, 'agent', NEW.agent, 'handoff', NEW.handoff, 'assignee_id', NEW.assignee_id, 'handoff_at', NEW.handoff_at)
    FROM webhook_new_id n, (SELECT 'session.created' AS type) k
    WHERE k.type IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = k.type);
END;

CREATE TRIGGER webhook_session_changed AFTER UPDATE OF is_resolved, handoff ON chat_sessions
WHEN EXISTS (SELECT 1 FROM webhook_subscriptions) BEGIN
    INSERT INTO webhook_events (id, session_id, type, payload)
    SELECT n.id, NEW.session_id, k.type, json_object(
        'session_id', NEW.session_id, 'user_id', NEW.user_id, 'metadata', json(NEW.metadata), 'state', NEW.state,
        'is_resolved', NEW.is_resolved, 'expires_at', NEW.expires_at, 'resolved_at', NEW.resolved_at, 'created_at', NEW.created_at,
        'updated_at', NEW.updated_at, 'agent', NEW.agent, 'handoff', NEW.handoff, 'assignee_id', NEW.assignee_id, 'handoff_at', NEW.handoff_at)
    FROM webhook_new_id n, (SELECT CASE
        WHEN NEW.is_resolved AND NOT OLD.is_resolved THEN 'session.resolved'
        WHEN NEW.handoff = 'waiting' AND OLD.handoff IS NOT 'waiting' THEN 'handoff.waiting'
        WHEN NEW.handoff = 'assigned' AND OLD.handoff IS NOT 'assigned' THEN 'handoff.claimed'
    END AS type) k
    WHERE k.type IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = k.type);
END;
