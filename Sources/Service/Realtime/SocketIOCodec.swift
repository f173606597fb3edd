import Storage

/// Engine.IO protocol v4 packets (https://socket.io/docs/v4/engine-io-protocol/).
enum EnginePacket: Equatable, Sendable {
    case open(String)
    case close
    case ping(String)
    case pong(String)
    case message(String)
    case binaryMessage([UInt8])
    case upgrade
    case noop

    struct DecodeError: Error, Equatable {
        var reason: String
    }

    /// The record separator between packets of one HTTP long-polling payload.
    static let separator: Character = "\u{1E}"

    /// Decodes one packet as carried in a WebSocket text frame or a polling payload (`b…` is base64 binary).
    static func decode(_ text: Substring) throws(DecodeError) -> EnginePacket {
        guard let first = text.first else { throw DecodeError(reason: "empty packet") }
        let body = String(text.dropFirst())
        switch first {
        case "0": return .open(body)
        case "1": guard body.isEmpty else { throw DecodeError(reason: "close carries no data") }; return .close
        case "2": return .ping(body)
        case "3": return .pong(body)
        case "4": return .message(body)
        case "5": guard body.isEmpty else { throw DecodeError(reason: "upgrade carries no data") }; return .upgrade
        case "6": guard body.isEmpty else { throw DecodeError(reason: "noop carries no data") }; return .noop
        case "b":
            guard let bytes = Base64.decode(body) else { throw DecodeError(reason: "invalid base64 in binary packet") }
            return .binaryMessage(bytes)
        default: throw DecodeError(reason: "unknown packet type")
        }
    }

    /// Decodes an HTTP long-polling payload: packets separated by U+001E.
    static func decodePayload(_ text: String) throws(DecodeError) -> [EnginePacket] {
        guard !text.isEmpty else { throw DecodeError(reason: "empty payload") }
        var packets: [EnginePacket] = []
        for part in text.split(separator: separator, omittingEmptySubsequences: false) {
            packets.append(try decode(part))
        }
        return packets
    }

    /// The packet's text form (binary as `b` + base64, as long-polling carries it).
    var encoded: String {
        switch self {
        case .open(let data): return "0" + data
        case .close: return "1"
        case .ping(let data): return "2" + data
        case .pong(let data): return "3" + data
        case .message(let data): return "4" + data
        case .binaryMessage(let bytes): return "b" + Base64.encode(bytes)
        case .upgrade: return "5"
        case .noop: return "6"
        }
    }

    static func encodePayload(_ packets: [EnginePacket]) -> String {
        packets.map(\.encoded).joined(separator: String(separator))
    }
}

/// Socket.IO protocol v5 packets (https://socket.io/docs/v4/socket-io-protocol/), carried in Engine.IO messages.
struct SocketIOPacket: Equatable, Sendable {
    enum Kind: Int, Sendable {
        case connect = 0
        case disconnect = 1
        case event = 2
        case ack = 3
        case connectError = 4
        case binaryEvent = 5
        case binaryAck = 6
    }

    struct DecodeError: Error, Equatable {
        var reason: String
    }

    var kind: Kind
    var namespace: String = "/"
    var ackId: Int?
    var data: JSONValue?
    /// Number of binary attachments that follow (binary packets only).
    var attachments: Int = 0

    static let maxAckId = 1 << 40

    /// Decodes a packet, checking the payload shape each type requires.
    static func decode(_ text: String) throws(DecodeError) -> SocketIOPacket {
        let bytes = Array(text.utf8)
        guard let first = bytes.first, let kind = Kind(rawValue: Int(first) - 48), first >= 48, first <= 54 else {
            throw DecodeError(reason: "unknown packet type")
        }
        var packet = SocketIOPacket(kind: kind)
        var i = 1
        if kind == .binaryEvent || kind == .binaryAck {
            var count = 0
            let start = i
            while i < bytes.count, (48...57).contains(bytes[i]) {
                count = count * 10 + Int(bytes[i] - 48)
                guard count <= 1000 else { throw DecodeError(reason: "too many attachments") }
                i += 1
            }
            guard i > start, i < bytes.count, bytes[i] == UInt8(ascii: "-") else { throw DecodeError(reason: "invalid attachment count") }
            i += 1
            packet.attachments = count
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "/") {
            let start = i
            while i < bytes.count, bytes[i] != UInt8(ascii: ",") { i += 1 }
            guard i - start <= 256 else { throw DecodeError(reason: "namespace too long") }
            packet.namespace = String(decoding: bytes[start..<i], as: UTF8.self)
            if i < bytes.count { i += 1 }  // the comma
        }
        let idStart = i
        var id = 0
        while i < bytes.count, (48...57).contains(bytes[i]) {
            id = id * 10 + Int(bytes[i] - 48)
            guard id <= maxAckId else { throw DecodeError(reason: "ack id too large") }
            i += 1
        }
        if i > idStart { packet.ackId = id }
        if i < bytes.count {
            guard let value = try? JSONValue.parse(bytes: bytes[i...]) else { throw DecodeError(reason: "payload is not valid JSON") }
            packet.data = value
        }
        try packet.validate()
        return packet
    }

    private func validate() throws(DecodeError) {
        switch kind {
        case .connect:
            guard ackId == nil else { throw DecodeError(reason: "CONNECT has no ack id") }
            if let data, case .object = data {} else if data != nil { throw DecodeError(reason: "CONNECT payload must be an object") }
        case .disconnect:
            guard data == nil, ackId == nil else { throw DecodeError(reason: "DISCONNECT has no payload") }
        case .event, .binaryEvent:
            guard case .array(let items)? = data, case .string? = items.first else {
                throw DecodeError(reason: "EVENT payload must be an array starting with the event name")
            }
        case .ack, .binaryAck:
            guard ackId != nil, case .array? = data else { throw DecodeError(reason: "ACK needs an id and an array payload") }
        case .connectError:
            guard case .object? = data else { throw DecodeError(reason: "CONNECT_ERROR payload must be an object") }
        }
    }

    var encoded: String {
        var text = String(kind.rawValue)
        if kind == .binaryEvent || kind == .binaryAck { text += "\(attachments)-" }
        if namespace != "/" { text += namespace + "," }
        if let ackId { text += String(ackId) }
        if let data { text += data.jsonText() }
        return text
    }

    /// An EVENT packet `["name", payload]`.
    static func event(_ name: String, _ payload: JSONValue, namespace: String = "/") -> SocketIOPacket {
        SocketIOPacket(kind: .event, namespace: namespace, data: .array([.string(name), payload]))
    }
}
