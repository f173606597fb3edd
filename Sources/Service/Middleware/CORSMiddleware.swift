import Hummingbird

/// CORS for the configured origins only. A preflight from an allowed origin gets 204 with the allowed
/// methods and headers; from any other origin, 403. Other requests get `Access-Control-Allow-Origin` only
/// when their origin is allowed.
struct CORSMiddleware: RouterMiddleware {
    typealias Context = ChatRequestContext

    let allowedOrigins: Set<String>
    static let methods = "GET, POST, PATCH, DELETE, OPTIONS"
    static let headers = "Authorization, Content-Type, X-Request-Id"
    static let exposed = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let origin = request.headers[.origin]
        let allowed = origin.map { allowedOrigins.contains($0) } ?? false
        if request.method == .options, origin != nil, request.headers[.accessControlRequestMethod] != nil {
            guard allowed, let origin else {
                throw APIError(.forbidden, code: "cors_origin_not_allowed", message: "origin is not allowed")
            }
            var response = Response(status: .noContent)
            response.headers[.accessControlAllowOrigin] = origin
            response.headers[.accessControlAllowMethods] = Self.methods
            response.headers[.accessControlAllowHeaders] = Self.headers
            response.headers[.accessControlMaxAge] = "600"
            Self.addVary("Origin", to: &response.headers)
            return response
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch {
            // Browsers hide error responses without CORS headers; build the error here so they get them.
            response = RequestMiddleware.errorResponse(error, context: context)
        }
        if allowed, let origin {
            response.headers[.accessControlAllowOrigin] = origin
            response.headers[.accessControlExposeHeaders] = Self.exposed
        }
        // The answer depends on the Origin whenever origins are configured; added to what else it varies on.
        if !allowedOrigins.isEmpty { Self.addVary("Origin", to: &response.headers) }
        return response
    }

    static func addVary(_ name: String, to headers: inout HTTPFields) {
        guard let vary = headers[.vary], !vary.isEmpty else {
            headers[.vary] = name
            return
        }
        let listed = vary.split(separator: ",").map { String($0).trimmingWhitespace().lowercased() }
        if !listed.contains(name.lowercased()) && !listed.contains("*") { headers[.vary] = vary + ", " + name }
    }
}
