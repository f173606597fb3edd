#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Configuration
import Logging
import Service
import Storage
import SystemPackage

/// Options every command takes to locate and override configuration.
struct ConfigOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: "Env file with KEY=VALUE lines (default: /etc/chat-backend/chat-backend.env if it exists).")
    var configFile: String?

    @Option(help: "Listen address (HOST).")
    var host: String?

    @Option(help: "Listen port (PORT).")
    var port: String?

    @Option(name: .customLong("database-url"), help: "sqlite:///path/chat.db or postgres://… (DATABASE_URL).")
    var databaseURL: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (LOG_LEVEL).")
    var logLevel: String?
}

/// A configuration value that failed validation; the message names the key.
struct ConfigError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Where the store lives.
enum DatabaseLocation: Equatable {
    case sqlite(path: String)
    case postgres(url: String)

    /// `key`: what the text was given as, for the error message.
    static func parse(_ text: String, key: String = "DATABASE_URL") throws -> DatabaseLocation {
        if text.hasPrefix("sqlite://") {
            let path = String(text.dropFirst("sqlite://".count))
            guard !path.isEmpty else { throw ConfigError("\(key): sqlite:// needs a path, e.g. sqlite:///var/lib/chat-backend/chat.db") }
            return .sqlite(path: path)
        }
        if text.hasPrefix("sqlite:") {
            return .sqlite(path: String(text.dropFirst("sqlite:".count)))
        }
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") || text.contains("=") {
            if let problem = PostgresStore.conninfoProblem(text) { throw ConfigError("\(key): \(problem)") }
            return .postgres(url: text)
        }
        throw ConfigError("\(key): must start with sqlite:// or postgres:// (got '\(AppConfig.maskURL(text))')")
    }
}

/// The effective configuration of one run, after env file, environment and flags.
struct AppConfig {
    var host: String
    var port: Int
    var database: DatabaseLocation
    var databaseURLText: String
    var stateDirectory: String
    /// The database is the default file under `./data`: neither DATABASE_URL nor STATE_DIRECTORY was given.
    var databaseIsImplicit = false
    var logLevel: Logger.Level
    var synchronous: SQLiteStore.Synchronous
    var databasePoolSize: Int
    /// Postgres: the longest wait for the answer to one statement, in seconds.
    var databaseTimeout: Int
    var agentsFile: String
    var agents: AgentsConfig
    var webhooks: WebhooksConfig
    var jwtSecretSource: String
    var service: ServiceConfig
    /// Values as given, secrets masked, for `check-config`.
    var summary: [(String, String)]
    /// What is wrong but does not stop the server (a key in the env file that nothing reads), for the log
    /// and `check-config`.
    var warnings: [String] = []

    static let defaultEnvFile = "/etc/chat-backend/chat-backend.env"

    /// Reads flags, then the environment, then the env file (first found wins), and validates every value.
    static func load(options: ConfigOptions, environment: [String: String] = ProcessInfo.processInfo.environment, createSecret: Bool = true) async throws -> AppConfig {
        var flags: [AbsoluteConfigKey: ConfigValue] = [:]
        if let v = options.host { flags["host"] = .init(.string(v), isSecret: false) }
        if let v = options.port { flags["port"] = .init(.string(v), isSecret: false) }
        if let v = options.databaseURL { flags["database.url"] = .init(.string(v), isSecret: true) }
        if let v = options.logLevel { flags["log.level"] = .init(.string(v), isSecret: false) }
        var providers: [any ConfigProvider] = [
            InMemoryProvider(name: "flags", values: flags),
            EnvironmentVariablesProvider(environmentVariables: environment),
        ]
        // A file named by --config or CHAT_BACKEND_CONFIG must exist (/dev/null: none); the default need not.
        let envFile = options.configFile ?? environment["CHAT_BACKEND_CONFIG"] ?? defaultEnvFile
        let fileKeys = try envFileKeys(envFile, required: envFile != defaultEnvFile || options.configFile != nil)
        if fileKeys != nil, envFile != "/dev/null" {
            do {
                providers.append(try await EnvironmentVariablesProvider(environmentFilePath: FilePath(envFile), allowMissing: false))
            } catch {
                throw ConfigError("cannot read config file \(envFile): \(error)")
            }
        }
        let reader = ConfigReader(providers: providers)
        var used: Set<String> = []
        func value(_ key: ConfigKey, secret: Bool = false) -> String? {
            used.insert(key.components.joined(separator: "_").uppercased())
            return reader.string(forKey: key, isSecret: secret).flatMap { $0.isEmpty ? nil : $0 }
        }

        var summary: [(String, String)] = [("config file", fileKeys == nil ? "\(envFile) (not present)" : envFile)]
        let host = value("host") ?? "0.0.0.0"
        if let problem = hostProblem(host) { throw ConfigError("HOST: \(problem)") }
        let portText = value("port") ?? "3006"
        guard let port = Int(portText), (0...65535).contains(port) else { throw ConfigError("PORT: must be 0-65535 (got '\(portText)')") }
        summary += [("HOST", host), ("PORT", String(port))]

        let stateDirectory = environment["STATE_DIRECTORY"].flatMap { $0.split(separator: ":").first.map(String.init) } ?? "./data"
        var info = stat()
        if stat(stateDirectory, &info) == 0, info.st_mode & S_IFMT != S_IFDIR { throw ConfigError("STATE_DIRECTORY: \(stateDirectory) is not a directory") }
        let databaseSetting = value("database.url", secret: true)
        let databaseText = databaseSetting ?? "sqlite://\(stateDirectory)/chat.db"
        let database = try DatabaseLocation.parse(databaseText)

        summary.append(("DATABASE_URL", maskURL(databaseText)))

        let poolText = value("database.pool.size") ?? "8"
        guard let poolSize = Int(poolText), (1...100).contains(poolSize) else {
            throw ConfigError("DATABASE_POOL_SIZE: must be 1 to 100 (got '\(poolText)')")
        }
        summary.append(("DATABASE_POOL_SIZE", String(poolSize)))

        let levelText = (value("log.level") ?? "info").lowercased()
        guard let logLevel = Logger.Level(rawValue: levelText) else {
            throw ConfigError("LOG_LEVEL: must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(levelText)')")
        }
        summary.append(("LOG_LEVEL", logLevel.rawValue))

        let syncText = (value("sqlite.synchronous") ?? "FULL").uppercased()
        guard let synchronous = SQLiteStore.Synchronous(rawValue: syncText) else {
            throw ConfigError("SQLITE_SYNCHRONOUS: must be FULL or NORMAL (got '\(syncText)')")
        }
        summary.append(("SQLITE_SYNCHRONOUS", synchronous.rawValue))

        func duration(_ key: ConfigKey, _ name: String, _ fallback: String) throws -> Int {
            let text = value(key) ?? fallback
            guard let seconds = DurationText.parse(text), seconds > 0 else {
                throw ConfigError("\(name): must be a duration like 30s, 15m, 24h or 30d, at most 3650d (got '\(text)')")
            }
            summary.append((name, DurationText.format(seconds)))
            return seconds
        }
        let databaseTimeout = try duration("database.timeout", "DATABASE_TIMEOUT", "15s")
        func rate(_ key: ConfigKey, _ name: String, _ fallback: String) throws -> RateLimit? {
            let text = value(key) ?? fallback
            guard let parsed = RateLimit.parse(text) else {
                throw ConfigError("\(name): must be N/window like 300/1m, or off (got '\(text)')")
            }
            summary.append((name, parsed?.description ?? "off"))
            return parsed
        }

        let secret: [UInt8]
        let secretSource: String
        if let given = value("jwt.secret", secret: true) {
            guard given.utf8.count >= 32 else { throw ConfigError("JWT_SECRET: must be at least 32 characters (use 64 random hex digits)") }
            secret = Array(given.utf8)
            secretSource = "JWT_SECRET"
        } else {
            let file = stateDirectory + "/jwt-secret"
            secret = try loadOrCreateSecret(at: file, create: createSecret)
            secretSource = file
        }
        summary.append(("JWT_SECRET", "******** (from \(secretSource))"))

        var service = ServiceConfig(jwtSecret: secret)
        service.accessTokenTTL = try duration("jwt.access.ttl", "JWT_ACCESS_TTL", "15m")
        service.refreshTokenTTL = try duration("jwt.refresh.ttl", "JWT_REFRESH_TTL", "30d")
        service.sessionTTL = try duration("session.ttl", "SESSION_TTL", "24h")
        func origins(_ key: ConfigKey, _ name: String) throws -> [String] {
            let list = (value(key) ?? "").split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
            for origin in list where !Self.isOrigin(origin) {
                throw ConfigError("\(name): '\(origin)' must be an origin like https://chat.example.com (scheme and host, no path)")
            }
            summary.append((name, list.joined(separator: ",")))
            return list
        }
        service.corsOrigins = try origins("cors.origins", "CORS_ORIGINS")
        service.widgetOrigins = try origins("widget.origins", "WIDGET_ORIGINS")
        service.rateLimitAPI = try rate("rate.limit.api", "RATE_LIMIT_API", "300/1m")
        service.rateLimitAuth = try rate("rate.limit.auth", "RATE_LIMIT_AUTH", "10/1m")
        service.rateLimitMessages = try rate("rate.limit.messages", "RATE_LIMIT_MESSAGES", "60/1m")
        service.guestAccess = try flag(value("guest.access"), "GUEST_ACCESS", default: false)
        summary.append(("GUEST_ACCESS", service.guestAccess ? "on" : "off"))
        service.rateLimitGuest = try rate("rate.limit.guest", "RATE_LIMIT_GUEST", "10/1h")
        service.guestTTL = try duration("guest.ttl", "GUEST_TTL", "30d")
        service.messageEditWindow = try duration("message.edit.window", "MESSAGE_EDIT_WINDOW", "15m")
        func retention(_ key: ConfigKey, _ name: String) throws -> Int? {
            let text = value(key) ?? "off"
            if text.lowercased() == "off" {
                summary.append((name, "off"))
                return nil
            }
            guard let seconds = DurationText.parse(text), seconds >= 3600 else {
                throw ConfigError("\(name): must be off or a duration from 1h to 3650d, like 90d or 365d (got '\(text)')")
            }
            summary.append((name, DurationText.format(seconds)))
            return seconds
        }
        service.messageRetention = try retention("message.retention", "MESSAGE_RETENTION")
        service.resolvedSessionRetention = try retention("resolved.session.retention", "RESOLVED_SESSION_RETENTION")
        func byteSize(_ key: ConfigKey, _ name: String, _ fallback: String, range: ClosedRange<Int64>, off: Bool) throws -> Int64? {
            let text = value(key) ?? fallback
            if off, text.lowercased() == "off" {
                summary.append((name, "off"))
                return nil
            }
            guard let bytes = ByteSize.parse(text), range.contains(bytes) else {
                throw ConfigError("\(name): must be \(off ? "off or " : "")a size from \(ByteSize.format(range.lowerBound)) to \(ByteSize.format(range.upperBound)), like 10MiB (got '\(text)')")
            }
            summary.append((name, ByteSize.format(bytes)))
            return bytes
        }
        service.attachmentMaxBytes = Int(try byteSize("attachment.max.bytes", "ATTACHMENT_MAX_BYTES", "10MiB", range: 1024...(1 << 30), off: false)!)
        service.attachmentQuotaBytes = try byteSize("attachment.quota", "ATTACHMENT_QUOTA", "1GiB", range: 1024...(1 << 50), off: true)
        let bodyText = value("max.body.bytes") ?? String(1 << 20)
        guard let body = Int(bodyText), (1024...(64 << 20)).contains(body) else {
            throw ConfigError("MAX_BODY_BYTES: must be 1024 to 67108864 (got '\(bodyText)')")
        }
        service.maxBodyBytes = body
        summary.append(("MAX_BODY_BYTES", String(body)))
        if let hsts = value("hsts.max.age") {
            guard let seconds = DurationText.parse(hsts) else { throw ConfigError("HSTS_MAX_AGE: must be a duration like 180d (got '\(hsts)')") }
            service.hstsMaxAge = seconds
        }
        summary.append(("HSTS_MAX_AGE", service.hstsMaxAge.map(String.init) ?? "off"))
        service.trustProxy = try flag(value("trust.proxy"), "TRUST_PROXY", default: false)
        summary.append(("TRUST_PROXY", String(service.trustProxy)))
        func bounded(_ key: ConfigKey, _ name: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
            let text = value(key) ?? String(fallback)
            guard let n = Int(text), range.contains(n) else {
                throw ConfigError("\(name): must be \(range.lowerBound) to \(range.upperBound) (got '\(text)')")
            }
            summary.append((name, String(n)))
            return n
        }
        service.realtimeAuthTimeoutSeconds = try duration("realtime.auth.timeout", "REALTIME_AUTH_TIMEOUT", "10s")
        service.realtimeMaxConnectionsPerUser = try bounded("realtime.max.connections.per.user", "REALTIME_MAX_CONNECTIONS_PER_USER", 20, 1...10_000)
        service.realtimeQueueLength = try bounded("realtime.queue.length", "REALTIME_QUEUE_LENGTH", 256, 8...100_000)
        service.realtimeMaxUnauthenticatedPerIP = try bounded(
            "realtime.max.unauthenticated.per.ip", "REALTIME_MAX_UNAUTHENTICATED_PER_IP", 64, 1...1_000_000
        )
        service.socketIOPingInterval = .seconds(try duration("socketio.ping.interval", "SOCKETIO_PING_INTERVAL", "25s"))
        service.socketIOPingTimeout = .seconds(try duration("socketio.ping.timeout", "SOCKETIO_PING_TIMEOUT", "20s"))
        service.server.setTimeouts(
            headerSeconds: try duration("http.header.timeout", "HTTP_HEADER_TIMEOUT", "10s"),
            idleSeconds: try duration("http.idle.timeout", "HTTP_IDLE_TIMEOUT", "60s")
        )
        let descriptors = FileDescriptorLimit.raiseToHardLimit()
        service.server.maxConnections = try bounded(
            "max.connections", "MAX_CONNECTIONS", FileDescriptorLimit.defaultMaxConnections(descriptors), 1...10_000_000
        )
        let agentsFileSet = value("agents.file")
        let agentsFile = agentsFileSet ?? "/etc/chat-backend/agents.yaml"
        let agents = try loadAgents(path: agentsFile, required: agentsFileSet != nil) { name in
            // `secret_env: NAME` reads NAME from the env file or the environment, like every other key.
            value(ConfigKey(name.lowercased().split(separator: "_").map(String.init)), secret: true)
        }
        summary.append(("AGENTS_FILE", agents.isEmpty && agents.source == "none"
            ? "\(agentsFile) (not present: no agents)"
            : "\(agentsFile) (\(agents.agentNames.count) agents: \(agents.agentNames.joined(separator: ", ")))"))

        let webhooksFileSet = value("webhooks.file")
        let webhooksFile = webhooksFileSet ?? "/etc/chat-backend/webhooks.yaml"
        var webhooks = try loadWebhooks(path: webhooksFile, required: webhooksFileSet != nil) { name in
            value(ConfigKey(name.lowercased().split(separator: "_").map(String.init)), secret: true)
        }
        webhooks.retryPeriod = try duration("webhook.retry.period", "WEBHOOK_RETRY_PERIOD", "24h")
        summary.append(("WEBHOOKS_FILE", webhooks.isEmpty
            ? "\(webhooksFile) (\(webhooksFileSet == nil && !FileManager.default.fileExists(atPath: webhooksFile) ? "not present: " : "")no webhooks)"
            : "\(webhooksFile) (\(webhooks.names.count) webhooks: \(webhooks.names.joined(separator: ", ")))"))

        // Every key of the file is read by now, or it is a mistake (a misspelt key falls back to the default).
        let unused = (fileKeys ?? []).filter { !used.contains($0.key) }.map { key, line in
            key == "STATE_DIRECTORY"
                ? "\(envFile) line \(line): STATE_DIRECTORY is read from the environment only (systemd sets it from the unit's StateDirectory=); it is ignored here"
                : "\(envFile) line \(line): \(key) is not a chat-backend setting, nor read by the agents or webhooks file; it is ignored"
        }
        return AppConfig(
            host: host, port: port, database: database, databaseURLText: databaseText, stateDirectory: stateDirectory,
            databaseIsImplicit: databaseSetting == nil && environment["STATE_DIRECTORY"] == nil, logLevel: logLevel,
            synchronous: synchronous, databasePoolSize: poolSize, databaseTimeout: databaseTimeout, agentsFile: agentsFile, agents: agents, webhooks: webhooks, jwtSecretSource: secretSource,
            service: service, summary: summary, warnings: unused
        )
    }

    /// The keys an env file sets, with their line numbers, after checking that every line is blank, a `#`
    /// comment or `KEY=VALUE` (the form systemd's `EnvironmentFile=` reads too); nil when the file does not
    /// exist and need not.
    static func envFileKeys(_ path: String, required: Bool) throws -> [(key: String, line: Int)]? {
        guard let text = try readDocument(path, key: "config file", required: required) else { return nil }
        var keys: [(key: String, line: Int)] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(raw).trimmed
            if line.isEmpty || line.hasPrefix("#") { continue }
            let key = String(line.prefix { $0 != "=" }).trimmed
            let where_ = "config file \(path) line \(index + 1)"
            if key.hasPrefix("export ") { throw ConfigError("\(where_): write \(String(key.dropFirst(7)).trimmed)=… without `export`") }
            guard line.contains("="), let first = key.first, !first.isNumber,
                  key.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else {
                throw ConfigError("\(where_): not a KEY=VALUE line")
            }
            keys.append((key, index + 1))
        }
        return keys
    }

    /// Reads and validates the webhooks file. A missing file means no webhooks unless WEBHOOKS_FILE names it.
    static func loadWebhooks(path: String, required: Bool, secret: (String) -> String?) throws -> WebhooksConfig {
        guard let text = try readDocument(path, key: "WEBHOOKS_FILE", required: required) else { return .none }
        do {
            return try WebhooksConfig.parse(text, secret: secret)
        } catch {
            throw ConfigError("WEBHOOKS_FILE \(path): \(error)")
        }
    }

    /// The text of a configuration document (UTF-8, at most 1 MiB); nil when the file does not exist and
    /// need not (only its default name was used).
    static func readDocument(_ path: String, key: String, required: Bool) throws -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if required { throw ConfigError("\(key): \(path) does not exist") }
            return nil
        }
        guard info.st_mode & S_IFMT != S_IFDIR else { throw ConfigError("\(key): \(path) is a directory") }
        if path == "/dev/null" { return "" }  // "no file", where a file must be named
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigError("\(key): cannot read \(path)") }
        guard data.count <= 1 << 20 else { throw ConfigError("\(key): \(path) is larger than 1 MiB") }
        guard let text = String(validating: data, as: UTF8.self) else { throw ConfigError("\(key): \(path) is not UTF-8 text") }
        return text
    }

    /// Reads and validates the agents file. A missing file means no agents unless AGENTS_FILE names it.
    static func loadAgents(path: String, required: Bool, secret: (String) -> String?) throws -> AgentsConfig {
        guard let text = try readDocument(path, key: "AGENTS_FILE", required: required) else { return .none }
        do {
            return try AgentsConfig.parse(text, source: path, secret: secret)
        } catch {
            throw ConfigError("AGENTS_FILE \(path): \(error)")
        }
    }

    /// Why `text` cannot be listened on (nil: it can): an IPv4 or IPv6 address, or a host name that resolves.
    static func hostProblem(_ text: String) -> String? {
        var address = in6_addr()
        if inet_pton(AF_INET, text, &address) == 1 || inet_pton(AF_INET6, text, &address) == 1 { return nil }
        let labels = text.split(separator: ".", omittingEmptySubsequences: false)
        guard text.utf8.count <= 253, !labels.isEmpty,
              labels.allSatisfy({ !$0.isEmpty && $0.count <= 63 && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") } }),
              !labels.allSatisfy({ $0.allSatisfy(\.isNumber) }) else {
            return "must be an IP address or a host name (got '\(text)')"
        }
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(text, nil, &hints, &result) == 0 else { return "cannot resolve '\(text)'" }
        freeaddrinfo(result)
        return nil
    }

    /// Hides every password in a connection string: `user:secret@` in a URI, `password=…` in its query,
    /// and `password = …` in a key=value string.
    /// `http(s)://host[:port]`, nothing after it (the form of a browser's `Origin` header).
    static func isOrigin(_ text: String) -> Bool {
        for scheme in ["http://", "https://"] where text.hasPrefix(scheme) {
            let rest = text.dropFirst(scheme.count)
            return !rest.isEmpty && !rest.contains(where: { "/?#@ ".contains($0) })
        }
        return false
    }

    static func maskURL(_ text: String) -> String {
        var out = text
        let parts = out.split(separator: "://", maxSplits: 1)
        if parts.count == 2 {
            let rest = parts[1]
            let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
            if let at = rest[..<authorityEnd].lastIndex(of: "@"), let colon = rest[..<at].firstIndex(of: ":") {
                out = parts[0] + "://" + rest[..<colon] + ":********" + rest[at...]
            }
        }
        // password=… (URI query) or password = … / password='…' (key=value)
        var result = ""
        var rest = Substring(out)
        while let range = rest.firstRange(of: "password") {
            result += rest[..<range.upperBound]
            rest = rest[range.upperBound...]
            let afterSpaces = rest.drop(while: { $0 == " " })
            guard afterSpaces.first == "=" else { continue }
            let valueStart = afterSpaces.dropFirst().drop(while: { $0 == " " })
            result += String(rest[..<valueStart.startIndex]) + "********"
            if valueStart.first == "'" {
                let closing = valueStart.dropFirst().firstIndex(of: "'").map { valueStart.index(after: $0) } ?? valueStart.endIndex
                rest = valueStart[closing...]
            } else {
                rest = valueStart.drop(while: { $0 != " " && $0 != "&" })
            }
        }
        return result + rest
    }

    /// Reads the generated JWT key, or creates 256 random bits with mode 0600 on first start.
    static func loadOrCreateSecret(at path: String, create: Bool) throws -> [UInt8] {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFREG else { throw ConfigError("\(path) is not a file: it should hold the JWT secret (delete it to generate one)") }
            guard access(path, R_OK) == 0 else { throw ConfigError("cannot read \(path): \(String(cString: strerror(errno)))") }
        }
        if let data = FileManager.default.contents(atPath: path) {
            let text = String(decoding: data, as: UTF8.self).trimmed
            guard text.utf8.count >= 32 else { throw ConfigError("\(path): the stored JWT secret is too short; delete the file to generate a new one") }
            return Array(text.utf8)
        }
        guard create else { return Array(repeating: 0, count: 32) }
        try makeDirectory(parentOf: path)
        let secret = SecretGenerator.hex(bytes: 32)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ConfigError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(secret.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
            throw ConfigError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        return bytes
    }

    /// Creates the directory that will hold `path` (and its parents) owner-only (0700), or says in one
    /// sentence why it cannot.
    static func makeDirectory(parentOf path: String) throws {
        let parent = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        guard !parent.isEmpty else { return }
        try makeDirectories(parent)
    }

    static func makeDirectories(_ directory: String) throws {
        var info = stat()
        if stat(directory, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw ConfigError("cannot use \(directory) as a directory: it is a file") }
            return
        }
        let parent = directory.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !parent.isEmpty { try makeDirectories(parent) }
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
            throw ConfigError("cannot create the directory \(directory): \(String(cString: strerror(errno)))")
        }
        _ = chmod(directory, 0o700)
    }
}

/// The process's limit on open files, which bounds the connections it can hold.
enum FileDescriptorLimit {
    /// Raises the soft limit on open files to the hard limit (a server holding many WebSockets needs it)
    /// and returns the limit now in effect.
    static func raiseToHardLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur > UInt(Int.max) ? Int.max : Int(limit.rlim_cur)
    }

    /// Connections that leave room for the database, the listener, logs and files: the limit less 10%
    /// and at least 64 descriptors.
    static func defaultMaxConnections(_ descriptors: Int) -> Int {
        let reserve = max(64, descriptors / 10)
        return min(10_000_000, max(16, descriptors - reserve))
    }
}

extension String {
    var trimmed: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// Byte sizes in configuration: a number of bytes, or with a binary unit (`512KiB`, `10MiB`, `1GiB`;
/// `K`, `M`, `G` and `KB`, `MB`, `GB` mean the same).
enum ByteSize {
    static func parse(_ text: String) -> Int64? {
        let trimmed = text.trimmed
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 15, let number = Int64(digits) else { return nil }
        let unit = String(trimmed.dropFirst(digits.count)).trimmed.lowercased()
        let shift: Int64
        switch unit {
        case "", "b": shift = 0
        case "k", "kb", "kib": shift = 10
        case "m", "mb", "mib": shift = 20
        case "g", "gb", "gib": shift = 30
        case "t", "tb", "tib": shift = 40
        default: return nil
        }
        let (value, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : value
    }

    static func format(_ bytes: Int64) -> String {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] where bytes >= (1 << shift) && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(unit)"
        }
        return "\(bytes)"
    }
}

/// A yes/no setting: `on`, `true`, `yes`, `1` or `off`, `false`, `no`, `0`, in any case.
func flag(_ text: String?, _ name: String, default value: Bool) throws -> Bool {
    guard let text = text?.lowercased() else { return value }
    if ["on", "true", "yes", "1"].contains(text) { return true }
    if ["off", "false", "no", "0"].contains(text) { return false }
    throw ConfigError("\(name): must be on or off (also true/false, yes/no, 1/0; got '\(text)')")
}
