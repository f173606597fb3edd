#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import Storage

/// Reads `Authorization: Bearer <jwt>`. A valid, unrevoked token sets `context.identity`; a token that is
/// present but invalid is refused with 401 right away; no token leaves the request anonymous.
struct IdentityMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let tokens: TokenService

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization] else { return try await next(request, context) }
        var context = context
        context.identity = try await tokens.authenticate(authorizationHeader: header, logger: context.logger)
        return try await next(request, context)
    }
}

/// Applies the API rate-limit tier: per user when authenticated, else per client IP.
struct APIRateLimitMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let limiter: RateLimiter
    let rule: RateLimit

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let key = context.identity.map { "api:user:\($0.subject.lowercased)" } ?? "api:ip:\(context.clientIP)"
        let decision = limiter.take(key, rule: rule)
        try decision.enforce()
        var response = try await next(request, context)
        decision.apply(to: &response.headers)
        return response
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
