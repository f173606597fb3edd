#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Everything chat-backend keeps. Implemented by `SQLiteStore` and `PostgresStore`; both pass one contract suite.
///
/// Methods never block the caller's thread: blocking driver calls run on the store's own threads.
/// Failures are `StoreError`s.
public protocol ChatStore: Sendable {
    /// Short name of the backend (`sqlite`, `postgres`).
    var backend: String { get }

    /// Checks that the database answers a trivial query.
    func ping() async throws

    /// Whether the store can serve reads and writes now: a read-only or full database, or a corrupt
    /// file, is reported as down, since writes would fail.
    func health() async -> StoreHealth

    /// Status of every known migration.
    func migrationStatus() async throws -> [MigrationStatus]

    // MARK: Users

    /// Inserts a user; `conflict` when the username (case-insensitive) is taken.
    func createUser(_ user: User) async throws
    /// The user with this id.
    func user(id: UUID) async throws -> User?
    /// The user with this username, compared case-insensitively.
    func user(username: String) async throws -> User?
    /// The users with these ids (missing ones are left out).
    func users(ids: [UUID]) async throws -> [User]
    /// Users whose username or email contains `search` (any case), with `role`, newest first.
    func users(_ query: UserQuery) async throws -> UserPage
    /// Changes a user's role, disabled state or password hash; the user as it is now, nil when there is none.
    func updateUser(id: UUID, _ change: UserChange, now: Date) async throws -> User?
    /// Revokes every login (refresh-token family) of a user that is not revoked yet, but `except`, and
    /// returns them, so that their access tokens and realtime connections stop working on every instance.
    func revokeLogins(userId: UUID, except: UUID?, now: Date) async throws -> [UUID]
    /// Deletes up to `limit` guests with no activity since `inactiveSince` (made before it, no message in
    /// their sessions and no token issued since), with their sessions; returns how many.
    func deleteInactiveGuests(inactiveSince: Date, limit: Int) async throws -> Int
    /// Retention: deletes up to `limit` of the oldest messages stored before `before`; returns how many.
    func deleteMessages(before: Date, limit: Int) async throws -> Int
    /// Retention: deletes up to `limit` sessions resolved before `before`, with their messages; returns how many.
    func deleteResolvedSessions(before: Date, limit: Int) async throws -> Int
    /// Gives space freed by deletions back to the file system, a little at a time (SQLite's incremental
    /// vacuum, on databases created with it); nothing on Postgres, whose autovacuum does that.
    func reclaimSpace() async throws
    /// Messages `userId` wrote (with `inOthersSessions`, only those in other users' sessions, as staff), in id
    /// order after `after`.
    func messages(authoredBy userId: UUID, inOthersSessions: Bool, after: UUID?, limit: Int) async throws -> [ChatMessage]
    /// Deletes a user, their sessions with every message in them, their tokens and read markers; sessions
    /// they had claimed wait for a person again. False when there is no such user.
    func deleteUser(id: UUID, now: Date) async throws -> Bool

    // MARK: Tokens

    /// Stores a new refresh token (its hash).
    func insertRefreshToken(_ token: RefreshTokenRecord) async throws
    /// Marks the token with `hash` used and stores `replacement` in the same family, atomically
    /// (the replacement's `userId` and `familyId` are taken from the presented token).
    /// A token presented a second time revokes its whole family.
    func rotateRefreshToken(hash: String, replacement: RefreshTokenRecord, now: Date) async throws -> RotateOutcome
    /// Revokes every token of a family (logout).
    func revokeRefreshFamily(_ familyId: UUID, now: Date) async throws
    /// Records an access token id as revoked until `expiresAt`.
    func revokeAccessToken(jti: String, expiresAt: Date) async throws
    /// Whether an access token id was revoked.
    func isAccessTokenRevoked(jti: String) async throws -> Bool
    /// Whether a login's refresh-token family was revoked (logout, or a reused refresh token).
    func isRefreshFamilyRevoked(_ familyId: UUID) async throws -> Bool

    // MARK: Sessions

    /// Inserts a session.
    func createSession(_ session: ChatSession) async throws
    /// The session with this id.
    func session(id: UUID) async throws -> ChatSession?
    /// A user's sessions, newest first, filtered and paged.
    func sessions(_ query: SessionQuery) async throws -> SessionPage
    /// Makes an unresolved session active again with a new expiry.
    func resumeSession(id: UUID, expiresAt: Date, now: Date) async throws -> ResumeOutcome
    /// Marks a session resolved; a resolved session is returned unchanged. Nil when it does not exist.
    func resolveSession(id: UUID, now: Date) async throws -> ChatSession?
    /// Deletes a session and its messages. False when it did not exist.
    func deleteSession(id: UUID) async throws -> Bool
    /// Marks active sessions whose expiry passed as expired and drops stale token rows. Returns the sessions expired.
    func sweepExpired(now: Date) async throws -> Int

    /// Sets the agent answering the session (nil: none) and ends any handoff; with `ifUnrouted`, only when
    /// the session has neither an agent nor a handoff yet. Returns the session as it is now, nil if missing.
    func assignAgent(sessionId: UUID, agent: String?, ifUnrouted: Bool, now: Date) async throws -> ChatSession?
    /// Hands the session to human agents: no agent, handoff `waiting` (unless it has a handoff already or is
    /// resolved: then unchanged). Returns the session as it is now, nil if missing.
    func requestHandoff(sessionId: UUID, now: Date) async throws -> ChatSession?
    /// A human agent takes a waiting session (or keeps one already theirs).
    func claimHandoff(sessionId: UUID, assignee: UUID, now: Date) async throws -> ClaimOutcome
    /// Active sessions waiting for a human agent, plus those assigned to `assignee` (all assigned ones when
    /// nil), oldest handoff first.
    func handoffs(assignee: UUID?, limit: Int) async throws -> [ChatSession]

    // MARK: Messages

    /// Stores a message unless its session is missing, resolved or expired, or its clientMessageId was seen.
    /// With `owner`, a session belonging to someone else counts as missing (checked in the same transaction).
    /// The store gives the message its id (UUIDv7, in commit order); the outcome carries the stored message.
    /// `committed` is called with a created message once it is durable, before this returns, and in commit
    /// order across all appends of the store (so whoever publishes there publishes in history order). It runs
    /// on the store's writer thread: it must be quick and must not wait for the store.
    func appendMessage(
        _ message: ChatMessage, now: Date, owner: UUID?, committed: (@Sendable (ChatMessage) -> Void)?
    ) async throws -> AppendOutcome
    /// A page of a session's messages in id order.
    func messages(_ query: MessageQuery) async throws -> MessagePage
    /// The session and a page of its messages, read together (one trip to the store); nil when there
    /// is no such session. The caller checks who may read it before showing either.
    func sessionMessages(_ query: MessageQuery) async throws -> (session: ChatSession, page: MessagePage)?
    /// One message of a session.
    func message(sessionId: UUID, id: UUID) async throws -> ChatMessage?
    /// Replaces the content of a message (`editedAt` and `updatedAt` become `now`); nil when the session has
    /// no such message or it was deleted.
    func editMessage(sessionId: UUID, id: UUID, content: String, now: Date) async throws -> ChatMessage?
    /// Deletes a message, leaving a tombstone: no content, no metadata, `deletedAt`. Returns the tombstone
    /// (also when it was deleted before, unchanged); nil when the session has no such message.
    func deleteMessage(sessionId: UUID, id: UUID, now: Date) async throws -> ChatMessage?
    /// Messages matching a full-text query, best first (deleted ones never), a page at a time.
    func searchMessages(_ search: MessageSearch) async throws -> SearchPage
    /// Messages of the session up to `upTo` (included) edited or deleted after `since`, in id order, at most
    /// `limit` (a reconnecting client's recovery sends them after the messages it missed).
    func changedMessages(sessionId: UUID, upTo: UUID, since: Date, limit: Int) async throws -> [ChatMessage]

    // MARK: Attachments

    /// Starts an upload: the attachment without bytes, not yet complete (invisible to readers).
    func createAttachment(_ attachment: Attachment) async throws
    /// Stores chunk `seq` of an upload.
    func putAttachmentChunk(_ chunk: AttachmentChunk) async throws
    /// Completes an upload of `size` bytes: from now on it can be read and referred to. With a `quota`,
    /// refused (and removed) when the uploader's complete attachments would then exceed it.
    func completeAttachment(id: UUID, size: Int64, sha256: String, quota: Int64?, now: Date) async throws -> AttachmentCompletion
    /// Removes an upload or attachment with its bytes.
    func deleteAttachment(id: UUID) async throws
    /// A complete attachment.
    func attachment(id: UUID) async throws -> Attachment?
    /// Chunk `seq` of a complete attachment's bytes.
    func attachmentChunk(id: UUID, seq: Int) async throws -> [UInt8]?
    /// The complete attachments of `sessionId` among `ids`.
    func attachments(ids: [UUID], sessionId: UUID) async throws -> [Attachment]
    /// Up to `limit` complete attachments `userId` uploaded, with ids greater than `after`, in id order.
    func attachments(uploadedBy userId: UUID, after: UUID?, limit: Int) async throws -> [Attachment]
    /// Bytes of the complete attachments `userId` uploaded.
    func attachmentBytes(userId: UUID) async throws -> Int64
    /// Deletes up to `limit` attachments uploaded before `before` (retention), oldest first, with their bytes.
    func deleteAttachments(before: Date, limit: Int) async throws -> Int
    /// Removes uploads started before `startedBefore` that never completed (the client went away, the
    /// server stopped); returns how many.
    func deleteAbandonedUploads(startedBefore: Date, limit: Int) async throws -> Int
    /// Removes complete uploads that completed before `completedBefore` and that no message ever carried
    /// (an API client uploaded, then never sent); returns how many.
    func deleteUnsentUploads(completedBefore: Date, limit: Int) async throws -> Int

    // MARK: Event webhooks (an outbox filled by the database's triggers)

    /// The event types to record from now on (all webhooks' together; empty records none), and the webhooks
    /// there are: the queue and place of any other (removed from the configuration) are dropped.
    func setWebhookSubscriptions(_ events: Set<String>, webhooks: [String]) async throws
    /// Makes deliveries for `webhook` of up to `limit` events recorded since it last looked, of the `events`
    /// types. A webhook seen for the first time starts with the events recorded from then on.
    func fanOutWebhookEvents(webhook: String, events: Set<String>, limit: Int, now: Date) async throws -> Int
    /// Claims up to `limit` deliveries that are due, for `lease` seconds: for each webhook and session only the
    /// oldest undelivered one, so a session's events go out in order. Another instance passes over them.
    func claimWebhookDeliveries(webhooks: [String], limit: Int, lease: Int, now: Date) async throws -> [WebhookDelivery]
    /// Records a delivery's outcome: delivered (`error` nil), retried at `retryAt`, or parked (`retryAt` nil).
    func finishWebhookDelivery(webhook: String, seq: Int64, error: String?, retryAt: Date?, now: Date) async throws
    /// Deliveries with `status`, newest first.
    func webhookDeliveries(status: WebhookDelivery.Status, limit: Int) async throws -> [WebhookDelivery]
    /// Puts a parked delivery back in the queue, due now; false when there is no such parked delivery.
    func redeliverWebhook(webhook: String, eventId: UUID, now: Date) async throws -> Bool
    /// Deletes delivered deliveries, and events nothing waits for, recorded before `before`.
    func pruneWebhookEvents(before: Date, limit: Int) async throws -> Int

    // MARK: Read state

    /// Marks `sessionId` read by `userId` up to message `messageId` (which must be in the session). Read
    /// state never moves backwards: an older message leaves it where it is.
    func markRead(sessionId: UUID, userId: UUID, messageId: UUID, now: Date) async throws -> ReadOutcome
    /// Per session, the messages `reader` has not read that someone else wrote (sessions without any are left out).
    func unreadCounts(sessionIds: [UUID], reader: UUID) async throws -> [UUID: Int]

    /// Messages and sessions per day since `since`, how many of the sessions opened since are resolved, and
    /// the time to the first reply in them.
    func activity(since: Date) async throws -> ActivityReport

    /// Counts from the `session_statistics` view.
    func statistics() async throws -> SessionStatistics

    // MARK: Copying between stores

    /// Records per table.
    func recordCounts() async throws -> RecordCounts
    /// Up to `limit` users with ids greater than `after`, in id order.
    func exportUsers(after: UUID?, limit: Int) async throws -> [User]
    /// Up to `limit` sessions with ids greater than `after`, in id order.
    func exportSessions(after: UUID?, limit: Int) async throws -> [ChatSession]
    /// Up to `limit` messages (of all sessions) with ids greater than `after`, in id order.
    func exportMessages(after: UUID?, limit: Int) async throws -> [ChatMessage]
    /// Up to `limit` refresh tokens with ids greater than `after`, in id order.
    func exportRefreshTokens(after: UUID?, limit: Int) async throws -> [RefreshTokenRecord]
    /// Every revoked access token id.
    func exportRevokedAccessTokens() async throws -> [RevokedAccessToken]
    /// The read markers of up to `limit` sessions with ids greater than `after`, in session id order.
    func exportSessionReads(after: UUID?, limit: Int) async throws -> [SessionRead]
    /// Up to `limit` complete attachments with ids greater than `after`, in id order (without their bytes).
    func exportAttachments(after: UUID?, limit: Int) async throws -> [Attachment]
    /// Up to `limit` webhook outbox events with a `seq` greater than `after`, in outbox order, with their deliveries.
    func exportWebhookEvents(after: Int64?, limit: Int) async throws -> [WebhookEventRecord]
    /// Each webhook's cursor into the outbox.
    func exportWebhookCursors() async throws -> [WebhookCursor]
    /// Inserts records as they are, in one transaction; a record whose id exists already is skipped.
    /// The database's webhook triggers record nothing for imported rows (they are not new events).
    func importRecords(_ batch: RecordBatch) async throws

    /// Tells other instances sharing the database that who may read a session changed (claimed,
    /// released, resolved, deleted, handed off), so they update their realtime rooms. No-op without such
    /// instances.
    func announceSessionChange(sessionId: UUID, reason: String) async throws

    /// Messages stored by other instances sharing this database, for as long as the stream is consumed.
    /// Nil when the store has no such instances (SQLite).
    func externalMessages() -> AsyncStream<ExternalChange>?

    /// Finishes pending writes, checkpoints and closes connections. Further calls fail with `unavailable`.
    func close() async
}

/// The store's readiness, as `/api/health` reports it.
public enum StoreHealth: Sendable, Equatable {
    case up
    /// `reason` is a stable code (`storage_unavailable`, `storage_read_only`, `storage_full`,
    /// `storage_corrupt`); `detail` a sentence for operators.
    case down(reason: String, detail: String)
}

/// A change made by another instance sharing the database.
public enum ExternalChange: Sendable, Equatable {
    /// A message was stored.
    case message(sessionId: UUID, messageId: UUID)
    /// The feed (re)connected; changes made while it was away were not announced.
    case resync
    /// An access token (by `jti`) or every token of a login (by refresh family) was revoked.
    case revoked(jti: String?, familyId: UUID?)
    /// Who may read a session changed (`reason`: claimed, released, resolved, deleted, …).
    case session(sessionId: UUID, reason: String)
    /// A reader's marker in a session moved.
    case read(SessionRead)
    /// A stored message was edited or deleted.
    case messageChanged(sessionId: UUID, messageId: UUID)
}

extension ChatStore {
    public func externalMessages() -> AsyncStream<ExternalChange>? { nil }

    public func announceSessionChange(sessionId: UUID, reason: String) async throws {}

    public func reclaimSpace() async throws {}

    /// Stores a message without an ownership check.
    public func appendMessage(_ message: ChatMessage, now: Date) async throws -> AppendOutcome {
        try await appendMessage(message, now: now, owner: nil, committed: nil)
    }

    public func appendMessage(_ message: ChatMessage, now: Date, owner: UUID?) async throws -> AppendOutcome {
        try await appendMessage(message, now: now, owner: owner, committed: nil)
    }
}
