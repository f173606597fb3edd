#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import NIOCore
import Storage

/// Request context for every route: request id, client address, and the identity when a valid token came.
public struct ChatRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Id echoed as `X-Request-Id` and attached to every log line of the request.
    public var requestId: String = ""
    /// The peer's IP address (or the last `X-Forwarded-For` entry when the proxy is trusted), normalised
    /// (`ClientAddress`).
    public var clientIP: String
    /// Claims of a valid bearer token, set by the identity middleware.
    public var identity: AccessClaims?
    /// What per-address limits count the client by (its address; for IPv6 its /64).
    var clientKey: String { ClientAddress.bucket(clientIP) }

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.clientIP = source.channel.remoteAddress?.ipAddress ?? "unknown"
    }
}

/// Context of routes that need a user: it exists only with valid claims, so handlers never unwrap an optional.
public struct AuthenticatedContext: ChildRequestContext {
    public var coreContext: CoreRequestContextStorage
    public var requestId: String
    public var clientIP: String
    public let claims: AccessClaims

    public init(context: ChatRequestContext) throws {
        guard let claims = context.identity else { throw APIError.unauthenticated }
        self.coreContext = context.coreContext
        self.requestId = context.requestId
        self.clientIP = context.clientIP
        self.claims = claims
    }

    /// The caller's user id.
    public var userId: UUID { claims.subject }
    public var isAdmin: Bool { claims.role == .admin }
}
