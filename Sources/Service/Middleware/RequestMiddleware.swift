#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import Logging
import Storage
import Synchronization

/// Outermost middleware: gives every request an id, turns every error into the one JSON error shape,
/// adds security headers, and records metrics and an access log line.
struct RequestMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let metrics: HTTPMetrics
    let hstsMaxAge: Int?
    let trustProxy: Bool

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.requestId = Self.requestId(from: request)
        context.logger[metadataKey: "request_id"] = .string(context.requestId)
        context.clientIP = ClientAddress.resolve(peer: context.clientIP, forwardedFor: request.headers[.xForwardedFor], trustProxy: trustProxy)
        let started = ContinuousClock.now
        var response: Response
        do {
            response = try await next(request, context)
        } catch {
            response = Self.errorResponse(error, context: context)
        }
        applyHeaders(&response, request: request, requestId: context.requestId)
        let route = context.endpointPath ?? "unmatched"
        // Label values must stay a small set: unknown methods share one series.
        let method = Self.knownMethods.contains(request.method) ? request.method.rawValue : "OTHER"
        metrics.record(method: method, route: route, status: response.status.code, duration: ContinuousClock.now - started)
        context.logger.debug(
            "request",
            metadata: ["method": .string(request.method.rawValue), "path": .string(request.uri.path), "status": .stringConvertible(response.status.code)]
        )
        return response
    }

    private static let knownMethods: Set<HTTPRequest.Method> = [.get, .head, .post, .put, .delete, .options, .patch]

    /// Accepts a client's `X-Request-Id` when it is short and plain, else makes one.
    static func requestId(from request: Request) -> String {
        if let given = request.headers[.xRequestId], (1...64).contains(given.utf8.count), given.utf8.allSatisfy(Self.isIdByte) {
            return given
        }
        return RequestIDs.next()
    }

    private static func isIdByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    static func errorResponse(_ error: any Error, context: Context) -> Response {
        let apiError: APIError
        if let mapped = APIError.from(error) {
            apiError = mapped
            if mapped.status.code >= 500 {
                context.logger.error("request failed", metadata: ["error": .string(String(reflecting: error))])
            } else {
                context.logger.debug("request refused", metadata: ["error": .string(mapped.message)])
            }
        } else {
            context.logger.error("unexpected error", metadata: ["error": .string(String(reflecting: error))])
            apiError = APIError(
                .internalServerError, code: "internal_error",
                message: "internal error; quote request id \(context.requestId) when reporting it"
            )
        }
        var response = JSONResponse.make(apiError.status, API.ErrorBody(apiError))
        for field in apiError.headers { response.headers.append(field) }
        if apiError.status == .unauthorized, response.headers[.wwwAuthenticate] == nil {
            response.headers[.wwwAuthenticate] = challenge(for: apiError.code)
        }
        return response
    }

    /// A 401 carries the scheme to authenticate with (RFC 9110 §11.6.1); a token that was sent and refused
    /// is named `invalid_token` (RFC 6750 §3.1), a missing one is not.
    static func challenge(for code: String) -> String {
        switch code {
        case "invalid_token", "token_expired", "token_revoked": #"Bearer realm="chat-backend", error="invalid_token""#
        default: #"Bearer realm="chat-backend""#
        }
    }

    func applyHeaders(_ response: inout Response, request: Request, requestId: String) {
        response.headers[.xRequestId] = requestId
        SecurityHeaders.apply(to: &response.headers, hstsMaxAge: hstsMaxAge)
    }
}

/// Answers a path that exists, asked with a method it does not take, `405` with `Allow` (RFC 9110
/// §15.5.6) instead of the router's 404.
struct MethodNotAllowedMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let routes: RouteMethods

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let allowed = routes.allowed(path: request.uri.path)
            guard !allowed.isEmpty else { throw error }
            throw APIError(
                .methodNotAllowed, code: "method_not_allowed", message: "\(request.method.rawValue) is not allowed here; use \(allowed)",
                headers: [.allow: allowed]
            )
        }
    }
}

/// The methods each route path answers, read from the router once its routes are in place.
final class RouteMethods: Sendable {
    private let table = Mutex<[(segments: [Substring], methods: String)]>([])

    /// Loads `(path, method)` pairs such as `("/api/sessions/{sessionId}", .get)`.
    func load(_ routes: [(String, HTTPRequest.Method)]) {
        var byPath: [String: Set<String>] = [:]
        for (path, method) in routes {
            byPath[path, default: []].insert(method.rawValue)
            if method == .get { byPath[path, default: []].insert("HEAD") }
        }
        let entries = byPath.map { (path, methods) in
            (segments: path.split(separator: "/"), methods: methods.sorted().joined(separator: ", "))
        }
        table.withLock { $0 = entries }
    }

    /// The `Allow` value for a request path, empty when no route has that path.
    func allowed(path: String) -> String {
        let segments = path.split(separator: "/")
        return table.withLock { entries in
            entries.first { Self.matches($0.segments, segments) }?.methods ?? ""
        }
    }

    /// A parameter (`{name}` or `:name`) or wildcard segment matches any one segment.
    private static func isParameter(_ part: Substring) -> Bool {
        part.hasPrefix("{") || part.hasPrefix(":") || part == "*"
    }

    private static func matches(_ pattern: [Substring], _ path: [Substring]) -> Bool {
        for (index, part) in pattern.enumerated() {
            if part == "**" { return true }
            guard index < path.count else { return false }
            if !(isParameter(part) || part == path[index]) { return false }
        }
        return pattern.count == path.count
    }
}

/// Request ids: a random per-process prefix and a counter, unique without a random draw per request.
enum RequestIDs {
    private static let prefix: String = {
        var rng = SystemRandomNumberGenerator()
        let value = rng.next() as UInt64
        return String(value, radix: 16).leftPadded(to: 16)
    }()
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return prefix + "-" + String(n, radix: 16).leftPadded(to: 8)
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

extension HTTPField.Name {
    static let xRequestId = Self("X-Request-Id")!
    static let xForwardedFor = Self("X-Forwarded-For")!
    static let xContentTypeOptions = Self("X-Content-Type-Options")!
    static let xFrameOptions = Self("X-Frame-Options")!
    static let referrerPolicy = Self("Referrer-Policy")!
    static let crossOriginResourcePolicy = Self("Cross-Origin-Resource-Policy")!
    static let crossOriginOpenerPolicy = Self("Cross-Origin-Opener-Policy")!
    static let xDNSPrefetchControl = Self("X-DNS-Prefetch-Control")!
    static let xPermittedCrossDomainPolicies = Self("X-Permitted-Cross-Domain-Policies")!
    static let rateLimitLimit = Self("RateLimit-Limit")!
    static let rateLimitRemaining = Self("RateLimit-Remaining")!
    static let rateLimitReset = Self("RateLimit-Reset")!
    static let allow = Self("Allow")!
}
