#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension PostgresStore {
    public func recordCounts() async throws -> RecordCounts {
        try await pool.withConnection { db in
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
        _ table: String, key: String, columns: String, after: UUID?, limit: Int, decode: @escaping @Sendable (PGRow) throws -> T
    ) async throws -> [T] {
        // Without a cursor, start after the nil UUID, which no record uses.
        try await pool.withConnection { db in
            try db.query(
                "SELECT \(columns) FROM \(table) WHERE \(key) > $1 ORDER BY \(key) LIMIT $2",
                [.text((after ?? UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))).lowercased), .integer(Int64(limit))]
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
        try await pool.withConnection { db in
            try db.query("SELECT jti, expires_at FROM revoked_access_tokens ORDER BY jti").map {
                RevokedAccessToken(jti: try $0.string(0), expiresAt: try $0.date(1))
            }
        }
    }

    public func importRecords(_ batch: RecordBatch) async throws {
        try await pool.transaction { db in
            for u in batch.users {
                try db.run(
                    "INSERT INTO users (\(Self.userColumns)) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
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
                    "INSERT INTO chat_messages (\(Self.messageColumns)) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                    Self.messageParams(m)
                )
            }
            for t in batch.refreshTokens {
                try db.run(
                    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at, used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    [.text(t.id.lowercased), .text(t.userId.lowercased), .text(t.familyId.lowercased), .text(t.tokenHash),
                     .text(Timestamp.format(t.expiresAt)), .text(Timestamp.format(t.createdAt)),
                     t.usedAt.map { .text(Timestamp.format($0)) } ?? .null, t.revokedAt.map { .text(Timestamp.format($0)) } ?? .null]
                )
            }
            for r in batch.revokedAccessTokens {
                try db.run(
                    "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    [.text(r.jti), .text(Timestamp.format(r.expiresAt))]
                )
            }
        }
    }
}

extension PostgresStore {
    /// Connects once and reports the server version and the migration state, changing nothing.
    public static func inspect(conninfo: String, migrations: MigrationSet = .postgres) async throws -> StoreInspection {
        let pool = PostgresPool(conninfo: conninfo, size: 1)
        do {
            let inspection = try await pool.withConnection { db in
                let hasHistory = try db.query("SELECT to_regclass('schema_history') IS NOT NULL").first?.bool(0) ?? false
                let applied = hasHistory ? try appliedMigrations(db) : []
                _ = try migrations.pending(applied: applied)
                return StoreInspection(serverVersion: db.serverVersion, exists: true, migrations: migrations.status(applied: applied))
            }
            await pool.close()
            return inspection
        } catch {
            await pool.close()
            throw error
        }
    }
}
