#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A result row of either store, read by column index; the typed readers are shared.
protocol StoreRow {
    /// The column as text, nil when NULL.
    func optionalString(_ i: Int) -> String?
    /// A boolean column (SQLite stores 0/1, Postgres `t`/`f`).
    func flag(_ i: Int) throws -> Bool
}

extension StoreRow {
    func string(_ i: Int) throws -> String {
        guard let v = optionalString(i) else { throw StoreError(.failed, "column \(i) is NULL or not text") }
        return v
    }

    func uuid(_ i: Int) throws -> UUID {
        guard let id = UUID(text: try string(i)) else { throw StoreError(.failed, "column \(i) is not a UUID") }
        return id
    }

    func optionalUUID(_ i: Int) -> UUID? { optionalString(i).flatMap { UUID(text: $0) } }

    func date(_ i: Int) throws -> Date {
        guard let d = Timestamp.parse(try string(i)) else { throw StoreError(.failed, "column \(i) is not a timestamp") }
        return d
    }

    func optionalDate(_ i: Int) -> Date? { optionalString(i).flatMap(Timestamp.parse) }

    func json(_ i: Int) throws -> JSONValue {
        guard let v = JSONValue.parse(try string(i)) else { throw StoreError(.failed, "column \(i) is not JSON") }
        return v
    }
}

/// Session SQL shared by both stores: the column list, its values, decoding, and the agent-routing
/// statements. `p(n)` renders the n-th (1-based) bind placeholder of the dialect (`?` or `$n`).
enum SessionSQL {
    static let columns = """
        session_id, user_id, metadata, state, is_resolved, expires_at, resolved_at, created_at, updated_at, \
        agent, handoff, assignee_id, handoff_at
        """
    static let columnCount = 13

    static func placeholders(_ p: (Int) -> String) -> String {
        (1...columnCount).map(p).joined(separator: ", ")
    }

    /// The values of `columns` for `s`; `flag` renders a boolean in the dialect.
    static func values(_ s: ChatSession, flag: (Bool) -> SQLValue) -> [SQLValue] {
        func time(_ d: Date?) -> SQLValue { d.map { .text(Timestamp.format($0)) } ?? .null }
        return [
            .text(s.id.lowercased), .text(s.userId.lowercased), .text(s.metadata.jsonText()), .text(s.state.rawValue),
            flag(s.isResolved), time(s.expiresAt), time(s.resolvedAt), time(s.createdAt), time(s.updatedAt),
            s.agent.map(SQLValue.text) ?? .null, s.handoff.map { .text($0.rawValue) } ?? .null,
            s.assigneeId.map { .text($0.lowercased) } ?? .null, time(s.handoffAt),
        ]
    }

    static func decode(_ row: some StoreRow) throws -> ChatSession {
        guard let state = SessionState(rawValue: try row.string(3)) else { throw StoreError(.failed, "unknown session state") }
        return ChatSession(
            id: try row.uuid(0), userId: try row.uuid(1), metadata: try row.json(2), state: state, isResolved: try row.flag(4),
            expiresAt: try row.date(5), resolvedAt: row.optionalDate(6), createdAt: try row.date(7), updatedAt: try row.date(8),
            agent: row.optionalString(9), handoff: row.optionalString(10).flatMap(HandoffState.init(rawValue:)),
            assigneeId: row.optionalUUID(11), handoffAt: row.optionalDate(12)
        )
    }

    /// Binds: agent, updated_at, session_id.
    static func assignAgent(ifUnrouted: Bool, _ p: (Int) -> String) -> String {
        """
        UPDATE chat_sessions SET agent = \(p(1)), handoff = NULL, assignee_id = NULL, handoff_at = NULL, updated_at = \(p(2)) \
        WHERE session_id = \(p(3))\(ifUnrouted ? " AND agent IS NULL AND handoff IS NULL" : "")
        """
    }

    /// Binds: handoff_at/updated_at, session_id.
    static func requestHandoff(_ p: (Int) -> String) -> String {
        """
        UPDATE chat_sessions SET agent = NULL, handoff = 'waiting', assignee_id = NULL, handoff_at = \(p(1)), updated_at = \(p(1)) \
        WHERE session_id = \(p(2))
        """
    }

    /// Binds: assignee, updated_at, session_id.
    static func claimHandoff(_ p: (Int) -> String) -> String {
        """
        UPDATE chat_sessions SET handoff = 'assigned', assignee_id = \(p(1)), updated_at = \(p(2)) \
        WHERE session_id = \(p(3)) AND (handoff = 'waiting' OR (handoff = 'assigned' AND assignee_id = \(p(1))))
        """
    }

    /// Binds: limit, then the assignee when `mine`.
    static func handoffs(mine: Bool, _ p: (Int) -> String) -> String {
        """
        SELECT \(columns) FROM chat_sessions WHERE state = 'active' AND \
        (handoff = 'waiting' OR (handoff = 'assigned'\(mine ? " AND assignee_id = \(p(2))" : ""))) \
        ORDER BY handoff_at, session_id LIMIT \(p(1))
        """
    }
}
