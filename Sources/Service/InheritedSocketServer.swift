import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Synchronization

/// An HTTP/1.1 server on a listening socket it was handed (systemd socket activation), with the same
/// connection setup as the normal listener (`RealtimeServerChannel`), so routing, middleware and
/// WebSocket upgrades are the same.
///
/// On graceful shutdown it stops accepting, lets in-flight requests finish and closes idle connections.
/// The listening socket stays open in systemd, which queues new connections for the next process, so a
/// restart refuses no connection and drops none that this process accepted.
struct InheritedSocketServer: Service {
    let socket: CInt
    let channel: ChatServerChannel
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    let onListening: @Sendable (any Channel) async -> Void

    func run() async throws {
        let http = self.channel
        let quiesce = ServerQuiescingHelper(group: eventLoopGroup)
        let logger = self.logger
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(socket) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FirstRequestOnShutdownHandler(timeout: .seconds(2)))
                }.flatMap { http.setup(channel: channel, logger: logger) }
            }
        logger.info("serving on the socket passed by systemd", metadata: ["fd": "\(socket)"])
        // Completed once the listener is closed and every connection it accepted has ended.
        let drained = channel.channel.eventLoop.makePromise(of: Void.self)
        let shuttingDown = Atomic<Bool>(false)
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
            if shuttingDown.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                quiesce.initiateShutdown(promise: drained)  // the listener failed: end what it accepted
            }
            // Connections are served by their handlers, not by tasks here: wait for them to end.
            try? await drained.futureResult.get()
        } onGracefulShutdown: {
            // Stop accepting at once, but close the listening channel a moment later: a connection
            // accepted just now is still being set up on its event loop, and NIO closes (resets) such
            // a connection if the listening channel is closed first. Meanwhile new connections wait in
            // systemd's socket for the next process.
            let server = channel.channel
            server.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in
                server.eventLoop.scheduleTask(in: .milliseconds(250)) {
                    if shuttingDown.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                        quiesce.initiateShutdown(promise: drained)
                    }
                }
            }
        }
    }
}

/// Sees a connection that is still waiting for its first request through graceful shutdown.
///
/// Hummingbird's HTTP/1 pipeline is completed only when a connection's first request arrives, and
/// only then can it act on shutdown's quiesce event. A connection accepted just before shutdown
/// would miss the event: it would be answered but then kept open, and a silent one would keep the
/// process from exiting. First in the pipeline, this handler holds the event back until the first
/// bytes have been passed on (the request is then in progress, so the connection is closed after
/// its response), and closes the connection if nothing arrives within `timeout`.
final class FirstRequestOnShutdownHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let timeout: TimeAmount
    private var hasRead = false
    private var heldEvent: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        hasRead = true
        context.fireChannelRead(data)
        if let held = heldEvent {
            heldEvent = nil
            held.cancel()
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent, !hasRead, heldEvent == nil else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        heldEvent = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.heldEvent = nil
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        heldEvent?.cancel()
        heldEvent = nil
    }
}
