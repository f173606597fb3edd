#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Testing
@testable import Service
@testable import Storage

@Suite("Typed API bodies and realtime events")
struct ModelTests {
    static let session = UUID(text: "f532ed1f-0e5e-4956-a9da-63496c1935a0")!
    static let user = UUID(text: "010f4334-0518-479f-8f7b-51b32ec95592")!
    static let message = ChatMessage(
        id: UUID(text: "01a2123f-5cea-7197-8f32-ba19dd783536")!, sessionId: session, userId: user, content: "Hello \"you\"\n\u{1}é",
        type: "text", direction: .inbound, metadata: .object(["b": .int(2), "a": .array([.null, .bool(true), .double(1.5)])]),
        clientMessageId: "c-1", createdAt: Date(timeIntervalSince1970: 1_764_066_472.170), updatedAt: Date(timeIntervalSince1970: 1_764_066_472.170)
    )
    static let messageJSON =
        #"{"id":"01a2123f-5cea-7197-8f32-ba19dd783536","sessionId":"f532ed1f-0e5e-4956-a9da-63496c1935a0","#
        + #""userId":"010f4334-0518-479f-8f7b-51b32ec95592","content":"Hello \"you\"\n\u0001é","type":"text","direction":"inbound","#
        + #""metadata":{"a":[null,true,1.5],"b":2},"clientMessageId":"c-1","createdAt":"2025-11-25T10:27:52.170Z","#
        + #""updatedAt":"2025-11-25T10:27:52.170Z","editedAt":null,"deletedAt":null,"attachments":[]}"#

    @Test("a message is written in the documented field order, id first, and reads back as written")
    func messageOrder() throws {
        let text = API.Message(Self.message).jsonText()
        #expect(text == Self.messageJSON)
        guard case .object(let fields) = try JSONValue.parse(bytes: Array(text.utf8)) else { Issue.record("not an object"); return }
        #expect(fields["content"] == .string(Self.message.content))
    }

    @Test("timestamps are written as Timestamp.format writes them, over the whole clamped range")
    func timestamps() {
        let dates: [Double] = [0, -1, -0.0005, 0.9995, 951_782_400.123, 1_764_066_472.170, -62_135_596_800, -62_200_000_000, 253_402_300_799.999, 1e13]
        for seconds in dates + (0..<500).map({ _ in Double.random(in: -62_135_596_800...253_402_300_799) }) {
            let date = Date(timeIntervalSince1970: seconds)
            var json = JSONWriter()
            json.value(date)
            #expect(String(decoding: json.bytes, as: UTF8.self) == "\"\(Timestamp.format(date))\"", "\(seconds)")
        }
    }

    @Test("empty fields are written as null, never left out")
    func nulls() {
        var message = Self.message
        message.userId = nil
        message.clientMessageId = nil
        let text = API.Message(message).jsonText()
        #expect(text.contains(#""userId":null,"#) && text.contains(#""clientMessageId":null,"#))
        let error = API.ErrorBody(code: "x", message: "y", details: nil).jsonText()
        #expect(error == #"{"error":{"code":"x","message":"y","details":null}}"#)
    }

    @Test("a server event is written once per transport: /ws text and a Socket.IO packet")
    func events() {
        let s = Self.session.lowercased, u = Self.user.lowercased
        let cases: [(ServerEvent, String, String?)] = [
            (.message(Self.message), #"{"type":"message","message":"# + Self.messageJSON + "}", #"42["message","# + Self.messageJSON + "]"),
            (.messageUpdated(Self.message), #"{"type":"message.updated","message":"# + Self.messageJSON + "}",
             #"42["message.updated",{"message":"# + Self.messageJSON + "}]"),
            (.messageDeleted(Self.message), #"{"type":"message.deleted","message":"# + Self.messageJSON + "}",
             #"42["message.deleted",{"message":"# + Self.messageJSON + "}]"),
            (.typing(session: Self.session, user: Self.user, agent: nil, isTyping: true),
             #"{"type":"typing","sessionId":"\#(s)","userId":"\#(u)","isTyping":true}"#,
             #"42["typing",{"sessionId":"\#(s)","userId":"\#(u)","isTyping":true}]"#),
            (.typing(session: Self.session, user: nil, agent: "front", isTyping: false),
             #"{"type":"typing","sessionId":"\#(s)","userId":null,"agent":"front","isTyping":false}"#,
             #"42["typing",{"sessionId":"\#(s)","userId":null,"agent":"front","isTyping":false}]"#),
            (.presence(session: Self.session, user: Self.user, status: "online"),
             #"{"type":"presence","sessionId":"\#(s)","userId":"\#(u)","status":"online"}"#,
             #"42["presence",{"sessionId":"\#(s)","userId":"\#(u)","status":"online"}]"#),
            (.delta(session: Self.session, streamId: Self.user, agent: "llm", index: 3, text: "Hel"),
             #"{"type":"message.delta","sessionId":"\#(s)","streamId":"\#(u)","agent":"llm","index":3,"delta":"Hel"}"#,
             #"42["message.delta",{"sessionId":"\#(s)","streamId":"\#(u)","agent":"llm","index":3,"delta":"Hel"}]"#),
            (.left(session: Self.session, reason: "claimed"),
             #"{"type":"left","sessionId":"\#(s)","reason":"claimed"}"#, #"42["left",{"sessionId":"\#(s)","reason":"claimed"}]"#),
            (.resync(session: Self.session),
             #"{"type":"resync","sessionId":"\#(s)","message":"\#(ServerEvent.resyncMessage)"}"#,
             #"42["resync",{"sessionId":"\#(s)","message":"\#(ServerEvent.resyncMessage)"}]"#),
            (.ack(id: .int(7), .join(session: Self.session, replayed: 2)),
             #"{"type":"ack","id":7,"event":"join","sessionId":"\#(s)","replayed":2}"#, #"437[{"event":"join","sessionId":"\#(s)","replayed":2}]"#),
            (.ack(id: .string("a"), .leave(session: Self.session)), #"{"type":"ack","id":"a","event":"leave","sessionId":"\#(s)"}"#, nil),
            (.ack(id: nil, .authenticate(user: Self.user)), #"{"type":"ack","id":null,"event":"authenticate","userId":"\#(u)"}"#, nil),
            (.ack(id: .int(1), .message(Self.message, duplicate: true)),
             #"{"type":"ack","id":1,"event":"message","message":"# + Self.messageJSON + #","duplicate":true}"#,
             #"431[{"event":"message","message":"# + Self.messageJSON + #","duplicate":true}]"#),
            (.error(id: .int(4), APIError.invalid("content", "is required")),
             #"{"type":"error","id":4,"error":{"code":"validation_failed","message":"content: is required","details":{"field":"content"}}}"#,
             #"434[{"error":{"code":"validation_failed","message":"content: is required","details":{"field":"content"}}}]"#),
            (.error(id: nil, APIError.unauthenticated),
             #"{"type":"error","id":null,"error":{"code":"unauthenticated","message":"a valid access token is required","details":null}}"#,
             #"42["error",{"code":"unauthenticated","message":"a valid access token is required","details":null}]"#),
        ]
        for (event, webSocket, socketIO) in cases {
            #expect(event.webSocketText == webSocket)
            #expect(event.socketIOPacket == socketIO)
            let frame = RealtimeFrame(event)
            #expect(frame.json == webSocket && frame.json == webSocket)
            #expect(frame.socketIOPacket == socketIO && frame.socketIOPacket == socketIO)
        }
    }

    @Test("request bodies decode into their types with the same refusals as before")
    func requests() throws {
        let body = JSONBody(fields: ["content": "hi", "messageType": "markdown", "clientMessageId": "c-1"])
        let send = try API.SendMessageRequest(body, typeKey: "messageType")
        #expect(send.content == "hi" && send.type == "markdown" && send.metadata == .emptyObject && send.clientMessageId == "c-1")
        #expect(throws: APIError.self) { try API.SendMessageRequest(JSONBody(fields: ["content": "hi", "type": "agent"])) }
        #expect(throws: APIError.self) { try API.RegisterRequest(JSONBody(fields: ["username": "a b c", "password": "long-enough"])) }
        let register = try API.RegisterRequest(JSONBody(fields: ["username": "alice", "password": "long-enough", "email": .null]))
        #expect(register.username == "alice" && register.email == nil)
    }
}
