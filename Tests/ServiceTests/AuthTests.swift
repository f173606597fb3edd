import Foundation
import HTTPTypes
import Testing
@testable import Service
@testable import Storage

@Suite("Auth API")
struct AuthTests {
    @Test("register, login, refresh and logout")
    func flow() async throws {
        try await TestApp.make().run { client in
            let reg = try await client.call(.post, "/auth/register", body: #"{"username":"alice","password":"password123","email":"a@example.com"}"#)
            #expect(reg.status == .created)
            #expect(reg["user"]?["username"]?.string == "alice")
            #expect(reg["user"]?["role"]?.string == "user")
            #expect(reg["tokenType"]?.string == "Bearer")
            #expect(reg["expiresIn"]?.int == 900)
            #expect(reg["user"]?["passwordHash"] == nil)

            let login = try await client.call(.post, "/auth/login", body: #"{"username":"ALICE","password":"password123"}"#)
            #expect(login.status == .ok)
            let access = try #require(login["accessToken"]?.string)
            let refresh = try #require(login["refreshToken"]?.string)

            let rotated = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(refresh)"}"#)
            #expect(rotated.status == .ok)
            let newRefresh = try #require(rotated["refreshToken"]?.string)
            #expect(newRefresh != refresh)

            // Reusing the rotated token is theft: the whole family dies.
            let reuse = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(refresh)"}"#)
            #expect(reuse.status == .unauthorized && reuse.errorCode == "invalid_refresh_token")
            let afterReuse = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(newRefresh)"}"#)
            #expect(afterReuse.status == .unauthorized)

            // The reuse also ended the login's access tokens.
            let revoked = try await client.call(.get, "/api/sessions/\(UUID().uuidString)", token: access)
            #expect(revoked.status == .unauthorized && revoked.errorCode == "token_revoked")

            let again = try await client.call(.post, "/auth/login", body: #"{"username":"alice","password":"password123"}"#)
            let fresh = try #require(again["accessToken"]?.string)
            #expect(try await client.call(.post, "/auth/logout", token: fresh).status == .noContent)
            let loggedOut = try await client.call(.get, "/api/sessions/\(UUID().uuidString)", token: fresh)
            #expect(loggedOut.status == .unauthorized && loggedOut.errorCode == "token_revoked")
        }
    }

    @Test("logout revokes the refresh family of the login")
    func logoutRevokesRefresh() async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            #expect(try await client.call(.post, "/auth/logout", token: user.token).status == .noContent)
            let r = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(user.refresh)"}"#)
            #expect(r.status == .unauthorized)
        }
    }

    @Test("a stale token sent to public routes is ignored, so an expired client can still refresh")
    func staleTokenOnPublicRoutes() async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            let stale = "Bearer not.a.token"
            #expect(try await client.call(.get, "/health", headers: [.authorization: stale]).status == .ok)
            let refreshed = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(user.refresh)"}"#, headers: [.authorization: stale])
            #expect(refreshed.status == .ok)
            #expect(try await client.call(.post, "/auth/logout", headers: [.authorization: stale]).status == .unauthorized)
        }
    }

    @Test("logout ends every access token of that login, not just the one presented")
    func logoutEndsTheLogin() async throws {
        try await TestApp.make().run { client in
            let user = try await client.register()
            let rotated = try await client.call(.post, "/auth/refresh", body: #"{"refreshToken":"\#(user.refresh)"}"#)
            let newAccess = try #require(rotated["accessToken"]?.string)
            let uri = "/api/users/\(user.id)/sessions"
            #expect(try await client.call(.get, uri, token: user.token).status == .ok)
            #expect(try await client.call(.post, "/auth/logout", token: newAccess).status == .noContent)
            let old = try await client.call(.get, uri, token: user.token)
            #expect(old.status == .unauthorized && old.errorCode == "token_revoked")
            // Another login of the same user is unaffected.
            let other = try await client.call(.post, "/auth/login", body: #"{"username":"\#(rotated["user"]?["username"]?.string ?? "")","password":"correct horse"}"#)
            #expect(try await client.call(.get, uri, token: other["accessToken"]?.string).status == .ok)
        }
    }

    @Test("behind a trusted proxy the right-most X-Forwarded-For entry is the client")
    func forwardedFor() async throws {
        try await TestApp.make {
            $0.trustProxy = true
            $0.rateLimitAuth = RateLimit(limit: 2, windowSeconds: 60)
        }.run { client in
            var statuses: [Int] = []
            for spoof in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
                let r = try await client.call(
                    .post, "/auth/refresh", body: #"{"refreshToken":"x"}"#,
                    headers: [HTTPField.Name("X-Forwarded-For")!: "\(spoof), 203.0.113.9"]
                )
                statuses.append(r.status.code)
            }
            // A client cannot dodge the limit by prepending addresses.
            #expect(statuses == [401, 401, 429])
        }
    }

    @Test("wrong password and unknown user get the same 401")
    func badCredentials() async throws {
        try await TestApp.make().run { client in
            _ = try await client.register("bob", password: "password123")
            let wrong = try await client.call(.post, "/auth/login", body: #"{"username":"bob","password":"nope-nope"}"#)
            let unknown = try await client.call(.post, "/auth/login", body: #"{"username":"nobody","password":"nope-nope"}"#)
            #expect(wrong.status == .unauthorized && unknown.status == .unauthorized)
            #expect(wrong.json == unknown.json)
        }
    }

    @Test("duplicate usernames are a 409, case-insensitively")
    func duplicate() async throws {
        try await TestApp.make().run { client in
            _ = try await client.register("carol")
            let r = try await client.call(.post, "/auth/register", body: #"{"username":"Carol","password":"password123"}"#)
            #expect(r.status == .conflict && r.errorCode == "username_taken")
        }
    }

    @Test(
        "invalid registrations are refused naming the field and create nothing",
        arguments: [
            (#"{"username":"ab","password":"password123"}"#, "username"),
            (#"{"username":"bad name","password":"password123"}"#, "username"),
            (#"{"username":"good","password":"short"}"#, "password"),
            (#"{"username":"good","password":12345678}"#, "password"),
            (#"{"password":"password123"}"#, "username"),
            (#"{"username":"good","password":"password123","admin":true}"#, "admin"),
            (#"{"username":"good","password":"password123","email":"not-an-email"}"#, "email"),
            ("{\"username\":\"good\",\"password\":\"\(String(repeating: "p", count: 129))\"}", "password"),
        ]
    )
    func invalidRegistration(body: String, field: String) async throws {
        let test = try await TestApp.make()
        try await test.run { client in
            let r = try await client.call(.post, "/auth/register", body: body)
            #expect(r.status == .badRequest)
            #expect(r.errorCode == "validation_failed")
            #expect(r["error"]?["details"]?["field"]?.string == field)
            #expect(try await test.store.statistics().totalUsers == 0)
        }
    }

    @Test("bodies that are not JSON objects are 400, wrong content types 415, oversized 413")
    func badBodies() async throws {
        let test = try await TestApp.make { $0.maxBodyBytes = 2048 }
        try await test.run { client in
            #expect(try await client.call(.post, "/auth/register", body: "{not json").errorCode == "invalid_json")
            #expect(try await client.call(.post, "/auth/register", body: "[1,2]").errorCode == "invalid_json")
            let twice = #"{"username":"dup","password":"password123","password":"other-password"}"#
            #expect(try await client.call(.post, "/auth/register", body: twice).errorCode == "invalid_json")
            #expect(try await client.call(.post, "/auth/register", body: "").status == .badRequest)
            let form = try await client.call(.post, "/auth/login", body: "username=a", headers: [.contentType: "application/x-www-form-urlencoded"])
            #expect(form.status == .unsupportedMediaType)
            let big = try await client.call(.post, "/auth/register", body: #"{"username":"x","password":"\#(String(repeating: "y", count: 4000))"}"#)
            #expect(big.status == .contentTooLarge && big.errorCode == "payload_too_large", "\(big.status) \(big.json)")
            #expect(try await test.store.statistics().totalUsers == 0)
        }
    }

    @Test("tampered, foreign, alg-none and expired tokens are refused")
    func tokenEdgeCases() async throws {
        let test = try await TestApp.make()
        try await test.run { client in
            let user = try await client.register()
            let uri = "/api/users/\(user.id)/sessions"
            #expect(try await client.call(.get, uri, token: user.token).status == .ok)

            let parts = user.token.split(separator: ".").map(String.init)
            var payload = try #require(Base64.decode(parts[1]))
            payload[payload.count - 2] ^= 1
            let tampered = parts[0] + "." + Base64.urlEncode(payload) + "." + parts[2]
            let none = Base64.urlEncode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8)) + "." + parts[1] + "."
            let hs512 = Base64.urlEncode(Array(#"{"alg":"HS512","typ":"JWT"}"#.utf8)) + "." + parts[1] + "." + parts[2]
            let foreign = JWTSigner(secret: Array("another-secret-another-secret-another".utf8)).sign(
                AccessClaims(subject: UUID(uuidString: user.id)!, role: .admin, issuedAt: 0, expiresAt: Int64(Date().timeIntervalSince1970) + 60, jti: "x", family: nil)
            )
            let expired = JWTSigner(secret: test.config.jwtSecret).sign(
                AccessClaims(subject: UUID(uuidString: user.id)!, role: .user, issuedAt: 0, expiresAt: Int64(Date().timeIntervalSince1970) - 1, jti: "y", family: nil)
            )
            for (token, code) in [(tampered, "invalid_token"), (none, "invalid_token"), (hs512, "invalid_token"), (foreign, "invalid_token"),
                                  (expired, "token_expired"), ("garbage", "invalid_token"), ("a.b.c", "invalid_token")] {
                let r = try await client.call(.get, uri, token: token)
                #expect(r.status == .unauthorized, "\(token)")
                #expect(r.errorCode == code, "\(token)")
            }
            let basic = try await client.call(.get, uri, headers: [.authorization: "Basic Zm9vOmJhcg=="])
            #expect(basic.status == .unauthorized)
            #expect(try await client.call(.get, uri).status == .unauthorized)
        }
    }

    @Test("the auth tier limits attempts per client with 429, Retry-After and RateLimit headers")
    func authRateLimit() async throws {
        try await TestApp.make { $0.rateLimitAuth = RateLimit(limit: 3, windowSeconds: 60) }.run { client in
            for _ in 0..<3 {
                let r = try await client.call(.post, "/auth/login", body: #"{"username":"x","password":"y"}"#)
                #expect(r.status == .unauthorized)
            }
            let limited = try await client.call(.post, "/auth/login", body: #"{"username":"x","password":"y"}"#)
            #expect(limited.status == .tooManyRequests && limited.errorCode == "rate_limited")
            #expect(Int(limited.headers[.retryAfter] ?? "") ?? 0 >= 1)
            #expect(limited.headers[HTTPField.Name("RateLimit-Limit")!] == "3")
            #expect(limited.headers[HTTPField.Name("RateLimit-Remaining")!] == "0")
        }
    }
}
