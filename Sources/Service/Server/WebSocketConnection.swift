import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket
import Storage
import Synchronization

/// Which requests may become WebSockets, and what serves them.
struct WebSocketRoutes: Sendable {
    /// The decision for an upgrade request from `clientIP`; nil when the path has no WebSocket endpoint.
    /// Called on the connection's event loop: it must not block.
    let decide: @Sendable (_ request: HTTPRequest, _ clientIP: String) -> WebSocketUpgradeDecision?
}

enum WebSocketUpgradeDecision {
    case accept(WebSocketEndpoint)
    /// Answered with this error instead (the connection then closes).
    case refuse(APIError)
}

/// What serves an upgraded connection.
struct WebSocketEndpoint {
    /// Largest message (frames of one message together); larger is closed with 1009.
    var maxMessageBytes: Int
    /// Most fragments one message may come in: a message of the largest size in fragments of 64 bytes.
    var maxFragments: Int { max(128, maxMessageBytes / 64) }
    /// Send a ping this often; a peer that answered nothing since the last one is gone. Nil: no pings.
    var pingInterval: TimeAmount?
    /// Makes the application for the connection, on its event loop.
    var makeApplication: (WebSocketSocket) -> any WebSocketApplication
}

/// What runs on a WebSocket connection. Called on the connection's event loop.
protocol WebSocketApplication: AnyObject {
    /// A complete text message, valid UTF-8.
    func received(text: String)
    /// A complete binary message.
    func received(binary: ByteBuffer)
    /// The connection is gone (called once).
    func closed()
}

/// The handshake checks of RFC 6455 §4.2.1 and the accept key of §4.2.2.
enum WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// Why an upgrade request cannot be accepted, or nil.
    static func problem(_ head: HTTPRequestHead) -> APIError? {
        guard head.method == .GET, head.version == .http1_1 else {
            return APIError(.badRequest, code: "bad_request", message: "a WebSocket upgrade is a GET over HTTP/1.1")
        }
        guard head.headers[canonicalForm: "sec-websocket-version"].map(String.init) == ["13"] else {
            return APIError(
                .upgradeRequired, code: "unsupported_websocket_version", message: "only WebSocket version 13 is supported",
                headers: [HTTPField.Name("Sec-WebSocket-Version")!: "13", .upgrade: "websocket"]
            )
        }
        let keys = head.headers["sec-websocket-key"].map { $0.trimmingCharacters(in: " \t") }  // OWS is not part of a value
        guard keys.count == 1, let key = Base64.decode(keys[0]), key.count == 16, keys[0].hasSuffix("==") else {
            return APIError(.badRequest, code: "bad_request", message: "Sec-WebSocket-Key must be 16 bytes in base64")
        }
        return nil
    }

    static func accept(key: String) -> String {
        Base64.encode(Crypto.sha1(Array((key.trimmingCharacters(in: " \t") + guid).utf8)))
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        String(Substring(self).trimmingCharacters(in: set))
    }
}

/// Sends on a WebSocket connection from any thread. Frames go out in the order they were sent, whichever
/// thread sent them (a queue drained on the connection's event loop, one flush per drain); after
/// `close` nothing more goes out.
final class WebSocketSocket: Sendable {
    enum Outgoing: Sendable {
        case text(ByteBuffer, written: (@Sendable () -> Void)?)
        case close(code: UInt16, reason: String)
    }

    let channel: any Channel
    private let handler: NIOLoopBound<WebSocketConnectionHandler>
    /// Drained on the event loop (`WebSocketConnectionHandler.drain`).
    fileprivate let pending = DrainQueue<Outgoing>()

    fileprivate init(channel: any Channel, handler: NIOLoopBound<WebSocketConnectionHandler>) {
        self.channel = channel
        self.handler = handler
    }

    /// Sends a text message; `written` runs once it has been handed to the socket (or dropped).
    func send(_ text: String, written: (@Sendable () -> Void)? = nil) {
        var buffer = channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        enqueue(.text(buffer, written: written))
    }

    /// Sends the close frame after what was sent before, then ends the connection once the peer answers
    /// (or after the close timeout).
    func close(code: UInt16, reason: String) {
        enqueue(.close(code: code, reason: reason))
    }

    private func enqueue(_ item: Outgoing) {
        guard pending.push(item) == .drain else { return }
        let handler = self.handler
        channel.eventLoop.execute { handler.value.drain(self) }
    }

    /// Pauses or resumes reading from the peer.
    func setReading(_ on: Bool) {
        channel.setOption(ChannelOptions.autoRead, value: on).whenFailure { _ in }
    }
}

/// Reads frames off the connection (RFC 6455 §5.2). Each frame's header is checked as soon as it is in, before
/// its payload is waited for: larger than `maxFrameSize` (the connection is failed with 1009), a control frame
/// fragmented or over 125 bytes, a 64-bit length with its top bit set, or a length not written in the fewest
/// bytes that hold it (1002). NIO's `WebSocketFrameDecoder` accepts the last two.
final class WebSocketFrameReader: ByteToMessageDecoder {
    typealias InboundOut = WebSocketFrame

    let maxFrameSize: Int

    init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self), let second = buffer.getInteger(at: start + 1, as: UInt8.self) else {
            return .needMoreData
        }
        var header = 2
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let word = buffer.getInteger(at: start + 2, as: UInt16.self) else { return .needMoreData }
            guard word > 125 else { throw WebSocketFrameChecker.Violation(reason: "a payload length not in its shortest form") }
            (length, header) = (Int(word), 4)
        } else if length == 127 {
            guard let long = buffer.getInteger(at: start + 2, as: UInt64.self) else { return .needMoreData }
            guard long >> 63 == 0 else { throw WebSocketFrameChecker.Violation(reason: "a 64-bit payload length with its top bit set") }
            guard long > 0xFFFF else { throw WebSocketFrameChecker.Violation(reason: "a payload length not in its shortest form") }
            (length, header) = (Int(long), 10)  // the top bit is clear: it fits
        }
        // A control frame's own rules first: one announcing a huge length is that before it is too large.
        if first & 0x08 != 0 {
            guard first & 0x80 != 0 else { throw NIOWebSocketError.fragmentedControlFrame }
            guard length <= 125 else { throw NIOWebSocketError.multiByteControlFrameLength }
        }
        guard length <= maxFrameSize else { throw NIOWebSocketError.invalidFrameLength }
        var maskKey: WebSocketMaskingKey?
        if second & 0x80 != 0 {
            guard let key = buffer.viewBytes(at: start + header, length: 4) else { return .needMoreData }
            maskKey = WebSocketMaskingKey(key)
            header += 4
        }
        guard buffer.readableBytes >= header + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: header)
        let frame = WebSocketFrame(
            fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, rsv2: first & 0x20 != 0, rsv3: first & 0x10 != 0,
            opcode: WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F)!, maskKey: maskKey, data: buffer.readSlice(length: length)!
        )
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }
}

/// Checks each frame as it arrives, before `NIOWebSocketFrameAggregator` joins fragments (and unmasks them):
/// a client's frame is masked and sets no reserved bit (RFC 6455 §5.1, §5.2, no extension is negotiated),
/// and the fragments of a text message are UTF-8 so far (§8.1, failing fast: a message sent in pieces is
/// refused at its first invalid byte, not when it ends). A frame that is not goes no further; the connection
/// handler fails the connection with 1002, or 1007 for the text. A message sent in fragments must end within
/// `messageTimeout` of its first one (1008 otherwise): a client cannot hold part of a message in the
/// server's memory for hours by sending a small fragment now and then.
final class WebSocketFrameChecker: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame

    struct Violation: Error {
        var code: WebSocketErrorCode = .protocolError
        let reason: String
    }

    static let defaultMessageTimeout = TimeAmount.seconds(60)
    let messageTimeout: TimeAmount
    /// The text message being received in fragments, if any (a whole one is checked when it is delivered).
    private var text: UTF8Stream?
    /// Fires when the message being received in fragments took too long.
    private var messageTimer: Scheduled<Void>?

    init(messageTimeout: TimeAmount = defaultMessageTimeout) {
        self.messageTimeout = messageTimeout
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        messageTimer?.cancel()
        messageTimer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if frame.maskKey == nil {
            return context.fireErrorCaught(Violation(reason: "client frames must be masked"))
        } else if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            return context.fireErrorCaught(Violation(reason: "reserved bits set without an extension"))
        }
        let starts = frame.opcode == .text || frame.opcode == .binary
        if starts { text = frame.opcode == .text && !frame.fin ? UTF8Stream() : nil }
        if starts || frame.opcode == .continuation {
            if frame.fin {
                messageTimer?.cancel()
                messageTimer = nil
            } else if starts {
                startMessageTimer(context: context)
            }
        }
        if var stream = text, frame.opcode == .text || frame.opcode == .continuation {
            guard stream.feed(frame.unmaskedData.readableBytesView), !frame.fin || stream.isComplete else {
                text = nil
                return context.fireErrorCaught(Violation(code: .dataInconsistentWithMessage, reason: "text is not valid UTF-8"))
            }
            text = frame.fin ? nil : stream
        }
        context.fireChannelRead(data)
    }

    private func startMessageTimer(context: ChannelHandlerContext) {
        messageTimer?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let seconds = messageTimeout.nanoseconds / 1_000_000_000
        messageTimer = context.eventLoop.scheduleTask(in: messageTimeout) {
            let (checker, context) = bound.value
            checker.messageTimer = nil
            context.fireErrorCaught(Violation(code: .policyViolation, reason: "a message sent in fragments took longer than \(seconds) s"))
        }
    }
}

/// UTF-8 checked as it arrives in pieces (Unicode's table of well-formed byte sequences): a piece may end
/// inside a character, the next one goes on from there.
struct UTF8Stream {
    /// Continuation bytes the current character still needs, and the range the next one must fall in.
    private var needed = 0
    private var next: ClosedRange<UInt8> = 0x80...0xBF

    /// Whether what was fed ends between characters.
    var isComplete: Bool { needed == 0 }

    /// False when `bytes` cannot continue valid UTF-8. Byte by byte only where a character crosses from one
    /// piece to the next; the whole characters between are checked by the standard library at once.
    mutating func feed(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.withContiguousStorageIfAvailable { feed(contiguous: $0) } ?? Array(bytes).withUnsafeBufferPointer { feed(contiguous: $0) }
    }

    private mutating func feed(contiguous bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var start = 0
        while needed > 0, start < bytes.count {
            guard step(bytes[start]) else { return false }
            start += 1
        }
        // Where a character this piece does not finish begins: the last lead byte, if the bytes after it
        // are fewer than it announces (a character is at most 4 bytes).
        var cut = bytes.count
        var back = bytes.count
        while back > start, bytes.count - back < 4 {
            back -= 1
            let byte = bytes[back]
            guard byte & 0xC0 == 0x80 else {
                let length = byte < 0xC0 ? 1 : byte < 0xE0 ? 2 : byte < 0xF0 ? 3 : 4
                if length > bytes.count - back { cut = back }
                break
            }
        }
        guard String(validating: UnsafeBufferPointer(rebasing: bytes[start..<cut]), as: UTF8.self) != nil else { return false }
        for byte in bytes[cut...] where !step(byte) { return false }
        return true
    }

    /// One byte through the table; false when it cannot come here.
    private mutating func step(_ byte: UInt8) -> Bool {
        if needed > 0 {
            guard next.contains(byte) else { return false }
            needed -= 1
            next = 0x80...0xBF
            return true
        }
        switch byte {
        case 0x00...0x7F: break
        case 0xC2...0xDF: needed = 1
        case 0xE0: (needed, next) = (2, 0xA0...0xBF)
        case 0xE1...0xEC, 0xEE...0xEF: needed = 2
        case 0xED: (needed, next) = (2, 0x80...0x9F)  // no UTF-16 surrogates
        case 0xF0: (needed, next) = (3, 0x90...0xBF)
        case 0xF1...0xF3: needed = 3
        case 0xF4: (needed, next) = (3, 0x80...0x8F)  // nothing past U+10FFFF
        default: return false
        }
        return true
    }
}

/// RFC 6455 on an upgraded connection: whole messages (checked by `WebSocketFrameChecker`, joined by NIO's
/// aggregator up to the limit) with no reserved opcodes, control frames short and whole, valid close codes,
/// UTF-8 text; pings answered; the close handshake. A violation fails the connection with its code: 1002 (protocol), 1007 (invalid
/// UTF-8), 1009 (too large). Every close the server makes sends its close frame after what was queued
/// before it, then half-closes, so the frame reaches the peer rather than being reset away.
final class WebSocketConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// The endpoint's limits and ping interval. Its `makeApplication` is used once and then dropped: the
    /// factory may hold what the application serves (a Socket.IO session being upgraded), which holds the
    /// socket and so this handler; kept, the three would keep each other alive after the connection ends.
    private let maxMessageBytes: Int
    private let maxFragments: Int
    private let pingInterval: TimeAmount?
    private var makeApplication: ((WebSocketSocket) -> any WebSocketApplication)?
    private let closeTimeout: TimeAmount
    private let logger: Logger
    private var application: (any WebSocketApplication)?
    private var context: ChannelHandlerContext?
    private var closeSent = false
    private var awaitingPong = false
    private var pingTask: RepeatedTask?
    private var closeTimer: Scheduled<Void>?
    private var ended = false

    init(endpoint: WebSocketEndpoint, closeTimeout: TimeAmount, logger: Logger) {
        maxMessageBytes = endpoint.maxMessageBytes
        maxFragments = endpoint.maxFragments
        pingInterval = endpoint.pingInterval
        makeApplication = endpoint.makeApplication
        self.closeTimeout = closeTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let socket = WebSocketSocket(channel: context.channel, handler: loopBound)
        application = makeApplication?(socket)
        makeApplication = nil
        if let interval = pingInterval {
            pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                loopBound.value.pingTick()
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        context.fireChannelInactive()
    }

    private func end() {
        guard !ended else { return }
        ended = true
        pingTask?.cancel()
        pingTask = nil
        closeTimer?.cancel()
        closeTimer = nil
        let application = self.application
        self.application = nil
        application?.closed()
    }

    // MARK: Sending

    /// Writes what the socket queued, then flushes once.
    fileprivate func drain(_ socket: WebSocketSocket) {
        var wrote = false
        socket.pending.drain { batch in for item in batch { write(item, wrote: &wrote) } }
        if wrote { context?.flush() }
    }

    private func write(_ item: WebSocketSocket.Outgoing, wrote: inout Bool) {
        switch item {
        case .text(let buffer, let written):
            guard let context, !closeSent else {
                written?()
                return
            }
            let frame = WebSocketFrame(fin: true, opcode: .text, data: buffer)
            if let written {
                context.write(wrapOutboundOut(frame)).whenComplete { _ in written() }
            } else {
                context.write(wrapOutboundOut(frame), promise: nil)
            }
            wrote = true
        case .close(let code, let reason):
            initiateClose(code: code, reason: reason)
            wrote = false
        }
    }

    fileprivate func initiateClose(code: UInt16, reason: String) {
        guard let context, !closeSent, !ended else { return }
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.writeInteger(code)
        data.writeString(String(reason.utf8.prefix(123)) ?? "")
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data))).whenComplete { result in
            // Half-close: the peer reads the close frame, then an orderly end of the stream.
            if case .success = result { channel.close(mode: .output, promise: nil) } else { channel.close(promise: nil) }
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        closeTimer = context.eventLoop.scheduleTask(in: closeTimeout) {
            loopBound.value.closeTimer = nil
            loopBound.value.context?.close(promise: nil)
        }
    }

    private func fail(_ code: WebSocketErrorCode, _ reason: String) {
        logger.debug("WebSocket connection failed", metadata: ["code": "\(UInt16(webSocketErrorCode: code))", "reason": .string(reason)])
        initiateClose(code: UInt16(webSocketErrorCode: code), reason: reason)
    }

    private func pingTick() {
        guard let context, !closeSent else { return }
        if awaitingPong {
            // Nothing came since the last ping: the peer is gone.
            context.close(promise: nil)
            return
        }
        awaitingPong = true
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: context.channel.allocator.buffer(capacity: 0))), promise: nil)
    }

    // MARK: Receiving

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        awaitingPong = false  // any traffic shows the peer is there
        switch frame.opcode {
        case .text, .binary:
            // Whole messages only: the aggregator before this handler joined the fragments.
            guard !closeSent else { return }
            deliver(frame.unmaskedData, isText: frame.opcode == .text)
        case .ping:
            guard !closeSent else { return }
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            receivedClose(frame.unmaskedData, context: context)
        default:
            fail(.protocolError, "unknown opcode")
        }
    }

    private func receivedClose(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        if closeSent {
            // The peer answered our close: the handshake is complete.
            context.close(promise: nil)
            return
        }
        var data = payload
        var code: UInt16 = 1000
        switch data.readableBytes {
        case 0:
            break
        case 1:
            return fail(.protocolError, "a close frame's payload is a code of two bytes")
        default:
            code = data.readInteger(as: UInt16.self)!
            guard Self.isValidCloseCode(code) else { return fail(.protocolError, "close code \(code) may not be sent") }
            guard String(validating: data.readableBytesView, as: UTF8.self) != nil else {
                return fail(.dataInconsistentWithMessage, "the close reason is not valid UTF-8")
            }
        }
        // Echo the code, then end the connection: the server closes the TCP connection first (RFC 6455 §7.1.1).
        closeSent = true
        var reply = context.channel.allocator.buffer(capacity: 2)
        reply.writeInteger(code)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// Codes a peer may send (RFC 6455 §7.4 and the IANA registry): 1000–1003, 1007–1014, 3000–4999.
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }

    private func deliver(_ buffer: ByteBuffer, isText: Bool) {
        guard buffer.readableBytes <= maxMessageBytes else {
            return fail(.messageTooLarge, "message larger than \(maxMessageBytes) bytes")
        }
        guard isText else {
            application?.received(binary: buffer)
            return
        }
        guard let text = String(validating: buffer.readableBytesView, as: UTF8.self) else {
            return fail(.dataInconsistentWithMessage, "text is not valid UTF-8")
        }
        application?.received(text: text)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            // The peer stopped sending: for a WebSocket, that is the end.
            context.close(promise: nil)
        case is ChannelShouldQuiesceEvent:
            initiateClose(code: 1001, reason: "server shutting down")
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case let violation as WebSocketFrameChecker.Violation:
            fail(violation.code, violation.reason)
        case NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge:
            fail(.messageTooLarge, "message larger than \(maxMessageBytes) bytes")
        case NIOWebSocketFrameAggregator.Error.tooManyFragments:
            fail(.messageTooLarge, "message in more than \(maxFragments) fragments")
        case NIOWebSocketFrameAggregator.Error.receivedNewFrameWithoutFinishingPrevious:
            fail(.protocolError, "a new message began inside a fragmented one")
        case NIOWebSocketFrameAggregator.Error.didReceiveFragmentBeforeReceivingTextOrBinaryFrame:
            fail(.protocolError, "a continuation frame without a message")
        case NIOWebSocketError.invalidFrameLength:
            fail(.messageTooLarge, "frame larger than \(maxMessageBytes) bytes")
        case NIOWebSocketError.fragmentedControlFrame:
            fail(.protocolError, "control frames must not be fragmented")
        case NIOWebSocketError.multiByteControlFrameLength:
            fail(.protocolError, "control frames carry at most 125 bytes")
        case is IOError, is ChannelError:
            // The connection itself failed (reset by the peer): nothing can be sent on it.
            logger.debug("WebSocket connection lost", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        default:
            logger.debug("WebSocket error", metadata: ["error": "\(error)"])
            if closeSent { context.close(promise: nil) } else { fail(.protocolError, "protocol error") }
        }
    }
}
