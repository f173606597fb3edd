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
    static let capacity = 512
    var order: [UUID] = []
    var set: Set<UUID> = []
    var newest: UUID?

    /// It remembers as many as it can: older ids than `oldest` are forgotten.
    var isFull: Bool { order.count >= Self.capacity }
    var oldest: UUID? { order.min { $0.lowercased < $1.lowercased } }

    /// Records an id; false when it was recorded already.
    mutating func insert(_ id: UUID) -> Bool {
        guard set.insert(id).inserted else { return false }
        order.append(id)
        if order.count > Self.capacity { set.remove(order.removeFirst()) }
        if newest.map({ id.lowercased > $0.lowercased }) ?? true { newest = id }
        return true
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
    /// The peer's address, for the per-address cap on connections that have not authenticated.
    let clientIP: String
    private let queued = Atomic<Int>(0)
    private let maxQueued: Int
    /// Set once the client fell too far behind and its close was queued.
    private let overflowed = Atomic<Bool>(false)
    private struct State {
        var identity: AccessClaims?
        var sessions: Set<UUID> = []
        /// Live messages held back per session while missed ones are replayed from storage.
        var recovering: [UUID: [(UUID, RealtimeFrame)]] = [:]
        /// Per session, messages this connection was sent lately (replay and live can overlap).
        var delivered: [UUID: RecentIDs] = [:]
        var typing: [UUID: TypingGate] = [:]
    }
    /// Per session: when a typing event last went out and what it said, a change held for the window's end,
    /// and the task that sends it then (cancelled when the connection leaves the session or is gone).
    private struct TypingGate {
        var sentAt: ContinuousClock.Instant
        var sent: Bool
        var held: Bool?
        var flush: Task<Void, Never>?
    }
    private let state = Mutex(State())
    /// Live frames in the order the room decided them (under `state`), sent after the lock is released:
    /// the sink (a channel write, a Socket.IO buffer) is never called while `state` is held.
    private let outbox = DrainQueue<RealtimeFrame>()

    private static let nextID = Atomic<UInt64>(1)

    /// Where frames go: written to the WebSocket, or buffered by a Socket.IO session. The writer calls
    /// `didSend` on the client it is given once a frame has left the queue.
    private let sink: @Sendable (OutboundItem, RealtimeClient) -> Void

    init(maxQueued: Int, clientIP: String = "unknown", sink: @escaping @Sendable (OutboundItem, RealtimeClient) -> Void) {
        self.id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        self.maxQueued = maxQueued
        self.clientIP = clientIP
        self.sink = sink
    }

    private func emit(_ item: OutboundItem) {
        sink(item, self)
    }

    var identity: AccessClaims? { state.withLock { $0.identity } }
    var sessions: Set<UUID> { state.withLock { $0.sessions } }

    func setIdentity(_ claims: AccessClaims) { state.withLock { $0.identity = claims } }

    /// Queues an event; false (and the connection is dropped) when the client is too far behind.
    @discardableResult
    func send(_ event: ServerEvent) -> Bool {
        send(RealtimeFrame(event))
    }

    /// Queues a frame shared with other connections. A client whose queue is full gets no more frames but
    /// a close (1013) after those already queued, and is dropped.
    @discardableResult
    func send(_ frame: RealtimeFrame) -> Bool {
        if queued.wrappingAdd(1, ordering: .relaxed).newValue > maxQueued {
            queued.wrappingSubtract(1, ordering: .relaxed)
            if overflowed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                emit(.close(code: 1013, reason: "too slow: outbound queue full"))
            }
            return false
        }
        guard !overflowed.load(ordering: .relaxed) else {
            queued.wrappingSubtract(1, ordering: .relaxed)
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

    /// Leaves `session`; true when the others there last heard this connection typing (they must hear it stopped).
    @discardableResult
    func left(_ session: UUID) -> Bool {
        state.withLock {
            $0.sessions.remove(session)
            $0.recovering[session] = nil
            $0.delivered[session] = nil
            let gate = $0.typing.removeValue(forKey: session)
            gate?.flush?.cancel()
            return gate?.sent ?? false
        }
    }

    /// A live message for a session: sent now (once), or held while that session is recovering.
    func deliver(messageId: UUID, session: UUID, frame: RealtimeFrame) {
        let drain = state.withLock { s -> Bool in
            if s.recovering[session] != nil {
                s.recovering[session]!.append((messageId, frame))
                return false
            }
            // Queued under the lock, so live messages and the end of a replay keep their order.
            return s.delivered[session, default: RecentIDs()].insert(messageId) && outbox.push(frame) == .drain
        }
        if drain { sendOutbox() }
    }

    /// Sends what `deliver` and `finishRecovery` queued, in order, one drainer at a time.
    private func sendOutbox() {
        outbox.drain { frames in for frame in frames { send(frame) } }
    }

    /// Sends one replayed message, waiting while the queue is nearly full (a replay can be longer than
    /// the queue): true when sent, false when the connection has it already, nil when the client stopped
    /// reading and was dropped.
    func replay(_ message: ChatMessage) async -> Bool? {
        let (messageId, session) = (message.id, message.sessionId)
        guard await waitForRoom(below: maxQueued - 1) else {
            send(.message(message))  // overflows: drops the connection
            return nil
        }
        let fresh = state.withLock { $0.delivered[session, default: RecentIDs()].insert(messageId) }
        guard fresh else { return false }
        return send(.message(message)) ? true : nil
    }

    /// Waits while `limit` or more frames are queued for this client, for at most 30 s: false when it did
    /// not read them in that time (or was dropped already). What the server sends in bulk (a replay) or in
    /// answer to the client's own events waits here, so a client that reads is never dropped for what
    /// it asked for; one that does not read is, once the wait is over.
    func waitForRoom(below limit: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while queued.load(ordering: .relaxed) >= limit {
            guard ContinuousClock.now < deadline, !Task.isCancelled, !overflowed.load(ordering: .relaxed) else { return false }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return true
    }

    /// Room for the replies to a client's events: half the queue, the rest kept for what others send.
    var replyRoom: Int { max(1, maxQueued / 2) }

    /// Replay is done: sends the held live messages that were not replayed, in order.
    func finishRecovery(_ session: UUID) {
        let drain = state.withLock { s -> Bool in
            let held = s.recovering.removeValue(forKey: session) ?? []
            var drain = false
            for (id, frame) in held where s.delivered[session, default: RecentIDs()].insert(id) {
                drain = outbox.push(frame) == .drain || drain
            }
            return drain
        }
        if drain { sendOutbox() }
    }

    static let typingWindow = Duration.milliseconds(500)

    /// At most one typing event per session every 500 ms: `send` is called with the state to send out, now or at
    /// the window's end. A repeat of what went out last is dropped inside the window; a change is held and the
    /// newest state sent at the window's end, so the last state always arrives (a "stopped" right after "started"
    /// is not lost, which would leave the others seeing a typist for seconds). Nothing held goes out after the
    /// connection left the session.
    func typing(in session: UUID, isTyping: Bool, send: @escaping @Sendable (Bool) -> Void) {
        let now = ContinuousClock.now
        let sendNow = state.withLock { s -> Bool in
            guard var gate = s.typing[session], now - gate.sentAt < Self.typingWindow else {
                s.typing[session]?.flush?.cancel()
                s.typing[session] = TypingGate(sentAt: now, sent: isTyping)
                return true
            }
            defer { s.typing[session] = gate }
            gate.held = isTyping == gate.sent ? nil : isTyping
            if gate.held != nil, gate.flush == nil {
                let wait = gate.sentAt + Self.typingWindow - now
                gate.flush = Task { [weak self] in
                    guard (try? await Task.sleep(for: wait)) != nil, let held = self?.flushTyping(in: session) else { return }
                    send(held)
                }
            }
            return false
        }
        if sendNow { send(isTyping) }
    }

    /// Whether the others in `session` last heard this connection typing, less than `recent` ago.
    func isTyping(in session: UUID, within recent: Duration) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { s in s.typing[session].map { $0.sent && now - $0.sentAt < recent } ?? false }
    }

    /// The held typing state to send now (nil: nothing changed, or the session was left meanwhile).
    private func flushTyping(in session: UUID) -> Bool? {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard var gate = s.typing[session], s.sessions.contains(session) else { return nil }
            defer { s.typing[session] = gate }
            gate.flush = nil
            guard let held = gate.held else { return nil }
            gate = TypingGate(sentAt: now, sent: held)
            return held
        }
    }
}

/// Connections by chat session. Messages are stored first, then published here; every connection joined to
/// the session gets them through its bounded queue.
///
/// Each room keeps the session as last seen (owner, assignee, handoff): whatever is sent to a room goes only
/// to connections whose user may read the session now, and when who may read it changes (claim, release,
/// delete, handoff) the connections that no longer may leave the room at once and are told (`left`).
public final class RealtimeHub: Sendable {
    struct Room {
        var members: [UInt64: RealtimeClient] = [:]
        /// The session as last seen by a join or a change; decides who may receive.
        var session: ChatSession?
        /// The ids published lately, so a message announced twice (locally and by the change feed after a
        /// resync) goes out once.
        var recent = RecentIDs()
        /// When the room opened, as a message-id cursor: catching up starts there when nothing was published.
        var opened = UUIDv7.cursor(at: Timestamp.now())
    }

    private struct State {
        var rooms: [UUID: Room] = [:]
        var clients: [UInt64: RealtimeClient] = [:]
        var perUser: [UUID: Int] = [:]
        /// Every open connection, authenticated or not, for the lifetime sweep.
        var live: [UInt64: RealtimeClient] = [:]
        /// Open connections that have not authenticated, per client address.
        var pendingPerIP: [String: Int] = [:]
        var pending: Set<UInt64> = []
    }

    private let state = Mutex(State())
    /// Connections one user may hold at once.
    public let maxConnectionsPerUser: Int
    /// Connections one address may hold before authenticating.
    public let maxUnauthenticatedPerIP: Int

    public init(maxConnectionsPerUser: Int = 20, maxUnauthenticatedPerIP: Int = 64) {
        self.maxConnectionsPerUser = maxConnectionsPerUser
        self.maxUnauthenticatedPerIP = maxUnauthenticatedPerIP
    }

    /// Number of authenticated connections.
    public var connectionCount: Int { state.withLock { $0.clients.count } }

    /// Whether another connection from `ip` may open before authenticating.
    func mayOpenUnauthenticated(ip: String) -> Bool {
        state.withLock { $0.pendingPerIP[ip, default: 0] < maxUnauthenticatedPerIP }
    }

    /// Starts watching a new connection's lifetime (see `sweepLifetimes`); it counts as unauthenticated
    /// for its address until it is admitted.
    func track(_ client: RealtimeClient) {
        state.withLock { s in
            s.live[client.id] = client
            if s.clients[client.id] == nil, s.pending.insert(client.id).inserted { s.pendingPerIP[client.clientIP, default: 0] += 1 }
        }
    }

    private static func release(pending client: RealtimeClient, in s: inout State) {
        guard s.pending.remove(client.id) != nil else { return }
        let left = s.pendingPerIP[client.clientIP, default: 1] - 1
        s.pendingPerIP[client.clientIP] = left > 0 ? left : nil
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
                    client.send(.error(id: nil, APIError(.unauthorized, code: "token_expired", message: "token expired; reconnect with a fresh one")))
                    client.close(code: 1008, reason: "token expired")
                }
            } else if now - client.created > authTimeout {
                state.withLock { _ = $0.live.removeValue(forKey: client.id) }
                client.send(.error(id: nil, APIError(.unauthorized, code: "authentication_timeout", message: "authenticate within \(authTimeout)")))
                client.close(code: 1008, reason: "authentication timeout")
            }
        }
    }

    /// Counts an authenticated connection against its user's cap; false when the cap is reached, or when the
    /// connection is gone (it closed while its token was checked: counted, it would hold a place for good).
    func admit(_ client: RealtimeClient, userId: UUID) -> Bool {
        state.withLock { s in
            if s.clients[client.id] != nil { return true }
            guard s.live[client.id] != nil else { return false }
            let count = s.perUser[userId, default: 0]
            guard count < maxConnectionsPerUser else { return false }
            s.perUser[userId] = count + 1
            s.clients[client.id] = client
            Self.release(pending: client, in: &s)
            return true
        }
    }

    /// Removes a connection from every room; returns the sessions it was in.
    @discardableResult
    func remove(_ client: RealtimeClient) -> Set<UUID> {
        let sessions = client.sessions
        state.withLock { s in
            s.live[client.id] = nil
            Self.release(pending: client, in: &s)
            guard s.clients.removeValue(forKey: client.id) != nil else { return }
            if let user = client.identity?.subject {
                s.perUser[user] = max(0, s.perUser[user, default: 1] - 1)
                if s.perUser[user] == 0 { s.perUser[user] = nil }
            }
            for session in sessions { Self.removeMember(client.id, from: session, in: &s) }
        }
        // Gone from its sessions: nothing held for it (a typing state) goes out after it, and whom it was typing
        // to hear it stopped.
        for session in sessions { stoppedTyping(client, session) }
        return sessions
    }

    private static func removeMember(_ id: UInt64, from session: UUID, in s: inout State) {
        s.rooms[session]?.members[id] = nil
        if s.rooms[session]?.members.isEmpty == true { s.rooms[session] = nil }
    }

    /// Whether the connection's user may read the session as the room knows it.
    private static func mayReceive(_ client: RealtimeClient, _ session: ChatSession?) -> Bool {
        guard let claims = client.identity, let session else { return false }
        return SessionAccess.read.allows(session, userId: claims.subject, role: claims.role)
    }

    /// Adds a connection to the room of `session` (as just read from storage). False, and nothing joined,
    /// when the room already knows a newer state of the session in which the user may not read it, or when
    /// the connection is gone.
    func join(_ client: RealtimeClient, session: ChatSession, recovering: Bool) -> Bool {
        client.joined(session.id, recovering: recovering)
        let joined = state.withLock { s -> Bool in
            // Gone meanwhile (the join read storage while the connection closed): it must not stay in a room.
            guard s.clients[client.id] != nil else { return false }
            var room = s.rooms[session.id] ?? Room()
            if let known = room.session, known.updatedAt > session.updatedAt {
                // A change arrived after the join read the session: the newer state decides.
            } else {
                room.session = session
            }
            guard Self.mayReceive(client, room.session) else { return false }
            room.members[client.id] = client
            s.rooms[session.id] = room
            return true
        }
        if !joined { client.left(session.id) }
        return joined
    }

    func leave(_ client: RealtimeClient, session: UUID) {
        state.withLock { s in Self.removeMember(client.id, from: session, in: &s) }
        stoppedTyping(client, session)
    }

    /// `client` left `session`: if the others there last heard it typing, they hear it stopped.
    private func stoppedTyping(_ client: RealtimeClient, _ session: UUID) {
        guard client.left(session), let user = client.identity?.subject else { return }
        broadcast(.typing(session: session, user: user, agent: nil, isTyping: false), session: session, exceptUser: user)
    }

    /// Who may read a session changed (claim, release, resolve, handoff); `nil` when it was deleted.
    /// Connections that may no longer read it leave its room and get a `left` event with `reason`.
    public func sessionChanged(_ id: UUID, to session: ChatSession?, reason: String) {
        let (evicted, staying) = state.withLock { s -> ([RealtimeClient], [RealtimeClient]) in
            guard var room = s.rooms[id] else { return ([], []) }
            if let session, let known = room.session, known.updatedAt > session.updatedAt { return ([], []) }  // stale news
            room.session = session
            let out = room.members.values.filter { !Self.mayReceive($0, session) }
            for client in out { room.members[client.id] = nil }
            s.rooms[id] = room.members.isEmpty ? nil : room
            return (out, Array(room.members.values))
        }
        for client in evicted {
            stoppedTyping(client, id)
            client.send(.left(session: id, reason: reason))
        }
        for user in Set(evicted.compactMap { $0.identity?.subject }) { announcePresence(session: id, user: user, online: false) }
        if let session, !staying.isEmpty {
            let frame = RealtimeFrame(.sessionUpdated(session: session, reason: reason))
            for client in staying { client.send(frame) }
        }
        if Self.handoffReasons.contains(reason) { notifyStaff(.handoff(session: id, state: session, reason: reason)) }
    }

    /// The session changes that may add a session to the handoff queue or take one out of it.
    static let handoffReasons: Set<String> = ["handoff", "claimed", "released", "resolved", "deleted"]

    /// Sends an event to every connection of an agent or an admin.
    func notifyStaff(_ event: ServerEvent) {
        let staff = state.withLock { s in s.clients.values.filter { $0.identity.map { $0.role == .agent || $0.role == .admin } ?? false } }
        guard !staff.isEmpty else { return }
        let frame = RealtimeFrame(event)
        for client in staff { client.send(frame) }
    }

    /// Whether any connection is joined to the session.
    func hasMembers(_ session: UUID) -> Bool {
        state.withLock { $0.rooms[session] != nil }
    }

    /// For each room with connections, the message id to catch up after: a little before the newest it
    /// published (or its opening), since ids of different instances interleave in time. What was sent
    /// already is dropped by the room's memory of recent ids.
    func catchUpCursors(lookback: Double = 10) -> [(session: UUID, after: UUID)] {
        state.withLock { s in
            s.rooms.map { id, room in
                let base = room.recent.newest ?? room.opened
                var after = UUIDv7.cursor(at: UUIDv7.date(of: base).addingTimeInterval(-lookback))
                // Not behind what the room still remembers sending: older messages of a busy room were sent
                // (the lookback re-read them, past the memory that drops duplicates, and sent them again).
                if room.recent.isFull, let oldest = room.recent.oldest, oldest.lowercased > after.lowercased { after = oldest }
                return (id, after)
            }
        }
    }

    /// The members of a room who may read the session now.
    private func receivers(_ session: UUID) -> [RealtimeClient] {
        state.withLock { s in
            guard let room = s.rooms[session] else { return [] }
            return room.members.values.filter { Self.mayReceive($0, room.session) }
        }
    }

    /// Publishes a stored message to every connection joined to its session (but `exceptClient`), once.
    func publish(message: ChatMessage, exceptClient: UInt64? = nil) {
        let targets = state.withLock { s -> [RealtimeClient] in
            guard var room = s.rooms[message.sessionId] else { return [] }
            guard room.recent.insert(message.id) else { return [] }
            s.rooms[message.sessionId] = room
            return room.members.values.filter { $0.id != exceptClient && Self.mayReceive($0, room.session) }
        }
        guard !targets.isEmpty else { return }
        let frame = RealtimeFrame(.message(message))
        for client in targets { client.deliver(messageId: message.id, session: message.sessionId, frame: frame) }
    }

    /// Sends an event to the session's connections except those of `exceptUser`.
    /// Tells the others in the room that `user` came or went: on their first connection in the room, and
    /// when their last one leaves it (a user with two tabs open stays online while one of them is).
    func announcePresence(session: UUID, user: UUID, online: Bool) {
        let connections = state.withLock { s in s.rooms[session]?.members.values.filter { $0.identity?.subject == user }.count ?? 0 }
        guard online ? connections == 1 : connections == 0 else { return }
        broadcast(.presence(session: session, user: user, status: online ? "online" : "offline"), session: session, exceptUser: user)
    }

    func broadcast(_ event: ServerEvent, session: UUID, exceptUser: UUID?) {
        let frame = RealtimeFrame(event)
        for client in receivers(session) where exceptUser == nil || client.identity?.subject != exceptUser {
            client.send(frame)
        }
    }

    /// Tells every room catching up failed: its connections must rejoin with `lastMessageId`.
    func announceGap(session: UUID) {
        let frame = RealtimeFrame(.resync(session: session))
        for client in receivers(session) { client.send(frame) }
    }

    /// Users heard typing in `session` lately: a connection that joins is told of them rather than waiting for
    /// their next keystroke. Clients repeat `typing` every few seconds while it goes on (the console every 3 s).
    func typists(in session: UUID) -> Set<UUID> {
        let members = state.withLock { s in s.rooms[session].map { Array($0.members.values) } ?? [] }
        return Set(members.filter { $0.isTyping(in: session, within: Self.typingRecent) }.compactMap { $0.identity?.subject })
    }

    static let typingRecent = Duration.seconds(5)

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
        let targets = state.withLock { Array($0.live.values) + Array($0.clients.values) }
        var seen = Set<UInt64>()
        for client in targets where seen.insert(client.id).inserted { client.close(code: 1001, reason: "server shutting down") }
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
