#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The event outbox (migration V17): the database's triggers record events in `webhook_events` in the same
/// transaction as the change; deliveries are made, claimed and finished here.
extension SQLStore {
    public func setWebhookSubscriptions(_ events: Set<String>, webhooks: [String]) async throws {
        try await write(atomic: true) { [dialect] db in
            try db.run("DELETE FROM webhook_subscriptions", [])
            for event in events.sorted() { try db.run("INSERT INTO webhook_subscriptions (event) VALUES ($1)", [.text(event)]) }
            let kept = webhooks.isEmpty ? "" : " WHERE webhook NOT IN (\(SQL.placeholders(webhooks.count)))"
            try db.run("DELETE FROM webhook_deliveries" + kept, webhooks.map(SQLValue.text))
            try db.run("DELETE FROM webhook_cursors" + kept, webhooks.map(SQLValue.text))
            for statement in dialect.webhookTriggers(!events.isEmpty) { try db.execute(statement) }
        }
    }

    public func fanOutWebhookEvents(webhook: String, events: Set<String>, limit: Int, now: Date) async throws -> Int {
        // Nothing recorded since the webhook's cursor (an idle server's every poll): a read says so, without
        // a write transaction (on Postgres, locking the cursor row would commit, and flush, one each time).
        let order = dialect.outbox
        let upToDate = try await read { db in
            try !db.query(
                """
                SELECT 1 FROM webhook_cursors c WHERE c.webhook = $1
                AND NOT EXISTS (SELECT 1 FROM webhook_events e WHERE \(order.after("e", seq: "c.last_seq", txid: "c.last_txid::text")))
                """, [.text(webhook)]
            ).isEmpty
        }
        if upToDate { return 0 }
        return try await write(atomic: true) { [dialect] db in
            try db.run(
                "INSERT INTO webhook_cursors (webhook, \(order.cursorColumns)) SELECT $1, \(order.newest) FROM webhook_events WHERE true ON CONFLICT DO NOTHING",
                [.text(webhook)]
            )
            guard let row = try db.query(
                "SELECT \(order.position(cursor: "c")) FROM webhook_cursors c WHERE c.webhook = $1\(dialect.forUpdate)", [.text(webhook)]
            ).first else { return 0 }
            let cursor = try order.read(row, at: 0)
            let rows = try db.query(
                """
                SELECT e.type, e.session_id, \(order.position(event: "e")) FROM webhook_events e
                WHERE \(order.after("e", seq: "$1", txid: "$3")) ORDER BY \(order.order("e")) LIMIT $2
                """, [.integer(cursor.seq), .int(limit)] + order.bind(cursor).dropFirst()
            )
            guard let last = rows.last else { return 0 }
            var made = 0
            for row in rows where events.contains(try row.string(0)) {
                try db.run(
                    "INSERT INTO webhook_deliveries (webhook, event_seq, session_id, next_attempt_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    [.text(webhook), .integer(try row.int(2)), row.values[1], .time(now)]
                )
                made += 1
            }
            try db.run("UPDATE webhook_cursors SET \(order.advance) WHERE webhook = $1", [.text(webhook)] + order.bind(try order.read(last, at: 2)))
            return made
        }
    }

    public func claimWebhookDeliveries(webhooks: [String], limit: Int, lease: Int, now: Date) async throws -> [WebhookDelivery] {
        guard !webhooks.isEmpty else { return [] }
        return try await write(atomic: true) { [dialect] db in
            let names = SQL.placeholders(webhooks.count, after: 2)
            let due = try db.query(
                """
                SELECT d.webhook, d.event_seq FROM webhook_deliveries d
                WHERE d.status = 'pending' AND d.webhook IN (\(names)) AND d.next_attempt_at <= $1
                  AND (d.claimed_until IS NULL OR d.claimed_until <= $1)
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_deliveries e
                      WHERE e.webhook = d.webhook AND e.session_id = d.session_id AND e.status = 'pending' AND e.event_seq < d.event_seq
                  )
                ORDER BY d.event_seq LIMIT $2\(dialect.skipLocked)
                """, [.time(now), .int(limit)] + webhooks.map(SQLValue.text)
            )
            var claimed: [WebhookDelivery] = []
            for row in due {
                let webhook = try row.string(0), seq = try row.int(1)
                try db.run(
                    "UPDATE webhook_deliveries SET claimed_until = $3 WHERE webhook = $1 AND event_seq = $2",
                    [.text(webhook), .integer(seq), .time(now.addingTimeInterval(Double(lease)))]
                )
                if let delivery = try Self.delivery(db, "d.webhook = $1 AND d.event_seq = $2", [.text(webhook), .integer(seq)]).first {
                    claimed.append(delivery)
                }
            }
            return claimed
        }
    }

    /// Deliveries joined with their events.
    static func delivery(_ db: DB, _ condition: String, _ params: [SQLValue], rest: String = "") throws -> [WebhookDelivery] {
        try db.query(
            """
            SELECT d.webhook, d.event_seq, e.id, e.type, e.session_id, e.payload, e.created_at, d.status, d.attempts, d.next_attempt_at,
                   d.last_error, d.delivered_at
            FROM webhook_deliveries d JOIN webhook_events e ON e.seq = d.event_seq WHERE \(condition) \(rest)
            """, params
        ).map { row in
            WebhookDelivery(
                webhook: try row.string(0), seq: try row.int(1), eventId: try row.uuid(2), type: try row.string(3), sessionId: try row.uuid(4),
                subject: try subject(type: try row.string(3), payload: try row.string(5)), createdAt: try row.date(6), status: WebhookDelivery.Status(rawValue: try row.string(7)) ?? .pending,
                attempts: Int(try row.int(8)), nextAttemptAt: try row.date(9), lastError: row.optionalString(10),
                deliveredAt: row.values[11] == .null ? nil : try row.date(11)
            )
        }
    }

    /// The record an event's payload holds: the row as the trigger wrote it, its columns by name, read
    /// with the record's codec.
    static func subject(type: String, payload: String) throws -> WebhookDelivery.Subject {
        guard case .object(let columns)? = JSONValue.parse(payload) else { throw StoreError(.failed, "webhook event payload is not a JSON object") }
        func row<R>(_ codec: RowCodec<R>) -> SQLRow {
            SQLRow(values: codec.columns.map { column in
                switch columns[column.name] ?? .null {
                case .null: .null
                case .string(let text): .text(text)
                case .int(let n): .integer(n)
                case .double(let d): .real(d)
                case .bool(let b): .integer(b ? 1 : 0)
                case let value: .text(value.jsonText())
                }
            })
        }
        return type.hasPrefix("message.") ? .message(try Codec.message.decode(row(Codec.message))) : .session(try Codec.session.decode(row(Codec.session)))
    }

    public func finishWebhookDelivery(webhook: String, seq: Int64, error: String?, retryAt: Date?, now: Date) async throws {
        try await write(atomic: false) { db in
            if let error {
                try db.run(
                    """
                    UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $3, claimed_until = NULL,
                        status = $4, next_attempt_at = $5 WHERE webhook = $1 AND event_seq = $2
                    """,
                    [.text(webhook), .integer(seq), .text(String(error.prefix(500))), .text(retryAt == nil ? "parked" : "pending"), .time(retryAt ?? now)]
                )
            } else {
                try db.run(
                    """
                    UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = NULL, claimed_until = NULL, status = 'delivered',
                        delivered_at = $3 WHERE webhook = $1 AND event_seq = $2
                    """, [.text(webhook), .integer(seq), .time(now)]
                )
            }
        }
    }

    public func webhookDeliveries(status: WebhookDelivery.Status, limit: Int) async throws -> [WebhookDelivery] {
        try await read { db in
            try Self.delivery(db, "d.status = $1", [.text(status.rawValue), .int(limit)], rest: "ORDER BY d.event_seq DESC LIMIT $2")
        }
    }

    public func redeliverWebhook(webhook: String, eventId: UUID, now: Date) async throws -> Bool {
        try await write(atomic: false) { db in
            try db.run(
                """
                UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, claimed_until = NULL
                WHERE webhook = $1 AND status = 'parked' AND event_seq = (SELECT seq FROM webhook_events WHERE id = $2)
                """, [.text(webhook), .id(eventId), .time(now)]
            ) > 0
        }
    }

    public func pruneWebhookEvents(before: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { [dialect] db in
            let params: [SQLValue] = [.time(before), .int(limit)]
            let deliveries = try db.run(
                """
                DELETE FROM webhook_deliveries WHERE (webhook, event_seq) IN (
                    SELECT d.webhook, d.event_seq FROM webhook_deliveries d WHERE d.status = 'delivered' AND d.delivered_at < $1 LIMIT $2
                )
                """, params
            )
            let events = try db.run(
                """
                DELETE FROM webhook_events WHERE seq IN (
                    SELECT e.seq FROM webhook_events e WHERE e.created_at < $1
                    AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = e.seq)
                    AND EXISTS (SELECT 1 FROM webhook_cursors)
                    AND NOT EXISTS (SELECT 1 FROM webhook_cursors c WHERE NOT (\(dialect.outbox.passed("e", cursor: "c"))))
                    ORDER BY e.seq LIMIT $2
                )
                """, params
            )
            return deliveries + events
        }
    }

    // MARK: Copying the outbox

    public func exportWebhookEvents(after: Int64?, limit: Int) async throws -> [WebhookEventRecord] {
        try await read { db in
            var events = try db.query(
                "SELECT seq, id, session_id, type, payload, created_at FROM webhook_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                [.integer(after ?? 0), .int(limit)]
            ).map { row in
                WebhookEventRecord(
                    seq: try row.int(0), id: try row.uuid(1), sessionId: try row.uuid(2), type: try row.string(3), payload: try row.string(4),
                    createdAt: try row.date(5), deliveries: []
                )
            }
            guard let first = events.first?.seq, let last = events.last?.seq else { return [] }
            let position = Dictionary(uniqueKeysWithValues: events.enumerated().map { ($1.seq, $0) })
            for row in try db.query(
                """
                SELECT event_seq, webhook, status, attempts, next_attempt_at, last_error, delivered_at FROM webhook_deliveries
                WHERE event_seq BETWEEN $1 AND $2 ORDER BY event_seq, webhook
                """, [.integer(first), .integer(last)]
            ) {
                guard let i = position[try row.int(0)] else { continue }
                events[i].deliveries.append(.init(
                    webhook: try row.string(1), status: WebhookDelivery.Status(rawValue: try row.string(2)) ?? .pending, attempts: Int(try row.int(3)),
                    nextAttemptAt: try row.date(4), lastError: row.optionalString(5), deliveredAt: row.values[6] == .null ? nil : try row.date(6)
                ))
            }
            return events
        }
    }

    public func exportWebhookCursors() async throws -> [WebhookCursor] {
        try await read { [dialect] db in
            // The last event a cursor has passed that still exists: the target numbers events anew.
            try db.query(
                """
                SELECT c.webhook, (
                    SELECT e.id FROM webhook_events e WHERE \(dialect.outbox.passed("e", cursor: "c"))
                    ORDER BY \(dialect.outbox.order("e", descending: true)) LIMIT 1
                )
                FROM webhook_cursors c ORDER BY c.webhook
                """, []
            ).map { row in WebhookCursor(webhook: try row.string(0), lastEventId: row.values[1] == .null ? nil : try row.uuid(1)) }
        }
    }

    /// Events get the target's next seqs (so they stay after any it has); an event already there is skipped
    /// with its deliveries. A webhook that has a cursor already (a server started on the target before the
    /// copy) moves it to the copied one when that is further: what the source had passed is not sent again.
    static func importWebhookOutbox(_ db: DB, events: [WebhookEventRecord], cursors: [WebhookCursor], order: OutboxOrder) throws {
        for event in events {
            let inserted = try db.run(
                "INSERT INTO webhook_events (id, session_id, type, payload, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                [.id(event.id), .id(event.sessionId), .text(event.type), .text(event.payload), .time(event.createdAt)]
            )
            guard inserted > 0, let seq = try db.query("SELECT seq FROM webhook_events WHERE id = $1", [.id(event.id)]).first?.int(0) else { continue }
            for d in event.deliveries {
                try db.run(
                    """
                    INSERT INTO webhook_deliveries (webhook, event_seq, session_id, status, attempts, next_attempt_at, last_error, delivered_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    """,
                    [.text(d.webhook), .integer(seq), .id(event.sessionId), .text(d.status.rawValue), .int(d.attempts), .time(d.nextAttemptAt),
                     d.lastError.map(SQLValue.text) ?? .null, d.deliveredAt.map(SQLValue.time) ?? .null]
                )
            }
        }
        for cursor in cursors {
            try db.run(
                """
                INSERT INTO webhook_cursors (webhook, \(order.cursorColumns))
                SELECT $1, \(order.newest) FROM webhook_events WHERE id = $2
                ON CONFLICT (webhook) DO UPDATE SET \(order.takeFurther)
                """, [.text(cursor.webhook), cursor.lastEventId.map(SQLValue.id) ?? .null]
            )
        }
    }
}
