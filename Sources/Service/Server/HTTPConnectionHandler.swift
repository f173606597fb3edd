import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1
import NIOPosix
import NIOWebSocket

/// Answers a request: the router (with its middleware) behind the connection handler.
typealias RequestResponder = @Sendable (Request, any Channel) async -> Response

/// Serves one HTTP/1.1 connection with channel handlers: requests are read here, answered by the router in
/// a task that exists only while a request is being answered, and a WebSocket upgrade is honoured on any
/// request of a keep-alive connection, not only the first.
///
/// What happens below the router happens here, with the same JSON errors and headers as the router's:
/// a malformed request is answered `400` with `Connection: close`; a body over the limit `413`; a request
/// carrying `Connection: close` (or HTTP/1.0 without keep-alive) is answered with `Connection: close` and
/// the connection then ends (RFC 9112 §9.6). Requests are answered one at a time, in order: what a client
/// pipelines is held until the response before it is written.
final class HTTPConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// A head arrived; its body is being collected.
        case reading(PendingRequest)
        /// A WebSocket upgrade was accepted; waiting for the end of its request.
        case upgrading(WebSocketEndpoint, key: String)
        /// The router is answering.
        case responding
        /// An error response was written; the connection ends once the client has stopped sending.
        case closing
        case upgraded
    }

    private struct PendingRequest {
        var request: HTTPRequest
        var body: ByteBuffer?
    }

    private let responder: RequestResponder
    private let webSockets: WebSocketRoutes
    private let settings: ServerSettings
    private let guardHandler: ConnectionGuard
    private let encoder: HTTPResponseEncoder
    private let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    private let logger: Logger

    private var state = State.idle
    /// Parts of pipelined requests that arrived while a response was being written.
    private var queued: [HTTPServerRequestPart] = []
    private var readHeld = false
    private var keepAlive = true
    private var quiescing = false
    private var isHeadRequest = false
    private var version = HTTPVersion.http1_1
    private var responseTask: Task<Void, Never>?
    /// The rest of a request body still arriving while the router answers it (a body that did not come
    /// with its head); nil otherwise.
    private var bodyStream: AsyncThrowingStream<ByteBuffer, any Error>.Continuation?
    private var streamedBytes = 0
    /// The most body bytes read for the current request (`ServerSettings.bodyLimit`).
    private var bodyLimit = 0
    /// The body overflowed the limit while streaming: its remaining parts are dropped.
    private var discardingBody = false
    private var lingerTimer: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    /// Runs the connection's request tasks on its event loop: the router's work starts and ends there,
    /// without a hop to another thread and back per request.
    private var executor: EventLoopTaskExecutor?

    init(
        responder: @escaping RequestResponder, webSockets: WebSocketRoutes, settings: ServerSettings, guardHandler: ConnectionGuard,
        encoder: HTTPResponseEncoder, decoder: ByteToMessageHandler<HTTPRequestDecoder>, logger: Logger
    ) {
        self.responder = responder
        self.webSockets = webSockets
        self.settings = settings
        self.guardHandler = guardHandler
        self.encoder = encoder
        self.decoder = decoder
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        executor = EventLoopTaskExecutor(eventLoop: context.eventLoop)
        guardHandler.bodyStalled = { [weak self] in self?.bodyStalled() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        lingerTimer?.cancel()
        lingerTimer = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        bodyStream?.finish(throwing: ChannelError.ioOnClosedChannel)
        bodyStream = nil
        // A long-poll waiting for its client ends now instead of at its deadline.
        responseTask?.cancel()
        responseTask = nil
        lingerTimer?.cancel()
        lingerTimer = nil
        context.fireChannelInactive()
    }

    // MARK: Reading

    func read(context: ChannelHandlerContext) {
        // While a response is written, a pipelined request waits in `queued`; nothing more is read meanwhile.
        if case .responding = state, !queued.isEmpty {
            readHeld = true
            return
        }
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch state {
        case .responding where bodyStream != nil || discardingBody:
            streamBody(part, context: context)
        case .responding:
            queued.append(part)
        case .closing, .upgraded:
            break
        case .idle, .reading, .upgrading:
            process(part, context: context)
        }
    }

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch (state, part) {
        case (.idle, .head(let head)):
            begin(head, context: context)
        case (.reading(var pending), .body(var buffer)):
            let length = (pending.body?.readableBytes ?? 0) + buffer.readableBytes
            guard length <= bodyLimit else {
                return refuse(ConnectionErrors.bodyTooLarge, context: context)
            }
            if pending.body == nil {
                pending.body = buffer
            } else {
                pending.body!.writeBuffer(&buffer)
            }
            state = .reading(pending)
        case (.reading(let pending), .end):
            guardHandler.bodyEnded()
            dispatch(pending.request, body: RequestBody(buffer: pending.body ?? ByteBuffer()), context: context)
        case (.upgrading(let endpoint, let key), .end):
            upgrade(endpoint, key: key, context: context)
        case (.upgrading, .body):
            refuse(APIError(.badRequest, code: "bad_request", message: "a WebSocket upgrade request has no body"), context: context)
        default:
            refuse(ConnectionErrors.malformed, context: context)
        }
    }

    /// A body part of the request being answered.
    private func streamBody(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .body(let buffer):
            guard let stream = bodyStream else { return }
            streamedBytes += buffer.readableBytes
            if streamedBytes > bodyLimit {
                stream.finish(throwing: HTTPError(.contentTooLarge))
                bodyStream = nil
                discardingBody = true
                keepAlive = false
            } else {
                stream.yield(buffer)
            }
        case .end:
            guardHandler.bodyEnded()
            bodyStream?.finish()
            bodyStream = nil
            discardingBody = false
        case .head:
            refuse(ConnectionErrors.malformed, context: context)
        }
    }

    /// At the end of a read: a request whose body has not fully arrived is answered now, its body
    /// following as it comes (a handler may need to act before the body is complete).
    func channelReadComplete(context: ChannelHandlerContext) {
        if case .reading(let pending) = state {
            let (stream, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self, throwing: (any Error).self)
            if let first = pending.body { continuation.yield(first) }
            streamedBytes = pending.body?.readableBytes ?? 0
            bodyStream = continuation
            dispatch(pending.request, body: RequestBody(asyncSequence: stream), context: context)
        }
        context.fireChannelReadComplete()
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guardHandler.headReceived()
        version = head.version
        isHeadRequest = head.method == .HEAD
        keepAlive = head.isKeepAlive && !quiescing
        guard head.version.major == 1, let request = try? HTTPRequest(head, secure: false, splitCookie: false), request.path != nil else {
            return refuse(ConnectionErrors.malformed, context: context)
        }
        guard head.uri.utf8.count <= ConnectionErrors.maxTargetBytes else { return refuse(ConnectionErrors.uriTooLong, context: context) }
        guard ConnectionErrors.validHost(head.headers["host"], http10: head.version.minor == 0) else {
            return refuse(ConnectionErrors.badHost, context: context)
        }
        // RFC 9112 §6.1: a transfer coding other than chunked (gzip, …) is not understood: 501.
        let codings = head.headers[canonicalForm: "transfer-encoding"]
        if !codings.isEmpty, Self.tokens(codings) != ["chunked"] {
            return refuse(ConnectionErrors.transferCoding, context: context)
        }
        let connectionTokens = Self.tokens(head.headers[canonicalForm: "connection"])
        let upgradeTokens = Self.tokens(head.headers[canonicalForm: "upgrade"])
        if upgradeTokens.contains("websocket") {
            guard connectionTokens.contains("upgrade") else {
                return refuse(
                    APIError(.badRequest, code: "bad_request", message: "a WebSocket upgrade needs 'Connection: Upgrade' and 'Upgrade: websocket'"),
                    context: context
                )
            }
            return beginUpgrade(head, request: request, context: context)
        }
        if !upgradeTokens.isEmpty, connectionTokens.contains("upgrade") {
            // Another protocol (h2c, …): not offered. The parser stops after such a request, so the
            // connection ends after this response.
            keepAlive = false
        }
        if let expect = head.headers.first(name: "expect") {
            guard expect.lowercased() == "100-continue" else { return refuse(ConnectionErrors.expectationFailed, context: context) }
        }
        bodyLimit = settings.bodyLimit(method: request.method, path: (request.path ?? "").split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        if let lengthText = head.headers.first(name: "content-length"), let length = Int(lengthText), length > bodyLimit {
            return refuse(ConnectionErrors.bodyTooLarge, context: context)
        }
        // Never a 1xx to an HTTP/1.0 client: its expectation is ignored (RFC 9110 §10.1.1).
        if head.headers.first(name: "expect") != nil, version.minor >= 1 {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: .continue))), promise: nil)
        }
        state = .reading(PendingRequest(request: request, body: nil))
        guardHandler.bodyStarted()
    }

    /// No byte of the request's body for `HTTP_IDLE_TIMEOUT`: the handler reading it gets a 408 to answer,
    /// and the connection ends after that answer. (The request is dispatched at the end of the read that
    /// brought its head, so by the time a timer fires it is being answered.)
    private func bodyStalled() {
        guard case .responding = state else { return }
        keepAlive = false
        bodyStream?.finish(throwing: ConnectionErrors.bodyTimeout)
        bodyStream = nil
        discardingBody = true
    }

    /// Comma-separated header tokens, lowercased.
    static func tokens(_ values: [Substring]) -> Set<String> {
        var out = Set<String>()
        for value in values {
            for token in value.split(separator: ",") {
                let t = token.trimmingCharacters(in: " \t")
                if !t.isEmpty { out.insert(t.lowercased()) }
            }
        }
        return out
    }

    // MARK: Answering

    private func dispatch(_ head: HTTPRequest, body: RequestBody, context: ChannelHandlerContext) {
        state = .responding
        let request = Request(head: head, body: body)
        let responder = self.responder
        let channel = context.channel
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        responseTask = Task(executorPreference: executor) {
            let response = await responder(request, channel)
            let writer = ConnectionBodyWriter(handler: loopBound, eventLoop: eventLoop, head: response.head)
            do {
                try await response.body.write(writer)
            } catch {
                // The connection failed mid-response, or the body's producer did: the connection cannot be reused.
                eventLoop.execute { loopBound.value.abortResponse() }
            }
        }
    }

    /// Writes the response head (and what of the body came with it), deciding whether the connection stays.
    fileprivate func writeHead(_ response: HTTPResponse) {
        guard let context, case .responding = state else { return }
        var headers = HTTPHeaders(response.headerFields)
        if !headers.contains(name: "date") { headers.add(name: "date", value: HTTPDate.now()) }
        // Answered before its body has all arrived: the connection ends after the answer, and says so
        // (RFC 9112 §9.6).
        if quiescing || bodyStream != nil || discardingBody { keepAlive = false }
        if !keepAlive {
            headers.replaceOrAdd(name: "connection", value: "close")
        } else if version.minor == 0 {
            headers.replaceOrAdd(name: "connection", value: "keep-alive")
        }
        // RFC 9110 §6.2: the answer names the highest version the server speaks (1.1), except where an
        // HTTP/1.0 client gets a body without a length: that one the end of the connection delimits,
        // and a 1.1 head would make the encoder chunk it, which 1.0 does not know.
        var answerVersion = HTTPVersion.http1_1
        if version.minor == 0, response.headerFields[.contentLength] == nil {
            keepAlive = false
            answerVersion = version
        }
        let head = HTTPResponseHead(
            version: answerVersion, status: HTTPResponseStatus(statusCode: response.status.code, reasonPhrase: response.status.reasonPhrase),
            headers: headers
        )
        context.write(wrapOutboundOut(.head(head)), promise: nil)
    }

    fileprivate func writeBody(_ buffers: [ByteBuffer], flush: Bool) -> EventLoopFuture<Void> {
        guard let context, case .responding = state else { return eventLoopFailed() }
        if isHeadRequest { return context.eventLoop.makeSucceededVoidFuture() }
        var last: EventLoopFuture<Void>?
        for buffer in buffers where buffer.readableBytes > 0 {
            last = context.write(wrapOutboundOut(.body(.byteBuffer(buffer))))
        }
        guard flush || !context.channel.isWritable, let last else { return context.eventLoop.makeSucceededVoidFuture() }
        context.flush()
        return last
    }

    fileprivate func finishResponse(_ trailers: HTTPFields?) -> EventLoopFuture<Void> {
        guard let context, case .responding = state else { return eventLoopFailed() }
        let written = context.writeAndFlush(wrapOutboundOut(.end(trailers.map { HTTPHeaders($0) })))
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        written.whenComplete { result in
            switch result {
            case .success: loopBound.value.responseWritten()
            case .failure: loopBound.value.abortResponse()
            }
        }
        return written
    }

    private func eventLoopFailed() -> EventLoopFuture<Void> {
        let loop = context?.eventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
        return loop.makeFailedFuture(ChannelError.ioOnClosedChannel)
    }

    fileprivate func abortResponse() {
        responseTask = nil
        state = .closing
        context?.close(promise: nil)
    }

    private func responseWritten() {
        responseTask = nil
        guard let context, case .responding = state else { return }
        guard keepAlive, !quiescing, bodyStream == nil, !discardingBody else {
            bodyStream?.finish()
            bodyStream = nil
            return closeAfterResponse(context)
        }
        state = .idle
        guardHandler.awaitNextRequest()
        while !queued.isEmpty {
            let part = queued.removeFirst()
            process(part, context: context)
            if case .responding = state { return }
            if case .closing = state { return }
            if case .upgraded = state { return }
        }
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    // MARK: Closing

    /// Ends the connection after a response that said `Connection: close`.
    private func closeAfterResponse(_ context: ChannelHandlerContext) {
        state = .closing
        queued.removeAll()
        lingeringClose(context)
    }

    /// Answers an error the connection layer found with `Connection: close`, and ends the connection.
    private func refuse(_ error: APIError, context: ChannelHandlerContext) {
        if case .closing = state { return }
        state = .closing
        queued.removeAll()
        guardHandler.headReceived()
        let body = ConnectionErrors.body(error)
        let head = ConnectionErrors.head(error, hstsMaxAge: settings.hstsMaxAge, close: true, bodyLength: body.readableBytes)
        var headers = HTTPHeaders(head.headerFields)
        headers.add(name: "date", value: HTTPDate.now())
        let nioHead = HTTPResponseHead(
            version: .http1_1,
            status: HTTPResponseStatus(statusCode: head.status.code, reasonPhrase: head.status.reasonPhrase), headers: headers
        )
        context.write(wrapOutboundOut(.head(nioHead)), promise: nil)
        if !isHeadRequest { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        lingeringClose(context)
    }

    /// Closes the sending side at once and the connection once the client has stopped sending (or after
    /// two seconds): closing with unread input would reset the connection and could destroy the response
    /// before the client reads it.
    private func lingeringClose(_ context: ChannelHandlerContext) {
        context.close(mode: .output, promise: nil)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        lingerTimer = context.eventLoop.scheduleTask(in: .seconds(2)) {
            loopBound.value.lingerTimer = nil
            loopBound.value.context?.close(promise: nil)
        }
        if !context.channel.isActive { context.close(promise: nil) }
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            switch state {
            case .responding:
                keepAlive = false  // answer, then close
            case .idle, .reading, .upgrading, .closing, .upgraded:
                context.close(promise: nil)
            }
        case is ChannelShouldQuiesceEvent:
            quiescing = true
            switch state {
            case .idle: context.close(promise: nil)
            case .reading, .upgrading, .responding: keepAlive = false
            case .closing, .upgraded: break
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .idle, .reading, .upgrading:
            if case .headerOverflow? = error as? HTTPParserError {
                let longTarget = guardHandler.requestLineBytes > ConnectionErrors.maxTargetBytes
                refuse(longTarget ? ConnectionErrors.uriTooLong : ConnectionErrors.headersTooLarge, context: context)
            } else if case .invalidMethod? = error as? HTTPParserError, guardHandler.requestStartsWithToken {
                refuse(ConnectionErrors.unknownMethod, context: context)
            } else if error is HTTPParserError || error is ByteToMessageDecoderError {
                logger.debug("malformed request", metadata: ["error": "\(error)"])
                refuse(ConnectionErrors.malformed, context: context)
            } else {
                context.close(promise: nil)
            }
        case .responding:
            keepAlive = false
            if !(error is HTTPParserError) { context.close(promise: nil) }
        case .closing, .upgraded:
            break
        }
    }

    // MARK: WebSocket upgrades

    private func beginUpgrade(_ head: HTTPRequestHead, request: HTTPRequest, context: ChannelHandlerContext) {
        let clientIP = context.channel.remoteAddress?.ipAddress ?? "unknown"
        guard let decision = webSockets.decide(request, clientIP) else {
            return refuse(APIError(.badRequest, code: "bad_request", message: "there is no WebSocket endpoint at this path"), context: context)
        }
        switch decision {
        case .refuse(let error):
            refuse(error, context: context)
        case .accept(let endpoint):
            if let problem = WebSocketHandshake.problem(head) { return refuse(problem, context: context) }
            state = .upgrading(endpoint, key: head.headers.first(name: "sec-websocket-key") ?? "")
        }
    }

    private func upgrade(_ endpoint: WebSocketEndpoint, key: String, context: ChannelHandlerContext) {
        state = .upgraded
        var headers = HTTPHeaders()
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Accept", value: WebSocketHandshake.accept(key: key))
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers))), promise: nil)
        let pipeline = context.pipeline.syncOperations
        do {
            // The HTTP encoder goes first: the application may send as soon as it is added.
            pipeline.removeHandler(encoder, promise: nil)
            let socket = WebSocketConnectionHandler(endpoint: endpoint, closeTimeout: settings.webSocketCloseTimeout, logger: logger)
            let frameDecoder = ByteToMessageHandler(WebSocketFrameReader(maxFrameSize: endpoint.maxMessageBytes))
            try pipeline.addHandler(frameDecoder, position: .after(decoder))
            try pipeline.addHandler(WebSocketFrameEncoder(), position: .after(decoder))
            // Each fragment is checked before the aggregator joins a message's fragments (a bounded number
            // of them, so tiny or empty fragments cannot pile up).
            let checker = WebSocketFrameChecker()
            let aggregator = NIOWebSocketFrameAggregator(
                minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: endpoint.maxFragments, maxAccumulatedFrameSize: endpoint.maxMessageBytes
            )
            try pipeline.addHandler(checker, position: .after(frameDecoder))
            try pipeline.addHandler(aggregator, position: .after(checker))
            try pipeline.addHandler(socket, position: .after(aggregator))
            pipeline.removeHandler(context: context, promise: nil)
            // Bytes the client sent after its upgrade request go on to the WebSocket decoder.
            pipeline.removeHandler(decoder, promise: nil)
            guardHandler.upgraded()
        } catch {
            logger.debug("WebSocket upgrade failed", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }
}

/// Writes a response body through the connection handler; the head goes with the first body bytes, and a
/// body of one buffer goes out together with the end of the response in one step.
private struct ConnectionBodyWriter: ResponseBodyWriter {
    let handler: NIOLoopBound<HTTPConnectionHandler>
    let eventLoop: any EventLoop
    var head: HTTPResponse?
    var held: [ByteBuffer] = []

    init(handler: NIOLoopBound<HTTPConnectionHandler>, eventLoop: any EventLoop, head: HTTPResponse) {
        self.handler = handler
        self.eventLoop = eventLoop
        self.head = head
    }

    mutating func write(_ buffer: ByteBuffer) async throws {
        held.append(buffer)
        guard held.count > 1 || buffer.readableBytes >= 64 * 1024 else { return }
        let buffers = held
        let head = self.head
        held = []
        self.head = nil
        let handler = self.handler
        try await eventLoop.flatSubmit {
            if let head { handler.value.writeHead(head) }
            return handler.value.writeBody(buffers, flush: false)
        }.get()
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        let buffers = held
        let head = self.head
        let handler = self.handler
        // The end of the response is handed to the connection, not awaited: a failed write closes it there.
        let finish: @Sendable () -> Void = {
            if let head { handler.value.writeHead(head) }
            if !buffers.isEmpty { _ = handler.value.writeBody(buffers, flush: false) }
            _ = handler.value.finishResponse(trailingHeaders)
        }
        if eventLoop.inEventLoop { finish() } else { eventLoop.execute(finish) }
    }
}

/// A task executor that runs jobs on a NIO event loop.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

extension Response {
    /// The response's head as HTTPTypes sees it.
    var head: HTTPResponse { HTTPResponse(status: status, headerFields: headers) }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        let chars = Set(set)
        var s = self
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return s
    }
}
