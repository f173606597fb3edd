// Encoding and decoding costs of the JSON hot paths, in isolation: the typed bodies written by
// JSONWriter against the dictionaries they replaced and against Codable (FoundationEssentials
// JSONEncoder/JSONDecoder), and the strict request parser against JSONDecoder. BENCHMARKS.md quotes it.
//
//   d=$(mktemp -d) && swiftc -O -parse-as-library -module-name Storage -o $d/json-bench \
//     Sources/Storage/{JSONCodec,JSONValue,Timestamp,UUIDv7,Records}.swift \
//     Sources/Service/Support/JSONWriter.swift Sources/Service/Models/Responses.swift scripts/json-bench.swift \
//     && $d/json-bench
//
// (One module named Storage, so the sources compile unchanged; their `import Storage` only warns.)
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Foundation

/// The fields of Service's APIError that API.ErrorBody reads.
struct APIError {
    var code: String
    var message: String
    var details: JSONValue?
}

// The way before the typed bodies (`Wire`, commit 1673e63).
enum Wire {
    static func message(_ m: ChatMessage) -> JSONValue {
        .object([
            "id": .string(m.id.lowercased), "sessionId": .string(m.sessionId.lowercased), "userId": m.userId.map { .string($0.lowercased) } ?? .null,
            "content": .string(m.content), "type": .string(m.type), "direction": .string(m.direction.rawValue), "metadata": m.metadata,
            "clientMessageId": m.clientMessageId.map(JSONValue.string) ?? .null,
            "createdAt": .string(Timestamp.format(m.createdAt)), "updatedAt": .string(Timestamp.format(m.updatedAt)),
        ])
    }
}

// A Codable mirror for JSONEncoder / JSONDecoder.
struct CodableMessage: Codable {
    var id: String; var sessionId: String; var userId: String?; var content: String; var type: String; var direction: String
    var metadata: JSONValue; var clientMessageId: String?; var createdAt: String; var updatedAt: String
    init(_ m: ChatMessage) {
        id = m.id.lowercased; sessionId = m.sessionId.lowercased; userId = m.userId?.lowercased; content = m.content; type = m.type
        direction = m.direction.rawValue; metadata = m.metadata; clientMessageId = m.clientMessageId
        createdAt = Timestamp.format(m.createdAt); updatedAt = Timestamp.format(m.updatedAt)
    }
}
struct CodablePage: Codable { var sessionId: String; var messages: [CodableMessage]; var hasMore: Bool }
struct CodableSend: Codable { var content: String; var type: String?; var metadata: JSONValue?; var clientMessageId: String? }

@main
struct JSONBench {
    static func main() {
        let session = UUID()
        let user = UUID()
        let now = Date()
        let messages = (0..<50).map { i in
            ChatMessage(id: UUIDv7.make(now: now), sessionId: session, userId: user, content: "seed \(i)", type: "text", direction: .inbound,
                        metadata: .object([:]), clientMessageId: nil, createdAt: now, updatedAt: now)
        }

        func measure(_ name: String, _ n: Int, _ body: () -> Int) {
            var sink = 0
            for _ in 0..<(n / 10) { sink &+= body() }
            let start = ContinuousClock.now
            for _ in 0..<n { sink &+= body() }
            let elapsed = ContinuousClock.now - start
            let us = Double(elapsed.components.attoseconds) / 1e12 / Double(n) + Double(elapsed.components.seconds) * 1e6 / Double(n)
            print(String(format: "%-58@ %8.2f µs/op", name as NSString, us), sink == 42 ? "" : "")
        }

        let encoder = JSONEncoder()
        let decoder = JSONDecoder()
        for _ in 0..<3 {
            measure("page of 50: [String: JSONValue] + JSONCodec (old)", 2000) {
                JSONValue.object(["sessionId": .string(session.lowercased), "messages": .array(messages.map(Wire.message)), "hasMore": .bool(true)]).jsonBytes().count
            }
            measure("page of 50: API.MessagePage + JSONWriter (new)", 2000) {
                API.MessagePage(sessionId: session, messages: messages.map(API.Message.init), hasMore: true).jsonBytes(capacity: 512 + 400 * 50).count
            }
            measure("page of 50: Codable + JSONEncoder", 2000) {
                (try! encoder.encode(CodablePage(sessionId: session.lowercased, messages: messages.map(CodableMessage.init), hasMore: true))).count
            }
            measure("one message: old", 50000) { Wire.message(messages[0]).jsonBytes().count }
            measure("one message: new", 50000) { API.Message(messages[0]).jsonBytes().count }
            measure("one message: JSONEncoder", 50000) { (try! encoder.encode(CodableMessage(messages[0]))).count }

            let body = Array(#"{"content":"hello world, this is a message","type":"text","metadata":{"k":"v"},"clientMessageId":"c-123"}"#.utf8)
            measure("send body: JSONValue.parse + typed fields", 100000) {
                guard case .object(let f) = try! JSONValue.parse(bytes: body), case .string(let c)? = f["content"] else { return 0 }
                return c.unicodeScalars.count + (f["metadata"] == nil ? 0 : 1)
            }
            measure("send body: JSONDecoder (Codable, metadata as JSONValue)", 100000) {
                let d = try! decoder.decode(CodableSend.self, from: Data(body))
                return d.content.unicodeScalars.count
            }
        }
        let sample = String(decoding: try! encoder.encode(CodableMessage(messages[0])), as: UTF8.self)
        print("JSONEncoder key order:", sample.prefix(120))
        print("JSONWriter:           ", API.Message(messages[0]).jsonText().prefix(120))
        let dup = Array(#"{"content":"a","content":"b"}"#.utf8)
        print("JSONDecoder on a duplicate key:", (try? decoder.decode(CodableSend.self, from: Data(dup))).map { "accepted, content=\($0.content)" } ?? "refused")
        print("JSONValue.parse on a duplicate key:", (try? JSONValue.parse(bytes: dup)) == nil ? "refused" : "accepted")
        var deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        print("JSONValue.parse 100000-deep:", (try? JSONValue.parse(bytes: Array(deep.utf8))) == nil ? "refused" : "accepted")
    }
}
