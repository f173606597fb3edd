#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging

/// `ChatStore` over the system libpq: a small pool of connections on their own threads, every statement
/// prepared with bound parameters, migrations serialized across instances by an advisory lock.
public final class PostgresStore: ChatStore {
    /// Tuning for one store.
    public struct Options: Sendable {
        /// Connections (and threads) in the pool.
        public var poolSize: Int

        public init(poolSize: Int = 8) {
            self.poolSize = poolSize
        }
    }

    public let backend = "postgres"
    let pool: PostgresPool
    let appender: PostgresAppender
    let listener: PostgresListener

    private init(pool: PostgresPool) {
        self.pool = pool
        self.listener = PostgresListener(conninfo: pool.conninfo, channel: "chat_messages", instanceID: Self.instanceID)
        self.appender = PostgresAppender(
            conninfo: pool.conninfo, statement: Self.appendSQL, parameters: Self.appendParameters,
            single: Self.appendOne, decide: { db, message, owner, row in try Self.decideAppend(db, message, owner: owner, row: row) }
        )
    }

    /// Key of the advisory lock that makes instances starting together migrate one at a time.
    static let migrationLockKey: Int64 = 0x6368_6174_6d69_6772  // "chatmigr"

    /// Connects, applies pending migrations under an advisory lock, and returns the store.
    public static func open(
        conninfo: String,
        options: Options = Options(),
        migrations: MigrationSet = .postgres,
        logger: Logger = Logger(label: "chat-backend.storage", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws -> PostgresStore {
        let pool = PostgresPool(conninfo: conninfo, size: options.poolSize)
        do {
            let applied = try await pool.withConnection { db in try migrate(db, migrations: migrations) }
            for migration in applied {
                logger.info("applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
            }
            return PostgresStore(pool: pool)
        } catch {
            await pool.close()
            throw error
        }
    }

    static func migrate(_ db: PostgresConnection, migrations: MigrationSet) throws -> [Migration] {
        try db.query("SELECT pg_advisory_lock($1)", [.integer(migrationLockKey)])
        defer { _ = try? db.query("SELECT pg_advisory_unlock($1)", [.integer(migrationLockKey)]) }
        try db.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_history (
                version      INTEGER     PRIMARY KEY,
                name         TEXT        NOT NULL,
                checksum     INTEGER     NOT NULL,
                applied_at   TIMESTAMPTZ NOT NULL,
                execution_ms INTEGER     NOT NULL
            )
            """
        )
        let pending = try migrations.pending(applied: appliedMigrations(db))
        for migration in pending {
            let started = ContinuousClock.now
            try db.execute("BEGIN")
            do {
                try db.execute(migration.sql)
                let elapsed = ContinuousClock.now - started
                try db.run(
                    "INSERT INTO schema_history (version, name, checksum, applied_at, execution_ms) VALUES ($1, $2, $3, $4, $5)",
                    [.integer(Int64(migration.version)), .text(migration.name), .integer(Int64(migration.checksum)),
                     .text(Timestamp.format(Date())), .integer(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)]
                )
                try db.execute("COMMIT")
            } catch {
                try? db.execute("ROLLBACK")
                throw StoreError(.invalid, "migration V\(migration.version) \(migration.fileName) failed", detail: String(reflecting: error))
            }
        }
        return pending
    }

    static func appliedMigrations(_ db: PostgresConnection) throws -> [AppliedMigration] {
        try db.query("SELECT version, name, checksum, applied_at FROM schema_history ORDER BY version").map {
            AppliedMigration(
                version: Int(try $0.int(0)), name: try $0.string(1), checksum: Int32(truncatingIfNeeded: try $0.int(2)),
                appliedAt: Timestamp.format(try $0.date(3))
            )
        }
    }

    public func migrationStatus() async throws -> [MigrationStatus] {
        try await pool.withConnection { db in MigrationSet.postgres.status(applied: try Self.appliedMigrations(db)) }
    }

    public func ping() async throws {
        _ = try await pool.withConnection { db in try db.query("SELECT 1").count }
    }

    /// Down when Postgres cannot be reached or accepts no writes (a standby, a read-only default).
    public func health() async -> StoreHealth {
        do {
            let writable = try await pool.withConnection { db in
                try db.query("SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'").first?.bool(0) ?? false
            }
            return writable ? .up : .down(reason: "storage_read_only", detail: "the Postgres server accepts no writes (standby or read-only)")
        } catch {
            return .down(reason: "storage_unavailable", detail: String(describing: error))
        }
    }

    /// The server's version (`15.18`).
    public func serverVersion() async throws -> String {
        try await pool.withConnection { db in db.serverVersion }
    }

    public func close() async {
        listener.stop()
        await appender.close()
        await pool.close()
    }

    public func externalMessages() -> AsyncStream<ExternalChange>? {
        listener.start()
    }

    // MARK: Users

    static let userColumns = "id, username, email, password_hash, role, created_at, updated_at"

    static func user(_ row: PGRow) throws -> User {
        guard let role = Role(rawValue: try row.string(4)) else { throw StoreError(.failed, "unknown role") }
        return User(
            id: try row.uuid(0), username: try row.string(1), email: row.optionalString(2), passwordHash: try row.string(3),
            role: role, createdAt: try row.date(5), updatedAt: try row.date(6)
        )
    }

    public func createUser(_ user: User) async throws {
        try await pool.withConnection { db in
            do {
                try db.run(
                    "INSERT INTO users (\(Self.userColumns)) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    [.text(user.id.lowercased), .text(user.username), user.email.map(SQLValue.text) ?? .null, .text(user.passwordHash),
                     .text(user.role.rawValue), .text(Timestamp.format(user.createdAt)), .text(Timestamp.format(user.updatedAt))]
                )
            } catch let error as StoreError where error.kind == .conflict {
                throw StoreError(.conflict, "username is taken", detail: error.debugDescription)
            }
        }
    }

    public func user(id: UUID) async throws -> User? {
        try await pool.withConnection { db in
            try db.query("SELECT \(Self.userColumns) FROM users WHERE id = $1", [.text(id.lowercased)]).first.map(Self.user)
        }
    }

    public func user(username: String) async throws -> User? {
        try await pool.withConnection { db in
            try db.query("SELECT \(Self.userColumns) FROM users WHERE lower(username) = lower($1)", [.text(username)]).first.map(Self.user)
        }
    }

    // MARK: Tokens

    static func insertRefreshToken(_ token: RefreshTokenRecord, db: PostgresConnection) throws {
        try db.run(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at, used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [.text(token.id.lowercased), .text(token.userId.lowercased), .text(token.familyId.lowercased), .text(token.tokenHash),
             .text(Timestamp.format(token.expiresAt)), .text(Timestamp.format(token.createdAt)),
             token.usedAt.map { .text(Timestamp.format($0)) } ?? .null, token.revokedAt.map { .text(Timestamp.format($0)) } ?? .null]
        )
    }

    public func insertRefreshToken(_ token: RefreshTokenRecord) async throws {
        try await pool.withConnection { db in try Self.insertRefreshToken(token, db: db) }
    }

    public func rotateRefreshToken(hash: String, replacement: RefreshTokenRecord, now: Date) async throws -> RotateOutcome {
        try await pool.transaction { db in
            // FOR UPDATE: two concurrent uses of one token are serialized, so the second sees it used.
            guard let row = try db.query(
                "SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                [.text(hash)]
            ).first else { return .invalid }
            let familyId = try row.uuid(2)
            let userId = try row.uuid(1)
            let nowText = Timestamp.format(now)
            if row.optionalString(5) != nil { return .invalid }
            if row.optionalString(4) != nil {
                try db.run(
                    "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                    [.text(nowText), .text(familyId.lowercased)]
                )
                try Self.announceRevocation("revoke-family", familyId.lowercased, db: db)
                return .reused(familyId: familyId)
            }
            if try row.date(3) <= now { return .expired }
            try db.run("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2", [.text(nowText), .text(try row.string(0))])
            var next = replacement
            next.userId = userId
            next.familyId = familyId
            try Self.insertRefreshToken(next, db: db)
            return .rotated(userId: userId, familyId: familyId)
        }
    }

    public func revokeRefreshFamily(_ familyId: UUID, now: Date) async throws {
        try await pool.transaction { db in
            try db.run(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                [.text(Timestamp.format(now)), .text(familyId.lowercased)]
            )
            try Self.announceRevocation("revoke-family", familyId.lowercased, db: db)
        }
    }

    public func revokeAccessToken(jti: String, expiresAt: Date) async throws {
        try await pool.transaction { db in
            try db.run(
                "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                [.text(jti), .text(Timestamp.format(expiresAt))]
            )
            try Self.announceRevocation("revoke-token", jti, db: db)
        }
    }

    /// Tells the other instances (at commit) so they close that login's realtime connections at once.
    static func announceRevocation(_ kind: String, _ key: String, db: PostgresConnection) throws {
        _ = try db.query("SELECT pg_notify('chat_messages', $1)", [.text("\(instanceID) \(kind) \(key)")])
    }

    public func announceSessionChange(sessionId: UUID, reason: String) async throws {
        try await pool.withConnection { db in
            _ = try db.query("SELECT pg_notify('chat_messages', $1)", [.text("\(Self.instanceID) session:\(reason) \(sessionId.lowercased)")])
        }
    }

    public func isAccessTokenRevoked(jti: String) async throws -> Bool {
        try await pool.withConnection { db in
            try !db.query("SELECT 1 FROM revoked_access_tokens WHERE jti = $1", [.text(jti)]).isEmpty
        }
    }

    public func isRefreshFamilyRevoked(_ familyId: UUID) async throws -> Bool {
        try await pool.withConnection { db in
            try !db.query(
                "SELECT 1 FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NOT NULL LIMIT 1", [.text(familyId.lowercased)]
            ).isEmpty
        }
    }

    // MARK: Sessions

    static let sessionColumns = SessionSQL.columns
    static let sessionPlaceholders = SessionSQL.placeholders { "$\($0)" }
    static func session(_ row: PGRow) throws -> ChatSession { try SessionSQL.decode(row) }
    static func sessionValues(_ s: ChatSession) -> [SQLValue] { SessionSQL.values(s) { .text($0 ? "true" : "false") } }

    private static func loadSession(_ id: UUID, db: PostgresConnection, lock: Bool = false) throws -> ChatSession? {
        try db.query(
            "SELECT \(sessionColumns) FROM chat_sessions WHERE session_id = $1\(lock ? " FOR UPDATE" : "")", [.text(id.lowercased)]
        ).first.map(session)
    }

    static func insertSession(_ session: ChatSession, db: PostgresConnection) throws {
        try db.run("INSERT INTO chat_sessions (\(sessionColumns)) VALUES (\(sessionPlaceholders))", sessionValues(session))
    }

    public func createSession(_ session: ChatSession) async throws {
        try await pool.withConnection { db in try Self.insertSession(session, db: db) }
    }

    public func session(id: UUID) async throws -> ChatSession? {
        try await pool.withConnection { db in try Self.loadSession(id, db: db) }
    }

    public func sessions(_ query: SessionQuery) async throws -> SessionPage {
        try await pool.withConnection { db in
            var filter = "user_id = $1"
            var params: [SQLValue] = [.text(query.userId.lowercased)]
            if let state = query.state {
                params.append(.text(state.rawValue))
                filter += " AND state = $\(params.count)"
            }
            if let resolved = query.isResolved {
                params.append(.text(resolved ? "true" : "false"))
                filter += " AND is_resolved = $\(params.count)"
            }
            let total = try db.query("SELECT COUNT(*) FROM chat_sessions WHERE \(filter)", params).first?.int(0) ?? 0
            let rows = try db.query(
                "SELECT \(Self.sessionColumns) FROM chat_sessions WHERE \(filter) ORDER BY created_at DESC, session_id DESC LIMIT $\(params.count + 1) OFFSET $\(params.count + 2)",
                params + [.integer(Int64(query.limit)), .integer(Int64(query.offset))]
            )
            return SessionPage(sessions: try rows.map(Self.session), total: Int(total))
        }
    }

    public func resumeSession(id: UUID, expiresAt: Date, now: Date) async throws -> ResumeOutcome {
        try await pool.transaction { db in
            guard let current = try Self.loadSession(id, db: db, lock: true) else { return .notFound }
            if current.isResolved { return .resolved }
            try db.run(
                "UPDATE chat_sessions SET state = 'active', expires_at = $1, updated_at = $2 WHERE session_id = $3",
                [.text(Timestamp.format(expiresAt)), .text(Timestamp.format(now)), .text(id.lowercased)]
            )
            guard let updated = try Self.loadSession(id, db: db) else { return .notFound }
            return .resumed(updated)
        }
    }

    public func resolveSession(id: UUID, now: Date) async throws -> ChatSession? {
        try await pool.transaction { db in
            guard let current = try Self.loadSession(id, db: db, lock: true) else { return nil }
            if current.isResolved { return current }
            // The row lock waited for every send that had read the session (they hold a key-share lock
            // until they commit): resolved now, after all of them.
            let nowText = Timestamp.format(max(now, Timestamp.now()))
            try db.run(
                "UPDATE chat_sessions SET state = 'resolved', is_resolved = TRUE, resolved_at = $1, updated_at = $2 WHERE session_id = $3",
                [.text(nowText), .text(nowText), .text(id.lowercased)]
            )
            return try Self.loadSession(id, db: db)
        }
    }

    public func deleteSession(id: UUID) async throws -> Bool {
        try await pool.withConnection { db in
            try db.run("DELETE FROM chat_sessions WHERE session_id = $1", [.text(id.lowercased)]) > 0
        }
    }

    public func sweepExpired(now: Date) async throws -> Int {
        try await pool.transaction { db in
            let nowText = Timestamp.format(now)
            let expired = try db.run(
                "UPDATE chat_sessions SET state = 'expired', updated_at = $1 WHERE state = 'active' AND expires_at <= $2",
                [.text(nowText), .text(nowText)]
            )
            try db.run("DELETE FROM revoked_access_tokens WHERE expires_at <= $1", [.text(nowText)])
            try db.run("DELETE FROM refresh_tokens WHERE expires_at <= $1", [.text(nowText)])
            return expired
        }
    }

    // MARK: Agent routing

    public func assignAgent(sessionId: UUID, agent: String?, ifUnrouted: Bool, now: Date) async throws -> ChatSession? {
        try await pool.transaction { db in
            try db.run(
                SessionSQL.assignAgent(ifUnrouted: ifUnrouted) { "$\($0)" },
                [agent.map(SQLValue.text) ?? .null, .text(Timestamp.format(now)), .text(sessionId.lowercased)]
            )
            return try Self.loadSession(sessionId, db: db)
        }
    }

    public func requestHandoff(sessionId: UUID, now: Date) async throws -> ChatSession? {
        try await pool.transaction { db in
            try db.run(SessionSQL.requestHandoff { "$\($0)" }, [.text(Timestamp.format(now)), .text(sessionId.lowercased)])
            return try Self.loadSession(sessionId, db: db)
        }
    }

    public func claimHandoff(sessionId: UUID, assignee: UUID, now: Date) async throws -> ClaimOutcome {
        try await pool.transaction { db in
            let changed = try db.run(
                SessionSQL.claimHandoff { "$\($0)" }, [.text(assignee.lowercased), .text(Timestamp.format(now)), .text(sessionId.lowercased)]
            )
            guard let session = try Self.loadSession(sessionId, db: db) else { return .notFound }
            return changed > 0 ? .claimed(session) : .unavailable(session)
        }
    }

    public func handoffs(assignee: UUID?, limit: Int) async throws -> [ChatSession] {
        try await pool.withConnection { db in
            var params: [SQLValue] = [.text(String(limit))]
            if let assignee { params.append(.text(assignee.lowercased)) }
            return try db.query(SessionSQL.handoffs(mine: assignee != nil) { "$\($0)" }, params).map(Self.session)
        }
    }

    // MARK: Messages

    static let messageColumns = "id, session_id, user_id, content, type, direction, metadata, client_message_id, created_at, updated_at"

    static func message(_ row: PGRow) throws -> ChatMessage {
        guard let direction = MessageDirection(rawValue: try row.string(5)) else { throw StoreError(.failed, "unknown direction") }
        return ChatMessage(
            id: try row.uuid(0), sessionId: try row.uuid(1), userId: row.optionalUUID(2), content: try row.string(3), type: try row.string(4),
            direction: direction, metadata: try row.json(6), clientMessageId: row.optionalString(7), createdAt: try row.date(8), updatedAt: try row.date(9)
        )
    }

    static func messageParams(_ message: ChatMessage) -> [SQLValue] {
        [.text(message.id.lowercased), .text(message.sessionId.lowercased), message.userId.map { .text($0.lowercased) } ?? .null,
         .text(message.content), .text(message.type), .text(message.direction.rawValue), .text(message.metadata.jsonText()),
         message.clientMessageId.map(SQLValue.text) ?? .null,
         .text(Timestamp.format(message.createdAt)), .text(Timestamp.format(message.updatedAt))]
    }

    /// Checks the session and inserts in one statement (one round trip, its own transaction): the insert
    /// happens only when the session exists, belongs to `owner`, is open and unexpired, and the client id is new.
    /// The session row is key-share locked until the (batch's) commit, so a resolve, which locks the row
    /// for update, either waits for the send to commit or is seen by it: no message lands after a resolve.
    private static let appendSQL = """
        WITH s AS (
            SELECT is_resolved, state, expires_at, user_id FROM chat_sessions WHERE session_id = $2::uuid FOR KEY SHARE
        ), ins AS (
            INSERT INTO chat_messages (\(messageColumns))
            SELECT $1::uuid, $2::uuid, $3::uuid, $4::text, $5::varchar, $6::varchar, $7::jsonb, $8::varchar, $9::timestamptz, $10::timestamptz
            FROM s
            WHERE NOT s.is_resolved AND s.state = 'active' AND s.expires_at > $11::timestamptz
              AND ($12::uuid IS NULL OR s.user_id = $12::uuid)
            ON CONFLICT (session_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING
            RETURNING id
        ), announced AS (
            SELECT pg_notify('chat_messages', $13::text || ' ' || $2::text || ' ' || $1::text) FROM ins
        )
        SELECT s.is_resolved, s.state, s.expires_at, s.user_id, (SELECT count(*) FROM ins), (SELECT count(*) FROM announced) FROM s
        """

    public func appendMessage(_ message: ChatMessage, now: Date, owner: UUID?) async throws -> AppendOutcome {
        try await appender.append(message, now: now, owner: owner)
    }

    /// Identifies this process in NOTIFY payloads, so it ignores its own announcements.
    static let instanceID = UUID().lowercased

    static func appendParameters(_ message: ChatMessage, now: Date, owner: UUID?) -> [SQLValue] {
        messageParams(message) + [.text(Timestamp.format(now)), owner.map { .text($0.lowercased) } ?? .null, .text(instanceID)]
    }

    /// One append on its own.
    static func appendOne(_ db: PostgresConnection, _ message: ChatMessage, now: Date, owner: UUID?) throws -> AppendOutcome {
        try decideAppend(db, message, owner: owner, row: db.query(appendSQL, appendParameters(message, now: now, owner: owner)).first)
    }

    /// The outcome of an append from the row its statement returned (nil: no such session).
    static func decideAppend(_ db: PostgresConnection, _ message: ChatMessage, owner: UUID?, row: PGRow?) throws -> AppendOutcome {
        guard let session = row else { return .sessionNotFound }
        if let owner, try session.uuid(3) != owner { return .sessionNotFound }
        if try session.int(4) == 1 { return .created(message) }
        if let clientId = message.clientMessageId,
           let existing = try db.query(
               "SELECT \(messageColumns) FROM chat_messages WHERE session_id = $1 AND client_message_id = $2",
               [.text(message.sessionId.lowercased), .text(clientId)]
           ).first {
            return .duplicate(try Self.message(existing))
        }
        if try session.bool(0) { return .sessionResolved }
        return .sessionExpired
    }

    public func messages(_ query: MessageQuery) async throws -> MessagePage {
        try await pool.withConnection { db in
            var filter = "session_id = $1"
            var params: [SQLValue] = [.text(query.sessionId.lowercased)]
            if let after = query.after {
                params.append(.text(after.lowercased))
                filter += " AND id > $\(params.count)"
            }
            if let before = query.before {
                params.append(.text(before.lowercased))
                filter += " AND id < $\(params.count)"
            }
            let backwards = query.before != nil && query.after == nil
            params.append(.integer(Int64(query.limit + 1)))
            let rows = try db.query(
                "SELECT \(Self.messageColumns) FROM chat_messages WHERE \(filter) ORDER BY id \(backwards ? "DESC" : "ASC") LIMIT $\(params.count)",
                params
            )
            var messages = try rows.prefix(query.limit).map(Self.message)
            if backwards { messages.reverse() }
            return MessagePage(messages: messages, hasMore: rows.count > query.limit)
        }
    }

    public func message(sessionId: UUID, id: UUID) async throws -> ChatMessage? {
        try await pool.withConnection { db in
            try db.query(
                "SELECT \(Self.messageColumns) FROM chat_messages WHERE session_id = $1 AND id = $2",
                [.text(sessionId.lowercased), .text(id.lowercased)]
            ).first.map(Self.message)
        }
    }

    public func statistics() async throws -> SessionStatistics {
        try await pool.withConnection { db in
            guard let row = try db.query(
                """
                SELECT COUNT(*),
                       COUNT(*) FILTER (WHERE state = 'active'), COUNT(*) FILTER (WHERE state = 'expired'),
                       COUNT(*) FILTER (WHERE state = 'resolved'), COALESCE(SUM(message_count), 0), (SELECT COUNT(*) FROM users)
                FROM session_statistics
                """
            ).first else { throw StoreError(.failed, "statistics returned no row") }
            return SessionStatistics(
                totalSessions: Int(try row.int(0)), activeSessions: Int(try row.int(1)), expiredSessions: Int(try row.int(2)),
                resolvedSessions: Int(try row.int(3)), totalMessages: Int(try row.int(4)), totalUsers: Int(try row.int(5))
            )
        }
    }
}
