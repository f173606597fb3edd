#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import ServiceLifecycle
import Storage
import Synchronization

/// One Engine.IO v4 session (one Socket.IO client): long-polling until it upgrades to a WebSocket.
final class EngineSession: Sendable {
    let sid: String
    let created = ContinuousClock.now
    private struct State {
        var buffer: [String] = []
        var bufferedFrames = 0
        var polling = false
        var webSocket: AsyncStream<String>.Continuation?
        var upgrading = false
        var closed = false
        var connected = false
        var lastActivity = ContinuousClock.now
    }
    private let state = Mutex(State())
    private let clientBox = Mutex<RealtimeClient?>(nil)

    init(sid: String) { self.sid = sid }

    var client: RealtimeClient? { clientBox.withLock { $0 } }
    func attach(_ client: RealtimeClient) { clientBox.withLock { $0 = client } }

    var isClosed: Bool { state.withLock { $0.closed } }
    var isConnected: Bool { state.withLock { $0.connected } }
    var isUpgraded: Bool { state.withLock { $0.webSocket != nil } }
    var lastActivity: ContinuousClock.Instant { state.withLock { $0.lastActivity } }
    func touch() { state.withLock { $0.lastActivity = .now } }
    func markConnected() { state.withLock { $0.connected = true } }
    func setUpgrading(_ value: Bool) { state.withLock { $0.upgrading = value } }

    /// Queues Engine.IO packets (`frames` realtime frames among them) for the client's transport.
    func push(_ packets: [String], frames: Int = 0) {
        let direct = state.withLock { s -> AsyncStream<String>.Continuation? in
            if s.closed { return nil }
            if let ws = s.webSocket { return ws }
            s.buffer.append(contentsOf: packets)
            s.bufferedFrames += frames
            return nil
        }
        if let direct {
            for packet in packets { direct.yield(packet) }
            if frames > 0 { client?.didSend(frames) }
        }
    }

    /// Takes everything buffered for a long-poll; nil when another poll is already waiting.
    func beginPoll() -> Bool {
        state.withLock { s in
            if s.polling { return false }
            s.polling = true
            s.lastActivity = .now
            return true
        }
    }

    func takeBuffered() -> [String]? {
        let (packets, frames) = state.withLock { s -> ([String], Int) in
            guard !s.buffer.isEmpty else { return ([], 0) }
            let taken = (s.buffer, s.bufferedFrames)
            s.buffer.removeAll()
            s.bufferedFrames = 0
            return taken
        }
        if frames > 0 { client?.didSend(frames) }
        return packets.isEmpty ? nil : packets
    }

    func endPoll() { state.withLock { $0.polling = false; $0.lastActivity = .now } }
    var pollShouldReturn: Bool { state.withLock { $0.closed || $0.upgrading || $0.webSocket != nil || !$0.buffer.isEmpty } }

    /// Switches to the WebSocket: what was buffered goes first.
    func upgrade(to socket: AsyncStream<String>.Continuation) {
        let (pending, frames) = state.withLock { s -> ([String], Int) in
            s.webSocket = socket
            s.upgrading = false
            let taken = (s.buffer, s.bufferedFrames)
            s.buffer.removeAll()
            s.bufferedFrames = 0
            return taken
        }
        for packet in pending { socket.yield(packet) }
        if frames > 0 { client?.didSend(frames) }
    }

    /// Ends the session; returns false when it had ended already.
    @discardableResult
    func close() -> Bool {
        let socket = state.withLock { s -> AsyncStream<String>.Continuation?? in
            if s.closed { return .none }
            s.closed = true
            return .some(s.webSocket)
        }
        guard case .some(let ws) = socket else { return false }
        ws?.finish()
        return true
    }
}

/// Socket.IO (protocol v5 over Engine.IO v4) at `/socket.io/`, for existing socket.io-client frontends.
/// Events are those of `/ws`: `authenticate`, `join`, `leave`, `message`, `typing` from the client (with an ack
/// callback for the reply); `message`, `typing`, `presence`, `error` from the server.
final class SocketIOController: Sendable {
    let events: WebSocketController
    let hub: RealtimeHub
    let pingInterval: Duration = .seconds(25)
    let pingTimeout: Duration = .seconds(20)
    let maxPayload = 1_000_000
    private let sessions = Mutex<[String: EngineSession]>([:])
    let logger: Logger

    init(events: WebSocketController, hub: RealtimeHub, logger: Logger) {
        self.events = events
        self.hub = hub
        self.logger = logger
    }

    var sessionCount: Int { sessions.withLock { $0.count } }

    /// Long-polling routes; WebSocket upgrades reach `serveWebSocket` through `RealtimeServerChannel`.
    func addRoutes(to router: Router<ChatRequestContext>) {
        router.get("socket.io", use: poll)
        router.post("socket.io", use: receive)
        router.on("socket.io", method: .put) { _, _ in Self.engineError(2, "Bad handshake method") }
        router.on("socket.io", method: .delete) { _, _ in Self.engineError(2, "Bad handshake method") }
    }

    // MARK: Engine.IO over HTTP long-polling

    static func engineError(_ code: Int, _ message: String) -> Response {
        Response(
            status: .badRequest, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: JSONValue.object(["code": .int(Int64(code)), "message": .string(message)]).jsonText()))
        )
    }

    private static func text(_ body: String) -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; charset=UTF-8"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    private func validate(_ request: Request) -> (sid: String?, error: Response?) {
        let query = request.uri.queryParameters
        guard query["EIO"] == "4" else { return (nil, Self.engineError(5, "Unsupported protocol version")) }
        guard query["transport"] == "polling" else { return (nil, Self.engineError(0, "Transport unknown")) }
        return (query["sid"].map(String.init), nil)
    }

    private func session(_ sid: String) -> EngineSession? { sessions.withLock { $0[sid] } }

    @Sendable func poll(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let (sid, error) = validate(request)
        if let error { return error }
        guard let sid else { return Self.text(EnginePacket.open(handshake(open()).jsonText()).encoded) }
        guard let session = session(sid), !session.isClosed else { return Self.engineError(1, "Session ID unknown") }
        guard !session.isUpgraded else { return Self.engineError(3, "Bad request") }
        guard session.beginPoll() else {
            // Two concurrent polls break the protocol: the reference closes the session.
            end(session)
            return Self.engineError(3, "Bad request")
        }
        defer { session.endPoll() }
        let deadline = ContinuousClock.now + pingInterval
        while !session.pollShouldReturn, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(15))
            if Task.isCancelled { break }
        }
        if let packets = session.takeBuffered() { return Self.text(packets.joined(separator: String(EnginePacket.separator))) }
        if session.isClosed { return Self.text(EnginePacket.close.encoded) }
        // Nothing to say for a whole interval: a ping, which the client answers with a pong POST.
        return Self.text(ContinuousClock.now >= deadline ? EnginePacket.ping("").encoded : EnginePacket.noop.encoded)
    }

    @Sendable func receive(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let (sid, error) = validate(request)
        if let error { return error }
        guard let sid, let session = session(sid), !session.isClosed else { return Self.engineError(1, "Session ID unknown") }
        var request = request
        guard let body = try? await request.collectBody(upTo: maxPayload) else {
            end(session)
            return Self.engineError(3, "Bad request")
        }
        session.touch()
        guard let packets = try? EnginePacket.decodePayload(String(buffer: body)) else {
            end(session)
            return Self.engineError(3, "Bad request")
        }
        for packet in packets { await handle(packet, session: session) }
        return Self.text("ok")
    }

    private func open() -> EngineSession {
        let session = EngineSession(sid: Base64.urlEncode(Crypto.randomBytes(15)))
        let client = RealtimeClient(maxQueued: events.maxQueued, abort: { [weak session] in session?.close() }) { [weak session] item in
            guard let session else { return }
            let (packets, frames) = Self.packets(for: item)
            session.push(packets, frames: frames)
            if case .close = item { session.close() }
        }
        session.attach(client)
        hub.track(client)
        sessions.withLock { $0[session.sid] = session }
        return session
    }

    private func handshake(_ session: EngineSession) -> JSONValue {
        .object([
            "sid": .string(session.sid), "upgrades": .array(["websocket"]),
            "pingInterval": .int(Int64(pingInterval.components.seconds * 1000)),
            "pingTimeout": .int(Int64(pingTimeout.components.seconds * 1000)), "maxPayload": .int(Int64(maxPayload)),
        ])
    }

    /// Ends a session: its Socket.IO connection leaves every room.
    func end(_ session: EngineSession) {
        session.close()
        // Leaving the registry happens once, whoever closed the session first.
        guard sessions.withLock({ $0.removeValue(forKey: session.sid) }) != nil else { return }
        if let client = session.client {
            for room in hub.remove(client) {
                if let user = client.identity?.subject {
                    hub.broadcast(RealtimeEvent.presence(session: room, user: user, status: "offline"), session: room, exceptUser: user)
                }
            }
        }
    }

    // MARK: Packets

    private func handle(_ packet: EnginePacket, session: EngineSession) async {
        switch packet {
        case .message(let text):
            guard let sio = try? SocketIOPacket.decode(text) else {
                logger.debug("malformed Socket.IO packet; closing", metadata: ["sid": .string(session.sid)])
                end(session)
                return
            }
            await handle(sio, session: session)
        case .pong, .noop, .ping, .open:
            session.touch()
        case .close:
            end(session)
        case .upgrade, .binaryMessage:
            // Binary attachments are not supported; an upgrade outside the WebSocket is a protocol error.
            end(session)
        }
    }

    private func handle(_ packet: SocketIOPacket, session: EngineSession) async {
        guard let client = session.client else { return }
        guard packet.namespace == "/" else {
            if packet.kind == .connect {
                session.push(["4" + SocketIOPacket(kind: .connectError, namespace: packet.namespace, data: .object(["message": "Invalid namespace"])).encoded])
            }
            return
        }
        switch packet.kind {
        case .connect:
            guard !session.isConnected else { return }
            var auth: [String: JSONValue] = [:]
            if case .object(let fields)? = packet.data { auth = fields }
            do {
                if let token = auth["token"] {
                    guard case .string(let text) = token, !text.isEmpty, text.utf8.count <= 4096 else { throw APIError.invalid("token", "must be a string") }
                    let claims = try await events.tokens.authenticate(authorizationHeader: "Bearer " + text, logger: logger)
                    try events.authenticate(client, claims: claims)
                }
                session.markConnected()
                session.push(["4" + SocketIOPacket(kind: .connect, data: .object(["sid": .string(session.sid)])).encoded])
                // Reconnecting with the session and the last message seen: replay, then live.
                if let claims = client.identity, case .string(let sessionText)? = auth["sessionId"], let sessionId = UUID(text: sessionText) {
                    var last: UUID?
                    if case .string(let lastText)? = auth["lastMessageId"] { last = UUID(text: lastText) }
                    try await events.join(client, claims: claims, session: sessionId, after: last, requestId: nil)
                }
            } catch {
                let apiError = APIError.from(error) ?? .unauthenticated
                session.push(["4" + SocketIOPacket(kind: .connectError, data: .object(["message": .string(apiError.message), "data": .object(["code": .string(apiError.code)])])).encoded])
            }
        case .event:
            guard session.isConnected, case .array(let items)? = packet.data, case .string(let name)? = items.first else { return }
            var fields: [String: JSONValue] = [:]
            if items.count > 1 {
                guard case .object(let payload) = items[1] else {
                    let error = APIError(.badRequest, code: "invalid_payload", message: "the event's argument must be an object")
                    client.send(RealtimeEvent.error(packet.ackId.map { .int(Int64($0)) }, error))
                    return
                }
                fields = payload
            }
            fields["type"] = .string(name)
            fields["id"] = packet.ackId.map { .int(Int64($0)) } ?? .null
            if fields["id"] == .null { fields["id"] = nil }
            await events.handle(fields, client: client, logger: logger)
        case .disconnect:
            end(session)
        case .binaryEvent, .binaryAck:
            // Binary attachments are refused: the client is told and the connection closed.
            client.send(RealtimeEvent.error(nil, APIError(.badRequest, code: "unsupported_frame", message: "binary attachments are not supported")))
            end(session)
        case .ack, .connectError:
            break
        }
    }

    /// Socket.IO packets (as Engine.IO message texts) for an outbound realtime item.
    static func packets(for item: OutboundItem) -> ([String], Int) {
        switch item {
        case .close:
            return (["4" + SocketIOPacket(kind: .disconnect).encoded, EnginePacket.close.encoded], 0)
        case .text(let frame):
            return frame.socketIOPackets(convert)
        }
    }

    /// A `/ws` event as Socket.IO packets; the count is the frames it takes off the client's queue.
    private static func convert(_ json: String) -> ([String], Int) {
        guard case .object(var fields)? = JSONValue.parse(json), case .string(let type)? = fields["type"] else { return ([], 1) }
        let id = fields["id"]
        fields["type"] = nil
        fields["id"] = nil
        switch type {
        case "message":
            return (["4" + SocketIOPacket.event("message", fields["message"] ?? .null).encoded], 1)
        case "ack":
            guard case .int(let ack)? = id else { return ([], 1) }
            return (["4" + SocketIOPacket(kind: .ack, ackId: Int(ack), data: .array([.object(fields)])).encoded], 1)
        case "error":
            if case .int(let ack)? = id {
                return (["4" + SocketIOPacket(kind: .ack, ackId: Int(ack), data: .array([.object(["error": fields["error"] ?? .null])])).encoded], 1)
            }
            return (["4" + SocketIOPacket.event("error", fields["error"] ?? .null).encoded], 1)
        default:
            return (["4" + SocketIOPacket.event(type, .object(fields)).encoded], 1)
        }
    }

    // MARK: Engine.IO over WebSocket

    func serveWebSocket(sid: String?, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        let session: EngineSession
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .unbounded)
        var frames = inbound.messages(maxSize: maxPayload).makeAsyncIterator()
        if let sid {
            guard let existing = self.session(sid), !existing.isClosed, !existing.isUpgraded else {
                try? await outbound.close(.policyViolation, reason: "Session ID unknown")
                return
            }
            session = existing
            // Upgrade handshake: 2probe → 3probe, then 5 (upgrade); the pending poll is released with a noop.
            do {
                guard case .text("2probe")? = try await frames.next() else { throw CancellationError() }
                try await outbound.write(.text("3probe"))
                session.setUpgrading(true)
                guard case .text("5")? = try await frames.next() else { throw CancellationError() }
            } catch {
                session.setUpgrading(false)
                try? await outbound.close(.protocolError, reason: "upgrade failed")
                return
            }
            session.upgrade(to: continuation)
        } else {
            session = open()
            session.upgrade(to: continuation)
            continuation.yield(EnginePacket.open(handshake(session).jsonText()).encoded)
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await packet in stream {
                        do { try await outbound.write(.text(packet)) } catch { break }
                    }
                    try? await outbound.close(.normalClosure, reason: nil)
                }
                group.addTask {
                    // Server pings; a client silent for pingInterval + pingTimeout is gone.
                    while !Task.isCancelled, !session.isClosed {
                        do { try await Task.sleep(for: self.pingInterval) } catch { return }
                        if ContinuousClock.now - session.lastActivity > self.pingInterval + self.pingTimeout {
                            self.end(session)
                            return
                        }
                        session.push([EnginePacket.ping("").encoded])
                    }
                }
                do {
                    while let frame = try await frames.next() {
                        session.touch()
                        guard case .text(let text) = frame, let packet = try? EnginePacket.decode(Substring(text)) else {
                            self.end(session)
                            break
                        }
                        await self.handle(packet, session: session)
                        if session.isClosed { break }
                    }
                } catch {}
                self.end(session)
                continuation.finish()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            session.client?.close(code: 1001, reason: "server shutting down")
        }
    }

    /// Ends polling sessions whose client went away, and forgets sessions that were closed elsewhere
    /// (the hub's lifetime sweep closes unauthenticated and expired connections, Socket.IO ones included).
    func sweep() {
        let now = ContinuousClock.now
        let stale = sessions.withLock { s in
            s.values.filter { session in
                session.isClosed || (!session.isUpgraded && now - session.lastActivity > pingInterval + pingTimeout)
            }
        }
        for session in stale { end(session) }
    }
}

/// Runs the Socket.IO session sweeper.
struct SocketIOSweeper: Service {
    let controller: SocketIOController

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
            controller.sweep()
        }
    }
}
