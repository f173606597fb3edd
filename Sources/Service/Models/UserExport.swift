#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// Everything stored about one user, as JSON, for a data-access request (`chat-backend export-user`): the
/// account (not its password hash), every session with all of its messages, the messages the user wrote in
/// other people's sessions (as staff), and what is known of the files they uploaded. Written a session (or a page of messages) at a time to `emit`, so a
/// long history is never held in memory at once.
public enum UserExport {
    /// False when there is no such user (nothing was written).
    public static func write(username: String, store: any ChatStore, now: Date = Date(), emit: ([UInt8]) throws -> Void) async throws -> Bool {
        guard let user = try await store.user(username: username) else { return false }
        var json = JSONWriter()
        json.raw("{")
        json.field("format", "chat-backend user export 1")
        json.raw(",")
        json.field("exportedAt", now)
        json.raw(",\"user\":")
        json.value(API.AdminUser(user))
        json.raw(",\"sessions\":[")
        try emit(json.bytes)
        var offset = 0
        var first = true
        while true {
            let page = try await store.sessions(SessionQuery(userId: user.id, limit: 100, offset: offset))
            for session in page.sessions {
                var item = JSONWriter()
                if !first { item.raw(",") }
                first = false
                item.raw("{\"session\":")
                item.value(API.Session(session, now: now))
                item.raw(",\"messages\":[")
                var after: UUID?
                var firstMessage = true
                while true {
                    let messages = try await store.messages(MessageQuery(sessionId: session.id, after: after, limit: 500))
                    for message in messages.messages {
                        if !firstMessage { item.raw(",") }
                        firstMessage = false
                        item.value(API.Message(message))
                    }
                    guard messages.hasMore, let last = messages.messages.last else { break }
                    after = last.id
                }
                item.raw("]}")
                try emit(item.bytes)
            }
            offset += page.sessions.count
            if page.sessions.count < 100 || offset >= page.total { break }
        }
        try emit(Array("]".utf8))
        try await emitPages(",\"messagesInOtherSessions\":", emit: emit) { after in
            try await store.messages(authoredBy: user.id, inOthersSessions: true, after: after, limit: 500).map { ($0.id, API.Message($0)) }
        }
        // The files they uploaded: what is known of them (the bytes are in `GET /api/attachments/{id}`).
        try await emitPages(",\"attachments\":", emit: emit) { after in
            try await store.attachments(uploadedBy: user.id, after: after, limit: 500).map { ($0.id, API.Attachment($0)) }
        }
        try emit(Array("}\n".utf8))
        return true
    }

    /// `key` then a JSON array of what `page` returns, a page (of 500, keyed by id) at a time.
    private static func emitPages(
        _ key: StaticString, emit: ([UInt8]) throws -> Void, page: (UUID?) async throws -> [(UUID, some JSONWritable)]
    ) async throws {
        var json = JSONWriter()
        json.raw(key)
        json.raw("[")
        var after: UUID?
        var first = true
        while true {
            let items = try await page(after)
            for (_, item) in items {
                if !first { json.raw(",") }
                first = false
                json.value(item)
            }
            try emit(json.bytes)
            json = JSONWriter()
            guard items.count == 500, let last = items.last else { break }
            after = last.0
        }
        try emit(Array("]".utf8))
    }
}
