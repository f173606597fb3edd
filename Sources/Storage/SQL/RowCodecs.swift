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

/// Reads a row's columns in order, each as the type its record field wants.
struct RowReader {
    let row: SQLRow
    var index = 0

    mutating func next<V: SQLColumnValue>() throws -> V {
        defer { index += 1 }
        return try V.read(row, index)
    }
}

/// A value stored as JSON text (a JSON or JSONB column on Postgres).
protocol SQLJSONText {}
extension JSONValue: SQLJSONText {}
extension Array: SQLJSONText where Element == AttachmentRef {}
extension Optional: SQLJSONText where Wrapped: SQLJSONText {}

/// One column of a record: its name and where its value comes from.
struct Column<Record>: Sendable {
    let name: String
    let bind: @Sendable (Record, SQLDialect) -> SQLValue
    /// The value is JSON text (written into a JSON document as it is, not as a string).
    let isJSON: Bool

    init<V: SQLColumnValue>(_ name: String, _ field: @escaping @Sendable (Record) -> V) {
        self.name = name
        self.bind = { record, dialect in field(record).bind(dialect) }
        self.isJSON = V.self is any SQLJSONText.Type
    }
}

/// A record's table: its columns (one line each), the record read back from them in the same order, and
/// the statements every store builds from them.
struct RowCodec<Record: Sendable>: Sendable {
    let table: String
    /// The primary key, which export pages by.
    let key: String
    let columns: [Column<Record>]
    private let read: @Sendable (inout RowReader) throws -> Record
    /// `a, b, c`
    let names: String
    /// `SELECT a, b, c FROM table`
    let select: String
    /// `INSERT INTO table (a, b, c) VALUES ($1, $2, $3)`
    let insert: String

    init(_ table: String, key: String, _ columns: [Column<Record>], read: @escaping @Sendable (inout RowReader) throws -> Record) {
        self.table = table
        self.key = key
        self.columns = columns
        self.read = read
        names = columns.map(\.name).joined(separator: ", ")
        select = "SELECT \(names) FROM \(table)"
        insert = "INSERT INTO \(table) (\(names)) VALUES (\(columns.indices.map { "$\($0 + 1)" }.joined(separator: ", ")))"
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
        var reader = RowReader(row: row)
        return try read(&reader)
    }
}

/// The codec of each record. Adding a column: its line here, and its argument in `read`, in the same place.
enum Codec {
    static let user = RowCodec<User>("users", key: "id", [
        Column("id", { $0.id }), Column("username", { $0.username }), Column("email", { $0.email }), Column("password_hash", { $0.passwordHash }),
        Column("role", { $0.role }), Column("created_at", { $0.createdAt }), Column("updated_at", { $0.updatedAt }),
        Column("disabled_at", { $0.disabledAt }),
    ]) { r in
        User(id: try r.next(), username: try r.next(), email: try r.next(), passwordHash: try r.next(), role: try r.next(),
             createdAt: try r.next(), updatedAt: try r.next(), disabledAt: try r.next())
    }

    static let session = RowCodec<ChatSession>("chat_sessions", key: "session_id", [
        Column("session_id", { $0.id }), Column("user_id", { $0.userId }), Column("metadata", { $0.metadata }), Column("state", { $0.state }),
        Column("is_resolved", { $0.isResolved }), Column("expires_at", { $0.expiresAt }), Column("resolved_at", { $0.resolvedAt }),
        Column("created_at", { $0.createdAt }), Column("updated_at", { $0.updatedAt }), Column("agent", { $0.agent }), Column("handoff", { $0.handoff }),
        Column("assignee_id", { $0.assigneeId }), Column("handoff_at", { $0.handoffAt }),
    ]) { r in
        ChatSession(
            id: try r.next(), userId: try r.next(), metadata: try r.next(), state: try r.next(), isResolved: try r.next(),
            expiresAt: try r.next(), resolvedAt: try r.next(), createdAt: try r.next(), updatedAt: try r.next(), agent: try r.next(),
            handoff: try r.next(), assigneeId: try r.next(), handoffAt: try r.next()
        )
    }

    static let message = RowCodec<ChatMessage>("chat_messages", key: "id", [
        Column("id", { $0.id }), Column("session_id", { $0.sessionId }), Column("user_id", { $0.userId }), Column("content", { $0.content }),
        Column("type", { $0.type }), Column("direction", { $0.direction }), Column("metadata", { $0.metadata }),
        Column("client_message_id", { $0.clientMessageId }), Column("created_at", { $0.createdAt }), Column("updated_at", { $0.updatedAt }),
        Column("edited_at", { $0.editedAt }), Column("deleted_at", { $0.deletedAt }), Column("attachments", { $0.attachments }),
    ]) { r in
        ChatMessage(
            id: try r.next(), sessionId: try r.next(), userId: try r.next(), content: try r.next(), type: try r.next(),
            direction: try r.next(), metadata: try r.next(), clientMessageId: try r.next(), createdAt: try r.next(), updatedAt: try r.next(),
            editedAt: try r.next(), deletedAt: try r.next(), attachments: try r.next()
        )
    }

    static let attachment = RowCodec<Attachment>("attachments", key: "id", [
        Column("id", { $0.id }), Column("session_id", { $0.sessionId }), Column("user_id", { $0.userId }), Column("filename", { $0.filename }),
        Column("content_type", { $0.contentType }), Column("size", { $0.size }), Column("sha256", { $0.sha256 }),
        Column("created_at", { $0.createdAt }), Column("completed_at", { $0.completedAt }), Column("sent_at", { $0.sentAt }),
    ]) { r in
        Attachment(
            id: try r.next(), sessionId: try r.next(), userId: try r.next(), filename: try r.next(), contentType: try r.next(),
            size: try r.next(), sha256: try r.next(), createdAt: try r.next(), completedAt: try r.next(), sentAt: try r.next()
        )
    }

    static let refreshToken = RowCodec<RefreshTokenRecord>("refresh_tokens", key: "id", [
        Column("id", { $0.id }), Column("user_id", { $0.userId }), Column("family_id", { $0.familyId }), Column("token_hash", { $0.tokenHash }),
        Column("expires_at", { $0.expiresAt }), Column("created_at", { $0.createdAt }), Column("used_at", { $0.usedAt }), Column("revoked_at", { $0.revokedAt }),
    ]) { r in
        RefreshTokenRecord(
            id: try r.next(), userId: try r.next(), familyId: try r.next(), tokenHash: try r.next(), expiresAt: try r.next(),
            createdAt: try r.next(), usedAt: try r.next(), revokedAt: try r.next()
        )
    }

    static let revokedAccessToken = RowCodec<RevokedAccessToken>("revoked_access_tokens", key: "jti", [
        Column("jti", { $0.jti }), Column("expires_at", { $0.expiresAt }),
    ]) { r in RevokedAccessToken(jti: try r.next(), expiresAt: try r.next()) }

    static let sessionRead = RowCodec<SessionRead>("session_reads", key: "session_id", [
        Column("session_id", { $0.sessionId }), Column("user_id", { $0.userId }), Column("last_read_id", { $0.lastReadId }),
        Column("read_at", { $0.readAt }),
    ]) { r in SessionRead(sessionId: try r.next(), userId: try r.next(), lastReadId: try r.next(), readAt: try r.next()) }
}
