import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

/// An HTTP/1.1 server on a listening socket it was handed (systemd socket activation), with the same
/// connection setup as the normal listener (`RealtimeServerChannel`), so routing, middleware and
/// WebSocket upgrades are the same.
///
/// On graceful shutdown it stops accepting, lets in-flight requests finish and closes idle connections.
/// The listening socket stays open in systemd, which queues new connections for the next process.
struct InheritedSocketServer: Service {
    let socket: CInt
    let responder: RouterResponder<ChatRequestContext>
    let events: WebSocketController
    let socketIO: SocketIOController
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    let onListening: @Sendable (any Channel) async -> Void

    func run() async throws {
        let responder = self.responder
        let http = RealtimeServerChannel(responder: { request, responseWriter, channel in
            let logger = self.logger
            let context = ChatRequestContext(source: .init(channel: channel, logger: logger))
            let response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch {
                response = Response(status: .internalServerError)
            }
            try await responseWriter.write(response: response.head, body: response.body)
        }, configuration: webSocketConfiguration, events: events, socketIO: socketIO)
        let quiesce = ServerQuiescingHelper(group: eventLoopGroup)
        let logger = self.logger
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(socket) { channel in http.setup(channel: channel, logger: logger) }
        logger.info("serving on the socket passed by systemd", metadata: ["fd": "\(socket)"])
        await withGracefulShutdownHandler {
            await onListening(channel.channel)
            await withDiscardingTaskGroup { group in
                do {
                    try await channel.executeThenClose { inbound in
                        for try await child in inbound {
                            group.addTask { await http.handle(value: child, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("accepting connections failed", metadata: ["error": "\(error)"])
                }
            }
        } onGracefulShutdown: {
            let promise = channel.channel.eventLoop.makePromise(of: Void.self)
            quiesce.initiateShutdown(promise: promise)
        }
    }
}
