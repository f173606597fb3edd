#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Storage

/// `/api/agents` (the configured agents) and `/api/handoffs…` (sessions handed to human agents: users
/// with role `agent`, or admins).
struct AgentController {
    let store: any ChatStore
    let hub: RealtimeHub
    let orchestrator: AgentOrchestrator?
    let changes: SessionChanges

    func addRoutes(to api: RouterGroup<AuthenticatedContext>) {
        api.get("agents", use: list)
        api.get("handoffs", use: handoffs)
        api.post("handoffs/:sessionId/claim", use: claim)
        api.post("handoffs/:sessionId/release", use: release)
    }

    @Sendable func list(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        _ = try QueryParameters(request, allowed: [])
        return JSONResponse.make(.ok, API.AgentList(defaultAgent: orchestrator?.config.defaultAgent, agents: orchestrator?.summaries() ?? []))
    }

    private func requireStaff(_ context: AuthenticatedContext) throws {
        guard context.claims.role == .agent || context.claims.role == .admin else {
            throw APIError(.forbidden, code: "forbidden", message: "only users with role agent or admin handle handoffs")
        }
    }

    /// Sessions waiting for a human, and the caller's own (an admin sees every assigned one).
    @Sendable func handoffs(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireStaff(context)
        let query = try QueryParameters(request, allowed: ["limit"])
        let limit = try query.int("limit", default: 50, range: Limits.sessionPageLimit)
        let sessions = try await store.handoffs(assignee: context.isAdmin ? nil : context.userId, limit: limit)
        let now = Date()
        async let unread = store.unreadCounts(sessionIds: sessions.map(\.id), reader: context.userId)
        let owners = Dictionary(try await store.users(ids: sessions.map(\.userId)).map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let counts = try await unread
        return JSONResponse.make(.ok, API.HandoffList(sessions: sessions.map {
            var session = API.Session($0, now: now, unread: counts[$0.id] ?? 0)
            session.owner = owners[$0.userId]
            return session
        }), capacity: 512 + 560 * sessions.count)
    }

    /// Takes a waiting session: its messages can then be read and answered by the caller.
    @Sendable func claim(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireStaff(context)
        let id = try context.parameters.uuid("sessionId")
        let before = try await store.session(id: id)
        switch try await store.claimHandoff(sessionId: id, assignee: context.userId, now: Timestamp.now()) {
        case .notFound:
            throw APIError.notFound("session")
        case .unavailable(let session):
            let message = session.isResolved ? "this session is resolved"
                : session.handoff == .assigned ? "another agent has taken this session" : "this session is not waiting for a human agent"
            throw APIError(.conflict, code: "handoff_unavailable", message: message)
        case .claimed(let session):
            // Other staff who were watching the waiting session lose it now.
            await changes.changed(id, to: session, reason: "claimed")
            if before?.handoff == .waiting {
                try await note(
                    "A support agent joined the conversation.", session: id,
                    metadata: ["handoff": "assigned", "assigneeId": .string(context.userId.lowercased)]
                )
            }
            return JSONResponse.make(.ok, API.Session(session))
        }
    }

    /// Hands a session the caller holds back to the default agent (or to no agent when there is none).
    @Sendable func release(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireStaff(context)
        let id = try context.parameters.uuid("sessionId")
        guard let session = try await store.session(id: id), SessionAccess.read.allows(session, userId: context.userId, role: context.claims.role) else {
            throw APIError.notFound("session")
        }
        guard session.handoff != nil, session.assigneeId == context.userId || context.isAdmin else {
            throw APIError(.conflict, code: "handoff_unavailable", message: "this session is not handed off to you")
        }
        guard !session.isResolved else { throw APIError(.conflict, code: "handoff_unavailable", message: "this session is resolved") }
        let agent = orchestrator?.config.defaultAgent
        guard let updated = try await store.assignAgent(sessionId: id, agent: agent, ifUnrouted: false, now: Timestamp.now()) else {
            throw APIError.notFound("session")
        }
        await changes.changed(id, to: updated, reason: "released")
        try await note(
            agent == nil ? "The support agent left the conversation." : "The conversation is back with the assistant.", session: id,
            metadata: ["handoff": .null, "agent": agent.map(JSONValue.string) ?? .null]
        )
        return JSONResponse.make(.ok, API.Session(updated))
    }

    /// A `system` message in the session, published like any other.
    private func note(_ text: String, session: UUID, metadata: [String: JSONValue]) async throws {
        try await postOutbound(text, type: "system", session: session, metadata: metadata, store: store, hub: hub)
    }
}
