#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A value bound to or read from a statement.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
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
    /// Runs `body` in a transaction started with `begin`: committed when it returns, rolled back when it throws.
    func transaction<T>(_ begin: String = "BEGIN", _ body: () throws -> T) throws -> T {
        try execute(begin)
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
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

    /// Every column as an integer (counts).
    func ints() throws -> [Int] { try values.indices.map { Int(try int($0)) } }

    /// A boolean column: SQLite stores 0/1, Postgres sends `t`/`f`.
    func flag(_ i: Int) throws -> Bool {
        switch values[i] {
        case .text("t"): return true
        case .text("f"): return false
        default: return try int(i) != 0
        }
    }

}
