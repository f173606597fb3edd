import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing
@testable import Service
@testable import Storage

/// A chat application over a temporary store: SQLite, or Postgres when `CHAT_TEST_BACKEND=postgres`
/// (with `CHAT_TEST_POSTGRES` naming the server; `make test` runs the API tests on both).
struct TestApp {
    let app: ChatApplication
    let store: any ChatStore
    let config: ServiceConfig
    let dir: URL
    let cleanup: @Sendable () -> Void

    static var backend: String { ProcessInfo.processInfo.environment["CHAT_TEST_BACKEND"] ?? "sqlite" }

    static func make(_ configure: (inout ServiceConfig) -> Void = { _ in }) async throws -> TestApp {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("chat-app-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let store: any ChatStore
        var dropSchema: @Sendable () -> Void = {}
        if backend == "postgres" {
            let base = ProcessInfo.processInfo.environment["CHAT_TEST_POSTGRES"] ?? ""
            let schema = "t_" + UUID().lowercased.replacingOccurrences(of: "-", with: "")
            let admin = try PostgresConnection(conninfo: base)
            try admin.execute("CREATE SCHEMA \(schema)")
            store = try await PostgresStore.open(conninfo: base + " options='-c search_path=\(schema)'", options: .init(poolSize: 4))
            dropSchema = { if let admin = try? PostgresConnection(conninfo: base) { try? admin.execute("DROP SCHEMA IF EXISTS \(schema) CASCADE") } }
        } else {
            store = try await SQLiteStore.open(path: dir.appendingPathComponent("chat.db").path)
        }
        var config = ServiceConfig(jwtSecret: Array("test-secret-test-secret-test-secret!!".utf8))
        config.passwordParameters = .init(logN: 10, r: 8, p: 1)
        config.rateLimitAPI = nil
        config.rateLimitAuth = nil
        config.rateLimitMessages = nil
        configure(&config)
        let app = buildApplication(config: config, dependencies: ApplicationDependencies(store: store))
        let remove = dropSchema
        return TestApp(app: app, store: store, config: config, dir: dir, cleanup: {
            remove()
            try? FileManager.default.removeItem(at: dir)
        })
    }

    /// Runs `body` against the router, then closes the store and deletes its data.
    func run(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        do {
            try await app.test(.router, body)
        } catch {
            await store.close()
            cleanup()
            throw error
        }
        await store.close()
        cleanup()
    }
}

/// A parsed JSON response.
struct JSONResult {
    let status: HTTPResponse.Status
    let headers: HTTPFields
    let json: JSONValue

    subscript(_ key: String) -> JSONValue? {
        if case .object(let o) = json { return o[key] }
        return nil
    }

    /// `error.code` of an error response.
    var errorCode: String? {
        if case .object(let e)? = self["error"], case .string(let c)? = e["code"] { return c }
        return nil
    }

    var errorMessage: String {
        if case .object(let e)? = self["error"], case .string(let m)? = e["message"] { return m }
        return ""
    }
}

extension JSONValue {
    subscript(_ key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var array: [JSONValue] {
        if case .array(let a) = self { return a }
        return []
    }

    var int: Int64? {
        if case .int(let i) = self { return i }
        return nil
    }
}

extension TestClientProtocol {
    /// Sends a request with an optional JSON body (raw text) and bearer token.
    func call(_ method: HTTPRequest.Method, _ uri: String, token: String? = nil, body: String? = nil, headers: HTTPFields = [:]) async throws -> JSONResult {
        var fields = headers
        if let token { fields[.authorization] = "Bearer \(token)" }
        if body != nil, fields[.contentType] == nil { fields[.contentType] = "application/json" }
        return try await execute(uri: uri, method: method, headers: fields, body: body.map { ByteBuffer(string: $0) }) { response in
            let text = String(buffer: response.body)
            let json = text.isEmpty ? JSONValue.null : (JSONValue.parse(text) ?? .string(text))
            return JSONResult(status: response.status, headers: response.headers, json: json)
        }
    }

    /// Registers a user and returns (userId, accessToken, refreshToken).
    func register(_ name: String = "u\(UUID().uuidString.prefix(8))", password: String = "correct horse") async throws -> (id: String, token: String, refresh: String) {
        let r = try await call(.post, "/auth/register", body: #"{"username":"\#(name)","password":"\#(password)"}"#)
        #expect(r.status == .created, "\(r.json)")
        return (r["user"]?["id"]?.string ?? "", r["accessToken"]?.string ?? "", r["refreshToken"]?.string ?? "")
    }

    /// Creates a session for a token and returns its id.
    func createSession(_ token: String, body: String = "{}") async throws -> String {
        let r = try await call(.post, "/api/sessions", token: token, body: body)
        #expect(r.status == .created, "\(r.json)")
        return r["sessionId"]?.string ?? ""
    }
}
