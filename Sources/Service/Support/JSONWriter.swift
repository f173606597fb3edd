#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// A value that writes itself as JSON text, its fields in a fixed order (the order of `properties` in
/// `openapi.yaml`).
protocol JSONWritable {
    /// Writes the value (one JSON value, usually an object) at the writer's position.
    func write(to json: inout JSONWriter)
}

extension JSONWritable {
    /// Compact JSON bytes.
    func jsonBytes(capacity: Int = 512) -> [UInt8] {
        var writer = JSONWriter(capacity: capacity)
        write(to: &writer)
        return writer.bytes
    }

    /// Compact JSON text.
    func jsonText(capacity: Int = 512) -> String {
        String(decoding: jsonBytes(capacity: capacity), as: UTF8.self)
    }
}

/// Writes compact JSON text straight into a byte array, fields in the order they are written.
///
/// Responses and realtime events are written with it: no intermediate dictionaries, and the same key order
/// every time (`JSONEncoder` keeps no order unless told to sort). Keys are static, plain ASCII names.
struct JSONWriter {
    private(set) var bytes: [UInt8]
    /// Whether the next field or element needs a comma before it.
    private var separate = false

    init(capacity: Int = 512) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    // MARK: Structure

    /// Writes an object whose fields `body` writes.
    mutating func object(_ body: (inout JSONWriter) -> Void) {
        comma()
        bytes.append(UInt8(ascii: "{"))
        separate = false
        body(&self)
        bytes.append(UInt8(ascii: "}"))
        separate = true
    }

    /// Writes an array whose elements `body` writes.
    mutating func array(_ body: (inout JSONWriter) -> Void) {
        comma()
        bytes.append(UInt8(ascii: "["))
        separate = false
        body(&self)
        bytes.append(UInt8(ascii: "]"))
        separate = true
    }

    /// Writes an array of `items`, each with `element`.
    mutating func array<S: Sequence>(_ items: S, _ element: (inout JSONWriter, S.Element) -> Void) {
        comma()
        bytes.append(UInt8(ascii: "["))
        separate = false
        for item in items { element(&self, item) }
        bytes.append(UInt8(ascii: "]"))
        separate = true
    }

    /// Starts a field: `"key":`. Its value is written next.
    mutating func key(_ name: StaticString) {
        comma()
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        separate = false
    }

    /// Appends JSON punctuation as is; the next value gets no comma of its own. For output written in pieces
    /// (`UserExport`), where an object or array stays open from one piece to the next.
    mutating func raw(_ text: StaticString) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        separate = false
    }

    private mutating func comma() {
        if separate { bytes.append(UInt8(ascii: ",")) }
    }

    // MARK: Values

    mutating func null() {
        comma()
        bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])  // null
        separate = true
    }

    mutating func value(_ b: Bool) {
        comma()
        if b { bytes.append(contentsOf: [0x74, 0x72, 0x75, 0x65]) } else { bytes.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65]) }
        separate = true
    }

    mutating func value(_ n: Int) {
        comma()
        if n >= 0, n < 10 {
            bytes.append(UInt8(48 + n))
        } else {
            bytes.append(contentsOf: String(n).utf8)
        }
        separate = true
    }

    mutating func value(_ d: Double) {
        comma()
        // `description` keeps a fraction or exponent ("1000.0", "1e+20"); JSON has no NaN or infinity.
        bytes.append(contentsOf: d.isFinite ? d.description.utf8 : "null".utf8)
        separate = true
    }

    mutating func value(_ s: String) {
        comma()
        writeString(s)
        separate = true
    }

    /// A UUID in its lowercase canonical form.
    mutating func value(_ id: UUID) {
        comma()
        // Formatted on the stack and appended at once: one capacity check instead of 38.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 38) { out in
            out[0] = UInt8(ascii: "\"")
            var j = 1
            withUnsafeBytes(of: id.uuid) { raw in
                for i in 0..<16 {
                    if i == 4 || i == 6 || i == 8 || i == 10 {
                        out[j] = UInt8(ascii: "-")
                        j += 1
                    }
                    let b = raw[i]
                    out[j] = Self.hex(b >> 4)
                    out[j + 1] = Self.hex(b & 0x0F)
                    j += 2
                }
            }
            out[37] = UInt8(ascii: "\"")
            bytes.append(contentsOf: UnsafeBufferPointer(out))
        }
        separate = true
    }

    @inline(__always)
    private static func hex(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? 48 + nibble : 87 + nibble
    }

    /// A timestamp as RFC 3339 UTC with milliseconds (as `Timestamp.format`).
    mutating func value(_ date: Date) {
        comma()
        bytes.append(UInt8(ascii: "\""))
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { out in
            Timestamp.write(date, into: out)
            bytes.append(contentsOf: UnsafeBufferPointer(out))
        }
        bytes.append(UInt8(ascii: "\""))
        separate = true
    }

    /// Any JSON value; object keys sorted, so the same value always reads the same.
    mutating func value(_ json: JSONValue) {
        switch json {
        case .null: null()
        case .bool(let b): value(b)
        case .int(let n):
            comma()
            bytes.append(contentsOf: String(n).utf8)
            separate = true
        case .double(let d): value(d)
        case .string(let s): value(s)
        case .array(let items): array(items) { $0.value($1) }
        case .object(let fields):
            comma()
            bytes.append(UInt8(ascii: "{"))
            separate = false
            if fields.count == 1, let (key, item) = fields.first {
                writeString(key)
                bytes.append(UInt8(ascii: ":"))
                value(item)
            } else {
                for key in fields.keys.sorted() {
                    comma()
                    writeString(key)
                    bytes.append(UInt8(ascii: ":"))
                    separate = false
                    value(fields[key]!)
                }
            }
            bytes.append(UInt8(ascii: "}"))
            separate = true
        }
    }

    mutating func value(_ item: some JSONWritable) {
        item.write(to: &self)
    }

    // MARK: Fields (a key and its value; nil is written as null)

    mutating func field(_ name: StaticString, _ v: String) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: String?) { key(name); if let v { value(v) } else { null() } }
    mutating func field(_ name: StaticString, _ v: Bool) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: Int) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: Double) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: UUID) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: UUID?) { key(name); if let v { value(v) } else { null() } }
    mutating func field(_ name: StaticString, _ v: Date) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: Date?) { key(name); if let v { value(v) } else { null() } }
    mutating func field(_ name: StaticString, _ v: JSONValue) { key(name); value(v) }
    mutating func field(_ name: StaticString, _ v: (some JSONWritable)?) { key(name); if let v { v.write(to: &self) } else { null() } }
    mutating func field<T: JSONWritable>(_ name: StaticString, _ items: [T]) { key(name); array(items) { $1.write(to: &$0) } }

    // MARK: Strings

    private mutating func writeString(_ s: String) {
        JSONCodec.writeString(s, into: &bytes)
    }
}
