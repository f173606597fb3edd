import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
@_spi(WSInternal) import WSCore

/// The server's connection setup: HTTP/1.1 answered by Hummingbird's router, and WebSocket upgrades.
///
/// It is Hummingbird's `HTTP1WebSocketUpgradeChannel` with one difference: a `/ws` connection, once
/// upgraded, is served by NIO channel handlers alone (`LeanWebSocketHandler`), with no task waiting on it.
/// An idle connection then costs its channel and a few small objects instead of the suspended tasks of an
/// async WebSocket handler. `/socket.io/` WebSocket upgrades keep the async handler.
struct RealtimeServerChannel: ServerChildChannel, HTTPChannelHandler {
    typealias AsyncHandler = @Sendable (NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, Logger) async -> Void

    enum UpgradeResult: Sendable {
        case lean
        case websocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, AsyncHandler, Logger)
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case failedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, Logger)
    }

    /// What an upgrade request turns into.
    enum Upgrade: Sendable {
        case lean(HTTPFields)
        case async(AsyncHandler)
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    struct SocketContext: WebSocketContext {
        let logger: Logger
    }

    let responder: HTTPChannelHandler.Responder
    let configuration: HTTP1WebSocketUpgradeChannel.Configuration
    let events: WebSocketController
    let socketIO: SocketIOController

    init(responder: @escaping HTTPChannelHandler.Responder, configuration: HTTP1WebSocketUpgradeChannel.Configuration, events: WebSocketController, socketIO: SocketIOController) {
        self.responder = Self.refusingStrayUpgrades(responder)
        self.configuration = configuration
        self.events = events
        self.socketIO = socketIO
    }

    /// A WebSocket upgrade request that reached the HTTP responder (not a proper upgrade: no
    /// `Connection: upgrade`) is answered 400 with `Connection: close` instead of being routed.
    static func refusingStrayUpgrades(_ responder: @escaping HTTPChannelHandler.Responder) -> HTTPChannelHandler.Responder {
        struct StrayUpgradeError: Error {}
        return { request, responseWriter, channel in
            if request.headers[.upgrade]?.lowercased() == "websocket" {
                try await responseWriter.writeResponse(HTTPResponse(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"]))
                throw StrayUpgradeError()
            }
            try await responder(request, responseWriter, channel)
        }
    }

    /// Decides on an upgrade request: `/ws` goes to the lean handler, `/socket.io/?EIO=4&transport=websocket`
    /// to the Socket.IO controller; anything else is not upgraded.
    func decide(_ request: HTTPRequest) -> Upgrade? {
        guard request.method == .get, let target = request.path else { return nil }
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target
        switch path {
        case "/ws", "/ws/":
            return .lean(request.headerFields)
        case "/socket.io", "/socket.io/":
            let query = URI(target).queryParameters
            guard query["EIO"] == "4", query["transport"] == "websocket" else { return nil }
            let sid = query["sid"].map(String.init)
            let socketIO = self.socketIO
            let ws = configuration.ws
            return .async { asyncChannel, logger in
                do {
                    _ = try await WebSocketHandler.handle(
                        type: .server,
                        configuration: .init(
                            extensions: [], autoPing: ws.autoPing, closeTimeout: ws.closeTimeout, validateUTF8: ws.validateUTF8,
                            maxFrameSize: ws.maxFrameSize
                        ),
                        asyncChannel: asyncChannel, context: SocketContext(logger: logger)
                    ) { inbound, outbound, _ in
                        await socketIO.serveWebSocket(sid: sid, inbound: inbound, outbound: outbound)
                    }
                } catch {
                    logger.debug("WebSocket handler error", metadata: ["error": "\(error)"])
                }
            }
        default:
            return nil
        }
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let upgradeAttempted = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let decision = NIOLoopBoundBox<Upgrade?>(nil, eventLoop: channel.eventLoop)
            let events = self.events
            let maxFrameSize = configuration.ws.maxFrameSize
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: maxFrameSize,
                shouldUpgrade: { channel, head in
                    upgradeAttempted.value = true
                    guard let request = try? HTTPRequest(head, secure: false, splitCookie: false), let upgrade = self.decide(request) else {
                        return channel.eventLoop.makeSucceededFuture(nil)
                    }
                    decision.value = upgrade
                    return channel.eventLoop.makeSucceededFuture(HTTPHeaders())
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        switch decision.value {
                        case .lean(let headers)?:
                            try channel.pipeline.syncOperations.addHandler(
                                LeanWebSocketHandler(events: events, headers: headers, logger: logger, maxMessageBytes: events.maxEventBytes)
                            )
                            return .lean
                        case .async(let handler)?:
                            let asyncChannel = try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(
                                wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true)
                            )
                            return .websocket(asyncChannel, handler, logger)
                        case nil:
                            throw ChannelError.inappropriateOperationForState
                        }
                    }
                }
            )
            let serverUpgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandlers(self.configuration.http1.additionalChannelHandlers())
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: self.configuration.http1.idleTimeout.map { .init($0) }, logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return upgradeAttempted.value ? .failedUpgrade(asyncChannel, logger) : .notUpgraded(asyncChannel)
                    }
                }
            )
            var upgradeConfiguration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: serverUpgradeConfiguration)
            upgradeConfiguration.enablePipelining = false
            upgradeConfiguration.enableErrorHandling = false
            upgradeConfiguration.enableResponseHeaderValidation = false
            upgradeConfiguration.decoderConfiguration.maxHeaderFieldSize = configuration.http1.httpDecoder.maxHeaderFieldSize
            upgradeConfiguration.decoderConfiguration.maxHeaderListSize = configuration.http1.httpDecoder.maxHeaderListSize
            upgradeConfiguration.decoderConfiguration.maxHeaderFieldCount = configuration.http1.httpDecoder.maxHeaderFieldCount
            let negotiation = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: upgradeConfiguration)
            return Value(upgradeResult: negotiation, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .lean:
                return  // the channel's handlers serve it from here on
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .failedUpgrade(let http1, let logger):
                await writeFailedUpgrade(http1, logger: logger)
            case .websocket(let asyncChannel, let handler, let logger):
                await handler(asyncChannel, logger)
            }
        } catch let error as ChannelError where error == .inputClosed {
            logger.trace("upgrade failed: input closed")
        } catch {
            logger.debug("connection setup failed", metadata: ["error": "\(error)"])
        }
    }

    private func writeFailedUpgrade(_ asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, logger: Logger) async {
        try? await asyncChannel.executeThenClose { _, outbound in
            try await outbound.write(contentsOf: [
                .head(HTTPResponse(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])), .end(nil),
            ])
        }
    }
}
