#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging

/// A `ChatStore` over SQL. A store supplies its connections and what really differs between the databases
/// (SQLite's group-committing writer, Postgres' appender and notifications); the rest is written once here.
protocol SQLStore: ChatStore {
    associatedtype DB: SQLDatabase
    var dialect: SQLDialect { get }
    /// Runs `body` on a connection for reading.
    func read<T: Sendable>(_ body: @escaping @Sendable (DB) throws -> T) async throws -> T
    /// Runs `body` as one write. With `atomic` its statements commit together; without, it is one statement
    /// (Postgres then saves the BEGIN and COMMIT round trips; SQLite's writer runs every job in a transaction).
    @discardableResult func write<T: Sendable>(atomic: Bool, _ body: @escaping @Sendable (DB) throws -> T) async throws -> T
    /// Tells other instances sharing the database about a change, at commit (Postgres NOTIFY).
    func announce(_ change: String, db: DB) throws
}

/// Statements used on hot paths, built once.
enum SQL {
    /// The `updated_at` of a change to a row last changed at `previous`: now, or a millisecond after
    /// `previous` when now is not later (two changes in one millisecond, or instances whose clocks differ),
    /// so a row's versions order by it as they were written.
    static func stamp(after previous: Date, now: Date) -> Date {
        let before = Int64((previous.timeIntervalSince1970 * 1000).rounded(.down))
        let current = Int64((now.timeIntervalSince1970 * 1000).rounded(.down))
        return current > before ? now : Date(timeIntervalSince1970: (Double(before + 1) + 0.5) / 1000)
    }

    /// The row's `updated_at`, locked for the change the transaction is about to make (nil: no such
    /// message, or deleted).
    static func lockedStamp(_ sessionId: UUID, _ id: UUID, db: some SQLDatabase, forUpdate: String) throws -> Date? {
        try db.query(
            "SELECT updated_at FROM chat_messages WHERE session_id = $1 AND id = $2 AND deleted_at IS NULL\(forUpdate)", [.id(sessionId), .id(id)]
        ).first?.date(0)
    }
    static let sessionById = "\(Codec.session.select) WHERE session_id = $1"
    static let messageByClientId = "\(Codec.message.select) WHERE session_id = $1 AND client_message_id = $2"
    /// The message columns of a join that names the messages `m`.
    static let messageColumns = Codec.message.columns.map { "m.\($0.name)" }.joined(separator: ", ")

    /// `$first, …` for `count` parameters bound after the first `after` ones (an `IN (…)` list).
    static func placeholders(_ count: Int, after: Int = 0) -> String {
        (0..<count).map { "$\(after + $0 + 1)" }.joined(separator: ", ")
    }

    /// `%text%` for `LIKE … ESCAPE '\\'`: a plain substring, its wildcards escaped.
    static func containing(_ text: String) -> String {
        var pattern = "%"
        for c in text.unicodeScalars {
            if c == "\\" || c == "%" || c == "_" { pattern.unicodeScalars.append("\\") }
            pattern.unicodeScalars.append(c)
        }
        return pattern + "%"
    }

    static func message(_ sessionId: UUID, _ id: UUID, db: some SQLDatabase) throws -> ChatMessage? {
        try db.select(Codec.message, "WHERE session_id = $1 AND id = $2", [.id(sessionId), .id(id)]).first
    }

    /// The message stored earlier with the same client id in the session, if any.
    static func duplicate(of message: ChatMessage, db: some SQLDatabase) throws -> ChatMessage? {
        guard let clientId = message.clientMessageId else { return nil }
        return try db.query(messageByClientId, [.id(message.sessionId), .text(clientId)]).first.map(Codec.message.decode)
    }
}

/// A statement's parameters, bound as the statement is written: `p(value)` appends the value and returns its `$n`.
struct SQLParams {
    var values: [SQLValue]

    init(_ values: [SQLValue] = []) { self.values = values }

    mutating func callAsFunction(_ value: SQLValue) -> String {
        values.append(value)
        return "$\(values.count)"
    }
}

extension SQLDatabase {
    /// The records matching `filter`, `limit` from `offset` in `order`, and how many match in all.
    func countedPage<R>(_ codec: RowCodec<R>, _ filter: String, _ params: SQLParams, order: String, limit: Int, offset: Int) throws -> ([R], Int) {
        let total = try query("SELECT COUNT(*) FROM \(codec.table) WHERE \(filter)", params.values).first?.int(0) ?? 0
        var p = params
        let rest = "WHERE \(filter) ORDER BY \(order) LIMIT \(p(.int(limit))) OFFSET \(p(.int(offset)))"
        return (try select(codec, rest, p.values), Int(total))
    }
}

extension Logger {
    /// The stores' default logger: silent unless the caller passes its own.
    public static let quietStorage = Logger(label: "chat-backend.storage", factory: { _ in SwiftLogNoOpLogHandler() })
}

extension SQLValue {
    static func id(_ id: UUID) -> SQLValue { .text(id.lowercased) }
    static func time(_ date: Date) -> SQLValue { .text(Timestamp.format(date)) }
    static func int(_ n: Int) -> SQLValue { .integer(Int64(n)) }
}

/// Applying migrations and reading their history, on either database.
enum SQLMigrator {
    /// Applies pending migrations, each in its own transaction, recording them in `schema_history`.
    static func migrate(_ db: some SQLDatabase, _ migrations: MigrationSet, _ dialect: SQLDialect, logger: Logger) throws {
        try db.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_history (
                version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, checksum INTEGER NOT NULL,
                applied_at \(dialect.timeType) NOT NULL, execution_ms INTEGER NOT NULL
            )
            """
        )
        let pending = try db.transaction(dialect.begin) { try migrations.pending(applied: applied(db)) }
        for migration in pending {
            let started = ContinuousClock.now
            let rebuild = dialect.rebuildsTables && migration.sql.hasPrefix("-- migration: foreign keys off")
            do {
                // Only outside a transaction does SQLite take this pragma.
                if rebuild { try db.execute("PRAGMA foreign_keys=OFF") }
                defer { if rebuild { try? db.execute("PRAGMA foreign_keys=ON") } }
                try db.transaction(dialect.begin) {
                    // Another process (`migrate` beside `serve`) may have applied it since the check above.
                    if try !db.query("SELECT 1 FROM schema_history WHERE version = $1", [.int(migration.version)]).isEmpty { return }
                    try db.execute(migration.sql)
                    if rebuild, let row = try db.query("PRAGMA foreign_key_check", []).first {
                        throw StoreError(.invalid, "the migration leaves a row of \(row.optionalString(0) ?? "?") without the row it refers to")
                    }
                    let elapsed = ContinuousClock.now - started
                    try db.run(
                        "INSERT INTO schema_history (version, name, checksum, applied_at, execution_ms) VALUES ($1, $2, $3, $4, $5)",
                        [.int(migration.version), .text(migration.name), .integer(Int64(migration.checksum)), .time(Date()),
                         .integer(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)]
                    )
                }
            } catch {
                throw StoreError(.invalid, "migration V\(migration.version) \(migration.fileName) failed", detail: String(reflecting: error))
            }
            logger.info("applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
        }
    }

    /// The migration state of a database, changing nothing; `hasHistory`: a query telling whether `schema_history` exists.
    static func inspect(_ db: some SQLDatabase, _ migrations: MigrationSet, hasHistory: String, version: String) throws -> StoreInspection {
        let applied = try db.query(hasHistory, []).isEmpty ? [] : try applied(db)
        _ = try migrations.pending(applied: applied)
        return StoreInspection(serverVersion: version, exists: true, migrations: migrations.status(applied: applied))
    }

    static func applied(_ db: some SQLDatabase) throws -> [AppliedMigration] {
        try db.query("SELECT version, name, checksum, applied_at FROM schema_history ORDER BY version", []).map {
            AppliedMigration(
                version: Int(try $0.int(0)), name: try $0.string(1), checksum: Int32(truncatingIfNeeded: try $0.int(2)),
                appliedAt: Timestamp.format(try $0.date(3))
            )
        }
    }
}

extension SQLStore {
    func announce(_ change: String, db: DB) throws {}

    public func migrationStatus() async throws -> [MigrationStatus] {
        try await read { [dialect] db in dialect.migrations.status(applied: try SQLMigrator.applied(db)) }
    }

    public func ping() async throws {
        _ = try await read { db in try db.query("SELECT 1", []).count }
    }

    // MARK: Users

    public func createUser(_ user: User) async throws {
        try await write(atomic: false) { [dialect] db in
            do {
                try db.run(Codec.user.insert, Codec.user.values(user, dialect))
            } catch let error as StoreError where error.kind == .conflict {
                throw StoreError(.conflict, "username is taken", detail: error.debugDescription)
            }
        }
    }

    public func user(id: UUID) async throws -> User? {
        try await read { db in try db.select(Codec.user, "WHERE id = $1", [.id(id)]).first }
    }

    public func user(username: String) async throws -> User? {
        try await read { db in try db.select(Codec.user, "WHERE lower(username) = lower($1)", [.text(username)]).first }
    }

    public func users(ids: [UUID]) async throws -> [User] {
        let unique = Array(Set(ids))
        guard !unique.isEmpty else { return [] }
        return try await read { db in
            try db.select(Codec.user, "WHERE id IN (\(SQL.placeholders(unique.count)))", unique.map(SQLValue.id))
        }
    }

    public func users(_ query: UserQuery) async throws -> UserPage {
        try await read { db in
            var p = SQLParams(), filter = "TRUE"
            if let search = query.search?.lowercased(), !search.isEmpty {
                let pattern = p(.text(SQL.containing(search)))
                filter += " AND (lower(username) LIKE \(pattern) ESCAPE '\\' OR lower(COALESCE(email, '')) LIKE \(pattern) ESCAPE '\\')"
            }
            if let role = query.role { filter += " AND role = \(p(.text(role.rawValue)))" }
            let (users, total) = try db.countedPage(Codec.user, filter, p, order: "created_at DESC, id DESC", limit: query.limit, offset: query.offset)
            return UserPage(users: users, total: total)
        }
    }

    public func updateUser(id: UUID, _ change: UserChange, now: Date) async throws -> User? {
        try await write(atomic: true) { db in
            var p = SQLParams([.id(id)])
            var sets = ["updated_at = \(p(.time(now)))"]
            if let role = change.role { sets.append("role = \(p(.text(role.rawValue)))") }
            if let hash = change.passwordHash { sets.append("password_hash = \(p(.text(hash)))") }
            // Disabling a disabled account keeps the time it was first disabled.
            if let disabled = change.disabled { sets.append(disabled ? "disabled_at = COALESCE(disabled_at, \(p(.time(now))))" : "disabled_at = NULL") }
            try db.run("UPDATE users SET \(sets.joined(separator: ", ")) WHERE id = $1", p.values)
            return try db.select(Codec.user, "WHERE id = $1", [.id(id)]).first
        }
    }

    public func revokeLogins(userId: UUID, except: UUID?, now: Date) async throws -> [UUID] {
        try await write(atomic: true) { [self] db in
            let families = try db.query(
                "SELECT DISTINCT family_id FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL", [.id(userId)]
            ).map { try $0.uuid(0) }.filter { $0 != except }
            for family in families { try revokeFamily(family, now: now, db: db) }
            return families
        }
    }

    public func deleteUser(id: UUID, now: Date) async throws -> Bool {
        try await write(atomic: true) { db in
            try db.run(
                "UPDATE chat_sessions SET handoff = 'waiting', assignee_id = NULL, updated_at = $2 WHERE assignee_id = $1 AND handoff = 'assigned'",
                [.id(id), .time(now)]
            )
            try db.run("DELETE FROM chat_sessions WHERE user_id = $1", [.id(id)])
            return try db.run("DELETE FROM users WHERE id = $1", [.id(id)]) > 0
        }
    }

    public func deleteMessages(before: Date, limit: Int) async throws -> Int { try await deleteOldest("chat_messages", before: before, limit: limit) }
    public func deleteAttachments(before: Date, limit: Int) async throws -> Int { try await deleteOldest("attachments", before: before, limit: limit) }

    /// Deletes up to `limit` rows made before `before`, oldest first: ids are UUIDv7, in time order.
    private func deleteOldest(_ table: String, before: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { db in
            try db.run("DELETE FROM \(table) WHERE id IN (SELECT id FROM \(table) WHERE id < $1 ORDER BY id LIMIT $2)", [.id(UUIDv7.cursor(at: before)), .int(limit)])
        }
    }

    public func deleteResolvedSessions(before: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { [dialect] db in
            try db.run(
                """
                DELETE FROM chat_sessions WHERE session_id IN (
                    SELECT session_id FROM chat_sessions WHERE is_resolved = $1 AND resolved_at < $2 ORDER BY resolved_at LIMIT $3
                )
                """, [dialect.flag(true), .time(before), .int(limit)]
            )
        }
    }

    public func messages(authoredBy userId: UUID, inOthersSessions: Bool, after: UUID?, limit: Int) async throws -> [ChatMessage] {
        try await read { db in
            var p = SQLParams([.id(userId), .int(limit)]), filter = "m.user_id = $1"
            if inOthersSessions { filter += " AND s.user_id <> $1" }
            if let after { filter += " AND m.id > \(p(.id(after)))" }
            return try db.query(
                "SELECT \(SQL.messageColumns) FROM chat_messages m JOIN chat_sessions s ON s.session_id = m.session_id WHERE \(filter) ORDER BY m.id LIMIT $2",
                p.values
            ).map(Codec.message.decode)
        }
    }

    public func deleteInactiveGuests(inactiveSince: Date, limit: Int) async throws -> Int {
        try await write(atomic: true) { db in
            let guests = try db.query(
                """
                SELECT u.id FROM users u WHERE u.role = 'guest' AND u.created_at < $1
                AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.user_id = u.id AND t.created_at >= $1)
                AND NOT EXISTS (
                    SELECT 1 FROM chat_sessions s JOIN chat_messages m ON m.session_id = s.session_id WHERE s.user_id = u.id AND m.created_at >= $1
                )
                LIMIT $2
                """, [.time(inactiveSince), .int(limit)]
            ).map { try $0.uuid(0) }
            for id in guests {
                try db.run("DELETE FROM chat_sessions WHERE user_id = $1", [.id(id)])
                try db.run("DELETE FROM users WHERE id = $1", [.id(id)])
            }
            return guests.count
        }
    }

    // MARK: Tokens

    public func insertRefreshToken(_ token: RefreshTokenRecord) async throws {
        try await write(atomic: false) { [dialect] db in try db.run(Codec.refreshToken.insert, Codec.refreshToken.values(token, dialect)) }
    }

    public func rotateRefreshToken(hash: String, replacement: RefreshTokenRecord, now: Date) async throws -> RotateOutcome {
        try await write(atomic: true) { [self] db in
            // FOR UPDATE (Postgres): two concurrent uses of one token are serialized, so the second sees it used.
            guard let row = try db.query(
                "SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1\(dialect.forUpdate)", [.text(hash)]
            ).first else { return .invalid }
            let (userId, familyId) = (try row.uuid(1), try row.uuid(2))
            if row.optionalString(5) != nil { return .invalid }
            if row.optionalString(4) != nil {
                try revokeFamily(familyId, now: now, db: db)
                return .reused(familyId: familyId)
            }
            if try row.date(3) <= now { return .expired }
            try db.run("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2", [.time(now), .text(try row.string(0))])
            var next = replacement
            next.userId = userId
            next.familyId = familyId
            try db.run(Codec.refreshToken.insert, Codec.refreshToken.values(next, dialect))
            return .rotated(userId: userId, familyId: familyId)
        }
    }

    private func revokeFamily(_ familyId: UUID, now: Date, db: DB) throws {
        try db.run("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL", [.time(now), .id(familyId)])
        try announce("revoke-family \(familyId.lowercased)", db: db)
    }

    public func revokeRefreshFamily(_ familyId: UUID, now: Date) async throws {
        try await write(atomic: true) { [self] db in try revokeFamily(familyId, now: now, db: db) }
    }

    public func revokeAccessToken(jti: String, expiresAt: Date) async throws {
        try await write(atomic: true) { [self] db in
            try db.run(Codec.revokedAccessToken.insert + " ON CONFLICT (jti) DO NOTHING", [.text(jti), .time(expiresAt)])
            try announce("revoke-token \(jti)", db: db)
        }
    }

    public func isAccessTokenRevoked(jti: String) async throws -> Bool {
        try await read { db in try !db.query("SELECT 1 FROM revoked_access_tokens WHERE jti = $1", [.text(jti)]).isEmpty }
    }

    public func isRefreshFamilyRevoked(_ familyId: UUID) async throws -> Bool {
        try await read { db in
            try !db.query("SELECT 1 FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NOT NULL LIMIT 1", [.id(familyId)]).isEmpty
        }
    }

    // MARK: Sessions

    /// The session; `lock`: row-locked until the transaction ends (Postgres).
    func loadSession(_ id: UUID, db: DB, lock: Bool = false) throws -> ChatSession? {
        try db.query(lock ? SQL.sessionById + dialect.forUpdate : SQL.sessionById, [.id(id)]).first.map(Codec.session.decode)
    }

    public func createSession(_ session: ChatSession) async throws {
        try await write(atomic: false) { [dialect] db in try db.run(Codec.session.insert, Codec.session.values(session, dialect)) }
    }

    public func session(id: UUID) async throws -> ChatSession? {
        try await read { [self] db in try loadSession(id, db: db) }
    }

    public func sessions(_ query: SessionQuery) async throws -> SessionPage {
        try await read { [dialect] db in
            var p = SQLParams([.id(query.userId)]), filter = "user_id = $1"
            if let state = query.state { filter += " AND state = \(p(.text(state.rawValue)))" }
            if let resolved = query.isResolved { filter += " AND is_resolved = \(p(dialect.flag(resolved)))" }
            let (sessions, total) = try db.countedPage(
                Codec.session, filter, p, order: "created_at DESC, session_id DESC", limit: query.limit, offset: query.offset
            )
            return SessionPage(sessions: sessions, total: total)
        }
    }

    public func resumeSession(id: UUID, expiresAt: Date, now: Date) async throws -> ResumeOutcome {
        try await write(atomic: true) { [self] db in
            guard let current = try loadSession(id, db: db, lock: true) else { return .notFound }
            if current.isResolved { return .resolved }
            try db.run("UPDATE chat_sessions SET state = 'active', expires_at = $1, updated_at = $2 WHERE session_id = $3", [.time(expiresAt), .time(now), .id(id)])
            return try loadSession(id, db: db).map(ResumeOutcome.resumed) ?? .notFound
        }
    }

    public func resolveSession(id: UUID, now: Date) async throws -> ChatSession? {
        try await write(atomic: true) { [self] db in
            // Postgres: the row lock waits for every send that read the session (a key-share lock until it commits).
            guard let current = try loadSession(id, db: db, lock: true) else { return nil }
            if current.isResolved { return current }
            // Resolved when it commits: later than every message written before it.
            let at = SQLValue.time(max(now, Timestamp.now()))
            try db.run("UPDATE chat_sessions SET state = 'resolved', is_resolved = TRUE, resolved_at = $1, updated_at = $1 WHERE session_id = $2", [at, .id(id)])
            return try loadSession(id, db: db)
        }
    }

    public func deleteSession(id: UUID) async throws -> Bool {
        try await write(atomic: false) { db in try db.run("DELETE FROM chat_sessions WHERE session_id = $1", [.id(id)]) > 0 }
    }

    public func sweepExpired(now: Date) async throws -> Int {
        try await write(atomic: true) { db in
            let at = SQLValue.time(now)
            let expired = try db.run("UPDATE chat_sessions SET state = 'expired', updated_at = $1 WHERE state = 'active' AND expires_at <= $1", [at])
            try db.run("DELETE FROM revoked_access_tokens WHERE expires_at <= $1", [at])
            try db.run("DELETE FROM refresh_tokens WHERE expires_at <= $1", [at])
            return expired
        }
    }

    // MARK: Agent routing

    public func assignAgent(sessionId: UUID, agent: String?, ifUnrouted: Bool, now: Date) async throws -> ChatSession? {
        try await updateSession(
            sessionId, "SET agent = $3, handoff = NULL, assignee_id = NULL, handoff_at = NULL, updated_at = $2 WHERE session_id = $1"
                + (ifUnrouted ? " AND agent IS NULL AND handoff IS NULL" : ""),
            [.time(now), agent.map(SQLValue.text) ?? .null]
        )
    }

    public func requestHandoff(sessionId: UUID, now: Date) async throws -> ChatSession? {
        // Only a session with no handoff yet, not resolved: one a person has claimed stays theirs.
        try await updateSession(
            sessionId,
            "SET agent = NULL, handoff = 'waiting', assignee_id = NULL, handoff_at = $2, updated_at = $2 WHERE session_id = $1 AND handoff IS NULL AND is_resolved = $3",
            [.time(now), dialect.flag(false)]
        )
    }

    /// Runs `UPDATE chat_sessions <rest>` (binds: the session id, then `params`) and returns the session as it is now.
    private func updateSession(_ id: UUID, _ rest: String, _ params: [SQLValue]) async throws -> ChatSession? {
        try await write(atomic: true) { [self] db in
            try db.run("UPDATE chat_sessions \(rest)", [.id(id)] + params)
            return try loadSession(id, db: db)
        }
    }

    public func claimHandoff(sessionId: UUID, assignee: UUID, now: Date) async throws -> ClaimOutcome {
        try await write(atomic: true) { [self] db in
            let changed = try db.run(
                """
                UPDATE chat_sessions SET handoff = 'assigned', assignee_id = $1, updated_at = $2 \
                WHERE session_id = $3 AND is_resolved = $4 AND (handoff = 'waiting' OR (handoff = 'assigned' AND assignee_id = $1))
                """,
                [.id(assignee), .time(now), .id(sessionId), dialect.flag(false)]
            )
            guard let session = try loadSession(sessionId, db: db) else { return .notFound }
            return changed > 0 ? .claimed(session) : .unavailable(session)
        }
    }

    public func handoffs(assignee: UUID?, limit: Int) async throws -> [ChatSession] {
        try await read { db in
            try db.select(
                Codec.session,
                "WHERE state = 'active' AND (handoff = 'waiting' OR (handoff = 'assigned'\(assignee == nil ? "" : " AND assignee_id = $2"))) ORDER BY handoff_at, session_id LIMIT $1",
                [.int(limit)] + (assignee.map { [.id($0)] } ?? [])
            )
        }
    }

    // MARK: Messages

    public func messages(_ query: MessageQuery) async throws -> MessagePage {
        try await read { [self] db in try messagePage(query, db: db) }
    }

    public func sessionMessages(_ query: MessageQuery) async throws -> (session: ChatSession, page: MessagePage)? {
        try await read { [self] db in
            guard let session = try loadSession(query.sessionId, db: db) else { return nil }
            return (session, try messagePage(query, db: db))
        }
    }

    private func messagePage(_ query: MessageQuery, db: DB) throws -> MessagePage {
        var p = SQLParams([.id(query.sessionId)]), filter = "session_id = $1"
        if let after = query.after { filter += " AND id > \(p(.id(after)))" }
        if let before = query.before { filter += " AND id < \(p(.id(before)))" }
        // Only `before`: the newest page before the cursor, read backwards then put in order.
        let backwards = query.before != nil && query.after == nil
        let rows = try db.query("\(Codec.message.select) WHERE \(filter) ORDER BY id \(backwards ? "DESC" : "ASC") LIMIT \(p(.int(query.limit + 1)))", p.values)
        var messages = try rows.prefix(query.limit).map(Codec.message.decode)
        if backwards { messages.reverse() }
        return MessagePage(messages: messages, hasMore: rows.count > query.limit)
    }

    public func message(sessionId: UUID, id: UUID) async throws -> ChatMessage? {
        try await read { db in try SQL.message(sessionId, id, db: db) }
    }

    public func editMessage(sessionId: UUID, id: UUID, content: String, now: Date) async throws -> ChatMessage? {
        try await write(atomic: true) { [self] db in
            guard let previous = try SQL.lockedStamp(sessionId, id, db: db, forUpdate: dialect.forUpdate) else { return nil }
            try db.run(
                "UPDATE chat_messages SET content = $3, edited_at = $4, updated_at = $4 WHERE session_id = $1 AND id = $2 AND deleted_at IS NULL",
                [.id(sessionId), .id(id), .text(content), .time(SQL.stamp(after: previous, now: now))]
            )
            guard let message = try SQL.message(sessionId, id, db: db), message.deletedAt == nil else { return nil }
            try announce("changed \(sessionId.lowercased)/\(id.lowercased)", db: db)
            return message
        }
    }

    public func deleteMessage(sessionId: UUID, id: UUID, now: Date) async throws -> ChatMessage? {
        try await write(atomic: true) { [self] db in
            guard let previous = try SQL.lockedStamp(sessionId, id, db: db, forUpdate: dialect.forUpdate) else {
                return try SQL.message(sessionId, id, db: db)  // deleted already (its tombstone), or none
            }
            // The files it carried go with it.
            if let files = try SQL.message(sessionId, id, db: db)?.attachments, !files.isEmpty {
                try db.run(
                    "DELETE FROM attachments WHERE session_id = $1 AND id IN (\(SQL.placeholders(files.count, after: 1)))",
                    [.id(sessionId)] + files.map { .id($0.id) }
                )
            }
            try db.run(
                """
                UPDATE chat_messages SET content = '', metadata = '{}', attachments = '[]', deleted_at = $3, updated_at = $3
                WHERE session_id = $1 AND id = $2 AND deleted_at IS NULL
                """, [.id(sessionId), .id(id), .time(SQL.stamp(after: previous, now: now))]
            )
            guard let message = try SQL.message(sessionId, id, db: db) else { return nil }
            try announce("changed \(sessionId.lowercased)/\(id.lowercased)", db: db)
            return message
        }
    }

    public func searchMessages(_ search: MessageSearch) async throws -> SearchPage {
        try await read { [dialect] db in
            let matches = dialect.search.matches(search.terms)
            var p = SQLParams(matches.params), filter = "m.deleted_at IS NULL"
            if let reader = search.reader.map({ p(.id($0)) }) { filter += " AND (s.user_id = \(reader) OR s.assignee_id = \(reader))" }
            if let session = search.sessionId { filter += " AND m.session_id = \(p(.id(session)))" }
            if let after = search.after {
                // The rank the cursor's message has now: on SQLite a rank (bm25) depends on the whole index, so
                // every message written since the last page shifts them all, and the cursor's old value would
                // start the next page in the wrong place.
                let now = try db.query(
                    "SELECT f.r FROM (\(matches.sql)) f JOIN chat_messages m ON m.\(dialect.search.key) = f.rid WHERE m.id = $\(matches.params.count + 1)",
                    matches.params + [.id(after.id)]
                ).first?.real(0)
                let (rank, id) = (p(.real(now ?? after.rank)), p(.id(after.id)))
                filter += " AND (f.r > \(rank) OR (f.r = \(rank) AND m.id > \(id)))"
            }
            let rows = try db.query(
                """
                SELECT \(SQL.messageColumns), f.rid, f.r FROM (\(matches.sql)) f
                JOIN chat_messages m ON m.\(dialect.search.key) = f.rid
                JOIN chat_sessions s ON s.session_id = m.session_id
                WHERE \(filter) ORDER BY f.r, m.id LIMIT \(p(.int(search.limit + 1)))
                """, p.values
            )
            let page = rows.prefix(search.limit)
            let width = Codec.message.columns.count
            guard !page.isEmpty else { return SearchPage(hits: [], hasMore: false) }
            let keys = page.map { $0.values[width] }
            let snippets = dialect.search.snippets(search.terms, keys.count)
            var snippet: [SQLValue: String] = [:]
            for row in try db.query(snippets.sql, snippets.params + keys) { snippet[row.values[0]] = row.optionalString(1) }
            let hits = try page.map { row -> SearchHit in
                let message = try Codec.message.decode(row)
                guard let rank = row.real(width + 1) else { throw StoreError(.failed, "search rank is not a number") }
                var text = snippet[row.values[width]] ?? message.content
                // A message holding the match marks itself cannot be highlighted: its snippet is plain text.
                let marks: Set<Unicode.Scalar> = ["\u{E000}", "\u{E001}"]
                if message.content.unicodeScalars.contains(where: marks.contains) {
                    text = String(String.UnicodeScalarView(text.unicodeScalars.filter { !marks.contains($0) }))
                }
                return SearchHit(message: message, rank: rank, snippet: text)
            }
            return SearchPage(hits: hits, hasMore: rows.count > search.limit)
        }
    }

    public func changedMessages(sessionId: UUID, upTo: UUID, since: Date, limit: Int) async throws -> [ChatMessage] {
        try await read { db in
            try db.select(
                Codec.message, "WHERE session_id = $1 AND id <= $2 AND (edited_at > $3 OR deleted_at > $3) ORDER BY id LIMIT $4",
                [.id(sessionId), .id(upTo), .time(since), .int(limit)]
            )
        }
    }

    // MARK: Read state

    public func markRead(sessionId: UUID, userId: UUID, messageId: UUID, now: Date) async throws -> ReadOutcome {
        try await write(atomic: true) { [dialect] db in
            guard try !db.query("SELECT 1 FROM chat_messages WHERE session_id = $1 AND id = $2", [.id(sessionId), .id(messageId)]).isEmpty else {
                return .messageNotFound
            }
            let read = SessionRead(sessionId: sessionId, userId: userId, lastReadId: messageId, readAt: now)
            try db.run(
                Codec.sessionRead.insert + """
                 ON CONFLICT (session_id, user_id) DO UPDATE SET last_read_id = excluded.last_read_id, read_at = excluded.read_at \
                WHERE session_reads.last_read_id < excluded.last_read_id
                """, Codec.sessionRead.values(read, dialect)
            )
            let current = try db.select(Codec.sessionRead, "WHERE session_id = $1 AND user_id = $2", [.id(sessionId), .id(userId)]).first ?? read
            let millis = Int64((current.readAt.timeIntervalSince1970 * 1000).rounded())
            try announce("read \([sessionId, userId, current.lastReadId].map(\.lowercased).joined(separator: "/"))/\(millis)", db: db)
            return .read(current)
        }
    }

    public func unreadCounts(sessionIds: [UUID], reader: UUID) async throws -> [UUID: Int] {
        guard !sessionIds.isEmpty else { return [:] }
        return try await read { db in
            let list = SQL.placeholders(sessionIds.count, after: 1)
            let rows = try db.query(
                """
                SELECT m.session_id, COUNT(*) FROM chat_messages m
                LEFT JOIN session_reads r ON r.session_id = m.session_id AND r.user_id = $1
                WHERE m.session_id IN (\(list)) AND (r.last_read_id IS NULL OR m.id > r.last_read_id) AND (m.user_id IS NULL OR m.user_id <> $1)
                GROUP BY m.session_id
                """, [.id(reader)] + sessionIds.map(SQLValue.id)
            )
            return try Dictionary(rows.map { (try $0.uuid(0), Int(try $0.int(1))) }, uniquingKeysWith: { a, _ in a })
        }
    }

    public func activity(since: Date) async throws -> ActivityReport {
        try await read { [dialect] db in
            func perDay(_ table: String) throws -> [String: Int] {
                let day = dialect.day("created_at")
                let rows = try db.query("SELECT \(day), COUNT(*) FROM \(table) WHERE created_at >= $1 GROUP BY \(day)", [.time(since)])
                return try Dictionary(rows.map { (try $0.string(0), Int(try $0.int(1))) }, uniquingKeysWith: +)
            }
            let opened = try db.query(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE is_resolved) FROM chat_sessions WHERE created_at >= $1", [.time(since)]
            ).first?.ints() ?? [0, 0]
            // The first user message and the first reply (an agent's or a person's, not a system note) of each
            // session, by the day it was opened.
            let pairs = try db.query(
                """
                SELECT (SELECT MIN(created_at) FROM chat_messages m WHERE m.session_id = s.session_id AND m.direction = 'inbound'),
                       (SELECT MIN(created_at) FROM chat_messages m WHERE m.session_id = s.session_id AND m.direction = 'outbound' AND m.type <> 'system'),
                       \(dialect.day("s.created_at"))
                FROM chat_sessions s WHERE s.created_at >= $1 ORDER BY s.created_at DESC LIMIT $2
                """, [.time(since), .int(ActivityReport.replySample)]
            )
            var replies: [String: [Double]] = [:]
            for row in pairs where row.values[0] != .null && row.values[1] != .null {
                let seconds = try row.date(1).timeIntervalSince(try row.date(0))
                if seconds >= 0 { replies[try row.string(2), default: []].append(seconds) }
            }
            return ActivityReport(
                messagesPerDay: try perDay("chat_messages"), sessionsPerDay: try perDay("chat_sessions"), sessionsOpened: opened[0],
                sessionsResolved: opened[1], firstReplySeconds: replies
            )
        }
    }

    public func statistics() async throws -> SessionStatistics {
        try await read { db in
            guard let row = try db.query(
                """
                SELECT COUNT(*), COUNT(*) FILTER (WHERE state = 'active'), COUNT(*) FILTER (WHERE state = 'expired'),
                       COUNT(*) FILTER (WHERE state = 'resolved'), COALESCE(SUM(message_count), 0), (SELECT COUNT(*) FROM users)
                FROM session_statistics
                """, []
            ).first else { throw StoreError(.failed, "statistics returned no row") }
            let n = try row.ints()
            return SessionStatistics(
                totalSessions: n[0], activeSessions: n[1], expiredSessions: n[2], resolvedSessions: n[3], totalMessages: n[4], totalUsers: n[5]
            )
        }
    }

    // MARK: Copying between stores

    public func recordCounts() async throws -> RecordCounts {
        try await read { db in
            let tables = [
                Codec.user.table, Codec.session.table, Codec.message.table, Codec.refreshToken.table, Codec.revokedAccessToken.table, Codec.sessionRead.table,
                "\(Codec.attachment.table) WHERE completed_at IS NOT NULL", "webhook_events",
            ]
            guard let row = try db.query("SELECT " + tables.map { "(SELECT COUNT(*) FROM \($0))" }.joined(separator: ", "), []).first else {
                throw StoreError(.failed, "counts returned no row")
            }
            let n = try row.ints()
            return RecordCounts(
                users: n[0], sessions: n[1], messages: n[2], refreshTokens: n[3], revokedAccessTokens: n[4], sessionReads: n[5], attachments: n[6],
                webhookEvents: n[7]
            )
        }
    }

    /// Up to `limit` records in key order: after `after`, or from the first one when it is nil.
    private func page<R>(_ codec: RowCodec<R>, after: UUID?, limit: Int) async throws -> [R] {
        try await read { db in
            try db.select(codec, "\(after == nil ? "" : "WHERE \(codec.key) > $2 ")ORDER BY \(codec.key) LIMIT $1", [.int(limit)] + (after.map { [.id($0)] } ?? []))
        }
    }

    public func exportUsers(after: UUID?, limit: Int) async throws -> [User] { try await page(Codec.user, after: after, limit: limit) }
    public func exportSessions(after: UUID?, limit: Int) async throws -> [ChatSession] { try await page(Codec.session, after: after, limit: limit) }
    public func exportMessages(after: UUID?, limit: Int) async throws -> [ChatMessage] { try await page(Codec.message, after: after, limit: limit) }
    public func exportRefreshTokens(after: UUID?, limit: Int) async throws -> [RefreshTokenRecord] {
        try await page(Codec.refreshToken, after: after, limit: limit)
    }

    public func exportRevokedAccessTokens() async throws -> [RevokedAccessToken] {
        try await read { db in try db.select(Codec.revokedAccessToken, "ORDER BY jti") }
    }

    public func exportSessionReads(after: UUID?, limit: Int) async throws -> [SessionRead] {
        try await read { db in
            // Whole sessions per page: a session's markers are never split between two pages.
            try db.select(
                Codec.sessionRead,
                """
                WHERE session_id IN (SELECT DISTINCT session_id FROM session_reads\(after == nil ? "" : " WHERE session_id > $2") ORDER BY session_id LIMIT $1) \
                ORDER BY session_id, user_id
                """, [.int(limit)] + (after.map { [.id($0)] } ?? [])
            )
        }
    }

    public func importRecords(_ batch: RecordBatch) async throws {
        try await write(atomic: true) { [dialect] db in
            // Imported rows are not new events: the triggers find no subscription until the transaction ends.
            let subscriptions = try db.query("SELECT event FROM webhook_subscriptions", []).map { $0.values[0] }
            try db.run("DELETE FROM webhook_subscriptions", [])
            func insert<R>(_ codec: RowCodec<R>, _ records: [R]) throws {
                for record in records { try db.run(codec.insert + " ON CONFLICT DO NOTHING", codec.values(record, dialect)) }
            }
            try insert(Codec.user, batch.users)
            try insert(Codec.session, batch.sessions)
            try insert(Codec.message, batch.messages)
            try insert(Codec.refreshToken, batch.refreshTokens)
            try insert(Codec.revokedAccessToken, batch.revokedAccessTokens)
            try insert(Codec.sessionRead, batch.sessionReads)
            try insert(Codec.attachment, batch.attachments)
            for chunk in batch.attachmentChunks {
                try db.run(
                    "INSERT INTO attachment_chunks (attachment_id, seq, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    [.id(chunk.attachmentId), .int(chunk.seq), .blob(chunk.data)]
                )
            }
            try Self.importWebhookOutbox(db, events: batch.webhookEvents, cursors: batch.webhookCursors, order: dialect.outbox)
            for event in subscriptions { try db.run("INSERT INTO webhook_subscriptions (event) VALUES ($1)", [event]) }
        }
    }
}
