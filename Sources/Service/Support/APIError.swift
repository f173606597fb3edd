import Hummingbird
import HTTPTypes
import Storage

/// An error answered to the client as `{"error":{"code","message","details"}}` with its status.
public struct APIError: Error, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    public var details: JSONValue?
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, code: String, message: String, details: JSONValue? = nil, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers
    }

    /// 400 naming the offending field.
    public static func invalid(_ field: String, _ message: String) -> APIError {
        APIError(.badRequest, code: "validation_failed", message: "\(field): \(message)", details: .object(["field": .string(field)]))
    }

    public static let unauthenticated = APIError(.unauthorized, code: "unauthenticated", message: "a valid access token is required")
    /// A message that was deleted: no longer a resource of its own (its tombstone stays in the history).
    static let messageDeleted = APIError(.gone, code: "message_deleted", message: "the message was deleted")
    static let sessionResolved = APIError(.conflict, code: "session_resolved", message: "session is resolved; start a new session")
    static let sessionExpired = APIError(.gone, code: "session_expired", message: "session expired; resume it first")
    static let handoffNotClaimed = APIError(.forbidden, code: "handoff_not_claimed", message: "claim the session first: POST /api/handoffs/{sessionId}/claim")

    public static func notFound(_ what: String) -> APIError {
        APIError(.notFound, code: "not_found", message: "\(what) not found")
    }

    public static let storageUnavailable = APIError(.serviceUnavailable, code: "storage_unavailable", message: "storage is unavailable, try again later")
}

extension APIError {
    /// Maps any error to what the client sees. Unknown errors become a 500 without internals.
    static func from(_ error: any Error) -> APIError? {
        switch error {
        case let error as APIError:
            return error
        case let error as StoreError:
            switch error.kind {
            case .unavailable: return .storageUnavailable
            case .corrupt:
                return APIError(.serviceUnavailable, code: "storage_corrupt", message: "storage is damaged and refuses reads and writes until an operator repairs it")
            case .notFound: return .notFound("resource")
            case .conflict: return APIError(.conflict, code: "conflict", message: error.message)
            case .invalid: return APIError(.badRequest, code: "invalid_input", message: "the request could not be stored as given")
            case .failed: return nil
            }
        case PasswordHashError.busy:
            return APIError(.serviceUnavailable, code: "busy", message: "too many sign-ins at once, try again shortly", headers: [.retryAfter: "1"])
        case let error as HTTPError:
            switch error.status {
            case .contentTooLarge:
                return APIError(.contentTooLarge, code: "payload_too_large", message: "request body is too large")
            case .notFound:
                return APIError(.notFound, code: "not_found", message: "no such route")
            case .methodNotAllowed:
                return APIError(.methodNotAllowed, code: "method_not_allowed", message: "method not allowed on this route")
            default:
                return APIError(error.status, code: error.status.code < 500 ? "bad_request" : "internal_error", message: error.body ?? error.status.reasonPhrase)
            }
        default:
            return nil
        }
    }
}
