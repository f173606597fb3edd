#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A user's role: ordinary users own sessions, admins see all, agents are human support staff.
public enum Role: String, Sendable, Codable, CaseIterable {
    case user
    case admin
    case agent
    /// A website visitor chatting through the widget without an account (`POST /auth/guest`).
    case guest

    /// The roles an account can be given (guests are only made by `POST /auth/guest`).
    public static let assignable: [Role] = [.user, .agent, .admin]
}

/// A registered account.
public struct User: Sendable, Equatable {
    public var id: UUID
    public var username: String
    public var email: String?
    public var passwordHash: String
    public var role: Role
    public var createdAt: Date
    public var updatedAt: Date
    /// Set while an admin has disabled the account: it cannot sign in.
    public var disabledAt: Date?

    public init(
        id: UUID, username: String, email: String?, passwordHash: String, role: Role, createdAt: Date, updatedAt: Date, disabledAt: Date? = nil
    ) {
        self.id = id
        self.username = username
        self.email = email
        self.passwordHash = passwordHash
        self.role = role
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.disabledAt = disabledAt
    }
}

/// Filter and page for listing users (admins).
public struct UserQuery: Sendable, Equatable {
    /// Part of the username or email, any case.
    public var search: String?
    public var role: Role?
    public var limit: Int
    public var offset: Int

    public init(search: String? = nil, role: Role? = nil, limit: Int = 50, offset: Int = 0) {
        self.search = search
        self.role = role
        self.limit = limit
        self.offset = offset
    }
}

/// A page of users, and how many match the filter.
public struct UserPage: Sendable, Equatable {
    public var users: [User]
    public var total: Int

    public init(users: [User], total: Int) {
        self.users = users
        self.total = total
    }
}

/// What an admin changes in an account; nil leaves a field as it is.
public struct UserChange: Sendable, Equatable {
    public var role: Role?
    public var disabled: Bool?
    public var passwordHash: String?

    public init(role: Role? = nil, disabled: Bool? = nil, passwordHash: String? = nil) {
        self.role = role
        self.disabled = disabled
        self.passwordHash = passwordHash
    }
}

/// Lifecycle state of a chat session.
public enum SessionState: String, Sendable, Codable, CaseIterable {
    case active
    case expired
    case resolved
}

/// Where a session stands with human agents.
public enum HandoffState: String, Sendable, Codable, CaseIterable {
    /// Handed to humans; no one has taken it yet.
    case waiting
    /// Taken by the human agent `assigneeId`.
    case assigned
}

/// A conversation owned by one user.
public struct ChatSession: Sendable, Equatable {
    public var id: UUID
    public var userId: UUID
    public var metadata: JSONValue
    public var state: SessionState
    public var isResolved: Bool
    public var expiresAt: Date
    public var resolvedAt: Date?
    public var createdAt: Date
    public var updatedAt: Date
    /// The configured agent answering this session's messages, if any.
    public var agent: String?
    /// Set once the session is handed to human agents.
    public var handoff: HandoffState?
    /// The human agent (role `agent` or `admin`) who took the session.
    public var assigneeId: UUID?
    /// When the session was handed to humans.
    public var handoffAt: Date?

    public init(
        id: UUID, userId: UUID, metadata: JSONValue, state: SessionState, isResolved: Bool,
        expiresAt: Date, resolvedAt: Date?, createdAt: Date, updatedAt: Date,
        agent: String? = nil, handoff: HandoffState? = nil, assigneeId: UUID? = nil, handoffAt: Date? = nil
    ) {
        self.agent = agent
        self.handoff = handoff
        self.assigneeId = assigneeId
        self.handoffAt = handoffAt
        self.id = id
        self.userId = userId
        self.metadata = metadata
        self.state = state
        self.isResolved = isResolved
        self.expiresAt = expiresAt
        self.resolvedAt = resolvedAt
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// Whether a message came from the session's user (`inbound`) or was sent to them (`outbound`).
public enum MessageDirection: String, Sendable, Codable, CaseIterable {
    case inbound
    case outbound
}

/// One message in a chat session.
public struct ChatMessage: Sendable, Equatable {
    public var id: UUID
    public var sessionId: UUID
    public var userId: UUID?
    public var content: String
    public var type: String
    public var direction: MessageDirection
    public var metadata: JSONValue
    public var clientMessageId: String?
    public var createdAt: Date
    public var updatedAt: Date
    /// When its content was last edited.
    public var editedAt: Date?
    /// When it was deleted: a tombstone, without content or metadata.
    public var deletedAt: Date?
    /// The files it refers to, as they were when it was sent.
    public var attachments: [AttachmentRef]

    public init(
        id: UUID, sessionId: UUID, userId: UUID?, content: String, type: String, direction: MessageDirection,
        metadata: JSONValue, clientMessageId: String?, createdAt: Date, updatedAt: Date, editedAt: Date? = nil, deletedAt: Date? = nil,
        attachments: [AttachmentRef] = []
    ) {
        self.id = id
        self.sessionId = sessionId
        self.userId = userId
        self.content = content
        self.type = type
        self.direction = direction
        self.metadata = metadata
        self.clientMessageId = clientMessageId
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.editedAt = editedAt
        self.deletedAt = deletedAt
        self.attachments = attachments
    }
}

/// A file uploaded into a session. Its bytes are kept in chunks of `Attachment.chunkSize` (the last one
/// shorter); it can be read and referred to only once `completedAt` is set.
public struct Attachment: Sendable, Equatable {
    /// Every chunk but the last holds exactly this many bytes.
    public static let chunkSize = 256 * 1024

    public var id: UUID
    public var sessionId: UUID
    /// Who uploaded it (counted against their quota).
    public var userId: UUID?
    public var filename: String
    public var contentType: String
    public var size: Int64
    /// Lowercase hex SHA-256 of the bytes, once complete.
    public var sha256: String?
    public var createdAt: Date
    public var completedAt: Date?
    /// When a message first carried it (set by the append); a complete upload never sent is swept.
    public var sentAt: Date?

    public init(
        id: UUID, sessionId: UUID, userId: UUID?, filename: String, contentType: String, size: Int64 = 0, sha256: String? = nil,
        createdAt: Date, completedAt: Date? = nil, sentAt: Date? = nil
    ) {
        self.id = id
        self.sessionId = sessionId
        self.userId = userId
        self.filename = filename
        self.contentType = contentType
        self.size = size
        self.sha256 = sha256
        self.createdAt = createdAt
        self.completedAt = completedAt
        self.sentAt = sentAt
    }

    public var ref: AttachmentRef { AttachmentRef(id: id, filename: filename, contentType: contentType, size: size) }
}

/// What a message keeps of an attachment it refers to.
public struct AttachmentRef: Sendable, Equatable {
    public var id: UUID
    public var filename: String
    public var contentType: String
    public var size: Int64

    public init(id: UUID, filename: String, contentType: String, size: Int64) {
        self.id = id
        self.filename = filename
        self.contentType = contentType
        self.size = size
    }
}

/// One stored piece of an attachment's bytes.
public struct AttachmentChunk: Sendable, Equatable {
    public var attachmentId: UUID
    public var seq: Int
    public var data: [UInt8]

    public init(attachmentId: UUID, seq: Int, data: [UInt8]) {
        self.attachmentId = attachmentId
        self.seq = seq
        self.data = data
    }
}

/// How finishing an upload went.
public enum AttachmentCompletion: Sendable, Equatable {
    case completed(Attachment)
    /// The uploader's complete attachments and this one would exceed their quota; the upload is removed.
    case overQuota(usedBytes: Int64)
    /// The upload (or its session) is gone.
    case notFound
}

/// One event for one webhook: what to send, and how its delivery went so far.
public struct WebhookDelivery: Sendable, Equatable {
    public enum Status: String, Sendable, CaseIterable { case pending, delivered, parked }
    public enum Subject: Sendable, Equatable {
        case message(ChatMessage)
        case session(ChatSession)
    }

    public var webhook: String
    /// The event's place in the outbox (deliveries of one session go in this order).
    public var seq: Int64
    /// The event's id (`X-Chat-Event-Id`).
    public var eventId: UUID
    public var type: String
    public var sessionId: UUID
    /// What the event is about, as it was when it happened.
    public var subject: Subject
    public var createdAt: Date
    public var status: Status
    public var attempts: Int
    public var nextAttemptAt: Date
    public var lastError: String?
    public var deliveredAt: Date?
}

/// An outbox event as `copy` carries it: the event, and its delivery to each webhook so far.
public struct WebhookEventRecord: Sendable, Equatable {
    public struct Delivery: Sendable, Equatable {
        public var webhook: String
        public var status: WebhookDelivery.Status
        public var attempts: Int
        public var nextAttemptAt: Date
        public var lastError: String?
        public var deliveredAt: Date?

        public init(webhook: String, status: WebhookDelivery.Status, attempts: Int, nextAttemptAt: Date, lastError: String?, deliveredAt: Date?) {
            self.webhook = webhook
            self.status = status
            self.attempts = attempts
            self.nextAttemptAt = nextAttemptAt
            self.lastError = lastError
            self.deliveredAt = deliveredAt
        }
    }

    /// Its place in the source's outbox (the target gives it its own, in the same order).
    public var seq: Int64
    public var id: UUID
    public var sessionId: UUID
    public var type: String
    /// The row as the trigger recorded it (JSON; the same on both databases).
    public var payload: String
    public var createdAt: Date
    public var deliveries: [Delivery]
}

/// How far a webhook has taken the outbox: the last event it has seen (nil: none yet), as `copy` carries it.
public struct WebhookCursor: Sendable, Equatable {
    public var webhook: String
    public var lastEventId: UUID?

    public init(webhook: String, lastEventId: UUID?) {
        self.webhook = webhook
        self.lastEventId = lastEventId
    }
}

/// Aggregated counts over the `session_statistics` view.
public struct SessionStatistics: Sendable, Equatable {
    public var totalSessions: Int
    public var activeSessions: Int
    public var expiredSessions: Int
    public var resolvedSessions: Int
    public var totalMessages: Int
    public var totalUsers: Int

    public init(totalSessions: Int, activeSessions: Int, expiredSessions: Int, resolvedSessions: Int, totalMessages: Int, totalUsers: Int) {
        self.totalSessions = totalSessions
        self.activeSessions = activeSessions
        self.expiredSessions = expiredSessions
        self.resolvedSessions = resolvedSessions
        self.totalMessages = totalMessages
        self.totalUsers = totalUsers
    }
}

/// A stored refresh token. Only the SHA-256 hash of the token is kept.
public struct RefreshTokenRecord: Sendable, Equatable {
    public var id: UUID
    public var userId: UUID
    public var familyId: UUID
    public var tokenHash: String
    public var expiresAt: Date
    public var createdAt: Date
    public var usedAt: Date?
    public var revokedAt: Date?

    public init(id: UUID, userId: UUID, familyId: UUID, tokenHash: String, expiresAt: Date, createdAt: Date, usedAt: Date? = nil, revokedAt: Date? = nil) {
        self.id = id
        self.userId = userId
        self.familyId = familyId
        self.tokenHash = tokenHash
        self.expiresAt = expiresAt
        self.createdAt = createdAt
        self.usedAt = usedAt
        self.revokedAt = revokedAt
    }
}

/// Filter and page for listing a user's sessions.
public struct SessionQuery: Sendable, Equatable {
    public var userId: UUID
    public var state: SessionState?
    public var isResolved: Bool?
    public var limit: Int
    public var offset: Int

    public init(userId: UUID, state: SessionState? = nil, isResolved: Bool? = nil, limit: Int = 50, offset: Int = 0) {
        self.userId = userId
        self.state = state
        self.isResolved = isResolved
        self.limit = limit
        self.offset = offset
    }
}

/// A page of sessions and the total that match the filter.
public struct SessionPage: Sendable, Equatable {
    public var sessions: [ChatSession]
    public var total: Int
}

/// A cursor query over a session's messages, ordered by id (time).
public struct MessageQuery: Sendable, Equatable {
    public var sessionId: UUID
    /// Only messages with ids greater than this.
    public var after: UUID?
    /// Only messages with ids less than this; without `after`, the newest page before it.
    public var before: UUID?
    public var limit: Int

    public init(sessionId: UUID, after: UUID? = nil, before: UUID? = nil, limit: Int = 50) {
        self.sessionId = sessionId
        self.after = after
        self.before = before
        self.limit = limit
    }
}

/// A page of messages in ascending order; `hasMore` tells whether the page was cut by `limit`.
public struct MessagePage: Sendable, Equatable {
    public var messages: [ChatMessage]
    public var hasMore: Bool
}

/// Outcome of appending a message.
public enum AppendOutcome: Sendable, Equatable {
    /// Stored now.
    case created(ChatMessage)
    /// A message with the same clientMessageId already existed; nothing was stored.
    case duplicate(ChatMessage)
    case sessionNotFound
    case sessionResolved
    case sessionExpired
    /// A file it refers to is carried by another message already (each upload is sent once).
    case attachmentSent
}

/// Outcome of resuming a session.
public enum ResumeOutcome: Sendable, Equatable {
    case resumed(ChatSession)
    case notFound
    case resolved
}

/// How far one reader has read a session: the newest message they have seen.
public struct SessionRead: Sendable, Equatable {
    public var sessionId: UUID
    public var userId: UUID
    public var lastReadId: UUID
    public var readAt: Date

    public init(sessionId: UUID, userId: UUID, lastReadId: UUID, readAt: Date) {
        self.sessionId = sessionId
        self.userId = userId
        self.lastReadId = lastReadId
        self.readAt = readAt
    }
}

/// Outcome of marking a session read up to a message.
public enum ReadOutcome: Sendable, Equatable {
    /// The reader's read state as it is now: never moved backwards, so it may be later than the message given.
    case read(SessionRead)
    /// No such message in the session.
    case messageNotFound
}

/// Outcome of a human agent taking a handed-off session.
public enum ClaimOutcome: Sendable, Equatable {
    case claimed(ChatSession)
    case notFound
    /// Not waiting for a human: never handed off, or taken by someone else.
    case unavailable(ChatSession)
}

/// Outcome of presenting a refresh token for rotation.
public enum RotateOutcome: Sendable, Equatable {
    /// The token was valid; it is now used and `newToken` belongs to the same family.
    case rotated(userId: UUID, familyId: UUID)
    /// The token had been used before: its whole family is now revoked.
    case reused(familyId: UUID)
    case expired
    /// Unknown or revoked.
    case invalid
}

/// An access token id revoked by logout.
public struct RevokedAccessToken: Sendable, Equatable {
    public var jti: String
    public var expiresAt: Date

    public init(jti: String, expiresAt: Date) {
        self.jti = jti
        self.expiresAt = expiresAt
    }
}

/// Activity since a day, for the admins' charts.
public struct ActivityReport: Sendable, Equatable {
    /// Per UTC day (`YYYY-MM-DD`) with any: messages stored and sessions opened that day.
    public var messagesPerDay: [String: Int]
    public var sessionsPerDay: [String: Int]
    /// Of the sessions opened in the period: how many, and how many are resolved now.
    public var sessionsOpened: Int
    public var sessionsResolved: Int
    /// For the newest sessions of the period (at most `ActivityReport.replySample`) that had a user's message
    /// and a reply after it, per UTC day the session was opened: seconds from the first user message to the
    /// first reply by an agent or a person.
    public var firstReplySeconds: [String: [Double]]

    public static let replySample = 5000

    public init(messagesPerDay: [String: Int], sessionsPerDay: [String: Int], sessionsOpened: Int, sessionsResolved: Int, firstReplySeconds: [String: [Double]]) {
        self.messagesPerDay = messagesPerDay
        self.sessionsPerDay = sessionsPerDay
        self.sessionsOpened = sessionsOpened
        self.sessionsResolved = sessionsResolved
        self.firstReplySeconds = firstReplySeconds
    }
}

/// How many records each table holds (`chat-backend copy` compares them).
public struct RecordCounts: Sendable, Equatable, CustomStringConvertible {
    public var users = 0
    public var sessions = 0
    public var messages = 0
    public var refreshTokens = 0
    public var revokedAccessTokens = 0
    public var sessionReads = 0
    public var attachments = 0
    /// Outbox events (each with its deliveries).
    public var webhookEvents = 0

    public init(
        users: Int = 0, sessions: Int = 0, messages: Int = 0, refreshTokens: Int = 0, revokedAccessTokens: Int = 0, sessionReads: Int = 0,
        attachments: Int = 0, webhookEvents: Int = 0
    ) {
        self.users = users
        self.sessions = sessions
        self.messages = messages
        self.refreshTokens = refreshTokens
        self.revokedAccessTokens = revokedAccessTokens
        self.sessionReads = sessionReads
        self.attachments = attachments
        self.webhookEvents = webhookEvents
    }

    public var isEmpty: Bool { self == RecordCounts() }

    public var description: String {
        "\(users) users, \(sessions) sessions, \(messages) messages, \(refreshTokens) refresh tokens, \(revokedAccessTokens) revoked access tokens, \(sessionReads) read markers, \(attachments) attachments, \(webhookEvents) webhook events"
    }
}

/// Records copied as they are, ids and timestamps kept.
public struct RecordBatch: Sendable {
    public var users: [User] = []
    public var sessions: [ChatSession] = []
    public var messages: [ChatMessage] = []
    public var refreshTokens: [RefreshTokenRecord] = []
    public var revokedAccessTokens: [RevokedAccessToken] = []
    public var sessionReads: [SessionRead] = []
    /// Complete attachments, and chunks of attachments imported before (or in the same batch).
    public var attachments: [Attachment] = []
    public var attachmentChunks: [AttachmentChunk] = []
    /// Outbox events in the source's order (the target numbers them anew), then the webhooks' cursors.
    public var webhookEvents: [WebhookEventRecord] = []
    public var webhookCursors: [WebhookCursor] = []

    public init(
        users: [User] = [], sessions: [ChatSession] = [], messages: [ChatMessage] = [], refreshTokens: [RefreshTokenRecord] = [],
        revokedAccessTokens: [RevokedAccessToken] = [], sessionReads: [SessionRead] = [], attachments: [Attachment] = [],
        attachmentChunks: [AttachmentChunk] = [], webhookEvents: [WebhookEventRecord] = [], webhookCursors: [WebhookCursor] = []
    ) {
        self.users = users
        self.sessions = sessions
        self.messages = messages
        self.refreshTokens = refreshTokens
        self.revokedAccessTokens = revokedAccessTokens
        self.sessionReads = sessionReads
        self.attachments = attachments
        self.attachmentChunks = attachmentChunks
        self.webhookEvents = webhookEvents
        self.webhookCursors = webhookCursors
    }
}
