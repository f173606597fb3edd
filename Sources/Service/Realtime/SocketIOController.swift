#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Storage
import Synchronization

/// One Engine.IO v4 session (one Socket.IO client): long-polling until it upgrades to a WebSocket.
///
/// Nothing waits actively: a pending poll sleeps until packets, a close or an upgrade wake it, and the
/// server's pings are timers on an event loop.
final class EngineSession: Sendable {
    let sid: String
    let clientIP: String
    let eventLoop: any EventLoop
    private struct State {
        /// Packets waiting for a poll, each with the realtime frames it completes (counted as sent
        /// once the packet leaves).
        var buffer: [(packet: String, frames: Int)] = []
        var polling = false
        var posting = false
        var waiter: CheckedContinuation<Void, Never>?
        var socket: WebSocketSocket?
        var upgrading = false
        var closed = false
        var closedByClient = false
        var connected = false
        var pingTimer: Scheduled<Void>?
        var pongTimer: Scheduled<Void>?
        /// A WebSocket is probing to take over the session.
        var probing = false
    }
    private let state = Mutex(State())
    private let clientBox = Mutex<RealtimeClient?>(nil)
    /// Packets received over the WebSocket, handled in order.
    private let inbound = InboundQueue<EnginePacket>()

    init(sid: String, clientIP: String, eventLoop: any EventLoop) {
        self.sid = sid
        self.clientIP = clientIP
        self.eventLoop = eventLoop
    }

    var client: RealtimeClient? { clientBox.withLock { $0 } }
    func attach(_ client: RealtimeClient) { clientBox.withLock { $0 = client } }

    var isClosed: Bool { state.withLock { $0.closed } }
    var isConnected: Bool { state.withLock { $0.connected } }
    var isUpgraded: Bool { state.withLock { $0.socket != nil } }
    var isPolling: Bool { state.withLock { $0.polling } }
    func setConnected(_ value: Bool) { state.withLock { $0.connected = value } }

    /// Queues Engine.IO packets (`frames` realtime frames of `client` among them) for the client's transport.
    func push(_ packets: [String], frames: Int = 0, client: RealtimeClient? = nil) {
        guard !packets.isEmpty else {
            // Nothing to send for these frames (an ack nobody asked for): they leave the queue at once.
            if frames > 0 { client?.didSend(frames) }
            return
        }
        let (socket, waiter) = state.withLock { s -> (WebSocketSocket?, CheckedContinuation<Void, Never>?) in
            if s.closed { return (nil, nil) }
            if let socket = s.socket { return (socket, nil) }
            s.buffer.append(contentsOf: packets.enumerated().map { ($1, $0 == packets.count - 1 ? frames : 0) })
            defer { s.waiter = nil }
            return (nil, s.waiter)
        }
        if let socket {
            for (i, packet) in packets.enumerated() {
                if i == packets.count - 1, frames > 0, let client {
                    socket.send(packet, written: { client.didSend(frames) })
                } else {
                    socket.send(packet)
                }
            }
        } else if frames > 0, client != nil, isClosed {
            client?.didSend(frames)
        }
        waiter?.resume()
    }

    /// Marks a long-poll as pending; false when another one is.
    func beginPoll() -> Bool { begin(\.polling) }
    func endPoll() { state.withLock { $0.polling = false } }

    /// Marks a POST as in progress; false when another one is.
    func beginPost() -> Bool { begin(\.posting) }
    func endPost() { state.withLock { $0.posting = false } }

    private func begin(_ flag: WritableKeyPath<State, Bool> & Sendable) -> Bool {
        state.withLock { s in
            if s[keyPath: flag] { return false }
            s[keyPath: flag] = true
            return true
        }
    }

    /// Waits (without spinning) until there is something to answer a poll with, the session closes or
    /// upgrades, `timeout` passes, or the polling request is cancelled.
    func waitForPackets(timeout: Duration) async {
        let loopBound = self
        let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000)) { loopBound.wake() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.closed || s.upgrading || s.socket != nil || !s.buffer.isEmpty || Task.isCancelled { return true }
                    s.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            self.wake()
        }
        timer.cancel()
    }

    private func wake() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Packets one poll answers with at most; the rest wait for the next poll, which comes at once.
    /// python-engineio's client refuses a payload of more than 16 packets (and drops the session).
    static let packetsPerPoll = 16

    /// Takes what is buffered for the pending long-poll (up to `packetsPerPoll`), which ends with it: in one
    /// step, so a close deciding whether a poll will still carry its packets (`takeBufferedUnlessPolling`)
    /// never misses.
    func finishPoll() -> [String]? { take(upTo: Self.packetsPerPoll) { s in s.polling = false; return true } }

    /// Takes everything buffered when no long-poll is pending (one pending will answer with it).
    func takeBufferedUnlessPolling() -> [String]? { take(upTo: .max) { s in !s.polling } }

    private func take(upTo limit: Int, _ when: (inout State) -> Bool) -> [String]? {
        let taken = state.withLock { s -> ArraySlice<(packet: String, frames: Int)> in
            guard when(&s), !s.buffer.isEmpty else { return [] }
            let taken = s.buffer.prefix(limit)
            s.buffer.removeFirst(taken.count)
            return taken
        }
        let frames = taken.reduce(0) { $0 + $1.frames }
        if frames > 0 { client?.didSend(frames) }
        return taken.isEmpty ? nil : taken.map(\.packet)
    }

    var closedByClient: Bool { state.withLock { $0.closedByClient } }

    /// A WebSocket starts probing to take over the session; false when one already did or does.
    func beginProbe() -> Bool {
        state.withLock { s in
            guard !s.probing, s.socket == nil, !s.closed else { return false }
            s.probing = true
            return true
        }
    }

    func endProbe() { state.withLock { $0.probing = false } }

    /// A WebSocket probe succeeded: a pending poll is released (with a noop).
    func setUpgrading(_ value: Bool) {
        state.withLock { $0.upgrading = value }
        if value { wake() }
    }

    /// Switches to the WebSocket: what was buffered goes first.
    func upgrade(to socket: WebSocketSocket) {
        let pending = state.withLock { s -> [(packet: String, frames: Int)] in
            s.socket = socket
            s.upgrading = false
            defer { s.buffer.removeAll() }
            return s.buffer
        }
        wake()
        let client = self.client
        for (packet, frames) in pending {
            if frames > 0, let client {
                socket.send(packet, written: { client.didSend(frames) })
            } else {
                socket.send(packet)
            }
        }
    }

    /// Ends the session; false when it had ended already. An upgraded connection gets a close frame with
    /// `code` after what was queued.
    @discardableResult
    func close(code: UInt16, reason: String, byClient: Bool) -> Bool {
        let ended = state.withLock { s -> (WebSocketSocket?, [Scheduled<Void>?])? in
            if s.closed { return nil }
            s.closed = true
            s.closedByClient = byClient
            let timers = [s.pingTimer, s.pongTimer]
            s.pingTimer = nil
            s.pongTimer = nil
            return (s.socket, timers)
        }
        guard let (socket, timers) = ended else { return false }
        inbound.close()
        for timer in timers { timer?.cancel() }
        socket?.close(code: code, reason: reason)
        wake()
        return true
    }

    // MARK: Pings

    /// Sends a ping every `interval` after the last pong; no pong within `timeout` of a ping ends the session.
    func schedulePing(interval: Duration, timeout: Duration, onTimeout: @escaping @Sendable () -> Void) {
        let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(interval.components.seconds) * 1_000_000_000)) { [weak self] in
            guard let self else { return }
            let pong = self.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000)) { onTimeout() }
            let open = self.state.withLock { s -> Bool in
                guard !s.closed else { return false }
                s.pongTimer?.cancel()
                s.pongTimer = pong
                return true
            }
            if open { self.push([EnginePacket.ping("").encoded]) } else { pong.cancel() }
        }
        let open = state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.pingTimer?.cancel()
            s.pingTimer = timer
            return true
        }
        if !open { timer.cancel() }
    }

    /// The client answered a ping: the next one follows after `interval`.
    func receivedPong(interval: Duration, timeout: Duration, onTimeout: @escaping @Sendable () -> Void) {
        let waited = state.withLock { s -> Bool in
            guard let pong = s.pongTimer else { return false }
            pong.cancel()
            s.pongTimer = nil
            return true
        }
        if waited { schedulePing(interval: interval, timeout: timeout, onTimeout: onTimeout) }
    }

    // MARK: Packets received over the WebSocket, handled in order

    /// Queues a packet received over the WebSocket; `handle` gets the packets in order (see `InboundQueue`).
    func enqueue(_ packet: EnginePacket, handle: @escaping @Sendable (EnginePacket) async -> Void, setReading: @escaping @Sendable (Bool) -> Void) {
        inbound.push(packet, handle: handle, setReading: setReading)
    }
}

/// Socket.IO (protocol v5 over Engine.IO v4) at `/socket.io/`, for existing socket.io-client frontends.
/// Events are those of `/ws`: `authenticate`, `join`, `leave`, `message`, `typing` from the client (with an ack
/// callback for the reply); `message`, `typing`, `presence`, `left`, `error` from the server.
final class SocketIOController: Sendable {
    let events: WebSocketController
    let hub: RealtimeHub
    let limiter: RateLimiter
    /// Engine.IO handshakes per client address (the API tier), nil when off.
    let handshakeRule: RateLimit?
    let pingInterval: Duration
    let pingTimeout: Duration
    /// The largest packet payload, the same on both transports (a POST body, a WebSocket message).
    let maxPayload: Int
    private let sessions = Mutex<[String: EngineSession]>([:])
    /// Polling sessions the client closed a moment ago: a long-poll that was on its way when the client's
    /// close arrived (two connections, either may come first) is answered with a noop once, not 400.
    /// Polling sessions that ended while no poll was pending, by sid: what the next poll gets (the
    /// client's own close: a noop; the server's: what was still queued, ending with the close packet).
    private let tombstones = Mutex<[String: (at: ContinuousClock.Instant, answer: String)]>([:])
    let logger: Logger

    init(
        events: WebSocketController, hub: RealtimeHub, limiter: RateLimiter, handshakeRule: RateLimit?, pingInterval: Duration = .seconds(25),
        pingTimeout: Duration = .seconds(20), maxPayload: Int = 1_000_000, logger: Logger
    ) {
        self.events = events
        self.hub = hub
        self.limiter = limiter
        self.handshakeRule = handshakeRule
        self.pingInterval = pingInterval
        self.pingTimeout = pingTimeout
        self.maxPayload = maxPayload
        self.logger = logger
    }

    var sessionCount: Int { sessions.withLock { $0.count } }

    /// Long-polling routes; WebSocket upgrades come through `webSocketDecision`.
    func addRoutes(to router: Router<ChatRequestContext>) {
        router.get("socket.io", use: poll)
        router.post("socket.io", use: receive)
        router.on("socket.io", method: .put) { _, _ in Self.engineError(2, "Bad handshake method") }
        router.on("socket.io", method: .delete) { _, _ in Self.engineError(2, "Bad handshake method") }
    }

    // MARK: Engine.IO over HTTP long-polling

    static func engineError(_ code: Int, _ message: String, status: HTTPResponse.Status = .badRequest) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
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

    /// A new session from `ip` may open: the per-address handshake rate and cap on sessions that have not
    /// authenticated.
    private func admitHandshake(ip: String) throws {
        if let handshakeRule { try limiter.take("realtime:ip:\(ip)", rule: handshakeRule).enforce() }
        guard hub.mayOpenUnauthenticated(ip: ip) else {
            throw APIError(
                .tooManyRequests, code: "too_many_connections",
                message: "at most \(hub.maxUnauthenticatedPerIP) unauthenticated realtime connections per address", headers: [.retryAfter: "5"]
            )
        }
    }

    @Sendable func poll(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let (sid, error) = validate(request)
        if let error { return error }
        guard let sid else {
            try admitHandshake(ip: context.clientKey)
            let session = open(clientIP: context.clientKey, socket: nil)
            return Self.text(EnginePacket.open(handshake(session, upgrades: ["websocket"]).jsonText()).encoded)
        }
        guard let session = session(sid), !session.isClosed else {
            if let tombstone = tombstones.withLock({ $0.removeValue(forKey: sid) }), ContinuousClock.now - tombstone.at < Self.tombstoneLife {
                return Self.text(tombstone.answer)
            }
            return Self.engineError(1, "Session ID unknown")
        }
        guard !session.isUpgraded else { return Self.engineError(3, "Bad request") }
        guard session.beginPoll() else {
            // Two concurrent polls break the protocol: the reference closes the session.
            end(session, code: 1008, reason: "concurrent polls", byClient: false)
            return Self.engineError(3, "Bad request")
        }
        defer { session.endPoll() }
        await session.waitForPackets(timeout: pingInterval + pingTimeout)
        if let packets = session.finishPoll() { return Self.text(packets.joined(separator: String(EnginePacket.separator))) }
        if session.isClosed, !session.closedByClient { return Self.text(EnginePacket.close.encoded) }
        // Released by an upgrade, by the client's own close, or by the deadline: nothing to say.
        return Self.text(EnginePacket.noop.encoded)
    }

    @Sendable func receive(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let (sid, error) = validate(request)
        if let error { return error }
        guard let sid, let session = session(sid), !session.isClosed else { return Self.engineError(1, "Session ID unknown") }
        guard !session.isUpgraded else { return Self.engineError(3, "Bad request") }
        guard session.beginPost() else {
            // Two POSTs at once would be processed out of order: the reference refuses and closes.
            end(session, code: 1008, reason: "concurrent posts", byClient: false)
            return Self.engineError(3, "Bad request")
        }
        defer { session.endPost() }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: maxPayload)
        } catch {
            return Self.engineError(3, "Payload too large", status: .contentTooLarge)
        }
        guard let packets = try? EnginePacket.decodePayload(String(buffer: body)) else {
            end(session, code: 1008, reason: "malformed packet", byClient: false)
            return Self.engineError(3, "Bad request")
        }
        for packet in packets {
            await handle(packet, session: session)
            if session.isClosed { break }
        }
        return Self.text("ok")
    }

    /// Opens a session; `socket` when it starts directly on a WebSocket.
    func open(clientIP: String, socket: WebSocketSocket?) -> EngineSession {
        let session = EngineSession(
            sid: Base64.urlEncode(Crypto.randomBytes(15)), clientIP: clientIP, eventLoop: socket?.channel.eventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
        )
        session.attach(makeClient(for: session))
        if let socket { session.upgrade(to: socket) }
        sessions.withLock { $0[session.sid] = session }
        startPings(session)
        return session
    }

    /// The realtime client of a session's connection to the main namespace, tracked from now: it counts
    /// against its address and must authenticate in time.
    private func makeClient(for session: EngineSession) -> RealtimeClient {
        let client = RealtimeClient(maxQueued: events.maxQueued, clientIP: session.clientIP) { [weak session, weak self] item, client in
            guard let session else { return }
            switch item {
            case .text(let frame):
                // An ack nobody asked for is not sent, nor is anything while the client is not connected to
                // the namespace; the frame still leaves the queue.
                let packet = session.isConnected ? frame.socketIOPacket : nil
                session.push(packet.map { [$0] } ?? [], frames: 1, client: client)
            case .close(let code, let reason):
                // The Socket.IO disconnect (when connected to the namespace), then the end of the Engine.IO session.
                let disconnect = session.isConnected ? ["4" + SocketIOPacket(kind: .disconnect).encoded] : []
                session.push(session.isUpgraded ? disconnect : disconnect + [EnginePacket.close.encoded])
                self?.end(session, code: UInt16(code), reason: reason, byClient: false)
            }
        }
        hub.track(client)
        return client
    }

    private func startPings(_ session: EngineSession) {
        session.schedulePing(interval: pingInterval, timeout: pingTimeout) { [weak self, weak session] in
            guard let self, let session else { return }
            self.end(session, code: 1000, reason: "ping timeout", byClient: false)
        }
    }

    func handshake(_ session: EngineSession, upgrades: [String]) -> JSONValue {
        .object([
            "sid": .string(session.sid), "upgrades": .array(upgrades.map(JSONValue.string)),
            "pingInterval": .int(Int64(pingInterval.components.seconds * 1000)),
            "pingTimeout": .int(Int64(pingTimeout.components.seconds * 1000)), "maxPayload": .int(Int64(maxPayload)),
        ])
    }

    /// How long an ended polling session answers its client's next poll.
    static let tombstoneLife: Duration = .seconds(5)

    /// Ends a session: its Socket.IO connection leaves every room.
    func end(_ session: EngineSession, code: UInt16, reason: String, byClient: Bool) {
        // A poll pending now answers with what is queued; one on its way gets it from the tombstone below.
        let pollPending = session.isPolling
        session.close(code: code, reason: reason, byClient: byClient)
        // Leaving the registry happens once, whoever closed the session first.
        guard sessions.withLock({ $0.removeValue(forKey: session.sid) }) != nil else { return }
        if let client = session.client { leaveRooms(client) }
        // An orderly close by the server (its disconnect and close packets queued) is delivered to the
        // next poll, as the reference flushes its buffer before closing; a session failed for a protocol
        // error or a ping timeout is simply gone (400).
        guard !session.isUpgraded else { return }
        let queued = session.takeBufferedUnlessPolling()
        if byClient, pollPending { return }
        let answer = byClient ? EnginePacket.noop.encoded
            : queued?.last == EnginePacket.close.encoded ? queued!.joined(separator: String(EnginePacket.separator)) : nil
        if let answer {
            let now = ContinuousClock.now
            tombstones.withLock { kept in
                kept = kept.filter { now - $0.value.at < Self.tombstoneLife }
                kept[session.sid] = (now, answer)
            }
        }
    }

    private func leaveRooms(_ client: RealtimeClient) {
        for room in hub.remove(client) {
            if let user = client.identity?.subject { hub.announcePresence(session: room, user: user, online: false) }
        }
    }

    // MARK: Packets

    func handle(_ packet: EnginePacket, session: EngineSession) async {
        switch packet {
        case .message(let text):
            guard let sio = try? SocketIOPacket.decode(text) else {
                logger.debug("malformed Socket.IO packet; closing", metadata: ["sid": .string(session.sid)])
                end(session, code: 1008, reason: "malformed packet", byClient: false)
                return
            }
            await handle(sio, session: session)
        case .pong:
            session.receivedPong(interval: pingInterval, timeout: pingTimeout) { [weak self, weak session] in
                guard let self, let session else { return }
                self.end(session, code: 1000, reason: "ping timeout", byClient: false)
            }
        case .noop, .ping, .open:
            break
        case .close:
            end(session, code: 1000, reason: "client closed", byClient: true)
        case .upgrade:
            // An upgrade outside the WebSocket probe is a protocol error.
            end(session, code: 1008, reason: "unexpected upgrade packet", byClient: false)
        case .binaryMessage:
            refuseBinary(session)
        }
    }

    /// Binary attachments are not supported: the client is told, then the session ends.
    func refuseBinary(_ session: EngineSession) {
        session.client?.send(.error(id: nil, APIError(.badRequest, code: "unsupported_frame", message: "binary attachments are not supported")))
        end(session, code: 1008, reason: "binary attachments are not supported", byClient: false)
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
                    let claims = try await events.verify("Bearer " + text, client: client, logger: logger)
                    try events.authenticate(client, claims: claims)
                }
                // Reconnecting with the session and the last message seen: checked before the CONNECT is
                // answered, so a refusal is a CONNECT_ERROR instead of the CONNECT.
                func uuid(_ key: String) throws -> UUID? {
                    guard let value = auth[key], value != .null else { return nil }
                    guard case .string(let text) = value, let id = UUID(text: text) else { throw APIError.invalid(key, "must be a UUID") }
                    return id
                }
                let rejoin = try uuid("sessionId"), last = try uuid("lastMessageId")
                if let rejoin {
                    guard let claims = client.identity else { throw APIError.unauthenticated }
                    guard let found = try await events.store.session(id: rejoin), SessionAccess.read.allows(found, userId: claims.subject, role: claims.role)
                    else { throw APIError.notFound("session") }
                }
                session.setConnected(true)
                // Each connection to the namespace has its own Socket.IO id, distinct from the Engine.IO sid.
                let socketId = Base64.urlEncode(Crypto.randomBytes(15))
                session.push(["4" + SocketIOPacket(kind: .connect, data: .object(["sid": .string(socketId)])).encoded])
                if let rejoin, let claims = client.identity {
                    do {
                        try await events.join(client, claims: claims, session: rejoin, after: last, requestId: nil)
                    } catch {
                        // Changed in the moment since the check: connected, without the room.
                        client.send(.error(id: nil, APIError.from(error) ?? .notFound("session")))
                    }
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
                    client.send(.error(id: packet.ackId.map { .int(Int64($0)) }, error))
                    return
                }
                fields = payload
            }
            fields["type"] = .string(name)
            fields["id"] = packet.ackId.map { .int(Int64($0)) } ?? .null
            if fields["id"] == .null { fields["id"] = nil }
            await events.handle(fields, client: client, logger: logger)
        case .disconnect:
            // The client leaves the main namespace; the Engine.IO session stays (it may CONNECT again).
            guard session.isConnected else { return }
            session.setConnected(false)
            leaveRooms(client)
            // Not connected to the namespace is as good as never authenticated: the session counts against
            // its address again and must CONNECT and authenticate within the timeout, or it is closed.
            session.attach(makeClient(for: session))
        case .binaryEvent, .binaryAck:
            refuseBinary(session)
        case .ack, .connectError:
            break
        }
    }

    // MARK: Engine.IO over WebSocket

    /// The decision on a WebSocket upgrade of `/socket.io/`: a new session, or the upgrade of a polling one.
    func webSocketDecision(_ request: HTTPRequest, clientIP: String) -> WebSocketUpgradeDecision {
        let query = URI(request.path ?? "").queryParameters
        guard query["EIO"] == "4" else {
            return .refuse(APIError(.badRequest, code: "bad_request", message: "Unsupported protocol version"))
        }
        guard query["transport"] == "websocket" else {
            return .refuse(APIError(.badRequest, code: "bad_request", message: "Transport unknown"))
        }
        var upgrading: EngineSession?
        if let sid = query["sid"].map(String.init) {
            guard let existing = session(sid), !existing.isClosed else {
                return .refuse(APIError(.badRequest, code: "bad_request", message: "Session ID unknown"))
            }
            upgrading = existing
        } else {
            do { try admitHandshake(ip: clientIP) } catch { return .refuse(APIError.from(error) ?? .unauthenticated) }
        }
        return .accept(WebSocketEndpoint(maxMessageBytes: maxPayload, pingInterval: nil) { [self] socket in
            EngineWebSocket(controller: self, socket: socket, upgrading: upgrading, clientIP: clientIP)
        })
    }
}

/// Engine.IO on a WebSocket: a session opened on it, or the upgrade of a polling session
/// (`2probe` → `3probe`, then `5`).
final class EngineWebSocket: WebSocketApplication {
    private enum Phase {
        case open(EngineSession)
        case probing(EngineSession)
        case awaitingUpgrade(EngineSession)
        case done
    }

    private let controller: SocketIOController
    private let socket: WebSocketSocket
    private var phase: Phase

    init(controller: SocketIOController, socket: WebSocketSocket, upgrading: EngineSession?, clientIP: String) {
        self.controller = controller
        self.socket = socket
        if let upgrading {
            if upgrading.beginProbe() {
                phase = .probing(upgrading)
            } else {
                // The session has (or is getting) its WebSocket: this one is ignored, as the reference does.
                phase = .done
                socket.close(code: 1008, reason: "the session is already upgrading or upgraded")
            }
        } else {
            let session = controller.open(clientIP: clientIP, socket: socket)
            phase = .open(session)
            // Opened on the WebSocket: there is nothing to upgrade to.
            socket.send(EnginePacket.open(controller.handshake(session, upgrades: []).jsonText()).encoded)
        }
    }

    func received(text: String) {
        switch phase {
        case .open(let session):
            guard let packet = try? EnginePacket.decode(Substring(text)) else {
                controller.end(session, code: 1008, reason: "malformed packet", byClient: false)
                phase = .done
                return
            }
            let controller = self.controller
            let socket = self.socket
            session.enqueue(packet, handle: { packet in await controller.handle(packet, session: session) }, setReading: { socket.setReading($0) })
        case .probing(let session):
            guard text == "2probe", !session.isClosed else { return failUpgrade(session) }
            socket.send("3probe")
            session.setUpgrading(true)
            phase = .awaitingUpgrade(session)
        case .awaitingUpgrade(let session):
            guard text == "5", !session.isClosed else { return failUpgrade(session) }
            session.upgrade(to: socket)
            phase = .open(session)
        case .done:
            break
        }
    }

    private func failUpgrade(_ session: EngineSession) {
        session.setUpgrading(false)
        session.endProbe()
        phase = .done
        socket.close(code: 1008, reason: "upgrade failed")
    }

    func received(binary: ByteBuffer) {
        switch phase {
        case .open(let session):
            controller.refuseBinary(session)
            phase = .done
        case .probing(let session), .awaitingUpgrade(let session):
            failUpgrade(session)
        case .done:
            break
        }
    }

    func closed() {
        switch phase {
        case .open(let session):
            controller.end(session, code: 1000, reason: "transport closed", byClient: true)
        case .probing(let session), .awaitingUpgrade(let session):
            session.setUpgrading(false)
            session.endProbe()
        case .done:
            break
        }
        phase = .done
    }
}
