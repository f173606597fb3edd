#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// A validated message a client wants to send.
struct MessageInput: Sendable {
    var content: String
    var type: String
    var metadata: JSONValue
    var clientMessageId: String?

    /// Validates the fields of a send; `typeKey` is `type` over REST and `messageType` over WebSockets.
    static func parse(_ body: JSONBody, typeKey: String = "type") throws -> MessageInput {
        let content = try body.string("content", required: true, length: Limits.contentCharacters)!
        let type = try body.string(typeKey) ?? "text"
        guard Limits.messageTypes.contains(type) else {
            throw APIError.invalid(typeKey, "must be one of \(Limits.messageTypes.sorted().joined(separator: ", "))")
        }
        let metadata = try body.object("metadata", maxBytes: Limits.metadataBytes) ?? .emptyObject
        let clientMessageId = try body.string("clientMessageId", length: Limits.clientMessageIdLength)
        if let clientMessageId, !clientMessageId.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 32 && $0.value < 127 }) {
            throw APIError.invalid("clientMessageId", "must be printable ASCII without spaces")
        }
        return MessageInput(content: content, type: type, metadata: metadata, clientMessageId: clientMessageId)
    }
}

/// Sending a message, the same for REST and WebSockets: rate limit, store, then publish to the session.
struct MessageService: Sendable {
    let store: any ChatStore
    let hub: RealtimeHub
    let limiter: RateLimiter
    let rule: RateLimit?
    let metrics: HTTPMetrics

    /// Messages tier, per user.
    func checkRate(userId: UUID) throws {
        guard let rule else { return }
        try limiter.take("messages:user:\(userId.lowercased)", rule: rule).enforce()
    }

    /// Stores the message, then publishes it. Returns it and whether it was new (false: a retry of a stored one).
    /// `exceptClient` is the connection that sent it over a WebSocket: it gets an ack instead.
    func send(sessionId: UUID, userId: UUID, isAdmin: Bool, input: MessageInput, exceptClient: UInt64? = nil) async throws -> (ChatMessage, created: Bool) {
        let now = Timestamp.now()
        let message = ChatMessage(
            id: UUIDv7.make(now: now), sessionId: sessionId, userId: userId, content: input.content, type: input.type, direction: .inbound,
            metadata: input.metadata, clientMessageId: input.clientMessageId, createdAt: now, updatedAt: now
        )
        // Ownership is checked inside the write: one round trip to the store per send.
        switch try await store.appendMessage(message, now: now, owner: isAdmin ? nil : userId) {
        case .created(let stored):
            metrics.messageStored()
            hub.publish(message: stored, exceptClient: exceptClient)
            return (stored, true)
        case .duplicate(let existing):
            return (existing, false)
        case .sessionNotFound:
            throw APIError.notFound("session")
        case .sessionResolved:
            throw APIError(.conflict, code: "session_resolved", message: "session is resolved; start a new session")
        case .sessionExpired:
            throw APIError(.gone, code: "session_expired", message: "session expired; resume it first")
        }
    }
}
