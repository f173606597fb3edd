import HTTPTypes
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

/// Serves an upgraded `/ws` connection with channel handlers only: frames are read and written on the
/// channel's event loop, and a task exists only while events of the connection are being handled.
///
/// It does what the async WebSocket handler did: text messages (fragmented ones reassembled up to
/// `maxMessageBytes`, UTF-8 checked), ping/pong, a ping every `pingInterval` (a peer that did not answer
/// the previous one is dropped), the close handshake, and reading paused while events pile up.
final class LeanWebSocketHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let events: WebSocketController
    private let headers: HTTPFields
    private let logger: Logger
    private let maxMessageBytes: Int
    private let pingInterval: TimeAmount
    private var connection: LeanConnection?
    private var fragments: ByteBuffer?
    private var fragmentsAreText = true
    private var awaitingPong = false
    private var ping: RepeatedTask?

    init(events: WebSocketController, headers: HTTPFields, logger: Logger, maxMessageBytes: Int, pingInterval: TimeAmount = .seconds(30)) {
        self.events = events
        self.headers = headers
        self.logger = logger
        self.maxMessageBytes = maxMessageBytes
        self.pingInterval = pingInterval
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let connection = LeanConnection(channel: context.channel, events: events, logger: logger)
        self.connection = connection
        if let header = headers[.authorization] { connection.authenticate(header: header) }
        let channel = context.channel
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        ping = context.eventLoop.scheduleRepeatedTask(initialDelay: pingInterval, delay: pingInterval) { _ in
            let handler = loopBound.value
            if handler.awaitingPong {
                channel.close(promise: nil)
                return
            }
            handler.awaitingPong = true
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .ping, data: channel.allocator.buffer(capacity: 0)), promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    private func stop() {
        ping?.cancel()
        ping = nil
        connection?.disconnected()
        connection = nil
    }

    /// The server allows half-closure: a peer that stops sending is gone for a WebSocket.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("websocket error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        awaitingPong = false  // any traffic shows the peer is there
        switch frame.opcode {
        case .text, .binary:
            guard fragments == nil else { return fail(context, code: .protocolError, reason: "new message inside a fragmented one") }
            if frame.fin {
                deliver(context, frame.unmaskedData, isText: frame.opcode == .text)
            } else {
                fragments = frame.unmaskedData
                fragmentsAreText = frame.opcode == .text
            }
        case .continuation:
            guard var buffer = fragments else { return fail(context, code: .protocolError, reason: "continuation without a message") }
            var piece = frame.unmaskedData
            guard buffer.readableBytes + piece.readableBytes <= maxMessageBytes else {
                return fail(context, code: .messageTooLarge, reason: "message larger than \(maxMessageBytes) bytes")
            }
            buffer.writeBuffer(&piece)
            if frame.fin {
                fragments = nil
                deliver(context, buffer, isText: fragmentsAreText)
            } else {
                fragments = buffer
            }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            // The peer closes (or answers our close): answer with its code, then end the connection.
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode() ?? .normalClosure
            var reply = context.channel.allocator.buffer(capacity: 2)
            reply.write(webSocketErrorCode: code)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).whenComplete { _ in
                channel.close(promise: nil)
            }
        default:
            fail(context, code: .protocolError, reason: "unknown opcode")
        }
    }

    private func deliver(_ context: ChannelHandlerContext, _ buffer: ByteBuffer, isText: Bool) {
        guard buffer.readableBytes <= maxMessageBytes else {
            return fail(context, code: .messageTooLarge, reason: "message larger than \(maxMessageBytes) bytes")
        }
        guard isText else {
            connection?.binary()
            return
        }
        guard let text = String(validating: buffer.readableBytesView, as: UTF8.self) else {
            return fail(context, code: .dataInconsistentWithMessage, reason: "text is not valid UTF-8")
        }
        connection?.receive(text)
    }

    private func fail(_ context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        data.writeString(reason)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// The part of a lean connection that tasks touch: the realtime client (whose frames are written straight
/// to the channel) and the queue of received events, handled in order by a task that ends when it is empty.
final class LeanConnection: Sendable {
    enum Work: Sendable {
        case authenticate(String)
        case event(String)
    }

    private struct State {
        var pending: [Work] = []
        var draining = false
        var paused = false
        var gone = false
    }

    let client: RealtimeClient
    private let channel: any Channel
    private let writer: FrameWriter
    private let events: WebSocketController
    private let logger: Logger
    private let state = Mutex(State())
    /// Events waiting beyond which the socket is not read until they are handled.
    static let pauseAt = 16
    static let resumeAt = 4

    init(channel: any Channel, events: WebSocketController, logger: Logger) {
        self.channel = channel
        self.events = events
        self.logger = logger
        let writer = FrameWriter(channel: channel)
        self.writer = writer
        self.client = RealtimeClient(
            maxQueued: events.maxQueued, abort: { channel.close(mode: .all, promise: nil) }, sink: { item in writer.write(item) }
        )
        writer.client.withLock { $0 = client }
        events.hub.track(client)
    }

    /// Authenticates with the upgrade request's header before any event is handled.
    func authenticate(header: String) {
        enqueue(.authenticate(header))
    }

    func binary() {
        events.refuseBinary(client)
    }

    func receive(_ text: String) {
        enqueue(.event(text))
    }

    private func enqueue(_ work: Work) {
        let (start, pause) = state.withLock { s -> (Bool, Bool) in
            guard !s.gone else { return (false, false) }
            s.pending.append(work)
            let pause = !s.paused && s.pending.count >= Self.pauseAt
            if pause { s.paused = true }
            if s.draining { return (false, pause) }
            s.draining = true
            return (true, pause)
        }
        if pause { channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in } }
        if start { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let (next, resume) = state.withLock { s -> (Work?, Bool) in
                guard !s.gone, !s.pending.isEmpty else {
                    s.draining = false
                    return (nil, false)
                }
                let work = s.pending.removeFirst()
                let resume = s.paused && s.pending.count <= Self.resumeAt
                if resume { s.paused = false }
                return (work, resume)
            }
            if resume { channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
            switch next {
            case nil: return
            case .authenticate(let header)?: await events.authenticate(client, header: header, logger: logger)
            case .event(let text)?: await events.receive(text: text, client: client, logger: logger)
            }
        }
    }

    func disconnected() {
        let first = state.withLock { s -> Bool in
            defer { s.gone = true }
            s.pending.removeAll()
            return !s.gone
        }
        guard first else { return }
        writer.client.withLock { $0 = nil }  // breaks the client ↔ writer cycle
        events.disconnected(client)
    }
}

/// Writes a realtime client's frames to its channel, counting them off the client's queue once written.
final class FrameWriter: Sendable {
    let channel: any Channel
    let client = Mutex<RealtimeClient?>(nil)

    init(channel: any Channel) {
        self.channel = channel
    }

    func write(_ item: OutboundItem) {
        let channel = self.channel
        switch item {
        case .text(let frame):
            var buffer = channel.allocator.buffer(capacity: frame.json.utf8.count)
            buffer.writeString(frame.json)
            let client = self.client.withLock { $0 }
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, data: buffer)).whenComplete { _ in client?.didSend() }
        case .close(let code, let reason):
            var data = channel.allocator.buffer(capacity: 2 + reason.utf8.count)
            data.write(webSocketErrorCode: WebSocketErrorCode(codeNumber: code))
            data.writeString(reason)
            // Close after the frame is out; a peer that does not answer the close is dropped after 2 s.
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)).whenComplete { _ in
                channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
            }
        }
    }
}
