#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Logging
import Storage

/// `/ws`: the plain JSON WebSocket. Client events `authenticate`, `join`, `leave`, `message`, `typing`;
/// server events `message`, `typing`, `presence`, `ack`, `error` (see README, "Realtime").
struct WebSocketController: Sendable {
    let store: any ChatStore
    let hub: RealtimeHub
    let tokens: TokenService
    let messages: MessageService
    let limiter: RateLimiter
    let eventRule: RateLimit?
    var maxQueued = 256
    var maxEventBytes = 256 * 1024
    var maxReplay = 10_000

    /// Authenticates with the `Authorization` header of the upgrade request; a bad token ends the connection.
    func authenticate(_ client: RealtimeClient, header: String, logger: Logger) async {
        do {
            try authenticate(client, claims: try await verify(header, client: client, logger: logger))
        } catch {
            client.send(.error(id: nil, APIError.from(error) ?? .unauthenticated))
            client.close(code: 1008, reason: "authentication failed")
        }
    }

    /// The connection is gone: it leaves its sessions, whose other members see it go offline.
    func disconnected(_ client: RealtimeClient) {
        for session in hub.remove(client) {
            if let user = client.identity?.subject { hub.announcePresence(session: session, user: user, online: false) }
        }
    }

    /// Checks a token a realtime client presents. A refused one counts against the client address's
    /// realtime budget (the API tier, as its handshakes): past it, tokens are refused unchecked (429).
    func verify(_ header: String, client: RealtimeClient, logger: Logger) async throws -> AccessClaims {
        let key = "realtime:ip:\(client.clientIP)"
        if let eventRule { try limiter.peek(key, rule: eventRule).enforce() }
        do {
            return try await tokens.authenticate(authorizationHeader: header, logger: logger)
        } catch {
            if let eventRule { _ = limiter.take(key, rule: eventRule) }
            throw error
        }
    }

    func authenticate(_ client: RealtimeClient, claims: AccessClaims) throws {
        // Admitted first: a connection over the user's cap stays unauthenticated.
        guard hub.admit(client, userId: claims.subject) else {
            throw APIError(.tooManyRequests, code: "too_many_connections", message: "at most \(hub.maxConnectionsPerUser) connections per user")
        }
        client.setIdentity(claims)
    }

    func refuseBinary(_ client: RealtimeClient) {
        client.send(.error(id: nil, APIError(.badRequest, code: "unsupported_frame", message: "send JSON text frames")))
    }

    /// One text frame: a JSON event.
    func receive(text: String, client: RealtimeClient, logger: Logger) async {
        guard case .object(let fields)? = try? JSONValue.parse(bytes: Array(text.utf8)) else {
            client.send(.error(id: nil, APIError(.badRequest, code: "invalid_json", message: "an event is a JSON object")))
            return
        }
        await handle(fields, client: client, logger: logger)
    }

    /// Handles one client event (`type`, optional `id`, fields), whatever transport carried it; the reply
    /// (ack or error) goes to the client's queue.
    func handle(_ fields: [String: JSONValue], client: RealtimeClient, logger: Logger) async {
        // A burst of events is answered as the client reads the answers: its next event waits while the
        // replies to the earlier ones fill half its queue (a client that does not read them is dropped).
        _ = await client.waitForRoom(below: client.replyRoom)
        var requestId: JSONValue?
        do {
            if let id = fields["id"], id != .null {
                // An id that is not one is not echoed back.
                guard id.isInteger || id.stringValue.map({ $0.unicodeScalars.count <= 128 }) == true else {
                    throw APIError.invalid("id", "must be an integer or a string of at most 128 characters")
                }
                requestId = id
            }
            guard case .string(let type)? = fields["type"] else { throw APIError.invalid("type", "is required") }
            let event = JSONBody(fields: fields.filter { $0.key != "type" && $0.key != "id" })
            if let field = event.fields.sorted(by: { $0.key < $1.key }).first(where: { $0.value.containsNUL })?.key {
                throw APIError.invalid(field, "must not contain NUL characters")
            }

            if type == "authenticate" {
                try event.allowOnly(["token"])
                guard client.identity == nil else { throw APIError(.badRequest, code: "already_authenticated", message: "this connection is authenticated") }
                let token = try event.string("token", required: true, length: 1...4096)!
                let claims = try await verify("Bearer " + token, client: client, logger: logger)
                try authenticate(client, claims: claims)
                client.send(.ack(id: requestId, .authenticate(user: claims.subject)))
                return
            }
            guard let claims = client.identity else { throw APIError.unauthenticated }
            if type != "typing", let eventRule {
                try limiter.take("ws:user:\(claims.subject.lowercased)", rule: eventRule).enforce()
            }
            switch type {
            case "join":
                try event.allowOnly(["sessionId", "lastMessageId"])
                let session = try event.uuid("sessionId")
                let last = try event.optionalUUID("lastMessageId")
                try await join(client, claims: claims, session: session, after: last, requestId: requestId)
            case "leave":
                try event.allowOnly(["sessionId"])
                let session = try event.uuid("sessionId")
                guard client.sessions.contains(session) else { throw APIError(.badRequest, code: "not_joined", message: "this connection has not joined that session") }
                hub.leave(client, session: session)
                hub.announcePresence(session: session, user: claims.subject, online: false)
                client.send(.ack(id: requestId, .leave(session: session)))
            case "message":
                try event.allowOnly(["sessionId", "content", "messageType", "metadata", "clientMessageId", "attachments"])
                let session = try event.uuid("sessionId")
                let input = try API.SendMessageRequest(event, typeKey: "messageType")
                try messages.checkRate(userId: claims.subject)
                let (stored, created) = try await messages.send(
                    sessionId: session, userId: claims.subject, role: claims.role, input: input, requestId: "ws-\(client.id)", exceptClient: client.id
                )
                client.send(.ack(id: requestId, .message(stored, duplicate: !created)))
            case "typing":
                try event.allowOnly(["sessionId", "isTyping"])
                let session = try event.uuid("sessionId")
                let isTyping = try event.bool("isTyping") ?? true
                guard client.sessions.contains(session) else { throw APIError(.badRequest, code: "not_joined", message: "join the session first") }
                let user = claims.subject
                client.typing(in: session, isTyping: isTyping) { [hub] state in
                    hub.broadcast(.typing(session: session, user: user, agent: nil, isTyping: state), session: session, exceptUser: user)
                }
            default:
                throw APIError.invalid("type", "unknown event '\(type.prefix(64))'")
            }
        } catch is CancellationError {
            // The connection closed while its event was handled: no one to answer.
        } catch {
            let apiError = APIError.from(error) ?? APIError(.internalServerError, code: "internal_error", message: "internal error")
            if apiError.status.code >= 500 { logger.error("websocket event failed", metadata: ["error": .string(String(reflecting: error))]) }
            client.send(.error(id: requestId, apiError))
        }
    }

    /// Joins a session the user may see; with `after`, first replays every stored message after it, in order,
    /// while live ones wait, so nothing is lost or duplicated across a reconnect.
    func join(_ client: RealtimeClient, claims: AccessClaims, session: UUID, after: UUID?, requestId: JSONValue?) async throws {
        guard let found = try await store.session(id: session), SessionAccess.read.allows(found, userId: claims.subject, role: claims.role),
              hub.join(client, session: found, recovering: after != nil)
        else {
            throw APIError.notFound("session")
        }
        // Messages sent: those the connection had already (live, while it joined) are not counted.
        var replayed = 0
        if let after {
            var cursor = after
            var fetched = 0
            defer { client.finishRecovery(session) }
            while fetched < maxReplay {
                let page = try await store.messages(MessageQuery(sessionId: session, after: cursor, limit: 200))
                for message in page.messages {
                    guard let sent = await client.replay(message) else { return }
                    if sent { replayed += 1 }
                }
                fetched += page.messages.count
                if let last = page.messages.last { cursor = last.id }
                if !page.hasMore { break }
            }
            // Messages the client had that were edited or deleted since (the newest it had was stored then).
            for changed in try await store.changedMessages(sessionId: session, upTo: after, since: UUIDv7.date(of: after), limit: 200) {
                _ = await client.waitForRoom(below: client.replyRoom)
                client.send(.changed(changed))
            }
        }
        client.send(.ack(id: requestId, .join(session: session, replayed: replayed)))
        for typist in hub.typists(in: session) where typist != claims.subject {
            client.send(.typing(session: session, user: typist, agent: nil, isTyping: true))
        }
        hub.announcePresence(session: session, user: claims.subject, online: true)
    }
}

extension JSONValue {
    var stringValue: String? { if case .string(let text) = self { text } else { nil } }
    var isInteger: Bool { if case .int = self { true } else { false } }
}

extension JSONBody {
    func allowOnly(_ keys: Set<String>) throws {
        if let unknown = fields.keys.sorted().first(where: { !keys.contains($0) }) {
            throw APIError.invalid(unknown, "unknown field")
        }
    }

    func uuid(_ key: String) throws -> UUID {
        guard let text = try string(key, required: true, length: 1...64), let id = UUID(text: text) else {
            throw APIError.invalid(key, "must be a UUID")
        }
        return id
    }

    func optionalUUID(_ key: String) throws -> UUID? {
        guard let text = try string(key, length: 1...64) else { return nil }
        guard let id = UUID(text: text) else { throw APIError.invalid(key, "must be a UUID") }
        return id
    }

    func bool(_ key: String) throws -> Bool? {
        switch fields[key] {
        case nil, .null?: return nil
        case .bool(let b)?: return b
        default: throw APIError.invalid(key, "must be true or false")
        }
    }
}
