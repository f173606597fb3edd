#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import Storage

/// Where the HTTP server listens.
public enum Listener: Sendable {
    /// Bind this host and port.
    case address(host: String, port: Int)
    /// Serve on an already bound, listening socket (systemd socket activation).
    case inheritedSocket(CInt)
}

/// Everything the application needs from outside; nothing is looked up globally.
public struct ApplicationDependencies: Sendable {
    public var store: any ChatStore
    /// Realtime connections by chat session.
    public var hub: RealtimeHub
    public var registry: PrometheusCollectorRegistry
    public var logger: Logger
    /// Called once the listener accepts connections (systemd readiness).
    public var onListening: @Sendable () async -> Void
    /// Extra long-running services (watchdog, notifier) run alongside the server.
    public var services: [any Service]
    /// Agents answering in sessions (none: messages are only stored and published).
    public var agents: AgentsConfig
    /// Integrations subscribed to events (none: no events are recorded).
    public var webhooks: WebhooksConfig
    /// When set, the store is closed by the application's service group, after everything that uses it
    /// has stopped (`serve`); tests leave it nil and close their store themselves.
    public var storeService: StoreService?

    public init(
        store: any ChatStore, hub: RealtimeHub = RealtimeHub(), registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        logger: Logger = Logger(label: "chat-backend"), onListening: @escaping @Sendable () async -> Void = {}, services: [any Service] = [],
        agents: AgentsConfig = .none, webhooks: WebhooksConfig = .none, storeService: StoreService? = nil
    ) {
        self.agents = agents
        self.webhooks = webhooks
        self.storeService = storeService
        self.store = store
        self.hub = hub
        self.registry = registry
        self.logger = logger
        self.onListening = onListening
        self.services = services
    }
}

/// The HTTP router with every route and middleware, and the WebSocket endpoints the server channel upgrades to.
public struct ChatRouters {
    public let http: Router<ChatRequestContext>
    let webSockets: WebSocketRoutes
    let tokens: TokenService
    /// Nil without agents.
    public let orchestrator: AgentOrchestrator?
}

/// Builds the routers with every route and middleware.
public func buildRouters(config: ServiceConfig, dependencies: ApplicationDependencies) -> ChatRouters {
    let store = dependencies.store
    let hub = dependencies.hub
    let metrics = HTTPMetrics(registry: dependencies.registry)
    let limiter = RateLimiter()
    let tokens = TokenService(
        signer: JWTSigner(secret: config.jwtSecret), store: store, accessTTL: config.accessTokenTTL, refreshTTL: config.refreshTokenTTL,
        onRevoke: { jti, family in hub.disconnect(jti: jti, family: family) }
    )
    let hasher = PasswordHasher(parameters: config.passwordParameters)
    let orchestrator = dependencies.agents.isEmpty
        ? nil
        : AgentOrchestrator(config: dependencies.agents, store: store, hub: hub, registry: dependencies.registry, logger: dependencies.logger)
    let messages = MessageService(
        store: store, hub: hub, limiter: limiter, rule: config.rateLimitMessages, metrics: metrics, orchestrator: orchestrator,
        editWindow: config.messageEditWindow
    )

    let router = Router(context: ChatRequestContext.self, options: .autoGenerateHeadEndpoints)
    let routeMethods = RouteMethods()
    router.addMiddleware {
        RequestMiddleware(metrics: metrics, hstsMaxAge: config.server.hstsMaxAge, trustProxy: config.trustProxy)
        CORSMiddleware(allowedOrigins: Set(config.corsOrigins))
    }
    if let rule = config.rateLimitAPI { router.add(middleware: UnroutedRateLimitMiddleware(limiter: limiter, rule: rule)) }
    router.add(middleware: MethodNotAllowedMiddleware(routes: routeMethods))
    // Tokens are read only where they matter: a stale token sent to /health or /auth/refresh is ignored.
    // A refused one counts against the address under /api/ (under /auth/ the group's tier counted it).
    let identity = IdentityMiddleware(tokens: tokens, limiter: limiter, rule: config.rateLimitAPI)
    let health = HealthController(
        store: store, registry: dependencies.registry, version: config.version, startedAt: .now, startedAtDate: Date()
    )
    health.addRoutes(to: router)

    let auth = router.group("auth")
    if let rule = config.rateLimitAPI { auth.add(middleware: APIRateLimitMiddleware(limiter: limiter, rule: rule)) }
    AuthController(
        store: store, tokens: tokens, hasher: hasher, hub: hub, limiter: limiter, rule: config.rateLimitAuth, maxBodyBytes: config.maxBodyBytes,
        identity: IdentityMiddleware(tokens: tokens), guestAccess: config.guestAccess, guestRule: config.rateLimitGuest
    ).addRoutes(to: auth)

    let api = router.group("api").add(middleware: identity)
    if let rule = config.rateLimitAPI { api.add(middleware: APIRateLimitMiddleware(limiter: limiter, rule: rule)) }
    health.addAPIRoutes(to: api)
    let authenticated = api.group(context: AuthenticatedContext.self)
    let changes = SessionChanges(store: store, hub: hub, logger: dependencies.logger)
    SessionController(
        store: store, messages: messages, sessionTTL: config.sessionTTL, maxBodyBytes: config.maxBodyBytes, orchestrator: orchestrator,
        changes: changes
    ).addRoutes(to: authenticated)
    AttachmentController(store: store, maxBytes: config.attachmentMaxBytes, quota: config.attachmentQuotaBytes).addRoutes(to: authenticated)
    WebhookController(store: store, webhooks: dependencies.webhooks).addRoutes(to: authenticated)
    AgentController(store: store, hub: hub, orchestrator: orchestrator, changes: changes).addRoutes(to: authenticated)
    AdminController(
        store: store, tokens: tokens, hasher: hasher, maxBodyBytes: config.maxBodyBytes, hub: hub, orchestrator: orchestrator, health: health,
        changes: changes
    ).addRoutes(to: authenticated)

    let events = WebSocketController(
        store: store, hub: hub, tokens: tokens, messages: messages, limiter: limiter, eventRule: config.rateLimitAPI,
        maxQueued: config.realtimeQueueLength, maxEventBytes: config.server.maxWebSocketMessageBytes
    )
    let socketIO = SocketIOController(
        events: events, hub: hub, limiter: limiter, handshakeRule: config.rateLimitAPI, pingInterval: config.socketIOPingInterval,
        pingTimeout: config.socketIOPingTimeout, maxPayload: config.socketIOMaxPayload, logger: dependencies.logger
    )
    socketIO.addRoutes(to: router)
    WebController(widgetOrigins: config.widgetOrigins).addRoutes(to: router)
    // `/ws` asked for without a WebSocket handshake (handshakes never reach the router): the resource is
    // there, over another protocol (RFC 9110 §15.5.22).
    router.get("ws") { _, _ -> Response in
        throw APIError(
            .upgradeRequired, code: "upgrade_required",
            message: "/ws is a WebSocket endpoint: connect with a WebSocket handshake (Upgrade: websocket)", headers: [.upgrade: "websocket", .connection: "Upgrade"]
        )
    }
    routeMethods.load(router.routes.map { ($0.path.description, $0.method) })
    let logger = dependencies.logger
    let webSockets = WebSocketRoutes { request, peer in
        // Counted like the client's other requests: by its address as the middleware reads it.
        let clientIP = ClientAddress.bucket(
            ClientAddress.resolve(peer: peer, forwardedFor: request.headerFields[.xForwardedFor], trustProxy: config.trustProxy)
        )
        let path = (request.path ?? "").split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        switch path {
        case "/ws", "/ws/":
            do {
                if let rule = config.rateLimitAPI { try limiter.take("realtime:ip:\(clientIP)", rule: rule).enforce() }
                guard hub.mayOpenUnauthenticated(ip: clientIP) else {
                    throw APIError(
                        .tooManyRequests, code: "too_many_connections",
                        message: "at most \(hub.maxUnauthenticatedPerIP) unauthenticated realtime connections per address", headers: [.retryAfter: "5"]
                    )
                }
            } catch {
                return .refuse(APIError.from(error) ?? .unauthenticated)
            }
            let headers = request.headerFields
            return .accept(WebSocketEndpoint(maxMessageBytes: events.maxEventBytes, pingInterval: .seconds(30)) { socket in
                EventsWebSocket(socket: socket, events: events, headers: headers, clientIP: clientIP, logger: logger)
            })
        case "/socket.io", "/socket.io/":
            return socketIO.webSocketDecision(request, clientIP: clientIP)
        default:
            return nil
        }
    }
    return ChatRouters(http: router, webSockets: webSockets, tokens: tokens, orchestrator: orchestrator)
}

/// The one builder used by `main` and by tests.
public func buildApplication(
    config: ServiceConfig, dependencies: ApplicationDependencies, listener: Listener = .address(host: "127.0.0.1", port: 3006)
) -> ChatApplication {
    let routers = buildRouters(config: config, dependencies: dependencies)
    let host: String
    let port: Int
    switch listener {
    case .address(let h, let p): (host, port) = (h, p)
    case .inheritedSocket: (host, port) = ("127.0.0.1", 0)
    }
    // A guest lifetime shorter than the sweep interval is swept a few times per lifetime.
    let sweeper = SessionSweeper(
        store: dependencies.store, interval: .seconds(min(config.sweepIntervalSeconds, max(1, config.guestTTL / 4))), logger: dependencies.logger,
        guestTTL: config.guestTTL, messageRetention: config.messageRetention, resolvedSessionRetention: config.resolvedSessionRetention
    )
    let relay = ExternalChangeRelay(store: dependencies.store, hub: dependencies.hub, tokens: routers.tokens, logger: dependencies.logger)
    let onListening = dependencies.onListening
    let channel = ChatServerChannel(
        router: routers.http.buildResponder(), webSockets: routers.webSockets, settings: config.server, connections: ConnectionCounter(),
        logger: dependencies.logger
    )
    let inner = Application(
        router: routers.http,
        server: HTTPServerBuilder { _ in channel },
        configuration: .init(address: .hostname(host, port: port), serverName: nil),
        // A service group stops its services in reverse order, the server (added last) first: then the
        // extra services, the orchestrator (replies in progress are cancelled), the sweepers, the relay,
        // and last the store, which flushes queued writes.
        services: (dependencies.storeService.map { [$0] } ?? []) + [
            relay, sweeper,
            RealtimeSweeper(hub: dependencies.hub, authTimeout: .seconds(config.realtimeAuthTimeoutSeconds)),
            WebhookDispatcher(store: dependencies.store, config: dependencies.webhooks, logger: dependencies.logger),
        ] + (routers.orchestrator.map { [$0] } ?? []) + dependencies.services,
        onServerRunning: { _ in await onListening() },
        logger: dependencies.logger
    )
    return ChatApplication(inner: inner, listener: listener, channel: channel)
}

/// The chat server: Hummingbird's application, able to serve on an inherited socket as well as an address.
public struct ChatApplication: ApplicationProtocol {
    public typealias Responder = RouterResponder<ChatRequestContext>

    let inner: Application<Responder>
    public let listener: Listener
    let channel: ChatServerChannel

    public var responder: Responder { inner.responder }
    public var configuration: ApplicationConfiguration { inner.configuration }
    public var logger: Logger { inner.logger }
    public var eventLoopGroup: any EventLoopGroup { inner.eventLoopGroup }
    public var services: [any Service] { inner.services }
    public func onServerRunning(_ channel: any Channel) async { await inner.onServerRunning(channel) }

    public func run() async throws {
        switch listener {
        case .address:
            try await inner.run()
        case .inheritedSocket(let fd):
            let server = InheritedSocketServer(
                socket: fd, channel: channel, eventLoopGroup: inner.eventLoopGroup, logger: inner.logger,
                onListening: { channel in await inner.onServerRunning(channel) }
            )
            let group = ServiceGroup(configuration: .init(services: inner.services + [server], logger: inner.logger))
            try await group.run()
        }
    }
}

/// The store as a service: listed first in the group, it stops last, once nothing uses the store, and
/// closes it (queued writes flushed, SQLite checkpointed). `close` runs once, however often it is called.
public final class StoreService: Service, Sendable {
    let store: any ChatStore
    let willClose: @Sendable () -> Void
    private let closed = Atomic<Bool>(false)

    public init(store: any ChatStore, willClose: @escaping @Sendable () -> Void = {}) {
        self.store = store
        self.willClose = willClose
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }

    public func close() async {
        guard closed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        willClose()
        await store.close()
    }
}

/// Marks sessions past their expiry as expired, and drops expired token rows, every `interval`.
/// Also deletes guests inactive for `guestTTL` seconds and uploads interrupted or never sent, a batch per
/// round, and applies retention: messages older than `messageRetention` and sessions resolved longer ago
/// than `resolvedSessionRetention` are deleted in small batches (each its own short transaction, so sends
/// are never held up for long), then the space is given back (`reclaimSpace`).
struct SessionSweeper: Service {
    let store: any ChatStore
    let interval: Duration
    let logger: Logger
    var guestTTL: Int = 30 * 86400
    var messageRetention: Int?
    var resolvedSessionRetention: Int?
    /// An upload not complete this many seconds after it started was interrupted: its bytes are removed.
    var abandonedUploadAge = 3600
    /// A complete upload that no message carried this many seconds after it completed is removed (the
    /// client uploaded and never sent); a send refuses uploads an hour before that (`sendableUploadAge`).
    static let unsentUploadAge = 86400
    static let sendableUploadAge = unsentUploadAge - 3600
    /// Rows per retention batch, and batches per round (the rest waits for the next round).
    var batch = 500
    var maxBatches = 40

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await sweep(now: Timestamp.now())
            } catch where Task.isShuttingDownGracefully || Task.isCancelled || error is CancellationError {
                break  // the server is stopping (and may have closed the store already)
            } catch {
                logger.warning("session sweep failed", metadata: ["error": .string(String(reflecting: error))])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }

    /// One round: expiry, inactive guests, interrupted and unsent uploads, retention.
    func sweep(now: Date) async throws {
        let expired = try await store.sweepExpired(now: now)
        if expired > 0 { logger.info("expired sessions", metadata: ["count": "\(expired)"]) }
        let guests = try await store.deleteInactiveGuests(inactiveSince: now.addingTimeInterval(-Double(guestTTL)), limit: 500)
        if guests > 0 { logger.info("deleted inactive guests", metadata: ["count": "\(guests)"]) }
        let uploads = try await store.deleteAbandonedUploads(startedBefore: now.addingTimeInterval(-Double(abandonedUploadAge)), limit: 50)
        if uploads > 0 { logger.info("removed interrupted uploads", metadata: ["count": "\(uploads)"]) }
        let unsent = try await store.deleteUnsentUploads(completedBefore: now.addingTimeInterval(-Double(Self.unsentUploadAge)), limit: 50)
        if unsent > 0 { logger.info("removed uploads never sent with a message", metadata: ["count": "\(unsent)"]) }
        try await applyRetention(now: now)
    }

    func applyRetention(now: Date) async throws {
        var deleted = 0
        if let seconds = resolvedSessionRetention {
            let sessions = try await inBatches(size: max(1, batch / 10)) {
                try await store.deleteResolvedSessions(before: now.addingTimeInterval(-Double(seconds)), limit: $0)
            }
            if sessions > 0 { logger.info("retention: deleted resolved sessions", metadata: ["count": "\(sessions)"]) }
            deleted += sessions
        }
        if let seconds = messageRetention {
            let messages = try await inBatches(size: batch) { try await store.deleteMessages(before: now.addingTimeInterval(-Double(seconds)), limit: $0) }
            if messages > 0 { logger.info("retention: deleted messages", metadata: ["count": "\(messages)"]) }
            // Attachments a few at a time: each may hold megabytes.
            let files = try await inBatches(size: 10) { try await store.deleteAttachments(before: now.addingTimeInterval(-Double(seconds)), limit: $0) }
            if files > 0 { logger.info("retention: deleted attachments", metadata: ["count": "\(files)"]) }
            deleted += messages + files
        }
        if deleted > 0 { try await store.reclaimSpace() }
    }

    /// Runs `delete` until a batch comes back short or `maxBatches` ran; the total deleted.
    private func inBatches(size: Int, _ delete: (Int) async throws -> Int) async throws -> Int {
        var total = 0
        for _ in 0..<maxBatches where !Task.isShuttingDownGracefully {
            let count = try await delete(size)
            total += count
            guard count == size else { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        return total
    }
}
