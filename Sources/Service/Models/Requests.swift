#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Storage

/// A request body schema of `openapi.yaml`, decoded from the strictly parsed body (`JSONBody`): each
/// failure is a 400 naming the field, as the schema's constraints say.
protocol APIRequestBody {
    /// The schema's `properties`: any other field is refused.
    static var fields: Set<String> { get }
    /// Whether an empty body reads as `{}` (the request body is optional).
    static var emptyIsObject: Bool { get }
    init(_ body: JSONBody) throws
}

extension APIRequestBody {
    static var emptyIsObject: Bool { false }

    /// Reads, parses and decodes the request's body (415, 413 and 400 as `JSONBody.read` answers).
    static func decode(_ request: Request, maxBytes: Int) async throws -> Self {
        try Self(await JSONBody.read(request, maxBytes: maxBytes, allowed: fields, emptyIsObject: emptyIsObject))
    }
}

extension API {
    /// `RegisterRequest`.
    struct RegisterRequest: APIRequestBody {
        static let fields: Set<String> = ["username", "password", "email"]
        var username: String
        var password: String
        var email: String?

        /// Compared byte by byte: `Character` equality is canonical equivalence, under which the Kelvin sign
        /// (U+212A) is `K` and the Ångström sign (U+212B) is `Å`.
        private static let usernameBytes = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-".utf8)

        init(_ body: JSONBody) throws {
            username = try body.string("username", required: true, length: Limits.usernameLength)!
            guard username.utf8.allSatisfy(Self.usernameBytes.contains) else {
                throw APIError.invalid("username", "may contain only letters, digits, '_', '.' and '-'")
            }
            password = try body.string("password", required: true, length: Limits.passwordLength)!
            email = try body.string("email", length: Limits.emailLength)
            if let email, !Self.looksLikeEmail(email) { throw APIError.invalid("email", "must be an email address") }
        }

        /// One `@` with something before it, a `.` after it, no whitespace; checked per code point, as the
        /// schema's pattern reads it (a combining mark must not hide an `@` or a `.`).
        static func looksLikeEmail(_ text: String) -> Bool {
            let scalars = Array(text.unicodeScalars)
            guard let at = scalars.firstIndex(of: "@"), at > 0, scalars.lastIndex(of: "@") == at else { return false }
            return scalars[(at + 1)...].contains(".") && !scalars.contains(where: { $0.properties.isWhitespace })
        }
    }

    /// `LoginRequest`.
    struct LoginRequest: APIRequestBody {
        static let fields: Set<String> = ["username", "password"]
        var username: String
        var password: String

        init(_ body: JSONBody) throws {
            username = try body.string("username", required: true, length: 1...256)!
            password = try body.string("password", required: true, length: 1...1024)!
        }
    }

    /// `RefreshRequest`.
    struct RefreshRequest: APIRequestBody {
        static let fields: Set<String> = ["refreshToken"]
        var refreshToken: String

        init(_ body: JSONBody) throws {
            refreshToken = try body.string("refreshToken", required: true, length: 1...512)!
        }
    }

    /// `ReadRequest`: the newest message the caller has seen.
    struct ReadRequest: APIRequestBody {
        static let fields: Set<String> = ["lastMessageId"]
        var lastMessageId: UUID

        init(_ body: JSONBody) throws {
            let text = try body.string("lastMessageId", required: true)!
            guard let id = UUID(text: text) else { throw APIError.invalid("lastMessageId", "must be a UUID") }
            lastMessageId = id
        }
    }

    /// `GuestRequest`: an empty object (or no body).
    struct GuestRequest: APIRequestBody {
        static let fields: Set<String> = []
        static var emptyIsObject: Bool { true }

        init(_ body: JSONBody) throws {}
    }

    /// `AdminCreateUserRequest`: an account made by an admin, with any role.
    struct AdminCreateUserRequest: APIRequestBody {
        static let fields: Set<String> = ["username", "password", "email", "role"]
        var account: RegisterRequest
        var role: Role

        init(_ body: JSONBody) throws {
            account = try RegisterRequest(body)
            role = try Self.assignableRole(body) ?? .user
        }

        /// `role`, one of those an admin may give.
        static func assignableRole(_ body: JSONBody) throws -> Role? {
            guard let text = try body.string("role") else { return nil }
            guard let role = Role(rawValue: text), Role.assignable.contains(role) else {
                throw APIError.invalid("role", "must be one of \(Role.assignable.map(\.rawValue).joined(separator: ", "))")
            }
            return role
        }
    }

    /// `AdminUpdateUserRequest`: fields left out stay as they are.
    struct AdminUpdateUserRequest: APIRequestBody {
        static let fields: Set<String> = ["role", "disabled"]
        var role: Role?
        var disabled: Bool?

        init(_ body: JSONBody) throws {
            role = try AdminCreateUserRequest.assignableRole(body)
            disabled = try body.bool("disabled")
        }
    }

    /// `AdminPasswordRequest`.
    struct AdminPasswordRequest: APIRequestBody {
        static let fields: Set<String> = ["password"]
        var password: String

        init(_ body: JSONBody) throws {
            password = try body.string("password", required: true, length: Limits.passwordLength)!
        }
    }

    /// `CreateSessionRequest`; the body is optional.
    struct CreateSessionRequest: APIRequestBody {
        static let fields: Set<String> = ["metadata", "agent"]
        static var emptyIsObject: Bool { true }
        var metadata: JSONValue
        var agent: String?

        init(_ body: JSONBody) throws {
            metadata = try body.object("metadata", maxBytes: Limits.metadataBytes) ?? .emptyObject
            agent = try body.string("agent", length: 1...64)
        }
    }

    /// `SendMessageRequest`, and the fields of the realtime `message` event (where `type` is spelled
    /// `messageType`, since `type` names the event).
    /// `EditMessageRequest`: the new content of a message.
    struct EditMessageRequest: APIRequestBody {
        static let fields: Set<String> = ["content"]
        var content: String

        init(_ body: JSONBody) throws {
            content = try body.string("content", required: true, length: Limits.contentCharacters)!
        }
    }

    struct SendMessageRequest: APIRequestBody {
        static let fields: Set<String> = ["content", "type", "metadata", "clientMessageId", "attachments"]
        var content: String
        var type: String
        var metadata: JSONValue
        var clientMessageId: String?
        /// Ids of attachments uploaded into the session (`POST /api/sessions/{id}/attachments`).
        var attachments: [UUID]

        init(_ body: JSONBody) throws {
            try self.init(body, typeKey: "type")
        }

        init(_ body: JSONBody, typeKey: String) throws {
            attachments = try body.uuids("attachments", max: Limits.attachmentsPerMessage)
            // A message carrying files may have no text.
            content = try body.string("content", required: attachments.isEmpty, length: attachments.isEmpty ? Limits.contentCharacters : 0...Limits.contentCharacters.upperBound) ?? ""
            type = try body.string(typeKey) ?? "text"
            guard Limits.messageTypes.contains(type) else {
                throw APIError.invalid(typeKey, "must be one of \(Limits.messageTypes.sorted().joined(separator: ", "))")
            }
            metadata = try body.object("metadata", maxBytes: Limits.metadataBytes) ?? .emptyObject
            clientMessageId = try body.string("clientMessageId", length: Limits.clientMessageIdLength)
            if let clientMessageId, !clientMessageId.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 32 && $0.value < 127 }) {
                throw APIError.invalid("clientMessageId", "must be printable ASCII without spaces")
            }
        }
    }
}
