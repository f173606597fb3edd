import CLibPQ
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging

/// `ChatStore` over the system libpq: a small pool of connections on their own threads, every statement
/// prepared with bound parameters, migrations serialized across instances by an advisory lock.
public final class PostgresStore: SQLStore {
    /// Tuning for one store.
    public struct Options: Sendable {
        /// Connections (and threads) in the pool.
        public var poolSize: Int
        /// Longest wait for the answer to one statement, migrations excepted (nil: none).
        public var statementTimeout: Duration?

        public init(poolSize: Int = 8, statementTimeout: Duration? = nil) {
            self.poolSize = poolSize
            self.statementTimeout = statementTimeout
        }
    }

    public let backend = "postgres"
    let dialect: SQLDialect
    let pool: PostgresPool
    let appender: PostgresAppender
    let listener: PostgresListener

    private init(pool: PostgresPool, migrations: MigrationSet) {
        self.dialect = SQLDialect.postgres.with(migrations)
        self.pool = pool
        self.listener = PostgresListener(conninfo: pool.conninfo, channel: "chat_messages", instanceID: Self.instanceID)
        self.appender = PostgresAppender(
            conninfo: pool.conninfo, timeout: pool.timeout, append: Self.append, decide: { db, message, owner, row in try Self.decideAppend(db, message, owner: owner, row: row) }
        )
    }

    /// Key of the advisory lock that makes instances starting together migrate one at a time.
    static let migrationLockKey: Int64 = 0x6368_6174_6d69_6772  // "chatmigr"

    /// Connects, applies pending migrations under an advisory lock, and returns the store.
    public static func open(
        conninfo: String, options: Options = Options(), migrations: MigrationSet = .postgres, logger: Logger = .quietStorage
    ) async throws -> PostgresStore {
        let pool = PostgresPool(conninfo: conninfo, size: options.poolSize, timeout: options.statementTimeout)
        do {
            try await pool.withConnection { db in
                // A migration may take long; the connection goes back to the pool with its timeout.
                db.timeout = nil
                defer { db.timeout = pool.timeout }
                try db.query("SELECT pg_advisory_lock($1)", [.integer(migrationLockKey)])
                defer { _ = try? db.query("SELECT pg_advisory_unlock($1)", [.integer(migrationLockKey)]) }
                try SQLMigrator.migrate(db, migrations, .postgres, logger: logger)
            }
            return PostgresStore(pool: pool, migrations: migrations)
        } catch {
            await pool.close()
            throw error
        }
    }

    /// Down when Postgres cannot be reached or accepts no writes (a standby, a read-only default).
    public func health() async -> StoreHealth {
        do {
            let writable = try await pool.withConnection { db in
                try db.query("SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'").first?.flag(0) ?? false
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

    func read<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await pool.withConnection(body)
    }

    func write<T: Sendable>(atomic: Bool, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await atomic ? pool.transaction(body) : pool.withConnection(body)
    }

    /// Tells the other instances at commit (a revoked login's realtime connections close at once; rooms follow
    /// who may read a session).
    func announce(_ change: String, db: PostgresConnection) throws {
        _ = try db.query("SELECT pg_notify('chat_messages', $1)", [.text("\(Self.instanceID) \(change)")])
    }

    public func announceSessionChange(sessionId: UUID, reason: String) async throws {
        try await pool.withConnection { [self] db in try announce("session:\(reason) \(sessionId.lowercased)", db: db) }
    }

    /// Checks each message's session and inserts the messages in one statement (one round trip, one
    /// transaction, one executor start-up for a whole batch): a message is inserted only when its session
    /// exists, belongs to its `owner`, is open and unexpired, and its client id is new. The messages come as
    /// one JSON array of their columns (`Codec.message.jsonObject`, read by `jsonb_populate_record` with the
    /// table's own column types) plus `now` and `owner`. Session rows are key-share locked until the commit,
    /// so a resolve, which locks the row for update, either waits for the sends to commit or is seen by them:
    /// no message lands after a resolve. The attachments a message carries are marked sent. One row per
    /// message, in order: its session's state (NULLs when there is none), whether it was inserted, and whether
    /// a file it refers to was carried by another message already (it is then not inserted).
    private static let appendSQL = """
        WITH input AS (
            SELECT e.ord, m.*, (e.doc ->> 'now')::timestamptz AS now, (e.doc ->> 'owner')::uuid AS owner
            FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(doc, ord), jsonb_populate_record(NULL::chat_messages, e.doc) AS m
        ), s AS (
            SELECT session_id, is_resolved, state, expires_at, user_id FROM chat_sessions
            WHERE session_id IN (SELECT session_id FROM input) FOR KEY SHARE
        ), taken AS (
            SELECT i.ord FROM input i CROSS JOIN LATERAL jsonb_array_elements(i.attachments) f
            JOIN attachments a ON a.id = (f ->> 'id')::uuid AND a.sent_at IS NOT NULL
        ), ins AS (
            INSERT INTO chat_messages (\(Codec.message.names))
            SELECT \(Codec.message.columns.map { "i.\($0.name)" }.joined(separator: ", "))
            FROM input i JOIN s ON s.session_id = i.session_id
            WHERE NOT s.is_resolved AND s.state = 'active' AND s.expires_at > i.now AND (i.owner IS NULL OR s.user_id = i.owner)
              AND i.ord NOT IN (SELECT ord FROM taken)
            ORDER BY i.ord
            ON CONFLICT (session_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING
            RETURNING id, session_id
        ), sent AS (
            UPDATE attachments a SET sent_at = i.now
            FROM input i CROSS JOIN LATERAL jsonb_array_elements(i.attachments) f
            WHERE i.id IN (SELECT id FROM ins) AND a.id = (f ->> 'id')::uuid AND a.session_id = i.session_id AND a.sent_at IS NULL
        ), announced AS (
            SELECT pg_notify('chat_messages', $2::text || ' ' || session_id::text || ' ' || id::text) FROM ins
        )
        SELECT s.is_resolved, s.state, s.expires_at, s.user_id, (i.id IN (SELECT id FROM ins))::int, (SELECT count(*) FROM announced),
               (i.ord IN (SELECT ord FROM taken))::int
        FROM input i LEFT JOIN s ON s.session_id = i.session_id
        ORDER BY i.ord
        """

    public func appendMessage(
        _ message: ChatMessage, now: Date, owner: UUID?, committed: (@Sendable (ChatMessage) -> Void)?
    ) async throws -> AppendOutcome {
        try await appender.append(message, now: now, owner: owner, committed: committed)
    }

    /// Identifies this process in NOTIFY payloads, so it ignores its own announcements.
    static let instanceID = UUID().lowercased

    /// Runs `appendSQL` for `appends`; for each, in order, its session's row (nil: no such session).
    static func append(_ db: PostgresConnection, _ appends: [PostgresAppender.Append]) throws -> [SQLRow?] {
        var document: [UInt8] = [UInt8(ascii: "[")]
        for (k, append) in appends.enumerated() {
            if k > 0 { document.append(UInt8(ascii: ",")) }
            Codec.message.jsonObject(append.message, extra: [("now", .time(append.now)), ("owner", append.owner.map(SQLValue.id) ?? .null)], into: &document)
        }
        document.append(UInt8(ascii: "]"))
        let rows = try db.query(appendSQL, [.text(String(decoding: document, as: UTF8.self)), .text(instanceID)])
        guard rows.count == appends.count else { throw StoreError(.failed, "the append returned \(rows.count) rows for \(appends.count) messages") }
        return rows.map { $0.values[0] == .null ? nil : $0 }
    }

    /// The outcome of an append from the row its statement returned (nil: no such session).
    static func decideAppend(_ db: PostgresConnection, _ message: ChatMessage, owner: UUID?, row: SQLRow?) throws -> AppendOutcome {
        guard let session = row else { return .sessionNotFound }
        if let owner, try session.uuid(3) != owner { return .sessionNotFound }
        if try session.int(4) == 1 { return .created(message) }
        if let existing = try SQL.duplicate(of: message, db: db) { return .duplicate(existing) }
        if try session.flag(0) { return .sessionResolved }
        if try session.int(6) == 1 { return .attachmentSent }
        return .sessionExpired
    }

    /// The connection string with the application name its sessions show in `pg_stat_activity`.
    public static func conninfo(_ conninfo: String, application: String) -> String {
        PostgresConnection.with(conninfo, "application_name", application)
    }

    /// How many sessions of a running chat-backend server (`application_name=chat-backend`, which the
    /// server's connections set) are connected to this database.
    public func serverSessions() async throws -> Int {
        try await pool.withConnection { db in
            Int(try db.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'chat-backend' AND pid <> pg_backend_pid()"
            ).first?.int(0) ?? 0)
        }
    }

    /// What is wrong with a connection string before any connection is tried (nil: nothing): its syntax as
    /// libpq reads it, and the values libpq would only refuse when connecting (port, sslmode, timeout).
    public static func conninfoProblem(_ conninfo: String) -> String? {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &error) else {
            defer { PQfreemem(error) }
            return error.map { String(cString: $0).trimmingTrailingNewlines } ?? "not a connection string libpq can read"
        }
        defer { PQconninfoFree(options) }
        var option = options
        while let keyword = option.pointee.keyword {
            defer { option += 1 }
            guard let raw = option.pointee.val else { continue }
            let (key, value) = (String(cString: keyword), String(cString: raw))
            switch key {
            case "port" where !value.split(separator: ",", omittingEmptySubsequences: false).allSatisfy({ $0.isEmpty || UInt16($0).map { $0 > 0 } == true }):
                return "port must be a number from 1 to 65535 (got '\(value)')"
            case "sslmode" where !["disable", "allow", "prefer", "require", "verify-ca", "verify-full"].contains(value):
                return "sslmode must be disable, allow, prefer, require, verify-ca or verify-full (got '\(value)')"
            case "connect_timeout" where Int(value) == nil:
                return "connect_timeout must be a number of seconds (got '\(value)')"
            default: continue
            }
        }
        return nil
    }

    /// Connects once and reports the server version and the migration state, changing nothing.
    public static func inspect(conninfo: String, migrations: MigrationSet = .postgres) async throws -> StoreInspection {
        let pool = PostgresPool(conninfo: conninfo, size: 1)
        do {
            let inspection = try await pool.withConnection { db in
                try SQLMigrator.inspect(db, migrations, hasHistory: "SELECT 1 WHERE to_regclass('schema_history') IS NOT NULL", version: db.serverVersion)
            }
            await pool.close()
            return inspection
        } catch {
            await pool.close()
            throw error
        }
    }
}
