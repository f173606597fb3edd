import Foundation
import HTTPTypes
import Logging
import Testing
@testable import Service
@testable import Storage

@Suite("Sessions and messages API")
struct SessionTests {
    @Test("create, read, list, resolve and delete a session")
    func lifecycle() async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            let created = try await client.call(.post, "/api/sessions", token: user.token, body: #"{"metadata":{"topic":"billing"}}"#)
            #expect(created.status == .created)
            let id = try #require(created["sessionId"]?.string)
            #expect(created["userId"]?.string == user.id)
            #expect(created["state"]?.string == "active" && created["isResolved"] == .bool(false))
            #expect(created["metadata"] == .object(["topic": "billing"]))
            for key in ["expiresAt", "createdAt", "updatedAt"] {
                let text = try #require(created[key]?.string)
                #expect(Timestamp.parse(text) != nil && text.hasSuffix("Z") && text.count == 24, "\(key)=\(text)")
            }

            let fetched = try await client.call(.get, "/api/sessions/\(id)", token: user.token)
            #expect(fetched.status == .ok && fetched.json == created.json)

            _ = try await client.createSession(user.token)
            let list = try await client.call(.get, "/api/users/\(user.id)/sessions?limit=1", token: user.token)
            #expect(list.status == .ok && list["total"]?.int == 2 && list["sessions"]?.array.count == 1)

            let resolved = try await client.call(.post, "/api/sessions/\(id)/resolve", token: user.token)
            #expect(resolved["state"]?.string == "resolved" && resolved["isResolved"] == .bool(true) && resolved["resolvedAt"]?.string != nil)
            let again = try await client.call(.post, "/api/sessions/\(id)/resolve", token: user.token)
            #expect(again.status == .ok && again.json == resolved.json)
            let resolvedOnly = try await client.call(.get, "/api/users/\(user.id)/sessions?resolved=true", token: user.token)
            #expect(resolvedOnly["sessions"]?.array.map { $0["sessionId"]?.string } == [id])
            let activeOnly = try await client.call(.get, "/api/users/\(user.id)/sessions?state=active", token: user.token)
            #expect(activeOnly["total"]?.int == 1)

            let resume = try await client.call(.post, "/api/sessions/\(id)/resume", token: user.token)
            #expect(resume.status == .conflict && resume.errorCode == "session_resolved")

            #expect(try await client.call(.delete, "/api/sessions/\(id)", token: user.token).status == .noContent)
            #expect(try await client.call(.get, "/api/sessions/\(id)", token: user.token).status == .notFound)
        }
    }

    @Test("another user's session is a 404 everywhere and nothing changes")
    func isolation() async throws {
        let test = try await TestApp.make()
        try await test.run { client in
            let owner = try await client.register()
            let other = try await client.register()
            let id = try await client.createSession(owner.token)
            let message = try await client.call(.post, "/api/sessions/\(id)/messages", token: owner.token, body: #"{"content":"mine"}"#)
            let messageId = try #require(message["id"]?.string)
            let attempts: [(HTTPRequest.Method, String, String?)] = [
                (.get, "/api/sessions/\(id)", nil), (.delete, "/api/sessions/\(id)", nil), (.post, "/api/sessions/\(id)/resume", nil),
                (.post, "/api/sessions/\(id)/resolve", nil), (.post, "/api/sessions/\(id)/messages", #"{"content":"theirs"}"#),
                (.get, "/api/sessions/\(id)/messages", nil), (.get, "/api/sessions/\(id)/messages/\(messageId)", nil),
            ]
            for (method, uri, body) in attempts {
                let r = try await client.call(method, uri, token: other.token, body: body)
                #expect(r.status == .notFound && r.errorCode == "not_found", "\(method) \(uri)")
            }
            let list = try await client.call(.get, "/api/users/\(owner.id)/sessions", token: other.token)
            #expect(list.status == .forbidden)
            let session = try #require(try await test.store.session(id: UUID(uuidString: id)!))
            #expect(!session.isResolved)
            #expect(try await test.store.statistics().totalMessages == 1)
        }
    }

    @Test("admins can read and resolve any session")
    func admin() async throws {
        let test = try await TestApp.make()
        let hasher = PasswordHasher(parameters: test.config.passwordParameters)
        let now = Timestamp.now()
        try await test.store.createUser(User(
            id: UUID(), username: "root", email: nil, passwordHash: try await hasher.hash("admin-password"), role: .admin, createdAt: now, updatedAt: now
        ))
        try await test.run { client in
            let owner = try await client.register()
            let id = try await client.createSession(owner.token)
            let login = try await client.call(.post, "/auth/login", body: #"{"username":"root","password":"admin-password"}"#)
            let admin = try #require(login["accessToken"]?.string)
            #expect(login["user"]?["role"]?.string == "admin")
            #expect(try await client.call(.get, "/api/sessions/\(id)", token: admin).status == .ok)
            #expect(try await client.call(.get, "/api/users/\(owner.id)/sessions", token: admin)["total"]?.int == 1)
            #expect(try await client.call(.post, "/api/sessions/\(id)/resolve", token: admin)["state"]?.string == "resolved")
        }
    }

    @Test("messages are stored, paged in order, and fetched one by one")
    func messages() async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            var ids: [String] = []
            for i in 0..<7 {
                let r = try await client.call(
                    .post, "/api/sessions/\(id)/messages", token: user.token,
                    body: #"{"content":"message \#(i)","type":"markdown","metadata":{"i":\#(i)}}"#
                )
                #expect(r.status == .created)
                #expect(r["direction"]?.string == "inbound" && r["type"]?.string == "markdown" && r["userId"]?.string == user.id)
                ids.append(try #require(r["id"]?.string))
            }
            let page1 = try await client.call(.get, "/api/sessions/\(id)/messages?limit=3", token: user.token)
            #expect(page1["messages"]?.array.compactMap { $0["id"]?.string } == Array(ids[0..<3]))
            #expect(page1["hasMore"] == .bool(true))
            let page2 = try await client.call(.get, "/api/sessions/\(id)/messages?limit=3&after=\(ids[2])", token: user.token)
            #expect(page2["messages"]?.array.compactMap { $0["id"]?.string } == Array(ids[3..<6]))
            let tail = try await client.call(.get, "/api/sessions/\(id)/messages?after=\(ids[5])", token: user.token)
            #expect(tail["messages"]?.array.compactMap { $0["content"]?.string } == ["message 6"] && tail["hasMore"] == .bool(false))
            let back = try await client.call(.get, "/api/sessions/\(id)/messages?before=\(ids[6])&limit=2", token: user.token)
            #expect(back["messages"]?.array.compactMap { $0["id"]?.string } == Array(ids[4..<6]))
            let one = try await client.call(.get, "/api/sessions/\(id)/messages/\(ids[3])", token: user.token)
            #expect(one["content"]?.string == "message 3" && one["metadata"] == .object(["i": .int(3)]))
            #expect(try await client.call(.get, "/api/sessions/\(id)/messages/\(UUID())", token: user.token).status == .notFound)
        }
    }

    @Test("a retried send with the same clientMessageId returns the first message and stores nothing new")
    func idempotency() async throws {
        let test = try await TestApp.make()
        try await test.run { client in
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            let body = #"{"content":"once","clientMessageId":"client-42"}"#
            let first = try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: body)
            let second = try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: body)
            #expect(first.status == .created && second.status == .ok)
            #expect(first["id"] == second["id"] && second["clientMessageId"]?.string == "client-42")
            #expect(try await test.store.statistics().totalMessages == 1)
        }
    }

    @Test("resolved sessions refuse messages with 409, expired ones with 410 until resumed")
    func sendRules() async throws {
        let test = try await TestApp.make { $0.sessionTTL = 1 }
        try await test.run { client in
            let user = try await client.register()
            let resolved = try await client.createSession(user.token)
            _ = try await client.call(.post, "/api/sessions/\(resolved)/resolve", token: user.token)
            let r409 = try await client.call(.post, "/api/sessions/\(resolved)/messages", token: user.token, body: #"{"content":"x"}"#)
            #expect(r409.status == .conflict && r409.errorCode == "session_resolved")

            let expiring = try await client.createSession(user.token)
            let posted = try await client.call(.post, "/api/sessions/\(expiring)/messages", token: user.token, body: #"{"content":"before"}"#)
            #expect(posted.status == .created)
            try await Task.sleep(for: .milliseconds(1100))
            #expect(try await client.call(.get, "/api/sessions/\(expiring)", token: user.token)["state"]?.string == "expired")
            let r410 = try await client.call(.post, "/api/sessions/\(expiring)/messages", token: user.token, body: #"{"content":"x"}"#)
            #expect(r410.status == .gone && r410.errorCode == "session_expired")
            let resumed = try await client.call(.post, "/api/sessions/\(expiring)/resume", token: user.token)
            #expect(resumed.status == .ok && resumed["session"]?["state"]?.string == "active")
            #expect(resumed["messages"]?.array.compactMap { $0["content"]?.string } == ["before"])
            let after = try await client.call(.post, "/api/sessions/\(expiring)/messages", token: user.token, body: #"{"content":"after"}"#)
            #expect(after.status == .created)
            #expect(try await test.store.statistics().totalMessages == 2)
        }
    }

    @Test(
        "invalid message input is a 400 naming the field and stores nothing",
        arguments: [
            (#"{}"#, "content"),
            (#"{"content":""}"#, "content"),
            (#"{"content":42}"#, "content"),
            (#"{"content":"x","type":"agent"}"#, "type"),
            (#"{"content":"x","metadata":[1]}"#, "metadata"),
            (#"{"content":"x","clientMessageId":"has space"}"#, "clientMessageId"),
            (#"{"content":"x","sender":"me"}"#, "sender"),
            (#"{"content":"nul\u0000byte"}"#, "content"),
            ("{\"content\":\"a\(String(repeating: "\u{301}", count: 30_000))\"}", "content"),
            (#"{"content":"x","metadata":{"k":"\u0000"}}"#, "metadata"),
            ("{\"content\":\"\(String(repeating: "a", count: 10_001))\"}", "content"),
            ("{\"content\":\"x\",\"metadata\":{\"k\":\"\(String(repeating: "m", count: 17_000))\"}}", "metadata"),
        ]
    )
    func invalidMessages(body: String, field: String) async throws {
        let test = try await TestApp.make()
        try await test.run { client in
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            let r = try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: body)
            #expect(r.status == .badRequest && r["error"]?["details"]?["field"]?.string == field, "\(r.json)")
            #expect(try await test.store.statistics().totalMessages == 0)
        }
    }

    @Test(
        "bad ids and paging values are 400s naming the parameter",
        arguments: [
            ("/api/sessions/not-a-uuid", "sessionId"),
            ("/api/sessions/SID/messages?limit=0", "limit"),
            ("/api/sessions/SID/messages?limit=201", "limit"),
            ("/api/sessions/SID/messages?limit=ten", "limit"),
            ("/api/sessions/SID/messages?after=xyz", "after"),
            ("/api/sessions/SID/messages?page=2", "page"),
            ("/api/sessions/SID/messages/nope", "messageId"),
            ("/api/users/UID/sessions?state=open", "state"),
            ("/api/users/UID/sessions?resolved=yes", "resolved"),
            ("/api/users/UID/sessions?offset=-1", "offset"),
            ("/api/users/UID/sessions?limit=101", "limit"),
            ("/api/users/me/sessions", "userId"),
        ]
    )
    func badParameters(path: String, field: String) async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            let uri = path.replacingOccurrences(of: "SID", with: id).replacingOccurrences(of: "UID", with: user.id)
            let r = try await client.call(.get, uri, token: user.token)
            #expect(r.status == .badRequest && r["error"]?["details"]?["field"]?.string == field, "\(uri) → \(r.json)")
        }
    }

    @Test("an upload never sent with a message is refused near the end of its day and then swept; sent ones stay")
    func unsentUploads() async throws {
        let test = try await TestApp.make()
        let store = test.store
        try await test.run { client in
            let user = try await client.register()
            let session = try await client.createSession(user.token)
            let sessionId = try #require(UUID(uuidString: session)), userId = try #require(UUID(uuidString: user.id))
            func upload(_ text: String) async throws -> String {
                let r = try await client.call(.post, "/api/sessions/\(session)/attachments?filename=\(text).txt", token: user.token, body: text, headers: [.contentType: "text/plain"])
                #expect(r.status == .created, "\(r.json)")
                return r["id"]?.string ?? ""
            }
            // An upload that completed 23.5 hours ago, never sent: too close to its removal to be sent now.
            let now = Timestamp.now()
            let old = UUIDv7.make(now: now.addingTimeInterval(-84_600))
            try await store.createAttachment(Attachment(id: old, sessionId: sessionId, userId: userId, filename: "old.txt", contentType: "text/plain", createdAt: now.addingTimeInterval(-84_600)))
            try await store.putAttachmentChunk(AttachmentChunk(attachmentId: old, seq: 0, data: Array("old".utf8)))
            _ = try await store.completeAttachment(id: old, size: 3, sha256: "ab", quota: nil, now: now.addingTimeInterval(-84_600))
            let refused = try await client.call(.post, "/api/sessions/\(session)/messages", token: user.token, body: #"{"content":"late","attachments":["\#(old.lowercased)"]}"#)
            #expect(refused.status == .badRequest && refused.errorCode == "validation_failed", "\(refused.json)")
            #expect(refused.errorMessage.contains("upload it again"), "\(refused.json)")
            let history = try await client.call(.get, "/api/sessions/\(session)/messages", token: user.token)
            #expect(history["messages"]?.array.isEmpty == true)

            let sent = try await upload("sent"), unsent = try await upload("unsent")
            let message = try await client.call(.post, "/api/sessions/\(session)/messages", token: user.token, body: #"{"content":"here","attachments":["\#(sent)"]}"#)
            #expect(message.status == .created, "\(message.json)")

            let sweeper = SessionSweeper(store: store, interval: .seconds(30), logger: Logger(label: "test"))
            try await sweeper.sweep(now: Timestamp.now())
            // Within their day, unsent files stay; the old one goes in the next hour.
            #expect(try await client.call(.get, "/api/attachments/\(old.lowercased)", token: user.token).status == .ok)
            #expect(try await client.call(.get, "/api/attachments/\(unsent)", token: user.token).status == .ok)
            try await sweeper.sweep(now: Timestamp.now().addingTimeInterval(3600))
            #expect(try await client.call(.get, "/api/attachments/\(old.lowercased)", token: user.token).status == .notFound)
            #expect(try await client.call(.get, "/api/attachments/\(unsent)", token: user.token).status == .ok)
            // A day later: the file never sent is gone (and out of the quota), the one a message carries stays.
            try await sweeper.sweep(now: Timestamp.now().addingTimeInterval(Double(SessionSweeper.unsentUploadAge) + 60))
            #expect(try await client.call(.get, "/api/attachments/\(unsent)", token: user.token).status == .notFound)
            #expect(try await client.call(.get, "/api/attachments/\(sent)", token: user.token).status == .ok)
            #expect(try await store.attachmentBytes(userId: userId) == 4)
        }
    }

    @Test("the messages tier limits sends per user")
    func messageRateLimit() async throws {
        try await TestApp.make { $0.rateLimitMessages = RateLimit(limit: 2, windowSeconds: 60) }.run { client in
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            for i in 0..<2 {
                #expect(try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: #"{"content":"\#(i)"}"#).status == .created)
            }
            let limited = try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: #"{"content":"x"}"#)
            #expect(limited.status == .tooManyRequests && limited.headers[.retryAfter] != nil)
            // Reading is not a send.
            #expect(try await client.call(.get, "/api/sessions/\(id)/messages", token: user.token).status == .ok)
        }
    }

    @Test("the API tier limits per user and reports RateLimit headers")
    func apiRateLimit() async throws {
        try await TestApp.make { $0.rateLimitAPI = RateLimit(limit: 3, windowSeconds: 60) }.run { client in
            let user = try await client.register()
            var last: JSONResult?
            for _ in 0..<3 {
                last = try await client.call(.get, "/api/users/\(user.id)/sessions", token: user.token)
            }
            #expect(last?.headers[HTTPField.Name("RateLimit-Limit")!] == "3")
            let limited = try await client.call(.get, "/api/users/\(user.id)/sessions", token: user.token)
            #expect(limited.status == .tooManyRequests)
            // Another user has a bucket of their own.
            let other = try await client.register()
            #expect(try await client.call(.get, "/api/users/\(other.id)/sessions", token: other.token).status == .ok)
        }
    }
}
