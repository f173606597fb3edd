import Foundation
@testable import Storage

/// A store under test with a way to open it again on the same data and clean up.
struct StoreFixture: Sendable, CustomStringConvertible {
    let name: String
    let open: @Sendable () async throws -> any ChatStore
    /// Opens it with the store's migrations and `extra` after them.
    let openWith: @Sendable (_ extra: Migration) async throws -> any ChatStore
    let cleanup: @Sendable () -> Void

    var description: String { name }
}

/// Every backend the contract runs against.
enum StoreBackends {
    static func sqlite() -> StoreFixture {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("chat-store-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("chat.db").path
        return StoreFixture(
            name: "sqlite",
            open: { try await SQLiteStore.open(path: path) },
            openWith: { extra in
                try await SQLiteStore.open(path: path, migrations: MigrationSet(dialect: "sqlite", migrations: MigrationSet.sqlite.migrations + [extra]))
            },
            cleanup: { try? FileManager.default.removeItem(at: dir) }
        )
    }

    /// A Postgres store in a schema of its own, when `CHAT_TEST_POSTGRES` names a server (`make test` starts one).
    static func postgres() -> StoreFixture {
        let base = ProcessInfo.processInfo.environment["CHAT_TEST_POSTGRES"] ?? ""
        let schema = "t_" + UUID().lowercased.replacingOccurrences(of: "-", with: "")
        let conninfo = base + " options='-c search_path=\(schema)'"
        return StoreFixture(
            name: "postgres",
            open: {
                let admin = try PostgresConnection(conninfo: base)
                try admin.execute("CREATE SCHEMA IF NOT EXISTS \(schema)")
                return try await PostgresStore.open(conninfo: conninfo, options: .init(poolSize: 4))
            },
            openWith: { extra in
                let admin = try PostgresConnection(conninfo: base)
                try admin.execute("CREATE SCHEMA IF NOT EXISTS \(schema)")
                let migrations = MigrationSet(dialect: "postgres", migrations: MigrationSet.postgres.migrations + [extra])
                return try await PostgresStore.open(conninfo: conninfo, options: .init(poolSize: 4), migrations: migrations)
            },
            cleanup: {
                if let admin = try? PostgresConnection(conninfo: base) { try? admin.execute("DROP SCHEMA IF EXISTS \(schema) CASCADE") }
            }
        )
    }

    static var postgresConfigured: Bool { !(ProcessInfo.processInfo.environment["CHAT_TEST_POSTGRES"] ?? "").isEmpty }

    static let all: [@Sendable () -> StoreFixture] = postgresConfigured ? [sqlite, postgres] : [sqlite]
}

/// Opens a fresh store, runs `body`, closes and removes it.
func withStore<T>(_ make: @Sendable () -> StoreFixture, _ body: (any ChatStore, StoreFixture) async throws -> T) async throws -> T {
    let fixture = make()
    defer { fixture.cleanup() }
    let store = try await fixture.open()
    do {
        let result = try await body(store, fixture)
        await store.close()
        return result
    } catch {
        await store.close()
        throw error
    }
}

enum Make {
    static func user(_ name: String = "user\(UUID().uuidString.prefix(8))", role: Role = .user) -> User {
        let now = Timestamp.now()
        return User(id: UUID(), username: name, email: nil, passwordHash: "$scrypt$x", role: role, createdAt: now, updatedAt: now)
    }

    static func session(userId: UUID, ttl: TimeInterval = 3600, now: Date = Timestamp.now(), metadata: JSONValue = .emptyObject) -> ChatSession {
        ChatSession(
            id: UUID(), userId: userId, metadata: metadata, state: .active, isResolved: false,
            expiresAt: now.addingTimeInterval(ttl), resolvedAt: nil, createdAt: now, updatedAt: now
        )
    }

    static func message(_ sessionId: UUID, userId: UUID?, content: String = "hello", clientId: String? = nil, now: Date = Timestamp.now()) -> ChatMessage {
        ChatMessage(
            id: UUIDv7.make(now: now), sessionId: sessionId, userId: userId, content: content, type: "text", direction: .inbound,
            metadata: .object(["k": .int(1)]), clientMessageId: clientId, createdAt: now, updatedAt: now
        )
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

extension ChatStore {
    /// A new user with one session of theirs.
    func newUserWithSession() async throws -> (User, ChatSession) {
        let user = Make.user()
        try await createUser(user)
        let session = Make.session(userId: user.id)
        try await createSession(session)
        return (user, session)
    }

    /// Uploads `bytes` into `session` as `user`, a chunk per write as the API does, and completes it at `at`.
    func upload(_ bytes: [UInt8], session: UUID, user: UUID, at: Date, quota: Int64? = nil) async throws -> (UUID, AttachmentCompletion) {
        let id = UUIDv7.make(now: at)
        try await createAttachment(Storage.Attachment(id: id, sessionId: session, userId: user, filename: "f.bin", contentType: "application/octet-stream", createdAt: at))
        var seq = 0
        for start in stride(from: 0, to: bytes.count, by: Storage.Attachment.chunkSize) {
            try await putAttachmentChunk(AttachmentChunk(attachmentId: id, seq: seq, data: Array(bytes[start..<min(bytes.count, start + Storage.Attachment.chunkSize)])))
            seq += 1
        }
        return (id, try await completeAttachment(id: id, size: Int64(bytes.count), sha256: "ab", quota: quota, now: at))
    }
}
