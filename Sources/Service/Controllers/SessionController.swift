#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Storage

/// `/api/sessions…` and `/api/users/:userId/sessions`: sessions and their messages.
struct SessionController {
    let store: any ChatStore
    let messages: MessageService
    let sessionTTL: Int
    let maxBodyBytes: Int
    let orchestrator: AgentOrchestrator?
    let changes: SessionChanges

    func addRoutes(to api: RouterGroup<AuthenticatedContext>) {
        api.post("sessions", use: create)
        api.get("sessions/:sessionId", use: get)
        api.delete("sessions/:sessionId", use: delete)
        api.post("sessions/:sessionId/resume", use: resume)
        api.post("sessions/:sessionId/resolve", use: resolve)
        api.post("sessions/:sessionId/handoff", use: requestPerson)
        api.post("sessions/:sessionId/messages", use: sendMessage)
        api.get("sessions/:sessionId/messages", use: listMessages)
        api.get("sessions/:sessionId/messages/:messageId", use: getMessage)
        api.patch("sessions/:sessionId/messages/:messageId", use: editMessage)
        api.delete("sessions/:sessionId/messages/:messageId", use: deleteMessage)
        api.post("sessions/:sessionId/read", use: markRead)
        api.get("search", use: search)
        api.get("users/:userId/sessions", use: listForUser)
    }

    static let maxUUID = UUID(uuid: (255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255))

    /// The session if the caller may see it. Another user's session is a 404 like a missing one: no leak.
    private func visibleSession(_ context: AuthenticatedContext) throws -> UUID {
        try context.parameters.uuid("sessionId")
    }

    private func loadVisible(_ id: UUID, _ context: AuthenticatedContext, for access: SessionAccess = .read) async throws -> ChatSession {
        guard let session = try await store.session(id: id), SessionAccess.read.allows(session, userId: context.userId, role: context.claims.role) else {
            throw APIError.notFound("session")
        }
        guard access.allows(session, userId: context.userId, role: context.claims.role) else {
            throw APIError(.forbidden, code: "forbidden", message: "only the session's owner may do this")
        }
        return session
    }

    @Sendable func create(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let body = try await API.CreateSessionRequest.decode(request, maxBytes: maxBodyBytes)
        if let agent = body.agent, orchestrator?.hasAgent(agent) != true {
            throw APIError.invalid("agent", "no agent named \(agent) is configured; GET /api/agents lists them")
        }
        let now = Timestamp.now()
        let session = ChatSession(
            id: UUID(), userId: context.userId, metadata: body.metadata, state: .active, isResolved: false,
            expiresAt: now.addingTimeInterval(Double(sessionTTL)), resolvedAt: nil, createdAt: now, updatedAt: now, agent: body.agent
        )
        try await store.createSession(session)
        return JSONResponse.make(.created, API.Session(session, now: now))
    }

    @Sendable func get(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let session = try await loadVisible(visibleSession(context), context)
        return JSONResponse.make(.ok, API.Session(session))
    }

    @Sendable func delete(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        _ = try await loadVisible(id, context, for: .manage)
        guard try await store.deleteSession(id: id) else { throw APIError.notFound("session") }
        await changes.changed(id, to: nil, reason: "deleted")
        return Response(status: .noContent)
    }

    @Sendable func resume(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        _ = try await loadVisible(id, context, for: .manage)
        let now = Timestamp.now()
        switch try await store.resumeSession(id: id, expiresAt: now.addingTimeInterval(Double(sessionTTL)), now: now) {
        case .resumed(let session):
            await changes.changed(id, to: session, reason: "resumed")
            // The newest page: everything before the largest possible id.
            let recent = try await store.messages(MessageQuery(sessionId: id, before: Self.maxUUID, limit: 50))
            return JSONResponse.make(.ok, API.ResumeResponse(
                session: API.Session(session, now: now), messages: recent.messages.map(API.Message.init), hasMoreMessages: recent.hasMore
            ), capacity: 16 * 1024)
        case .notFound:
            throw APIError.notFound("session")
        case .resolved:
            throw APIError(.conflict, code: "session_resolved", message: "a resolved session cannot be resumed")
        }
    }

    @Sendable func resolve(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        _ = try await loadVisible(id, context, for: .resolve)
        guard let session = try await store.resolveSession(id: id, now: Timestamp.now()) else { throw APIError.notFound("session") }
        await changes.changed(id, to: session, reason: "resolved")
        return JSONResponse.make(.ok, API.Session(session))
    }

    /// The owner asks for a person: the session leaves its agent and waits in the staff inbox. Asking again
    /// (or once a person has it) changes nothing.
    @Sendable func requestPerson(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let session = try await loadVisible(id, context, for: .manage)
        if session.handoff != nil { return JSONResponse.make(.ok, API.Session(session)) }
        if session.isResolved { throw APIError.sessionResolved }
        let now = Timestamp.now()
        if session.state == .expired || session.expiresAt <= now { throw APIError.sessionExpired }
        guard let waiting = try await store.requestHandoff(sessionId: id, now: now) else { throw APIError.notFound("session") }
        // Told once, by the request that made it wait.
        if waiting.handoff == .waiting, let at = waiting.handoffAt, abs(at.timeIntervalSince(now)) < 0.0005 {
            await changes.changed(id, to: waiting, reason: "handoff")
            _ = try await postOutbound(
                "You are being connected to a person; someone will reply here shortly.", type: "system", session: id,
                metadata: ["handoff": "human", "requestedBy": .string(context.userId.lowercased)], store: store, hub: changes.hub
            )
        }
        return JSONResponse.make(.ok, API.Session(waiting))
    }

    @Sendable func sendMessage(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        // Counted once valid: a refused body does not use up the budget.
        let input = try await API.SendMessageRequest.decode(request, maxBytes: maxBodyBytes)
        try messages.checkRate(userId: context.userId)
        let (message, created) = try await messages.send(
            sessionId: id, userId: context.userId, role: context.claims.role, input: input, requestId: context.requestId
        )
        return JSONResponse.make(created ? .created : .ok, API.Message(message))
    }

    @Sendable func listMessages(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let query = try QueryParameters(request, allowed: ["after", "before", "limit"])
        let page = MessageQuery(
            sessionId: id, after: try query.uuid("after"), before: try query.uuid("before"),
            limit: try query.int("limit", default: 50, range: Limits.pageLimit)
        )
        // The session and the page in one trip to the store; the page is shown only if the session may be.
        guard let (session, result) = try await store.sessionMessages(page),
              SessionAccess.read.allows(session, userId: context.userId, role: context.claims.role)
        else { throw APIError.notFound("session") }
        return JSONResponse.make(
            .ok, API.MessagePage(sessionId: id, messages: result.messages.map(API.Message.init), hasMore: result.hasMore),
            capacity: 512 + 400 * result.messages.count
        )
    }

    @Sendable func getMessage(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let messageId = try context.parameters.uuid("messageId")
        _ = try await loadVisible(id, context)
        guard let message = try await store.message(sessionId: id, id: messageId) else { throw APIError.notFound("message") }
        // Deleted: gone as a resource of its own (its tombstone stays in the history, to keep its place).
        guard message.deletedAt == nil else { throw APIError.messageDeleted }
        return JSONResponse.make(.ok, API.Message(message))
    }

    /// `PATCH …/messages/{messageId}`: the author (within the edit window) or an admin replaces the content.
    @Sendable func editMessage(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let messageId = try context.parameters.uuid("messageId")
        let input = try await API.EditMessageRequest.decode(request, maxBytes: maxBodyBytes)
        try messages.checkRate(userId: context.userId)
        let edited = try await messages.edit(sessionId: id, id: messageId, userId: context.userId, role: context.claims.role, content: input.content)
        return JSONResponse.make(.ok, API.Message(edited))
    }

    /// `DELETE …/messages/{messageId}`: the author or an admin deletes it; the tombstone stays in history.
    @Sendable func deleteMessage(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let messageId = try context.parameters.uuid("messageId")
        try messages.checkRate(userId: context.userId)
        let tombstone = try await messages.delete(sessionId: id, id: messageId, userId: context.userId, role: context.claims.role)
        return JSONResponse.make(.ok, API.Message(tombstone))
    }

    /// `GET /api/search?q=…`: messages of the caller's sessions (admins: all; with `sessionId`, that one
    /// session if the caller may read it), best match first, a page at a time.
    @Sendable func search(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let query = try QueryParameters(request, allowed: ["q", "sessionId", "limit", "cursor"])
        guard let q = query.values["q"] else { throw APIError.invalid("q", "is required") }
        guard q.count <= Limits.searchCharacters else { throw APIError.invalid("q", "must be at most \(Limits.searchCharacters) characters") }
        guard !q.unicodeScalars.contains("\u{0}") else { throw APIError.invalid("q", "must not contain NUL characters") }
        let terms: SearchTerms
        do {
            terms = try SearchTerms.parse(q)
        } catch {
            throw APIError.invalid("q", error.message)
        }
        let limit = try query.int("limit", default: 20, range: 1...50)
        var after: SearchCursor?
        if let text = query.values["cursor"] {
            guard let cursor = API.SearchResults.cursor(text) else { throw APIError.invalid("cursor", "must be a nextCursor this server returned") }
            after = cursor
        }
        let sessionId = try query.uuid("sessionId")
        if let sessionId { _ = try await loadVisible(sessionId, context) }
        let reader: UUID? = sessionId != nil || context.isAdmin ? nil : context.userId
        let page = try await store.searchMessages(MessageSearch(terms: terms, reader: reader, sessionId: sessionId, after: after, limit: limit))
        return JSONResponse.make(.ok, API.SearchResults(page: page), capacity: 512 + 700 * page.hits.count)
    }

    @Sendable func listForUser(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let userId = try context.parameters.uuid("userId")
        guard userId == context.userId || context.isAdmin else {
            throw APIError(.forbidden, code: "forbidden", message: "you may list only your own sessions")
        }
        let query = try QueryParameters(request, allowed: ["state", "resolved", "limit", "offset"])
        let limit = try query.int("limit", default: 20, range: Limits.sessionPageLimit)
        let offset = try query.int("offset", default: 0, range: 0...Limits.maxOffset)
        let page = try await store.sessions(SessionQuery(
            userId: userId, state: try query.oneOf("state", SessionState.self), isResolved: try query.bool("resolved"), limit: limit, offset: offset
        ))
        let now = Date()
        let unread = try await store.unreadCounts(sessionIds: page.sessions.map(\.id), reader: context.userId)
        return JSONResponse.make(.ok, API.SessionList(
            sessions: page.sessions.map { API.Session($0, now: now, unread: unread[$0.id] ?? 0) }, total: page.total, limit: limit, offset: offset
        ), capacity: 512 + 500 * page.sessions.count)
    }

    /// Marks the session read by the caller up to a message; the session's connections get a `read` event.
    @Sendable func markRead(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try visibleSession(context)
        let body = try await API.ReadRequest.decode(request, maxBytes: maxBodyBytes)
        _ = try await loadVisible(id, context)
        switch try await store.markRead(sessionId: id, userId: context.userId, messageId: body.lastMessageId, now: Timestamp.now()) {
        case .messageNotFound:
            throw APIError.invalid("lastMessageId", "must be the id of a message of this session")
        case .read(let read):
            let unread = try await store.unreadCounts(sessionIds: [id], reader: context.userId)[id] ?? 0
            changes.hub.broadcast(.read(read), session: id, exceptUser: nil)
            return JSONResponse.make(.ok, API.ReadState(read: read, unread: unread))
        }
    }
}
