#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import NIOCore
import Storage

/// JSON responses from the typed bodies of `API`, every field (explicit nulls included) in the documented order.
enum JSONResponse {
    static func make(_ status: HTTPResponse.Status, _ value: some JSONWritable, headers: HTTPFields = [:], capacity: Int = 1024) -> Response {
        var fields = headers
        fields[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: value.jsonBytes(capacity: capacity))))
    }
}

/// A request's JSON object body with typed, validated field access. Every failure is a 4xx naming the field.
struct JSONBody {
    let fields: [String: JSONValue]

    /// Reads and parses the body. Rejects non-JSON content types (415), bodies over `maxBytes` (413),
    /// invalid JSON or a non-object (400) and keys outside `allowed` (400).
    static func read(_ request: Request, maxBytes: Int, allowed: Set<String>, emptyIsObject: Bool = false) async throws -> JSONBody {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: maxBytes)
        } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, code: "payload_too_large", message: "request body is larger than \(maxBytes) bytes")
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError(.contentTooLarge, code: "payload_too_large", message: "request body is larger than \(maxBytes) bytes")
        }
        if buffer.readableBytes == 0 {
            if emptyIsObject { return JSONBody(fields: [:]) }
            throw APIError(.badRequest, code: "invalid_json", message: "request body must be a JSON object")
        }
        if let type = request.headers[.contentType] {
            guard isJSONMediaType(type) else {
                throw APIError(.unsupportedMediaType, code: "unsupported_media_type", message: "Content-Type must be application/json")
            }
        }
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes: buffer.readableBytesView)
        } catch {
            throw APIError(.badRequest, code: "invalid_json", message: "request body is not valid JSON")
        }
        guard case .object(let fields) = value else {
            throw APIError(.badRequest, code: "invalid_json", message: "request body must be a JSON object")
        }
        if let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw APIError.invalid(unknown, "unknown field")
        }
        // Databases cannot keep NUL in text (Postgres refuses it, C strings end at it).
        for (key, field) in fields where field.containsNUL {
            throw APIError.invalid(key, "must not contain NUL (\\u0000) characters")
        }
        return JSONBody(fields: fields)
    }

    /// `application/json` or `…+json`, in any case, parameters and optional white space around it allowed
    /// (RFC 9110 §8.3.1), read byte by byte: this runs on every request with a body.
    static func isJSONMediaType(_ value: String) -> Bool {
        var utf8 = Substring(value).utf8
        if let semicolon = utf8.firstIndex(of: UInt8(ascii: ";")) { utf8 = utf8[..<semicolon] }
        let isSpace = { (c: UInt8) in c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") }
        guard let start = utf8.firstIndex(where: { !isSpace($0) }), let end = utf8.lastIndex(where: { !isSpace($0) }) else { return false }
        let media = utf8[start...end]
        func endsWith(_ suffix: String) -> Bool {
            let lower = { (c: UInt8) in (65...90).contains(c) ? c + 32 : c }
            return media.count >= suffix.utf8.count && zip(media.suffix(suffix.utf8.count), suffix.utf8).allSatisfy { lower($0) == $1 }
        }
        return endsWith("+json") || (media.count == 16 && endsWith("application/json"))
    }

    /// A string field; nil when absent (or null and `required` is false).
    func string(_ key: String, required: Bool = false, length: ClosedRange<Int>? = nil) throws -> String? {
        switch fields[key] {
        case nil, .null?:
            if required { throw APIError.invalid(key, "is required") }
            return nil
        case .string(let s)?:
            // Counted in code points, as JSON Schema's minLength/maxLength (and openapi.yaml) count them.
            if let length, !length.contains(s.unicodeScalars.count) {
                throw APIError.invalid(key, "must be \(length.lowerBound) to \(length.upperBound) characters")
            }
            return s
        default:
            throw APIError.invalid(key, "must be a string")
        }
    }

    /// An array of distinct UUIDs, at most `max`; empty when absent.
    func uuids(_ key: String, max: Int) throws -> [UUID] {
        switch fields[key] {
        case nil, .null?:
            return []
        case .array(let items)?:
            guard items.count <= max else { throw APIError.invalid(key, "must have at most \(max) items") }
            var ids: [UUID] = []
            for item in items {
                guard case .string(let text) = item, let id = UUID(text: text) else { throw APIError.invalid(key, "must be an array of UUIDs") }
                guard !ids.contains(id) else { throw APIError.invalid(key, "must not name the same id twice") }
                ids.append(id)
            }
            return ids
        default:
            throw APIError.invalid(key, "must be an array of UUIDs")
        }
    }

    /// An object field; nil when absent. Serialized size is capped at `maxBytes`.
    func object(_ key: String, maxBytes: Int) throws -> JSONValue? {
        switch fields[key] {
        case nil, .null?:
            return nil
        case .object?:
            let value = fields[key]!
            if value.jsonText().utf8.count > maxBytes { throw APIError.invalid(key, "must be at most \(maxBytes) bytes of JSON") }
            return value
        default:
            throw APIError.invalid(key, "must be an object")
        }
    }
}

/// Query-string access with the same rules: unknown parameters and bad values are 400s naming the parameter.
/// The query is decoded as HTML forms and URLSearchParams encode it (`application/x-www-form-urlencoded`):
/// `+` is a space, `%XX` a byte of UTF-8.
struct QueryParameters {
    let values: [String: String]

    init(_ request: Request, allowed: Set<String>) throws {
        var values: [String: String] = [:]
        for pair in (request.uri.query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.decode(parts[0]) else { throw APIError.invalid(String(parts[0].prefix(64)), "is not valid percent-encoded UTF-8") }
            guard allowed.contains(name) else { throw APIError.invalid(String(name.prefix(64)), "unknown query parameter") }
            guard let value = Self.decode(parts.count > 1 ? parts[1] : "") else { throw APIError.invalid(name, "is not valid percent-encoded UTF-8") }
            guard values[name] == nil else { throw APIError.invalid(name, "given more than once") }
            values[name] = value
        }
        self.values = values
    }

    /// `+` → space, `%XX` → byte; nil when an escape is malformed or the bytes are not UTF-8.
    static func decode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"):
                bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else { return nil }
                bytes.append(high << 4 | low)
            default:
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    func int(_ key: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = values[key] else { return value }
        guard let n = Int(text), range.contains(n) else {
            throw APIError.invalid(key, "must be an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    func uuid(_ key: String) throws -> UUID? {
        guard let text = values[key] else { return nil }
        guard let id = UUID(text: text) else { throw APIError.invalid(key, "must be a UUID") }
        return id
    }

    func bool(_ key: String) throws -> Bool? {
        guard let text = values[key] else { return nil }
        switch text {
        case "true": return true
        case "false": return false
        default: throw APIError.invalid(key, "must be true or false")
        }
    }

    func oneOf<T: RawRepresentable>(_ key: String, _ type: T.Type) throws -> T? where T.RawValue == String, T: CaseIterable {
        guard let text = values[key] else { return nil }
        guard let value = T(rawValue: text) else {
            throw APIError.invalid(key, "must be one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }
}

extension Parameters {
    /// A path parameter that must be a UUID (400 otherwise).
    func uuid(_ name: String) throws -> UUID {
        guard let text = self.get(name), let id = UUID(text: text) else {
            throw APIError.invalid(name, "must be a UUID")
        }
        return id
    }
}

extension JSONValue {
    /// Whether any string or key inside holds a NUL character.
    var containsNUL: Bool {
        switch self {
        case .string(let s): return s.utf8.contains(0)
        case .array(let items): return items.contains { $0.containsNUL }
        case .object(let fields): return fields.contains { $0.key.utf8.contains(0) || $0.value.containsNUL }
        default: return false
        }
    }
}
