-- Durable event webhooks: an outbox. Triggers record each event an integration subscribes to (the
-- server writes the subscribed event types to webhook_subscriptions at start, from WEBHOOKS_FILE) in
-- webhook_events, in the same transaction as the change that causes it; the server then delivers them
-- (webhook_deliveries: one row per event and webhook, in order per session, retried, then parked).
-- Without subscriptions nothing is recorded. An event's payload is the row as it was then (its columns
-- by name); the server sends it as the API writes a message or a session.
CREATE TABLE webhook_subscriptions (event TEXT PRIMARY KEY);

CREATE TABLE webhook_events (
    seq        BIGSERIAL PRIMARY KEY,
    id         UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    session_id UUID NOT NULL,
    type       TEXT NOT NULL,
    payload    JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    webhook         TEXT NOT NULL,
    event_seq       BIGINT NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
    session_id      UUID NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claimed_until   TIMESTAMPTZ,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    PRIMARY KEY (webhook, event_seq)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_session ON webhook_deliveries (webhook, session_id, event_seq) WHERE status = 'pending';

-- How far each webhook has taken events into its deliveries.
CREATE TABLE webhook_cursors (webhook TEXT PRIMARY KEY, last_seq BIGINT NOT NULL);

-- Timestamps as the API writes them: RFC 3339, UTC, milliseconds.
CREATE FUNCTION webhook_time(t TIMESTAMPTZ) RETURNS TEXT LANGUAGE sql IMMUTABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE FUNCTION webhook_record_message() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind := 'message.created';
    ELSIF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
        kind := 'message.deleted';
    ELSIF NEW.deleted_at IS NULL AND NEW.edited_at IS DISTINCT FROM OLD.edited_at THEN
        kind := 'message.updated';
    ELSE
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = kind) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (session_id, type, payload) VALUES (NEW.session_id, kind, jsonb_build_object(
        'id', NEW.id, 'session_id', NEW.session_id, 'user_id', NEW.user_id, 'content', NEW.content, 'type', NEW.type,
        'direction', NEW.direction, 'metadata', NEW.metadata, 'client_message_id', NEW.client_message_id,
        'created_at', webhook_time(NEW.created_at), 'updated_at', webhook_time(NEW.updated_at), 'edited_at', webhook_time(NEW.edited_at),
        'deleted_at', webhook_time(NEW.deleted_at), 'attachments', NEW.attachments));
    RETURN NULL;
END $$;

CREATE FUNCTION webhook_record_session() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind := 'session.created';
    ELSIF NEW.is_resolved AND NOT OLD.is_resolved THEN
        kind := 'session.resolved';
    ELSIF NEW.handoff = 'waiting' AND OLD.handoff IS DISTINCT FROM 'waiting' THEN
        kind := 'handoff.waiting';
    ELSIF NEW.handoff = 'assigned' AND OLD.handoff IS DISTINCT FROM 'assigned' THEN
        kind := 'handoff.claimed';
    ELSE
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = kind) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (session_id, type, payload) VALUES (NEW.session_id, kind, jsonb_build_object(
        'session_id', NEW.session_id, 'user_id', NEW.user_id, 'metadata', NEW.metadata, 'state', NEW.state,
        'is_resolved', NEW.is_resolved, 'expires_at', webhook_time(NEW.expires_at), 'resolved_at', webhook_time(NEW.resolved_at),
        'created_at', webhook_time(NEW.created_at), 'updated_at', webhook_time(NEW.updated_at), 'agent', NEW.agent, 'handoff', NEW.handoff,
        'assignee_id', NEW.assignee_id, 'handoff_at', webhook_time(NEW.handoff_at)));
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_message AFTER INSERT OR UPDATE OF content, deleted_at ON chat_messages
    FOR EACH ROW EXECUTE FUNCTION webhook_record_message();
CREATE TRIGGER webhook_session AFTER INSERT OR UPDATE OF is_resolved, handoff ON chat_sessions
    FOR EACH ROW EXECUTE FUNCTION webhook_record_session();
-- Off until the server starts with subscriptions (it turns them on and off to match WEBHOOKS_FILE):
-- Postgres would call the function for every message otherwise.
ALTER TABLE chat_messages DISABLE TRIGGER webhook_message;
ALTER TABLE chat_sessions DISABLE TRIGGER webhook_session;
