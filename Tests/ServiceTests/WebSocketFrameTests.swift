import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
@testable import Service

@Suite("WebSocket frames, checked before they are joined")
struct WebSocketFrameTests {
    /// Stands after the checker: counts the frames it lets through and the violations it reports.
    final class Outcome: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        var frames = 0
        var codes: [UInt16] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) { frames += 1 }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if let violation = error as? WebSocketFrameChecker.Violation { codes.append(UInt16(webSocketErrorCode: violation.code)) }
        }
    }

    func frame(_ opcode: WebSocketOpcode, _ text: String, fin: Bool) -> WebSocketFrame {
        let key: WebSocketMaskingKey = [7, 1, 9, 3]
        var data = ByteBufferAllocator().buffer(string: text)
        data.webSocketMask(key)
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    @Test("a message sent in fragments must end within a minute of its first fragment (1008); pings between do not extend it")
    func fragmentedMessageTimeLimit() throws {
        let loop = EmbeddedEventLoop()
        let outcome = Outcome()
        let channel = EmbeddedChannel(handlers: [WebSocketFrameChecker(messageTimeout: .seconds(60)), outcome], loop: loop)
        defer { _ = try? channel.finish() }

        try channel.writeInbound(frame(.text, #"{"type":"#, fin: false))
        loop.advanceTime(by: .seconds(50))
        try channel.writeInbound(frame(.continuation, #""ping"}"#, fin: true))
        loop.advanceTime(by: .seconds(120))
        #expect(outcome.codes == [], "a message that ended in time")

        try channel.writeInbound(frame(.binary, "ab", fin: false))
        loop.advanceTime(by: .seconds(30))
        try channel.writeInbound(frame(.ping, "", fin: true))
        try channel.writeInbound(frame(.continuation, "cd", fin: false))
        loop.advanceTime(by: .seconds(29))
        #expect(outcome.codes == [])
        loop.advanceTime(by: .seconds(1))
        #expect(outcome.codes == [1008])
        #expect(outcome.frames == 5, "every frame went on to be joined")
    }
}

@Suite("WebSocket connections")
struct WebSocketConnectionTests {
    /// What an endpoint may serve from before the connection exists and keep the socket of: as a Socket.IO
    /// session that upgrades from long-polling does.
    final class Served {
        var socket: WebSocketSocket?
    }

    final class Application: WebSocketApplication {
        func received(text: String) {}
        func received(binary: ByteBuffer) {}
        func closed() {}
    }

    @Test("a connection that ended keeps nothing alive that its endpoint's factory held (a Socket.IO session it upgraded)")
    func endedConnectionReleasesWhatItServed() throws {
        weak var released: Served?
        try {
            let served = Served()
            released = served
            let endpoint = WebSocketEndpoint(maxMessageBytes: 1024, pingInterval: nil) { socket in
                served.socket = socket
                return Application()
            }
            let channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandler(
                WebSocketConnectionHandler(endpoint: endpoint, closeTimeout: .seconds(1), logger: Logger(label: "test"))
            )
            #expect(served.socket != nil, "the factory ran and the served object keeps the socket")
            _ = try channel.finish(acceptAlreadyClosed: true)
        }()
        #expect(released == nil, "the served object, its socket and the handler were freed once the connection ended")
    }
}
