#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import ServiceLifecycle
import Storage
import Synchronization

/// The ids of the last 512 messages seen, to send each message once.
struct RecentIDs {
    var order: [UUID] = []
    var set: Set<UUID> = []
    var newest: UUID?

    /// Records an id; false when it was recorded already.
    mutating func insert(_ id: UUID) -> Bool {
        guard set.insert(id).inserted else { return false }
        order.append(id)
        if order.count > 512 { set.remove(order.removeFirst()) }
        if newest.map({ id.lowercased > $0.lowercased }) ?? true { newest = id }
        return true
    }
}

/// One server event as `/ws` JSON text. Fan-out hands the same frame to every connection, so the
/// Socket.IO form is made once, by the first Socket.IO connection that needs it, and shared.
final class RealtimeFrame: Sendable {
    let json: String
    private let socketIO = Mutex<([String], Int)?>(nil)

    init(_ json: String) {
        self.json = json
    }

    /// The frame converted with `convert`, computed once.
    func socketIOPackets(_ convert: (String) -> ([String], Int)) -> ([String], Int) {
        if let cached = socketIO.withLock({ $0 }) { return cached }
        let made = convert(json)
        socketIO.withLock { $0 = made }
        return made
    }
}

/// What a connection's writer sends next.
enum OutboundItem: Sendable {
    case text(RealtimeFrame)
    /// Close the connection with a code and reason (1001 going away, 1008 policy, 1013 slow consumer).
    case close(code: Int, reason: String)
}

/// One realtime connection (a /ws socket or a Socket.IO client) as the hub sees it.
///
/// Outbound frames go through a bounded queue: a client that stops reading is disconnected when the queue
/// is full, so it can never make the server hold more than `maxQueued` frames for it.
final class RealtimeClient: Sendable {
    let id: UInt64
    let created = ContinuousClock.now
    private let queued = Atomic<Int>(0)
    private let maxQueued: Int
    /// Drops the connection at once (a client that stopped reading cannot even receive a close frame).
    private let abort: @Sendable () -> Void
    private struct State {
        var identity: AccessClaims?
        var sessions: Set<UUID> = []
        /// Live messages held back per session while missed ones are replayed from storage.
        var recovering: [UUID: [(UUID, RealtimeFrame)]] = [:]
        /// Per session, messages this connection was sent lately (replay and live can overlap).
        var delivered: [UUID: RecentIDs] = [:]
        var lastTyping: [UUID: ContinuousClock.Instant] = [:]
    }
    private let state = Mutex(State())

    private static let nextID = Atomic<UInt64>(1)

    /// Where frames go: written to the /ws channel, or buffered by a Socket.IO session. The writer
    /// calls `didSend` once a frame has left the queue.
    private let sink: @Sendable (OutboundItem) -> Void

    init(maxQueued: Int, abort: @escaping @Sendable () -> Void = {}, sink: @escaping @Sendable (OutboundItem) -> Void) {
        self.id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        self.maxQueued = maxQueued
        self.abort = abort
        self.sink = sink
    }

    private func emit(_ item: OutboundItem) {
        sink(item)
    }

    var identity: AccessClaims? { state.withLock { $0.identity } }
    var sessions: Set<UUID> { state.withLock { $0.sessions } }

    func setIdentity(_ claims: AccessClaims) { state.withLock { $0.identity = claims } }

    /// Queues a frame; false (and the connection is dropped) when the client is too far behind.
    @discardableResult
    func send(_ text: String) -> Bool {
        send(RealtimeFrame(text))
    }

    /// Queues a frame shared with other connections.
    @discardableResult
    func send(_ frame: RealtimeFrame) -> Bool {
        if queued.wrappingAdd(1, ordering: .relaxed).newValue > maxQueued {
            emit(.close(code: 1013, reason: "too slow: outbound queue full"))
            abort()
            return false
        }
        emit(.text(frame))
        return true
    }

    /// The writer took a frame off the queue.
    func didSend(_ count: Int = 1) { queued.wrappingSubtract(count, ordering: .relaxed) }

    /// Ends the connection after what is queued, with a close frame.
    func close(code: Int, reason: String) {
        emit(.close(code: code, reason: reason))
    }

    // MARK: Rooms

    func joined(_ session: UUID, recovering: Bool) {
        state.withLock {
            $0.sessions.insert(session)
            if recovering { $0.recovering[session] = [] }
        }
    }

    func left(_ session: UUID) {
        state.withLock {
            $0.sessions.remove(session)
            $0.recovering[session] = nil
            $0.delivered[session] = nil
        }
    }

    /// A live message for a session: sent now (once), or held while that session is recovering.
    func deliver(messageId: UUID, session: UUID, frame: RealtimeFrame) {
        state.withLock { s in
            if s.recovering[session] != nil {
                s.recovering[session]!.append((messageId, frame))
            } else if s.delivered[session, default: RecentIDs()].insert(messageId) {
                // Sent under the lock, so live messages and the end of a replay keep their order.
                send(frame)
            }
        }
    }

    /// Sends one replayed message, waiting while the queue is nearly full (a replay can be longer than
    /// the queue). False when the client stopped reading and was dropped.
    func replay(messageId: UUID, session: UUID, text: String) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while queued.load(ordering: .relaxed) >= maxQueued - 1 {
            guard ContinuousClock.now < deadline, !Task.isCancelled else {
                send(text)  // overflows: drops the connection
                return false
            }
            try? await Task.sleep(for: .milliseconds(2))
        }
        let fresh = state.withLock { $0.delivered[session, default: RecentIDs()].insert(messageId) }
        return fresh ? send(text) : true
    }

    /// Replay is done: sends the held live messages that were not replayed, in order.
    func finishRecovery(_ session: UUID) {
        state.withLock { s in
            let held = s.recovering.removeValue(forKey: session) ?? []
            for (id, frame) in held where s.delivered[session, default: RecentIDs()].insert(id) {
                send(frame)
            }
        }
    }

    /// Whether a typing event may go out now (at most one per session every 500 ms).
    func mayType(in session: UUID) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { s in
            if let last = s.lastTyping[session], now - last < .milliseconds(500) { return false }
            s.lastTyping[session] = now
            return true
        }
    }
}

/// Connections by chat session. Messages are stored first, then published here; every connection joined to
/// the session gets them through its bounded queue.
public final class RealtimeHub: Sendable {
    private struct State {
        var rooms: [UUID: [UInt64: RealtimeClient]] = [:]
        var clients: [UInt64: RealtimeClient] = [:]
        var perUser: [UUID: Int] = [:]
        /// Every open connection, authenticated or not, for the lifetime sweep.
        var live: [UInt64: RealtimeClient] = [:]
        /// Per room, the ids published lately, so a message announced twice (locally and by the change feed
        /// after a resync) goes out once.
        var recent: [UUID: RecentIDs] = [:]
    }

    private let state = Mutex(State())
    /// Connections one user may hold at once.
    public let maxConnectionsPerUser: Int

    public init(maxConnectionsPerUser: Int = 20) {
        self.maxConnectionsPerUser = maxConnectionsPerUser
    }

    /// Number of open connections.
    public var connectionCount: Int { state.withLock { $0.clients.count } }

    /// Starts watching a new connection's lifetime (see `sweepLifetimes`).
    func track(_ client: RealtimeClient) {
        state.withLock { $0.live[client.id] = client }
    }

    /// Closes connections that did not authenticate within `authTimeout`, and those whose token expired.
    /// One pass over all connections replaces a timer per connection.
    func sweepLifetimes(authTimeout: Duration) {
        let now = ContinuousClock.now
        let nowSeconds = Int64(Date().timeIntervalSince1970)
        let live = state.withLock { Array($0.live.values) }
        for client in live {
            if let claims = client.identity {
                if claims.expiresAt <= nowSeconds {
                    state.withLock { _ = $0.live.removeValue(forKey: client.id) }
                    client.send(RealtimeEvent.error(nil, APIError(.unauthorized, code: "token_expired", message: "token expired; reconnect with a fresh one")))
                    client.close(code: 1008, reason: "token expired")
                }
            } else if now - client.created > authTimeout {
                state.withLock { _ = $0.live.removeValue(forKey: client.id) }
                client.send(RealtimeEvent.error(nil, APIError(.unauthorized, code: "authentication_timeout", message: "authenticate within \(authTimeout)")))
                client.close(code: 1008, reason: "authentication timeout")
            }
        }
    }

    /// Counts an authenticated connection against its user's cap; false when the cap is reached.
    func admit(_ client: RealtimeClient, userId: UUID) -> Bool {
        state.withLock { s in
            if s.clients[client.id] != nil { return true }
            let count = s.perUser[userId, default: 0]
            guard count < maxConnectionsPerUser else { return false }
            s.perUser[userId] = count + 1
            s.clients[client.id] = client
            return true
        }
    }

    /// Removes a connection from every room; returns the sessions it was in.
    @discardableResult
    func remove(_ client: RealtimeClient) -> Set<UUID> {
        let sessions = client.sessions
        state.withLock { s in
            s.live[client.id] = nil
            guard s.clients.removeValue(forKey: client.id) != nil else { return }
            if let user = client.identity?.subject {
                s.perUser[user] = max(0, s.perUser[user, default: 1] - 1)
                if s.perUser[user] == 0 { s.perUser[user] = nil }
            }
            for session in sessions {
                s.rooms[session]?[client.id] = nil
                if s.rooms[session]?.isEmpty == true {
                    s.rooms[session] = nil
                    s.recent[session] = nil
                }
            }
        }
        return sessions
    }

    func join(_ client: RealtimeClient, session: UUID, recovering: Bool) {
        client.joined(session, recovering: recovering)
        state.withLock { $0.rooms[session, default: [:]][client.id] = client }
    }

    func leave(_ client: RealtimeClient, session: UUID) {
        client.left(session)
        state.withLock { s in
            s.rooms[session]?[client.id] = nil
            if s.rooms[session]?.isEmpty == true {
                s.rooms[session] = nil
                s.recent[session] = nil
            }
        }
    }

    /// Rooms with connections, and the newest message id each has published (nil: none yet).
    func activeRooms() -> [(session: UUID, newest: UUID?)] {
        state.withLock { s in s.rooms.keys.map { ($0, s.recent[$0]?.newest) } }
    }

    private func members(_ session: UUID) -> [RealtimeClient] {
        state.withLock { s in s.rooms[session].map { Array($0.values) } ?? [] }
    }

    /// Publishes a stored message to every connection joined to its session (but `exceptClient`), once.
    func publish(message: ChatMessage, exceptClient: UInt64? = nil) {
        let targets = state.withLock { s -> [RealtimeClient] in
            guard let room = s.rooms[message.sessionId] else { return [] }
            guard s.recent[message.sessionId, default: RecentIDs()].insert(message.id) else { return [] }
            return room.values.filter { $0.id != exceptClient }
        }
        guard !targets.isEmpty else { return }
        let frame = RealtimeFrame(RealtimeEvent.message(message))
        for client in targets { client.deliver(messageId: message.id, session: message.sessionId, frame: frame) }
    }

    /// Sends an event to the session's connections except those of `exceptUser`.
    func broadcast(_ text: String, session: UUID, exceptUser: UUID?) {
        let frame = RealtimeFrame(text)
        for client in members(session) where exceptUser == nil || client.identity?.subject != exceptUser {
            client.send(frame)
        }
    }

    /// Closes every connection authenticated with the token `jti`, or with any token of the login
    /// `family` (they were revoked).
    public func disconnect(jti: String? = nil, family: UUID? = nil) {
        guard jti != nil || family != nil else { return }
        let targets = state.withLock { s in
            s.clients.values.filter { client in
                guard let identity = client.identity else { return false }
                return (jti != nil && identity.jti == jti) || (family != nil && identity.family == family)
            }
        }
        for client in targets { client.close(code: 1008, reason: "token revoked") }
    }

    /// Closes every connection with 1001 (server going away).
    public func closeAll() {
        let targets = state.withLock { Array($0.clients.values) }
        for client in targets { client.close(code: 1001, reason: "server shutting down") }
    }
}

/// Server events as JSON text.
enum RealtimeEvent {
    static func message(_ m: ChatMessage) -> String {
        JSONValue.object(["type": "message", "message": Wire.message(m)]).jsonText()
    }

    static func typing(session: UUID, user: UUID, isTyping: Bool) -> String {
        JSONValue.object(["type": "typing", "sessionId": .string(session.lowercased), "userId": .string(user.lowercased), "isTyping": .bool(isTyping)]).jsonText()
    }

    /// An agent is working on a reply (`isTyping` true) or has finished; `userId` is null.
    static func agentTyping(session: UUID, agent: String, isTyping: Bool) -> String {
        JSONValue.object([
            "type": "typing", "sessionId": .string(session.lowercased), "userId": .null, "agent": .string(agent), "isTyping": .bool(isTyping),
        ]).jsonText()
    }

    static func presence(session: UUID, user: UUID, status: String) -> String {
        JSONValue.object(["type": "presence", "sessionId": .string(session.lowercased), "userId": .string(user.lowercased), "status": .string(status)]).jsonText()
    }

    /// A part of an agent's reply while it is produced; the stored message carries `metadata.streamId`.
    static func delta(session: UUID, streamId: UUID, agent: String, index: Int, text: String) -> String {
        JSONValue.object([
            "type": "message.delta", "sessionId": .string(session.lowercased), "streamId": .string(streamId.lowercased),
            "agent": .string(agent), "index": .int(Int64(index)), "delta": .string(text),
        ]).jsonText()
    }

    static func ack(_ id: JSONValue?, _ fields: [String: JSONValue] = [:]) -> String {
        var body = fields
        body["type"] = "ack"
        body["id"] = id ?? .null
        return JSONValue.object(body).jsonText()
    }

    static func error(_ id: JSONValue?, _ error: APIError) -> String {
        var body: [String: JSONValue] = ["type": "error", "id": id ?? .null]
        body["error"] = .object(["code": .string(error.code), "message": .string(error.message), "details": error.details ?? .null])
        return JSONValue.object(body).jsonText()
    }
}

/// Runs the hub's lifetime sweep twice a second.
struct RealtimeSweeper: Service {
    let hub: RealtimeHub
    let authTimeout: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(500)) }
            hub.sweepLifetimes(authTimeout: authTimeout)
        }
    }
}
