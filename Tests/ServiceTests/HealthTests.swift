import Foundation
import HTTPTypes
import Testing
@testable import Service
@testable import Storage

@Suite("Health, status, metrics, headers")
struct HealthTests {
    @Test("health, status and metrics report the service")
    func endpoints() async throws {
        try await TestApp.make().run { client in
            let alive = try await client.call(.get, "/health")
            #expect(alive.status == .ok && alive["status"]?.string == "ok")
            let health = try await client.call(.get, "/api/health")
            #expect(health.status == .ok && health["storage"]?["backend"]?.string == TestApp.backend && health["storage"]?["status"]?.string == "up")
            let user = try await client.register()
            let id = try await client.createSession(user.token)
            _ = try await client.call(.post, "/api/sessions/\(id)/messages", token: user.token, body: #"{"content":"hi"}"#)
            let status = try await client.call(.get, "/api/status")
            #expect(status["version"]?.string == ChatBackendVersion.current)
            #expect(status["statistics"]?["users"]?.int == 1 && status["statistics"]?["sessions"]?.int == 1 && status["statistics"]?["messages"]?.int == 1)
            let metrics = try await client.execute(uri: "/api/metrics", method: .get) { String(buffer: $0.body) }
            #expect(metrics.contains("http_requests_total{method=\"POST\",route=\"/api/sessions/{sessionId}/messages\",status=\"201\"} 1")
                || metrics.contains("http_requests_total{method=\"POST\",route=\"/api/sessions/:sessionId/messages\",status=\"201\"} 1"), "\(metrics)")
            #expect(metrics.contains("chat_messages_stored_total 1"))
            let spec = try await client.execute(uri: "/openapi.yaml", method: .get) { ($0.status, String(buffer: $0.body)) }
            #expect(spec.0 == .ok && spec.1.hasPrefix("openapi: 3"))
        }
    }

    @Test("with storage down, /api/health is 503, storage routes 503 storage_unavailable, /health stays 200")
    func storageDown() async throws {
        let test = try await TestApp.make()
        try await test.app.test(.router) { client in
            let user = try await client.register()
            await test.store.close()
            #expect(try await client.call(.get, "/health").status == .ok)
            let health = try await client.call(.get, "/api/health")
            #expect(health.status == .serviceUnavailable && health["storage"]?["status"]?.string == "down")
            let create = try await client.call(.post, "/api/sessions", token: user.token, body: "{}")
            #expect(create.status == .serviceUnavailable && create.errorCode == "storage_unavailable")
        }
        test.cleanup()
    }

    @Test("every response carries security headers and a request id; unknown routes are JSON 404s")
    func headers() async throws {
        try await TestApp.make { $0.hstsMaxAge = 86400 }.run { client in
            for uri in ["/health", "/no/such/route"] {
                let r = try await client.call(.get, uri)
                #expect(r.headers[HTTPField.Name("X-Content-Type-Options")!] == "nosniff")
                #expect(r.headers[HTTPField.Name("X-Frame-Options")!] == "DENY")
                #expect(r.headers[.contentSecurityPolicy]?.contains("default-src 'none'") == true)
                #expect(r.headers[HTTPField.Name("Referrer-Policy")!] == "no-referrer")
                #expect(r.headers[HTTPField.Name("Cross-Origin-Resource-Policy")!] == "same-origin")
                #expect(r.headers[.strictTransportSecurity] == "max-age=86400; includeSubDomains")
                #expect(r.headers[HTTPField.Name("X-Request-Id")!]?.isEmpty == false)
            }
            let missing = try await client.call(.get, "/no/such/route")
            #expect(missing.status == .notFound && missing.errorCode == "not_found")
            let echoed = try await client.call(.get, "/health", headers: [HTTPField.Name("X-Request-Id")!: "trace-123"])
            #expect(echoed.headers[HTTPField.Name("X-Request-Id")!] == "trace-123")
        }
    }

    @Test("CORS answers preflights for configured origins only")
    func cors() async throws {
        try await TestApp.make { $0.corsOrigins = ["https://chat.example.com"] }.run { client in
            let allowed = try await client.call(.options, "/api/sessions", headers: [.origin: "https://chat.example.com", .accessControlRequestMethod: "POST"])
            #expect(allowed.status == .noContent)
            #expect(allowed.headers[.accessControlAllowOrigin] == "https://chat.example.com")
            #expect(allowed.headers[.accessControlAllowMethods]?.contains("POST") == true)
            let denied = try await client.call(.options, "/api/sessions", headers: [.origin: "https://evil.example", .accessControlRequestMethod: "POST"])
            #expect(denied.status == .forbidden && denied.headers[.accessControlAllowOrigin] == nil)
            let simple = try await client.call(.get, "/health", headers: [.origin: "https://chat.example.com"])
            #expect(simple.headers[.accessControlAllowOrigin] == "https://chat.example.com")
            let foreign = try await client.call(.get, "/health", headers: [.origin: "https://evil.example"])
            #expect(foreign.headers[.accessControlAllowOrigin] == nil)
            // Error responses carry CORS headers too, or browsers could not read them.
            let error = try await client.call(.get, "/api/sessions/\(UUID())", headers: [.origin: "https://chat.example.com"])
            #expect(error.status == .unauthorized && error.headers[.accessControlAllowOrigin] == "https://chat.example.com")
        }
    }
}
