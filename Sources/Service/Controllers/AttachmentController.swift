#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HTTPTypes
import Hummingbird
import NIOCore
import Storage

/// `POST /api/sessions/:sessionId/attachments` (upload) and `GET /api/attachments/:attachmentId` (download).
struct AttachmentController {
    let store: any ChatStore
    let maxBytes: Int
    let quota: Int64?

    func addRoutes(to api: RouterGroup<AuthenticatedContext>) {
        api.post("sessions/:sessionId/attachments", use: upload)
        api.get("attachments/:attachmentId", use: download)
    }

    /// Image types shown inline: their leading bytes are checked, and browsers render them without running anything.
    static let inlineImages: [String: [[UInt8]]] = [
        "image/png": [[0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]],
        "image/jpeg": [[0xFF, 0xD8, 0xFF]],
        "image/gif": [Array("GIF87a".utf8), Array("GIF89a".utf8)],
        "image/webp": [Array("RIFF".utf8)],  // and "WEBP" at offset 8, checked below
    ]

    // MARK: Upload

    @Sendable func upload(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let sessionId = try context.parameters.uuid("sessionId")
        let query = try QueryParameters(request, allowed: ["filename"])
        if let name = query.values["filename"], !(1...1024).contains(name.unicodeScalars.count) {
            throw APIError.invalid("filename", "must be 1 to 1024 characters")
        }
        let now = Timestamp.now()
        guard let session = try await store.session(id: sessionId),
              SessionAccess.read.allows(session, userId: context.userId, role: context.claims.role)
        else { throw APIError.notFound("session") }
        guard SessionAccess.write.allows(session, userId: context.userId, role: context.claims.role) else { throw APIError.handoffNotClaimed }
        if session.isResolved { throw APIError.sessionResolved }
        if session.state == .expired || session.expiresAt <= now { throw APIError.sessionExpired }
        let declared = request.headers[.contentLength].flatMap(Int.init)
        if let declared, declared > maxBytes + ServerSettings.uploadOverhead { throw Upload.tooLarge(maxBytes) }
        if let quota {
            let used = try await store.attachmentBytes(userId: context.userId)
            if used + Int64(min(declared ?? 1, maxBytes)) > quota { throw Upload.overQuota(quota, used: used) }
        }

        let upload = Upload(store: store, id: UUIDv7.make(now: now), sessionId: sessionId, userId: context.userId, maxBytes: maxBytes, now: now)
        do {
            let contentType = request.headers[.contentType]
            if let contentType, let boundary = MultipartReader.boundary(contentType: contentType) {
                try await readMultipart(request.body, boundary: boundary, fallbackName: query.values["filename"] ?? "file", into: upload)
            } else {
                try await upload.begin(filename: query.values["filename"] ?? "file", contentType: contentType ?? "application/octet-stream")
                var received = 0
                for try await buffer in request.body {
                    received += buffer.readableBytes
                    try await upload.append(buffer)
                }
                // An empty file comes with its type; no type and no bytes is a request without its body.
                if contentType == nil, received == 0 {
                    throw APIError.invalid("file", "the request has no body: send the file's bytes with their Content-Type, or multipart/form-data")
                }
            }
            let attachment = try await upload.finish(quota: quota)
            return JSONResponse.make(.created, API.Attachment(attachment), headers: [.location: "/api/attachments/\(attachment.id.lowercased)"])
        } catch {
            await upload.discard()
            switch error {
            // The connection layer's own limit (the route's size and the multipart overhead).
            case let error as HTTPError where error.status == .contentTooLarge: throw Upload.tooLarge(maxBytes)
            case is NIOTooManyBytesError: throw Upload.tooLarge(maxBytes)
            case let error as MultipartError:
                if case .malformed(let reason) = error { throw APIError(.badRequest, code: "invalid_multipart", message: "the multipart body is malformed: \(reason)") }
                throw error
            default: throw error
            }
        }
    }

    /// The file part of a `multipart/form-data` body (the first part named `file` or with a file name) goes to the upload;
    /// small fields besides it are read and ignored.
    private func readMultipart(_ body: RequestBody, boundary: String, fallbackName: String, into upload: Upload) async throws {
        guard var reader = MultipartReader(boundary: boundary) else {
            throw APIError(.badRequest, code: "invalid_multipart", message: "the multipart boundary must be 1 to 70 printable characters, not ending in a space")
        }
        var inFile = false, fileDone = false, otherBytes = 0
        for try await buffer in body {
            for event in try reader.feed(buffer.readableBytesView) {
                switch event {
                case .part(let headers):
                    let (type, parameters) = MultipartReader.dispositionParameters(headers["content-disposition"] ?? "")
                    let filename = parameters["filename*"] ?? parameters["filename"]
                    if !fileDone, type == "form-data", filename != nil || parameters["name"] == "file" {
                        inFile = true
                        try await upload.begin(filename: filename ?? fallbackName, contentType: headers["content-type"] ?? "application/octet-stream")
                    }
                case .data(let bytes):
                    if inFile {
                        try await upload.append(bytes)
                    } else {
                        otherBytes += bytes.count
                        if otherBytes > 64 * 1024 {
                            throw APIError(.badRequest, code: "invalid_multipart", message: "fields besides the file may have 64 KiB together")
                        }
                    }
                case .partEnd:
                    if inFile {
                        inFile = false
                        fileDone = true
                    }
                }
            }
        }
        guard reader.isComplete else {
            throw APIError(.badRequest, code: "invalid_multipart", message: "the multipart body ended before its closing boundary")
        }
        guard fileDone else { throw APIError.invalid("file", "the multipart body has no file part (a part with a filename)") }
    }

    // MARK: Download

    @Sendable func download(_ request: Request, context: AuthenticatedContext) async throws -> Response {
        let id = try context.parameters.uuid("attachmentId")
        guard let attachment = try await store.attachment(id: id), let session = try await store.session(id: attachment.sessionId),
              SessionAccess.read.allows(session, userId: context.userId, role: context.claims.role)
        else { throw APIError.notFound("attachment") }
        let etag = "\"\(attachment.sha256 ?? attachment.id.lowercased)\""
        let inline = Self.inlineImages[attachment.contentType] != nil
        var headers: HTTPFields = [
            .contentType: attachment.contentType,
            .contentDisposition: Self.disposition(inline: inline, filename: attachment.filename),
            // Opened directly, nothing in it may run, load or be framed.
            .contentSecurityPolicy: "default-src 'none'; sandbox; frame-ancestors 'none'",
            .eTag: etag,
            .acceptRanges: "bytes",
            .cacheControl: "private, no-cache",
        ]
        if let tags = request.headers[.ifMatch], !WebController.ifMatchHolds(tags, etag) { throw WebController.preconditionFailed }
        if let tags = request.headers[.ifNoneMatch], WebController.matches(tags, etag) {
            return Response(status: .notModified, headers: headers)
        }
        let size = Int(attachment.size)
        var range = 0..<size
        var status = HTTPResponse.Status.ok
        // A Range is honoured when If-Range is absent or names the current ETag (RFC 9110 §13.1.5).
        if let header = request.headers[.range], request.headers[.ifRange].map({ $0.trimmingWhitespace() == etag }) ?? true {
            switch ByteRange.parse(header, size: size) {
            case .satisfiable(let r):
                range = r
                status = .partialContent
                headers[.contentRange] = "bytes \(r.lowerBound)-\(r.upperBound - 1)/\(size)"
            case .unsatisfiable:
                throw APIError(
                    .rangeNotSatisfiable, code: "range_not_satisfiable", message: "the range is outside the attachment's \(size) bytes",
                    headers: [.contentRange: "bytes */\(size)"]
                )
            case .ignored:
                break
            }
        }
        headers[.contentLength] = String(range.count)
        if request.method == .head { return Response(status: status, headers: headers) }
        let store = self.store
        let bytes = range
        return Response(status: status, headers: headers, body: ResponseBody(contentLength: bytes.count) { writer in
            let chunkSize = Attachment.chunkSize
            var offset = bytes.lowerBound
            while offset < bytes.upperBound {
                let seq = offset / chunkSize
                guard let chunk = try await store.attachmentChunk(id: id, seq: seq) else { throw StoreError(.failed, "attachment \(id) lacks chunk \(seq)") }
                let start = offset - seq * chunkSize
                let end = min(chunk.count, bytes.upperBound - seq * chunkSize)
                guard start < end else { throw StoreError(.failed, "attachment \(id) chunk \(seq) is shorter than its size says") }
                try await writer.write(ByteBuffer(bytes: chunk[start..<end]))
                offset += end - start
            }
            try await writer.finish(nil)
        })
    }

    /// `inline` or `attachment`, with the file name as ASCII (RFC 6266) and as UTF-8 (`filename*`, RFC 8187).
    static func disposition(inline: Bool, filename: String) -> String {
        let ascii = String(filename.unicodeScalars.map { $0.isASCII && $0.value >= 32 && $0 != "\"" && $0 != "\\" && $0.value != 127 ? Character($0) : "_" })
        var encoded = ""
        for byte in filename.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "~"):
                encoded.append(Character(Unicode.Scalar(byte)))
            default:
                encoded += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return "\(inline ? "inline" : "attachment"); filename=\"\(ascii)\"; filename*=UTF-8''\(encoded)"
    }
}

/// A `Range: bytes=…` header (RFC 9110 §14.2) against a representation of `size` bytes. One range is
/// served; several, or anything unparsable, are ignored (the whole representation is sent).
enum ByteRange: Equatable {
    case satisfiable(Range<Int>)
    case unsatisfiable
    case ignored

    static func parse(_ header: String, size: Int) -> ByteRange {
        let trimmed = header.trimmingWhitespace()
        guard trimmed.lowercased().hasPrefix("bytes=") else { return .ignored }
        let specs = trimmed.dropFirst(6).split(separator: ",", omittingEmptySubsequences: false)
        guard specs.count == 1 else { return .ignored }
        let spec = specs[0].trimmingCharacters(in: " \t")
        guard let dash = spec.firstIndex(of: "-") else { return .ignored }
        let first = spec[..<dash], last = spec[spec.index(after: dash)...]
        // A position too long for an Int is still a position (RFC 9110 §14.1.2): past any end there is.
        func number(_ s: Substring) -> Int? {
            guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            return Int(s) ?? .max
        }
        if first.isEmpty {
            // The last N bytes.
            guard let n = number(last) else { return .ignored }
            guard n > 0, size > 0 else { return .unsatisfiable }
            return .satisfiable(max(0, size - n)..<size)
        }
        guard let start = number(first) else { return .ignored }
        var end = size - 1
        if !last.isEmpty {
            guard let e = number(last), e >= start else { return .ignored }
            end = min(e, size - 1)
        }
        guard start < size else { return .unsatisfiable }
        return .satisfiable(start..<(end + 1))
    }
}

/// One upload in progress: the row is created when the file's name and type are known, bytes are stored a
/// chunk at a time as they arrive, and the attachment completes (becomes visible) at the end.
final class Upload: @unchecked Sendable {
    // Used by the one task handling the request.
    let store: any ChatStore
    let id: UUID
    let sessionId: UUID
    let userId: UUID
    let maxBytes: Int
    let now: Date
    private var started = false
    private var contentType = ""
    private var pending: [UInt8] = []
    private var seq = 0
    private var size = 0
    private var checkedType = false
    private let digest = SHA256Stream()

    init(store: any ChatStore, id: UUID, sessionId: UUID, userId: UUID, maxBytes: Int, now: Date) {
        self.store = store
        self.id = id
        self.sessionId = sessionId
        self.userId = userId
        self.maxBytes = maxBytes
        self.now = now
    }

    func begin(filename rawName: String, contentType rawType: String) async throws {
        let filename = try Self.filename(rawName)
        contentType = try Self.mediaType(rawType)
        try await store.createAttachment(Attachment(id: id, sessionId: sessionId, userId: userId, filename: filename, contentType: contentType, createdAt: now))
        started = true
        pending.reserveCapacity(Attachment.chunkSize)
    }

    func append(_ buffer: ByteBuffer) async throws {
        try await append(buffer.readableBytesView)
    }

    func append(_ bytes: some Collection<UInt8>) async throws {
        size += bytes.count
        guard size <= maxBytes else { throw Self.tooLarge(maxBytes) }
        var rest = bytes[...]
        while !rest.isEmpty {
            let take = min(rest.count, Attachment.chunkSize - pending.count)
            pending.append(contentsOf: rest.prefix(take))
            rest = rest.dropFirst(take)
            if !checkedType, pending.count >= 12 { try checkType() }
            if pending.count == Attachment.chunkSize { try await flush() }
        }
    }

    private func flush() async throws {
        guard !pending.isEmpty else { return }
        digest.update(pending)
        try await store.putAttachmentChunk(AttachmentChunk(attachmentId: id, seq: seq, data: pending))
        seq += 1
        pending.removeAll(keepingCapacity: true)
    }

    /// For the image types shown inline, the leading bytes must be such an image.
    private func checkType() throws {
        checkedType = true
        guard let signatures = AttachmentController.inlineImages[contentType] else { return }
        var matches = signatures.contains { pending.starts(with: $0) }
        if contentType == "image/webp" { matches = matches && pending.count >= 12 && Array(pending[8..<12]) == Array("WEBP".utf8) }
        guard matches else {
            throw APIError(
                .unsupportedMediaType, code: "content_type_mismatch", message: "the file does not begin as \(contentType) does; send its real Content-Type"
            )
        }
    }

    func finish(quota: Int64?) async throws -> Attachment {
        guard started else { throw APIError.invalid("file", "no file was sent") }
        if !checkedType { try checkType() }
        try await flush()
        switch try await store.completeAttachment(id: id, size: Int64(size), sha256: digest.finish(), quota: quota, now: Timestamp.now()) {
        case .completed(let attachment):
            return attachment
        case .overQuota(let used):
            throw Self.overQuota(quota ?? 0, used: used)
        case .notFound:
            throw APIError.notFound("session")
        }
    }

    static func tooLarge(_ maxBytes: Int) -> APIError {
        APIError(
            .contentTooLarge, code: "attachment_too_large", message: "an attachment may have at most \(maxBytes) bytes",
            details: .object(["maxBytes": .int(Int64(maxBytes))])
        )
    }

    static func overQuota(_ quota: Int64, used: Int64) -> APIError {
        APIError(
            .contentTooLarge, code: "quota_exceeded",
            message: "this upload would take your attachments past your quota of \(quota) bytes (\(used) used)",
            details: .object(["quotaBytes": .int(quota), "usedBytes": .int(used)])
        )
    }

    /// Removes what was stored of an upload that failed; a failure here leaves it to the background sweep.
    func discard() async {
        guard started else { return }
        try? await store.deleteAttachment(id: id)
    }

    /// A file name as given, without any directory part, control characters or bidirectional controls (which
    /// make `‮txt.exe` read as `exe.txt`), 1 to 255 bytes of UTF-8; `file` when nothing of it is left (a name
    /// of only control characters, `/`, `.` or `..`), as when no name is given.
    static func filename(_ raw: String) throws -> String {
        guard raw.unicodeScalars.count <= 1024 else { throw APIError.invalid("filename", "must be at most 1024 characters") }
        let base = raw.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        let bidi: Set<UInt32> = [0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069]
        var name = String(String.UnicodeScalarView(base.unicodeScalars.filter {
            $0.value >= 32 && $0.value != 127 && !(0x80...0x9F).contains($0.value) && !bidi.contains($0.value)
        }))
        name = name.trimmingWhitespace()
        guard !name.isEmpty, name != ".", name != ".." else { return "file" }
        while name.utf8.count > 255 { name.removeLast() }
        return name
    }

    /// `type/subtype` in lowercase, keeping a `charset` parameter of a `text/` type (other parameters, and a
    /// charset on an image, which would also keep it from the image check, are dropped); anything else is a 400.
    static func mediaType(_ raw: String) throws -> String {
        let parts = raw.split(separator: ";")
        let essence = (parts.first.map(String.init) ?? "").trimmingWhitespace().lowercased()
        let pieces = essence.split(separator: "/", omittingEmptySubsequences: false)
        let token: (Substring) -> Bool = { piece in
            !piece.isEmpty && piece.count <= 127 && piece.utf8.allSatisfy { c in
                (c >= 48 && c <= 57) || (c >= 97 && c <= 122) || "!#$&-^_.+".utf8.contains(c)
            }
        }
        guard pieces.count == 2, token(pieces[0]), token(pieces[1]) else {
            throw APIError.invalid("Content-Type", "must be a media type like image/png or application/pdf")
        }
        guard essence != "multipart/form-data" else { throw APIError.invalid("Content-Type", "a multipart body needs its boundary parameter") }
        for parameter in parts.dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { String($0).trimmingWhitespace() }
            if pair.count == 2, pair[0].lowercased() == "charset", essence.hasPrefix("text/") {
                let charset = Substring(pair[1]).trimmingCharacters(in: "\"").lowercased()
                if !charset.isEmpty, charset.count <= 40, token(Substring(charset)) { return "\(essence); charset=\(charset)" }
            }
        }
        return essence
    }
}
