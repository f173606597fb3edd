#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Storage

/// `/api/admin/…` (role admin): accounts, agents, the server's status and activity. Changing an account's
/// role or password, disabling or deleting it revokes its logins, so its access tokens and realtime
/// connections stop working at once on every instance and it signs in again with what changed.
struct AdminController {
    let store: any ChatStore
    let tokens: TokenService
    let hasher: PasswordHasher
    let maxBodyBytes: Int
    let hub: RealtimeHub
    let orchestrator: AgentOrchestrator?
    let health: HealthController
    let changes: SessionChanges

    func addRoutes(to api: RouterGroup<AuthenticatedContext>) {
        let admin = api.group("admin")
        admin.get("users", use: listUsers)
        admin.post("users", use: createUser)
        admin.get("users/:userId", use: getUser)
        admin.patch("users/:userId", use: updateUser)
        admin.post("users/:userId/password", use: resetPassword)
        admin.delete("users/:userId", use: deleteUser)
        admin.get("agents", use: agents)
        admin.get("status", use: status)
        admin.get("activity", use: activity)
    }

    private func requireAdmin(_ context: AuthenticatedContext) throws {
        guard context.isAdmin else { throw APIError(.forbidden, code: "forbidden", message: "only admins may manage accounts") }
    }

    private func target(_ context: AuthenticatedContext, changingSelf refused: Bool = false) async throws -> User {
        try requireAdmin(context)
        let id = try context.parameters.uuid("userId")
        if refused, id == context.userId {
            throw APIError(.conflict, code: "own_account", message: "admins cannot disable, demote or delete their own account")
        }
        guard let user = try await store.user(id: id) else { throw APIError.notFound("user") }
        return user
    }

    @Sendable func listUsers(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let query = try QueryParameters(request, allowed: ["search", "role", "limit", "offset"])
        let search = query.values["search"]
        if let search, search.unicodeScalars.count > Limits.usernameLength.upperBound * 4 || search.unicodeScalars.contains("\0") {
            throw APIError.invalid("search", "must be at most \(Limits.usernameLength.upperBound * 4) characters, without NUL")
        }
        let limit = try query.int("limit", default: 50, range: Limits.sessionPageLimit)
        let offset = try query.int("offset", default: 0, range: 0...Limits.maxOffset)
        let page = try await store.users(UserQuery(search: search, role: try query.oneOf("role", Role.self), limit: limit, offset: offset))
        return JSONResponse.make(
            .ok, API.AdminUserList(users: page.users.map(API.AdminUser.init), total: page.total, limit: limit, offset: offset),
            capacity: 256 + 300 * page.users.count
        )
    }

    @Sendable func createUser(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let body = try await API.AdminCreateUserRequest.decode(request, maxBytes: maxBodyBytes)
        let user = try await AuthController.createAccount(body.account, role: body.role, store: store, hasher: hasher)
        context.logger.info("user created by an admin", metadata: ["user_id": .string(user.id.lowercased), "role": .string(user.role.rawValue)])
        return JSONResponse.make(.created, API.AdminUser(user))
    }

    @Sendable func getUser(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        JSONResponse.make(.ok, API.AdminUser(try await target(context)))
    }

    /// Role and disabled state. Either change ends the account's logins.
    @Sendable func updateUser(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let body = try await API.AdminUpdateUserRequest.decode(request, maxBytes: maxBodyBytes)
        let selfChange = body.disabled == true || (body.role != nil && body.role != .admin)
        let user = try await target(context, changingSelf: selfChange)
        guard body.role != nil || body.disabled != nil else { return JSONResponse.make(.ok, API.AdminUser(user)) }
        guard let updated = try await store.updateUser(id: user.id, UserChange(role: body.role, disabled: body.disabled), now: Timestamp.now()) else {
            throw APIError.notFound("user")
        }
        if updated.role != user.role || (updated.disabledAt != nil && user.disabledAt == nil) {
            try await tokens.revokeLogins(userId: user.id)
        }
        context.logger.info("user changed by an admin", metadata: [
            "user_id": .string(user.id.lowercased), "role": .string(updated.role.rawValue), "disabled": .stringConvertible(updated.disabledAt != nil),
        ])
        return JSONResponse.make(.ok, API.AdminUser(updated))
    }

    /// Sets a new password and signs the account out everywhere (an admin setting their own keeps the login
    /// they are using).
    @Sendable func resetPassword(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let body = try await API.AdminPasswordRequest.decode(request, maxBytes: maxBodyBytes)
        let user = try await target(context)
        let hash = try await hasher.hash(body.password)
        guard try await store.updateUser(id: user.id, UserChange(passwordHash: hash), now: Timestamp.now()) != nil else {
            throw APIError.notFound("user")
        }
        try await tokens.revokeLogins(userId: user.id, keeping: user.id == context.userId ? context.claims.family : nil)
        context.logger.info("password reset by an admin", metadata: ["user_id": .string(user.id.lowercased)])
        return Response(status: .noContent)
    }

    /// Deletes the account with its sessions and their messages, after ending its logins.
    @Sendable func deleteUser(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let user = try await target(context, changingSelf: true)
        try await tokens.revokeLogins(userId: user.id)
        // Who watches learns of it as for one session: the account's sessions are deleted, and the ones it had
        // claimed go back to the queue.
        var owned: [UUID] = []
        while true {
            let page = try await store.sessions(SessionQuery(userId: user.id, limit: 500, offset: owned.count))
            owned += page.sessions.map(\.id)
            if page.sessions.count < 500 { break }
        }
        let claimed = try await store.handoffs(assignee: user.id, limit: 10_000).filter { $0.assigneeId == user.id }.map(\.id)
        guard try await store.deleteUser(id: user.id, now: Timestamp.now()) else { throw APIError.notFound("user") }
        for id in owned { await changes.changed(id, to: nil, reason: "deleted") }
        for id in claimed { await changes.changed(id, to: try await store.session(id: id), reason: "released") }
        context.logger.info("user deleted by an admin", metadata: ["user_id": .string(user.id.lowercased)])
        return Response(status: .noContent)
    }

    /// The agents with their breaker state, calls, failures and latency since the start.
    @Sendable func agents(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        _ = try QueryParameters(request, allowed: [])
        return JSONResponse.make(.ok, API.AgentOperationsList(agents: orchestrator?.operations() ?? []))
    }

    @Sendable func status(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        _ = try QueryParameters(request, allowed: [])
        async let health = store.health()
        let statistics = try await store.statistics()
        let status = API.Status(
            version: self.health.version, uptimeSeconds: (self.health.uptimeSeconds * 1000).rounded() / 1000, startedAt: self.health.startedAtDate,
            backend: store.backend, statistics: statistics
        )
        return JSONResponse.make(.ok, API.AdminStatus(
            status: status, storage: await health, connections: hub.connectionCount, agents: orchestrator?.operations() ?? []
        ))
    }

    /// Messages and sessions per UTC day over the last `days` days (today included), the share of the
    /// period's sessions resolved, and the median time to the first reply.
    @Sendable func activity(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        try requireAdmin(context)
        let query = try QueryParameters(request, allowed: ["days"])
        let count = try query.int("days", default: 30, range: 1...366)
        let today = Timestamp.days(Timestamp.now())
        let days = (0..<count).reversed().map { Timestamp.dayString(today - Int64($0)) }
        let since = Date(timeIntervalSince1970: Double(today - Int64(count - 1)) * 86_400)
        return JSONResponse.make(.ok, API.Activity(days: days, report: try await store.activity(since: since)), capacity: 512 + 64 * count)
    }
}
