import HTTPTypes
import NIOCore

/// Limits of the HTTP/1.1 and WebSocket server, below the router.
public struct ServerSettings: Sendable {
    /// A request head (request line and headers) must be complete this long after the connection opened
    /// or after its first byte arrived; a connection that sends nothing is closed after it too.
    public var headerTimeout: TimeAmount = .seconds(10)
    /// A keep-alive connection with no request in progress is closed after this.
    public var idleTimeout: TimeAmount = .seconds(60)
    /// Open connections (HTTP and WebSocket) past which a new connection is answered 503 and closed.
    public var maxConnections: Int = 1024
    /// Largest request body the server reads; routes may accept less.
    public var maxBodyBytes: Int = 1 << 20
    /// Largest attachment (`POST /api/sessions/{id}/attachments`, which the route streams to the store and
    /// where the route enforces this size); its request body may have `uploadOverhead` more (multipart).
    public var maxAttachmentBytes: Int = 10 << 20
    static let uploadOverhead = 64 * 1024
    var maxUploadBytes: Int { maxAttachmentBytes + Self.uploadOverhead }
    /// Largest WebSocket message (frames of one message together): room for the largest valid `message`
    /// event as any JSON encoder writes it (10,000 characters escaped as `\uD83D\uDE00` pairs are 120 KB,
    /// metadata of 16 KiB escaped up to 96 KB).
    public var maxWebSocketMessageBytes: Int = 256 * 1024
    /// How long a WebSocket connection waits for the peer's close frame after sending its own.
    public var webSocketCloseTimeout: TimeAmount = .seconds(5)
    /// `Strict-Transport-Security` max-age for every response, nil for none.
    public var hstsMaxAge: Int?

    public init() {}

    /// The most body bytes the server reads for a request to `path` (its query left out) with `method`.
    func bodyLimit(method: HTTPRequest.Method, path: Substring) -> Int {
        guard method == .post, path.hasPrefix("/api/sessions/"), path.hasSuffix("/attachments") else { return maxBodyBytes }
        let middle = path.dropFirst("/api/sessions/".count).dropLast("/attachments".count)
        return !middle.isEmpty && !middle.contains("/") ? max(maxUploadBytes, maxBodyBytes) : maxBodyBytes
    }

    /// Sets the head and keep-alive timeouts in whole seconds.
    public mutating func setTimeouts(headerSeconds: Int, idleSeconds: Int) {
        headerTimeout = .seconds(Int64(headerSeconds))
        idleTimeout = .seconds(Int64(idleSeconds))
    }
}

/// The headers every response carries, whether the router made it or the connection layer below it.
enum SecurityHeaders {
    /// helmet's defaults, with a CSP for JSON APIs: nothing may load or frame a response. A page that set
    /// its own policy (the web console, the website widget) keeps it, and one that other sites may embed
    /// (the widget's frame and script) keeps its `Cross-Origin-Resource-Policy` and gets no
    /// `X-Frame-Options` (its CSP `frame-ancestors` names the sites).
    static func apply(to headers: inout HTTPFields, hstsMaxAge: Int?) {
        // One pass over what the response already carries, then fields built once (validated at start-up,
        // not per response) appended: this runs for every response.
        var policy: String?
        var hasResourcePolicy = false, hasCacheControl = false, hasFrameOptions = false, hasHSTS = false, applied = false
        for field in headers {
            switch field.name {
            case .contentSecurityPolicy: policy = field.value
            case .crossOriginResourcePolicy: hasResourcePolicy = true
            case .cacheControl: hasCacheControl = true
            case .xFrameOptions: hasFrameOptions = true
            case .strictTransportSecurity: hasHSTS = true
            case .xContentTypeOptions: applied = true
            default: break
            }
        }
        if applied {
            // Already applied (a response passed two layers): replace, never repeat.
            for field in always { headers[field.name] = field.value }
        } else {
            headers.append(contentsOf: always)
        }
        if policy == nil { headers.append(apiPolicy) }
        // Only a page sets its own policy, so the search below runs for pages only.
        if policy?.contains("frame-ancestors 'none'") ?? true {
            if hasFrameOptions { headers[.xFrameOptions] = "DENY" } else { headers.append(denyFraming) }
        }
        if !hasResourcePolicy { headers.append(sameOriginResources) }
        if let hstsMaxAge {
            let value = "max-age=\(hstsMaxAge); includeSubDomains"
            if hasHSTS { headers[.strictTransportSecurity] = value } else { headers.append(HTTPField(name: .strictTransportSecurity, value: value)) }
        }
        if !hasCacheControl { headers.append(noStore) }
    }

    private static let always: [HTTPField] = [
        HTTPField(name: .xContentTypeOptions, value: "nosniff"),
        HTTPField(name: .referrerPolicy, value: "no-referrer"),
        HTTPField(name: .crossOriginOpenerPolicy, value: "same-origin"),
        HTTPField(name: .xDNSPrefetchControl, value: "off"),
        HTTPField(name: .xPermittedCrossDomainPolicies, value: "none"),
    ]
    private static let apiPolicy = HTTPField(
        name: .contentSecurityPolicy, value: "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    private static let denyFraming = HTTPField(name: .xFrameOptions, value: "DENY")
    private static let sameOriginResources = HTTPField(name: .crossOriginResourcePolicy, value: "same-origin")
    private static let noStore = HTTPField(name: .cacheControl, value: "no-store")
}

/// Error responses the connection layer writes itself (malformed requests, timeouts, the connection cap,
/// refused upgrades): the same JSON shape and headers as the router's errors.
enum ConnectionErrors {
    static func head(_ error: APIError, hstsMaxAge: Int?, close: Bool, bodyLength: Int) -> HTTPResponse {
        var fields = error.headers
        fields[.contentType] = "application/json; charset=utf-8"
        fields[.contentLength] = String(bodyLength)
        fields[.xRequestId] = RequestIDs.next()
        if close { fields[.connection] = "close" }
        SecurityHeaders.apply(to: &fields, hstsMaxAge: hstsMaxAge)
        return HTTPResponse(status: error.status, headerFields: fields)
    }

    static func body(_ error: APIError) -> ByteBuffer {
        ByteBuffer(bytes: API.ErrorBody(error).jsonBytes())
    }

    /// The whole response as HTTP/1.1 bytes, for handlers that sit below the HTTP encoder.
    static func raw(_ error: APIError, hstsMaxAge: Int?) -> ByteBuffer {
        let body = self.body(error)
        let head = self.head(error, hstsMaxAge: hstsMaxAge, close: true, bodyLength: body.readableBytes)
        var text = "HTTP/1.1 \(head.status.code) \(head.status.reasonPhrase)\r\n"
        for field in head.headerFields { text += "\(field.name.rawName): \(field.value)\r\n" }
        text += "\r\n"
        var buffer = ByteBuffer(string: text)
        var payload = body
        buffer.writeBuffer(&payload)
        return buffer
    }

    static let malformed = APIError(.badRequest, code: "bad_request", message: "the request is not valid HTTP/1.1")
    static let headerTimeout = APIError(.requestTimeout, code: "request_timeout", message: "the request head did not arrive in time")
    static let tooManyConnections = APIError(
        .serviceUnavailable, code: "too_many_connections", message: "the server has too many open connections, try again shortly",
        headers: [.retryAfter: "1"]
    )
    static let bodyTooLarge = APIError(.contentTooLarge, code: "payload_too_large", message: "request body is too large")
    static let expectationFailed = APIError(.expectationFailed, code: "expectation_failed", message: "only Expect: 100-continue is supported")
    static let internalError = APIError(.internalServerError, code: "internal_error", message: "internal error")
    static let bodyTimeout = APIError(.requestTimeout, code: "request_timeout", message: "the request body stopped arriving")
    /// The longest request target read (RFC 9112 §3: 414 beyond what the server wishes to parse).
    static let maxTargetBytes = 16384
    static let uriTooLong = APIError(.uriTooLong, code: "uri_too_long", message: "the request target is longer than \(maxTargetBytes) bytes")
    static let headersTooLarge = APIError(
        .requestHeaderFieldsTooLarge, code: "headers_too_large", message: "the request's header fields are too large"
    )
    static let badHost = APIError(.badRequest, code: "bad_request", message: "an HTTP/1.1 request needs exactly one valid Host header")
    /// RFC 9110 §9.1: a method the server does not recognise is 501 (one it knows but a path does not
    /// take is 405).
    static let unknownMethod = APIError(.notImplemented, code: "not_implemented", message: "the request method is not one this server implements")
    static let transferCoding = APIError(
        .notImplemented, code: "unsupported_transfer_coding", message: "only the chunked transfer coding is supported"
    )

    /// RFC 9112 §3.2: one `Host` in an HTTP/1.1 request (HTTP/1.0 may leave it out), holding a host and
    /// an optional port (RFC 3986 reg-name, IPv4 or IP literal characters only), or empty.
    static func validHost(_ values: [String], http10: Bool) -> Bool {
        guard values.count <= 1 else { return false }
        guard let host = values.first else { return http10 }
        return host.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
            default: "-._~%!$&'()*+,;=:[]".utf8.contains(byte)
            }
        }
    }
}
