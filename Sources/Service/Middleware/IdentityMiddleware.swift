#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import Storage

/// Reads `Authorization: Bearer <jwt>`. A valid, unrevoked token sets `context.identity`; a token that is
/// present but invalid is refused with 401 right away; no token leaves the request anonymous. A refused
/// token counts against the client address's API tier (`rule`), like a request without one: past it, 429.
struct IdentityMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let tokens: TokenService
    var limiter: RateLimiter?
    var rule: RateLimit?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization] else { return try await next(request, context) }
        var context = context
        do {
            context.identity = try await tokens.authenticate(authorizationHeader: header, logger: context.logger)
        } catch let refused as APIError {
            guard let limiter, let rule else { throw refused }
            throw APIRateLimitMiddleware.charged(refused, limiter.take(APIRateLimitMiddleware.addressKey(context), rule: rule))
        }
        return try await next(request, context)
    }
}

/// Applies the API rate-limit tier: per user when authenticated, else per client IP. Every answer carries
/// the tier's `RateLimit-*` headers, errors included.
struct APIRateLimitMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let limiter: RateLimiter
    let rule: RateLimit

    static func addressKey(_ context: Context) -> String { "api:ip:\(context.clientKey)" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let key = context.identity.map { "api:user:\($0.subject.lowercased)" } ?? Self.addressKey(context)
        let decision = limiter.take(key, rule: rule)
        try decision.enforce()
        do {
            var response = try await next(request, context)
            decision.apply(to: &response.headers)
            return response
        } catch let error as APIError {
            throw Self.charged(error, decision)
        } catch let error as HTTPError where error.status.code < 500 {
            throw Self.charged(APIError.from(error)!, decision)
        }
    }

    /// `error` once `decision` was taken for it: 429 when the tier refused, else with the tier's headers
    /// (a 429 of another tier keeps its own).
    static func charged(_ error: APIError, _ decision: RateDecision) -> any Error {
        if !decision.allowed {
            do { try decision.enforce() } catch let refusal { return refusal }
        }
        var error = error
        if error.headers[.rateLimitLimit] == nil { decision.apply(to: &error.headers) }
        return error
    }
}

/// Requests under `/api/` and `/auth/` that reach no route (404, 405) count against the client address's
/// API tier like any other: probing unknown paths is not free.
struct UnroutedRateLimitMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let limiter: RateLimiter
    let rule: RateLimit

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound && Self.isLimited(request.uri.path) {
            throw APIRateLimitMiddleware.charged(APIError.from(error)!, limiter.take(APIRateLimitMiddleware.addressKey(context), rule: rule))
        } catch let error as APIError where error.status == .methodNotAllowed && Self.isLimited(request.uri.path) {
            throw APIRateLimitMiddleware.charged(error, limiter.take(APIRateLimitMiddleware.addressKey(context), rule: rule))
        }
    }

    static func isLimited(_ path: String) -> Bool {
        path == "/api" || path == "/auth" || path.hasPrefix("/api/") || path.hasPrefix("/auth/")
    }
}

extension RateDecision {
    /// Throws 429 with Retry-After and RateLimit-* headers when refused.
    func enforce() throws {
        guard !allowed else { return }
        var headers = HTTPFields()
        headers[.retryAfter] = String(retryAfterSeconds)
        apply(to: &headers)
        throw APIError(
            .tooManyRequests, code: "rate_limited", message: "too many requests, retry in \(retryAfterSeconds)s",
            details: .object(["retryAfter": .int(Int64(retryAfterSeconds))]), headers: headers
        )
    }

    func apply(to headers: inout HTTPFields) {
        headers[.rateLimitLimit] = String(limit)
        headers[.rateLimitRemaining] = String(remaining)
        headers[.rateLimitReset] = String(resetSeconds)
    }
}
