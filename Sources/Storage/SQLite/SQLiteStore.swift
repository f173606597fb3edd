#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// `ChatStore` over the system libsqlite3: WAL, one group-committing writer, a few readers.
public final class SQLiteStore: ChatStore {
    /// How hard SQLite syncs a commit to disk.
    public enum Synchronous: String, Sendable {
        /// A committed write survives power loss (the default: a 201 means on disk).
        case full = "FULL"
        /// A committed write survives a process crash, not a power loss.
        case normal = "NORMAL"
    }

    /// Tuning for one store.
    public struct Options: Sendable {
        public var synchronous: Synchronous
        public var readerCount: Int
        /// Run `PRAGMA quick_check` before serving (refuse a damaged file).
        public var checkIntegrity: Bool

        public init(synchronous: Synchronous = .full, readerCount: Int = 2, checkIntegrity: Bool = true) {
            self.synchronous = synchronous
            self.readerCount = max(1, readerCount)
            self.checkIntegrity = checkIntegrity
        }
    }

    public let backend = "sqlite"
    public let path: String
    let writer: SQLiteWriter
    let readers: SQLiteReaders
    let condition: SQLiteCondition

    private init(path: String, writer: SQLiteWriter, readers: SQLiteReaders, condition: SQLiteCondition) {
        self.path = path
        self.writer = writer
        self.readers = readers
        self.condition = condition
    }

    /// How to recover a damaged database, for the operator (the README says the same).
    public static let recoverySteps =
        "stop the server and restore the latest `chat-backend backup` copy, or salvage what is readable with `sqlite3 FILE .recover | sqlite3 NEW-FILE` (README, \"Recovering a damaged database\")"

    /// Opens (creating if needed) the database at `path`, applies pending migrations and opens the readers.
    public static func open(
        path: String,
        options: Options = Options(),
        migrations: MigrationSet = .sqlite,
        logger: Logger = Logger(label: "chat-backend.storage", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws -> SQLiteStore {
        try createOwnerOnly(path)
        let condition = SQLiteCondition { detail in
            logger.critical("the database file is corrupt: no more reads or writes until it is repaired", metadata: [
                "file": .string(path), "detail": .string(detail), "recovery": .string(recoverySteps),
            ])
        }
        let writerConnection = try SQLiteConnection(path: path)
        writerConnection.condition = condition
        if writerConnection.isReadOnly {
            throw StoreError(.unavailable, "\(path) is read-only for this process: the server must be able to write to the database file and its directory")
        }
        let writer = SQLiteWriter(connection: writerConnection, condition: condition)
        do {
            let synchronous = options.synchronous.rawValue
            let checkIntegrity = options.checkIntegrity
            try await writer.withConnection { db in
                if checkIntegrity, let problem = try db.quickCheck() {
                    throw StoreError(.corrupt, "\(path) is corrupt (\(problem)); \(recoverySteps)")
                }
                // journal_mode answers with the mode it ended up in; anything but WAL is an error.
                guard try db.query("PRAGMA journal_mode=WAL").first?.optionalString(0)?.lowercased() == "wal" else {
                    throw StoreError(.unavailable, "cannot switch the database to WAL mode", detail: path)
                }
                try db.execute("PRAGMA synchronous=\(synchronous)")
                try db.execute("PRAGMA foreign_keys=ON")
                let applied = try migrate(db, migrations: migrations)
                for migration in applied {
                    logger.info("applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
                }
            }
            var connections: [SQLiteConnection] = []
            for _ in 0..<options.readerCount {
                let reader = try SQLiteConnection(path: path)
                reader.condition = condition
                try reader.execute("PRAGMA foreign_keys=ON; PRAGMA query_only=1")
                connections.append(reader)
            }
            return SQLiteStore(path: path, writer: writer, readers: SQLiteReaders(connections: connections), condition: condition)
        } catch let error as StoreError where error.kind == .corrupt && error.detail != nil {
            await writer.close { _ in }
            throw StoreError(.corrupt, "\(path) is corrupt (\(error.detail!)); \(recoverySteps)")
        } catch {
            await writer.close { _ in }
            throw error
        }
    }

    /// Creates the database file owner-only (0600) when it does not exist yet, whatever the umask: it
    /// holds password and token hashes. SQLite gives its `-wal` and `-shm` files the same mode.
    static func createOwnerOnly(_ path: String) throws {
        guard path != ":memory:", !path.hasPrefix("file:") else { return }
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 {
            defer { Glibc.close(fd) }
            guard fchmod(fd, 0o600) == 0 else { throw StoreError(.unavailable, "cannot restrict \(path) to its owner: \(String(cString: strerror(errno)))") }
            return
        }
        guard errno == EEXIST else {
            throw StoreError(.unavailable, "cannot create the database file \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Applies pending migrations, each in its own transaction, recording them in `schema_history`.
    static func migrate(_ db: SQLiteConnection, migrations: MigrationSet) throws -> [Migration] {
        try db.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_history (
                version      INTEGER PRIMARY KEY NOT NULL,
                name         TEXT    NOT NULL,
                checksum     INTEGER NOT NULL,
                applied_at   TEXT    NOT NULL,
                execution_ms INTEGER NOT NULL
            )
            """
        )
        try db.execute("BEGIN IMMEDIATE")
        let pending: [Migration]
        do {
            pending = try migrations.pending(applied: appliedMigrations(db))
            try db.execute("COMMIT")
        } catch {
            try? db.execute("ROLLBACK")
            throw error
        }
        for migration in pending {
            let started = ContinuousClock.now
            try db.execute("BEGIN IMMEDIATE")
            // Another process (`migrate` beside `serve`) may have applied it since the check above.
            if try !db.query("SELECT 1 FROM schema_history WHERE version = ?", [.integer(Int64(migration.version))]).isEmpty {
                try db.execute("COMMIT")
                continue
            }
            do {
                try db.execute(migration.sql)
                let elapsed = ContinuousClock.now - started
                try db.run(
                    "INSERT INTO schema_history (version, name, checksum, applied_at, execution_ms) VALUES (?, ?, ?, ?, ?)",
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

    static func appliedMigrations(_ db: SQLiteConnection) throws -> [AppliedMigration] {
        try db.query("SELECT version, name, checksum, applied_at FROM schema_history ORDER BY version").map {
            AppliedMigration(version: Int(try $0.int(0)), name: try $0.string(1), checksum: Int32(truncatingIfNeeded: try $0.int(2)), appliedAt: try $0.string(3))
        }
    }

    public func migrationStatus() async throws -> [MigrationStatus] {
        try await readers.read { db in MigrationSet.sqlite.status(applied: try Self.appliedMigrations(db)) }
    }

    public func ping() async throws {
        _ = try await readers.read { db in try db.query("SELECT 1").count }
    }

    /// Down when the file is corrupt, not writable, or on a (nearly) full file system, or when the last
    /// write failed and a probe write still fails.
    public func health() async -> StoreHealth {
        if let detail = condition.corrupt { return .down(reason: "storage_corrupt", detail: "the database file is corrupt: \(detail)") }
        if access(path, W_OK) != 0 { return .down(reason: "storage_read_only", detail: "\(path) is not writable") }
        if let free = Self.freeBytes(near: path), free < Self.minimumFreeBytes {
            return .down(reason: "storage_full", detail: "the file system of \(path) has \(free) bytes free")
        }
        if condition.lastWriteFailure != nil {
            // Space or permission may be back: a real write tells.
            do {
                try await writer.write { db in try db.run("UPDATE schema_history SET name = name WHERE version = (SELECT MIN(version) FROM schema_history)") }
            } catch {
                return .down(reason: "storage_unavailable", detail: "writes fail: \(condition.lastWriteFailure ?? String(describing: error))")
            }
        }
        do {
            try await ping()
            return .up
        } catch {
            return .down(reason: condition.corrupt == nil ? "storage_unavailable" : "storage_corrupt", detail: String(describing: error))
        }
    }

    /// Below this much free space a write may fail: the server reports itself unready.
    static let minimumFreeBytes: UInt64 = 1 << 20

    /// Free bytes on the file system holding `path` (what this process may use), nil when unknown.
    static func freeBytes(near path: String) -> UInt64? {
        var info = statvfs()
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        guard statvfs(directory.isEmpty ? "/" : directory, &info) == 0 else { return nil }
        let blocks = geteuid() == 0 ? UInt64(info.f_bfree) : UInt64(info.f_bavail)
        return blocks * UInt64(info.f_frsize)
    }

    public func close() async {
        await writer.close { db in
            try? db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        }
        await readers.close()
    }

    /// Copies the live database into `destination` with SQLite's online backup, consistent while writes go on.
    public func backup(to destination: String) async throws {
        try await readers.read { db in try db.backup(to: destination) }
    }

    /// Backs up the database at `path` without opening it as a store: nothing is migrated or written.
    public static func backup(path: String, to destination: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw StoreError(.notFound, "no database at \(path)") }
        try SQLiteConnection(path: path, readOnly: true).backup(to: destination)
    }

    // MARK: Users

    static let userColumns = "id, username, email, password_hash, role, created_at, updated_at"

    static func user(_ row: SQLRow) throws -> User {
        guard let role = Role(rawValue: try row.string(4)) else { throw StoreError(.failed, "unknown role") }
        return User(
            id: try row.uuid(0), username: try row.string(1), email: row.optionalString(2), passwordHash: try row.string(3),
            role: role, createdAt: try row.date(5), updatedAt: try row.date(6)
        )
    }

    public func createUser(_ user: User) async throws {
        try await writer.write { db in
            do {
                try db.run(
                    "INSERT INTO users (\(Self.userColumns)) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [.text(user.id.lowercased), .text(user.username), user.email.map(SQLValue.text) ?? .null, .text(user.passwordHash),
                     .text(user.role.rawValue), .text(Timestamp.format(user.createdAt)), .text(Timestamp.format(user.updatedAt))]
                )
            } catch let error as StoreError where error.kind == .conflict {
                throw StoreError(.conflict, "username is taken", detail: error.debugDescription)
            }
        }
    }

    public func user(id: UUID) async throws -> User? {
        try await readers.read { db in
            try db.query("SELECT \(Self.userColumns) FROM users WHERE id = ?", [.text(id.lowercased)]).first.map(Self.user)
        }
    }

    public func user(username: String) async throws -> User? {
        try await readers.read { db in
            try db.query("SELECT \(Self.userColumns) FROM users WHERE lower(username) = lower(?)", [.text(username)]).first.map(Self.user)
        }
    }

    // MARK: Tokens

    public func insertRefreshToken(_ token: RefreshTokenRecord) async throws {
        try await writer.write { db in
            try Self.insertRefreshToken(token, db: db)
        }
    }

    static func insertRefreshToken(_ token: RefreshTokenRecord, db: SQLiteConnection) throws {
        try db.run(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [.text(token.id.lowercased), .text(token.userId.lowercased), .text(token.familyId.lowercased), .text(token.tokenHash),
             .text(Timestamp.format(token.expiresAt)), .text(Timestamp.format(token.createdAt))]
        )
    }

    public func rotateRefreshToken(hash: String, replacement: RefreshTokenRecord, now: Date) async throws -> RotateOutcome {
        try await writer.write { db in
            guard let row = try db.query(
                "SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = ?", [.text(hash)]
            ).first else { return .invalid }
            let familyId = try row.uuid(2)
            let userId = try row.uuid(1)
            let nowText = Timestamp.format(now)
            if row.optionalString(5) != nil { return .invalid }
            if row.optionalString(4) != nil {
                try db.run(
                    "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
                    [.text(nowText), .text(familyId.lowercased)]
                )
                return .reused(familyId: familyId)
            }
            if try row.date(3) <= now { return .expired }
            try db.run("UPDATE refresh_tokens SET used_at = ? WHERE id = ?", [.text(nowText), .text(try row.string(0))])
            var next = replacement
            next.userId = userId
            next.familyId = familyId
            try Self.insertRefreshToken(next, db: db)
            return .rotated(userId: userId, familyId: familyId)
        }
    }

    public func revokeRefreshFamily(_ familyId: UUID, now: Date) async throws {
        try await writer.write { db in
            try db.run(
                "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
                [.text(Timestamp.format(now)), .text(familyId.lowercased)]
            )
        }
    }

    public func revokeAccessToken(jti: String, expiresAt: Date) async throws {
        try await writer.write { db in
            try db.run(
                "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING",
                [.text(jti), .text(Timestamp.format(expiresAt))]
            )
        }
    }

    public func isAccessTokenRevoked(jti: String) async throws -> Bool {
        try await readers.read { db in
            try !db.query("SELECT 1 FROM revoked_access_tokens WHERE jti = ?", [.text(jti)]).isEmpty
        }
    }

    public func isRefreshFamilyRevoked(_ familyId: UUID) async throws -> Bool {
        try await readers.read { db in
            try !db.query(
                "SELECT 1 FROM refresh_tokens WHERE family_id = ? AND revoked_at IS NOT NULL LIMIT 1", [.text(familyId.lowercased)]
            ).isEmpty
        }
    }

    // MARK: Sessions

    static let sessionColumns = SessionSQL.columns
    static let sessionPlaceholders = SessionSQL.placeholders { _ in "?" }
    static func session(_ row: SQLRow) throws -> ChatSession { try SessionSQL.decode(row) }
    static func sessionValues(_ s: ChatSession) -> [SQLValue] { SessionSQL.values(s) { .integer($0 ? 1 : 0) } }

    private static func loadSession(_ id: UUID, db: SQLiteConnection) throws -> ChatSession? {
        try db.query("SELECT \(sessionColumns) FROM chat_sessions WHERE session_id = ?", [.text(id.lowercased)]).first.map(session)
    }

    public func createSession(_ session: ChatSession) async throws {
        try await writer.write { db in
            try db.run("INSERT INTO chat_sessions (\(Self.sessionColumns)) VALUES (\(Self.sessionPlaceholders))", Self.sessionValues(session))
        }
    }

    public func session(id: UUID) async throws -> ChatSession? {
        try await readers.read { db in try Self.loadSession(id, db: db) }
    }

    public func sessions(_ query: SessionQuery) async throws -> SessionPage {
        try await readers.read { db in
            var filter = "user_id = ?"
            var params: [SQLValue] = [.text(query.userId.lowercased)]
            if let state = query.state {
                filter += " AND state = ?"
                params.append(.text(state.rawValue))
            }
            if let resolved = query.isResolved {
                filter += " AND is_resolved = ?"
                params.append(.integer(resolved ? 1 : 0))
            }
            let total = try db.query("SELECT COUNT(*) FROM chat_sessions WHERE \(filter)", params).first?.int(0) ?? 0
            let rows = try db.query(
                "SELECT \(Self.sessionColumns) FROM chat_sessions WHERE \(filter) ORDER BY created_at DESC, session_id DESC LIMIT ? OFFSET ?",
                params + [.integer(Int64(query.limit)), .integer(Int64(query.offset))]
            )
            return SessionPage(sessions: try rows.map(Self.session), total: Int(total))
        }
    }

    public func resumeSession(id: UUID, expiresAt: Date, now: Date) async throws -> ResumeOutcome {
        try await writer.write { db in
            guard let current = try Self.loadSession(id, db: db) else { return .notFound }
            if current.isResolved { return .resolved }
            try db.run(
                "UPDATE chat_sessions SET state = 'active', expires_at = ?, updated_at = ? WHERE session_id = ?",
                [.text(Timestamp.format(expiresAt)), .text(Timestamp.format(now)), .text(id.lowercased)]
            )
            guard let updated = try Self.loadSession(id, db: db) else { return .notFound }
            return .resumed(updated)
        }
    }

    public func resolveSession(id: UUID, now: Date) async throws -> ChatSession? {
        try await writer.write { db in
            guard let current = try Self.loadSession(id, db: db) else { return nil }
            if current.isResolved { return current }
            // Resolved when it commits: later than every message written before it.
            let nowText = Timestamp.format(max(now, Timestamp.now()))
            try db.run(
                "UPDATE chat_sessions SET state = 'resolved', is_resolved = 1, resolved_at = ?, updated_at = ? WHERE session_id = ?",
                [.text(nowText), .text(nowText), .text(id.lowercased)]
            )
            return try Self.loadSession(id, db: db)
        }
    }

    public func deleteSession(id: UUID) async throws -> Bool {
        try await writer.write { db in
            try db.run("DELETE FROM chat_sessions WHERE session_id = ?", [.text(id.lowercased)]) > 0
        }
    }

    public func sweepExpired(now: Date) async throws -> Int {
        try await writer.write { db in
            let nowText = Timestamp.format(now)
            let expired = try db.run(
                "UPDATE chat_sessions SET state = 'expired', updated_at = ? WHERE state = 'active' AND expires_at <= ?",
                [.text(nowText), .text(nowText)]
            )
            try db.run("DELETE FROM revoked_access_tokens WHERE expires_at <= ?", [.text(nowText)])
            try db.run("DELETE FROM refresh_tokens WHERE expires_at <= ?", [.text(nowText)])
            return expired
        }
    }

    // MARK: Agent routing

    public func assignAgent(sessionId: UUID, agent: String?, ifUnrouted: Bool, now: Date) async throws -> ChatSession? {
        try await writer.write { db in
            try db.run(
                SessionSQL.assignAgent(ifUnrouted: ifUnrouted) { _ in "?" },
                [agent.map(SQLValue.text) ?? .null, .text(Timestamp.format(now)), .text(sessionId.lowercased)]
            )
            return try Self.loadSession(sessionId, db: db)
        }
    }

    public func requestHandoff(sessionId: UUID, now: Date) async throws -> ChatSession? {
        try await writer.write { db in
            try db.run(SessionSQL.requestHandoff { "?\($0)" }, [.text(Timestamp.format(now)), .text(sessionId.lowercased)])
            return try Self.loadSession(sessionId, db: db)
        }
    }

    public func claimHandoff(sessionId: UUID, assignee: UUID, now: Date) async throws -> ClaimOutcome {
        try await writer.write { db in
            let changed = try db.run(
                SessionSQL.claimHandoff { "?\($0)" }, [.text(assignee.lowercased), .text(Timestamp.format(now)), .text(sessionId.lowercased)]
            )
            guard let session = try Self.loadSession(sessionId, db: db) else { return .notFound }
            return changed > 0 ? .claimed(session) : .unavailable(session)
        }
    }

    public func handoffs(assignee: UUID?, limit: Int) async throws -> [ChatSession] {
        try await readers.read { db in
            var params: [SQLValue] = [.integer(Int64(limit))]
            if let assignee { params.append(.text(assignee.lowercased)) }
            return try db.query(SessionSQL.handoffs(mine: assignee != nil) { "?\($0)" }, params).map(Self.session)
        }
    }

    // MARK: Messages

    static let messageColumns = "id, session_id, user_id, content, type, direction, metadata, client_message_id, created_at, updated_at"

    static func message(_ row: SQLRow) throws -> ChatMessage {
        guard let direction = MessageDirection(rawValue: try row.string(5)) else { throw StoreError(.failed, "unknown direction") }
        return ChatMessage(
            id: try row.uuid(0), sessionId: try row.uuid(1), userId: row.optionalUUID(2), content: try row.string(3), type: try row.string(4),
            direction: direction, metadata: try row.json(6), clientMessageId: row.optionalString(7), createdAt: try row.date(8), updatedAt: try row.date(9)
        )
    }

    public func appendMessage(_ message: ChatMessage, now: Date, owner: UUID?) async throws -> AppendOutcome {
        try await writer.write { db in
            // The id is made here, on the one writer thread, so ids are in commit order: a reader paging
            // with `after` can never see a message before an earlier-id one is committed.
            var message = message
            message.id = UUIDv7.make(now: now)
            guard let session = try db.query(
                "SELECT is_resolved, state, expires_at, user_id FROM chat_sessions WHERE session_id = ?", [.text(message.sessionId.lowercased)]
            ).first else { return .sessionNotFound }
            if let owner, try session.uuid(3) != owner { return .sessionNotFound }
            if let clientId = message.clientMessageId,
               let existing = try db.query(
                   "SELECT \(Self.messageColumns) FROM chat_messages WHERE session_id = ? AND client_message_id = ?",
                   [.text(message.sessionId.lowercased), .text(clientId)]
               ).first {
                return .duplicate(try Self.message(existing))
            }
            if try session.int(0) != 0 { return .sessionResolved }
            if try session.string(1) == SessionState.expired.rawValue || (try session.date(2)) <= now { return .sessionExpired }
            try db.run(
                "INSERT INTO chat_messages (\(Self.messageColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [.text(message.id.lowercased), .text(message.sessionId.lowercased), message.userId.map { .text($0.lowercased) } ?? .null,
                 .text(message.content), .text(message.type), .text(message.direction.rawValue), .text(message.metadata.jsonText()),
                 message.clientMessageId.map(SQLValue.text) ?? .null,
                 .text(Timestamp.format(message.createdAt)), .text(Timestamp.format(message.updatedAt))]
            )
            return .created(message)
        }
    }

    public func messages(_ query: MessageQuery) async throws -> MessagePage {
        try await readers.read { db in
            var filter = "session_id = ?"
            var params: [SQLValue] = [.text(query.sessionId.lowercased)]
            if let after = query.after {
                filter += " AND id > ?"
                params.append(.text(after.lowercased))
            }
            if let before = query.before {
                filter += " AND id < ?"
                params.append(.text(before.lowercased))
            }
            // Only `before`: the newest page before the cursor, read backwards then put in order.
            let backwards = query.before != nil && query.after == nil
            let rows = try db.query(
                "SELECT \(Self.messageColumns) FROM chat_messages WHERE \(filter) ORDER BY id \(backwards ? "DESC" : "ASC") LIMIT ?",
                params + [.integer(Int64(query.limit + 1))]
            )
            var messages = try rows.prefix(query.limit).map(Self.message)
            if backwards { messages.reverse() }
            return MessagePage(messages: messages, hasMore: rows.count > query.limit)
        }
    }

    public func message(sessionId: UUID, id: UUID) async throws -> ChatMessage? {
        try await readers.read { db in
            try db.query(
                "SELECT \(Self.messageColumns) FROM chat_messages WHERE session_id = ? AND id = ?",
                [.text(sessionId.lowercased), .text(id.lowercased)]
            ).first.map(Self.message)
        }
    }

    public func statistics() async throws -> SessionStatistics {
        try await readers.read { db in
            guard let row = try db.query(
                """
                SELECT COUNT(*),
                       COALESCE(SUM(state = 'active'), 0), COALESCE(SUM(state = 'expired'), 0), COALESCE(SUM(state = 'resolved'), 0),
                       COALESCE(SUM(message_count), 0), (SELECT COUNT(*) FROM users)
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
