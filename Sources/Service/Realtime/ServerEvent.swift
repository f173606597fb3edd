#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage
import Synchronization

/// An event the server sends over realtime connections, written once for each transport that carries it:
/// a JSON object with `type` on `/ws`, a Socket.IO EVENT (or ACK) packet on `/socket.io/`.
enum ServerEvent: Sendable {
    /// A stored message.
    case message(ChatMessage)
    /// A stored message as it is after an edit.
    case messageUpdated(ChatMessage)
    /// A deleted message's tombstone (no content, `deletedAt`).
    case messageDeleted(ChatMessage)

    /// A changed message as it is now: `message.deleted` for a tombstone, else `message.updated`.
    static func changed(_ message: ChatMessage) -> ServerEvent {
        message.deletedAt == nil ? .messageUpdated(message) : .messageDeleted(message)
    }
    /// Someone is typing; an agent writing a reply has `user` nil and `agent` set.
    case typing(session: UUID, user: UUID?, agent: String?, isTyping: Bool)
    /// A user's connection joined (`online`) or left (`offline`) the session.
    case presence(session: UUID, user: UUID, status: String)
    /// A part of an agent's reply while it is produced; the stored message carries `metadata.streamId`.
    case delta(session: UUID, streamId: UUID, agent: String, index: Int, text: String)
    /// The connection left a session's room because its user may no longer read it.
    case left(session: UUID, reason: String)
    /// Messages of the session may have been missed: rejoin with `lastMessageId` to get them.
    case resync(session: UUID)
    /// A reader marked the session read up to a message (sent to the session's room).
    case read(SessionRead)
    /// The queue of sessions handed to people changed (sent to every connection of an agent or admin):
    /// `session` as it is now, nil when it was deleted; `reason` says what happened (handoff, claimed,
    /// released, resolved, deleted).
    case handoff(session: UUID, state: ChatSession?, reason: String)
    /// The session changed (resolved, resumed, claimed, released, handed off), sent to the connections in
    /// its room that may still read it: `session` as it is now.
    case sessionUpdated(session: ChatSession, reason: String)
    /// The reply to a client event that succeeded; `id` is the event's `id`, echoed.
    case ack(id: JSONValue?, Ack)
    /// The reply to a client event that failed (or an error no event asked for, `id` nil).
    case error(id: JSONValue?, APIError)

    /// What an `ack` says, by the client event it answers.
    enum Ack: Sendable {
        case authenticate(user: UUID)
        case join(session: UUID, replayed: Int)
        case leave(session: UUID)
        case message(ChatMessage, duplicate: Bool)
    }

    static let resyncMessage = "live delivery was interrupted; join again with lastMessageId to receive what was missed"

    /// The event's name: `type` on `/ws`, the event name on Socket.IO.
    var name: String {
        switch self {
        case .message: "message"
        case .messageUpdated: "message.updated"
        case .messageDeleted: "message.deleted"
        case .typing: "typing"
        case .presence: "presence"
        case .delta: "message.delta"
        case .left: "left"
        case .resync: "resync"
        case .read: "read"
        case .handoff: "handoff"
        case .sessionUpdated: "session.updated"
        case .ack: "ack"
        case .error: "error"
        }
    }

    /// The fields after `type` (and `id`), the same on both transports.
    private func writeFields(to json: inout JSONWriter) {
        switch self {
        case .message(let m), .messageUpdated(let m), .messageDeleted(let m):
            json.key("message")
            json.value(API.Message(m))
        case .typing(let session, let user, let agent, let isTyping):
            json.field("sessionId", session)
            json.field("userId", user)
            if let agent { json.field("agent", agent) }
            json.field("isTyping", isTyping)
        case .presence(let session, let user, let status):
            json.field("sessionId", session)
            json.field("userId", user)
            json.field("status", status)
        case .delta(let session, let streamId, let agent, let index, let text):
            json.field("sessionId", session)
            json.field("streamId", streamId)
            json.field("agent", agent)
            json.field("index", index)
            json.field("delta", text)
        case .left(let session, let reason):
            json.field("sessionId", session)
            json.field("reason", reason)
        case .resync(let session):
            json.field("sessionId", session)
            json.field("message", Self.resyncMessage)
        case .read(let read):
            json.field("sessionId", read.sessionId)
            json.field("userId", read.userId)
            json.field("lastMessageId", read.lastReadId)
            json.field("readAt", read.readAt)
        case .handoff(let session, let state, let reason):
            json.field("sessionId", session)
            json.field("reason", reason)
            json.key("session")
            if let state { json.value(API.Session(state)) } else { json.null() }
        case .sessionUpdated(let state, let reason):
            json.field("sessionId", state.id)
            json.field("reason", reason)
            json.key("session")
            json.value(API.Session(state))
        case .ack(_, let ack):
            switch ack {
            case .authenticate(let user):
                json.field("event", "authenticate")
                json.field("userId", user)
            case .join(let session, let replayed):
                json.field("event", "join")
                json.field("sessionId", session)
                json.field("replayed", replayed)
            case .leave(let session):
                json.field("event", "leave")
                json.field("sessionId", session)
            case .message(let m, let duplicate):
                json.field("event", "message")
                json.key("message")
                json.value(API.Message(m))
                json.field("duplicate", duplicate)
            }
        case .error(_, let error):
            json.key("error")
            API.ErrorBody(error).writeError(to: &json)
        }
    }

    /// The `/ws` text frame: `{"type":…, "id":… (ack and error), fields…}`.
    var webSocketText: String {
        var json = JSONWriter(capacity: 512)
        json.object { json in
            json.field("type", name)
            switch self {
            case .ack(let id, _), .error(let id, _): json.field("id", id ?? .null)
            default: break
            }
            writeFields(to: &json)
        }
        return String(decoding: json.bytes, as: UTF8.self)
    }

    /// The Engine.IO message carrying the event as a Socket.IO packet (namespace `/`): an EVENT
    /// `42["name",{fields}]` (a message event carries the message itself), or for the reply to an event
    /// sent with an ack id an ACK `43<id>[{fields}]`. Nil for an ack nobody asked for.
    var socketIOPacket: String? {
        var json = JSONWriter(capacity: 512)
        let prefix: String
        switch self {
        case .ack(.int(let ack)?, _), .error(.int(let ack)?, _):
            prefix = "43\(ack)"
            json.array { json in json.object { writeFields(to: &$0) } }
        case .ack:
            return nil
        case .error(_, let error):
            prefix = "42"
            json.array { json in
                json.value("error")
                API.ErrorBody(error).writeError(to: &json)
            }
        case .message(let m):
            prefix = "42"
            json.array { json in
                json.value("message")
                json.value(API.Message(m))
            }
        default:
            prefix = "42"
            json.array { json in
                json.value(name)
                json.object { writeFields(to: &$0) }
            }
        }
        return prefix + String(decoding: json.bytes, as: UTF8.self)
    }
}

/// One server event on its way to connections. Fan-out hands the same frame to every connection, so each
/// transport's form is made once, by the first connection that needs it, and shared.
final class RealtimeFrame: Sendable {
    let event: ServerEvent
    private let webSocket = Mutex<String?>(nil)
    private let socketIO = Mutex<String??>(nil)

    init(_ event: ServerEvent) {
        self.event = event
    }

    /// The `/ws` text.
    var json: String {
        webSocket.withLock { cached in
            if let cached { return cached }
            let made = event.webSocketText
            cached = made
            return made
        }
    }

    /// The Engine.IO message for Socket.IO connections; nil when the event is not sent there.
    var socketIOPacket: String? {
        socketIO.withLock { cached in
            if let cached { return cached }
            let made = event.socketIOPacket
            cached = .some(made)
            return made
        }
    }
}
