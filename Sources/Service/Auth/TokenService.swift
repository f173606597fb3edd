#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import Storage

/// An issued access/refresh token pair.
struct TokenPair: Sendable {
    var accessToken: String
    var refreshToken: String
    var expiresIn: Int
}

/// Issues, verifies and revokes tokens. Revoked access-token ids are kept in the store; an LRU in front
/// answers repeated checks without a query.
final class TokenService: Sendable {
    let signer: JWTSigner
    let store: any ChatStore
    let accessTTL: Int
    let refreshTTL: Int
    /// jti → revoked?; negative answers expire after `negativeCacheSeconds` so other instances' revocations show.
    private let revocations = LRUCache<String, (revoked: Bool, until: Double)>(maxEntries: 50_000)
    private let negativeCacheSeconds = 30.0
    /// Tokens already verified, so a busy client's requests skip parsing and HMAC; expiry is still checked each time.
    private let verified = LRUCache<String, AccessClaims>(maxEntries: 20_000)
    /// Told of every revocation made here (to close the realtime connections of those tokens).
    private let onRevoke: @Sendable (_ jti: String?, _ family: UUID?) -> Void

    init(
        signer: JWTSigner, store: any ChatStore, accessTTL: Int, refreshTTL: Int,
        onRevoke: @escaping @Sendable (_ jti: String?, _ family: UUID?) -> Void = { _, _ in }
    ) {
        self.signer = signer
        self.store = store
        self.accessTTL = accessTTL
        self.refreshTTL = refreshTTL
        self.onRevoke = onRevoke
    }

    /// A revocation made by another instance: checks answer from the cache at once instead of after
    /// the negative cache entry expires.
    func markRevoked(jti: String?, family: UUID?) {
        let until = Date().timeIntervalSince1970 + Double(accessTTL)
        if let jti { revocations.set("jti:" + jti, (true, until)) }
        if let family { revocations.set("fid:" + family.lowercased, (true, until)) }
    }

    /// Issues a new access token and a new refresh-token family for a user (login, register).
    func issue(for user: User) async throws -> TokenPair {
        let family = UUID()
        let refresh = Self.newRefreshToken()
        let now = Timestamp.now()
        try await store.insertRefreshToken(RefreshTokenRecord(
            id: UUID(), userId: user.id, familyId: family, tokenHash: Self.hash(refresh),
            expiresAt: now.addingTimeInterval(Double(refreshTTL)), createdAt: now
        ))
        return TokenPair(accessToken: accessToken(userId: user.id, role: user.role, family: family, now: now), refreshToken: refresh, expiresIn: accessTTL)
    }

    /// Rotates a refresh token. Returns the user and the new pair, or throws 401.
    func refresh(_ token: String) async throws -> (User, TokenPair) {
        let refresh = Self.newRefreshToken()
        let now = Timestamp.now()
        let replacement = RefreshTokenRecord(
            id: UUID(), userId: UUID(), familyId: UUID(), tokenHash: Self.hash(refresh),
            expiresAt: now.addingTimeInterval(Double(refreshTTL)), createdAt: now
        )
        switch try await store.rotateRefreshToken(hash: Self.hash(token), replacement: replacement, now: now) {
        case .rotated(let userId, let familyId):
            guard let user = try await store.user(id: userId) else { throw Self.refreshRefused("the user no longer exists") }
            guard user.disabledAt == nil else { throw Self.refreshRefused("this account is disabled") }
            return (user, TokenPair(accessToken: accessToken(userId: user.id, role: user.role, family: familyId, now: now), refreshToken: refresh, expiresIn: accessTTL))
        case .reused(let familyId):
            markRevoked(jti: nil, family: familyId)
            onRevoke(nil, familyId)
            throw Self.refreshRefused("refresh token was already used; every session of that login is now signed out")
        case .expired:
            throw Self.refreshRefused("refresh token expired")
        case .invalid:
            throw Self.refreshRefused("refresh token is not valid")
        }
    }

    /// Logout: revokes the token's refresh family and the access token itself until it expires.
    func revoke(_ claims: AccessClaims) async throws {
        if let family = claims.family {
            try await store.revokeRefreshFamily(family, now: Timestamp.now())
        }
        try await store.revokeAccessToken(jti: claims.jti, expiresAt: Date(timeIntervalSince1970: Double(claims.expiresAt)))
        revocations.set("jti:" + claims.jti, (true, Double(claims.expiresAt)))
        if let family = claims.family { revocations.set("fid:" + family.lowercased, (true, Date().timeIntervalSince1970 + Double(accessTTL))) }
        onRevoke(claims.jti, claims.family)
    }

    /// Ends every login of a user but `keeping` (an admin disabled, demoted or deleted the account, or reset its
    /// password): their access tokens are refused and their realtime connections closed, here and on other instances.
    func revokeLogins(userId: UUID, keeping: UUID? = nil) async throws {
        for family in try await store.revokeLogins(userId: userId, except: keeping, now: Timestamp.now()) {
            markRevoked(jti: nil, family: family)
            onRevoke(nil, family)
        }
    }

    /// Verifies an `Authorization` header value and that the token is not revoked.
    func authenticate(authorizationHeader: String, logger: Logger) async throws -> AccessClaims {
        // `Bearer`, any case, then one or more spaces (RFC 9110 §11.4) and the token.
        let parts = authorizationHeader.split(separator: " ", maxSplits: 1)
        let token = parts.count == 2 ? String(parts[1].drop { $0 == " " }) : ""
        guard parts.first?.lowercased() == "bearer", !token.isEmpty else {
            throw APIError(.unauthorized, code: "unauthenticated", message: "Authorization must be 'Bearer <token>'")
        }
        let claims: AccessClaims
        if let cached = verified.get(token), cached.expiresAt > Int64(Date().timeIntervalSince1970) {
            claims = cached
        } else {
            do {
                claims = try signer.verify(token)
                verified.set(token, claims)
            } catch {
                logger.debug("token refused", metadata: ["reason": "\(error)"])
                throw APIError(.unauthorized, code: error == .expired ? "token_expired" : "invalid_token", message: Self.message(for: error))
            }
        }
        if try await isRevoked(claims) {
            throw APIError(.unauthorized, code: "token_revoked", message: "token was revoked (signed out)")
        }
        return claims
    }

    /// Revoked when its own id was (logout) or its login's refresh family was (logout elsewhere, or a
    /// reused refresh token): every access token of a dead login stops working at once.
    private func isRevoked(_ claims: AccessClaims) async throws -> Bool {
        if try await cachedLookup("jti:" + claims.jti, { try await self.store.isAccessTokenRevoked(jti: claims.jti) }) { return true }
        guard let family = claims.family else { return false }
        return try await cachedLookup("fid:" + family.lowercased, { try await self.store.isRefreshFamilyRevoked(family) })
    }

    private func cachedLookup(_ key: String, _ query: () async throws -> Bool) async throws -> Bool {
        let now = Date().timeIntervalSince1970
        if let cached = revocations.get(key), cached.until > now { return cached.revoked }
        let revoked = try await query()
        revocations.set(key, (revoked, revoked ? now + Double(accessTTL) : now + negativeCacheSeconds))
        return revoked
    }

    private func accessToken(userId: UUID, role: Role, family: UUID, now: Date) -> String {
        let iat = Int64(now.timeIntervalSince1970)
        return signer.sign(AccessClaims(subject: userId, role: role, issuedAt: iat, expiresAt: iat + Int64(accessTTL), jti: UUID().lowercased, family: family))
    }

    static func newRefreshToken() -> String { Base64.urlEncode(Crypto.randomBytes(32)) }

    static func hash(_ token: String) -> String { Crypto.hex(Crypto.sha256(Array(token.utf8))) }

    private static func refreshRefused(_ message: String) -> APIError {
        APIError(.unauthorized, code: "invalid_refresh_token", message: message)
    }

    private static func message(for error: JWTError) -> String {
        switch error {
        case .malformed: return "token is malformed"
        case .unsupportedAlgorithm: return "token algorithm is not accepted (HS256 only)"
        case .badSignature: return "token signature is invalid"
        case .expired: return "token expired"
        case .notYetValid: return "token is not valid yet"
        case .invalidClaims: return "token claims are invalid"
        }
    }
}
