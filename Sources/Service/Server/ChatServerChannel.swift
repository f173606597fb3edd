import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// The server's connection setup, for the normal listener and for a socket inherited from systemd:
/// HTTP/1.1 served by channel handlers (`HTTPConnectionHandler`) that call the router, and WebSocket
/// upgrades on any request. No task waits on an idle connection.
///
/// Past `maxConnections` open connections, a new connection is answered `503` and closed, so the server
/// never runs out of file descriptors and keeps accepting (and answering) instead.
struct ChatServerChannel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let channel: any Channel
    }

    let responder: RequestResponder
    let webSockets: WebSocketRoutes
    let settings: ServerSettings
    let connections: ConnectionCounter

    init(router: RouterResponder<ChatRequestContext>, webSockets: WebSocketRoutes, settings: ServerSettings, connections: ConnectionCounter, logger: Logger) {
        let hsts = settings.hstsMaxAge
        self.responder = { request, channel in
            let context = ChatRequestContext(source: .init(channel: channel, logger: logger))
            do {
                return try await router.respond(to: request, context: context)
            } catch {
                var response = RequestMiddleware.errorResponse(error, context: context)
                SecurityHeaders.apply(to: &response.headers, hstsMaxAge: hsts)
                return response
            }
        }
        self.webSockets = webSockets
        self.settings = settings
        self.connections = connections
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let admitted = connections.open()
            channel.closeFuture.whenComplete { _ in connections.close() }
            let pipeline = channel.pipeline.syncOperations
            guard admitted <= settings.maxConnections else {
                try pipeline.addHandler(RefusingHandler(response: ConnectionErrors.raw(ConnectionErrors.tooManyConnections, hstsMaxAge: settings.hstsMaxAge)))
                return Value(channel: channel)
            }
            let guardHandler = ConnectionGuard(headerTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout, hstsMaxAge: settings.hstsMaxAge)
            let encoder = HTTPResponseEncoder()
            let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
            try pipeline.addHandler(guardHandler)
            try pipeline.addHandler(encoder)
            try pipeline.addHandler(decoder)
            try pipeline.addHandler(
                HTTPConnectionHandler(
                    responder: responder, webSockets: webSockets, settings: settings, guardHandler: guardHandler, encoder: encoder, decoder: decoder,
                    logger: logger
                )
            )
            return Value(channel: channel)
        }
    }

    /// The handlers serve the connection; nothing waits on it here.
    func handle(value: Value, logger: Logger) async {}
}

/// Open connections, counted across all event loops.
final class ConnectionCounter: Sendable {
    private let count = Atomic<Int>(0)

    /// Counts a new connection; returns how many are open with it.
    func open() -> Int { count.wrappingAdd(1, ordering: .relaxed).newValue }
    func close() { count.wrappingSubtract(1, ordering: .relaxed) }
    var current: Int { count.load(ordering: .relaxed) }
}

/// Answers a connection past the cap with `503` at once, then closes it once the client stops sending.
final class RefusingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let response: ByteBuffer
    private var answered = false

    init(response: ByteBuffer) {
        self.response = response
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
        context.fireChannelActive()
    }

    private func refuse(_ context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        let channel = context.channel
        context.writeAndFlush(NIOAny(response)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
    }
}
