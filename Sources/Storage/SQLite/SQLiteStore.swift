#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import CSQLite
import Logging

/// `ChatStore` over the system libsqlite3: WAL, one group-committing writer, a few readers.
public final class SQLiteStore: SQLStore {
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
    let dialect: SQLDialect
    public let path: String
    let writer: SQLiteWriter
    let readers: SQLiteReaders
    let condition: SQLiteCondition

    private init(path: String, writer: SQLiteWriter, readers: SQLiteReaders, condition: SQLiteCondition, migrations: MigrationSet) {
        self.dialect = SQLDialect.sqlite.with(migrations)
        self.path = path
        self.writer = writer
        self.readers = readers
        self.condition = condition
    }

    /// How to recover a damaged database, for the operator (the README says the same).
    public static let recoverySteps =
        "stop the server and restore the latest `chat-backend backup` copy, or salvage what is readable with `sqlite3 FILE .dump` into a new file (README, \"Recovering a damaged database\", has the steps)"

    /// Opens (creating if needed) the database at `path`, applies pending migrations and opens the readers.
    public static func open(
        path: String, options: Options = Options(), migrations: MigrationSet = .sqlite, logger: Logger = .quietStorage
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
                // A new database gives the space of deleted rows back to the file system a little at a time
                // (`reclaimSpace`, after retention deletes); this can only be chosen before its first table.
                if try db.query("SELECT count(*) FROM sqlite_master").first?.int(0) == 0 {
                    try db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                }
                // journal_mode answers with the mode it ended up in; anything but WAL is an error.
                guard try db.query("PRAGMA journal_mode=WAL").first?.optionalString(0)?.lowercased() == "wal" else {
                    throw StoreError(.unavailable, "cannot switch the database to WAL mode", detail: path)
                }
                try db.execute("PRAGMA synchronous=\(synchronous)")
                try db.execute("PRAGMA foreign_keys=ON")
                try SQLMigrator.migrate(db, migrations, .sqlite, logger: logger)
                if try db.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'message_search_queue'").first != nil {
                    db.beforeCommit = searchIndexing
                }
            }
            var connections: [SQLiteConnection] = []
            for _ in 0..<options.readerCount {
                let reader = try SQLiteConnection(path: path)
                reader.condition = condition
                try reader.execute("PRAGMA foreign_keys=ON; PRAGMA query_only=1")
                connections.append(reader)
            }
            return SQLiteStore(path: path, writer: writer, readers: SQLiteReaders(connections: connections), condition: condition, migrations: migrations)
        } catch let error as StoreError where error.kind == .corrupt && error.detail != nil {
            await writer.close { _ in }
            throw StoreError(.corrupt, "\(path) is corrupt (\(error.detail!)); \(recoverySteps)")
        } catch {
            await writer.close { _ in }
            throw error
        }
    }

    /// Indexes the messages this transaction inserted or edited (queued by the triggers of migration V15)
    /// in one statement, so FTS5 writes one index segment per commit rather than one per message.
    static let searchIndexing = [
        """
        INSERT INTO message_search (rowid, content) SELECT q.message_rowid, m.content
        FROM message_search_queue q JOIN chat_messages m ON m.rowid = q.message_rowid
        """,
        "DELETE FROM message_search_queue",
    ]

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

    /// Whether another process has the database at `path` open: every connection to a WAL database holds a
    /// shared lock on the "dead man switch" byte of its `-shm` file (offset 128, SQLite's unix VFS), which
    /// `F_GETLK` reports unless the lock is this process's own.
    public static func isOpenElsewhere(path: String) -> Bool {
        let fd = Glibc.open(path + "-shm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 128
        lock.l_len = 1
        return fcntl(fd, F_GETLK, &lock) == 0 && lock.l_type != Int16(F_UNLCK)
    }

    /// Whether nothing has the database open and all of it is in the file (no `-wal`): then it is read as
    /// immutable, which leaves no `-wal` or `-shm` beside it and works on a read-only mount.
    static func isUntouched(_ path: String) -> Bool {
        !FileManager.default.fileExists(atPath: path + "-wal") && !isOpenElsewhere(path: path)
    }

    /// Backs up the database at `path` without opening it as a store: nothing is migrated or written.
    public static func backup(path: String, to destination: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw StoreError(.notFound, "no database at \(path)") }
        let db = try SQLiteConnection(path: path, readOnly: true, immutable: isUntouched(path))
        defer { db.close() }
        try db.backup(to: destination)
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await readers.read(body)
    }

    /// Every write runs in the writer's group-committed transaction, `atomic` or not.
    func write<T: Sendable>(atomic: Bool, _ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await writer.write(body)
    }

    /// Frees up to 2,000 pages (8 MiB) of the file's free list, between writes, when the database was
    /// created with incremental vacuum (older databases keep their free pages for new rows).
    public func reclaimSpace() async throws {
        try await writer.withConnection { db in
            if try db.query("PRAGMA auto_vacuum").first?.int(0) == 2 { try db.execute("PRAGMA incremental_vacuum(2000)") }
        }
    }

    public func appendMessage(
        _ message: ChatMessage, now: Date, owner: UUID?, committed: (@Sendable (ChatMessage) -> Void)?
    ) async throws -> AppendOutcome {
        var observer: (@Sendable (AppendOutcome) -> Void)?
        if let committed {
            observer = { outcome in if case .created(let stored) = outcome { committed(stored) } }
        }
        do {
            return try await append(message, now: now, owner: owner, observer: observer)
        } catch is AttachmentSent {
            return .attachmentSent
        }
    }

    /// A file the message refers to is carried by another message already: the job is undone.
    struct AttachmentSent: Error {}

    private func append(
        _ message: ChatMessage, now: Date, owner: UUID?, observer: (@Sendable (AppendOutcome) -> Void)?
    ) async throws -> AppendOutcome {
        try await writer.write(committed: observer) { db in
            // The id is made here, on the one writer thread, so ids are in commit order: a reader paging
            // with `after` can never see a message before an earlier-id one is committed.
            var message = message
            message.id = UUIDv7.make(now: now)
            guard let session = try db.query(
                "SELECT is_resolved, state, expires_at, user_id FROM chat_sessions WHERE session_id = $1", [.id(message.sessionId)]
            ).first else { return .sessionNotFound }
            if let owner, try session.uuid(3) != owner { return .sessionNotFound }
            if let existing = try SQL.duplicate(of: message, db: db) { return .duplicate(existing) }
            if try session.flag(0) { return .sessionResolved }
            if try session.string(1) == SessionState.expired.rawValue || (try session.date(2)) <= now { return .sessionExpired }
            if !message.attachments.isEmpty {
                let files = SQL.placeholders(message.attachments.count, after: 2)
                let params: [SQLValue] = [.id(message.sessionId), .time(now)] + message.attachments.map { .id($0.id) }
                let marked = try db.run("UPDATE attachments SET sent_at = $2 WHERE session_id = $1 AND sent_at IS NULL AND id IN (\(files))", params)
                // Undone with the job (its savepoint) when the message is not stored.
                if marked < Set(message.attachments.map(\.id)).count { throw SQLiteStore.AttachmentSent() }
            }
            try db.run(Codec.message.insert, Codec.message.values(message, .sqlite))
            return .created(message)
        }
    }

    /// Reports the SQLite version and the migration state of the file at `path`, read-only (`isUntouched`).
    public static func inspect(path: String, migrations: MigrationSet = .sqlite) async throws -> StoreInspection {
        let version = String(cString: sqlite3_libversion())
        guard FileManager.default.fileExists(atPath: path) else {
            return StoreInspection(serverVersion: version, exists: false, migrations: migrations.status(applied: []))
        }
        let db = try SQLiteConnection(path: path, readOnly: true, immutable: isUntouched(path))
        defer { db.close() }
        do {
            if let problem = try db.quickCheck() { throw StoreError(.corrupt, "\(path) is corrupt (\(problem)); \(recoverySteps)") }
        } catch let error as StoreError where error.kind == .corrupt && error.detail != nil {
            throw StoreError(.corrupt, "\(path) is corrupt (\(error.detail!)); \(recoverySteps)")
        }
        return try SQLMigrator.inspect(
            db, migrations, hasHistory: "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_history'", version: version
        )
    }
}
