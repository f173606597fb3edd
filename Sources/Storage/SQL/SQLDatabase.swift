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
    /// Bytes: a BLOB on SQLite, a bytea on Postgres (sent and read back as `\\x` hex text).
    case blob([UInt8])
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
        case .null, .blob: break
        }
        throw StoreError(.failed, "column \(i) is not an integer")
    }

    /// A bytes column: SQLite's BLOB, or Postgres' bytea as `\\x` hex text.
    func bytes(_ i: Int) throws -> [UInt8] {
        switch values[i] {
        case .blob(let bytes): return bytes
        case .text(let text):
            if let bytes = Hex.decode(text) { return bytes }
        default: break
        }
        throw StoreError(.failed, "column \(i) is not bytes")
    }

    /// A number column (Postgres sends it as text), nil when NULL or not a number.
    func real(_ i: Int) -> Double? {
        switch values[i] {
        case .real(let value): value
        case .integer(let value): Double(value)
        case .text(let text): Double(text)
        case .null, .blob: nil
        }
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

/// Postgres' hex format for bytea (`\\x` then two lowercase digits a byte).
enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        String(unsafeUninitializedCapacity: 2 + 2 * bytes.count) { out in
            out[0] = UInt8(ascii: "\\")
            out[1] = UInt8(ascii: "x")
            var i = 2
            for b in bytes {
                out[i] = digits[Int(b >> 4)]
                out[i + 1] = digits[Int(b & 15)]
                i += 2
            }
            return i
        }
    }

    static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { utf8 -> [UInt8]? in
            guard utf8.count >= 2, utf8[0] == UInt8(ascii: "\\"), utf8[1] == UInt8(ascii: "x"), utf8.count % 2 == 0 else { return nil }
            let count = (utf8.count - 2) / 2
            var valid = true
            let out = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                for i in 0..<count {
                    let high = values[Int(utf8[2 + 2 * i])], low = values[Int(utf8[3 + 2 * i])]
                    if high > 15 || low > 15 {
                        valid = false
                        break
                    }
                    buffer[i] = high << 4 | low
                }
                initialized = valid ? count : 0
            }
            return valid ? out : nil
        }
    }

    /// Each byte's value as a hex digit, 255 for anything else.
    private static let values: [UInt8] = (0..<256).map { c in
        switch c {
        case 48...57: UInt8(c - 48)
        case 97...102: UInt8(c - 87)
        case 65...70: UInt8(c - 55)
        default: 255
        }
    }
}
