import Foundation
import HTTPTypes
import Logging
import Synchronization
import Testing
@testable import Service
@testable import Storage

@Suite("Building blocks")
struct UnitTests {
    @Test("the Date header is IMF-fixdate (RFC 9110 §5.6.7)")
    func httpDate() {
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.format(951_782_400) == "Tue, 29 Feb 2000 00:00:00 GMT")
        #expect(HTTPDate.format(1_798_761_599) == "Thu, 31 Dec 2026 23:59:59 GMT")
        #expect(HTTPDate.format(-1) == "Wed, 31 Dec 1969 23:59:59 GMT")
    }

    @Test("UTF-8 checked in pieces agrees with a whole-text check, wherever the text is cut")
    func utf8InPieces() {
        var samples: [[UInt8]] = [
            Array("plain ascii".utf8), Array("é…😀 日本語".utf8), [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
            [0xE0, 0x9F, 0xBF], [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF], [0xFF], [0x80], [0xE2, 0x82], [0xCE, 0xBA, 0xE1],
        ]
        var random = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            // Mostly bytes that begin or continue multi-byte characters, so that many are valid and many are not.
            samples.append((0..<Int.random(in: 0...8, using: &random)).map { _ in
                [UInt8.random(in: 0x80...0xBF, using: &random), UInt8.random(in: 0xC0...0xFF, using: &random), UInt8(ascii: "a")].randomElement(using: &random)!
            })
        }
        for bytes in samples {
            let valid = String(validating: bytes, as: UTF8.self) != nil
            for cut in 0...bytes.count {
                var stream = UTF8Stream()
                let accepted = stream.feed(bytes[..<cut]) && stream.feed(bytes[cut...]) && stream.isComplete
                #expect(accepted == valid, "\(bytes.map { String($0, radix: 16) }) cut at \(cut)")
            }
        }
    }

    @Test("JWTs round-trip and refuse tampering, other algorithms and expiry")
    func jwt() throws {
        let signer = JWTSigner(secret: Array("k".utf8))
        let now = Int64(Date().timeIntervalSince1970)
        let claims = AccessClaims(subject: UUID(), role: .admin, issuedAt: now, expiresAt: now + 60, jti: "j", family: UUID())
        let token = signer.sign(claims)
        #expect(try signer.verify(token) == claims)
        #expect(throws: JWTError.badSignature) { try JWTSigner(secret: Array("other".utf8)).verify(token) }
        #expect(throws: JWTError.expired) { try signer.verify(token, now: Date(timeIntervalSince1970: Double(now + 61))) }
        let parts = token.split(separator: ".")
        let none = Base64.urlEncode(Array(#"{"alg":"none"}"#.utf8)) + "." + parts[1] + "."
        #expect(throws: JWTError.unsupportedAlgorithm) { try signer.verify(none) }
        #expect(throws: JWTError.malformed) { try signer.verify("x.y") }
    }

    @Test("scrypt hashes use the OWASP parameters and verify only the right password")
    func passwords() async throws {
        let hasher = PasswordHasher()
        let hash = try await hasher.hash("hunter2hunter2")
        #expect(hash.hasPrefix("$scrypt$ln=14,r=8,p=5$"))
        #expect(try await hasher.verify("hunter2hunter2", against: hash))
        #expect(try await hasher.verify("hunter3hunter3", against: hash) == false)
        #expect(try await hasher.verify("x", against: "$bcrypt$nonsense") == false)
        #expect(try await hasher.hash("hunter2hunter2") != hash)
    }

    @Test("the LRU evicts least recently used entries by count and by cost")
    func lru() {
        let cache = LRUCache<String, Int>(maxEntries: 3, maxCost: 10)
        cache.set("a", 1)
        cache.set("b", 2)
        cache.set("c", 3)
        _ = cache.get("a")
        cache.set("d", 4)
        #expect(cache.get("b") == nil && cache.get("a") == 1 && cache.count == 3)
        cache.set("big", 5, cost: 9)
        #expect(cache.totalCost <= 10)
        #expect(cache.get("big") == 5)
        for i in 0..<1000 { cache.set("k\(i)", i) }
        #expect(cache.count == 3)
    }

    @Test("token buckets refill at limit per window")
    func buckets() {
        let limiter = RateLimiter()
        let rule = RateLimit(limit: 2, windowSeconds: 10)
        #expect(limiter.take("k", rule: rule, now: 100).allowed)
        #expect(limiter.take("k", rule: rule, now: 100).allowed)
        let refused = limiter.take("k", rule: rule, now: 100)
        #expect(!refused.allowed && refused.retryAfterSeconds == 5)
        #expect(limiter.take("k", rule: rule, now: 105).allowed)
        #expect(limiter.take("other", rule: rule, now: 100).allowed)
    }

    @Test("rate and duration texts parse as configured")
    func parsing() {
        #expect(RateLimit.parse("300/1m") == .some(RateLimit(limit: 300, windowSeconds: 60)))
        #expect(RateLimit.parse("10/m") == .some(RateLimit(limit: 10, windowSeconds: 60)))
        #expect(RateLimit.parse("off") == .some(nil))
        #expect(RateLimit.parse("lots") == nil)
        #expect(RateLimit.parse("-1/1m") == nil)
        #expect(DurationText.parse("15m") == 900 && DurationText.parse("30d") == 2_592_000 && DurationText.parse("30s") == 30)
        #expect(DurationText.parse("15x") == nil && DurationText.parse("") == nil && DurationText.parse("m") == nil)
    }

    @Test("white space is trimmed at both ends only; JSON media types are recognised in any case, with parameters")
    func textAndMediaTypes() {
        #expect(" \t 300/1m \n".trimmingWhitespace() == "300/1m" && "  ".trimmingWhitespace() == "" && "a b".trimmingWhitespace() == "a b")
        #expect("\u{00A0}é\u{2003}".trimmingWhitespace() == "é")
        #expect(RateLimit.parse("  20/1h ") == .some(RateLimit(limit: 20, windowSeconds: 3600)))
        for accepted in ["application/json", "Application/JSON", " application/json ; charset=utf-8", "application/problem+json", "text/abcdef+json"] {
            #expect(JSONBody.isJSONMediaType(accepted), "\(accepted)")
        }
        for refused in ["", " ", "text/plain", "application/jsonx", "xapplication/json", "application/json5", "multipart/form-data; x=+json", "application/\u{0F}son"] {
            #expect(!JSONBody.isJSONMediaType(refused), "\(refused)")
        }
    }

    @Test("console files: gzip when accepted, ETags compared as RFC 9110 says, a policy naming only this server")
    func webAssets() {
        #expect(WebController.acceptsGzip("gzip, deflate, br") && WebController.acceptsGzip("GZIP;q=0.5") && WebController.acceptsGzip("br, *"))
        #expect(!WebController.acceptsGzip(nil) && !WebController.acceptsGzip("identity") && !WebController.acceptsGzip("gzip;q=0"))
        #expect(!WebController.acceptsGzip("*;q=0.8, gzip;q=0") && WebController.acceptsGzip("*;q=0, gzip"))
        #expect(WebController.matches("\"a\", \"b\"", "\"b\"") && WebController.matches("W/\"b\"", "\"b\"") && WebController.matches("*", "\"b\""))
        #expect(!WebController.matches("\"a\"", "\"b\"") && !WebController.matches("b", "\"b\""))
        let policy = WebController.pagePolicy(host: "chat.example.com:3006", frameAncestors: "'none'")
        #expect(policy.contains("script-src 'self';") && policy.contains("style-src 'self';") && policy.contains("frame-ancestors 'none'"))
        #expect(policy.contains("connect-src 'self' ws://chat.example.com:3006 wss://chat.example.com:3006;") && !policy.contains("unsafe"))
        #expect(WebController.pagePolicy(host: "evil; script-src *", frameAncestors: "'none'").contains("connect-src 'self';"))
        #expect(WebController.pagePolicy(host: nil, frameAncestors: "https://shop.example").hasSuffix("frame-ancestors https://shop.example"))
        let text = Array(String(repeating: "<p>a chat console</p>\n", count: 200).utf8)
        let gzipped = Gzip.compress(text) ?? []
        #expect(gzipped.starts(with: [0x1F, 0x8B, 0x08]) && gzipped.count < text.count / 10)
        // The console and widget stay small (uncompressed, all files together).
        #expect(WebAssets.totalBytes <= 150 * 1024)
    }

    @Test("base64 round-trips in both alphabets")
    func base64() {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 * 37 + 11) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
            #expect(Base64.decode(Base64.urlEncode(bytes)) == bytes)
            #expect(Base64.encode(bytes) == Data(bytes).base64EncodedString())
        }
        #expect(Base64.decode("a") == nil && Base64.decode("ab$c") == nil)
    }

    @Test("security headers: each once, even applied twice; a page's own policy, cache and resource policy are kept")
    func securityHeaders() {
        var api = HTTPFields([HTTPField(name: .contentType, value: "application/json")])
        SecurityHeaders.apply(to: &api, hstsMaxAge: 60)
        SecurityHeaders.apply(to: &api, hstsMaxAge: 3600)
        for name in ["X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Cache-Control", "Strict-Transport-Security", "Referrer-Policy"] {
            #expect(api[values: HTTPField.Name(name)!].count == 1, "\(name)")
        }
        #expect(api[.strictTransportSecurity] == "max-age=3600; includeSubDomains" && api[.cacheControl] == "no-store")
        #expect(api[HTTPField.Name("X-Frame-Options")!] == "DENY" && api[.contentSecurityPolicy]?.hasPrefix("default-src 'none'") == true)

        var widget = HTTPFields([
            HTTPField(name: .contentSecurityPolicy, value: "default-src 'self'; frame-ancestors https://shop.example"),
            HTTPField(name: .cacheControl, value: "public, max-age=31536000, immutable"),
            HTTPField(name: HTTPField.Name("Cross-Origin-Resource-Policy")!, value: "cross-origin"),
        ])
        SecurityHeaders.apply(to: &widget, hstsMaxAge: nil)
        #expect(widget[HTTPField.Name("X-Frame-Options")!] == nil && widget[.strictTransportSecurity] == nil)
        #expect(widget[.contentSecurityPolicy] == "default-src 'self'; frame-ancestors https://shop.example")
        #expect(widget[.cacheControl] == "public, max-age=31536000, immutable")
        #expect(widget[values: HTTPField.Name("Cross-Origin-Resource-Policy")!] == ["cross-origin"])
        #expect(widget[HTTPField.Name("X-Content-Type-Options")!] == "nosniff")

        var console = HTTPFields([HTTPField(name: .contentSecurityPolicy, value: "default-src 'self'; frame-ancestors 'none'")])
        SecurityHeaders.apply(to: &console, hstsMaxAge: nil)
        #expect(console[HTTPField.Name("X-Frame-Options")!] == "DENY")
    }

    @Test("log lines carry the logger's metadata, rendered when written; a line's own metadata wins")
    func logMetadata() {
        let lines = LinesStream()
        var logger = Logger(label: "test") { label in
            var handler = DeferredMetadataLogHandler(StreamLogHandler(label: label, stream: lines, metadataProvider: nil))
            handler.logLevel = .info
            return handler
        }
        logger[metadataKey: "request_id"] = "r-1"
        logger[metadataKey: "user"] = "ann"
        logger.debug("not written")
        logger.info("hello", metadata: ["user": "bob"])
        #expect(logger[metadataKey: "request_id"] == "r-1")
        let written = lines.text
        #expect(!written.contains("not written"))
        #expect(written.contains(" info test: request_id=r-1 user=bob [ServiceTests] hello\n"), "\(written)")
    }
}

/// A log stream that keeps what is written.
final class LinesStream: TextOutputStream, Sendable {
    private let lines = Mutex("")
    var text: String { lines.withLock { $0 } }
    func write(_ string: String) { lines.withLock { $0 += string } }
}

@Suite("Realtime rooms")
struct RealtimeRoomTests {
    static func activeSession(at now: Date) -> ChatSession {
        ChatSession(
            id: UUID(), userId: UUID(), metadata: .object([:]), state: .active, isResolved: false,
            expiresAt: now.addingTimeInterval(3600), resolvedAt: nil, createdAt: now, updatedAt: now
        )
    }

    @Test("after the change feed reconnects, a busy room is caught up from what it still remembers, not earlier")
    func catchUpStartsWhereTheRoomsMemoryEnds() {
        let hub = RealtimeHub()
        let now = Date()
        let session = Self.activeSession(at: now)
        let client = RealtimeClient(maxQueued: 10_000) { _, _ in }
        client.setIdentity(AccessClaims(subject: session.userId, role: .user, issuedAt: 0, expiresAt: .max, jti: "j", family: nil))
        hub.track(client)
        #expect(hub.admit(client, userId: session.userId))
        #expect(hub.join(client, session: session, recovering: false))
        // 600 messages within one second: all inside the 10 s the catch-up looks back.
        let ids = (0..<600).map { UUIDv7.make(now: now.addingTimeInterval(Double($0) / 1000)) }
        for id in ids {
            hub.publish(message: ChatMessage(
                id: id, sessionId: session.id, userId: session.userId, content: "m", type: "text", direction: .inbound,
                metadata: .object([:]), clientMessageId: nil, createdAt: now, updatedAt: now
            ))
        }
        let cursor = hub.catchUpCursors().first { $0.session == session.id }?.after
        // The 88 oldest were sent and forgotten: reading from before them would send them again.
        #expect(cursor.map { $0.lowercased >= ids[88].lowercased } == true)
        #expect(cursor.map { $0.lowercased < ids[599].lowercased } == true)
    }

    @Test("typing: a change inside the 500 ms window is held and sent at its end; nothing held goes out after a leave")
    func typingThrottle() async throws {
        let client = RealtimeClient(maxQueued: 100) { _, _ in }
        let (kept, left) = (UUID(), UUID())
        client.joined(kept, recovering: false)
        client.joined(left, recovering: false)
        let sent = Mutex<[(UUID, Bool)]>([])
        func type(_ session: UUID, _ isTyping: Bool) {
            client.typing(in: session, isTyping: isTyping) { state in sent.withLock { $0.append((session, state)) } }
        }
        type(kept, true)  // the first goes out at once
        type(kept, true)  // a repeat inside the window: dropped
        type(kept, false)  // a change: held
        type(left, true)
        type(left, false)  // held, then the connection leaves: never sent
        #expect(client.left(left))  // the others had heard it typing
        #expect(sent.withLock { $0.map(\.1) } == [true, true])
        // The held change goes out at the window's end (later when the machine is busy); the one of the session
        // left would have gone out with it.
        let deadline = ContinuousClock.now + .seconds(10)
        while sent.withLock({ $0.count }) < 3, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(300))
        let all = sent.withLock { $0 }
        #expect(all.map(\.0) == [kept, left, kept])
        #expect(all.map(\.1) == [true, true, false])
    }

    @Test("a connection that closed while its join read storage is not put in the room")
    func aJoinThatEndsAfterTheConnectionIsNotKept() {
        let hub = RealtimeHub()
        let now = Date()
        let session = Self.activeSession(at: now)
        let frames = Mutex(0)
        let client = RealtimeClient(maxQueued: 100) { _, _ in frames.withLock { $0 += 1 } }
        client.setIdentity(AccessClaims(subject: session.userId, role: .user, issuedAt: 0, expiresAt: .max, jti: "j", family: nil))
        hub.track(client)
        #expect(hub.admit(client, userId: session.userId))
        hub.remove(client)
        #expect(!hub.join(client, session: session, recovering: false))
        #expect(!client.sessions.contains(session.id))
        hub.broadcast(.typing(session: session.id, user: UUID(), agent: nil, isTyping: true), session: session.id, exceptUser: nil)
        #expect(frames.withLock { $0 } == 0)
    }
}

extension RealtimeRoomTests {
    @Test("a connection that closed while its token was checked does not take one of its user's places")
    func anAdmissionAfterTheConnectionClosedIsRefused() {
        let hub = RealtimeHub(maxConnectionsPerUser: 1)
        let user = UUID()
        let gone = RealtimeClient(maxQueued: 10) { _, _ in }
        hub.track(gone)
        hub.remove(gone)
        #expect(!hub.admit(gone, userId: user))
        let next = RealtimeClient(maxQueued: 10) { _, _ in }
        hub.track(next)
        #expect(hub.admit(next, userId: user))
        #expect(hub.connectionCount == 1)
    }
}

@Suite("Inbound queue")
struct InboundQueueTests {
    @Test("items are handled one at a time in order; reading pauses at 16 waiting and resumes at 4")
    func orderAndBackpressure() async throws {
        let queue = InboundQueue<Int>()
        let handled = Mutex<[Int]>([])
        let reading = Mutex<[Bool]>([])
        let gate = Mutex(false)  // the first item is handled only once the rest are queued
        let busy = Mutex(0)
        for n in 0..<20 {
            queue.push(n, handle: { n in
                busy.withLock { $0 += 1; #expect($0 == 1) }
                while n == 0, !gate.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
                handled.withLock { $0.append(n) }
                busy.withLock { $0 -= 1 }
            }, setReading: { on in reading.withLock { $0.append(on) } })
        }
        #expect(reading.withLock { $0 } == [false])
        gate.withLock { $0 = true }
        let deadline = ContinuousClock.now + .seconds(10)
        while handled.withLock({ $0.count }) < 20, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(handled.withLock { $0 } == Array(0..<20))
        #expect(reading.withLock { $0 } == [false, true])
    }

    @Test("closing drops what waits, refuses more and cancels the item being handled")
    func closeCancels() async throws {
        let queue = InboundQueue<Int>()
        let started = Mutex(false)
        let outcome = Mutex<[String]>([])
        let handle: @Sendable (Int) async -> Void = { n in
            started.withLock { $0 = true }
            do {
                try await Task.sleep(for: .seconds(30))
                outcome.withLock { $0.append("\(n) finished") }
            } catch {
                outcome.withLock { $0.append("\(n) cancelled") }
            }
        }
        queue.push(1, handle: handle, setReading: { _ in })
        queue.push(2, handle: handle, setReading: { _ in })
        while !started.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        #expect(queue.close())
        #expect(!queue.close())
        queue.push(3, handle: handle, setReading: { _ in })
        let deadline = ContinuousClock.now + .seconds(10)
        while outcome.withLock({ $0.isEmpty }), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(100))
        #expect(outcome.withLock { $0 } == ["1 cancelled"])
    }
}
