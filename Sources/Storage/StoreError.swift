/// A storage failure. `description` is safe to show users; `debugDescription` carries SQL and driver details for logs.
public struct StoreError: Error, CustomStringConvertible, CustomDebugStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        /// The record does not exist.
        case notFound
        /// A uniqueness rule was violated.
        case conflict
        /// The database cannot be reached or is not writable right now.
        case unavailable
        /// The request cannot be stored as given (constraint, bad value, bad configuration).
        case invalid
        /// The database file is damaged: nothing more is read from or written to it.
        case corrupt
        /// Anything else: a bug.
        case failed
    }

    public var kind: Kind
    public var message: String
    public var detail: String?
    public var sql: String?

    public init(_ kind: Kind, _ message: String, detail: String? = nil, sql: String? = nil) {
        self.kind = kind
        self.message = message
        self.detail = detail
        self.sql = sql
    }

    public var description: String { "storage \(kind == .notFound ? "not found" : kind.rawValue): \(message)" }

    public var debugDescription: String {
        var text = description
        if let detail { text += " (\(detail))" }
        if let sql { text += " [SQL: \(sql)]" }
        return text
    }
}
