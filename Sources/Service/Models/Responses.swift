#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// The schemas of `openapi.yaml` (`components/schemas` and the inline response objects), one type each.
///
/// Each type writes its fields in the order of the schema's `properties`, `id` first where there is one,
/// every field present (`null` when empty). `Tests/e2e/openapi_check.py` validates every response the
/// end-to-end suite receives against these schemas, field order included.
enum API {}

extension API {
    /// `Error`: `{"error":{"code","message","details"}}`.
    struct ErrorBody: JSONWritable, Sendable {
        var code: String
        var message: String
        var details: JSONValue?

        init(code: String, message: String, details: JSONValue?) {
            self.code = code
            self.message = message
            self.details = details
        }

        init(_ error: APIError) {
            self.init(code: error.code, message: error.message, details: error.details)
        }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.key("error")
                writeError(to: &json)
            }
        }

        /// The inner `error` object alone (realtime `error` events carry it).
        func writeError(to json: inout JSONWriter) {
            json.object { json in
                json.field("code", code)
                json.field("message", message)
                json.field("details", details ?? .null)
            }
        }
    }

    /// `User`.
    struct User: JSONWritable, Sendable {
        var id: UUID
        var username: String
        var role: Role
        var email: String?
        var createdAt: Date

        init(_ u: Storage.User) {
            id = u.id
            username = u.username
            role = u.role
            email = u.email
            createdAt = u.createdAt
        }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("id", id)
                json.field("username", username)
                json.field("role", role.rawValue)
                json.field("email", email)
                json.field("createdAt", createdAt)
            }
        }
    }

    /// `TokenResponse`: the answer of register, login and refresh.
    struct TokenResponse: JSONWritable, Sendable {
        var user: User
        var accessToken: String
        var refreshToken: String
        var tokenType = "Bearer"
        var expiresIn: Int

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.key("user")
                json.value(user)
                json.field("accessToken", accessToken)
                json.field("refreshToken", refreshToken)
                json.field("tokenType", tokenType)
                json.field("expiresIn", expiresIn)
            }
        }
    }

    /// `Agent`: a configured agent, without URLs or secrets.
    struct Agent: JSONWritable, Sendable {
        var name: String
        var kind: String
        var description: String?
        var isDefault: Bool
        var available: Bool

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("name", name)
                json.field("kind", kind)
                json.field("description", description)
                json.field("default", isDefault)
                json.field("available", available)
            }
        }
    }

    /// The `GET /api/agents` answer.
    struct AgentList: JSONWritable, Sendable {
        var defaultAgent: String?
        var agents: [Agent]

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("defaultAgent", defaultAgent)
                json.field("agents", agents)
            }
        }
    }

    /// `Session.handoff`.
    struct Handoff: JSONWritable, Sendable {
        var status: HandoffState
        var assigneeId: UUID?
        var since: Date?

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("status", status.rawValue)
                json.field("assigneeId", assigneeId)
                json.field("since", since)
            }
        }
    }

    /// `Session`.
    struct Session: JSONWritable, Sendable {
        var sessionId: UUID
        var userId: UUID
        var metadata: JSONValue
        var state: SessionState
        var isResolved: Bool
        var expiresAt: Date
        var resolvedAt: Date?
        var createdAt: Date
        var updatedAt: Date
        var agent: String?
        var handoff: Handoff?
        /// In lists: messages of others the caller has not read (`POST /api/sessions/{id}/read`).
        var unread: Int?
        /// In the handoff list: who the session belongs to (staff see a guest as one).
        var owner: Storage.User?

        /// The session as seen at `now`: a session past its expiry is expired even before the sweeper marks it.
        init(_ s: ChatSession, now: Date = Date(), unread: Int? = nil) {
            self.unread = unread
            sessionId = s.id
            userId = s.userId
            metadata = s.metadata
            state = s.state == .active && s.expiresAt <= now ? .expired : s.state
            isResolved = s.isResolved
            expiresAt = s.expiresAt
            resolvedAt = s.resolvedAt
            createdAt = s.createdAt
            updatedAt = s.updatedAt
            agent = s.agent
            handoff = s.handoff.map { Handoff(status: $0, assigneeId: s.assigneeId, since: s.handoffAt) }
        }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("sessionId", sessionId)
                json.field("userId", userId)
                json.field("metadata", metadata)
                json.field("state", state.rawValue)
                json.field("isResolved", isResolved)
                json.field("expiresAt", expiresAt)
                json.field("resolvedAt", resolvedAt)
                json.field("createdAt", createdAt)
                json.field("updatedAt", updatedAt)
                json.field("agent", agent)
                json.field("handoff", handoff)
                if let unread { json.field("unread", unread) }
                if let owner {
                    json.key("owner")
                    json.object { json in
                        json.field("id", owner.id)
                        json.field("username", owner.username)
                        json.field("role", owner.role.rawValue)
                    }
                }
            }
        }
    }

    /// `AdminUser`: an account as admins see it.
    struct AdminUser: JSONWritable, Sendable {
        var user: Storage.User

        init(_ user: Storage.User) { self.user = user }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("id", user.id)
                json.field("username", user.username)
                json.field("role", user.role.rawValue)
                json.field("email", user.email)
                json.field("createdAt", user.createdAt)
                json.field("updatedAt", user.updatedAt)
                json.field("disabled", user.disabledAt != nil)
                json.field("disabledAt", user.disabledAt)
            }
        }
    }

    /// `AdminUserList`: a page of accounts.
    struct AdminUserList: JSONWritable, Sendable {
        var users: [AdminUser]
        var total: Int
        var limit: Int
        var offset: Int

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("users", users)
                json.field("total", total)
                json.field("limit", limit)
                json.field("offset", offset)
            }
        }
    }

    /// `AgentOperations`: an agent as admins see it.
    struct AgentOperations: JSONWritable, Sendable {
        var name: String
        var kind: String
        var isDefault: Bool
        var breaker: String
        var stats: AgentStats.Snapshot

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("name", name)
                json.field("kind", kind)
                json.field("default", isDefault)
                json.field("breaker", breaker)
                json.field("requests", stats.requests)
                json.field("errors", stats.errors)
                json.field("refused", stats.refused)
                json.key("latencyMs")
                if let p50 = stats.p50, let p95 = stats.p95 {
                    json.object { json in
                        json.field("p50", p50)
                        json.field("p95", p95)
                    }
                } else {
                    json.null()
                }
                json.key("lastError")
                if let last = stats.lastError {
                    json.object { json in
                        json.field("code", last.code)
                        json.field("at", last.at)
                    }
                } else {
                    json.null()
                }
            }
        }
    }

    /// The `GET /api/admin/agents` answer.
    struct AgentOperationsList: JSONWritable, Sendable {
        var agents: [AgentOperations]

        func write(to json: inout JSONWriter) {
            json.object { json in json.field("agents", agents) }
        }
    }

    /// `AdminStatus`: the server as admins see it.
    struct AdminStatus: JSONWritable, Sendable {
        var status: Status
        var storage: StoreHealth
        var connections: Int
        var agents: [AgentOperations]

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("version", status.version)
                json.field("uptimeSeconds", status.uptimeSeconds)
                json.field("startedAt", status.startedAt)
                json.key("storage")
                json.object { json in
                    json.field("backend", status.backend)
                    switch storage {
                    case .up:
                        json.field("up", true)
                        json.field("reason", nil as String?)
                    case .down(let reason, _):
                        json.field("up", false)
                        json.field("reason", reason)
                    }
                }
                json.field("realtimeConnections", connections)
                json.key("agents")
                json.object { json in
                    json.field("configured", agents.count)
                    json.field("breakersOpen", agents.filter { $0.breaker != "closed" }.count)
                }
                json.key("statistics")
                status.writeStatistics(to: &json)
            }
        }
    }

    /// `Activity`: the admins' charts.
    struct Activity: JSONWritable, Sendable {
        /// The days of the period, oldest first, each `YYYY-MM-DD`.
        var days: [String]
        var report: ActivityReport

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.key("days")
                json.array { json in
                    for day in days {
                        json.object { json in
                            json.field("date", day)
                            json.field("messages", report.messagesPerDay[day] ?? 0)
                            json.field("sessions", report.sessionsPerDay[day] ?? 0)
                            let replies = report.firstReplySeconds[day] ?? []
                            json.field("firstReplies", replies.count)
                            json.key("firstReplyMedianSeconds")
                            Self.median(replies, to: &json)
                        }
                    }
                }
                json.key("sessions")
                json.object { json in
                    json.field("opened", report.sessionsOpened)
                    json.field("resolved", report.sessionsResolved)
                    json.key("resolvedShare")
                    if report.sessionsOpened > 0 {
                        json.value((Double(report.sessionsResolved) / Double(report.sessionsOpened) * 1000).rounded() / 1000)
                    } else {
                        json.null()
                    }
                }
                json.key("firstReply")
                json.object { json in
                    let all = report.firstReplySeconds.values.flatMap { $0 }
                    json.field("sessions", all.count)
                    json.key("medianSeconds")
                    Self.median(all, to: &json)
                }
            }
        }

        /// The median of `values` in seconds, to the millisecond; null when there are none.
        private static func median(_ values: [Double], to json: inout JSONWriter) {
            let sorted = values.sorted()
            guard !sorted.isEmpty else { return json.null() }
            let middle = sorted.count / 2
            let median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
            json.value((median * 1000).rounded() / 1000)
        }
    }

    /// `ReadState`: how far the caller has read a session.
    struct ReadState: JSONWritable, Sendable {
        var read: SessionRead
        var unread: Int

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("sessionId", read.sessionId)
                json.field("userId", read.userId)
                json.field("lastMessageId", read.lastReadId)
                json.field("readAt", read.readAt)
                json.field("unread", unread)
            }
        }
    }

    /// `Message`.
    struct Message: JSONWritable, Sendable {
        var id: UUID
        var sessionId: UUID
        var userId: UUID?
        var content: String
        var type: String
        var direction: MessageDirection
        var metadata: JSONValue
        var clientMessageId: String?
        var createdAt: Date
        var updatedAt: Date
        var editedAt: Date?
        var deletedAt: Date?
        var attachments: [AttachmentRef]

        init(_ m: ChatMessage) {
            id = m.id
            sessionId = m.sessionId
            userId = m.userId
            content = m.content
            type = m.type
            direction = m.direction
            metadata = m.metadata
            clientMessageId = m.clientMessageId
            createdAt = m.createdAt
            updatedAt = m.updatedAt
            editedAt = m.editedAt
            deletedAt = m.deletedAt
            attachments = m.attachments.map(AttachmentRef.init)
        }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("id", id)
                json.field("sessionId", sessionId)
                json.field("userId", userId)
                json.field("content", content)
                json.field("type", type)
                json.field("direction", direction.rawValue)
                json.field("metadata", metadata)
                json.field("clientMessageId", clientMessageId)
                json.field("createdAt", createdAt)
                json.field("updatedAt", updatedAt)
                json.field("editedAt", editedAt)
                json.field("deletedAt", deletedAt)
                json.field("attachments", attachments)
            }
        }
    }

    /// `AttachmentRef`: an attachment as a message shows it.
    struct AttachmentRef: JSONWritable, Sendable {
        var ref: Storage.AttachmentRef

        init(_ ref: Storage.AttachmentRef) { self.ref = ref }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("id", ref.id)
                json.field("filename", ref.filename)
                json.field("contentType", ref.contentType)
                json.field("size", Int(ref.size))
                json.field("url", "/api/attachments/\(ref.id.lowercased)")
            }
        }
    }

    /// `WebhookDelivery`: one event for one webhook.
    struct WebhookDeliveryItem: JSONWritable, Sendable {
        var delivery: WebhookDelivery

        init(_ delivery: WebhookDelivery) { self.delivery = delivery }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("eventId", delivery.eventId)
                json.field("webhook", delivery.webhook)
                json.field("type", delivery.type)
                json.field("sessionId", delivery.sessionId)
                json.field("status", delivery.status.rawValue)
                json.field("attempts", delivery.attempts)
                json.field("lastError", delivery.lastError)
                json.field("createdAt", delivery.createdAt)
                json.field("nextAttemptAt", delivery.status == .pending ? delivery.nextAttemptAt : nil)
                json.field("deliveredAt", delivery.deliveredAt)
            }
        }
    }

    /// `WebhookDeliveryList`: `GET /api/admin/webhooks/deliveries`.
    struct WebhookDeliveryList: JSONWritable, Sendable {
        var deliveries: [WebhookDeliveryItem]

        func write(to json: inout JSONWriter) {
            json.object { json in json.field("deliveries", deliveries) }
        }
    }

    /// `Attachment`: `POST /api/sessions/{sessionId}/attachments`.
    struct Attachment: JSONWritable, Sendable {
        var attachment: Storage.Attachment

        init(_ attachment: Storage.Attachment) { self.attachment = attachment }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("id", attachment.id)
                json.field("sessionId", attachment.sessionId)
                json.field("userId", attachment.userId)
                json.field("filename", attachment.filename)
                json.field("contentType", attachment.contentType)
                json.field("size", Int(attachment.size))
                json.field("sha256", attachment.sha256)
                json.field("createdAt", attachment.completedAt ?? attachment.createdAt)
                json.field("url", "/api/attachments/\(attachment.id.lowercased)")
            }
        }
    }

    /// `MessagePage`: `GET /api/sessions/{sessionId}/messages`.
    struct MessagePage: JSONWritable, Sendable {
        var sessionId: UUID
        var messages: [Message]
        var hasMore: Bool

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("sessionId", sessionId)
                json.field("messages", messages)
                json.field("hasMore", hasMore)
            }
        }
    }

    /// `SearchResults`: messages found, best first, each with the text around its matches as parts.
    struct SearchResults: JSONWritable, Sendable {
        var page: SearchPage

        /// The opaque cursor of the page after `hit`: its rank and id, base64url.
        static func cursor(after hit: SearchHit) -> String {
            Base64.urlEncode(Array("\(hit.cursor.rank) \(hit.cursor.id.lowercased)".utf8))
        }

        static func cursor(_ text: String) -> SearchCursor? {
            guard text.utf8.count <= 128, let bytes = Base64.decodeURLStrict(text) else { return nil }
            let parts = String(decoding: bytes, as: UTF8.self).split(separator: " ")
            guard parts.count == 2, let rank = Double(parts[0]), rank.isFinite, let id = UUID(text: parts[1]) else { return nil }
            return SearchCursor(rank: rank, id: id)
        }

        /// The snippet as parts of text, `match` true for the words that matched.
        static func parts(_ snippet: String) -> [(text: String, match: Bool)] {
            var parts: [(text: String, match: Bool)] = []
            var text = ""
            var match = false
            func flush() {
                if !text.isEmpty { parts.append((text, match)) }
                text = ""
            }
            for character in snippet {
                switch character {
                case SearchHit.matchStart: flush(); match = true
                case SearchHit.matchEnd: flush(); match = false
                default: text.append(character)
                }
            }
            flush()
            return parts
        }

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.key("results")
                json.array { json in
                    for hit in page.hits {
                        json.object { json in
                            json.field("sessionId", hit.message.sessionId)
                            json.key("message")
                            json.value(Message(hit.message))
                            json.key("snippet")
                            json.array { json in
                                for part in Self.parts(hit.snippet) {
                                    json.object { json in
                                        json.field("text", part.text)
                                        json.field("match", part.match)
                                    }
                                }
                            }
                        }
                    }
                }
                json.key("nextCursor")
                if page.hasMore, let last = page.hits.last { json.value(Self.cursor(after: last)) } else { json.null() }
            }
        }
    }

    /// `ResumeResponse`.
    struct ResumeResponse: JSONWritable, Sendable {
        var session: Session
        var messages: [Message]
        var hasMoreMessages: Bool

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.key("session")
                json.value(session)
                json.field("messages", messages)
                json.field("hasMoreMessages", hasMoreMessages)
            }
        }
    }

    /// `SessionList`: `GET /api/users/{userId}/sessions`.
    struct SessionList: JSONWritable, Sendable {
        var sessions: [Session]
        var total: Int
        var limit: Int
        var offset: Int

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("sessions", sessions)
                json.field("total", total)
                json.field("limit", limit)
                json.field("offset", offset)
            }
        }
    }

    /// The `GET /api/handoffs` answer.
    struct HandoffList: JSONWritable, Sendable {
        var sessions: [Session]

        func write(to json: inout JSONWriter) {
            json.object { json in json.field("sessions", sessions) }
        }
    }

    /// `Liveness`: `GET /health`.
    struct Liveness: JSONWritable, Sendable {
        var status = "ok"
        var version: String

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("status", status)
                json.field("version", version)
            }
        }
    }

    /// `Health`: `GET /api/health`.
    struct Health: JSONWritable, Sendable {
        struct StorageState: Sendable {
            var backend: String
            var up: Bool
            /// Present only when up.
            var latencyMs: Double?
            /// Present only when down.
            var reason: String?
        }

        var version: String
        var storage: StorageState

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("status", storage.up ? "ok" : "unavailable")
                json.field("version", version)
                json.key("storage")
                json.object { json in
                    json.field("backend", storage.backend)
                    json.field("status", storage.up ? "up" : "down")
                    if let latencyMs = storage.latencyMs { json.field("latencyMs", latencyMs) }
                    if let reason = storage.reason { json.field("reason", reason) }
                }
            }
        }
    }

    /// `Status`: `GET /api/status`.
    struct Status: JSONWritable, Sendable {
        var version: String
        var uptimeSeconds: Double
        var startedAt: Date
        var backend: String
        var statistics: SessionStatistics

        func write(to json: inout JSONWriter) {
            json.object { json in
                json.field("version", version)
                json.field("uptimeSeconds", uptimeSeconds)
                json.field("startedAt", startedAt)
                json.key("storage")
                json.object { json in json.field("backend", backend) }
                json.key("statistics")
                writeStatistics(to: &json)
            }
        }

        func writeStatistics(to json: inout JSONWriter) {
            json.object { json in
                json.field("users", statistics.totalUsers)
                json.field("sessions", statistics.totalSessions)
                json.field("activeSessions", statistics.activeSessions)
                json.field("expiredSessions", statistics.expiredSessions)
                json.field("resolvedSessions", statistics.resolvedSessions)
                json.field("messages", statistics.totalMessages)
            }
        }
    }
}
