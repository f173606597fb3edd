import CSQLite
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A value bound to or read from a statement.
public enum SQLValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
}

/// What differs between SQLite and Postgres in the statements the stores share. Statements are written
/// once, with `$n` placeholders; UUIDs, timestamps (RFC 3339) and JSON are bound as text on both (Postgres
/// casts them to its column types), and `ON CONFLICT … DO NOTHING` and `RETURNING` are the same on both.
struct SQLDialect: Sendable {
    /// The migrations written for this database (the store's own set, which `migrationStatus` reports on).
    var migrations: MigrationSet
    /// How a boolean is bound: SQLite has no boolean type (0 and 1), Postgres takes `true`/`false`.
    let flag: @Sendable (Bool) -> SQLValue
    /// Ends a SELECT of rows the transaction is about to change: a row lock on Postgres; SQLite's single
    /// writer needs none.
    let forUpdate: String
    /// Starts a transaction that writes (SQLite takes the write lock at once, so a read never upgrades).
    let begin: String
    /// The column type of a timestamp (SQLite keeps RFC 3339 text, which sorts in time order).
    let timeType: String

    static let sqlite = SQLDialect(
        migrations: .sqlite, flag: { .integer($0 ? 1 : 0) }, forUpdate: "", begin: "BEGIN IMMEDIATE", timeType: "TEXT"
    )
    static let postgres = SQLDialect(
        migrations: .postgres, flag: { .text($0 ? "true" : "false") }, forUpdate: " FOR UPDATE", begin: "BEGIN", timeType: "TIMESTAMPTZ"
    )

    /// This dialect with a store's own migration set.
    func with(_ migrations: MigrationSet) -> SQLDialect {
        var copy = self
        copy.migrations = migrations
        return copy
    }

    /// SQLite's spelling of a shared statement: `$n` becomes `?n` (outside quotes), when it is first prepared.
    static func sqlitePlaceholders(_ sql: String) -> String {
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
    static func kind(sqliteCode rc: Int32) -> StoreError.Kind {
        let kinds: [Int32: StoreError.Kind] = [
            1555: .conflict, 2067: .conflict, 787: .notFound, SQLITE_CONSTRAINT: .invalid, SQLITE_MISMATCH: .invalid, SQLITE_TOOBIG: .invalid,
            SQLITE_BUSY: .unavailable, SQLITE_LOCKED: .unavailable, SQLITE_IOERR: .unavailable, SQLITE_FULL: .unavailable,
            SQLITE_CANTOPEN: .unavailable, SQLITE_READONLY: .unavailable, SQLITE_PROTOCOL: .unavailable, SQLITE_CORRUPT: .corrupt, SQLITE_NOTADB: .corrupt,
        ]
        return kinds[rc] ?? kinds[rc & 0xFF] ?? .failed
    }

    /// The store's error kind for a Postgres SQLSTATE (`healthy`: the connection is still up).
    static func kind(sqlState: String, healthy: Bool) -> StoreError.Kind {
        switch sqlState {
        case _ where !healthy: .unavailable
        case "23505": .conflict
        case "23503": .notFound
        case _ where ["22", "23"].contains(sqlState.prefix(2)): .invalid
        case _ where ["08", "57", "53"].contains(sqlState.prefix(2)) || ["40001", "40P01"].contains(sqlState): .unavailable
        default: .failed
        }
    }
}

/// A connection the shared statements run on: `SQLiteConnection` or `PostgresConnection`.
protocol SQLDatabase {
    /// Runs statements without parameters (DDL, transaction control).
    func execute(_ sql: String) throws
    /// Runs one prepared statement with bound parameters and returns its rows.
    @discardableResult func query(_ sql: String, _ params: [SQLValue]) throws -> [SQLRow]
    /// Runs one prepared statement and returns the number of rows it changed.
    @discardableResult func run(_ sql: String, _ params: [SQLValue]) throws -> Int
}

extension SQLDatabase {
    /// The records the codec's SELECT finds with `rest` (WHERE, ORDER BY, LIMIT).
    func select<R>(_ codec: RowCodec<R>, _ rest: String, _ params: [SQLValue] = []) throws -> [R] {
        try query("\(codec.select) \(rest)", params).map(codec.decode)
    }
}

/// One result row of either database (Postgres sends every value as text).
struct SQLRow: Sendable {
    var values: [SQLValue]

    /// The column as text, nil when NULL.
    func optionalString(_ i: Int) -> String? {
        if case .text(let s) = values[i] { return s }
        return nil
    }

    func string(_ i: Int) throws -> String {
        guard let v = optionalString(i) else { throw StoreError(.failed, "column \(i) is NULL or not text") }
        return v
    }

    func int(_ i: Int) throws -> Int64 {
        switch values[i] {
        case .integer(let v): return v
        case .real(let d): return Int64(d)
        case .text(let s): if let v = Int64(s) { return v }
        case .null: break
        }
        throw StoreError(.failed, "column \(i) is not an integer")
    }

    /// A boolean column: SQLite stores 0/1, Postgres sends `t`/`f`.
    func flag(_ i: Int) throws -> Bool {
        switch values[i] {
        case .text("t"): return true
        case .text("f"): return false
        default: return try int(i) != 0
        }
    }

    func uuid(_ i: Int) throws -> UUID { try UUID.read(self, i) }
    func date(_ i: Int) throws -> Date { try Date.read(self, i) }
}
