import Foundation
import Testing
@testable import Appliance
@testable import Service

@Suite("Configuration")
struct ConfigTests {
    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    func options(_ args: [String]) throws -> ConfigOptions { try ConfigOptions.parse(args) }

    @Test("flags beat the environment, which beats the env file")
    func precedence() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("chat-backend.env")
        try "# comment\nPORT=4001\nHOST=127.0.0.2\nSESSION_TTL=2h\nRATE_LIMIT_API=off\n".write(to: file, atomically: true, encoding: .utf8)
        let env = ["STATE_DIRECTORY": dir.path, "PORT": "4002"]
        let fromEnv = try await AppConfig.load(options: options(["--config", file.path]), environment: env)
        #expect(fromEnv.port == 4002 && fromEnv.host == "127.0.0.2" && fromEnv.service.sessionTTL == 7200)
        #expect(fromEnv.service.rateLimitAPI == nil)
        let fromFlag = try await AppConfig.load(options: options(["--config", file.path, "--port", "4003"]), environment: env)
        #expect(fromFlag.port == 4003)
        #expect(fromFlag.database == .sqlite(path: dir.path + "/chat.db"))
    }

    @Test(
        "bad values fail naming the key",
        arguments: [
            ("PORT", "abc"), ("PORT", "70000"), ("JWT_ACCESS_TTL", "15x"), ("RATE_LIMIT_API", "lots"), ("LOG_LEVEL", "loud"),
            ("DATABASE_URL", "mysql://x"), ("JWT_SECRET", "short"), ("CORS_ORIGINS", "example.com"), ("MAX_BODY_BYTES", "12"),
            ("SQLITE_SYNCHRONOUS", "OFF"), ("TRUST_PROXY", "maybe"),
        ]
    )
    func badValues(key: String, value: String) async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        do {
            _ = try await AppConfig.load(
                options: options([]), environment: ["STATE_DIRECTORY": dir.path, "CHAT_BACKEND_CONFIG": "/dev/null", key: value]
            )
            Issue.record("\(key)=\(value) was accepted")
        } catch let error as ConfigError {
            #expect(error.description.hasPrefix(key), "\(error)")
        }
    }

    @Test("a missing explicit config file is an error; the default one may be absent")
    func missingFile() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        await #expect(throws: ConfigError.self) {
            _ = try await AppConfig.load(options: options(["--config", dir.path + "/nope.env"]), environment: ["STATE_DIRECTORY": dir.path])
        }
        let config = try await AppConfig.load(options: options([]), environment: ["STATE_DIRECTORY": dir.path, "CHAT_BACKEND_CONFIG": "/dev/null"])
        #expect(config.port == 3006 && config.host == "0.0.0.0")
    }

    @Test("without JWT_SECRET a 256-bit secret is generated once with mode 0600")
    func generatedSecret() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let env = ["STATE_DIRECTORY": dir.path, "CHAT_BACKEND_CONFIG": "/dev/null"]
        let first = try await AppConfig.load(options: options([]), environment: env)
        let second = try await AppConfig.load(options: options([]), environment: env)
        #expect(first.service.jwtSecret == second.service.jwtSecret)
        #expect(first.service.jwtSecret.count == 64)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir.path + "/jwt-secret")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let given = try await AppConfig.load(options: options([]), environment: env.merging(["JWT_SECRET": String(repeating: "s", count: 40)]) { $1 })
        #expect(given.service.jwtSecret == Array(String(repeating: "s", count: 40).utf8))
    }

    @Test("secrets are masked in the printed configuration")
    func masking() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = try await AppConfig.load(options: options([]), environment: [
            "STATE_DIRECTORY": dir.path, "CHAT_BACKEND_CONFIG": "/dev/null",
            "DATABASE_URL": "postgres://chat:hunter2@db.internal:5432/chat", "JWT_SECRET": String(repeating: "z", count: 40),
        ], createSecret: false)
        let printed = config.summary.map { "\($0.0)=\($0.1)" }.joined(separator: "\n")
        #expect(!printed.contains("hunter2") && !printed.contains("zzzz"))
        #expect(printed.contains("postgres://chat:********@db.internal:5432/chat"))
        #expect(AppConfig.maskURL("host=x password=y") == "host=x password=********")
        #expect(AppConfig.maskURL("host=x password = 'a b' dbname=c") == "host=x password = ******** dbname=c")
        #expect(AppConfig.maskURL("postgresql://u@h/db?password=hunter2&sslmode=require") == "postgresql://u@h/db?password=********&sslmode=require")
        #expect(!AppConfig.maskURL("postgres://u:hunter2@h:5432/db?password=hunter2").contains("hunter2"))
        #expect(AppConfig.maskURL("sqlite:///var/lib/chat-backend/chat.db") == "sqlite:///var/lib/chat-backend/chat.db")
    }

    @Test("database URLs choose the store")
    func databaseURLs() throws {
        #expect(try DatabaseLocation.parse("sqlite:///var/lib/chat-backend/chat.db") == .sqlite(path: "/var/lib/chat-backend/chat.db"))
        #expect(try DatabaseLocation.parse("sqlite://./data/chat.db") == .sqlite(path: "./data/chat.db"))
        #expect(try DatabaseLocation.parse("postgresql://u@h/db") == .postgres(url: "postgresql://u@h/db"))
        #expect(try DatabaseLocation.parse("host=/run/postgresql dbname=chat") == .postgres(url: "host=/run/postgresql dbname=chat"))
        #expect(throws: ConfigError.self) { try DatabaseLocation.parse("sqlite://") }
    }
}
