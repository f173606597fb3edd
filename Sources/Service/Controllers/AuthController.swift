#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import Storage

/// `/auth`: register, login, refresh, logout.
struct AuthController {
    let store: any ChatStore
    let tokens: TokenService
    let hasher: PasswordHasher
    let hub: RealtimeHub
    let limiter: RateLimiter
    let rule: RateLimit?
    let maxBodyBytes: Int
    let identity: IdentityMiddleware
    /// Guest accounts: on or off, and how many one address may make.
    var guestAccess = false
    var guestRule: RateLimit?

    func addRoutes(to group: RouterGroup<ChatRequestContext>) {
        group.post("register", use: register)
        group.post("guest", use: guest)
        group.post("login", use: login)
        group.post("refresh", use: refresh)
        group.group().add(middleware: identity).group(context: AuthenticatedContext.self).post("logout", use: logout)
    }

    /// Auth tier, per client IP.
    private func limitClient(_ context: ChatRequestContext) throws {
        guard let rule else { return }
        try limiter.take("auth:ip:\(context.clientKey)", rule: rule).enforce()
    }

    /// Brute-force protection for logins, counting failed attempts only (the auth tier's rate).
    ///
    /// An address with too many recent failures is refused before its password is checked. An account
    /// with too many recent failures refuses the addresses those failures came from, but never an address
    /// that has not failed for it: a correct password is not refused because of attempts from elsewhere.
    private struct LoginFailures {
        let limiter: RateLimiter
        let rule: RateLimit
        let ip: String
        let user: String

        var ipKey: String { "login-failures:ip:\(ip)" }
        var userKey: String { "login-failures:user:\(user)" }
        var pairKey: String { "login-failures:user-ip:\(user)|\(ip)" }

        var tierKey: String { "auth:ip:\(ip)" }

        /// Counts the attempt as a failure before its password is checked, so attempts sent at once are
        /// counted as they arrive, not once each has been hashed; refuses it (429) when the address is over
        /// its budget, or the account is and this address has failed for it. Failures are charged to the
        /// address, the account, the pair, and the address's auth tier (so an address guessing passwords
        /// also stops registering and refreshing).
        func begin() throws {
            try limiter.take(ipKey, rule: rule).enforce()
            let account = limiter.peek(userKey, rule: rule)
            if !account.allowed, limiter.peek(pairKey, rule: rule).remaining < rule.limit {
                limiter.give(ipKey, rule: rule)
                try account.enforce()
            }
            for key in [userKey, pairKey, tierKey] { _ = limiter.take(key, rule: rule) }
        }

        /// The attempt ended without a verdict on the password (storage failed): it is not a failure.
        func abandoned() {
            for key in [ipKey, userKey, pairKey, tierKey] { limiter.give(key, rule: rule) }
        }

        /// A success from an address clears that address's failures, and is not one for the account.
        func succeeded() {
            limiter.reset(ipKey)
            limiter.reset(pairKey)
            limiter.give(userKey, rule: rule)
            limiter.give(tierKey, rule: rule)
        }
    }

    /// Stores a new account; a username taken in any case is a 409 (checked first, so no password is hashed for it).
    static func createAccount(_ account: API.RegisterRequest, role: Role, store: any ChatStore, hasher: PasswordHasher) async throws -> User {
        if try await store.user(username: account.username) != nil { throw usernameTaken }
        let now = Timestamp.now()
        let user = User(
            id: UUID(), username: account.username, email: account.email, passwordHash: try await hasher.hash(account.password), role: role,
            createdAt: now, updatedAt: now
        )
        do {
            try await store.createUser(user)
        } catch let error as StoreError where error.kind == .conflict {
            throw usernameTaken
        }
        return user
    }

    @Sendable func register(_ request: Request, context: ChatRequestContext) async throws -> Response {
        try limitClient(context)
        let body = try await API.RegisterRequest.decode(request, maxBytes: maxBodyBytes)
        let user = try await Self.createAccount(body, role: .user, store: store, hasher: hasher)
        context.logger.info("user registered", metadata: ["user_id": .string(user.id.lowercased)])
        return try await tokenResponse(.created, user: user, pair: tokens.issue(for: user))
    }

    /// A guest account for a website visitor (the widget): no name to choose, no password; it lives on
    /// its refresh token. Off unless `GUEST_ACCESS=on`; limited per client address.
    @Sendable func guest(_ request: Request, context: ChatRequestContext) async throws -> Response {
        guard guestAccess else {
            throw APIError(.forbidden, code: "guest_access_disabled", message: "guest access is off on this server (GUEST_ACCESS)")
        }
        _ = try await API.GuestRequest.decode(request, maxBytes: maxBodyBytes)
        if let guestRule { try limiter.take("guest:ip:\(context.clientKey)", rule: guestRule).enforce() }
        let now = Timestamp.now()
        // No password can match: the hash is not in the format the hasher verifies.
        let user = User(
            id: UUID(), username: "guest-" + Crypto.hex(Crypto.randomBytes(6)), email: nil, passwordHash: "!guest", role: .guest,
            createdAt: now, updatedAt: now
        )
        try await store.createUser(user)
        context.logger.info("guest created", metadata: ["user_id": .string(user.id.lowercased)])
        return try await tokenResponse(.created, user: user, pair: tokens.issue(for: user))
    }

    @Sendable func login(_ request: Request, context: ChatRequestContext) async throws -> Response {
        let body = try await API.LoginRequest.decode(request, maxBytes: maxBodyBytes)
        let (username, password) = (body.username, body.password)
        let failures = rule.map { LoginFailures(limiter: limiter, rule: $0, ip: context.clientKey, user: username.lowercased()) }
        try failures?.begin()
        let user: User
        do {
            guard let found = try await store.user(username: username) else {
                try await hasher.dummyVerify(password)
                throw Self.badCredentials
            }
            guard try await hasher.verify(password, against: found.passwordHash) else { throw Self.badCredentials }
            user = found
        } catch let error as APIError where error.code == Self.badCredentials.code {
            throw error
        } catch {
            failures?.abandoned()
            throw error
        }
        failures?.succeeded()
        // Said only to whoever knows the password.
        guard user.disabledAt == nil else {
            throw APIError(.forbidden, code: "account_disabled", message: "this account is disabled; ask an administrator")
        }
        return try await tokenResponse(.ok, user: user, pair: tokens.issue(for: user))
    }

    @Sendable func refresh(_ request: Request, context: ChatRequestContext) async throws -> Response {
        try limitClient(context)
        let body = try await API.RefreshRequest.decode(request, maxBytes: maxBodyBytes)
        let (user, pair) = try await tokens.refresh(body.refreshToken)
        return tokenResponse(.ok, user: user, pair: pair)
    }

    @Sendable func logout(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        // Realtime connections of this login end too (the token service tells the hub).
        try await tokens.revoke(context.claims)
        return Response(status: .noContent)
    }

    private func tokenResponse(_ status: HTTPResponse.Status, user: User, pair: TokenPair) -> Response {
        JSONResponse.make(status, API.TokenResponse(
            user: API.User(user), accessToken: pair.accessToken, refreshToken: pair.refreshToken, expiresIn: pair.expiresIn
        ))
    }

    private static let badCredentials = APIError(.unauthorized, code: "invalid_credentials", message: "username or password is wrong")
    private static let usernameTaken = APIError(.conflict, code: "username_taken", message: "username is already taken", details: .object(["field": "username"]))
}

extension JSONValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}
