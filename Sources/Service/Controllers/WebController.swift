import CZlib
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import NIOCore

/// One file of the web console, ready to serve: its bytes, gzipped bytes when that is smaller, and a
/// strong ETag from its content for each (two representations, two tags: RFC 9110 §8.8.3).
struct WebAsset: Sendable {
    let body: ByteBuffer
    let gzipped: ByteBuffer?
    let etag: String
    let gzippedEtag: String
    let contentType: String

    init(path: String, text: String) {
        let bytes = Array(text.utf8)
        body = ByteBuffer(bytes: bytes)
        gzipped = Gzip.compress(bytes).flatMap { $0.count < bytes.count ? ByteBuffer(bytes: $0) : nil }
        let hash = Base64.urlEncode(Array(Crypto.sha256(bytes).prefix(18)))
        etag = "\"" + hash + "\""
        gzippedEtag = "\"" + hash + "-gz\""
        contentType = Self.contentType(of: path)
    }

    static func contentType(of path: String) -> String {
        switch path.split(separator: ".").last {
        case "html": "text/html; charset=utf-8"
        case "js", "mjs": "text/javascript; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "svg": "image/svg+xml"
        case "json", "webmanifest": "application/json; charset=utf-8"
        default: "text/plain; charset=utf-8"
        }
    }
}

/// The files under `Sources/Service/Web`, embedded at build time, by the path they are served at.
enum WebAssets {
    static let all: [String: WebAsset] = Dictionary(
        uniqueKeysWithValues: EmbeddedWeb.files.map { path, text in ("/" + path, WebAsset(path: path, text: text)) }
    )

    /// The asset served at `path`.
    static func asset(_ path: String) -> WebAsset? {
        #if DEBUG
        if let directory = developmentDirectory {
            guard !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else { return nil }
            return (try? String(contentsOfFile: directory + path, encoding: .utf8)).map { WebAsset(path: path, text: $0) }
        }
        #endif
        return all[path]
    }

    #if DEBUG
    /// Debug builds only, for working on the pages: with `CHAT_WEB_DIR` set to the `Sources/Service/Web`
    /// directory, files are read from there on every request, so an edit shows on reload without a rebuild.
    static let developmentDirectory = ProcessInfo.processInfo.environment["CHAT_WEB_DIR"]
    #endif

    /// Bytes of every asset together, uncompressed.
    static var totalBytes: Int { EmbeddedWeb.files.values.reduce(0) { $0 + $1.utf8.count } }
}

/// The web console and the website widget, served from the binary with ETags (`If-None-Match` answers
/// 304) and gzip when the client accepts it. `/` leads to `/console/`, whose page has a
/// Content-Security-Policy of its own: everything from the server itself, no inline script or style,
/// never framed. `/widget.js` is the script a website includes; it opens `/widget/` in a frame, which
/// only the sites in `WIDGET_ORIGINS` may embed.
struct WebController {
    /// Origins of the websites that may embed the widget (`WIDGET_ORIGINS`).
    var widgetOrigins: [String] = []

    func addRoutes(to router: Router<ChatRequestContext>) {
        // Compressed and hashed now, at start, not on an event loop by the first request.
        _ = WebAssets.all
        router.get("/") { _, _ in Self.redirect(to: "/console/") }
        router.get("console") { request, _ in try serve("/console/index.html", request) }
        router.get("console/**") { request, context in
            let path = "/console/" + context.parameters.getCatchAll().joined(separator: "/")
            return try serve(path.hasSuffix("/") ? path + "index.html" : path, request)
        }
        router.get("widget.js") { request, _ in try serve("/widget.js", request) }
        router.get("widget") { request, _ in try serve("/widget/index.html", request) }
        router.get("widget/**") { request, context in
            let path = "/widget/" + context.parameters.getCatchAll().joined(separator: "/")
            return try serve(path.hasSuffix("/") ? path + "index.html" : path, request)
        }
    }

    static func redirect(to location: String) -> Response {
        Response(status: .found, headers: [.location: location, .contentLength: "0"])
    }

    func serve(_ path: String, _ request: Request) throws -> Response {
        guard let asset = WebAssets.asset(path) else { throw APIError.notFound("file") }
        let gzipped = Self.acceptsGzip(request.headers[.acceptEncoding]) ? asset.gzipped : nil
        let etag = gzipped == nil ? asset.etag : asset.gzippedEtag
        var headers: HTTPFields = [
            .contentType: asset.contentType, .eTag: etag, .cacheControl: "no-cache", .vary: "Accept-Encoding",
        ]
        let widget = path == "/widget.js" || path.hasPrefix("/widget/")
        if widget {
            // Loaded by other sites: the script by a <script> tag, the page in a frame.
            headers[.crossOriginResourcePolicy] = "cross-origin"
            if path == "/widget.js", !widgetOrigins.isEmpty {
                headers[.vary] = "Accept-Encoding, Origin"
                if let origin = request.headers[.origin], widgetOrigins.contains(origin) { headers[.accessControlAllowOrigin] = origin }
            }
        }
        if asset.contentType.hasPrefix("text/html") {
            headers[.contentSecurityPolicy] = Self.pagePolicy(
                host: request.head.authority, frameAncestors: widget ? (widgetOrigins.isEmpty ? "'none'" : widgetOrigins.joined(separator: " ")) : "'none'"
            )
        }
        if let tags = request.headers[.ifMatch], !Self.ifMatchHolds(tags, etag) { throw Self.preconditionFailed }
        if let tags = request.headers[.ifNoneMatch], Self.matches(tags, etag) {
            return Response(status: .notModified, headers: headers)
        }
        if let gzipped {
            headers[.contentEncoding] = "gzip"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: gzipped))
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: asset.body))
    }

    /// The pages' policy: scripts, styles, images and connections from this server only (the WebSocket
    /// at the same host named explicitly, as older browsers do not count it as `'self'`); framed only by
    /// `frameAncestors` (`'none'` for the console, the widget's sites for its frame).
    static func pagePolicy(host: String?, frameAncestors: String) -> String {
        var connect = "'self'"
        if let host, !host.isEmpty, host.utf8.allSatisfy({ isHostByte($0) }) { connect += " ws://\(host) wss://\(host)" }
        return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src \(connect); "
            + "base-uri 'none'; form-action 'self'; frame-ancestors \(frameAncestors)"
    }

    private static func isHostByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "["), UInt8(ascii: "]"): true
        default: false
        }
    }

    /// `If-None-Match` (RFC 9110 §13.1.2): `*`, or a list of entity tags compared weakly.
    static func matches(_ header: String, _ etag: String) -> Bool {
        header.split(separator: ",").contains { (candidate: Substring) -> Bool in
            var tag = String(candidate).trimmingWhitespace()
            if tag == "*" { return true }
            if tag.hasPrefix("W/") { tag.removeFirst(2) }
            return tag == etag
        }
    }

    /// `If-Match` (RFC 9110 §13.1.1): `*`, or a list of entity tags compared strongly (a weak tag never matches).
    static func ifMatchHolds(_ header: String, _ etag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            let tag = String(candidate).trimmingWhitespace()
            return tag == "*" || tag == etag
        }
    }

    static let preconditionFailed = APIError(
        .preconditionFailed, code: "precondition_failed", message: "If-Match names no current version of this resource"
    )

    /// Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3): listed, or `*`, with a weight above 0.
    static func acceptsGzip(_ header: String?) -> Bool {
        guard let header else { return false }
        var gzip: Double?
        var any: Double?
        for item in header.split(separator: ",") {
            let parts = item.split(separator: ";").map { String($0).trimmingWhitespace().lowercased() }
            guard let coding = parts.first else { continue }
            var weight = 1.0
            for parameter in parts.dropFirst() where parameter.hasPrefix("q=") {
                weight = Double(parameter.dropFirst(2)) ?? 0
            }
            if coding == "gzip" || coding == "x-gzip" { gzip = weight } else if coding == "*" { any = weight }
        }
        return (gzip ?? any ?? 0) > 0
    }
}

/// gzip (RFC 1952) with zlib, at the highest compression: assets are compressed once, when the routes are built.
enum Gzip {
    static func compress(_ input: [UInt8]) -> [UInt8]? {
        var stream = z_stream()
        // windowBits 15 + 16: a gzip header and trailer around the deflate data (no file name, time 0).
        guard deflateInit2_(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK
        else { return nil }
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(input.count))) + 64)
        var input = input
        let result = input.withUnsafeMutableBufferPointer { source in
            output.withUnsafeMutableBufferPointer { target in
                stream.next_in = source.baseAddress
                stream.avail_in = UInt32(source.count)
                stream.next_out = target.baseAddress
                stream.avail_out = UInt32(target.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard result == Z_STREAM_END else { return nil }
        return Array(output.prefix(Int(stream.total_out)))
    }
}
