-- Events are taken into deliveries in the order their transactions were given ids, and only once every
-- transaction before them has ended: with several writers (instances, or pooled connections) a sequence
-- number is drawn before its transaction commits, so an event could commit after one with a higher
-- number had been taken past, and a cursor on the number alone skipped it for good. Rows that exist get
-- this migration's transaction id, cursors too: their position is unchanged.
ALTER TABLE webhook_events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE webhook_cursors ADD COLUMN last_txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX idx_webhook_events_txid ON webhook_events (txid, seq);
