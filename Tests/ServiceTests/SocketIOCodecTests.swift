import Testing
@testable import Service
@testable import Storage

@Suite("Engine.IO and Socket.IO codecs")
struct SocketIOCodecTests {
    @Test("Engine.IO packets and polling payloads round-trip")
    func enginePackets() throws {
        let payload = "4hello\u{1E}2probe\u{1E}bAQID\u{1E}6"
        let packets = try EnginePacket.decodePayload(payload)
        #expect(packets == [.message("hello"), .ping("probe"), .binaryMessage([1, 2, 3]), .noop])
        #expect(EnginePacket.encodePayload(packets) == payload)
        #expect(try EnginePacket.decode("0{\"sid\":\"x\"}") == .open("{\"sid\":\"x\"}"))
        #expect(try EnginePacket.decode("5") == .upgrade)
    }

    @Test("malformed Engine.IO packets are refused", arguments: ["", "9", "1x", "5x", "b!!", "x"])
    func badEnginePackets(_ text: String) {
        #expect(throws: EnginePacket.DecodeError.self) { try EnginePacket.decodePayload(text) }
    }

    @Test("Socket.IO packets decode with namespace, ack id and payload")
    func socketPackets() throws {
        let connect = try SocketIOPacket.decode(#"0{"token":"abc"}"#)
        #expect(connect.kind == .connect && connect.namespace == "/" && connect.data == .object(["token": "abc"]))
        let admin = try SocketIOPacket.decode(#"0/admin,{"token":"abc"}"#)
        #expect(admin.namespace == "/admin")
        let event = try SocketIOPacket.decode(#"212["message",{"content":"hi"}]"#)
        #expect(event.kind == .event && event.ackId == 12 && event.data == .array(["message", .object(["content": "hi"])]))
        let ack = try SocketIOPacket.decode(#"3/chat,7[{"ok":true}]"#)
        #expect(ack.kind == .ack && ack.namespace == "/chat" && ack.ackId == 7)
        let binary = try SocketIOPacket.decode(#"51-["upload",{"_placeholder":true,"num":0}]"#)
        #expect(binary.kind == .binaryEvent && binary.attachments == 1)
        #expect(try SocketIOPacket.decode("1").kind == .disconnect)
        for text in [#"0{"a":1}"#, #"2["e",1]"#, #"3/x,5[]"#, #"44{"message":"no"}"#, #"51-["e",{"_placeholder":true,"num":0}]"#] {
            #expect(try SocketIOPacket.decode(text).encoded == text)
        }
        #expect(SocketIOPacket.event("message", .object(["a": .int(1)])).encoded == #"2["message",{"a":1}]"#)
    }

    @Test("malformed Socket.IO packets are refused", arguments: [
        "", "7", "x", "0[1]", "1{}", "2{}", "2[]", "2[1]", "3[]", "3x", "4[]", "5[\"e\"]", "5x-[\"e\"]", "2[\"e\"", "299999999999999999[\"e\"]",
    ])
    func badSocketPackets(_ text: String) {
        #expect(throws: SocketIOPacket.DecodeError.self) { try SocketIOPacket.decode(text) }
    }
}
