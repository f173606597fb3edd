#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// Who may do what with a session.
enum SessionAccess {
    case read
    /// Resolve it.
    case resolve
    /// Delete or resume it.
    case manage
    /// Write into it (messages, files): its owner, an admin, or the person it is assigned to.
    case write

    /// Owners and admins may do everything; the human agent a session is assigned to may read and
    /// resolve it; human agents may read sessions waiting for one (not once it is resolved).
    func allows(_ session: ChatSession, userId: UUID, role: Role) -> Bool {
        if session.userId == userId || role == .admin { return true }
        switch self {
        case .read: return session.assigneeId == userId || (role == .agent && session.handoff == .waiting && !session.isResolved)
        case .resolve: return session.assigneeId == userId && session.handoff == .assigned
        case .manage: return false
        case .write: return session.assigneeId == userId && session.handoff == .assigned
        }
    }
}

/// Sending a message, the same for REST and WebSockets: rate limit, store, publish, then hand it to the
/// session's agent.
struct MessageService: Sendable {
    let store: any ChatStore
    let hub: RealtimeHub
    let limiter: RateLimiter
    let rule: RateLimit?
    let metrics: HTTPMetrics
    let orchestrator: AgentOrchestrator?
    /// Seconds after sending during which the author may edit a message.
    var editWindow: Int = 15 * 60

    /// Messages tier, per user.
    func checkRate(userId: UUID) throws {
        guard let rule else { return }
        try limiter.take("messages:user:\(userId.lowercased)", rule: rule).enforce()
    }

    /// Stores the message, then publishes it. Returns it and whether it was new (false: a retry of a stored one).
    /// `exceptClient` is the connection that sent it over a WebSocket: it gets an ack instead.
    ///
    /// The owner's messages are `inbound` and go to the session's agent. A human agent (or admin) the
    /// session is assigned to replies `outbound` with type `agent`.
    func send(
        sessionId: UUID, userId: UUID, role: Role, input: API.SendMessageRequest, requestId: String?, exceptClient: UInt64? = nil
    ) async throws -> (ChatMessage, created: Bool) {
        let now = Timestamp.now()
        var message = ChatMessage(
            id: UUIDv7.unassigned, sessionId: sessionId, userId: userId, content: input.content, type: input.type, direction: .inbound,
            metadata: input.metadata, clientMessageId: input.clientMessageId, createdAt: now, updatedAt: now
        )
        var owner: UUID? = userId
        if role != .user {
            // Staff may write into sessions they do not own: look at the session first.
            guard let session = try await store.session(id: sessionId), SessionAccess.read.allows(session, userId: userId, role: role) else {
                throw APIError.notFound("session")
            }
            if session.userId != userId {
                if session.assigneeId == userId, session.handoff == .assigned {
                    message.direction = .outbound
                    message.type = "agent"
                    var metadata: [String: JSONValue] = [:]
                    if case .object(let fields) = input.metadata { metadata = fields }
                    metadata["agent"] = "human"
                    message.metadata = .object(metadata)
                } else if role != .admin {
                    throw APIError.handoffNotClaimed
                }
            }
            owner = nil
        }
        if !input.attachments.isEmpty {
            // Files uploaded into this session (complete); a message keeps what they were when it was sent.
            let found = try await store.attachments(ids: input.attachments, sessionId: sessionId)
            let byId = Dictionary(found.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            if let missing = input.attachments.first(where: { byId[$0] == nil }) {
                throw APIError.invalid("attachments", "no attachment \(missing.lowercased) was uploaded to this session")
            }
            // The sweep removes an upload no message carried a day after it completed: one about to go is refused
            // here, so a send never refers to a file deleted while it is being written.
            let stale = now.addingTimeInterval(-Double(SessionSweeper.sendableUploadAge))
            if let old = found.first(where: { $0.sentAt == nil && ($0.completedAt ?? now) < stale }) {
                throw APIError.invalid("attachments", "attachment \(old.id.lowercased) was uploaded more than \(SessionSweeper.sendableUploadAge / 3600) hours ago and never sent; upload it again")
            }
            message.attachments = input.attachments.compactMap { byId[$0]?.ref }
        }
        // Ownership is checked inside the write: one round trip to the store per send.
        // Published as it commits, on the store's writer, so every room gets messages in history order.
        let hub = self.hub
        switch try await store.appendMessage(message, now: now, owner: owner, committed: { hub.publish(message: $0, exceptClient: exceptClient) }) {
        case .created(let stored):
            metrics.messageStored()
            // The agent answers the owner's messages (the orchestrator checks who wrote it).
            if stored.direction == .inbound { orchestrator?.submit(stored, requestId: requestId) }
            return (stored, true)
        case .duplicate(let existing):
            publishRetried(existing, hub: hub, exceptClient: exceptClient)
            return (existing, false)
        case .sessionNotFound:
            throw APIError.notFound("session")
        case .sessionResolved:
            throw APIError.sessionResolved
        case .sessionExpired:
            throw APIError.sessionExpired
        case .attachmentSent:
            throw APIError.invalid("attachments", "an attachment is carried by another message already; upload the file again to send it again")
        }
    }
}

extension MessageService {
    /// The message `id` of a session the caller may read, if the caller may change it: its author, or an
    /// admin. `editing`: the author only within the edit window, and not once deleted.
    private func changeable(sessionId: UUID, id: UUID, userId: UUID, role: Role, editing: Bool) async throws -> ChatMessage {
        guard let session = try await store.session(id: sessionId), SessionAccess.read.allows(session, userId: userId, role: role) else {
            throw APIError.notFound("session")
        }
        guard let message = try await store.message(sessionId: sessionId, id: id) else { throw APIError.notFound("message") }
        // Deleted is the answer whoever asks and whenever: before the author's edit window is looked at.
        if editing, message.deletedAt != nil {
            throw APIError.messageDeleted
        }
        if role != .admin {
            guard message.userId == userId else {
                throw APIError(.forbidden, code: "not_author", message: "only the author of a message (or an admin) may change it")
            }
            if editing, Date().timeIntervalSince(message.createdAt) > Double(editWindow) {
                throw APIError(.forbidden, code: "edit_window_closed", message: "messages may be edited for \(DurationText.format(editWindow)) after sending")
            }
        }
        return message
    }

    /// Replaces a message's content (its author within the edit window, or an admin); the session's
    /// connections get `message.updated`.
    func edit(sessionId: UUID, id: UUID, userId: UUID, role: Role, content: String) async throws -> ChatMessage {
        _ = try await changeable(sessionId: sessionId, id: id, userId: userId, role: role, editing: true)
        guard let edited = try await store.editMessage(sessionId: sessionId, id: id, content: content, now: Timestamp.now()) else {
            throw APIError.messageDeleted
        }
        hub.broadcast(.messageUpdated(edited), session: sessionId, exceptUser: nil)
        return edited
    }

    /// Deletes a message (its author, or an admin), leaving a tombstone; the session's connections get
    /// `message.deleted` (once: deleting it again changes nothing).
    func delete(sessionId: UUID, id: UUID, userId: UUID, role: Role) async throws -> ChatMessage {
        let before = try await changeable(sessionId: sessionId, id: id, userId: userId, role: role, editing: false)
        guard let tombstone = try await store.deleteMessage(sessionId: sessionId, id: id, now: Timestamp.now()) else {
            throw APIError.notFound("message")
        }
        if before.deletedAt == nil { hub.broadcast(.messageDeleted(tombstone), session: sessionId, exceptUser: nil) }
        return tombstone
    }
}

/// A message a retry found stored already. The attempt that stored it may have lost its answer (a statement
/// timeout, the commit coming after it) and so never published it here: a recent one is published now (a
/// connection that has it already does not get it twice); an older one was published when it was stored.
func publishRetried(_ message: ChatMessage, hub: RealtimeHub, exceptClient: UInt64? = nil) {
    guard Timestamp.now().timeIntervalSince(message.createdAt) < 300 else { return }
    hub.publish(message: message, exceptClient: exceptClient)
}

/// Stores an outbound message without an author (an agent's reply or a system note) and publishes it.
/// Returns false when the session is gone, resolved or expired.
@discardableResult
func postOutbound(
    _ text: String, type: String, session: UUID, metadata: [String: JSONValue], store: any ChatStore, hub: RealtimeHub,
    clientMessageId: String? = nil
) async throws -> Bool {
    let now = Timestamp.now()
    let message = ChatMessage(
        id: UUIDv7.unassigned, sessionId: session, userId: nil, content: text, type: type, direction: .outbound,
        metadata: .object(metadata), clientMessageId: clientMessageId, createdAt: now, updatedAt: now
    )
    switch try await store.appendMessage(message, now: now, owner: nil, committed: { hub.publish(message: $0) }) {
    case .created:
        return true
    case .duplicate(let stored):
        publishRetried(stored, hub: hub)
        return true
    case .sessionNotFound, .sessionResolved, .sessionExpired, .attachmentSent:
        return false
    }
}
