#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Storage

/// The claims of an access token.
public struct AccessClaims: Sendable, Equatable {
    /// The user id.
    public var subject: UUID
    public var role: Role
    public var issuedAt: Int64
    public var expiresAt: Int64
    /// Unique token id, for revocation.
    public var jti: String
    /// The refresh-token family this access token was issued with; logout revokes it.
    public var family: UUID?

    public init(subject: UUID, role: Role, issuedAt: Int64, expiresAt: Int64, jti: String, family: UUID?) {
        self.subject = subject
        self.role = role
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.jti = jti
        self.family = family
    }
}

/// Why a token was refused. All of them answer 401; the reason goes to logs and the error message.
public enum JWTError: Error, Equatable {
    case malformed
    case unsupportedAlgorithm
    case badSignature
    case expired
    case notYetValid
    case invalidClaims
}

/// HS256 JSON Web Tokens (RFC 7519) signed with OpenSSL's HMAC. Only HS256 is accepted.
public struct JWTSigner: Sendable {
    private let key: [UInt8]
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    public var leeway: Int64 = 0

    public init(secret: [UInt8]) {
        self.key = secret
    }

    private static let header = Base64.urlEncode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))

    /// Signs claims into a compact JWT.
    public func sign(_ claims: AccessClaims) -> String {
        var payload: [String: JSONValue] = [
            "sub": .string(claims.subject.lowercased),
            "role": .string(claims.role.rawValue),
            "iat": .int(claims.issuedAt),
            "exp": .int(claims.expiresAt),
            "jti": .string(claims.jti),
        ]
        if let family = claims.family { payload["fid"] = .string(family.lowercased) }
        let signingInput = Self.header + "." + Base64.urlEncode(Array(JSONValue.object(payload).jsonText().utf8))
        return signingInput + "." + Base64.urlEncode(Crypto.hmacSHA256(key: key, data: Array(signingInput.utf8)))
    }

    /// Verifies signature, algorithm and lifetime, and returns the claims.
    public func verify(_ token: String, now: Date = Date()) throws(JWTError) -> AccessClaims {
        guard token.utf8.count <= 4096 else { throw .malformed }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let headerBytes = Base64.decodeURLStrict(parts[0]), let payloadBytes = Base64.decodeURLStrict(parts[1]),
              let signature = Base64.decodeURLStrict(parts[2]),
              case .object(let header)? = try? JSONValue.parse(bytes: headerBytes)
        else { throw .malformed }
        guard case .string("HS256")? = header["alg"], header["crit"] == nil else { throw .unsupportedAlgorithm }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard Crypto.constantTimeEqual(Crypto.hmacSHA256(key: key, data: signingInput), signature) else { throw .badSignature }
        guard case .object(let payload)? = try? JSONValue.parse(bytes: payloadBytes) else { throw .malformed }
        guard case .string(let sub)? = payload["sub"], let subject = UUID(text: sub),
              case .string(let roleText)? = payload["role"], let role = Role(rawValue: roleText),
              case .string(let jti)? = payload["jti"], !jti.isEmpty, jti.utf8.count <= 128,
              let exp = Self.number(payload["exp"]), let iat = Self.number(payload["iat"])
        else { throw .invalidClaims }
        let nowSeconds = Int64(now.timeIntervalSince1970)
        if exp + leeway <= nowSeconds { throw .expired }
        // No token of ours lives longer than a few days; absurd lifetimes are refused, not trusted.
        guard exp - nowSeconds <= 366 * 86400 else { throw .invalidClaims }
        // A NumericDate or nothing (RFC 7519 §4.1.5); one issued in the future is not valid yet either.
        if let nbf = payload["nbf"] {
            guard let nbf = Self.number(nbf) else { throw .invalidClaims }
            if nbf - leeway > nowSeconds { throw .notYetValid }
        }
        if iat - leeway > nowSeconds { throw .notYetValid }
        var family: UUID?
        if case .string(let fid)? = payload["fid"] { family = UUID(text: fid) }
        return AccessClaims(subject: subject, role: role, issuedAt: iat, expiresAt: exp, jti: jti, family: family)
    }

    private static func number(_ value: JSONValue?) -> Int64? {
        switch value {
        case .int(let i)?: return i
        case .double(let d)? where d.isFinite && abs(d) < 1e15: return Int64(d)
        default: return nil
        }
    }
}
