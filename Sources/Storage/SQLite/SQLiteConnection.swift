import CSQLite
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

private let SQLITE_TRANSIENT = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// What the store's connections have learned about the file: once it is known corrupt, no statement
/// runs on it any more (reads could return damaged data, writes would spread the damage).
final class SQLiteCondition: Sendable {
    private let corruption = Mutex<String?>(nil)
    private let writeFailure = Mutex<String?>(nil)
    private let onCorrupt: @Sendable (String) -> Void

    init(onCorrupt: @escaping @Sendable (String) -> Void) {
        self.onCorrupt = onCorrupt
    }

    var corrupt: String? { corruption.withLock { $0 } }

    func markCorrupt(_ detail: String) {
        let first = corruption.withLock { c -> Bool in
            guard c == nil else { return false }
            c = detail
            return true
        }
        if first { onCorrupt(detail) }
    }

    /// Throws when the file is known corrupt.
    func check() throws {
        if let detail = corrupt { throw StoreError(.corrupt, "the database file is corrupt", detail: detail) }
    }

    /// The last write that failed for want of space or permission, until a write succeeds.
    var lastWriteFailure: String? { writeFailure.withLock { $0 } }
    func wrote(_ failure: String?) { writeFailure.withLock { $0 = failure } }
}

/// A prepared statement, finalized when released.
final class SQLiteStatement {
    let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }
    deinit { sqlite3_finalize(handle) }
}

/// One SQLite connection. Not thread-safe: each is used by one thread at a time (the store's writer
/// or one of its readers). Prepared statements are cached by SQL text.
final class SQLiteConnection: SQLDatabase {
    let handle: OpaquePointer
    let path: String
    /// Shared by the store's connections: a corrupt file seen by one stops them all.
    var condition: SQLiteCondition?
    /// Statements the writer runs at the end of each transaction, before COMMIT (see `SQLiteWriter`).
    var beforeCommit: [String] = []
    private var statements: [String: SQLiteStatement] = [:]
    private var closed = false

    /// `immutable`: read-only, and the file is taken not to change while open: SQLite neither locks it nor
    /// creates its `-wal` and `-shm` files.
    init(path: String, readOnly: Bool = false, immutable: Bool = false) throws {
        var db: OpaquePointer?
        let flags = (readOnly || immutable ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_NOMUTEX
        let rc = immutable
            ? sqlite3_open_v2("file:" + Self.uriPath(path) + "?immutable=1", &db, flags | SQLITE_OPEN_URI, nil)
            : sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(db)
            throw StoreError(.unavailable, "cannot open SQLite database", detail: "\(path): \(message) (code \(rc))")
        }
        self.handle = db
        self.path = path
        let extended = sqlite3_extended_result_codes(db, 1)
        let busy = sqlite3_busy_timeout(db, 5000)
        guard extended == SQLITE_OK, busy == SQLITE_OK else { throw error(extended != SQLITE_OK ? extended : busy, sql: nil) }
    }

    deinit {
        close()
    }

    /// A file path as the path of a `file:` URI: every byte but unreserved characters and `/` percent-encoded.
    static func uriPath(_ path: String) -> String {
        var out = ""
        for byte in path.utf8 {
            if (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) || "/-._~".utf8.contains(byte) {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte >> 4, radix: 16, uppercase: true) + String(byte & 15, radix: 16, uppercase: true)
            }
        }
        return out
    }

    /// Finalizes the cached statements and closes the connection; a failure is logged (nothing else can be done).
    func close() {
        guard !closed else { return }
        closed = true
        statements.removeAll()
        let rc = sqlite3_close_v2(handle)
        if rc != SQLITE_OK {
            Logger(label: "chat-backend.storage").error("closing the SQLite connection failed", metadata: [
                "file": .string(path), "detail": .string("\(String(cString: sqlite3_errstr(rc))) (code \(rc))"),
            ])
        }
    }

    /// Turns a result code into a typed error carrying the SQL.
    func error(_ rc: Int32, sql: String?) -> StoreError {
        let message = String(cString: sqlite3_errmsg(handle))
        let kind = Self.kind(code: rc)
        if kind == .corrupt { condition?.markCorrupt("\(message) (code \(rc))") }
        return StoreError(kind, "SQLite error", detail: "\(message) (code \(rc))", sql: sql)
    }

    /// Runs one or more statements without parameters (DDL, pragmas, transaction control).
    func execute(_ sql: String) throws {
        try condition?.check()
        var errmsg: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &errmsg)
        if let errmsg { sqlite3_free(errmsg) }
        guard rc == SQLITE_OK else { throw error(rc, sql: sql) }
    }

    private func prepared(_ sql: String) throws -> SQLiteStatement {
        if let cached = statements[sql] { return cached }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, Self.placeholders(sql), -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, sql: sql) }
        let statement = SQLiteStatement(handle: stmt)
        statements[sql] = statement
        return statement
    }

    /// Runs a statement with bound parameters and returns all rows.
    @discardableResult
    func query(_ sql: String, _ params: [SQLValue] = []) throws -> [SQLRow] {
        try condition?.check()
        let statement = try prepared(sql)
        let stmt = statement.handle
        defer {
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
        }
        for (index, value) in params.enumerated() {
            let position = Int32(index + 1)
            let rc: Int32
            switch value {
            case .null: rc = sqlite3_bind_null(stmt, position)
            case .integer(let v): rc = sqlite3_bind_int64(stmt, position, v)
            case .real(let d): rc = sqlite3_bind_double(stmt, position, d)
            // With its length: text is stored whole, also past a NUL.
            case .text(let s): rc = sqlite3_bind_text(stmt, position, s, Int32(s.utf8.count), SQLITE_TRANSIENT)
            case .blob(let bytes):
                // SQLite copies the bytes (transient); an empty blob is zero bytes, not NULL.
                rc = bytes.isEmpty
                    ? sqlite3_bind_zeroblob(stmt, position, 0)
                    : bytes.withUnsafeBytes { sqlite3_bind_blob64(stmt, position, $0.baseAddress, UInt64($0.count), SQLITE_TRANSIENT) }
            }
            guard rc == SQLITE_OK else { throw error(rc, sql: sql) }
        }
        var rows: [SQLRow] = []
        let columns = sqlite3_column_count(stmt)
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(rc, sql: sql) }
            var values: [SQLValue] = []
            values.reserveCapacity(Int(columns))
            for c in 0..<columns {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_INTEGER: values.append(.integer(sqlite3_column_int64(stmt, c)))
                case SQLITE_FLOAT: values.append(.real(sqlite3_column_double(stmt, c)))
                case SQLITE_NULL: values.append(.null)
                case SQLITE_BLOB:
                    let length = Int(sqlite3_column_bytes(stmt, c))
                    if let data = sqlite3_column_blob(stmt, c), length > 0 {
                        values.append(.blob(Array(UnsafeRawBufferPointer(start: data, count: length))))
                    } else {
                        values.append(.blob([]))
                    }
                default:
                    if let text = sqlite3_column_text(stmt, c) {
                        let length = Int(sqlite3_column_bytes(stmt, c))
                        values.append(.text(String(decoding: UnsafeBufferPointer(start: text, count: length), as: UTF8.self)))
                    } else {
                        values.append(.null)
                    }
                }
            }
            rows.append(SQLRow(values: values))
        }
        return rows
    }

    /// Runs a statement and returns the number of rows it changed.
    @discardableResult
    func run(_ sql: String, _ params: [SQLValue] = []) throws -> Int {
        try query(sql, params)
        return Int(sqlite3_changes(handle))
    }
}

extension SQLiteConnection {
    /// Whether the connection may write to the file (SQLite opens a file it may not write read-only).
    var isReadOnly: Bool { sqlite3_db_readonly(handle, "main") == 1 }

    /// `PRAGMA quick_check`: nil when the file is sound, else what is wrong (the first lines).
    func quickCheck() throws -> String? {
        let rows = try query("PRAGMA quick_check(8)")
        let lines = rows.compactMap { $0.optionalString(0) }
        return lines == ["ok"] ? nil : lines.joined(separator: "; ")
    }

    /// Copies this database into `destination`, which must not exist, with the online backup API. The copy
    /// is written beside it as `destination.partial`, checked with `quick_check`, and only then linked to its
    /// name: a backup that fails (a full disk, a damaged database) leaves no file that looks like a good one.
    func backup(to destination: String) throws {
        let partial = destination + ".partial"
        let fd = Glibc.open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let exists = errno == EEXIST
            throw StoreError(.unavailable, "cannot create \(partial): \(String(cString: strerror(errno)))\(exists ? " (left by an interrupted backup: remove it)" : "")")
        }
        Glibc.close(fd)
        defer { for suffix in ["", "-journal", "-wal", "-shm"] { unlink(partial + suffix) } }
        do {
            let target = try SQLiteConnection(path: partial)
            defer { target.close() }
            guard let backup = sqlite3_backup_init(target.handle, "main", handle, "main") else {
                throw target.error(sqlite3_errcode(target.handle), sql: nil)
            }
            var rc: Int32
            repeat {
                rc = sqlite3_backup_step(backup, 256)
                if rc == SQLITE_BUSY || rc == SQLITE_LOCKED { sqlite3_sleep(10) }
            } while rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED
            let finish = sqlite3_backup_finish(backup)
            guard rc == SQLITE_DONE, finish == SQLITE_OK else { throw target.error(rc == SQLITE_DONE ? finish : rc, sql: nil) }
            try target.execute("PRAGMA journal_mode=DELETE")
            if let problem = try target.quickCheck() {
                throw StoreError(.corrupt, "the database is corrupt (\(problem)): no backup written; \(SQLiteStore.recoverySteps)")
            }
        }
        // A hard link names the copy only if the name is still free; the partial name goes with the defer.
        guard link(partial, destination) == 0 else {
            throw StoreError(.unavailable, "cannot create \(destination): \(String(cString: strerror(errno)))")
        }
    }
}

extension SQLiteConnection {
    /// SQLite's spelling of a shared statement: `$n` becomes `?n` (outside quotes), when it is first prepared.
    static func placeholders(_ sql: String) -> String {
        var bytes = Array(sql.utf8)
        var quoted = false
        for i in bytes.indices {
            if bytes[i] == UInt8(ascii: "'") {
                quoted.toggle()
            } else if !quoted, bytes[i] == UInt8(ascii: "$"), i + 1 < bytes.count, (48...57).contains(bytes[i + 1]) {
                bytes[i] = UInt8(ascii: "?")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The store's error kind for an SQLite extended result code (1555, 2067: primary key and unique
    /// constraints, 787: foreign key; macros Swift does not import).
    static func kind(code rc: Int32) -> StoreError.Kind {
        let kinds: [Int32: StoreError.Kind] = [
            1555: .conflict, 2067: .conflict, 787: .notFound, SQLITE_CONSTRAINT: .invalid, SQLITE_MISMATCH: .invalid, SQLITE_TOOBIG: .invalid,
            SQLITE_BUSY: .unavailable, SQLITE_LOCKED: .unavailable, SQLITE_IOERR: .unavailable, SQLITE_FULL: .unavailable,
            SQLITE_CANTOPEN: .unavailable, SQLITE_READONLY: .unavailable, SQLITE_PROTOCOL: .unavailable, SQLITE_CORRUPT: .corrupt, SQLITE_NOTADB: .corrupt,
        ]
        return kinds[rc] ?? kinds[rc & 0xFF] ?? .failed
    }
}
