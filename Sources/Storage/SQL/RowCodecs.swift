#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A Swift type kept in one column.
protocol SQLColumnValue: Sendable {
    static func read(_ row: SQLRow, _ i: Int) throws -> Self
    func bind(_ dialect: SQLDialect) -> SQLValue
}

/// A value kept as text on both databases: UUIDs (lowercase), timestamps (RFC 3339 UTC), JSON, enums (raw value).
protocol SQLText: SQLColumnValue {
    init?(sqlText: String)
    var sqlText: String { get }
}

extension SQLText {
    static func read(_ row: SQLRow, _ i: Int) throws -> Self {
        guard let v = Self(sqlText: try row.string(i)) else { throw StoreError(.failed, "column \(i) is not a valid \(Self.self)") }
        return v
    }
    func bind(_ dialect: SQLDialect) -> SQLValue { .text(sqlText) }
}

extension SQLText where Self: RawRepresentable<String> {
    init?(sqlText: String) { self.init(rawValue: sqlText) }
    var sqlText: String { rawValue }
}

extension Role: SQLText {}
extension SessionState: SQLText {}
extension HandoffState: SQLText {}
extension MessageDirection: SQLText {}

extension String: SQLText {
    init?(sqlText: String) { self = sqlText }
    var sqlText: String { self }
}

extension UUID: SQLText {
    init?(sqlText: String) { self.init(text: sqlText) }
    var sqlText: String { lowercased }
}

extension Date: SQLText {
    init?(sqlText: String) {
        guard let date = Timestamp.parse(sqlText) else { return nil }
        self = date
    }
    var sqlText: String { Timestamp.format(self) }
}

extension JSONValue: SQLText {
    init?(sqlText: String) {
        guard let value = JSONValue.parse(sqlText) else { return nil }
        self = value
    }
    var sqlText: String { jsonText() }
}

extension Int64: SQLColumnValue {
    static func read(_ row: SQLRow, _ i: Int) throws -> Int64 { try row.int(i) }
    func bind(_ dialect: SQLDialect) -> SQLValue { .integer(self) }
}

/// A message's attachments, kept as a JSON array of `{id, filename, contentType, size}`.
extension Array: SQLText, SQLColumnValue where Element == AttachmentRef {
    init?(sqlText: String) {
        if sqlText == "[]" {  // most messages
            self = []
            return
        }
        guard case .array(let items)? = JSONValue.parse(sqlText) else { return nil }
        var refs: [AttachmentRef] = []
        for item in items {
            guard case .object(let o) = item, case .string(let id)? = o["id"], let uuid = UUID(text: id),
                  case .string(let filename)? = o["filename"], case .string(let contentType)? = o["contentType"],
                  case .int(let size)? = o["size"] else { return nil }
            refs.append(AttachmentRef(id: uuid, filename: filename, contentType: contentType, size: size))
        }
        self = refs
    }

    var sqlText: String {
        JSONValue.array(map { ref in
            .object(["id": .string(ref.id.lowercased), "filename": .string(ref.filename), "contentType": .string(ref.contentType), "size": .int(ref.size)])
        }).jsonText()
    }
}

extension Bool: SQLColumnValue {
    static func read(_ row: SQLRow, _ i: Int) throws -> Bool { try row.flag(i) }
    func bind(_ dialect: SQLDialect) -> SQLValue { dialect.flag(self) }
}

extension Optional: SQLColumnValue where Wrapped: SQLColumnValue {
    static func read(_ row: SQLRow, _ i: Int) throws -> Wrapped? { row.values[i] == .null ? nil : try Wrapped.read(row, i) }
    func bind(_ dialect: SQLDialect) -> SQLValue { map { $0.bind(dialect) } ?? .null }
}

extension SQLRow {
    func uuid(_ i: Int) throws -> UUID { try UUID.read(self, i) }
    func date(_ i: Int) throws -> Date { try Date.read(self, i) }
}

extension SQLDatabase {
    /// The records the codec's SELECT finds with `rest` (WHERE, ORDER BY, LIMIT).
    func select<R>(_ codec: RowCodec<R>, _ rest: String, _ params: [SQLValue] = []) throws -> [R] {
        try query("\(codec.select) \(rest)", params).map(codec.decode)
    }
}

/// A value stored as JSON text (a JSON or JSONB column on Postgres).
protocol SQLJSONText {}
extension JSONValue: SQLJSONText {}
extension Array: SQLJSONText where Element == AttachmentRef {}
extension Optional: SQLJSONText where Wrapped: SQLJSONText {}

/// One column of a record: its name and the field it is written from and read back into.
struct Column<Record>: Sendable {
    let name: String
    let bind: @Sendable (Record, SQLDialect) -> SQLValue
    let read: @Sendable (inout Record, SQLRow, Int) throws -> Void
    /// The value is JSON text (written into a JSON document as it is, not as a string).
    let isJSON: Bool

    init<V: SQLColumnValue>(_ name: String, _ field: WritableKeyPath<Record, V> & Sendable) {
        self.name = name
        self.isJSON = V.self is any SQLJSONText.Type
        guard let offset = MemoryLayout<Record>.offset(of: field) else {
            self.bind = { record, dialect in record[keyPath: field].bind(dialect) }
            self.read = { record, row, i in record[keyPath: field] = try V.read(row, i) }
            return
        }
        // A stored field is read and written at its offset in the record: applying the key path each time
        // cost a tenth of a 50-message history read.
        self.bind = { record, dialect in
            withUnsafeBytes(of: record) { $0.load(fromByteOffset: offset, as: V.self) }.bind(dialect)
        }
        self.read = { record, row, i in
            let value = try V.read(row, i)
            withUnsafeMutableBytes(of: &record) { $0.baseAddress!.advanced(by: offset).assumingMemoryBound(to: V.self).pointee = value }
        }
    }
}

/// A record's table: its columns (one line each) and the statements every store builds from them. A row
/// is read into a copy of `blank`, column by column.
struct RowCodec<Record: Sendable>: Sendable {
    let table: String
    /// The primary key, which export pages by.
    let key: String
    let columns: [Column<Record>]
    private let blank: Record
    /// `a, b, c`
    let names: String
    /// `SELECT a, b, c FROM table`
    let select: String
    /// `INSERT INTO table (a, b, c) VALUES ($1, $2, $3)`
    let insert: String

    init(_ table: String, key: String = "id", blank: Record, _ columns: [Column<Record>]) {
        self.table = table
        self.key = key
        self.columns = columns
        self.blank = blank
        names = columns.map(\.name).joined(separator: ", ")
        select = "SELECT \(names) FROM \(table)"
        insert = "INSERT INTO \(table) (\(names)) VALUES (\(SQL.placeholders(columns.count)))"
    }

    func values(_ record: Record, _ dialect: SQLDialect) -> [SQLValue] { columns.map { $0.bind(record, dialect) } }

    /// The record as a JSON object of its columns (Postgres text forms), for `jsonb_populate_record`;
    /// `extra` fields are appended as strings.
    func jsonObject(_ record: Record, extra: [(String, SQLValue)] = [], into out: inout [UInt8]) {
        var first = true
        func field(_ name: String, _ value: SQLValue, isJSON: Bool) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            JSONCodec.writeString(name, into: &out)
            out.append(UInt8(ascii: ":"))
            switch value.pgText {
            case nil: out.append(contentsOf: "null".utf8)
            case let text? where isJSON: out.append(contentsOf: text.utf8)
            case let text?: JSONCodec.writeString(text, into: &out)
            }
        }
        out.append(UInt8(ascii: "{"))
        for column in columns { field(column.name, column.bind(record, .postgres), isJSON: column.isJSON) }
        for (name, value) in extra { field(name, value, isJSON: false) }
        out.append(UInt8(ascii: "}"))
    }

    func decode(_ row: SQLRow) throws -> Record {
        var record = blank
        for (i, column) in columns.enumerated() { try column.read(&record, row, i) }
        return record
    }
}

/// The codec of each record. Adding a column: its line here (fields left out of `blank` take their defaults).
enum Codec {
    private static let never = Date(timeIntervalSince1970: 0), none = UUIDv7.unassigned

    static let user = RowCodec("users", blank: User(id: none, username: "", email: nil, passwordHash: "", role: .user, createdAt: never, updatedAt: never), [
        Column("id", \.id), Column("username", \.username), Column("email", \.email), Column("password_hash", \.passwordHash), Column("role", \.role),
        Column("created_at", \.createdAt), Column("updated_at", \.updatedAt), Column("disabled_at", \.disabledAt),
    ])

    static let session = RowCodec("chat_sessions", key: "session_id", blank: ChatSession(
        id: none, userId: none, metadata: .object([:]), state: .active, isResolved: false, expiresAt: never, resolvedAt: nil, createdAt: never, updatedAt: never
    ), [
        Column("session_id", \.id), Column("user_id", \.userId), Column("metadata", \.metadata), Column("state", \.state), Column("is_resolved", \.isResolved),
        Column("expires_at", \.expiresAt), Column("resolved_at", \.resolvedAt), Column("created_at", \.createdAt), Column("updated_at", \.updatedAt),
        Column("agent", \.agent), Column("handoff", \.handoff), Column("assignee_id", \.assigneeId), Column("handoff_at", \.handoffAt),
    ])

    static let message = RowCodec("chat_messages", blank: ChatMessage(
        id: none, sessionId: none, userId: nil, content: "", type: "", direction: .inbound, metadata: .object([:]), clientMessageId: nil, createdAt: never,
        updatedAt: never
    ), [
        Column("id", \.id), Column("session_id", \.sessionId), Column("user_id", \.userId), Column("content", \.content), Column("type", \.type),
        Column("direction", \.direction), Column("metadata", \.metadata), Column("client_message_id", \.clientMessageId), Column("created_at", \.createdAt),
        Column("updated_at", \.updatedAt), Column("edited_at", \.editedAt), Column("deleted_at", \.deletedAt), Column("attachments", \.attachments),
    ])

    static let attachment = RowCodec("attachments", blank: Attachment(id: none, sessionId: none, userId: nil, filename: "", contentType: "", createdAt: never), [
        Column("id", \.id), Column("session_id", \.sessionId), Column("user_id", \.userId), Column("filename", \.filename),
        Column("content_type", \.contentType), Column("size", \.size), Column("sha256", \.sha256), Column("created_at", \.createdAt),
        Column("completed_at", \.completedAt), Column("sent_at", \.sentAt),
    ])

    static let refreshToken = RowCodec("refresh_tokens", blank: RefreshTokenRecord(
        id: none, userId: none, familyId: none, tokenHash: "", expiresAt: never, createdAt: never
    ), [
        Column("id", \.id), Column("user_id", \.userId), Column("family_id", \.familyId), Column("token_hash", \.tokenHash),
        Column("expires_at", \.expiresAt), Column("created_at", \.createdAt), Column("used_at", \.usedAt), Column("revoked_at", \.revokedAt),
    ])

    static let revokedAccessToken = RowCodec("revoked_access_tokens", key: "jti", blank: RevokedAccessToken(jti: "", expiresAt: never), [
        Column("jti", \.jti), Column("expires_at", \.expiresAt),
    ])

    static let sessionRead = RowCodec("session_reads", key: "session_id", blank: SessionRead(sessionId: none, userId: none, lastReadId: none, readAt: never), [
        Column("session_id", \.sessionId), Column("user_id", \.userId), Column("last_read_id", \.lastReadId), Column("read_at", \.readAt),
    ])
}
