#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import CSQLite

extension SQLiteStore {
    public func recordCounts() async throws -> RecordCounts {
        try await readers.read { db in
            guard let row = try db.query(
                """
                SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM chat_sessions), (SELECT COUNT(*) FROM chat_messages),
                       (SELECT COUNT(*) FROM refresh_tokens), (SELECT COUNT(*) FROM revoked_access_tokens)
                """
            ).first else { throw StoreError(.failed, "counts returned no row") }
            return RecordCounts(
                users: Int(try row.int(0)), sessions: Int(try row.int(1)), messages: Int(try row.int(2)),
                refreshTokens: Int(try row.int(3)), revokedAccessTokens: Int(try row.int(4))
            )
        }
    }

    private func page<T: Sendable>(
        _ table: String, key: String, columns: String, after: UUID?, limit: Int, decode: @escaping @Sendable (SQLRow) throws -> T
    ) async throws -> [T] {
        try await readers.read { db in
            try db.query(
                "SELECT \(columns) FROM \(table) WHERE \(key) > ? ORDER BY \(key) LIMIT ?",
                [.text(after?.lowercased ?? ""), .integer(Int64(limit))]
            ).map(decode)
        }
    }

    public func exportUsers(after: UUID?, limit: Int) async throws -> [User] {
        try await page("users", key: "id", columns: Self.userColumns, after: after, limit: limit, decode: Self.user)
    }

    public func exportSessions(after: UUID?, limit: Int) async throws -> [ChatSession] {
        try await page("chat_sessions", key: "session_id", columns: Self.sessionColumns, after: after, limit: limit, decode: Self.session)
    }

    public func exportMessages(after: UUID?, limit: Int) async throws -> [ChatMessage] {
        try await page("chat_messages", key: "id", columns: Self.messageColumns, after: after, limit: limit, decode: Self.message)
    }

    public func exportRefreshTokens(after: UUID?, limit: Int) async throws -> [RefreshTokenRecord] {
        try await page(
            "refresh_tokens", key: "id", columns: "id, user_id, family_id, token_hash, expires_at, created_at, used_at, revoked_at",
            after: after, limit: limit
        ) { row in
            RefreshTokenRecord(
                id: try row.uuid(0), userId: try row.uuid(1), familyId: try row.uuid(2), tokenHash: try row.string(3),
                expiresAt: try row.date(4), createdAt: try row.date(5), usedAt: row.optionalDate(6), revokedAt: row.optionalDate(7)
            )
        }
    }

    public func exportRevokedAccessTokens() async throws -> [RevokedAccessToken] {
        try await readers.read { db in
            try db.query("SELECT jti, expires_at FROM revoked_access_tokens ORDER BY jti").map {
                RevokedAccessToken(jti: try $0.string(0), expiresAt: try $0.date(1))
            }
        }
    }

    public func importRecords(_ batch: RecordBatch) async throws {
        try await writer.write { db in
            for u in batch.users {
                try db.run(
                    "INSERT INTO users (\(Self.userColumns)) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [.text(u.id.lowercased), .text(u.username), u.email.map(SQLValue.text) ?? .null, .text(u.passwordHash),
                     .text(u.role.rawValue), .text(Timestamp.format(u.createdAt)), .text(Timestamp.format(u.updatedAt))]
                )
            }
            for s in batch.sessions {
                try db.run(
                    "INSERT INTO chat_sessions (\(Self.sessionColumns)) VALUES (\(Self.sessionPlaceholders)) ON CONFLICT DO NOTHING",
                    Self.sessionValues(s)
                )
            }
            for m in batch.messages {
                try db.run(
                    "INSERT INTO chat_messages (\(Self.messageColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [.text(m.id.lowercased), .text(m.sessionId.lowercased), m.userId.map { .text($0.lowercased) } ?? .null,
                     .text(m.content), .text(m.type), .text(m.direction.rawValue), .text(m.metadata.jsonText()),
                     m.clientMessageId.map(SQLValue.text) ?? .null, .text(Timestamp.format(m.createdAt)), .text(Timestamp.format(m.updatedAt))]
                )
            }
            for t in batch.refreshTokens {
                try db.run(
                    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at, used_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [.text(t.id.lowercased), .text(t.userId.lowercased), .text(t.familyId.lowercased), .text(t.tokenHash),
                     .text(Timestamp.format(t.expiresAt)), .text(Timestamp.format(t.createdAt)),
                     t.usedAt.map { .text(Timestamp.format($0)) } ?? .null, t.revokedAt.map { .text(Timestamp.format($0)) } ?? .null]
                )
            }
            for r in batch.revokedAccessTokens {
                try db.run(
                    "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [.text(r.jti), .text(Timestamp.format(r.expiresAt))]
                )
            }
        }
    }
}

extension SQLiteStore {
    /// Reports the SQLite version and the migration state of the file at `path`, read-only.
    public static func inspect(path: String, migrations: MigrationSet = .sqlite) async throws -> StoreInspection {
        let version = String(cString: sqlite3_libversion())
        guard FileManager.default.fileExists(atPath: path) else {
            return StoreInspection(serverVersion: version, exists: false, migrations: migrations.status(applied: []))
        }
        let db = try SQLiteConnection(path: path, readOnly: true)
        do {
            if let problem = try db.quickCheck() { throw StoreError(.corrupt, "\(path) is corrupt (\(problem)); \(recoverySteps)") }
        } catch let error as StoreError where error.kind == .corrupt && error.detail != nil {
            throw StoreError(.corrupt, "\(path) is corrupt (\(error.detail!)); \(recoverySteps)")
        }
        let hasHistory = try !db.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_history'").isEmpty
        let applied = hasHistory ? try appliedMigrations(db) : []
        _ = try migrations.pending(applied: applied)
        return StoreInspection(serverVersion: version, exists: true, migrations: migrations.status(applied: applied))
    }
}
