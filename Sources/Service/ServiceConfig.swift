/// Settings the chat service runs with. The appliance fills it from the env file, the environment and flags.
public struct ServiceConfig: Sendable {
    /// HS256 key for access tokens.
    public var jwtSecret: [UInt8]
    public var accessTokenTTL: Int = 15 * 60
    public var refreshTokenTTL: Int = 30 * 86400
    public var sessionTTL: Int = 24 * 3600
    /// Origins allowed to make cross-origin requests; empty means none.
    public var corsOrigins: [String] = []
    /// Origins of the websites that may embed the chat widget (`/widget.js`, its `/widget/` frame); empty means none.
    public var widgetOrigins: [String] = []
    public var rateLimitAPI: RateLimit? = RateLimit(limit: 300, windowSeconds: 60)
    public var rateLimitAuth: RateLimit? = RateLimit(limit: 10, windowSeconds: 60)
    public var rateLimitMessages: RateLimit? = RateLimit(limit: 60, windowSeconds: 60)
    /// `POST /auth/guest` makes guest accounts (website visitors using the widget).
    public var guestAccess: Bool = false
    /// Guest accounts one client address may make.
    public var rateLimitGuest: RateLimit? = RateLimit(limit: 10, windowSeconds: 3600)
    /// Guests without activity (a message in their sessions, a token refresh) for this many seconds are
    /// deleted with their sessions.
    public var guestTTL: Int = 30 * 86400
    /// Retention: messages older than this many seconds are deleted in the background (nil: kept).
    public var messageRetention: Int?
    /// Retention: sessions resolved longer ago than this many seconds are deleted with their messages (nil: kept).
    public var resolvedSessionRetention: Int?
    /// Largest attachment, in bytes.
    public var attachmentMaxBytes: Int {
        get { server.maxAttachmentBytes }
        set { server.maxAttachmentBytes = newValue }
    }
    /// Bytes of complete attachments one user may have uploaded (nil: no limit).
    public var attachmentQuotaBytes: Int64? = 1 << 30
    /// For this many seconds after sending, the author may edit a message (admins: always).
    public var messageEditWindow: Int = 15 * 60
    /// Largest accepted request body.
    public var maxBodyBytes: Int {
        get { server.maxBodyBytes }
        set { server.maxBodyBytes = newValue }
    }
    /// `Strict-Transport-Security` max-age; nil sends no HSTS header (set it when TLS terminates in front).
    public var hstsMaxAge: Int? {
        get { server.hstsMaxAge }
        set { server.hstsMaxAge = newValue }
    }
    /// Timeouts and limits of the connection layer below the router.
    public var server = ServerSettings()
    /// Socket.IO: the server pings every interval; a client that does not answer within the timeout is gone.
    public var socketIOPingInterval: Duration = .seconds(25)
    public var socketIOPingTimeout: Duration = .seconds(20)
    /// Socket.IO's `maxPayload`, enforced on both transports: a polling POST body (413) and a WebSocket
    /// message (1009). The reference server's default (`maxHttpBufferSize`).
    public var socketIOMaxPayload: Int = 1_000_000
    /// Take the client address from `X-Forwarded-For` (only behind a trusted reverse proxy).
    public var trustProxy: Bool = false
    /// How often expired sessions are marked.
    public var sweepIntervalSeconds: Int = 30
    public var passwordParameters: PasswordHasher.Parameters = .owasp
    /// A realtime connection must authenticate within this many seconds.
    public var realtimeAuthTimeoutSeconds: Int = 10
    /// Realtime connections one user may hold at once.
    public var realtimeMaxConnectionsPerUser: Int = 20
    /// Realtime connections one address may hold before they authenticate.
    public var realtimeMaxUnauthenticatedPerIP: Int = 64
    /// Frames queued for one realtime connection before it is dropped as too slow.
    public var realtimeQueueLength: Int = 256
    /// Version reported by `/health` and `/api/status`.
    public var version: String = ChatBackendVersion.current

    public init(jwtSecret: [UInt8]) {
        self.jwtSecret = jwtSecret
    }
}

/// Limits on what a client may send.
enum Limits {
    static let usernameLength = 3...64
    static let passwordLength = 8...128
    static let emailLength = 3...254
    static let contentCharacters = 1...10_000
    /// Longest search query (`q`), in characters.
    static let searchCharacters = 256
    static let metadataBytes = 16 * 1024
    static let clientMessageIdLength = 1...128
    static let attachmentsPerMessage = 10
    static let messageTypes: Set<String> = ["text", "markdown", "image", "file", "event"]
    static let pageLimit = 1...200
    static let sessionPageLimit = 1...100
    static let maxOffset = 1_000_000
}

/// The release version.
public enum ChatBackendVersion {
    public static let current = "0.1.0"
}
